//! Evaluates a parsed expression against one message, with SQL's three-valued logic: a
//! missing user property is *unknown* (`Value::Null`), which propagates through arithmetic,
//! comparisons, `LIKE` and the left side of `IN`; `AND` is false if any operand is false,
//! `OR` true if any is true, and unknown otherwise if any operand is unknown.

use std::borrow::Cow;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::ast::{Expr, PropRef};
use crate::like::LikePattern;
use crate::value::{self, truth_value, Truth};
use crate::{EvalError, Message, Value};

/// The value of a property: a missing one is `Null` (unknown).
pub(crate) fn property(p: &PropRef, msg: &dyn Message) -> Value {
    match p {
        PropRef::System(s) => msg.system(*s),
        PropRef::User(n) => msg.user(n),
    }
    .unwrap_or(Value::Null)
}

/// Reads a value as a condition: `Bool`, or `Null` for unknown.
pub(crate) fn truth(v: &Value, what: &'static str) -> Result<Truth, EvalError> {
    match v {
        Value::Bool(b) => Ok(Some(*b)),
        Value::Null => Ok(None),
        other => Err(EvalError::TypeUnary {
            what,
            found: other.kind(),
        }),
    }
}

/// Evaluates `e`. Conditions come back as `Value::Bool` or `Value::Null` (unknown).
pub(crate) fn eval(e: &Expr, msg: &dyn Message) -> Result<Value, EvalError> {
    eval_ref(e, msg).map(Cow::into_owned)
}

/// [`eval`] without copying constants: they are borrowed from the tree.
fn eval_ref<'e>(e: &'e Expr, msg: &dyn Message) -> Result<Cow<'e, Value>, EvalError> {
    Ok(Cow::Owned(match e {
        Expr::Const(v) | Expr::Param { value: v, .. } => return Ok(Cow::Borrowed(v)),
        Expr::Prop(p) => property(p, msg),
        Expr::PropertyFn(arg) => match &*eval_ref(arg, msg)? {
            Value::Null => Value::Null,
            Value::String(name) => {
                let p = PropRef::from_text(name).map_err(EvalError::UnknownSystemProperty)?;
                property(&p, msg)
            }
            other => {
                return Err(EvalError::TypeUnary {
                    what: "property()",
                    found: other.kind(),
                })
            }
        },
        Expr::NewId => Value::Uuid(new_uuid()),
        Expr::Neg(x) => value::negate(&*eval_ref(x, msg)?)?,
        Expr::Plus(x) => value::plus(&*eval_ref(x, msg)?)?,
        Expr::Arith(op, a, b) => value::arith(*op, &*eval_ref(a, msg)?, &*eval_ref(b, msg)?)?,
        Expr::Compare(op, a, b) => truth_value(value::compare(
            *op,
            &*eval_ref(a, msg)?,
            &*eval_ref(b, msg)?,
        )?),
        Expr::Not(x) => truth_value(truth(&*eval_ref(x, msg)?, "NOT")?.map(|b| !b)),
        Expr::And(items) => {
            let mut unknown = false;
            for item in items {
                match truth(&*eval_ref(item, msg)?, "AND")? {
                    Some(false) => return Ok(Cow::Owned(Value::Bool(false))),
                    Some(true) => {}
                    None => unknown = true,
                }
            }
            truth_value((!unknown).then_some(true))
        }
        Expr::Or(items) => {
            let mut unknown = false;
            for item in items {
                match truth(&*eval_ref(item, msg)?, "OR")? {
                    Some(true) => return Ok(Cow::Owned(Value::Bool(true))),
                    Some(false) => {}
                    None => unknown = true,
                }
            }
            truth_value((!unknown).then_some(false))
        }
        Expr::IsNull { expr, negated } => Value::Bool(eval_ref(expr, msg)?.is_null() != *negated),
        Expr::Exists(p) => Value::Bool(match p {
            PropRef::System(s) => msg.system(*s).is_some_and(|v| !v.is_null()),
            PropRef::User(n) => msg.user(n).is_some(),
        }),
        Expr::In {
            expr,
            list,
            negated,
        } => {
            let left = eval_ref(expr, msg)?;
            if left.is_null() {
                return Ok(Cow::Owned(Value::Null));
            }
            let mut result = Some(false);
            for item in list {
                match value::equal(&left, &*eval_ref(item, msg)?)? {
                    Some(true) => {
                        result = Some(true);
                        break;
                    }
                    Some(false) => {}
                    None => result = None,
                }
            }
            truth_value(result.map(|b| b != *negated))
        }
        Expr::Like {
            expr,
            pattern,
            escape,
            compiled,
            negated,
        } => {
            let value = eval_ref(expr, msg)?;
            let text = match &*value {
                Value::Null => return Ok(Cow::Owned(Value::Null)),
                Value::String(s) => s,
                other => {
                    return Err(EvalError::TypeUnary {
                        what: "LIKE",
                        found: other.kind(),
                    })
                }
            };
            let matched = match compiled {
                Some(p) => p.is_match(text),
                None => match runtime_pattern(pattern, escape.as_deref(), msg)? {
                    Some(p) => p.is_match(text),
                    None => return Ok(Cow::Owned(Value::Null)),
                },
            };
            Value::Bool(matched != *negated)
        }
    }))
}

/// Compiles a pattern computed from the message; `None` when pattern or escape is null.
fn runtime_pattern(
    pattern: &Expr,
    escape: Option<&Expr>,
    msg: &dyn Message,
) -> Result<Option<LikePattern>, EvalError> {
    let as_text = |v: Cow<'_, Value>| match v.into_owned() {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        other => Err(EvalError::TypeUnary {
            what: "LIKE pattern",
            found: other.kind(),
        }),
    };
    let Some(pattern) = as_text(eval_ref(pattern, msg)?)? else {
        return Ok(None);
    };
    let escape = match escape {
        None => None,
        Some(e) => match as_text(eval_ref(e, msg)?)? {
            None => return Ok(None),
            Some(e) => Some(LikePattern::escape_char(&e).map_err(EvalError::BadPattern)?),
        },
    };
    LikePattern::compile(&pattern, escape)
        .map(Some)
        .map_err(EvalError::BadPattern)
}

/// A random (version 4) UUID for `newid()`. Not cryptographic: the randomness is std's
/// per-process hash seed mixed with a counter and the clock.
pub(crate) fn new_uuid() -> [u8; 16] {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let state = std::collections::hash_map::RandomState::new();
    let half = |salt: u64| {
        let mut h = state.build_hasher();
        h.write_u64(n);
        h.write_u128(nanos);
        h.write_u64(salt);
        h.finish()
    };
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&half(1).to_be_bytes());
    out[8..].copy_from_slice(&half(2).to_be_bytes());
    out[6] = (out[6] & 0x0f) | 0x40;
    out[8] = (out[8] & 0x3f) | 0x80;
    out
}
