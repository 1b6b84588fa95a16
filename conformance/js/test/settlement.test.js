'use strict';
const assert = require('node:assert/strict');
const {
  brokerTest, openSender, openReceiver, sendAll, sendOne, take, takeOne, expectNothing,
  deliveryCount, waitUntil, withTimeout,
} = require('../lib/amqp');

const PEEK_LOCK = Object.freeze({ source: 'q1', autoaccept: false, credit_window: 0 });

function outcomeName(state) {
  return state && state.constructor && state.constructor.composite_type;
}

async function fill(conn, bodies, address = 'q1') {
  const sender = await openSender(conn, address);
  await sendAll(sender, bodies.length, (i) => ({ body: bodies[i] }));
  return sender;
}

brokerTest('settlement: receive-and-delete (snd-settle-mode settled) delivers settled and removes', async (ctx) => {
  const conn = await ctx.connect();
  await fill(conn, ['a', 'b', 'c', 'd', 'e']);
  const receiver = await openReceiver(conn, { source: 'q1', snd_settle_mode: 1 });
  assert.equal(receiver.snd_settle_mode, 1, `broker attach must agree to snd-settle-mode settled, got ${receiver.snd_settle_mode}`);
  const got = await take(receiver, 5);
  assert.deepEqual(got.map((x) => x.message.body), ['a', 'b', 'c', 'd', 'e']);
  const unsettled = got.filter((x) => x.delivery.remote_settled !== true);
  assert.equal(unsettled.length, 0, `every transfer must arrive settled; ${unsettled.length} did not`);
  assert.ok(got.every((x) => deliveryCount(x.message) === 0), 'delivery-count 0 on first delivery');
  receiver.close();
  await waitUntil(() => receiver.remoteClosed, 5000, 'detach reply');
  const again = await openReceiver(conn, PEEK_LOCK);
  again.add_credit(10);
  await expectNothing(again, 700);
});

brokerTest('settlement: peek-lock with rcv-settle-mode second: accept is answered by a settled disposition', async (ctx) => {
  const conn = await ctx.connect();
  await fill(conn, ['x1', 'x2']);
  const receiver = await openReceiver(conn, { ...PEEK_LOCK, rcv_settle_mode: 1 });
  receiver.add_credit(2);
  const [d1, d2] = await take(receiver, 2);
  assert.deepEqual([d1.message.body, d2.message.body], ['x1', 'x2']);
  assert.equal(d1.delivery.remote_settled, false, 'peek-lock delivery arrives unsettled');
  assert.equal(deliveryCount(d1.message), 0, 'delivery-count 0 on first delivery');

  d1.delivery.accept(); // disposition(accepted, settled=false) because rcv-settle-mode is second
  await waitUntil(() => receiver.settledEvents.includes(d1.delivery), 5000,
    'broker disposition with settled=true for the accepted delivery');
  assert.equal(d1.delivery.remote_settled, true);
  // The settling disposition may repeat the outcome or carry no state; anything else is wrong.
  const st = d1.delivery.remote_state;
  assert.ok(st === undefined || st === null || outcomeName(st) === 'accepted',
    `broker's settled disposition state: ${JSON.stringify(st)}`);
  assert.ok(!receiver.settledEvents.includes(d2.delivery), 'the untouched delivery stays unsettled');

  // x1 is gone for good; x2 comes back (delivery-count + 1) once this link closes.
  receiver.close();
  await waitUntil(() => receiver.remoteClosed, 5000, 'detach reply');
  const again = await openReceiver(conn, PEEK_LOCK);
  again.add_credit(10);
  const { message } = await takeOne(again);
  assert.equal(message.body, 'x2');
  await expectNothing(again, 500);
});

brokerTest('settlement: released returns the message with delivery-count unchanged', async (ctx) => {
  const conn = await ctx.connect();
  await fill(conn, ['r1']);
  const receiver = await openReceiver(conn, PEEK_LOCK);
  receiver.add_credit(1);
  const first = await takeOne(receiver);
  assert.equal(first.message.body, 'r1');
  assert.equal(deliveryCount(first.message), 0);
  first.delivery.release();
  receiver.add_credit(1);
  const second = await takeOne(receiver);
  assert.equal(second.message.body, 'r1', 'released message is redelivered');
  assert.equal(deliveryCount(second.message), 0, 'released must not increment delivery-count');
  second.delivery.accept();
  receiver.add_credit(5);
  await expectNothing(receiver, 500);
});

brokerTest('settlement: modified(delivery-failed) returns the message with delivery-count + 1', async (ctx) => {
  const conn = await ctx.connect();
  await fill(conn, ['m1']);
  const receiver = await openReceiver(conn, PEEK_LOCK);
  const counts = [];
  for (let i = 0; i < 3; i++) {
    receiver.add_credit(1);
    const got = await takeOne(receiver);
    assert.equal(got.message.body, 'm1');
    counts.push(deliveryCount(got.message));
    if (i < 2) got.delivery.modified({ delivery_failed: true });
    else got.delivery.accept();
  }
  assert.deepEqual(counts, [0, 1, 2], 'header delivery-count after two modified(delivery-failed)');
  receiver.add_credit(5);
  await expectNothing(receiver, 500);
});

