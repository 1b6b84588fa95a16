'use strict';
// Harness for driving the broker with the official JavaScript SDK
// (@azure/service-bus 7.9.x): every test gets its own broker (queues declared
// with Service Bus properties), a ServiceBusClient built from an emulator-style
// connection string, a hard timeout, and a clean shutdown (client closed, broker
// exits 0 on SIGTERM).

const assert = require('node:assert/strict');
const { test } = require('node:test');
const { ServiceBusClient, isServiceBusError } = require('@azure/service-bus');
const { startBroker, ROOT_KEY } = require('./broker');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The SDK retries most errors with back-off; keep failures quick and visible.
const RETRY = Object.freeze({ maxRetries: 0, timeoutInMs: 10000, retryDelayInMs: 200, maxRetryDelayInMs: 500 });

// Keys a [[queues]] table may carry (see crates/server/src/config.rs and the brief).
const QUEUE_KEYS = [
  'max_delivery_count', 'max_size_mb', 'lock_duration_ms',
  'default_message_ttl_ms', 'dead_lettering_on_message_expiration',
  'requires_duplicate_detection', 'duplicate_detection_window_ms',
];

function tomlValue(v) {
  if (typeof v === 'boolean' || typeof v === 'number') return String(v);
  if (typeof v === 'string') return JSON.stringify(v);
  throw new Error(`unsupported TOML value: ${JSON.stringify(v)}`);
}

/** queues: array of names or {name, lock_duration_ms, ...} -> `[[queues]]` TOML tables. */
function queuesToml(queues) {
  const lines = [];
  for (const q of queues) {
    const decl = typeof q === 'string' ? { name: q } : q;
    lines.push('[[queues]]', `name = ${tomlValue(decl.name)}`);
    for (const [k, v] of Object.entries(decl)) {
      if (k === 'name') continue;
      if (!QUEUE_KEYS.includes(k)) throw new Error(`unknown queue key ${k}`);
      lines.push(`${k} = ${tomlValue(v)}`);
    }
    lines.push('');
  }
  return lines.join('\n');
}

