'use strict';
// First contact: what a new user does in the first five minutes must work.
//
// * The README's JavaScript quickstarts (the @azure/service-bus one and the rhea one) are
//   extracted from README.md at test time and run verbatim with node, against a broker with the
//   queue (`queue.1`) and key rule (RootManageSharedAccessKey / SAS_KEY_VALUE) the README assumes,
//   those of the embedded default configuration `scripts/run` serves
//   (conformance/python/test_first_contact.py checks that the README and the default agree). The
//   only substitution is the port: `sb://localhost;` -> `sb://localhost:PORT;` (the README says that
//   form works too) and `port: 5672` -> `port: PORT`. `require` resolves against this suite's
//   node_modules (NODE_PATH).
// * A message sent without a message-id is given one by the broker (32 lowercase hex digits, a
//   string), the same on peek, on redelivery and in the dead-letter queue, and can be completed:
//   the SDK with receiveMessages + completeMessage (auto lock renewal on, as in the README) and
//   with subscribe(); rhea. A message that has an id keeps it.
// * header first-acquirer as sent and false on a redelivery (rhea); Open properties product = "ferrobus" and a version.
//
// The tests that do not interfere share one broker (one queue each) and one ServiceBusClient; the
// quickstarts get a fresh broker each, so sequence numbers start at 1.
// Run: conformance/js/run test/first-contact.test.js

const assert = require('node:assert/strict');
const { test, before, after } = require('node:test');
const { execFile } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { ServiceBusClient, isServiceBusError } = require('@azure/service-bus');
const { startBroker } = require('../lib/broker');
const amqp = require('../lib/amqp');
const { connectionString, describeSdkError, RETRY } = require('../lib/sdk');

const REPO = path.resolve(__dirname, '..', '..', '..');
const README = path.join(REPO, 'README.md');
const NODE_MODULES = path.resolve(__dirname, '..', 'node_modules');
const HEX32 = /^[0-9a-f]{32}$/;
const DEFAULT_QUEUE = 'queue.1';
const QUICKSTART_TIMEOUT_MS = 60000;

const SHARED_QUEUES = ['sdk-noid', 'sdk-subscribe', 'sdk-noid-stable', 'rhea-noid', 'rhea-ids', 'rhea-first-acquirer'];

// ---------------------------------------------------------------------------
// the shared broker and client

let shared = null;
let sb = null;

before(async () => {
  shared = await startBroker({ queues: SHARED_QUEUES });
});

after(async () => {
  if (sb) await amqp.withTimeout(sb.close(), 5000, 'ServiceBusClient.close').catch(() => {});
  if (!shared) return;
  const exit = await shared.stop();
  assert.deepEqual({ code: exit.code, signal: exit.signal }, { code: 0, signal: null },
    `shared broker exit after SIGTERM\n${shared.stderrTail().slice(-3000)}`);
  shared.removeDir();
});

function client() {
  if (!sb) sb = new ServiceBusClient(connectionString(shared), { retryOptions: { ...RETRY } }); // the SDK writes into it
  return sb;
}

/** A test on the shared broker: bounded, the broker's stderr appended to a failure. */
function sharedTest(name, fn, timeout = 25000) {
  test(name, { timeout: timeout + 10000 }, async () => {
    assert.ok(shared && !shared.hasExited(), 'the shared broker is not running');
    const conns = [];
    try {
      await amqp.withTimeout(fn(conns), timeout, `test body of "${name}"`);
    } catch (e) {
      if (isServiceBusError(e)) e.message = describeSdkError(e);
      e.message += `\n--- broker stderr (tail) ---\n${shared.stderrTail().slice(-3000)}`;
      throw e;
    } finally {
      await Promise.all(conns.map((c) => amqp.closeConnection(c, 2000)));
    }
  });
}

async function connectShared(conns) {
  const c = await amqp.connect(shared);
  conns.push(c);
  return c;
}

// ---------------------------------------------------------------------------
// 1. the README's quickstarts, verbatim

