//! SQL filters: parsed once when a rule is created, evaluated for every message.

use std::fmt;

use crate::ast::Expr;
use crate::eval::{eval, truth};
use crate::parser::Parser;
use crate::{EvalError, Limits, Message, ParseError, Value};

/// Values for the `@name` parameters of a filter or action, supplied when it is parsed.
/// Names match case-insensitively, with or without the leading `@`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parameters(Vec<(String, Value)>);

impl Parameters {
    /// No parameters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a parameter; `name` may start with `@`.
    pub fn insert(&mut self, name: &str, value: impl Into<Value>) {
        let name = name.strip_prefix('@').unwrap_or(name);
        let value = value.into();
        match self
            .0
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(slot) => slot.1 = value,
            None => self.0.push((name.to_owned(), value)),
        }
    }

    /// Adds a parameter (builder style).
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.insert(name, value);
        self
    }

    /// The value of a parameter, by name with or without `@`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        let name = name.strip_prefix('@').unwrap_or(name);
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every parameter: name (without `@`) and value, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v))
    }
}

impl<K: AsRef<str>, V: Into<Value>> FromIterator<(K, V)> for Parameters {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut p = Parameters::new();
        for (k, v) in iter {
            p.insert(k.as_ref(), v);
        }
        p
    }
}

/// A parsed SQL filter condition.
///
/// ```
/// use ferrobus_filter::{Parameters, PropertyBag, SqlFilter, SystemProperty};
///
/// let filter = SqlFilter::parse(
///     "sys.MessageId = '123456' AND userProp1 = 'value1'",
///     &Parameters::new(),
/// )?;
/// let msg = PropertyBag::new()
///     .with_system(SystemProperty::MessageId, "123456")
///     .with_user("UserProp1", "value1");
/// assert!(filter.matches(&msg)?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SqlFilter {
    text: String,
    parameters: Parameters,
    expr: Expr,
}

impl SqlFilter {
    /// Parses `text` under the Service Bus [`Limits`].
    pub fn parse(text: &str, parameters: &Parameters) -> Result<Self, ParseError> {
        Self::parse_with_limits(text, parameters, &Limits::default())
    }

    /// Parses `text` under the given limits.
    pub fn parse_with_limits(
        text: &str,
        parameters: &Parameters,
        limits: &Limits,
    ) -> Result<Self, ParseError> {
        let expr = Parser::new(text, parameters, limits)?.condition()?;
        Ok(SqlFilter {
            text: text.to_owned(),
            parameters: parameters.clone(),
            expr,
        })
    }

    /// The expression as it was given (what `enumerate-rules` sends back).
    pub fn expression(&self) -> &str {
        &self.text
    }

    /// The parameters it was parsed with (kept so the filter can be stored and parsed again).
    pub fn parameters(&self) -> &Parameters {
        &self.parameters
    }

    /// Whether the message matches: the condition is true. False and unknown do not match.
    /// An error is Service Bus' filter exception (a type mismatch, an integer division by
    /// zero, an overflow, `property()` naming an unknown system property).
    pub fn matches(&self, msg: &dyn Message) -> Result<bool, EvalError> {
        Ok(truth(&eval(&self.expr, msg)?, "a filter")? == Some(true))
    }

    /// The condition's three-valued result: `Some(true)`, `Some(false)` or `None` (unknown).
    pub fn evaluate(&self, msg: &dyn Message) -> Result<Option<bool>, EvalError> {
        truth(&eval(&self.expr, msg)?, "a filter")
    }

    /// The canonical form (fully parenthesised, properties scoped): tests and diagnostics.
    pub fn canonical(&self) -> String {
        self.expr.to_string()
    }

    #[cfg(test)]
    pub(crate) fn expr(&self) -> &Expr {
        &self.expr
    }
}

/// Shows the expression as given.
impl fmt::Display for SqlFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}