brokerTest('settlement: modified(undeliverable-here) defers the message: not redelivered', async (ctx) => {
  const conn = await ctx.connect();
  await fill(conn, ['d1', 'd2']);
  const receiver = await openReceiver(conn, PEEK_LOCK);
  receiver.add_credit(1);
  const first = await takeOne(receiver);
  assert.equal(first.message.body, 'd1');
  first.delivery.modified({ undeliverable_here: true });
  receiver.add_credit(5);
  const second = await takeOne(receiver);
  assert.equal(second.message.body, 'd2', 'the next message flows');
  second.delivery.accept();
  await expectNothing(receiver, 600);
  const other = await openReceiver(await ctx.connect(), PEEK_LOCK);
  other.add_credit(5);
  await expectNothing(other, 600);
});

brokerTest('settlement: rejected moves the message to q1/$DeadLetterQueue', async (ctx) => {
  const conn = await ctx.connect();
  const sender = await openSender(conn, 'q1');
  await sendOne(sender, { message_id: 'poison-1', body: 'poison' });
  await sendOne(sender, { message_id: 'fine-1', body: 'fine' });
  const receiver = await openReceiver(conn, PEEK_LOCK);
  receiver.add_credit(1);
  const bad = await takeOne(receiver);
  assert.equal(bad.message.body, 'poison');
  bad.delivery.reject({ condition: 'app:poison', description: 'cannot process' });
  receiver.add_credit(1);
  const good = await takeOne(receiver);
  assert.equal(good.message.body, 'fine');
  good.delivery.accept();
  receiver.add_credit(5);
  await expectNothing(receiver, 500);

  const dlq = await openReceiver(conn, 'q1/$DeadLetterQueue');
  const dead = await takeOne(dlq);
  assert.equal(dead.message.body, 'poison');
  assert.equal(dead.message.message_id, 'poison-1');
  await expectNothing(dlq, 300);
});

brokerTest('settlement: a dropped connection returns its locked messages (delivery-count + 1)', async (ctx) => {
  const a = await ctx.connect();
  await fill(a, ['k1', 'k2', 'k3']);
  const locked = await openReceiver(a, PEEK_LOCK);
  locked.add_credit(3);
  const held = await take(locked, 3);
  assert.deepEqual(held.map((x) => x.message.body), ['k1', 'k2', 'k3']);
  assert.ok(held.every((x) => deliveryCount(x.message) === 0));

  const b = await ctx.connect();
  const other = await openReceiver(b, PEEK_LOCK);
  other.add_credit(10);
  await expectNothing(other, 400); // locked messages are not handed out twice

  a.socket.destroy(); // no close frame: the TCP connection just dies
  await withTimeout(a.socketClosed, 5000, 'client socket closed');
  const back = await take(other, 3, 10000);
  assert.deepEqual(back.map((x) => x.message.body).sort(), ['k1', 'k2', 'k3']);
  assert.deepEqual(back.map((x) => deliveryCount(x.message)), [1, 1, 1], 'delivery-count after lock loss');
  for (const x of back) x.delivery.accept();
  await expectNothing(other, 300);
});

brokerTest('settlement: closing a receiver link returns its locked messages (delivery-count + 1)', async (ctx) => {
  const conn = await ctx.connect();
  await fill(conn, ['l1', 'l2']);
  const r1 = await openReceiver(conn, PEEK_LOCK);
  r1.add_credit(2);
  await take(r1, 2);
  r1.close();
  await waitUntil(() => r1.remoteClosed, 5000, 'detach reply');
  const r2 = await openReceiver(conn, PEEK_LOCK);
  r2.add_credit(5);
  const back = await take(r2, 2);
  assert.deepEqual(back.map((x) => x.message.body), ['l1', 'l2']);
  assert.deepEqual(back.map((x) => deliveryCount(x.message)), [1, 1]);
});

brokerTest('settlement: delivery tags are 16 bytes and unique (peek-lock and receive-and-delete)', async (ctx) => {
  const conn = await ctx.connect();
  await fill(conn, Array.from({ length: 40 }, (_, i) => `t${i}`));
  const peek = await openReceiver(conn, PEEK_LOCK);
  peek.add_credit(20);
  const locked = await take(peek, 20);
  const rad = await openReceiver(conn, { source: 'q1', snd_settle_mode: 1, credit_window: 0 });
  rad.add_credit(20);
  const deleted = await take(rad, 20);
  const tags = [...locked, ...deleted].map((x) => x.delivery.tag);
  for (const tag of tags) {
    assert.ok(Buffer.isBuffer(tag), 'tag is binary');
    assert.equal(tag.length, 16, `delivery tag ${tag.toString('hex')} has ${tag.length} bytes`);
  }
  assert.equal(new Set(tags.map((t) => t.toString('hex'))).size, tags.length, 'tags are unique');
  for (const x of locked) x.delivery.accept();
});