function readmeBlock(title, lang) {
  const text = fs.readFileSync(README, 'utf8');
  const section = text.split(/^## /m).find((s) => s.startsWith(`${title}\n`) || s.startsWith(`${title} `));
  assert.ok(section, `README.md has no section "## ${title}"`);
  const re = new RegExp('^```' + lang + '[ \\t]*\\n([\\s\\S]*?)^```', 'gm');
  const blocks = [...section.matchAll(re)].map((m) => m[1]);
  assert.equal(blocks.length, 1, `README.md section "${title}": expected one \`\`\`${lang} block, found ${blocks.length}`);
  return blocks[0];
}

function substituteOnce(code, from, to) {
  assert.equal(code.split(from).length - 1, 1, `the README code is expected to contain ${JSON.stringify(from)} once:\n${code}`);
  return code.replace(from, to);
}

/** Runs `code` with node from a temp dir; resolves {code, signal, stdout, stderr, ms}. */
function runNode(code, fileName) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferrobus-quickstart-'));
  const file = path.join(dir, fileName);
  fs.writeFileSync(file, code);
  const env = { ...process.env, NODE_PATH: NODE_MODULES };
  const t0 = Date.now();
  return new Promise((resolve) => {
    execFile(process.execPath, [file], { cwd: dir, env, timeout: QUICKSTART_TIMEOUT_MS, killSignal: 'SIGKILL' },
      (err, stdout, stderr) => {
        fs.rmSync(dir, { recursive: true, force: true });
        resolve({
          code: err ? (typeof err.code === 'number' ? err.code : null) : 0,
          signal: err ? err.signal : null,
          timedOut: Boolean(err && err.killed),
          stdout,
          stderr,
          ms: Date.now() - t0,
        });
      });
  });
}

/** The topics of the embedded default configuration (deploy/ferrobus.toml, from its first
 * [[topics]] to the end), for the topics quickstart. */
function defaultTopicsToml() {
  const text = fs.readFileSync(path.join(REPO, 'deploy', 'ferrobus.toml'), 'utf8');
  const at = text.indexOf('[[topics]]');
  assert.ok(at >= 0, 'deploy/ferrobus.toml declares no topic');
  return text.slice(at);
}

/** A fresh broker with the README's queue (and extra TOML); fn(broker); the broker must exit 0
 * afterwards. */
async function withQuickstartBroker(fn, extraToml = '') {
  const b = await startBroker({ queues: [DEFAULT_QUEUE], extraToml });
  try {
    await fn(b);
  } catch (e) {
    await b.stop();
    e.message += `\n--- broker stderr (tail) ---\n${b.stderrTail().slice(-3000)}`;
    throw e;
  }
  const exit = await b.stop();
  assert.deepEqual({ code: exit.code, signal: exit.signal }, { code: 0, signal: null },
    `broker exit after SIGTERM\n${b.stderrTail().slice(-2000)}`);
  b.removeDir();
}

async function assertQueueEmpty(b, queue) {
  const conn = await amqp.connect(b);
  try {
    const rcv = await amqp.openReceiver(conn, { source: queue, autoaccept: false });
    await amqp.expectNothing(rcv, 500);
  } finally {
    await amqp.closeConnection(conn);
  }
}

function describeRun(what, r) {
  return `${what}: exit ${r.code}${r.signal ? ` (signal ${r.signal})` : ''}${r.timedOut ? ' (timed out)' : ''} after ${r.ms} ms\n`
    + `--- stdout ---\n${r.stdout}\n--- stderr ---\n${r.stderr.slice(-6000)}`;
}

test('README: the Service Bus SDK quickstart (JS) runs verbatim and prints "hello 1"', { timeout: QUICKSTART_TIMEOUT_MS + 30000 }, async () => {
  const code = readmeBlock('Service Bus SDK quickstart', 'js');
  await withQuickstartBroker(async (b) => {
    const run = await runNode(substituteOnce(code, 'Endpoint=sb://localhost;', `Endpoint=sb://localhost:${b.amqpPort};`),
      'quickstart-sdk.js');
    assert.ok(run.code === 0 && run.stdout === 'hello 1\n', describeRun('README SDK quickstart (js)', run));
    await assertQueueEmpty(b, DEFAULT_QUEUE); // completeMessage really completed it
  });
});

