'use strict';
// rhea helpers + the per-test harness (`brokerTest`): every test gets its own
// broker, a hard timeout, graceful client shutdown, and a check that the
// broker exits 0 on SIGTERM.

const assert = require('node:assert/strict');
const { test } = require('node:test');
const rhea = require('rhea');
const { startBroker, ROOT_KEY } = require('./broker');

// ---------------------------------------------------------------------------
// Record what the broker said during SASL (rhea does not keep it).
const SaslClient = rhea.sasl.Client;
const origOnMechanisms = SaslClient.prototype.on_sasl_mechanisms;
SaslClient.prototype.on_sasl_mechanisms = function (frame) {
  const m = frame.performative.sasl_server_mechanisms;
  this.connection.offeredSaslMechanisms = Array.isArray(m) ? m.map(String) : (m == null ? [] : [String(m)]);
  return origOnMechanisms.call(this, frame);
};
const origOnOutcome = SaslClient.prototype.on_sasl_outcome;
SaslClient.prototype.on_sasl_outcome = function (frame) {
  this.connection.saslOutcomeCode = frame.performative.code;
  return origOnOutcome.call(this, frame);
};

// Count and size every frame rhea decodes (process-wide; tests reset it).
const rheaFrames = require('rhea/lib/frames.js');
const frameStats = { count: 0, maxSize: 0, reset() { this.count = 0; this.maxSize = 0; } };
const origReadFrame = rheaFrames.read_frame;
rheaFrames.read_frame = function (buffer) {
  frameStats.count++;
  if (buffer.length > frameStats.maxSize) frameStats.maxSize = buffer.length;
  return origReadFrame.call(this, buffer);
};

