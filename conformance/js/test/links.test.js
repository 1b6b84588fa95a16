'use strict';
const assert = require('node:assert/strict');
const {
  brokerTest, instrumentLink, waitLinkOpen, openSender, openReceiver, sendAll, sendOne, waitUntil, sleep,
} = require('../lib/amqp');

brokerTest('links: 100 links on one connection (50 senders, 50 receivers with 1 credit each)', { timeout: 40000 }, async (ctx) => {
  const conn = await ctx.connect();
  const senders = [];
  const receivers = [];
  for (let i = 0; i < 50; i++) {
    senders.push(instrumentLink(conn.open_sender({ target: 'q1', name: `snd-${i}` })));
    receivers.push(instrumentLink(conn.open_receiver({ source: 'q1', name: `rcv-${i}`, credit_window: 0 })));
  }
  const links = [...senders, ...receivers];
  await Promise.all(links.map((l) => waitLinkOpen(l, 15000)));
  const remoteHandles = links.map((l) => l.remote.attach.handle);
  assert.equal(new Set(remoteHandles).size, 100, `broker handles must be distinct: ${remoteHandles.join(',')}`);
  for (const r of receivers) r.add_credit(1);

  await Promise.all(senders.map((s, i) => sendAll(s, 1, () => ({ body: `m-${i}` }), { timeout: 15000 })));
  await waitUntil(() => receivers.every((r) => r.inbox.length >= 1), 15000,
    () => `each receiver to get one message; counts: ${receivers.map((r) => r.inbox.length).join(',')}`);
  await sleep(200);
  const counts = receivers.map((r) => r.inbox.length);
  assert.ok(counts.every((c) => c === 1), `each receiver had 1 credit and must get exactly 1: ${counts.join(',')}`);
  const bodies = receivers.map((r) => r.inbox[0].message.body).sort();
  assert.deepEqual(bodies, Array.from({ length: 50 }, (_, i) => `m-${i}`).sort());
});

brokerTest('links: competing consumers share a queue round-robin without duplicates', { timeout: 30000 }, async (ctx) => {
  const c1 = await ctx.connect();
  const c2 = await ctx.connect();
  const r1 = await openReceiver(c1, 'q1');
  const r2 = await openReceiver(c2, 'q1');
  await sleep(300); // let both credit grants reach the broker
  const p = await ctx.connect();
  const sender = await openSender(p, 'q1');
  const N = 100;
  await sendAll(sender, N, (i) => ({ body: i }), { timeout: 15000 });
  await waitUntil(() => r1.inbox.length + r2.inbox.length >= N, 15000,
    () => `${N} messages across both consumers; have ${r1.inbox.length}+${r2.inbox.length}`);
  await sleep(200);
  const b1 = r1.inbox.map((x) => x.message.body);
  const b2 = r2.inbox.map((x) => x.message.body);
  assert.equal(b1.length + b2.length, N, `no duplicates: ${b1.length}+${b2.length}`);
  assert.deepEqual([...b1, ...b2].sort((x, y) => x - y), Array.from({ length: N }, (_, i) => i));
  for (const [name, b] of [['r1', b1], ['r2', b2]]) {
    for (let i = 1; i < b.length; i++) assert.ok(b[i - 1] < b[i], `${name} got messages out of order: ${b.join(',')}`);
  }
  assert.ok(b1.length >= 40 && b2.length >= 40,
    `round robin over two links with credit should split ~50/50, got ${b1.length}/${b2.length}`);
});

brokerTest('links: closing a sender and a receiver leaves the connection usable', async (ctx) => {
  const conn = await ctx.connect();
  const s1 = await openSender(conn, 'q1');
  await sendOne(s1, { body: 'one' });
  s1.close();
  await waitUntil(() => s1.remoteClosed, 5000, 'detach reply for closed sender');
  const r1 = await openReceiver(conn, { source: 'q1', credit_window: 0 });
  r1.close();
  await waitUntil(() => r1.remoteClosed, 5000, 'detach reply for closed receiver');
  const s2 = await openSender(conn, 'q1');
  await sendOne(s2, { body: 'two' });
  const r2 = await openReceiver(conn, 'q1');
  await waitUntil(() => r2.inbox.length >= 2, 5000, 'two messages');
  assert.deepEqual(r2.inbox.map((x) => x.message.body), ['one', 'two']);
});
