//! Tests across modules: the grammar, three-valued logic, the documented examples, actions,
//! rules, and property tests.

mod actions;
mod examples;
mod grammar;
mod logic;
mod props;

use crate::{Parameters, ParseError, ParseErrorKind, PropertyBag, SqlFilter, SystemProperty};

/// A message with a few properties of each kind.
pub(crate) fn sample() -> PropertyBag {
    PropertyBag::new()
        .with_system(SystemProperty::MessageId, "123456")
        .with_system(SystemProperty::Label, "service bus")
        .with_system(SystemProperty::To, "Store5")
        .with_system(SystemProperty::SequenceNumber, 42)
        .with_user("color", "red")
        .with_user("quantity", 10)
        .with_user("price", 2.5)
        .with_user("flag", true)
        .with_user("nothing", crate::Value::Null)
        .with_user("Property With Space", "x")
        .with_user("HR-EmployeeID", 7)
}

/// Three-valued result of `text` on `msg`; panics on parse errors.
pub(crate) fn eval_on(text: &str, msg: &PropertyBag) -> Result<Option<bool>, crate::EvalError> {
    SqlFilter::parse(text, &Parameters::new())
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
        .evaluate(msg)
}

/// Three-valued result of `text` on [`sample`].
pub(crate) fn eval(text: &str) -> Option<bool> {
    eval_on(text, &sample()).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// The parse error for `text`.
pub(crate) fn parse_err(text: &str) -> ParseError {
    match SqlFilter::parse(text, &Parameters::new()) {
        Ok(f) => panic!("{text:?} parsed as {}", f.canonical()),
        Err(e) => e,
    }
}

pub(crate) fn err_kind(text: &str) -> ParseErrorKind {
    parse_err(text).kind
}

/// The broker shares parsed rules between tasks.
#[test]
fn rules_are_send_and_sync() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<crate::Rule>();
    shareable::<crate::Filter>();
    shareable::<crate::SqlAction>();
    shareable::<crate::ParseError>();
    shareable::<crate::EvalError>();
}
