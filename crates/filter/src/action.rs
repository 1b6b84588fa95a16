//! SQL rule actions: `SET` and `REMOVE` statements run on the copy of a message that a rule
//! selected, producing the list of property changes for the broker to write.

use std::fmt;

use crate::ast::PropRef;
use crate::eval::eval;
use crate::message::{names_equal, SystemKind};
use crate::parser::{Parser, Statement};
use crate::value::format_uuid;
use crate::{EvalError, Limits, Message, Parameters, ParseError, SystemProperty, Value};

/// The property a [`Change`] is about.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A system property (only the [`SystemProperty::settable`] ones).
    System(SystemProperty),
    /// An application property, by name as written in the action. The broker replaces the
    /// message's property whose name matches case-insensitively ([`names_equal`]), or adds a
    /// new one.
    User(String),
}

/// One change an action makes to the message copy.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Give the property this value. For a system property, `Value::Null` means unset it. For
    /// an application property, `Value::Null` is an AMQP `null` value.
    Set(Target, Value),
    /// Remove the property.
    Remove(Target),
}

impl Change {
    /// The property changed.
    pub fn target(&self) -> &Target {
        match self {
            Change::Set(t, _) | Change::Remove(t) => t,
        }
    }
}

impl Target {
    fn same(&self, other: &Target) -> bool {
        match (self, other) {
            (Target::System(a), Target::System(b)) => a == b,
            (Target::User(a), Target::User(b)) => names_equal(a, b),
            _ => false,
        }
    }
}

/// A parsed SQL rule action.
///
/// Statements run in order, and each sees the changes of the ones before it
/// (`SET a = 1; SET b = a + 1` sets `b` to 2). [`SqlAction::apply`] returns the net change per
/// property, in the order the properties were first changed, so the broker re-encodes only the
/// sections that change.
///
/// ```
/// use ferrobus_filter::{Change, Parameters, PropertyBag, SqlAction, SystemProperty, Target};
///
/// let action = SqlAction::parse("SET sys.To = 'Entity'", &Parameters::new())?;
/// let changes = action.apply(&PropertyBag::new())?;
/// assert_eq!(
///     changes,
///     vec![Change::Set(Target::System(SystemProperty::To), "Entity".into())]
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SqlAction {
    text: String,
    statements: Vec<Statement>,
}

impl SqlAction {
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
        let statements = Parser::new(text, parameters, limits)?.statements()?;
        Ok(SqlAction {
            text: text.to_owned(),
            statements,
        })
    }

    /// The action as it was given.
    pub fn expression(&self) -> &str {
        &self.text
    }

    /// Runs the action against `msg` and returns the net changes.
    ///
    /// `SET` converts where C# converts implicitly: a `long` assigned over an existing
    /// `double` application property becomes a `double`. A system property takes only its own
    /// kind ([`SystemProperty::kind`]); a UUID (`newid()`) is accepted for string properties
    /// as its text. `REMOVE` of an application property that is not there changes nothing.
    /// Errors are those of filter evaluation plus [`EvalError::BadSystemValue`].
    pub fn apply(&self, msg: &dyn Message) -> Result<Vec<Change>, EvalError> {
        let mut changes: Vec<Change> = Vec::new();
        for statement in &self.statements {
            let change = {
                let view = Overlay {
                    base: msg,
                    changes: &changes,
                };
                match statement {
                    Statement::Set(target, expr) => {
                        let value = eval(expr, &view)?;
                        match target {
                            PropRef::System(p) => {
                                Change::Set(Target::System(*p), system_value(*p, value)?)
                            }
                            PropRef::User(name) => {
                                let value = match (view.user(name), value) {
                                    (Some(Value::Double(_)), Value::Long(n)) => {
                                        Value::Double(n as f64)
                                    }
                                    (_, v) => v,
                                };
                                Change::Set(Target::User(name.clone()), value)
                            }
                        }
                    }
                    Statement::Remove(PropRef::System(p)) => Change::Remove(Target::System(*p)),
                    Statement::Remove(PropRef::User(name)) => {
                        let known = changes
                            .iter()
                            .any(|c| c.target().same(&Target::User(name.clone())));
                        if !known && view.user(name).is_none() {
                            continue;
                        }
                        Change::Remove(Target::User(name.clone()))
                    }
                }
            };
            match changes
                .iter_mut()
                .find(|c| c.target().same(change.target()))
            {
                Some(slot) => *slot = change,
                None => changes.push(change),
            }
        }
        Ok(changes)
    }
}

/// Shows the action as given.
impl fmt::Display for SqlAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Checks (and for UUIDs converts) a value assigned to a system property.
fn system_value(p: SystemProperty, value: Value) -> Result<Value, EvalError> {
    let ok = match (p.kind(), &value) {
        (_, Value::Null) => p.removable(),
        (SystemKind::String, Value::Uuid(u)) => return Ok(Value::String(format_uuid(u))),
        (SystemKind::String, Value::String(_))
        | (SystemKind::Long, Value::Long(_))
        | (SystemKind::DateTime, Value::DateTime(_))
        | (SystemKind::TimeSpan, Value::TimeSpan(_)) => true,
        _ => false,
    };
    if ok {
        Ok(value)
    } else {
        Err(EvalError::BadSystemValue {
            property: p.name(),
            found: value.kind(),
        })
    }
}

/// The message as the next statement sees it: the original with the changes so far on top.
struct Overlay<'a> {
    base: &'a dyn Message,
    changes: &'a [Change],
}

impl Message for Overlay<'_> {
    fn system(&self, property: SystemProperty) -> Option<Value> {
        let target = Target::System(property);
        match self.changes.iter().find(|c| c.target().same(&target)) {
            Some(Change::Set(_, v)) => (!v.is_null()).then(|| v.clone()),
            Some(Change::Remove(_)) => None,
            None => self.base.system(property),
        }
    }

    fn user(&self, name: &str) -> Option<Value> {
        let target = Target::User(name.to_owned());
        match self.changes.iter().find(|c| c.target().same(&target)) {
            Some(Change::Set(_, v)) => Some(v.clone()),
            Some(Change::Remove(_)) => None,
            None => self.base.user(name),
        }
    }
}
