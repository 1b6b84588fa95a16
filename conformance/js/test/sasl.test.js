'use strict';
const assert = require('node:assert/strict');
const {
  rhea, brokerTest, openSender, openReceiver, sendOne, takeOne, withTimeout, PLAIN_ROOT, ROOT_KEY,
} = require('../lib/amqp');

const EXPECTED_MECHANISMS = ['MSSBCBS', 'ANONYMOUS', 'PLAIN'];

/** Proves the connection is usable: one message through q1 and back. */
async function roundTrip(conn, body) {
  const sender = await openSender(conn, 'q1');
  await sendOne(sender, { body });
  const receiver = await openReceiver(conn, 'q1');
  const { message } = await takeOne(receiver);
  assert.equal(message.body, body);
}

/** Waits for a refused connection attempt to fail, and returns what happened. */
async function expectRefused(conn, what) {
  let opened = false;
  const err = await withTimeout(conn.opened.then(() => { opened = true; }, (e) => e), 10000, `${what}: refusal`);
  assert.equal(opened, false, `${what}: connection was opened (events: ${conn.events.join(', ')})`);
  await withTimeout(conn.socketClosed, 5000, `${what}: socket closed (events: ${conn.events.join(', ')})`);
  assert.ok(!conn.events.includes('connection_open'), `${what}: no connection_open (events: ${conn.events.join(', ')})`);
  return err;
}

brokerTest('sasl: ANONYMOUS login; mechanisms offered are MSSBCBS ANONYMOUS PLAIN', async (ctx) => {
  const mechs = rhea.sasl.client_mechanisms();
  mechs.enable_anonymous();
  const conn = await ctx.connect({ sasl_mechanisms: mechs });
  assert.deepEqual([...conn.offeredSaslMechanisms].sort(), [...EXPECTED_MECHANISMS].sort(),
    `sasl-mechanisms offered: ${JSON.stringify(conn.offeredSaslMechanisms)}`);
  assert.equal(conn.sasl_transport.mechanism_name, 'ANONYMOUS');
  assert.equal(conn.saslOutcomeCode, 0, 'sasl-outcome code ok');
  await roundTrip(conn, 'anon');
});

brokerTest('sasl: PLAIN login with the configured key', async (ctx) => {
  const conn = await ctx.connect(PLAIN_ROOT);
  assert.equal(conn.sasl_transport.mechanism_name, 'PLAIN');
  assert.equal(conn.saslOutcomeCode, 0, 'sasl-outcome code ok');
  assert.ok(conn.offeredSaslMechanisms.includes('PLAIN'));
  await roundTrip(conn, 'plain');
});

brokerTest('sasl: PLAIN with a wrong password or unknown user is refused with outcome auth', async (ctx) => {
  for (const [label, creds] of [
    ['wrong password', { username: ROOT_KEY.name, password: 'not-the-key' }],
    ['unknown user', { username: 'NoSuchKey', password: ROOT_KEY.key }],
  ]) {
    const conn = ctx.connectRaw(creds);
    await expectRefused(conn, label);
    assert.equal(conn.saslOutcomeCode, 1, `${label}: sasl-outcome code must be 1 (auth), got ${conn.saslOutcomeCode}`);
  }
  // The broker is still fine for good credentials.
  const ok = await ctx.connect(PLAIN_ROOT);
  await roundTrip(ok, 'after-refusals');
});

brokerTest('sasl: a client that skips SASL is accepted by default', async (ctx) => {
  const conn = ctx.connectRaw({}); // no username, no mechanisms: rhea sends the AMQP header directly
  await withTimeout(conn.opened, 10000, `connection_open without SASL (events: ${conn.events.join(', ')})`);
  assert.equal(conn.sasl_transport, undefined, 'rhea really skipped SASL');
  assert.equal(conn.offeredSaslMechanisms, undefined, 'no sasl-mechanisms frame seen');
  await roundTrip(conn, 'no-sasl');
});

brokerTest('sasl: require_sasl = true refuses a client that skips SASL', { broker: { amqp: { require_sasl: true } } }, async (ctx) => {
  const conn = ctx.connectRaw({});
  await expectRefused(conn, 'no-SASL client with require_sasl');
  // SASL clients still get in.
  const ok = await ctx.connect(PLAIN_ROOT);
  await roundTrip(ok, 'sasl-required');
});