// ---------------------------------------------------------------------------
// small async utilities

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls pred() every 5 ms until truthy; rejects with `what` after timeout. */
async function waitUntil(pred, timeout, what) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = pred();
    if (v) return v;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${typeof what === 'function' ? what() : what}`);
    }
    await sleep(5);
  }
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

function describeError(e) {
  if (!e) return String(e);
  return `${e.condition || ''} ${e.description || e.message || ''}`.trim() || JSON.stringify(e);
}

// ---------------------------------------------------------------------------
// connections

let connCounter = 0;

/**
 * Opens a rhea connection to the broker without waiting. Returned connection
 * carries:
 *   conn.opened        - promise: connection_open (rejects on error/close/disconnect first)
 *   conn.socketClosed  - promise: the TCP socket closed
 *   conn.events        - ordered list of connection-level events seen
 *   conn.containerErrors - errors rhea raised on the container (unhandled link/session errors)
 * Default is *no SASL* (rhea skips SASL when no username/mechanisms are given).
 */
function connectRaw(broker, opts = {}) {
  const container = rhea.create_container({ id: `ferrobus-js-${process.pid}-${++connCounter}` });
  const containerErrors = [];
  container.on('error', (e) => containerErrors.push(e));
  const conn = container.connect({
    host: broker.host,
    port: broker.amqpPort,
    reconnect: false,
    ...opts,
  });
  conn.containerErrors = containerErrors;
  conn.events = [];
  const record = (name) => (ctx) => {
    const err = ctx && (ctx.error || (ctx.connection && ctx.connection.error));
    conn.events.push(err ? `${name}(${describeError(err)})` : name);
  };
  conn.opened = new Promise((resolve, reject) => {
    conn.on('connection_open', (ctx) => { record('connection_open')(ctx); resolve(conn); });
    conn.on('connection_error', (ctx) => {
      record('connection_error')(ctx);
      reject(Object.assign(new Error(`connection_error: ${describeError(ctx.error || conn.error)}`), { amqpError: ctx.error || conn.error }));
    });
    conn.on('connection_close', (ctx) => {
      record('connection_close')(ctx);
      reject(new Error(`connection closed by peer before open: ${describeError(conn.error)}`));
    });
    conn.on('protocol_error', (e) => {
      conn.events.push(`protocol_error(${e && e.message})`);
      reject(Object.assign(new Error(`protocol_error: ${e && e.message}`), { protocolError: e }));
    });
    conn.on('disconnected', (ctx) => {
      record('disconnected')(ctx);
      reject(new Error(`disconnected before open${ctx && ctx.error ? ': ' + ctx.error : ''}`));
    });
  });
  conn.opened.catch(() => {});
  conn.socketClosed = new Promise((resolve) => {
    conn.socket.once('close', () => { conn.events.push('socket_close'); resolve(); });
  });
  conn.socketClosed.catch(() => {});
  return conn;
}

/** SASL PLAIN with the root key from the default config. */
const PLAIN_ROOT = Object.freeze({ username: ROOT_KEY.name, password: ROOT_KEY.key });

async function connect(broker, opts = PLAIN_ROOT, timeout = 10000) {
  const conn = connectRaw(broker, opts);
  return withTimeout(conn.opened, timeout, `connection_open (events: ${conn.events.join(', ')})`);
}

async function closeConnection(conn, timeout = 3000) {
  try {
    if (!conn.socket.destroyed) {
      if (!conn.is_closed()) conn.close();
      await withTimeout(conn.socketClosed, timeout, 'socket close after connection close');
    }
  } catch (_) {
    // fall through to destroy
  } finally {
    if (!conn.socket.destroyed) conn.socket.destroy();
  }
}

// ---------------------------------------------------------------------------
// links

function instrumentLink(link) {
  link.linkEvents = [];
  link.linkErrors = [];
  const prefix = link.is_receiver() ? 'receiver' : 'sender';
  link.on(`${prefix}_error`, (ctx) => {
    const l = ctx.receiver || ctx.sender;
    link.linkErrors.push(l.error);
    link.linkEvents.push(`${prefix}_error(${describeError(l.error)})`);
  });
  link.on(`${prefix}_close`, () => { link.linkEvents.push(`${prefix}_close`); link.remoteClosed = true; });
  link.on(`${prefix}_open`, () => { link.linkEvents.push(`${prefix}_open`); link.remoteOpened = true; });
  if (link.is_receiver()) {
    link.inbox = [];
    link.received = 0;
    link.drainedCount = 0;
    link.settledEvents = [];
    link.on('message', (ctx) => {
      link.received++;
      link.inbox.push({ message: ctx.message, delivery: ctx.delivery });
    });
    link.on('receiver_drained', () => { link.drainedCount++; link.linkEvents.push('receiver_drained'); });
    link.on('settled', (ctx) => { link.settledEvents.push(ctx.delivery); });
  } else {
    link.outcomes = { accepted: 0, released: 0, rejected: 0, modified: 0 };
    link.badOutcomes = [];
    link.on('accepted', () => { link.outcomes.accepted++; });
    for (const o of ['released', 'rejected', 'modified']) {
      link.on(o, (ctx) => {
        link.outcomes[o]++;
        link.badOutcomes.push(`${o}${ctx.delivery.remote_state && ctx.delivery.remote_state.error ? ' ' + describeError(ctx.delivery.remote_state.error) : ''}`);
      });
    }
  }
  return link;
}

function waitLinkOpen(link, timeout = 10000) {
  return waitUntil(() => {
    if (link.linkErrors.length) {
      throw new Error(`link refused: ${link.linkEvents.join(', ')}`);
    }
    if (link.remoteClosed) throw new Error(`link closed by broker: ${link.linkEvents.join(', ')}`);
    return link.remoteOpened;
  }, timeout, () => `attach reply (events so far: ${link.linkEvents.join(', ') || 'none'})`).then(() => link);
}

/** Opens a sender; resolves once the broker's attach reply arrived. */
async function openSender(conn, opts, timeout = 10000) {
  const o = typeof opts === 'string' ? { target: opts } : opts;
  const sender = instrumentLink(conn.open_sender(o));
  await waitLinkOpen(sender, timeout);
  return sender;
}

/** Opens a receiver; resolves once the broker's attach arrived. */
async function openReceiver(conn, opts, timeout = 10000) {
  const o = typeof opts === 'string' ? { source: opts } : opts;
  const receiver = instrumentLink(conn.open_receiver(o));
  await waitLinkOpen(receiver, timeout);
  return receiver;
}

/**
 * Sends `count` messages produced by make(i), respecting credit and rhea's
 * session buffer. If waitAccepted, resolves only when every delivery was
 * accepted (rejects on any other outcome).
 */
function sendAll(sender, count, make, { waitAccepted = true, timeout = 60000 } = {}) {
  const start = sender.outcomes.accepted;
  let i = 0;
  const deliveries = [];
  const pump = () => {
    while (i < count && sender.sendable()) {
      deliveries.push(sender.send(make(i)));
      i++;
    }
  };
  sender.on('sendable', pump);
  pump();
  return waitUntil(() => {
    if (sender.badOutcomes.length) throw new Error(`unexpected outcome(s): ${sender.badOutcomes.slice(0, 5).join('; ')}`);
    if (sender.linkErrors.length || sender.remoteClosed) throw new Error(`sender closed: ${sender.linkEvents.join(', ')}`);
    if (waitAccepted) return sender.outcomes.accepted - start >= count;
    return i >= count && sender.session.outgoing.next_pending_delivery >= sender.session.outgoing.next_delivery_id;
  }, timeout, () => `${count} messages ${waitAccepted ? 'accepted' : 'written'}: sent ${i}, accepted ${sender.outcomes.accepted - start}, credit ${sender.credit}`)
    .then(() => deliveries)
    .finally(() => sender.removeListener('sendable', pump));
}

/** Sends one message and waits for its outcome to be `accepted`. */
async function sendOne(sender, msg, timeout = 10000) {
  const [d] = await sendAll(sender, 1, () => msg, { timeout });
  return d;
}

/** Takes exactly n messages from the receiver's inbox, waiting for them. */
async function take(receiver, n, timeout = 10000) {
  await waitUntil(() => {
    if (receiver.linkErrors.length) throw new Error(`receiver closed with error: ${receiver.linkEvents.join(', ')}`);
    return receiver.inbox.length >= n;
  }, timeout, () => `${n} message(s) on receiver ${receiver.source && receiver.source.address}; have ${receiver.inbox.length}`);
  return receiver.inbox.splice(0, n);
}

async function takeOne(receiver, timeout) {
  return (await take(receiver, 1, timeout))[0];
}

/** Asserts nothing arrives on the receiver for `ms`. */
async function expectNothing(receiver, ms = 600) {
  await sleep(ms);
  assert.equal(receiver.inbox.length, 0,
    `expected no message, got ${receiver.inbox.length}: ${receiver.inbox.slice(0, 3).map((x) => JSON.stringify(x.message.body)).join(', ')}`);
}

/** delivery-count from the header; an absent header means 0. */
function deliveryCount(message) {
  return message.delivery_count === undefined || message.delivery_count === null ? 0 : message.delivery_count;
}

// ---------------------------------------------------------------------------
// the per-test harness

class TestCtx {
  constructor(broker, t) {
    this.broker = broker;
    this.t = t;
    this.conns = [];
  }

  get url() { return `amqp://${this.broker.host}:${this.broker.amqpPort}`; }

  /** Connection without waiting for open (default: no SASL unless opts say so). */
  connectRaw(opts = {}) {
    const c = connectRaw(this.broker, opts);
    this.conns.push(c);
    return c;
  }

  /** Opened connection; default SASL PLAIN with the root key. */
  async connect(opts = PLAIN_ROOT, timeout = 10000) {
    const c = this.connectRaw(opts);
    return withTimeout(c.opened, timeout, `connection_open (events: ${c.events.join(', ')})`);
  }

  /** SIGTERM the broker from inside a test (the harness then skips its own stop check). */
  async stopBroker() {
    this.stoppedByTest = true;
    return this.broker.stop();
  }

  async closeAll(timeout) {
    await Promise.all(this.conns.map((c) => closeConnection(c, timeout)));
  }
}