test('README: the topics quickstart (JS) runs verbatim against the default topic', { timeout: QUICKSTART_TIMEOUT_MS + 30000 }, async () => {
  const code = readmeBlock('Topics quickstart', 'js');
  await withQuickstartBroker(async (b) => {
    const run = await runNode(substituteOnce(code, 'Endpoint=sb://localhost;', `Endpoint=sb://localhost:${b.amqpPort};`),
      'quickstart-topics.js');
    assert.ok(run.code === 0
      && run.stdout === 'subscription.1 red one\nsubscription.1 blue one\nsubscription.2 red one\n',
    describeRun('README topics quickstart (js)', run));
  }, defaultTopicsToml());
});

test('README: the sessions quickstart (JS) runs verbatim against a session queue', { timeout: QUICKSTART_TIMEOUT_MS + 30000 }, async () => {
  const code = readmeBlock('Sessions quickstart', 'js');
  await withQuickstartBroker(async (b) => {
    const run = await runNode(substituteOnce(code, 'Endpoint=sb://localhost;', `Endpoint=sb://localhost:${b.amqpPort};`),
      'quickstart-sessions.js');
    assert.ok(run.code === 0 && run.stdout === 'session order-7\nstep 0\nstep 1\nstep 2\n',
      describeRun('README sessions quickstart (js)', run));
  }, '[[queues]]\nname = "session.1"\nrequires_session = true\n');
});

test('README: the rhea quickstart runs verbatim and prints "hello"', { timeout: QUICKSTART_TIMEOUT_MS + 30000 }, async () => {
  const code = readmeBlock('A plain AMQP client', 'js');
  await withQuickstartBroker(async (b) => {
    const run = await runNode(substituteOnce(code, 'port: 5672', `port: ${b.amqpPort}`), 'quickstart-rhea.js');
    assert.ok(run.code === 0 && run.stdout === 'hello\n', describeRun('README rhea quickstart', run));
    await assertQueueEmpty(b, DEFAULT_QUEUE);
  });
});

// ---------------------------------------------------------------------------
// 2. a message without a message-id gets one from the broker: the SDK

async function receiveOne(receiver, timeout = 8000, what = 'a message') {
  const deadline = Date.now() + timeout;
  while (Date.now() < deadline) {
    const got = await receiver.receiveMessages(1, { maxWaitTimeInMs: Math.min(2000, Math.max(100, deadline - Date.now())) });
    if (got.length) return got[0];
  }
  throw new Error(`no message arrived within ${timeout} ms (${what})`);
}

async function expectNoMessage(receiver, ms, what) {
  const got = await receiver.receiveMessages(10, { maxWaitTimeInMs: ms });
  assert.deepEqual(got.map((m) => [m.body, m.messageId]), [], `${what}: expected nothing`);
}

function assertAssignedId(id, what) {
  assert.ok(id !== undefined && id !== null, `${what}: the message arrived without a message-id`);
  assert.ok(typeof id === 'string' && HEX32.test(id),
    `${what}: the broker-assigned message-id ${JSON.stringify(id)} (${typeof id}) is not 32 lowercase hex digits`);
}

sharedTest('SDK: a message sent without messageId gets one; receiveMessages + completeMessage (auto lock renewal on)', async () => {
  const q = 'sdk-noid';
  const sender = client().createSender(q);
  const receiver = client().createReceiver(q); // defaults, as the README: peekLock, auto lock renewal on
  try {
    await sender.sendMessages({ body: 'x' });
    const m = await receiveOne(receiver);
    assert.equal(m.body, 'x');
    assertAssignedId(m.messageId, 'receiveMessages');
    await receiver.completeMessage(m);
    await expectNoMessage(receiver, 700, 'queue after completeMessage');
  } finally {
    await receiver.close();
    await sender.close();
  }
});

