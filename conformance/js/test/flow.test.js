'use strict';
const assert = require('node:assert/strict');
const {
  brokerTest, openSender, openReceiver, sendAll, sendOne, take, takeOne, expectNothing, waitUntil,
} = require('../lib/amqp');

/** rhea's documented drain: set `drain`, then issue credit (one flow with drain=true). */
function drain(receiver, credit) {
  receiver.received_at_drain = undefined;
  receiver.once('receiver_drained', () => { receiver.received_at_drain = receiver.received; });
  receiver.drain = true;
  receiver.add_credit(credit);
}

async function waitDrained(receiver, n = 1) {
  await waitUntil(() => receiver.drainedCount >= n, 5000,
    () => `flow echo with drain=true and link-credit 0 (events: ${receiver.linkEvents.join(', ')})`);
  receiver.drain = false;
}

brokerTest('flow: drain on an empty queue echoes the flow with credit 0', async (ctx) => {
  const conn = await ctx.connect();
  const receiver = await openReceiver(conn, { source: 'q1', credit_window: 0 });
  drain(receiver, 10);
  await waitDrained(receiver);
  assert.equal(receiver.received_at_drain, 0, 'no message arrived');
  assert.equal(receiver.credit, 0, 'link-credit in the echoed flow');
  assert.equal(receiver.delivery_count, 10, 'delivery-count advanced by the drained credit');

  // The credit really is gone: a new message is not sent until more credit comes.
  const sender = await openSender(conn, 'q1');
  await sendOne(sender, { body: 'later' });
  await expectNothing(receiver, 600);
  receiver.add_credit(1);
  const { message } = await takeOne(receiver);
  assert.equal(message.body, 'later');
});

brokerTest('flow: drain on a non-empty queue sends what is available, then echoes credit 0', async (ctx) => {
  const conn = await ctx.connect();
  const sender = await openSender(conn, 'q1');
  await sendAll(sender, 3, (i) => ({ body: `n${i}` }));
  const receiver = await openReceiver(conn, { source: 'q1', credit_window: 0 });
  drain(receiver, 10);
  await waitDrained(receiver);
  assert.equal(receiver.received_at_drain, 3, 'all 3 available messages arrive before the drain echo');
  assert.deepEqual(receiver.inbox.map((x) => x.message.body), ['n0', 'n1', 'n2']);
  assert.equal(receiver.credit, 0, 'link-credit in the echoed flow');
  assert.equal(receiver.delivery_count, 10, 'delivery-count = 3 sent + 7 drained');

  await sendOne(sender, { body: 'n3' });
  receiver.inbox.length = 0;
  await expectNothing(receiver, 600);

  // A second drain cycle works the same way.
  drain(receiver, 5);
  await waitDrained(receiver, 2);
  assert.equal(receiver.inbox.length, 1);
  assert.equal(receiver.inbox[0].message.body, 'n3');
  assert.equal(receiver.delivery_count, 15);
});

brokerTest('flow: a receiver never gets more messages than its credit', async (ctx) => {
  const conn = await ctx.connect();
  const sender = await openSender(conn, 'q1');
  await sendAll(sender, 20, (i) => ({ body: i }));
  const receiver = await openReceiver(conn, { source: 'q1', credit_window: 0 });
  receiver.add_credit(7);
  await take(receiver, 7);
  await expectNothing(receiver, 500);
  receiver.add_credit(13);
  const rest = await take(receiver, 13);
  assert.deepEqual(rest.map((x) => x.message.body), Array.from({ length: 13 }, (_, i) => i + 7));
});

brokerTest('flow: the broker grants the configured link_credit to a producer', { broker: { amqp: { link_credit: 50 } } }, async (ctx) => {
  const conn = await ctx.connect();
  const sender = await openSender(conn, 'q1');
  await waitUntil(() => sender.credit > 0, 5000, 'credit for the sender');
  assert.equal(sender.credit, 50, 'initial link-credit for a producer');
  // More than one credit window of messages still goes through (credit is replenished).
  await sendAll(sender, 300, (i) => ({ body: i }), { timeout: 15000 });
  const receiver = await openReceiver(conn, 'q1');
  const got = await take(receiver, 300, 15000);
  assert.equal(got[299].message.body, 299);
});
