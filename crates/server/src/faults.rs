//! Fault injection for the broker's own tests. Off unless the binary is started with
//! `--enable-test-faults`: a production deployment that happens to carry one of the variables
//! in its environment gets a warning, never a fault.
//!
//! - `FERROBUS_TEST_FAIL_WRITES_AFTER_BYTES=N`: store writes fail once N bytes were written.
//! - `FERROBUS_TEST_FAIL_SYNCS_AFTER_BYTES=N`: the journal sync fails once N bytes were written.
//! - a link attached to [`PANIC_NODE`] panics its connection's task (the rest of the broker
//!   must carry on: this is how the tests check that a panic costs one connection).

use anyhow::Context;
use tracing::warn;

/// The node whose attach panics the connection task when faults are enabled.
pub const PANIC_NODE: &str = "$ferrobus-test-panic";

const FAIL_WRITES: &str = "FERROBUS_TEST_FAIL_WRITES_AFTER_BYTES";
const FAIL_SYNCS: &str = "FERROBUS_TEST_FAIL_SYNCS_AFTER_BYTES";

/// The faults this process injects.
#[derive(Debug, Default, Clone, Copy)]
pub struct TestFaults {
    /// Store writes fail after this many bytes.
    pub fail_writes_after_bytes: Option<u64>,
    /// The journal sync fails after this many bytes.
    pub fail_syncs_after_bytes: Option<u64>,
    /// Attaching to [`PANIC_NODE`] panics the connection task.
    pub panic_node: bool,
}

impl TestFaults {
    /// Reads the fault variables if `enabled`; otherwise warns about any that are set.
    pub fn from_env(enabled: bool) -> anyhow::Result<Self> {
        if !enabled {
            for var in [FAIL_WRITES, FAIL_SYNCS] {
                if std::env::var_os(var).is_some() {
                    warn!("{var} is set but ignored: test faults need --enable-test-faults");
                }
            }
            return Ok(TestFaults::default());
        }
        warn!("test faults enabled (--enable-test-faults): never run a deployment like this");
        let bytes = |var: &str, what: &str| -> anyhow::Result<Option<u64>> {
            match std::env::var(var) {
                Ok(v) => {
                    let n = v
                        .parse()
                        .with_context(|| format!("{var} must be a number of bytes"))?;
                    warn!(bytes = n, "test fault: {what} after this many bytes");
                    Ok(Some(n))
                }
                Err(_) => Ok(None),
            }
        };
        Ok(TestFaults {
            fail_writes_after_bytes: bytes(FAIL_WRITES, "writes fail")?,
            fail_syncs_after_bytes: bytes(FAIL_SYNCS, "the journal sync fails")?,
            panic_node: true,
        })
    }
}
