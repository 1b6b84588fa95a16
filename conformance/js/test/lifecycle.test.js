'use strict';
const assert = require('node:assert/strict');
const {
  brokerTest, openSender, openReceiver, sendOne, takeOne, withTimeout, waitUntil, sleep, frameStats, PLAIN_ROOT,
} = require('../lib/amqp');

brokerTest('lifecycle: READY line, GET /health and /metrics over HTTP', async ({ broker }) => {
  assert.ok(broker.amqpPort > 0 && broker.httpPort > 0, `ports from READY: ${broker.stdoutLines.join(' | ')}`);
  assert.notEqual(broker.amqpPort, broker.httpPort);
  assert.equal(broker.stdoutLines.filter((l) => l.startsWith('READY')).length, 1, 'exactly one READY line');

  const base = `http://127.0.0.1:${broker.httpPort}`;
  const health = await fetch(`${base}/health`, { signal: AbortSignal.timeout(5000) });
  assert.equal(health.status, 200, 'GET /health status');
  assert.equal((await health.text()).trim(), 'ok', 'GET /health body');

  const metrics = await fetch(`${base}/metrics`, { signal: AbortSignal.timeout(5000) });
  assert.equal(metrics.status, 200, 'GET /metrics status');
  const ctype = metrics.headers.get('content-type') || '';
  assert.match(ctype, /^text\/plain/, `GET /metrics content-type: ${ctype}`);
  const text = await metrics.text();
  // Prometheus exposition format: at least one "# TYPE name kind" line and a sample.
  assert.match(text, /^# TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge|histogram|summary|untyped)$/m,
    `metrics body has no # TYPE line:\n${text.slice(0, 500)}`);
  assert.match(text, /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? [-+0-9.eEInfa]+/m, 'metrics body has a sample');
});

brokerTest('lifecycle: SIGTERM with an open connection and a stored message exits 0', async (ctx) => {
  const conn = await ctx.connect();
  const sender = await openSender(conn, 'q1');
  await sendOne(sender, { body: 'kept' });
  const receiver = await openReceiver(conn, { source: 'q2' });
  assert.ok(receiver.remoteOpened);

  const exit = await ctx.stopBroker();
  assert.ok(!exit.timedOut, 'broker exits within 10 s of SIGTERM with a client connected');
  assert.deepEqual({ code: exit.code, signal: exit.signal }, { code: 0, signal: null }, 'exit status after SIGTERM');
  await withTimeout(conn.socketClosed, 5000, 'client socket closed after broker shutdown');
});

brokerTest('lifecycle: a message sent on one connection is received on another', async (ctx) => {
  const a = await ctx.connect();
  const b = await ctx.connect();
  const sender = await openSender(a, 'q1');
  await sendOne(sender, { body: 'hello', message_id: 'm-1' });
  const receiver = await openReceiver(b, 'q1');
  const { message } = await takeOne(receiver);
  assert.equal(message.body, 'hello');
  assert.equal(message.message_id, 'm-1');
});

brokerTest('idle: heartbeats keep a quiet connection open past both idle timeouts', { broker: { amqp: { idle_timeout_ms: 1000 } } }, async (ctx) => {
  // We advertise 600 ms: the broker must send (empty) frames at least every 300 ms or rhea
  // would give up after 1.2 s; rhea in turn heartbeats at half the broker's advertised value.
  const conn = await ctx.connect({ ...PLAIN_ROOT, idle_time_out: 600 });
  assert.equal(conn.remote.open.idle_time_out, 500, 'broker advertises half its idle_timeout_ms in Open');
  frameStats.reset();
  await sleep(3000);
  assert.ok(!conn.events.some((e) => e.startsWith('connection_error') || e === 'socket_close'),
    `connection survived 3 s idle (events: ${conn.events.join(', ')})`);
  assert.ok(frameStats.count >= 6, `broker sent ${frameStats.count} frames in 3 s to a peer advertising 600 ms`);
  const sender = await openSender(conn, 'q1');
  await sendOne(sender, { body: 'after-idle' });
});

brokerTest('idle: a silent peer is closed with amqp:resource-limit-exceeded', { broker: { amqp: { idle_timeout_ms: 1000 } } }, async (ctx) => {
  const conn = await ctx.connect();
  // Silence rhea: forget the broker's idle-time-out so it schedules no heartbeats.
  conn.remote.open.idle_time_out = 0;
  if (conn.heartbeat_out) clearTimeout(conn.heartbeat_out);
  conn.heartbeat_out = undefined;
  const started = Date.now();
  await waitUntil(() => conn.events.some((e) => e.startsWith('connection_error') || e === 'socket_close'), 8000,
    () => `broker closing the silent connection (events: ${conn.events.join(', ')})`);
  const elapsed = Date.now() - started;
  assert.ok(elapsed >= 700, `closed after ${elapsed} ms, before the 1000 ms threshold`);
  assert.ok(conn.error, `close carried an error (events: ${conn.events.join(', ')})`);
  assert.equal(conn.error.condition, 'amqp:resource-limit-exceeded', `close condition (events: ${conn.events.join(', ')})`);
});