sharedTest('SDK: subscribe() with auto-complete handles a message sent without messageId', async () => {
  const q = 'sdk-subscribe';
  const sender = client().createSender(q);
  const receiver = client().createReceiver(q);
  const seen = [];
  const errors = [];
  let sub = null;
  try {
    await sender.sendMessages({ body: 'y' });
    sub = receiver.subscribe({
      processMessage: async (m) => { seen.push(m); },
      processError: async (args) => { errors.push(`${args.errorSource}: ${describeSdkError(args.error)}`); },
    });
    await amqp.waitUntil(() => seen.length >= 1 || errors.length > 0, 10000, 'processMessage or processError');
    await amqp.sleep(500); // the auto-completion after processMessage (or its error)
    await sub.close();
    sub = null;
    assert.deepEqual(errors, [], 'processError was called');
    assert.equal(seen.length, 1);
    assert.equal(seen[0].body, 'y');
    assertAssignedId(seen[0].messageId, 'subscribe');
    // auto-complete removed it: a new receiver finds the queue empty
    const check = client().createReceiver(q, { receiveMode: 'receiveAndDelete' });
    try {
      await expectNoMessage(check, 700, 'queue after subscribe auto-completed');
    } finally {
      await check.close();
    }
  } finally {
    if (sub) await sub.close().catch(() => {});
    await receiver.close();
    await sender.close();
  }
});

sharedTest('SDK: the assigned id is the same on peek, after abandon and in the dead-letter queue', async () => {
  const q = 'sdk-noid-stable';
  const sender = client().createSender(q);
  const receiver = client().createReceiver(q);
  const dlq = client().createReceiver(q, { subQueueType: 'deadLetter' });
  try {
    await sender.sendMessages([{ body: 'a' }, { body: 'b' }]); // an array: one batched transfer
    const peeked = await receiver.peekMessages(2);
    assert.deepEqual(peeked.map((m) => m.body), ['a', 'b']);
    const [pa, pb] = peeked.map((m) => m.messageId);
    assertAssignedId(pa, 'peekMessages');
    assertAssignedId(pb, 'peekMessages');
    assert.notEqual(pa, pb, 'two messages got the same assigned id');
    const m1 = await receiveOne(receiver);
    assert.deepEqual([m1.body, m1.messageId], ['a', pa], 'receive after peek');
    await receiver.abandonMessage(m1);
    const m2 = await receiveOne(receiver);
    assert.deepEqual([m2.body, m2.messageId, m2.deliveryCount], ['a', pa, 1], 'redelivery after abandon');
    await receiver.deadLetterMessage(m2, { deadLetterReason: 'first-contact', deadLetterErrorDescription: 'test' });
    const m3 = await receiveOne(receiver);
    assert.deepEqual([m3.body, m3.messageId], ['b', pb]);
    await receiver.completeMessage(m3);
    const d = await receiveOne(dlq, 8000, 'dead-letter queue');
    assert.deepEqual([d.body, d.messageId], ['a', pa], 'the dead-lettered copy');
    await dlq.completeMessage(d);
    await expectNoMessage(dlq, 500, 'dead-letter queue after complete');
  } finally {
    await dlq.close();
    await receiver.close();
    await sender.close();
  }
});

// ---------------------------------------------------------------------------
// 2. rhea

sharedTest('rhea: a message without message_id gets one, the same on redelivery, and is accepted', async (conns) => {
  const q = 'rhea-noid';
  const conn = await connectShared(conns);
  const snd = await amqp.openSender(conn, q);
  await amqp.sendOne(snd, { body: 'x' });
  const rcv = await amqp.openReceiver(conn, { source: q, autoaccept: false });
  const first = await amqp.takeOne(rcv);
  assert.equal(first.message.body, 'x');
  assertAssignedId(first.message.message_id, 'rhea receive');
  first.delivery.modified({ delivery_failed: true }); // abandon
  const again = await amqp.takeOne(rcv);
  assert.equal(again.message.message_id, first.message.message_id, 'the id on redelivery');
  assert.equal(amqp.deliveryCount(again.message), 1);
  again.delivery.accept();
  await amqp.expectNothing(rcv, 500);
  assert.ok(conn.is_open() && !conn.error, `connection: ${conn.events.join(', ')}`);
});

