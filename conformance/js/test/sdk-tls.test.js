'use strict';
// The official JS SDK (@azure/service-bus) over TLS with a normal connection string (not the
// emulator's): the SDK then speaks TLS to port 5671 of the endpoint's host, so the broker's
// AMQPS listener binds 127.0.0.1:5671 here. Node reads extra trusted CAs from
// NODE_EXTRA_CA_CERTS at start-up only, so each client runs in a child node process.

const assert = require('node:assert/strict');
const { execFileSync, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { after } = require('node:test');
const { brokerTest } = require('../lib/amqp');

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferrobus-js-sdk-tls-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

function openssl(...args) {
  execFileSync('openssl', args, { stdio: ['ignore', 'pipe', 'pipe'] });
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1'];
const ca = { cert: path.join(dir, 'ca.pem'), key: path.join(dir, 'ca.key') };
openssl('req', '-x509', '-new', ...EC, '-nodes', '-keyout', ca.key, '-out', ca.cert, '-days', '2',
  '-subj', '/CN=Ferrobus SDK TLS test CA', '-addext', 'basicConstraints=critical,CA:TRUE',
  '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
const srv = { cert: path.join(dir, 'srv.pem'), key: path.join(dir, 'srv.key'), csr: path.join(dir, 'srv.csr') };
fs.writeFileSync(path.join(dir, 'ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
openssl('req', '-new', ...EC, '-nodes', '-keyout', srv.key, '-out', srv.csr, '-subj', '/CN=localhost');
openssl('x509', '-req', '-in', srv.csr, '-CA', ca.cert, '-CAkey', ca.key, '-CAcreateserial', '-days', '2',
  '-out', srv.cert, '-extfile', path.join(dir, 'ext'));

const CLIENT = `
const { ServiceBusClient } = require('@azure/service-bus');
(async () => {
  const conn = 'Endpoint=sb://localhost/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE';
  const client = new ServiceBusClient(conn, { retryOptions: { maxRetries: 0, timeoutInMs: 8000 } });
  try {
    await client.createSender('q1').sendMessages({ body: 'over tls', messageId: 'js-tls-1' });
    const receiver = client.createReceiver('q1');
    const got = await receiver.receiveMessages(1, { maxWaitTimeInMs: 5000 });
    if (got.length !== 1 || got[0].body !== 'over tls' || got[0].messageId !== 'js-tls-1') {
      throw new Error('unexpected: ' + JSON.stringify(got.map((m) => m.body)));
    }
    await receiver.completeMessage(got[0]);
    console.log('OK');
  } catch (e) {
    console.log('FAILED ' + (e.code || e.name) + ': ' + e.message);
    process.exitCode = 1;
  } finally {
    await client.close();
  }
})();
`;

function runClient(extraEnv) {
  const env = { ...process.env, ...extraEnv };
  delete env.NODE_EXTRA_CA_CERTS;
  Object.assign(env, extraEnv);
  return spawnSync(process.execPath, ['-e', CLIENT], {
    cwd: path.join(__dirname, '..'), env, encoding: 'utf8', timeout: 40000,
  });
}

const TLS_5671 = {
  extraToml: `[tls]\namqps_listen = "127.0.0.1:5671"\ncert = ${JSON.stringify(srv.cert)}\nkey = ${JSON.stringify(srv.key)}\n`,
};

brokerTest('sdk over tls: a normal connection string works when the CA is trusted, and not otherwise',
  { broker: TLS_5671, timeout: 60000 }, async () => {
    const trusted = runClient({ NODE_EXTRA_CA_CERTS: ca.cert });
    assert.match(trusted.stdout, /^OK$/m, `trusted client: ${trusted.stdout}${trusted.stderr}`);
    const untrusted = runClient({});
    assert.doesNotMatch(untrusted.stdout, /^OK$/m, 'a client that does not trust the CA got through');
    assert.match(untrusted.stdout, /FAILED/, `untrusted client: ${untrusted.stdout}${untrusted.stderr}`);
  });
