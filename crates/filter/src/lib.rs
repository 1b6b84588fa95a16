//! Service Bus subscription filters and rule actions for Ferrobus: SQL filters, correlation
//! filters, the true and false filters, and SQL rule actions (`SET` / `REMOVE`).
//!
//! Role and invariants:
//! - This crate knows filter text and property values only: no async runtime, no storage, no
//!   AMQP. The broker shows it a message through the [`Message`] trait (system properties by
//!   [`SystemProperty`], application properties by case-insensitive name) and gets back a
//!   match, or a list of [`Change`]s to write into the subscription's copy.
//! - Text is parsed once, when a rule is created ([`SqlFilter::parse`], [`SqlAction::parse`],
//!   [`Filter::sql`]); a refused text is a [`ParseError`] with the character position and the
//!   reason. Evaluation never re-reads text.
//! - Nothing a client sends can exhaust the stack or run long: the text length, the nesting
//!   depth of the tree and the number of action statements are bounded by [`Limits`]
//!   (Service Bus' values by default), every recursion (parse, evaluate, print, drop) is bounded
//!   by the depth limit, and `LIKE` matching never backtracks.
//! - Parsing and evaluation never panic on any input; a message that a filter cannot be
//!   evaluated on is a typed [`EvalError`] (Service Bus' filter exception).
//! - Semantics follow Service Bus: SQL three-valued logic (a missing user property is unknown,
//!   and unknown does not match), C#-style numeric promotion, case-sensitive string equality,
//!   case-insensitive property names and keywords. Every choice where the documentation is
//!   silent is written down in `docs/filters.md`.

mod action;
mod ast;
mod correlation;
mod error;
mod eval;
mod filter;
mod lexer;
mod like;
mod message;
mod parser;
mod sql;
mod value;

#[cfg(test)]
mod tests;

pub use action::{Change, SqlAction, Target};
pub use correlation::CorrelationFilter;
pub use error::{EvalError, ParseError, ParseErrorKind};
pub use filter::{select, Filter, Rule, Selection, DEFAULT_RULE_NAME};
pub use message::{names_equal, Message, PropertyBag, SystemKind, SystemProperty};
pub use sql::{Parameters, SqlFilter};
pub use value::{format_uuid, Value, TICKS_PER_MILLISECOND};

/// Bounds on what a filter or action text may be. The defaults are Service Bus' quotas (text)
/// and our own safety bound (depth).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest accepted text, in characters (Service Bus: 1024).
    pub max_expression_chars: usize,
    /// Deepest accepted nesting: parentheses, `NOT`s, unary signs and function calls inside
    /// one another, and the depth of the tree they build (an `AND`/`OR` chain is one level, an
    /// arithmetic chain `a + b + c` one per operator). Default 64.
    pub max_depth: usize,
    /// Most statements in one action (Service Bus: 32).
    pub max_action_statements: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_expression_chars: 1024,
            max_depth: 64,
            max_action_statements: 32,
        }
    }
}
