'use strict';
// rhea over TLS: the broker's AMQPS listener (`[tls]` in the config, certificates made here with
// the openssl CLI), SASL PLAIN and ANONYMOUS inside TLS, a multi-frame message, and a client that
// does not trust the broker's CA failing the handshake.

const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { after } = require('node:test');
const {
  rhea, brokerTest, openSender, openReceiver, sendOne, sendAll, take, takeOne, withTimeout, PLAIN_ROOT,
} = require('../lib/amqp');

// ---------------------------------------------------------------------------
// certificates

const pkiDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferrobus-js-pki-'));
after(() => fs.rmSync(pkiDir, { recursive: true, force: true }));

function openssl(...args) {
  try {
    return execFileSync('openssl', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    throw new Error(`openssl ${args.join(' ')} failed: ${e.stderr ? e.stderr.toString() : e.message}`);
  }
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1'];

function makeCa(name) {
  const cert = path.join(pkiDir, `${name}-ca.pem`);
  const key = path.join(pkiDir, `${name}-ca.key`);
  openssl('req', '-x509', '-new', ...EC, '-nodes', '-keyout', key, '-out', cert, '-days', '3',
    '-subj', `/O=Ferrobus conformance/CN=Ferrobus JS test CA ${name}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  return { name, cert, key, pem: fs.readFileSync(cert, 'utf8') };
}

function issue(ca, stem) {
  const key = path.join(pkiDir, `${stem}.key`);
  const csr = path.join(pkiDir, `${stem}.csr`);
  const cert = path.join(pkiDir, `${stem}.pem`);
  const ext = path.join(pkiDir, `${stem}.ext`);
  openssl('req', '-new', ...EC, '-nodes', '-keyout', key, '-out', csr, '-subj', '/O=Ferrobus conformance/CN=localhost');
  fs.writeFileSync(ext, 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n'
    + 'keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n');
  openssl('x509', '-req', '-in', csr, '-CA', ca.cert, '-CAkey', ca.key, '-set_serial', `0x${crypto.randomBytes(8).toString('hex')}`,
    '-days', '3', '-out', cert, '-extfile', ext);
  const pem = fs.readFileSync(cert, 'utf8');
  return { cert, key, pem, fingerprint256: new crypto.X509Certificate(pem).fingerprint256 };
}

const caA = makeCa('a');
const caB = makeCa('b');
const srvA = issue(caA, 'srv-a');

const TLS_BROKER = {
  extraToml: `[tls]\namqps_listen = "127.0.0.1:0"\ncert = ${JSON.stringify(srvA.cert)}\nkey = ${JSON.stringify(srvA.key)}\n`,
};

function amqpsPort(broker) {
  for (const line of broker.stdoutLines || []) {
    const m = /^TLS amqps=([0-9.]+):(\d+)\s*$/.exec(line);
    if (m) return Number(m[2]);
  }
  throw new Error(`TLS is configured but stdout has no "TLS amqps=HOST:PORT" line: ${JSON.stringify(broker.stdoutLines)}`);
}

/** rhea connect options for the broker's AMQPS listener, trusting `ca`. */
function tlsOptions(broker, ca, extra = {}) {
  return {
    transport: 'tls',
    host: '127.0.0.1',
    port: amqpsPort(broker),
    ca: [ca.pem],
    servername: 'localhost',
    ...extra,
  };
}

function anonymous() {
  const mechs = rhea.sasl.client_mechanisms();
  mechs.enable_anonymous();
  return { sasl_mechanisms: mechs };
}

// ---------------------------------------------------------------------------

brokerTest('tls: rhea over amqps with SASL PLAIN sends and receives', { broker: TLS_BROKER }, async (ctx) => {
  const readyIdx = ctx.broker.stdoutLines.findIndex((l) => l.startsWith('READY '));
  const tlsIdx = ctx.broker.stdoutLines.findIndex((l) => l.startsWith('TLS amqps='));
  assert.ok(tlsIdx >= 0 && tlsIdx < readyIdx, `the TLS line comes before READY: ${JSON.stringify(ctx.broker.stdoutLines)}`);

  const conn = await ctx.connect({ ...tlsOptions(ctx.broker, caA), ...PLAIN_ROOT });
  assert.equal(conn.socket.authorized, true, `TLS not authorized: ${conn.socket.authorizationError}`);
  assert.equal(conn.socket.getPeerCertificate().fingerprint256, srvA.fingerprint256, 'the broker serves another certificate');
  assert.equal(conn.sasl_transport && conn.sasl_transport.mechanism_name, 'PLAIN');
  assert.equal(conn.saslOutcomeCode, 0, 'sasl-outcome ok');

  const sender = await openSender(conn, 'q1');
  await sendOne(sender, { body: 'hello over amqps', application_properties: { via: 'tls' }, message_id: 'tls-1' });
  const receiver = await openReceiver(conn, 'q1');
  const { message } = await takeOne(receiver);
  assert.equal(message.body, 'hello over amqps');
  assert.deepEqual(message.application_properties, { via: 'tls' });
  assert.equal(message.message_id, 'tls-1');

  // the plain listener keeps serving plain AMQP next to the AMQPS one
  const plain = await ctx.connect(PLAIN_ROOT);
  assert.equal(plain.socket.encrypted, undefined, 'plain listener connection is not TLS');
  const r2 = await openReceiver(plain, 'q2');
  const s2 = await openSender(conn, 'q2');
  await sendOne(s2, { body: 'from tls to plain' });
  assert.equal((await takeOne(r2)).message.body, 'from tls to plain');
});

brokerTest('tls: rhea over amqps with SASL ANONYMOUS, a batch and a multi-frame message', { broker: TLS_BROKER }, async (ctx) => {
  const conn = await ctx.connect({ ...tlsOptions(ctx.broker, caA), ...anonymous() });
  assert.equal(conn.socket.authorized, true);
  assert.equal(conn.sasl_transport && conn.sasl_transport.mechanism_name, 'ANONYMOUS');
  const sender = await openSender(conn, 'q2');
  const receiver = await openReceiver(conn, 'q2');
  await sendAll(sender, 100, (i) => ({ body: `tls-batch-${i}` }));
  const got = await take(receiver, 100);
  assert.deepEqual(got.map((x) => x.message.body), Array.from({ length: 100 }, (_, i) => `tls-batch-${i}`));
  // larger than max_frame_size (262144): several transfer frames, inside TLS records
  const big = crypto.randomBytes(400 * 1024).toString('base64');
  await sendOne(sender, { body: big });
  const { message } = await takeOne(receiver);
  assert.equal(message.body.length, big.length);
  assert.equal(message.body, big);
});

brokerTest('tls: a rhea client that does not trust the CA fails the handshake', { broker: TLS_BROKER }, async (ctx) => {
  for (const [what, opts] of [
    ['another CA', tlsOptions(ctx.broker, caB)],
    ['no CA (system trust store)', { ...tlsOptions(ctx.broker, caA), ca: undefined }],
  ]) {
    const conn = ctx.connectRaw({ ...opts, ...PLAIN_ROOT });
    let opened = false;
    const err = await withTimeout(conn.opened.then(() => { opened = true; }, (e) => e), 10000, `${what}: refusal`);
    assert.equal(opened, false, `${what}: the connection opened (events: ${conn.events.join(', ')})`);
    assert.match(String(err && err.message), /certificate|verify|issuer|self[- ]signed/i,
      `${what}: expected a certificate verification failure, got ${err && err.message} (events: ${conn.events.join(', ')})`);
    assert.ok(!conn.events.includes('connection_open'));
  }
  // a trusting client on the same broker is fine
  const conn = await ctx.connect({ ...tlsOptions(ctx.broker, caA), ...PLAIN_ROOT });
  const sender = await openSender(conn, 'q1');
  await sendOne(sender, { body: 'trusted' });
  const receiver = await openReceiver(conn, 'q1');
  assert.equal((await takeOne(receiver)).message.body, 'trusted');
});