/**
 * Declares a node:test test that runs against its own broker.
 *   opts.broker  - startBroker options (amqp overrides, queues, ...)
 *   opts.timeout - hard limit for the body in ms (default 30 s)
 */
function brokerTest(name, opts, fn) {
  if (typeof opts === 'function') { fn = opts; opts = {}; }
  const timeout = opts.timeout || 30000;
  test(name, { timeout: timeout + 40000 }, async (t) => {
    const broker = await startBroker(opts.broker || {});
    const ctx = new TestCtx(broker, t);
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
    const crashed = broker.hasExited() && !ctx.stoppedByTest ? broker.child.exitCode : undefined;
    await ctx.closeAll(failure ? 1000 : 3000);
    const exit = await broker.stop();
    if (ctx.stoppedByTest && !failure) {
      broker.removeDir();
      return;
    }
    if (failure) {
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
  rhea,
  brokerTest,
  connectRaw,
  connect,
  closeConnection,
  openSender,
  openReceiver,
  instrumentLink,
  waitLinkOpen,
  sendAll,
  sendOne,
  take,
  takeOne,
  expectNothing,
  deliveryCount,
  waitUntil,
  withTimeout,
  sleep,
  describeError,
  PLAIN_ROOT,
  ROOT_KEY,
  frameStats,
};
