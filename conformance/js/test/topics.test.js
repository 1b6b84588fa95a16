'use strict';
// Topics and subscriptions through the official JS SDK (@azure/service-bus): a topic sender,
// subscription receivers selected by SQL and correlation rules from the configuration,
// per-subscription sequence numbers, a subscription's dead-letter queue, schedule / cancel on
// the topic, the errors for receiving from a topic or sending to a subscription, and rules
// managed at runtime with ServiceBusRuleManager (kept across a restart).
//
// One broker and one client for the whole file; each test has a topic of its own.
// Run: conformance/js/run test/topics.test.js

const assert = require('node:assert/strict');
const { test, before, after } = require('node:test');
const { ServiceBusClient, isServiceBusError } = require('@azure/service-bus');
const { startBroker } = require('../lib/broker');
const amqp = require('../lib/amqp');
const { connectionString, RETRY } = require('../lib/sdk');

const SUBSCRIPTIONS = `
[[topics.subscriptions]]
name = "all"

[[topics.subscriptions]]
name = "eu"
[[topics.subscriptions.rules]]
name = "region"
sql = "region = 'eu' AND amount > 100"

[[topics.subscriptions]]
name = "urgent"
[[topics.subscriptions.rules]]
name = "label"
label = "urgent"
`;

const TOPICS = ['js-fanout', 'js-dlq', 'js-sched', 'js-refuse', 'js-rules'];

let broker = null;
let sb = null;