function connectionString(broker, key = ROOT_KEY) {
  return `Endpoint=sb://${broker.host}:${broker.amqpPort};SharedAccessKeyName=${key.name};`
    + `SharedAccessKey=${key.key};UseDevelopmentEmulator=true;`;
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** One-line description of an SDK error for assertion messages. */
function describeSdkError(e) {
  if (!e) return String(e);
  const parts = [e.name];
  if (e.code) parts.push(`code=${e.code}`);
  parts.push(e.message);
  return parts.join(' ');
}

/** Awaits `promise`, which must reject with a ServiceBusError carrying `code`; returns the error. */
async function expectSdkError(promise, code, what) {
  let err;
  try {
    await promise;
  } catch (e) {
    err = e;
  }
  assert.ok(err, `${what}: expected a ServiceBusError with code ${code}, but it succeeded`);
  assert.ok(isServiceBusError(err) && err.code === code,
    `${what}: expected ServiceBusError code=${code}, got ${describeSdkError(err)}`);
  return err;
}

/** Long | number -> number. */
function seq(n) {
  if (n === undefined || n === null) return n;
  return typeof n === 'number' ? n : n.toNumber();
}

class SdkCtx {
  constructor(broker, t) {
    this.broker = broker;
    this.t = t;
    this.clients = [];
  }

  /** A ServiceBusClient for the root key (or `key`), fast-failing retries. */
  client(key = ROOT_KEY, options = {}) {
    const c = new ServiceBusClient(connectionString(this.broker, key), {
      retryOptions: { ...RETRY, ...(options.retryOptions || {}) },
    });
    this.clients.push(c);
    return c;
  }

  /** The default client (created on first use). */
  get sb() {
    if (!this._sb) this._sb = this.client();
    return this._sb;
  }

  sender(queue) { return this.sb.createSender(queue); }

  /** Sends the messages one transfer each (tests that are not about batches avoid batch sends). */
  async sendEach(sender, messages) {
    for (const m of messages) await sender.sendMessages(m);
  }

  /** Receiver with auto lock renewal off (the tests renew explicitly). */
  receiver(queue, options = {}) {
    return this.sb.createReceiver(queue, { maxAutoLockRenewalDurationInMs: 0, ...options });
  }

  dlqReceiver(queue, options = {}) {
    return this.receiver(queue, { subQueueType: 'deadLetter', ...options });
  }

  /**
   * receiveMessages until `n` messages arrived or `timeout` ms passed; returns what arrived.
   * Each call waits at most `step` ms.
   */
  async receiveN(receiver, n, timeout = 5000, step = 1000) {
    const out = [];
    const deadline = Date.now() + timeout;
    while (out.length < n) {
      const left = deadline - Date.now();
      if (left <= 0) break;
      const got = await receiver.receiveMessages(n - out.length, { maxWaitTimeInMs: Math.min(step, left) });
      out.push(...got);
    }
    return out;
  }

  /** Exactly `n` messages within `timeout`, else an assertion error naming what arrived. */
  async receiveExactly(receiver, n, timeout = 5000, what = 'messages') {
    const got = await this.receiveN(receiver, n, timeout);
    assert.equal(got.length, n,
      `${what}: expected ${n} message(s) within ${timeout} ms, got ${got.length} (${got.map((m) => JSON.stringify(m.body)).join(', ')})`);
    return got;
  }

  /** No message arrives within `ms`. */
  async expectEmpty(receiver, ms = 700, what = 'queue') {
    const got = await receiver.receiveMessages(10, { maxWaitTimeInMs: ms });
    assert.equal(got.length, 0,
      `${what}: expected no message, got ${got.length}: ${got.map((m) => `${JSON.stringify(m.body)}#${seq(m.sequenceNumber)}`).join(', ')}`);
  }

  async closeAll(timeout) {
    await Promise.allSettled(this.clients.map((c) => withTimeout(c.close(), timeout, 'ServiceBusClient.close')));
  }
}

/**
 * sdkTest(name, [opts], fn) or sdkTest(name, fn, opts): opts.queues = queue declarations (default ['q1', 'q2']),
 * opts.timeout = hard timeout of the body in ms (default 20000).
 */
function sdkTest(name, opts, fn) {
  if (typeof opts === 'function') [fn, opts] = [opts, fn || {}];
  opts = opts || {};
  const timeout = opts.timeout || 20000;
  const queues = opts.queues || ['q1', 'q2'];
  test(name, { timeout: timeout + 30000 }, async (t) => {
    const broker = await startBroker({ queues: [], extraToml: queuesToml(queues), ...(opts.broker || {}) });
    const ctx = new SdkCtx(broker, t);
    let failure = null;
    let timer;
    try {
      await Promise.race([
        fn(ctx),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(`test body exceeded its hard timeout of ${timeout} ms`)), timeout);
        }),
      ]);
    } catch (e) {
      failure = e;
    } finally {
      clearTimeout(timer);
    }
    const crashed = broker.hasExited() ? broker.child.exitCode : undefined;
    await ctx.closeAll(failure ? 2000 : 5000);
    const exit = await broker.stop();
    if (failure) {
      if (isServiceBusError(failure) && !failure.message.startsWith('ServiceBusError')) {
        failure.message = `ServiceBusError code=${failure.code}: ${failure.message}`;
      }
      const tail = broker.stderrTail().slice(-3000);
      if (crashed !== undefined) failure.message += `\n(broker had exited during the test: code=${crashed} signal=${broker.child.signalCode})`;
      failure.message += `\n(broker data dir kept at ${broker.dir})\n--- broker stderr (tail) ---\n${tail}`;
      throw failure;
    }
    assert.equal(crashed, undefined, `broker exited during the test (code=${crashed})`);
    assert.ok(!exit.timedOut, `broker did not exit within 10 s of SIGTERM\n${broker.stderrTail().slice(-2000)}`);
    assert.deepEqual({ code: exit.code, signal: exit.signal }, { code: 0, signal: null },
      `broker exit after SIGTERM\n${broker.stderrTail().slice(-2000)}`);
    broker.removeDir();
  });
}

module.exports = {
  sdkTest,
  SdkCtx,
  queuesToml,
  connectionString,
  expectSdkError,
  describeSdkError,
  withTimeout,
  sleep,
  seq,
  RETRY,
  ROOT_KEY,
};
