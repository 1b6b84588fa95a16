'use strict';
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const {
  rhea, brokerTest, openSender, openReceiver, sendAll, sendOne, take, takeOne, expectNothing,
  frameStats, PLAIN_ROOT,
} = require('../lib/amqp');

const N = 10000;

function assertInOrder(got, n) {
  assert.equal(got.length, n);
  for (let i = 0; i < n; i++) {
    if (got[i].message.body !== i) {
      assert.fail(`message #${i} has body ${JSON.stringify(got[i].message.body)} (expected ${i}); ` +
        `neighbourhood: ${got.slice(Math.max(0, i - 2), i + 3).map((x) => x.message.body).join(',')}`);
    }
  }
}

brokerTest(`transfer: ${N} pre-settled messages are stored and received in order`, { timeout: 60000 }, async (ctx) => {
  const a = await ctx.connect();
  const sender = await openSender(a, { target: 'q1', snd_settle_mode: 1 });
  const deliveries = await sendAll(sender, N, (i) => ({ body: i }), { waitAccepted: false, timeout: 45000 });
  assert.equal(deliveries.length, N);
  assert.ok(deliveries.every((d) => d.settled), 'transfers were sent settled');

  const b = await ctx.connect();
  const receiver = await openReceiver(b, 'q1');
  const got = await take(receiver, N, 45000);
  assertInOrder(got, N);
  await expectNothing(receiver, 300);
});

brokerTest(`transfer: ${N} unsettled messages are all accepted and received in order`, { timeout: 60000 }, async (ctx) => {
  const b = await ctx.connect();
  const receiver = await openReceiver(b, 'q1'); // concurrent consumer
  const a = await ctx.connect();
  const sender = await openSender(a, 'q1');
  await sendAll(sender, N, (i) => ({ body: i }), { waitAccepted: true, timeout: 45000 });
  assert.equal(sender.outcomes.accepted, N);
  const got = await take(receiver, N, 45000);
  assertInOrder(got, N);
  assert.ok(got.every(({ delivery }) => !delivery.remote_settled), 'peek-lock deliveries arrive unsettled');
  await expectNothing(receiver, 300);
});

brokerTest('transfer: a 5 MiB message goes both ways byte-exact (multi-frame)', { timeout: 60000 }, async (ctx) => {
  const payload = crypto.randomBytes(5 * 1024 * 1024);
  const a = await ctx.connect();
  // The broker advertises the configured max_frame_size; rhea splits transfers to it.
  assert.equal(a.max_frame_size, 262144, 'max-frame-size in the broker\'s open');
  const sender = await openSender(a, 'q1');
  await sendOne(sender, { message_id: 'big', body: rhea.message.data_section(payload) }, 30000);

  // Receive on a connection that advertises a small max-frame-size: the broker must split.
  const b = await ctx.connect({ ...PLAIN_ROOT, max_frame_size: 65536 });
  frameStats.reset();
  const receiver = await openReceiver(b, 'q1');
  const { message } = await takeOne(receiver, 30000);
  assert.ok(frameStats.maxSize <= 65536, `broker sent a ${frameStats.maxSize}-byte frame to a peer whose max-frame-size is 65536`);
  assert.ok(frameStats.count >= Math.ceil(payload.length / 65536), `5 MiB in only ${frameStats.count} frames`);
  assert.equal(message.message_id, 'big');
  assert.ok(message.body && message.body.typecode === 0x75, `body is a data section (got ${message.body && message.body.typecode})`);
  const got = message.body.content;
  assert.ok(Buffer.isBuffer(got), 'data section content is a Buffer');
  assert.equal(got.length, payload.length, 'length');
  assert.ok(got.equals(payload), 'bytes differ');
});

brokerTest('transfer: properties, application-properties and body types survive the round trip', async (ctx) => {
  const conn = await ctx.connect();
  const sender = await openSender(conn, 'q1');
  const sent = [
    { message_id: 'id-1', correlation_id: 'corr', subject: 'subj', content_type: 'application/json',
      application_properties: { color: 'red', n: 7 }, body: '{"a":1}' },
    { message_id: 'id-2', body: Buffer.from([0, 1, 2, 255]) },
    { message_id: 'id-3', body: { nested: ['x', 1] } },
  ];
  for (const m of sent) await sendOne(sender, m);
  const receiver = await openReceiver(conn, 'q1');
  const got = (await take(receiver, 3)).map((x) => x.message);
  assert.deepEqual(got.map((m) => m.message_id), ['id-1', 'id-2', 'id-3']);
  assert.equal(got[0].correlation_id, 'corr');
  assert.equal(got[0].subject, 'subj');
  assert.equal(got[0].content_type, 'application/json');
  assert.deepEqual(got[0].application_properties, { color: 'red', n: 7 });
  assert.equal(got[0].body, '{"a":1}');
  assert.ok(Buffer.isBuffer(got[1].body) && got[1].body.equals(Buffer.from([0, 1, 2, 255])), 'binary body');
  assert.deepEqual(got[2].body, { nested: ['x', 1] });
});
