'use strict';
const assert = require('node:assert/strict');
const {
  brokerTest, instrumentLink, openSender, openReceiver, sendOne, takeOne, expectNothing, waitUntil,
} = require('../lib/amqp');

async function expectNotFound(link, role) {
  await waitUntil(() => link.linkErrors.length > 0 || (link.remoteClosed && link.linkErrors.length === 0 && 'closed-without-error'), 5000,
    () => `detach with error for unknown ${role} address (events: ${link.linkEvents.join(', ') || 'none'})`);
  assert.ok(link.linkErrors.length > 0, `detach carried no error (events: ${link.linkEvents.join(', ')})`);
  assert.equal(link.linkErrors[0].condition, 'amqp:not-found', `error condition (events: ${link.linkEvents.join(', ')})`);
  assert.ok(link.remote.attach, 'an attach reply came before the detach');
  const terminus = role === 'sender' ? link.remote.attach.target : link.remote.attach.source;
  // rhea hands a described-null back as a Typed Null; absent or null both mean "null" on the wire.
  const isNull = terminus === null || terminus === undefined || (terminus.type && terminus.type.name === 'Null');
  assert.ok(isNull, `attach reply must carry a null ${role === 'sender' ? 'target' : 'source'}, got ${JSON.stringify(terminus)}`);
  assert.equal(link.remote.detach.closed, true, 'detach closed=true');
}

brokerTest('addressing: unknown address -> amqp:not-found for a sender', async (ctx) => {
  const conn = await ctx.connect();
  const sender = instrumentLink(conn.open_sender({ target: 'no-such-queue' }));
  await expectNotFound(sender, 'sender');
  // the connection survives
  const ok = await openSender(conn, 'q1');
  await sendOne(ok, { body: 'still-alive' });
});

brokerTest('addressing: unknown address -> amqp:not-found for a receiver', async (ctx) => {
  const conn = await ctx.connect();
  const receiver = instrumentLink(conn.open_receiver({ source: 'no-such-queue' }));
  await expectNotFound(receiver, 'receiver');
  const dlq = instrumentLink(conn.open_receiver({ source: 'no-such-queue/$DeadLetterQueue' }));
  await expectNotFound(dlq, 'receiver');
  const ok = await openReceiver(conn, 'q1');
  assert.ok(ok.remoteOpened);
});

brokerTest('addressing: amqp://host:port/q1 and q1 name the same queue', async (ctx) => {
  const conn = await ctx.connect();
  const url = `${ctx.url}/q1`;
  const viaUrl = await openSender(conn, url);
  await sendOne(viaUrl, { body: 'via-url' });
  const plain = await openReceiver(conn, { source: 'q1', autoaccept: true });
  assert.equal((await takeOne(plain)).message.body, 'via-url');

  const viaName = await openSender(conn, 'q1');
  plain.close();
  await waitUntil(() => plain.remoteClosed, 5000, 'detach reply');
  await sendOne(viaName, { body: 'via-name' });
  const urlReceiver = await openReceiver(conn, url);
  assert.equal((await takeOne(urlReceiver)).message.body, 'via-name');
});

brokerTest('addressing: queues are separate (q2 does not see q1)', async (ctx) => {
  const conn = await ctx.connect();
  const s1 = await openSender(conn, 'q1');
  await sendOne(s1, { body: 'for-q1' });
  const r2 = await openReceiver(conn, 'q2');
  await expectNothing(r2, 500);
  const s2 = await openSender(conn, 'q2');
  await sendOne(s2, { body: 'for-q2' });
  assert.equal((await takeOne(r2)).message.body, 'for-q2');
  const r1 = await openReceiver(conn, 'q1');
  assert.equal((await takeOne(r1)).message.body, 'for-q1');
  await expectNothing(r1, 300);
});

brokerTest('addressing: dead-letter segment is case-insensitive (q1/$deadletterqueue)', async (ctx) => {
  const conn = await ctx.connect();
  const sender = await openSender(conn, 'q1');
  await sendOne(sender, { body: 'to-dlq' });
  const receiver = await openReceiver(conn, { source: 'q1', autoaccept: false, credit_window: 0 });
  receiver.add_credit(1);
  const got = await takeOne(receiver);
  got.delivery.reject({ condition: 'app:bad', description: 'x' });
  const lower = await openReceiver(conn, 'q1/$deadletterqueue');
  assert.equal((await takeOne(lower)).message.body, 'to-dlq');
  lower.close();
  await waitUntil(() => lower.remoteClosed, 5000, 'detach reply');
  // and the URL form reaches the DLQ too
  await sendOne(sender, { body: 'to-dlq-2' });
  receiver.add_credit(1);
  const got2 = await takeOne(receiver);
  got2.delivery.reject({ condition: 'app:bad', description: 'y' });
  const viaUrl = await openReceiver(conn, `${ctx.url}/q1/$DeadLetterQueue`);
  assert.equal((await takeOne(viaUrl)).message.body, 'to-dlq-2');
});
