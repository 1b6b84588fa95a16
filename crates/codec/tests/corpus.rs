//! Replays the fuzz corpus (`crates/codec/fuzz/corpus/<target>/`) through the fuzz targets'
//! own checks, so the normal test build exercises it without cargo-fuzz.
//!
//! - Every input must pass the target's invariants (no panic, bounded allocations, round
//!   trips; see `fuzz/src/lib.rs`, compiled into this test as it is into the fuzz targets).
//! - The seeds written by `fuzz/gen_corpus.py` (`*.bin`) must be accepted, so the corpus stays
//!   made of inputs the codec takes, except `regress-*.bin`, the inputs of past crashes (deep
//!   nesting, declared lengths far beyond the input, arrays of zero-width elements), which
//!   must be rejected with an error.
//! - `edge-*.bin` (legal but unusual encodings the codec may take or refuse) and inputs added
//!   by `scripts/fuzz --merge` (named by their hash) only need to pass.
//!
//! Each test runs on a test thread, whose 2 MiB stack is a tokio worker's: a decoder that
//! recurses too deeply overflows it here as it would in the broker.

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::path::PathBuf;

use harness::alloc::Counting;
use harness::Outcome;

#[global_allocator]
static ALLOC: Counting = Counting;

fn replay(target: &str, check: fn(&[u8]) -> Outcome) {
    assert!(
        harness::alloc::counting(),
        "the counting allocator is installed"
    );
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    let (mut seeds, mut regressions) = (0, 0);
    for path in files {
        let name = path
            .file_name()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        let data = std::fs::read(&path).expect("a readable corpus file");
        // shown only if this test fails: which input was being replayed
        eprintln!("replaying {target}/{name} ({} bytes)", data.len());
        let outcome = check(&data);
        if !name.ends_with(".bin") || name.starts_with("edge-") {
            continue;
        }
        if name.starts_with("regress-") {
            regressions += 1;
            assert!(
                outcome.rejected,
                "{target}/{name}: a past crash input was accepted ({outcome:?})"
            );
        } else {
            seeds += 1;
            assert!(
                outcome.accepted > 0 && !outcome.rejected,
                "{target}/{name}: a seed was not accepted ({outcome:?})"
            );
        }
    }
    assert!(seeds >= 5, "{target}: only {seeds} seeds");
    assert!(regressions >= 1, "{target}: no regression inputs");
}

#[test]
fn frame_corpus() {
    replay("frame", harness::frame);
}

#[test]
fn sasl_corpus() {
    replay("sasl", harness::sasl);
}

#[test]
fn sections_corpus() {
    replay("sections", harness::sections);
}

#[test]
fn value_corpus() {
    replay("value", harness::value);
}

#[test]
fn allocation_budget_grows_with_the_input() {
    assert_eq!(harness::alloc_budget(0), harness::ALLOC_SLACK);
    assert_eq!(
        harness::alloc_budget(1000) - harness::alloc_budget(0),
        1000 * harness::ALLOC_PER_INPUT_BYTE
    );
}
