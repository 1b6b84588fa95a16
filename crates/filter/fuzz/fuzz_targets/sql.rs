//! Fuzz target `sql`: filter and action text through parse and evaluation.
//!
//! Input: one byte of flags, then the text (invalid UTF-8 replaced). Bit 0 parses an action
//! instead of a filter; bit 1 raises the text limit to 64 KiB (the depth limit stays 64).
//! Checks, beyond "no panic, no sanitizer report, no stack overflow": a parsed filter
//! evaluates (to a match or an `EvalError`) on a message with properties of every kind, and
//! its canonical text parses again to the same canonical text.
#![no_main]

use ferrobus_filter::{
    Limits, Parameters, PropertyBag, SqlAction, SqlFilter, SystemProperty as S, Value,
};
use libfuzzer_sys::fuzz_target;

fn message() -> PropertyBag {
    PropertyBag::new()
        .with_system(S::MessageId, "123456")
        .with_system(S::Label, "service bus")
        .with_system(S::SequenceNumber, 42)
        .with_system(S::EnqueuedTimeUtc, Value::DateTime(1_700_000_000_000))
        .with_system(S::TimeToLive, Value::TimeSpan(600_000_000))
        .with_user("color", "red")
        .with_user("quantity", 10)
        .with_user("price", 2.5)
        .with_user("flag", true)
        .with_user("nothing", Value::Null)
        .with_user("big", i64::MAX)
        .with_user("id", Value::Uuid([7; 16]))
        .with_user("bin", Value::Opaque(vec![0xa0, 1, 0]))
}

fn parameters() -> Parameters {
    Parameters::new()
        .with("p1", 7)
        .with("p2", "str")
        .with("p3", 1.5)
        .with("p4", true)
        .with("p5", Value::Null)
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, text)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(text);
    let mut limits = Limits::default();
    if flags & 2 != 0 {
        limits.max_expression_chars = 65_536;
    }
    let params = parameters();
    let msg = message();
    if flags & 1 != 0 {
        if let Ok(action) = SqlAction::parse_with_limits(&text, &params, &limits) {
            let _ = action.apply(&msg);
        }
        return;
    }
    let Ok(filter) = SqlFilter::parse_with_limits(&text, &params, &limits) else {
        return;
    };
    let _ = filter.matches(&msg);
    // The canonical form parenthesises every compound node, so it may nest twice as deep
    // (a unary sign prints as `-(x)`) and run longer than the original.
    let canonical = filter.canonical();
    let relaxed = Limits {
        max_expression_chars: usize::MAX,
        max_depth: 2 * limits.max_depth + 2,
        ..limits
    };
    let again = SqlFilter::parse_with_limits(&canonical, &params, &relaxed)
        .unwrap_or_else(|e| panic!("canonical form {canonical:?} refused: {e}"));
    assert_eq!(again.canonical(), canonical);
});