sharedTest('rhea: message ids that were sent come back unchanged (string, ulong, uuid, binary)', async (conns) => {
  const q = 'rhea-ids';
  const uuidBuf = amqp.rhea.string_to_uuid('6f1c0b0e-3a9d-4c47-9a3e-2b8f5d0c7e11');
  const bin = Buffer.from([0, 1, 0x62, 0x69, 0x6e, 0xff]);
  const ids = ['explicit-id-1', 4242, uuidBuf, amqp.rhea.types.wrap_binary(bin)];
  const expected = ['explicit-id-1', 4242, uuidBuf, bin];
  const conn = await connectShared(conns);
  const snd = await amqp.openSender(conn, q);
  await amqp.sendAll(snd, ids.length, (i) => ({ body: `m${i}`, message_id: ids[i] }));
  const rcv = await amqp.openReceiver(conn, q);
  const got = await amqp.take(rcv, ids.length);
  assert.deepEqual(got.map((x) => x.message.body), ids.map((_, i) => `m${i}`));
  got.forEach((x, i) => {
    const have = x.message.message_id;
    if (Buffer.isBuffer(expected[i])) {
      assert.ok(Buffer.isBuffer(have) && have.equals(expected[i]), `id ${i}: sent ${expected[i].toString('hex')}, got ${JSON.stringify(have)}`);
    } else {
      assert.equal(typeof have, typeof expected[i], `id ${i}: type`);
      assert.equal(have, expected[i], `id ${i}`);
    }
  });
});

// ---------------------------------------------------------------------------
// 4. first-acquirer, 5. Open properties

sharedTest('rhea: header first_acquirer is delivered as sent', async (conns) => {
  const q = 'rhea-first-acquirer';
  const conn = await connectShared(conns);
  const snd = await amqp.openSender(conn, q);
  const sent = [
    { body: 'fa-false', first_acquirer: false, durable: true }, // a header on the wire, first-acquirer false
    { body: 'fa-true', first_acquirer: true },
  ];
  await amqp.sendAll(snd, sent.length, (i) => sent[i]);
  const rcv = await amqp.openReceiver(conn, { source: q, autoaccept: false });
  const seen = (x) => [x.message.body, x.message.first_acquirer === true, amqp.deliveryCount(x.message)];
  const got = await amqp.take(rcv, sent.length);
  got.forEach((x) => x.delivery.accept());
  assert.deepEqual(got.map(seen), [['fa-false', false, 0], ['fa-true', true, 0]]);
  // a redelivery is not a first acquisition, whatever the producer said
  await amqp.sendOne(snd, { body: 'fa-redelivered', first_acquirer: true });
  const first = await amqp.takeOne(rcv);
  assert.deepEqual(seen(first), ['fa-redelivered', true, 0]);
  first.delivery.modified({ delivery_failed: true });
  const again = await amqp.takeOne(rcv);
  assert.deepEqual(seen(again), ['fa-redelivered', false, 1]);
  again.delivery.accept();
});

sharedTest('rhea: the broker Open carries properties product = "ferrobus" and a version', async (conns) => {
  const conn = await connectShared(conns);
  const props = conn.properties;
  assert.ok(props && typeof props === 'object', `Open properties: ${JSON.stringify(props)}`);
  assert.equal(props.product, 'ferrobus', `Open properties: ${JSON.stringify(props)}`);
  assert.ok(typeof props.version === 'string' && props.version.trim() !== '', `Open properties: ${JSON.stringify(props)}`);
});
