'use strict';
// Message sessions through the official JS SDK (@azure/service-bus): acceptSession and
// acceptNextSession on a session queue and a session subscription, order within a session,
// session state, renewSessionLock, subscribe() on a session receiver, the errors for a busy
// session and for no session in time.
//
// One broker and one client for the whole file; each test has session ids of its own.
// Run: conformance/js/run test/sessions.test.js

const assert = require('node:assert/strict');
const { test, before, after } = require('node:test');
const { ServiceBusClient, isServiceBusError } = require('@azure/service-bus');
const { startBroker } = require('../lib/broker');
const amqp = require('../lib/amqp');
const { connectionString, RETRY } = require('../lib/sdk');

const TOML = `
[[queues]]
name = "js-sessions"
requires_session = true

[[queues]]
name = "js-next"
requires_session = true

[[topics]]
name = "js-devices"
[[topics.subscriptions]]
name = "per-device"
requires_session = true
`;

let broker = null;
let sb = null;

before(async () => {
  broker = await startBroker({ queues: [], extraToml: TOML });
  sb = new ServiceBusClient(connectionString(broker), { retryOptions: RETRY });
});

after(async () => {
  if (sb) await amqp.withTimeout(sb.close(), 5000, 'ServiceBusClient.close').catch(() => {});
  if (!broker) return;
  const exit = await broker.stop();
  assert.deepEqual({ code: exit.code, signal: exit.signal }, { code: 0, signal: null },
    `broker exit after SIGTERM\n${broker.stderrTail().slice(-3000)}`);
  assert.doesNotMatch(broker.stderrTail(), /panicked/);
  broker.removeDir();
});

async function send(entity, messages) {
  const s = sb.createSender(entity);
  try {
    await s.sendMessages(messages);
  } finally {
    await s.close();
  }
}

async function receiveN(r, n) {
  const got = [];
  const deadline = Date.now() + 10000;
  while (got.length < n && Date.now() < deadline) {
    got.push(...await r.receiveMessages(n - got.length, { maxWaitTimeInMs: 1000 }));
  }
  return got;
}

test('acceptSession receives its session in order, with state and a renewable lock', async () => {
  await send('js-sessions', [0, 1, 2, 3, 4, 5].map((i) => ({ body: `m${i}`, sessionId: `a${i % 2}` })));
  const r = await sb.acceptSession('js-sessions', 'a1');
  try {
    assert.equal(r.sessionId, 'a1');
    assert.ok(r.sessionLockedUntilUtc > new Date(), `${r.sessionLockedUntilUtc}`);
    const got = await receiveN(r, 3);
    assert.deepEqual(got.map((m) => m.body), ['m1', 'm3', 'm5']);
    assert.ok(got.every((m) => m.sessionId === 'a1'));
    for (const m of got) await r.completeMessage(m);
    assert.ok((await r.getSessionState()) == null, 'no state before one is set');
    // the SDK sends text as its JSON and reads it back
    await r.setSessionState('step-1');
    assert.equal(await r.getSessionState(), 'step-1');
    await r.setSessionState(Buffer.from([0, 1, 2]));
    assert.deepEqual([...Buffer.from(await r.getSessionState())], [0, 1, 2]);
    const before = r.sessionLockedUntilUtc;
    await new Promise((res) => setTimeout(res, 50));
    const renewed = await r.renewSessionLock();
    assert.ok(renewed >= before, `${renewed} < ${before}`);
  } finally {
    await r.close();
  }
  // a busy session is refused with SessionCannotBeLocked
  const holder = await sb.acceptSession('js-sessions', 'a0');
  try {
    await assert.rejects(sb.acceptSession('js-sessions', 'a0'),
      (e) => isServiceBusError(e) && e.code === 'SessionCannotBeLocked');
    const got = await receiveN(holder, 3);
    assert.deepEqual(got.map((m) => m.body), ['m0', 'm2', 'm4']);
    for (const m of got) await holder.completeMessage(m);
  } finally {
    await holder.close();
  }
});

test('acceptNextSession picks a session with messages, and times out when none is left', async () => {
  await send('js-next', [{ body: 'n1', sessionId: 'next-1' }]);
  const r = await sb.acceptNextSession('js-next', { maxAutoLockRenewalDurationInMs: 0 });
  try {
    assert.equal(r.sessionId, 'next-1');
    const got = await receiveN(r, 1);
    assert.deepEqual(got.map((m) => m.body), ['n1']);
    await r.completeMessage(got[0]);
  } finally {
    await r.close();
  }
  // the client's operation timeout is what it asks the broker to wait (com.microsoft:timeout)
  const quick = new ServiceBusClient(connectionString(broker),
    { retryOptions: { ...RETRY, timeoutInMs: 2000 } });
  try {
    const started = Date.now();
    await assert.rejects(
      quick.acceptNextSession('js-next', { maxAutoLockRenewalDurationInMs: 0 }),
      (e) => isServiceBusError(e) && e.code === 'ServiceTimeout',
    );
    const waited = Date.now() - started;
    assert.ok(waited >= 1500 && waited < 9000, `waited ${waited} ms`);
  } finally {
    await amqp.withTimeout(quick.close(), 5000, 'ServiceBusClient.close').catch(() => {});
  }
});

test('subscribe() on a session receiver of a session subscription', async () => {
  await send('js-devices', [0, 1, 2, 3].map((i) => ({ body: `d${i}`, sessionId: `dev-${i % 2}` })));
  const r = await sb.acceptSession('js-devices', 'per-device', 'dev-0');
  try {
    const bodies = await new Promise((resolve, reject) => {
      const seen = [];
      const sub = r.subscribe({
        async processMessage(m) {
          seen.push(m.body);
          if (seen.length === 2) {
            sub.close().then(() => resolve(seen), reject);
          }
        },
        async processError(args) {
          reject(args.error);
        },
      });
    });
    assert.deepEqual(bodies, ['d0', 'd2']);
  } finally {
    await r.close();
  }
  const other = await sb.acceptSession('js-devices', 'per-device', 'dev-1');
  try {
    const got = await receiveN(other, 2);
    assert.deepEqual(got.map((m) => m.body), ['d1', 'd3']);
    for (const m of got) await other.completeMessage(m);
  } finally {
    await other.close();
  }
});
