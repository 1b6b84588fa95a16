'use strict';
// Starts and stops a real ferrobus broker for one test, as fixed by
// conformance/INTERFACE.md: fresh temp TOML config + data dir, loopback
// listeners on port 0, the READY line on stdout, SIGTERM -> exit 0.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const READY_TIMEOUT_MS = 20000;
const STOP_TIMEOUT_MS = 10000;
const STDERR_TAIL_BYTES = 16384;

const ROOT_KEY = Object.freeze({ name: 'RootManageSharedAccessKey', key: 'SAS_KEY_VALUE' });

const DEFAULT_AMQP = Object.freeze({
  idle_timeout_ms: 120000,
  max_frame_size: 262144,
  max_message_size: 104857600,
  require_sasl: false,
  link_credit: 1000,
});

const READY_RE = /^READY amqp=([0-9.]+):(\d+) http=([0-9.]+):(\d+)\s*$/;

function brokerBin() {
  if (process.env.FERROBUS_BIN) return process.env.FERROBUS_BIN;
  if (process.env.CARGO_TARGET_DIR) {
    return path.join(process.env.CARGO_TARGET_DIR, 'release', 'ferrobus');
  }
  return path.resolve(__dirname, '..', '..', '..', 'target', 'release', 'ferrobus');
}

function tomlValue(v) {
  if (typeof v === 'boolean' || typeof v === 'number') return String(v);
  if (typeof v === 'string') return JSON.stringify(v);
  throw new Error(`unsupported TOML value: ${JSON.stringify(v)}`);
}

/**
 * Renders the broker config.
 * opts.amqp    - overrides for the [amqp] table (merged over DEFAULT_AMQP)
 * opts.keys    - [[auth.keys]] entries (default: the root key)
 * opts.queues  - queue names (default: q1, q2)
 * opts.extraToml - raw TOML appended verbatim
 */
function renderConfig(opts = {}) {
  const amqp = { ...DEFAULT_AMQP, ...(opts.amqp || {}) };
  const keys = opts.keys || [ROOT_KEY];
  const queues = opts.queues || ['q1', 'q2'];
  const lines = ['[amqp]'];
  for (const [k, v] of Object.entries(amqp)) lines.push(`${k} = ${tomlValue(v)}`);
  for (const key of keys) {
    lines.push('', '[[auth.keys]]', `name = ${tomlValue(key.name)}`, `key = ${tomlValue(key.key)}`);
  }
  for (const q of queues) lines.push('', '[[queues]]', `name = ${tomlValue(q)}`);
  if (opts.extraToml) lines.push('', opts.extraToml);
  return lines.join('\n') + '\n';
}

const live = new Set();
process.on('exit', () => {
  for (const child of live) {
    try { child.kill('SIGKILL'); } catch (_) { /* already gone */ }
  }
});

class Broker {
  constructor(child, dir, amqpPort, httpPort, stderrTail, exited) {
    this.child = child;
    this.dir = dir;
    this.host = '127.0.0.1';
    this.amqpPort = amqpPort;
    this.httpPort = httpPort;
    this._stderrTail = stderrTail;
    this._exited = exited; // promise of {code, signal}
  }

  get pid() { return this.child.pid; }

  stderrTail() { return this._stderrTail(); }

  hasExited() { return this.child.exitCode !== null || this.child.signalCode !== null; }

  /** SIGTERM, wait for exit; returns {code, signal}. SIGKILLs after STOP_TIMEOUT_MS. */
  async stop() {
    if (!this.hasExited()) this.child.kill('SIGTERM');
    let timer;
    const timeout = new Promise((resolve) => {
      timer = setTimeout(() => resolve(null), STOP_TIMEOUT_MS);
    });
    let res = await Promise.race([this._exited, timeout]);
    clearTimeout(timer);
    if (res === null) {
      this.child.kill('SIGKILL');
      await this._exited;
      res = { code: null, signal: 'SIGKILL', timedOut: true };
    }
    return res;
  }

  /** Immediate SIGKILL (cleanup after a failed/timed-out test). */
  async kill() {
    if (!this.hasExited()) this.child.kill('SIGKILL');
    return this._exited;
  }

  removeDir() {
    try { fs.rmSync(this.dir, { recursive: true, force: true }); } catch (_) { /* best effort */ }
  }
}

async function startBroker(opts = {}) {
  const bin = brokerBin();
  if (!fs.existsSync(bin)) {
    throw new Error(`ferrobus binary not found at ${bin} (set FERROBUS_BIN)`);
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferrobus-js-'));
  const configPath = path.join(dir, 'ferrobus.toml');
  // opts.dataDir: start on an earlier broker's data (a restart); otherwise a fresh one
  const dataDir = opts.dataDir || path.join(dir, 'data');
  if (!opts.dataDir) fs.mkdirSync(dataDir);
  fs.writeFileSync(configPath, renderConfig(opts));

  const child = spawn(bin, [
    '--config', configPath,
    '--data-dir', dataDir,
    '--amqp-listen', '127.0.0.1:0',
    '--http-listen', '127.0.0.1:0',
  ], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...(opts.env || {}) } });
  live.add(child);

  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    stderr += chunk;
    if (stderr.length > 2 * STDERR_TAIL_BYTES) stderr = stderr.slice(-STDERR_TAIL_BYTES);
  });
  const stderrTail = () => stderr.slice(-STDERR_TAIL_BYTES);

  const exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      live.delete(child);
      resolve({ code, signal });
    });
  });

  let stdoutBuf = '';
  const stdoutLines = [];
  child.stdout.setEncoding('utf8');

  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`broker did not print READY within ${READY_TIMEOUT_MS} ms; stdout=${JSON.stringify(stdoutLines)}`));
    }, READY_TIMEOUT_MS);
    child.stdout.on('data', (chunk) => {
      stdoutBuf += chunk;
      let nl;
      while ((nl = stdoutBuf.indexOf('\n')) >= 0) {
        const line = stdoutBuf.slice(0, nl).replace(/\r$/, '');
        stdoutBuf = stdoutBuf.slice(nl + 1);
        stdoutLines.push(line);
        const m = READY_RE.exec(line);
        if (m) {
          clearTimeout(timer);
          resolve({ amqpPort: Number(m[2]), httpPort: Number(m[4]), host: m[1], httpHost: m[3] });
        }
      }
    });
    child.on('error', (err) => { clearTimeout(timer); reject(err); });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`broker exited before READY (code=${code} signal=${signal}); stdout=${JSON.stringify(stdoutLines)}`));
    });
  });

  let info;
  try {
    info = await ready;
  } catch (err) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
    err.message += `\n--- broker stderr (tail) ---\n${stderrTail()}`;
    throw err;
  }
  if (info.host !== '127.0.0.1' || info.httpHost !== '127.0.0.1') {
    child.kill('SIGKILL');
    throw new Error(`READY names unexpected hosts: ${stdoutLines.join(' | ')}`);
  }
  const broker = new Broker(child, dir, info.amqpPort, info.httpPort, stderrTail, exited);
  broker.stdoutLines = stdoutLines;
  broker.configPath = configPath;
  broker.dataDir = dataDir;
  return broker;
}

module.exports = { startBroker, renderConfig, brokerBin, ROOT_KEY, DEFAULT_AMQP };
