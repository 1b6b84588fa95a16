//! The parsed form of filter and action expressions, and its canonical printing.
//!
//! Every node is checked when it is built: the tree is never deeper than
//! [`crate::Limits::max_depth`], so evaluating, printing and dropping it recurse a bounded
//! number of times.

use std::fmt;
use std::sync::Arc;

use crate::like::LikePattern;
use crate::value::{ArithOp, CmpOp};
use crate::{SystemProperty, Value};

/// A property named in a filter or action.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PropRef {
    /// `sys.Name`.
    System(SystemProperty),
    /// `name` or `user.name`.
    User(String),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    /// A constant (`1`, `2.5`, `'x'`, `TRUE`, `NULL`).
    Const(Value),
    /// `@name`, with the value supplied at parse time.
    Param {
        name: String,
        value: Value,
    },
    Prop(PropRef),
    /// `property(expr)` / `p(expr)`.
    PropertyFn(Box<Expr>),
    /// `newid()`.
    NewId,
    Neg(Box<Expr>),
    Plus(Box<Expr>),
    Arith(ArithOp, Box<Expr>, Box<Expr>),
    Compare(CmpOp, Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    /// Two or more operands of one `AND` chain.
    And(Vec<Expr>),
    /// Two or more operands of one `OR` chain.
    Or(Vec<Expr>),
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    In {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    Like {
        expr: Box<Expr>,
        pattern: Box<Expr>,
        escape: Option<Box<Expr>>,
        /// The compiled pattern when pattern and escape are constants.
        compiled: Option<Arc<LikePattern>>,
        negated: bool,
    },
    Exists(PropRef),
}

/// What an expression can stand for, as far as the parser can tell without a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// A condition: comparison, `AND`, `LIKE` …
    Condition,
    /// A non-boolean value: arithmetic, a number or string constant, `newid()`.
    Value,
    /// Could be either: properties, boolean and null constants.
    Either,
}

impl Expr {
    pub(crate) fn shape(&self) -> Shape {
        match self {
            Expr::Not(_)
            | Expr::And(_)
            | Expr::Or(_)
            | Expr::Compare(..)
            | Expr::IsNull { .. }
            | Expr::In { .. }
            | Expr::Like { .. }
            | Expr::Exists(_) => Shape::Condition,
            Expr::Const(v) | Expr::Param { value: v, .. } => match v {
                Value::Bool(_) | Value::Null => Shape::Either,
                _ => Shape::Value,
            },
            Expr::Prop(_) | Expr::PropertyFn(_) => Shape::Either,
            Expr::NewId | Expr::Neg(_) | Expr::Plus(_) | Expr::Arith(..) => Shape::Value,
        }
    }
}

/// Writes a name as a delimited identifier, `]` doubled.
fn delimited(f: &mut fmt::Formatter<'_>, name: &str) -> fmt::Result {
    write!(f, "[{}]", name.replace(']', "]]"))
}

impl fmt::Display for PropRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PropRef::System(p) => write!(f, "sys.{}", p.name()),
            PropRef::User(n) => {
                f.write_str("user.")?;
                delimited(f, n)
            }
        }
    }
}

/// Writes a constant so that it parses back to the same value. Only the constants the grammar
/// has (null, bool, long, finite double, string) can be written; others print a placeholder.
fn constant(f: &mut fmt::Formatter<'_>, v: &Value) -> fmt::Result {
    match v {
        Value::Double(x) if x.is_finite() => write!(f, "{x:?}"),
        Value::Null | Value::Bool(_) | Value::Long(_) | Value::String(_) | Value::Double(_) => {
            write!(f, "{v}")
        }
        other => write!(f, "<{}>", other.kind()),
    }
}

fn list(f: &mut fmt::Formatter<'_>, items: &[Expr], sep: &str) -> fmt::Result {
    for (i, e) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(sep)?;
        }
        write!(f, "{e}")?;
    }
    Ok(())
}

/// The canonical text: every compound expression in parentheses, properties fully scoped,
/// keywords in upper case. It parses back to an equal tree (given the same parameters).
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let not = |n: bool| if n { "NOT " } else { "" };
        match self {
            Expr::Const(v) => constant(f, v),
            Expr::Param { name, .. } => write!(f, "@{name}"),
            Expr::Prop(p) => write!(f, "{p}"),
            Expr::PropertyFn(e) => write!(f, "property({e})"),
            Expr::NewId => f.write_str("newid()"),
            Expr::Neg(e) => write!(f, "-({e})"),
            Expr::Plus(e) => write!(f, "+({e})"),
            Expr::Arith(op, a, b) => write!(f, "({a} {} {b})", op.sql()),
            Expr::Compare(op, a, b) => write!(f, "({a} {} {b})", op.sql()),
            Expr::Not(e) => write!(f, "(NOT {e})"),
            Expr::And(items) => {
                f.write_str("(")?;
                list(f, items, " AND ")?;
                f.write_str(")")
            }
            Expr::Or(items) => {
                f.write_str("(")?;
                list(f, items, " OR ")?;
                f.write_str(")")
            }
            Expr::IsNull { expr, negated } => write!(f, "({expr} IS {}NULL)", not(*negated)),
            Expr::In {
                expr,
                list: items,
                negated,
            } => {
                write!(f, "({expr} {}IN (", not(*negated))?;
                list(f, items, ", ")?;
                f.write_str("))")
            }
            Expr::Like {
                expr,
                pattern,
                escape,
                negated,
                ..
            } => {
                write!(f, "({expr} {}LIKE {pattern}", not(*negated))?;
                if let Some(e) = escape {
                    write!(f, " ESCAPE {e}")?;
                }
                f.write_str(")")
            }
            Expr::Exists(p) => write!(f, "EXISTS({p})"),
        }
    }
}

impl PropRef {
    /// Resolves the text given to `property()`: `sys.Name` (an unknown name is `Err` with the
    /// name), `user.name`, or a bare user property name. The prefixes are case-insensitive.
    pub(crate) fn from_text(text: &str) -> Result<PropRef, String> {
        let strip = |prefix: &str| {
            text.get(..prefix.len())
                .filter(|p| p.eq_ignore_ascii_case(prefix))
                .map(|_| &text[prefix.len()..])
        };
        if let Some(name) = strip("sys.") {
            SystemProperty::from_name(name)
                .map(PropRef::System)
                .ok_or_else(|| name.to_owned())
        } else if let Some(name) = strip("user.") {
            Ok(PropRef::User(name.to_owned()))
        } else {
            Ok(PropRef::User(text.to_owned()))
        }
    }
}
