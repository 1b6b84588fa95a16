'use strict';
// Fail fast: start the broker once with the default config and stop it.
// Exit 0 when it printed READY and exited 0 on SIGTERM; else print why, exit 1.
const { startBroker } = require('./broker');

(async () => {
  let broker;
  try {
    broker = await startBroker({});
  } catch (e) {
    console.error(`conformance/js preflight: broker did not start: ${e.message}`);
    process.exit(1);
  }
  const exit = await broker.stop();
  if (exit.code !== 0 || exit.signal !== null) {
    console.error(`conformance/js preflight: broker exit after SIGTERM: ${JSON.stringify(exit)}\n${broker.stderrTail().slice(-3000)}`);
    process.exit(1);
  }
  broker.removeDir();
})();
