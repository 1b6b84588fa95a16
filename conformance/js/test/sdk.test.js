'use strict';
// The official JavaScript SDK (@azure/service-bus 7.9.5) against the broker, with an
// emulator-style connection string (plain TCP, SASL ANONYMOUS + $cbs put-token):
// send (single, array, batch, scheduled), peek-lock settlement (complete, abandon, defer,
// dead-letter), the dead-letter queue, receive-and-delete, subscribe(), $management
// (peek, renew-lock, schedule/cancel, receive-by-sequence-number, update-disposition),
// lock expiry, MaxDeliveryCount, TTL expiry, duplicate detection, error mapping, and the
// message fields / broker annotations the SDK exposes.
//
// Behaviour relied on: /work/shared/spec/servicebus-amqp-surface.md sections 0, 3, 4, 6, 9.

const assert = require('node:assert/strict');
const { sdkTest, expectSdkError, sleep, seq, ROOT_KEY } = require('../lib/sdk');

// `long` is a dependency of @azure/service-bus; the SDK wants Long for sequence numbers.
const Long = require(require.resolve('long', { paths: [require.resolve('@azure/service-bus')] }));
const L = (n) => Long.fromNumber(n);

const bodies = (msgs) => msgs.map((m) => m.body);
const seqs = (msgs) => msgs.map((m) => seq(m.sequenceNumber));

function assertNear(actualMs, expectedMs, tolMs, what) {
  assert.ok(Math.abs(actualMs - expectedMs) <= tolMs,
    `${what}: ${new Date(actualMs).toISOString()} is not within ${tolMs} ms of ${new Date(expectedMs).toISOString()} (off by ${actualMs - expectedMs} ms)`);
}

// ---------------------------------------------------------------------------
// send and receive