before(async () => {
  const extraToml = TOPICS.map((t) => `[[topics]]\nname = "${t}"\n${SUBSCRIPTIONS}`).join('\n');
  broker = await startBroker({ queues: [], extraToml });
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

// Every rule of a rule manager (listRules pages through them).
async function listRules(rm) {
  const out = [];
  for await (const r of rm.listRules()) out.push(r);
  return out;
}

function order(n, region, amount, subject) {
  return { body: `order-${n}`, applicationProperties: { n, region, amount }, subject };
}

// Receives until `count` messages arrived (then checks nothing more comes), completes them.
async function drain(topic, sub, count, options = {}) {
  const r = sb.createReceiver(topic, sub, options);
  try {
    const got = [];
    const deadline = Date.now() + 10000;
    while (got.length < count && Date.now() < deadline) {
      got.push(...await r.receiveMessages(count - got.length, { maxWaitTimeInMs: 1000 }));
    }
    const extra = await r.receiveMessages(10, { maxWaitTimeInMs: 500 });
    for (const m of [...got, ...extra]) await r.completeMessage(m);
    assert.equal(extra.length, 0, `unexpected in ${sub}: ${extra.map((m) => m.body)}`);
    return got;
  } finally {
    await r.close();
  }
}

test('rules select the copies; each subscription numbers its own', async () => {
  const s = sb.createSender('js-fanout');
  await s.sendMessages([
    order(1, 'eu', 500), order(2, 'us', 500), order(3, 'eu', 50, 'urgent'), order(4, 'eu', 101, 'urgent'),
  ]);
  await s.close();
  const all = await drain('js-fanout', 'all', 4);
  assert.deepEqual(all.map((m) => m.applicationProperties.n), [1, 2, 3, 4]);
  assert.deepEqual(all.map((m) => Number(m.sequenceNumber)), [1, 2, 3, 4]);
  const eu = await drain('js-fanout', 'eu', 2);
  assert.deepEqual(eu.map((m) => m.applicationProperties.n), [1, 4]);
  assert.deepEqual(eu.map((m) => Number(m.sequenceNumber)), [1, 2]);
  assert.deepEqual(eu.map((m) => m.body), ['order-1', 'order-4']);
  const urgent = await drain('js-fanout', 'urgent', 2);
  assert.deepEqual(urgent.map((m) => m.applicationProperties.n), [3, 4]);
});

test('a subscription has its own dead-letter queue', async () => {
  const s = sb.createSender('js-dlq');
  await s.sendMessages(order(1, 'eu', 500));
  await s.close();
  const r = sb.createReceiver('js-dlq', 'eu');
  const [m] = await r.receiveMessages(1, { maxWaitTimeInMs: 5000 });
  assert.ok(m, 'no message in eu');
  await r.deadLetterMessage(m, { deadLetterReason: 'js-reason', deadLetterErrorDescription: 'js-description' });
  await r.close();
  const dead = await drain('js-dlq', 'eu', 1, { subQueueType: 'deadLetter' });
  assert.equal(dead[0].deadLetterReason, 'js-reason');
  assert.equal(dead[0].deadLetterErrorDescription, 'js-description');
  await drain('js-dlq', 'all', 1);
});

test('schedule and cancel on the topic', async () => {
  const s = sb.createSender('js-sched');
  const later = new Date(Date.now() + 3600 * 1000);
  const soon = new Date(Date.now() + 1500);
  const [cancelled] = await s.scheduleMessages(order(1, 'eu', 500), later);
  await s.scheduleMessages(order(2, 'eu', 500), soon);
  await s.cancelScheduledMessages(cancelled);
  await s.close();
  const eu = await drain('js-sched', 'eu', 1);
  assert.deepEqual(eu.map((m) => m.applicationProperties.n), [2]);
  await drain('js-sched', 'all', 1);
});

test('receiving from a topic and sending to a subscription are refused with a reason', async () => {
  const r = sb.createReceiver('js-refuse');
  await assert.rejects(r.receiveMessages(1, { maxWaitTimeInMs: 3000 }), (e) => {
    assert.ok(isServiceBusError(e) || e instanceof Error, String(e));
    assert.match(e.message, /subscriptions/i);
    return true;
  });
  await r.close();
  const s = sb.createSender('js-refuse/Subscriptions/all');
  await assert.rejects(s.sendMessages({ body: 'x' }), (e) => {
    assert.match(e.message, /send to its topic/);
    return true;
  });
  await s.close();
});

test('the rule manager lists, creates and deletes rules, and they take effect at once', async () => {
  const rm = sb.createRuleManager('js-rules', 'all');
  const initial = await listRules(rm);
  assert.deepEqual(initial.map((r) => [r.name, r.filter.sqlExpression]), [['$Default', '1=1']]);
  await rm.deleteRule('$Default');
  await rm.createRule('big', { sqlExpression: 'amount > 100' });
  await rm.createRule('gold', { correlationId: 'c1', applicationProperties: { tier: 'gold' } });
  const rules = await listRules(rm);
  assert.deepEqual(rules.map((r) => r.name), ['big', 'gold']);
  assert.equal(rules[0].filter.sqlExpression, 'amount > 100');
  assert.equal(rules[1].filter.correlationId, 'c1');
  assert.deepEqual(rules[1].filter.applicationProperties, { tier: 'gold' });

  const s = sb.createSender('js-rules');
  await s.sendMessages([
    { body: 'big', applicationProperties: { amount: 500 } },
    { body: 'gold', correlationId: 'c1', applicationProperties: { amount: 1, tier: 'gold' } },
    { body: 'neither', correlationId: 'c1', applicationProperties: { amount: 1, tier: 'silver' } },
  ]);
  await s.close();
  const got = await drain('js-rules', 'all', 2);
  assert.deepEqual(got.map((m) => m.body), ['big', 'gold']);

  await assert.rejects(rm.createRule('BIG', { sqlExpression: '1=1' }), (e) => {
    assert.equal(e.code, 'MessagingEntityAlreadyExists', `${e.code}: ${e.message}`);
    return true;
  });
  await assert.rejects(rm.deleteRule('nope'), /nope/);
  await assert.rejects(rm.createRule('bad', { sqlExpression: 'amount >' }), /position/);
  assert.deepEqual((await listRules(rm)).map((r) => r.name), ['big', 'gold']);

  // a rule with an action: its copy carries the changes and the rule's name
  await rm.createRule('act', { sqlExpression: 'amount = 7' },
    { sqlExpression: "SET tag = 'seven'; SET sys.Label = 'relabelled'; REMOVE drop" });
  const act = (await listRules(rm)).find((r) => r.name === 'act');
  assert.equal(act.action.sqlExpression, "SET tag = 'seven'; SET sys.Label = 'relabelled'; REMOVE drop");
  const s2 = sb.createSender('js-rules');
  await s2.sendMessages({ body: 'seven', subject: 'original', applicationProperties: { amount: 7, drop: 'x' } });
  await s2.close();
  const [copy] = await drain('js-rules', 'all', 1);
  assert.equal(copy.body, 'seven');
  assert.equal(copy.subject, 'relabelled');
  assert.equal(copy.applicationProperties.tag, 'seven');
  assert.equal(copy.applicationProperties.RuleName, 'act');
  assert.equal(copy.applicationProperties.amount, 7);
  assert.equal(copy.applicationProperties.drop, undefined);
  await assert.rejects(rm.createRule('badact', { sqlExpression: '1=1' }, { sqlExpression: 'SET x =' }), /position/);
});

test('rules added at runtime survive a restart', async () => {
  const extraToml = `[[topics]]\nname = "kept"\n[[topics.subscriptions]]\nname = "s"\n`;
  const first = await startBroker({ queues: [], extraToml });
  let client = new ServiceBusClient(connectionString(first), { retryOptions: RETRY });
  let rm = client.createRuleManager('kept', 's');
  await rm.deleteRule('$Default');
  await rm.createRule('red', { sqlExpression: "color = 'red'" });
  await client.close();
  const exit = await first.stop();
  assert.equal(exit.code, 0);
  const second = await startBroker({ queues: [], extraToml, dataDir: first.dataDir });
  try {
    client = new ServiceBusClient(connectionString(second), { retryOptions: RETRY });
    rm = client.createRuleManager('kept', 's');
    assert.deepEqual((await listRules(rm)).map((r) => r.name), ['red']);
      await client.close();
  } finally {
    await second.stop();
    second.removeDir();
    first.removeDir();
  }
});
