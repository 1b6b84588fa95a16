//! What can go wrong: [`ParseError`] when a filter or action is created, [`EvalError`] when one is
//! run against a message.

/// A filter or action text that is not accepted, with the character position (0-based, counted
/// in Unicode scalar values) where the problem was found.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind} (at position {position})")]
pub struct ParseError {
    /// Character offset into the text, 0-based.
    pub position: usize,
    /// What is wrong there.
    pub kind: ParseErrorKind,
}

impl ParseError {
    pub(crate) fn new(position: usize, kind: ParseErrorKind) -> Self {
        ParseError { position, kind }
    }
}

/// Why a text was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseErrorKind {
    /// The text is longer than [`crate::Limits::max_expression_chars`].
    #[error("expression is longer than {limit} characters")]
    TooLong {
        /// The limit in force.
        limit: usize,
    },
    /// Parentheses, `NOT`s, unary signs or operator chains nest deeper than
    /// [`crate::Limits::max_depth`].
    #[error("expression nests deeper than {limit} levels")]
    TooDeep {
        /// The limit in force.
        limit: usize,
    },
    /// An action has more statements than [`crate::Limits::max_action_statements`].
    #[error("action has more than {limit} statements")]
    TooManyStatements {
        /// The limit in force.
        limit: usize,
    },
    /// A `'string'` without its closing quote.
    #[error("unterminated string constant")]
    UnterminatedString,
    /// A `[name]` or `"name"` without its closing bracket or quote.
    #[error("unterminated delimited identifier")]
    UnterminatedIdentifier,
    /// A character that starts no token.
    #[error("unexpected character {0:?}")]
    UnexpectedChar(char),
    /// A malformed numeric constant (`1e`, `12abc`).
    #[error("malformed number")]
    BadNumber,
    /// An integer outside `i64`, or a floating-point constant that is not finite.
    #[error("number out of range")]
    NumberOutOfRange,
    /// The parser wanted one thing and found another.
    #[error("expected {expected}, found {found}")]
    Expected {
        /// What would have been accepted.
        expected: &'static str,
        /// What was there.
        found: String,
    },
    /// `x.name` where `x` is neither `sys` nor `user`.
    #[error("unknown scope {0:?} (expected sys or user)")]
    UnknownScope(String),
    /// `sys.name` where `name` is not a system property.
    #[error("unknown system property {0:?}")]
    UnknownSystemProperty(String),
    /// A call of a function other than `newid()`, `property()` and `p()`.
    #[error("unknown function {0:?}")]
    UnknownFunction(String),
    /// `@name` with no parameter of that name supplied.
    #[error("no value for parameter @{0}")]
    UnknownParameter(String),
    /// A value (arithmetic, a number or string) where a condition is needed.
    #[error("a condition is needed here, not a value")]
    ExpectedCondition,
    /// A condition (comparison, `AND`, `LIKE` …) where a value is needed.
    #[error("a value is needed here, not a condition")]
    ExpectedValue,
    /// A constant `LIKE` pattern or escape that cannot be used.
    #[error("invalid LIKE pattern: {0}")]
    BadPattern(&'static str),
    /// `SET sys.X` / `REMOVE sys.X` for a system property an action may not change.
    #[error("an action cannot change sys.{0}")]
    ReadOnly(&'static str),
}

/// Evaluating a filter or action against one message failed. Service Bus calls this a filter
/// exception; a subscription may dead-letter the message for it
/// (`EnableDeadLetteringOnFilterEvaluationExceptions`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// A binary operator applied to values it has no meaning for (`'a' * 2`, `TRUE < 1`,
    /// `'1' = 1`).
    #[error("operator {op} cannot be applied to {left} and {right}")]
    Type {
        /// The operator, as written in SQL.
        op: &'static str,
        /// Kind of the left operand ([`crate::Value::kind`]).
        left: &'static str,
        /// Kind of the right operand.
        right: &'static str,
    },
    /// A unary operator, function or condition given a value of the wrong kind (`-'a'`,
    /// `p(1)`, a string where a condition is needed).
    #[error("{what} cannot take a {found}")]
    TypeUnary {
        /// The operator, function or position.
        what: &'static str,
        /// Kind of the value found.
        found: &'static str,
    },
    /// Integer `/` or `%` by zero.
    #[error("integer division by zero")]
    DivideByZero,
    /// Integer arithmetic overflowed `i64`, or a date/time left its range.
    #[error("arithmetic overflow")]
    Overflow,
    /// `property('sys.X')` naming no system property.
    #[error("unknown system property {0:?}")]
    UnknownSystemProperty(String),
    /// A `LIKE` pattern or escape computed at run time that cannot be used.
    #[error("invalid LIKE pattern: {0}")]
    BadPattern(&'static str),
    /// An action tried to give a system property a value it cannot hold (`SET sys.To = 5`,
    /// `SET sys.MessageId = NULL`).
    #[error("sys.{property} cannot be set to a {found}")]
    BadSystemValue {
        /// The system property.
        property: &'static str,
        /// Kind of the value.
        found: &'static str,
    },
}