sdkTest('single send, peek-lock receive, complete: the queue is empty afterwards', async (ctx) => {
  const sender = ctx.sender('q1');
  await sender.sendMessages({ body: 'hello', messageId: 'one' });
  const receiver = ctx.receiver('q1');
  const [m] = await ctx.receiveExactly(receiver, 1, 5000, 'first receive');
  assert.equal(m.body, 'hello');
  assert.equal(m.messageId, 'one');
  assert.match(m.lockToken, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  await receiver.completeMessage(m);
  await ctx.expectEmpty(receiver, 700, 'after complete');
  // A fresh receiver (new link) sees nothing either.
  await ctx.expectEmpty(ctx.receiver('q1'), 500, 'after complete, second receiver');
});

sdkTest('sendMessages(array): every message is enqueued separately, in order', async (ctx) => {
  const sender = ctx.sender('q1');
  const batch = [];
  for (let i = 0; i < 5; i++) {
    batch.push({ body: { i }, messageId: `arr-${i}`, applicationProperties: { idx: i } });
  }
  await sender.sendMessages(batch);
  const receiver = ctx.receiver('q1');
  const got = await ctx.receiveExactly(receiver, 5, 6000, 'array batch');
  assert.deepEqual(bodies(got), [0, 1, 2, 3, 4].map((i) => ({ i })));
  assert.deepEqual(got.map((m) => m.messageId), ['arr-0', 'arr-1', 'arr-2', 'arr-3', 'arr-4']);
  assert.deepEqual(got.map((m) => m.applicationProperties.idx), [0, 1, 2, 3, 4]);
  assert.deepEqual(seqs(got), [1, 2, 3, 4, 5], 'one sequence number per inner message');
  for (const m of got) await receiver.completeMessage(m);
  await ctx.expectEmpty(receiver, 500, 'after completing the batch');
});

sdkTest('createMessageBatch: sized from the attach, sent atomically, unpacked in order', async (ctx) => {
  const sender = ctx.sender('q1');
  const batch = await sender.createMessageBatch();
  assert.ok(batch.maxSizeInBytes > 1024,
    `batch maxSizeInBytes (from the broker's max-message-size) is ${batch.maxSizeInBytes}`);
  for (let i = 0; i < 4; i++) {
    assert.ok(batch.tryAddMessage({ body: `b${i}`, messageId: `b-${i}`, subject: `s${i}` }), `tryAddMessage ${i}`);
  }
  assert.equal(batch.count, 4);
  await sender.sendMessages(batch);
  // A single message afterwards continues the sequence.
  await sender.sendMessages({ body: 'after' });
  const receiver = ctx.receiver('q1');
  const got = await ctx.receiveExactly(receiver, 5, 6000, 'batch + single');
  assert.deepEqual(bodies(got), ['b0', 'b1', 'b2', 'b3', 'after']);
  assert.deepEqual(got.slice(0, 4).map((m) => m.subject), ['s0', 's1', 's2', 's3']);
  assert.deepEqual(seqs(got), [1, 2, 3, 4, 5]);
  for (const m of got) assert.equal(m.deliveryCount, 0);
});

sdkTest('message fields round trip (body kinds, ids, subject, content type, properties, TTL)', async (ctx) => {
  const sender = ctx.sender('q1');
  const when = new Date(1700000000123);
  const props = {
    str: 'välue ✓', int: 42, neg: -7, big: 2 ** 40, dbl: 3.25, yes: true, no: false, when,
  };
  await ctx.sendEach(sender, [
    {
      body: { text: 'héllo', n: 1, nested: { arr: [1, 2, 3] } },
      messageId: 'mid-1',
      correlationId: 'corr-1',
      subject: 'the-subject',
      contentType: 'application/json',
      to: 'somewhere',
      replyTo: 'reply-queue',
      replyToSessionId: 'reply-session',
      timeToLive: 120000,
      applicationProperties: props,
    },
    { body: Buffer.from([0, 1, 2, 254, 255]), messageId: 'mid-2', contentType: 'application/octet-stream' },
    { body: 'plain text', messageId: 'mid-3' },
  ]);
  // skipConvertingDate keeps AMQP timestamps as Date (the SDK default turns them into numbers).
  const receiver = ctx.receiver('q1', { skipConvertingDate: true });
  const [a, b, c] = await ctx.receiveExactly(receiver, 3, 6000, 'round trip');

  assert.deepEqual(a.body, { text: 'héllo', n: 1, nested: { arr: [1, 2, 3] } });
  assert.equal(a.messageId, 'mid-1');
  assert.equal(a.correlationId, 'corr-1');
  assert.equal(a.subject, 'the-subject');
  assert.equal(a.contentType, 'application/json');
  assert.equal(a.to, 'somewhere');
  assert.equal(a.replyTo, 'reply-queue');
  assert.equal(a.replyToSessionId, 'reply-session');
  assert.equal(a.timeToLive, 120000, 'header.ttl is delivered');
  assert.ok(a.expiresAtUtc instanceof Date);
  assertNear(a.expiresAtUtc.getTime(), a.enqueuedTimeUtc.getTime() + 120000, 5, 'expiresAtUtc = enqueued + ttl');
  const ap = a.applicationProperties;
  assert.equal(ap.str, props.str);
  assert.equal(ap.int, 42);
  assert.equal(ap.neg, -7);
  assert.equal(ap.big, 2 ** 40);
  assert.equal(ap.dbl, 3.25);
  assert.equal(ap.yes, true);
  assert.equal(ap.no, false);
  assert.ok(ap.when instanceof Date, `timestamp property came back as ${typeof ap.when} ${JSON.stringify(ap.when)}`);
  assert.equal(ap.when.getTime(), when.getTime());
  assert.deepEqual(Object.keys(ap).sort(), Object.keys(props).sort(), 'no extra application properties');

  assert.ok(Buffer.isBuffer(b.body), `binary body came back as ${typeof b.body}`);
  assert.deepEqual([...b.body], [0, 1, 2, 254, 255]);
  assert.equal(b.messageId, 'mid-2');
  assert.equal(b.contentType, 'application/octet-stream');
  assert.equal(b.timeToLive, undefined, 'no TTL was set and the queue has no default TTL');
  assert.equal(b.correlationId, undefined);
  assert.equal(b.subject, undefined);

  assert.equal(c.body, 'plain text');
  assert.equal(c.messageId, 'mid-3');
  for (const m of [a, b, c]) await receiver.completeMessage(m);
});

sdkTest('broker annotations: sequence numbers from 1 per queue, enqueued time, locked-until, delivery count', async (ctx) => {
  const sender = ctx.sender('q1');
  const before = Date.now();
  await ctx.sendEach(sender, [{ body: 'a' }, { body: 'b' }, { body: 'c' }]);
  const afterSend = Date.now();
  const receiver = ctx.receiver('q1', { skipConvertingDate: true });
  const got = await ctx.receiveExactly(receiver, 3, 6000, 'annotations');
  const afterReceive = Date.now();
  assert.deepEqual(bodies(got), ['a', 'b', 'c']);
  assert.deepEqual(seqs(got), [1, 2, 3], 'sequence numbers start at 1 and increase by 1');
  for (const m of got) {
    assert.equal(m.deliveryCount, 0, 'delivery count 0 on first delivery');
    assert.equal(m.state, 'active');
    assert.ok(m.enqueuedTimeUtc instanceof Date && m.lockedUntilUtc instanceof Date);
    assert.ok(m.enqueuedTimeUtc.getTime() >= before - 1000 && m.enqueuedTimeUtc.getTime() <= afterSend + 1000,
      `enqueuedTimeUtc ${m.enqueuedTimeUtc.toISOString()} outside the send window`);
    const lu = m.lockedUntilUtc.getTime();
    assert.ok(lu >= before + 60000 - 1000 && lu <= afterReceive + 60000 + 1000,
      `lockedUntilUtc ${m.lockedUntilUtc.toISOString()} is not ≈ now + 60 s lock duration`);
    const raw = m._rawAmqpMessage.messageAnnotations;
    assert.ok(raw['x-opt-enqueued-time'] instanceof Date, 'x-opt-enqueued-time is an AMQP timestamp');
    assert.ok(raw['x-opt-locked-until'] instanceof Date, 'x-opt-locked-until is an AMQP timestamp');
  }
  assert.equal(new Set(got.map((m) => m.lockToken)).size, 3, 'distinct lock tokens');
  for (const m of got) await receiver.completeMessage(m);

  // Numbers only grow after the queue drained; another queue counts on its own.
  await sender.sendMessages({ body: 'd' });
  const [d] = await ctx.receiveExactly(receiver, 1, 5000, 'fourth message');
  assert.equal(seq(d.sequenceNumber), 4);
  await receiver.completeMessage(d);
  await ctx.sender('q2').sendMessages({ body: 'other' });
  const [o] = await ctx.receiveExactly(ctx.receiver('q2'), 1, 5000, 'q2 message');
  assert.equal(seq(o.sequenceNumber), 1, 'sequence numbers are per queue');
});

// ---------------------------------------------------------------------------
// settlement

sdkTest('abandonMessage: redelivered at once with deliveryCount + 1, same sequence number', async (ctx) => {
  await ctx.sender('q1').sendMessages({ body: 'again', messageId: 'ab' });
  const receiver = ctx.receiver('q1');
  const [m1] = await ctx.receiveExactly(receiver, 1, 5000, 'first delivery');
  assert.equal(m1.deliveryCount, 0);
  await receiver.abandonMessage(m1);
  const [m2] = await ctx.receiveExactly(receiver, 1, 3000, 'redelivery after abandon');
  assert.equal(m2.messageId, 'ab');
  assert.equal(m2.deliveryCount, 1);
  assert.equal(seq(m2.sequenceNumber), seq(m1.sequenceNumber));
  assert.notEqual(m2.lockToken, m1.lockToken, 'a new lock token per delivery');
  await receiver.completeMessage(m2);
  await ctx.expectEmpty(receiver, 500, 'after complete');
});

sdkTest('deadLetterMessage with reason and description: the DLQ receiver gets it with both', async (ctx) => {
  await ctx.sendEach(ctx.sender('q1'), [
    { body: 'bad', messageId: 'dl-1', applicationProperties: { keep: 'me' } },
    { body: 'fine', messageId: 'ok-1' },
  ]);
  const receiver = ctx.receiver('q1');
  const [bad, fine] = await ctx.receiveExactly(receiver, 2, 5000, 'two messages');
  await receiver.deadLetterMessage(bad, { deadLetterReason: 'BadInput', deadLetterErrorDescription: 'field x missing' });
  await receiver.completeMessage(fine);
  await ctx.expectEmpty(receiver, 600, 'main queue after dead-letter');

  const dlq = ctx.dlqReceiver('q1');
  assert.match(dlq.entityPath, /\$DeadLetterQueue$/i);
  const [d] = await ctx.receiveExactly(dlq, 1, 5000, 'DLQ');
  assert.equal(d.body, 'bad');
  assert.equal(d.messageId, 'dl-1');
  assert.equal(d.deadLetterReason, 'BadInput');
  assert.equal(d.deadLetterErrorDescription, 'field x missing');
  assert.equal(d.applicationProperties.keep, 'me', 'original application properties are kept');
  assert.equal(seq(d.sequenceNumber) > 0, true);
  await dlq.completeMessage(d);
  await ctx.expectEmpty(dlq, 600, 'DLQ after complete');
});

sdkTest('deferMessage: not redelivered; peek shows it deferred; receiveDeferredMessages + settle via $management', async (ctx) => {
  await ctx.sendEach(ctx.sender('q1'), [
    { body: 'd1', messageId: 'd1' }, { body: 'd2', messageId: 'd2' }, { body: 'd3', messageId: 'd3' },
  ]);
  const receiver = ctx.receiver('q1');
  const got = await ctx.receiveExactly(receiver, 3, 5000, 'three messages');
  const [s1, s2, s3] = seqs(got);
  for (const m of got) await receiver.deferMessage(m);
  await ctx.expectEmpty(receiver, 700, 'deferred messages are not redelivered');

  const peeked = await receiver.peekMessages(10, { fromSequenceNumber: L(1) });
  assert.deepEqual(bodies(peeked), ['d1', 'd2', 'd3']);
  assert.deepEqual(peeked.map((m) => m.state), ['deferred', 'deferred', 'deferred']);

  const deferred = await receiver.receiveDeferredMessages([L(s1), L(s2), L(s3)]);
  assert.equal(deferred.length, 3);
  const bySeq = new Map(deferred.map((m) => [seq(m.sequenceNumber), m]));
  assert.equal(bySeq.get(s1).body, 'd1');
  assert.equal(bySeq.get(s2).body, 'd2');
  assert.equal(bySeq.get(s3).body, 'd3');
  for (const m of deferred) assert.ok(m.lockToken, 'deferred message received in peek-lock carries a lock token');

  await receiver.completeMessage(bySeq.get(s1)); // update-disposition "completed"
  await receiver.deadLetterMessage(bySeq.get(s2), { deadLetterReason: 'FromDeferred', deadLetterErrorDescription: 'mgmt' }); // "suspended"
  await receiver.completeMessage(bySeq.get(s3));

  await expectSdkError(receiver.receiveDeferredMessages([L(s1)]), 'MessageNotFound',
    'receiveDeferredMessages of a completed message');
  const [d] = await ctx.receiveExactly(ctx.dlqReceiver('q1'), 1, 5000, 'DLQ');
  assert.equal(d.body, 'd2');
  assert.equal(d.deadLetterReason, 'FromDeferred');
  assert.equal(d.deadLetterErrorDescription, 'mgmt');
  const left = await receiver.peekMessages(10, { fromSequenceNumber: L(1) });
  assert.deepEqual(bodies(left), [], 'nothing left in the queue');
});

sdkTest('receiveAndDelete: messages are removed on delivery and carry no lock token', async (ctx) => {
  await ctx.sendEach(ctx.sender('q1'), [{ body: 'r1' }, { body: 'r2' }, { body: 'r3' }]);
  const rnd = ctx.receiver('q1', { receiveMode: 'receiveAndDelete' });
  const got = await ctx.receiveExactly(rnd, 3, 5000, 'receive-and-delete');
  assert.deepEqual(bodies(got), ['r1', 'r2', 'r3']);
  assert.deepEqual(seqs(got), [1, 2, 3]);
  for (const m of got) {
    assert.equal(m.lockToken, undefined);
    assert.equal(m.deliveryCount, 0);
  }
  await ctx.expectEmpty(ctx.receiver('q1'), 700, 'peek-lock receiver after receive-and-delete');
  await ctx.expectEmpty(rnd, 300, 'receive-and-delete receiver');
});

sdkTest('subscribe(): handler gets every message; a throwing handler abandons (redelivered, deliveryCount 1)', async (ctx) => {
  await ctx.sendEach(ctx.sender('q1'), [{ body: 's1' }, { body: 's2' }, { body: 's3' }]);
  const receiver = ctx.receiver('q1');
  const seen = [];
  const errors = [];
  let thrown = false;
  let resolveDone;
  const done = new Promise((r) => { resolveDone = r; });
  const sub = receiver.subscribe({
    async processMessage(m) {
      seen.push({ body: m.body, deliveryCount: m.deliveryCount });
      if (m.body === 's2' && !thrown) {
        thrown = true;
        throw new Error('handler failure on purpose');
      }
      if (seen.length === 4) resolveDone();
    },
    async processError(args) {
      if (args.error && args.error.message === 'handler failure on purpose') return;
      errors.push(`${args.errorSource}: ${args.error && args.error.name} ${args.error && args.error.code} ${args.error && args.error.message}`);
    },
  }, { autoCompleteMessages: true, maxConcurrentCalls: 1 });
  await Promise.race([done, sleep(8000)]);
  await sleep(300); // let the last auto-complete go out
  await sub.close();
  assert.deepEqual(errors, [], 'processError was called');
  assert.equal(seen.length, 4, `handler calls: ${JSON.stringify(seen)}`);
  assert.deepEqual(seen.filter((s) => s.body !== 's2').map((s) => s.body), ['s1', 's3']);
  assert.deepEqual(seen.filter((s) => s.body === 's2').map((s) => s.deliveryCount), [0, 1]);
  await ctx.expectEmpty(ctx.receiver('q1'), 700, 'after auto-complete');
});

// ---------------------------------------------------------------------------
// $management

sdkTest('peekMessages: from sequence 1, paging by fromSequenceNumber, no lock, no delivery count', async (ctx) => {
  await ctx.sendEach(ctx.sender('q1'), [{ body: 'p0' }, { body: 'p1' }, { body: 'p2' }]);
  const receiver = ctx.receiver('q1');
  const all = await receiver.peekMessages(10);
  assert.deepEqual(bodies(all), ['p0', 'p1', 'p2']);
  assert.deepEqual(seqs(all), [1, 2, 3]);
  for (const m of all) {
    assert.equal(m.state, 'active');
    assert.equal(m.lockToken, undefined);
    assert.equal(m.deliveryCount, 0);
  }
  // The receiver's own cursor continues after the last peeked message.
  assert.deepEqual(await receiver.peekMessages(10), [], 'peek past the end is empty');
  assert.deepEqual(bodies(await receiver.peekMessages(10, { fromSequenceNumber: L(2) })), ['p1', 'p2']);
  assert.deepEqual(bodies(await receiver.peekMessages(1, { fromSequenceNumber: L(3) })), ['p2']);
  assert.deepEqual(bodies(await receiver.peekMessages(2, { fromSequenceNumber: L(1) })), ['p0', 'p1']);

  const got = await ctx.receiveExactly(receiver, 3, 5000, 'receive after peek');
  assert.deepEqual(bodies(got), ['p0', 'p1', 'p2'], 'peek did not lock anything');
  assert.deepEqual(got.map((m) => m.deliveryCount), [0, 0, 0], 'peek did not count a delivery');
  for (const m of got) await receiver.completeMessage(m);
  assert.deepEqual(await receiver.peekMessages(10, { fromSequenceNumber: L(1) }), [], 'empty queue peeks []');
});

sdkTest('renewMessageLock extends lockedUntilUtc past the original lock', async (ctx) => {
  await ctx.sender('lq').sendMessages({ body: 'renew me' });
  const receiver = ctx.receiver('lq');
  const [m] = await ctx.receiveExactly(receiver, 1, 5000, 'message');
  const first = m.lockedUntilUtc.getTime();
  assertNear(first, Date.now() + 3000, 1000, 'lockedUntilUtc with a 3 s lock');
  await sleep(1200);
  const renewed = await receiver.renewMessageLock(m);
  assert.ok(renewed instanceof Date, `renewMessageLock returned ${renewed}`);
  assertNear(renewed.getTime(), Date.now() + 3000, 1000, 'renewed lock');
  assert.ok(renewed.getTime() > first + 500, 'renewal moved the lock forward');
  assert.equal(m.lockedUntilUtc.getTime(), renewed.getTime(), 'the SDK updates message.lockedUntilUtc');
  // Past the original expiry, the renewed lock still holds: complete succeeds, nothing comes back.
  await sleep(Math.max(0, first - Date.now()) + 500);
  await receiver.completeMessage(m);
  await ctx.expectEmpty(receiver, 700, 'after complete under the renewed lock');
}, { queues: [{ name: 'lq', lock_duration_ms: 3000 }] });

sdkTest('scheduleMessages: sequence numbers back, invisible until due, peek shows scheduled, cancel removes', async (ctx) => {
  const sender = ctx.sender('q1');
  const t0 = Date.now();
  const due = new Date(t0 + 2500);
  const [sa] = await sender.scheduleMessages({ body: 'sched-1', messageId: 'sched-1' }, due);
  const [sb] = await sender.scheduleMessages([{ body: 'sched-2' }], new Date(t0 + 60000));
  assert.ok(Long.isLong(sa) && Long.isLong(sb), 'scheduleMessages returns Long sequence numbers');
  assert.ok(sa.toNumber() >= 1 && sb.toNumber() > sa.toNumber(), `sequence numbers ${sa} ${sb}`);

  const receiver = ctx.receiver('q1');
  const peeked = await receiver.peekMessages(10, { fromSequenceNumber: L(1) });
  assert.deepEqual(bodies(peeked), ['sched-1', 'sched-2']);
  assert.deepEqual(peeked.map((m) => m.state), ['scheduled', 'scheduled']);
  assert.deepEqual(seqs(peeked), [sa.toNumber(), sb.toNumber()]);
  assertNear(peeked[0].scheduledEnqueueTimeUtc.getTime(), due.getTime(), 1, 'peeked scheduledEnqueueTimeUtc');

  await sender.cancelScheduledMessages([sb]);
  const after = await receiver.peekMessages(10, { fromSequenceNumber: L(1) });
  assert.deepEqual(bodies(after), ['sched-1'], 'cancelled message is gone');

  await ctx.expectEmpty(receiver, 500, 'before the scheduled time');
  const [m] = await ctx.receiveExactly(receiver, 1, 5000, 'scheduled message');
  const at = Date.now();
  assert.equal(m.body, 'sched-1');
  assert.ok(at >= due.getTime() - 1000 && at <= due.getTime() + 1500,
    `scheduled for ${due.toISOString()}, delivered at ${new Date(at).toISOString()}`);
  assert.equal(m.scheduledEnqueueTimeUtc.getTime(), due.getTime());
  assert.equal(m.deliveryCount, 0);
  await receiver.completeMessage(m);
  await ctx.expectEmpty(receiver, 700, 'the cancelled message never shows up');
});

sdkTest('sendMessages with scheduledEnqueueTimeUtc: held until due, other messages flow meanwhile', async (ctx) => {
  const sender = ctx.sender('q1');
  const due = new Date(Date.now() + 2000);
  await sender.sendMessages({ body: 'later', scheduledEnqueueTimeUtc: due });
  await sender.sendMessages({ body: 'now' });
  const receiver = ctx.receiver('q1');
  const [n] = await ctx.receiveExactly(receiver, 1, 3000, 'the unscheduled message');
  assert.equal(n.body, 'now');
  await receiver.completeMessage(n);
  assert.ok(Date.now() < due.getTime() - 1000, 'test too slow to check the hold');
  await ctx.expectEmpty(receiver, 400, 'before the scheduled time');
  const [l] = await ctx.receiveExactly(receiver, 1, 5000, 'scheduled message');
  const at = Date.now();
  assert.equal(l.body, 'later');
  assert.ok(at >= due.getTime() - 1000, `delivered ${due.getTime() - at} ms early`);
  assert.equal(l.scheduledEnqueueTimeUtc.getTime(), due.getTime());
  await receiver.completeMessage(l);
});

// ---------------------------------------------------------------------------
// locks and delivery counts

sdkTest('lock expiry: settling or renewing an expired lock is MessageLockLost; redelivered with deliveryCount 1', async (ctx) => {
  await ctx.sender('lq').sendMessages({ body: 'slow', messageId: 'slow' });
  const receiver = ctx.receiver('lq');
  const [m] = await ctx.receiveExactly(receiver, 1, 5000, 'message');
  assertNear(m.lockedUntilUtc.getTime(), Date.now() + 1000, 500, 'lockedUntilUtc with a 1 s lock');
  await sleep(m.lockedUntilUtc.getTime() - Date.now() + 300);
  await expectSdkError(receiver.completeMessage(m), 'MessageLockLost', 'complete after lock expiry');
  const [again] = await ctx.receiveExactly(receiver, 1, 3000, 'redelivery after lock expiry');
  assert.equal(again.messageId, 'slow');
  assert.equal(again.deliveryCount, 1);
  assert.equal(seq(again.sequenceNumber), seq(m.sequenceNumber));
  // $management renew-lock with the expired token.
  await expectSdkError(receiver.renewMessageLock(m), 'MessageLockLost', 'renewMessageLock with an expired lock');
  await receiver.completeMessage(again);
  await ctx.expectEmpty(receiver, 500, 'after completing the redelivery');
}, { queues: [{ name: 'lq', lock_duration_ms: 1000 }] });

sdkTest('MaxDeliveryCount: the abandon after the last allowed delivery dead-letters with MaxDeliveryCountExceeded', async (ctx) => {
  await ctx.sender('mq').sendMessages({ body: 'poison', messageId: 'poison' });
  const receiver = ctx.receiver('mq');
  const counts = [];
  for (let i = 0; i < 3; i++) {
    const [m] = await ctx.receiveExactly(receiver, 1, 3000, `delivery ${i + 1}`);
    counts.push(m.deliveryCount);
    await receiver.abandonMessage(m);
  }
  assert.deepEqual(counts, [0, 1, 2]);
  await ctx.expectEmpty(receiver, 700, 'main queue after the last abandon');
  const dlq = ctx.dlqReceiver('mq');
  const [d] = await ctx.receiveExactly(dlq, 1, 5000, 'DLQ');
  assert.equal(d.messageId, 'poison');
  assert.equal(d.body, 'poison');
  assert.equal(d.deadLetterReason, 'MaxDeliveryCountExceeded', 'DLQ message application property DeadLetterReason');
  await dlq.completeMessage(d);
}, { queues: [{ name: 'mq', max_delivery_count: 3 }] });

// ---------------------------------------------------------------------------
// TTL

sdkTest('TTL: an expired message is never delivered (no dead-lettering configured: dropped)', async (ctx) => {
  const sender = ctx.sender('q1');
  await ctx.sendEach(sender, [
    { body: 'short', timeToLive: 1000 },
    { body: 'long', timeToLive: 60000 },
  ]);
  await sleep(1600);
  const receiver = ctx.receiver('q1');
  const got = await ctx.receiveN(receiver, 2, 1500);
  assert.deepEqual(bodies(got), ['long'], 'only the unexpired message is delivered');
  assert.equal(got[0].timeToLive, 60000);
  await receiver.completeMessage(got[0]);
  await ctx.expectEmpty(ctx.dlqReceiver('q1'), 500, 'DLQ (dead-lettering on expiration is off)');
});

sdkTest('TTL: with dead_lettering_on_message_expiration the expired message reaches the DLQ as TTLExpiredException', async (ctx) => {
  await ctx.sendEach(ctx.sender('xq'), [
    { body: 'expires', messageId: 'exp-1', timeToLive: 1000 },
    { body: 'stays', messageId: 'stay-1' },
  ]);
  await sleep(1500);
  const receiver = ctx.receiver('xq');
  const got = await ctx.receiveN(receiver, 2, 1500);
  assert.deepEqual(bodies(got), ['stays']);
  await receiver.completeMessage(got[0]);
  // Promised: within 15 s of expiring, whether or not anyone receives.
  const dlq = ctx.dlqReceiver('xq');
  const [d] = await ctx.receiveExactly(dlq, 1, 15000, 'expired message in the DLQ');
  assert.equal(d.messageId, 'exp-1');
  assert.equal(d.body, 'expires');
  assert.equal(d.deadLetterReason, 'TTLExpiredException', 'DLQ message application property DeadLetterReason');
  await dlq.completeMessage(d);
}, { timeout: 30000, queues: [{ name: 'xq', dead_lettering_on_message_expiration: true }] });

sdkTest('TTL: default_message_ttl_ms applies to messages sent without a TTL', async (ctx) => {
  await ctx.sender('tq').sendMessages({ body: 'no ttl given' });
  const receiver = ctx.receiver('tq');
  // Before expiry it is delivered and carries the effective TTL; abandon it and let it expire.
  const [m] = await ctx.receiveExactly(receiver, 1, 3000, 'message before expiry');
  await receiver.abandonMessage(m);
  await sleep(Math.max(0, m.enqueuedTimeUtc.getTime() + 1500 - Date.now()) + 400);
  await ctx.expectEmpty(receiver, 1000, 'after the default TTL');
  assert.equal(m.timeToLive, 1500, 'delivered messages carry the effective TTL in header.ttl');
}, { queues: [{ name: 'tq', default_message_ttl_ms: 1500 }] });

// ---------------------------------------------------------------------------
// duplicate detection

sdkTest('duplicate detection: a repeated messageId within the window is accepted and dropped', async (ctx) => {
  const sender = ctx.sender('dq');
  await sender.sendMessages({ body: 'first', messageId: 'dup-1' });
  await sender.sendMessages({ body: 'second copy', messageId: 'dup-1' }); // accepted, dropped
  await sender.sendMessages({ body: 'other', messageId: 'dup-2' });
  await sender.sendMessages({ body: 'third copy', messageId: 'dup-1' });
  await sender.sendMessages({ body: 'dup-2 again', messageId: 'dup-2' });
  await sender.sendMessages({ body: 'new', messageId: 'dup-3' });
  const receiver = ctx.receiver('dq');
  const got = await ctx.receiveN(receiver, 6, 2500);
  assert.deepEqual(bodies(got), ['first', 'other', 'new']);
  for (const m of got) await receiver.completeMessage(m);
  // Completing does not clear the history.
  await sender.sendMessages({ body: 'after complete', messageId: 'dup-1' });
  await ctx.expectEmpty(receiver, 700, 'resend after complete');

  // Control: a queue without duplicate detection keeps both copies.
  const plain = ctx.sender('pq');
  await plain.sendMessages({ body: 'x1', messageId: 'same' });
  await plain.sendMessages({ body: 'x2', messageId: 'same' });
  assert.deepEqual(bodies(await ctx.receiveExactly(ctx.receiver('pq'), 2, 4000, 'plain queue')), ['x1', 'x2']);
}, {
  queues: [
    { name: 'dq', requires_duplicate_detection: true, duplicate_detection_window_ms: 60000 },
    'pq',
  ],
});

// ---------------------------------------------------------------------------
// errors

sdkTest('missing entity: sender and receiver fail with MessagingEntityNotFound', async (ctx) => {
  const err = await expectSdkError(ctx.sender('no-such-queue').sendMessages({ body: 'x' }),
    'MessagingEntityNotFound', 'send to a missing queue');
  assert.equal(err.name, 'ServiceBusError');
  await expectSdkError(ctx.receiver('no-such-queue').receiveMessages(1, { maxWaitTimeInMs: 2000 }),
    'MessagingEntityNotFound', 'receive from a missing queue');
  // The connection is still usable for a real queue.
  await ctx.sender('q1').sendMessages({ body: 'still fine' });
  const [m] = await ctx.receiveExactly(ctx.receiver('q1'), 1, 5000, 'after not-found');
  assert.equal(m.body, 'still fine');
});

sdkTest('wrong SAS key: UnauthorizedAccess for sender and receiver; the right key still works', async (ctx) => {
  const bad = ctx.client({ name: ROOT_KEY.name, key: 'd3Jvbmcta2V5LXZhbHVl' });
  const err = await expectSdkError(bad.createSender('q1').sendMessages({ body: 'x' }),
    'UnauthorizedAccess', 'send with a wrong key');
  assert.equal(err.name, 'ServiceBusError');
  await expectSdkError(bad.createReceiver('q1').receiveMessages(1, { maxWaitTimeInMs: 2000 }),
    'UnauthorizedAccess', 'receive with a wrong key');
  const unknown = ctx.client({ name: 'NoSuchRule', key: ROOT_KEY.key });
  await expectSdkError(unknown.createSender('q1').sendMessages({ body: 'x' }),
    'UnauthorizedAccess', 'send with an unknown key name');

  await ctx.sender('q1').sendMessages({ body: 'authorised' });
  const got = await ctx.receiveN(ctx.receiver('q1'), 2, 1500);
  assert.deepEqual(bodies(got), ['authorised'], 'nothing sent with a bad key reached the queue');
});
