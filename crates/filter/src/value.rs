//! The values a filter sees, and the operators on them: numeric promotion, comparison and
//! arithmetic, following C#'s implicit conversions as Service Bus does.

use std::cmp::Ordering;
use std::fmt;

use crate::EvalError;

/// Ticks (100 ns, the unit of .NET's `TimeSpan`) in one millisecond.
pub const TICKS_PER_MILLISECOND: i64 = 10_000;

/// One property value, as a filter sees it.
///
/// How the broker maps AMQP types onto it:
/// - `null` → [`Value::Null`]; `boolean` → [`Value::Bool`];
/// - `byte`, `short`, `int`, `long`, `ubyte`, `ushort`, `uint`, and `ulong` up to `i64::MAX` →
///   [`Value::Long`]; a larger `ulong` → [`Value::Double`];
/// - `float`, `double`, `decimal32/64/128` → [`Value::Double`];
/// - `string`, `symbol`, `char` → [`Value::String`];
/// - `timestamp` → [`Value::DateTime`] (milliseconds since the Unix epoch, UTC);
/// - the .NET SDK's `com.microsoft:timespan` (described `long` ticks) → [`Value::TimeSpan`];
/// - `uuid` → [`Value::Uuid`] (the 16 bytes in AMQP order);
/// - anything else (`binary`, lists, maps, other described types) → [`Value::Opaque`] with the
///   value's AMQP encoding: it exists and is not null, `=` and `<>` compare the bytes, an
///   action can copy it, and every other operator refuses it.
///
/// A missing property is not a value: the [`crate::Message`] view returns `None`, which
/// evaluates to *unknown*. Unknown and `NULL` behave the same in every operator (SQL's
/// three-valued logic); only `EXISTS` tells them apart.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL `NULL`, AMQP `null`, and *unknown*.
    Null,
    /// `TRUE` / `FALSE`.
    Bool(bool),
    /// Every integer type that fits `i64` (C# `long`).
    Long(i64),
    /// Floating point and decimal (C# `double`).
    Double(f64),
    /// Text.
    String(String),
    /// An instant: milliseconds since 1970-01-01T00:00:00Z (AMQP `timestamp`).
    DateTime(i64),
    /// A duration in 100-nanosecond ticks (.NET `TimeSpan`).
    TimeSpan(i64),
    /// A UUID, bytes in RFC 4122 order (AMQP `uuid`).
    Uuid([u8; 16]),
    /// Any other AMQP value, kept as its encoding.
    Opaque(Vec<u8>),
}

impl Value {
    /// The value as a system property's text (they are all strings on the wire): what a rule
    /// action writes for `SET sys.X = value`. `None` for null (it unsets the property).
    pub fn system_text(&self) -> Option<String> {
        match self {
            Value::Null | Value::Opaque(_) => None,
            Value::String(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Long(n) => Some(n.to_string()),
            Value::Double(x) => Some(x.to_string()),
            Value::DateTime(t) | Value::TimeSpan(t) => Some(t.to_string()),
            Value::Uuid(u) => Some(format_uuid(u)),
        }
    }

    /// A short name of the value's kind, used in error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Long(_) => "long",
            Value::Double(_) => "double",
            Value::String(_) => "string",
            Value::DateTime(_) => "datetime",
            Value::TimeSpan(_) => "timespan",
            Value::Uuid(_) => "uuid",
            Value::Opaque(_) => "opaque value",
        }
    }

    /// `true` for [`Value::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}
impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Long(n)
    }
}
impl From<i32> for Value {
    fn from(n: i32) -> Self {
        Value::Long(n.into())
    }
}
impl From<f64> for Value {
    fn from(x: f64) -> Self {
        Value::Double(x)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

/// Displays a value the way it reads in a log line or error: strings quoted, UUIDs hyphenated.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Bool(b) => f.write_str(if *b { "TRUE" } else { "FALSE" }),
            Value::Long(n) => write!(f, "{n}"),
            Value::Double(x) => write!(f, "{x:?}"),
            Value::String(s) => write!(f, "'{}'", s.replace('\'', "''")),
            Value::DateTime(ms) => write!(f, "datetime({ms} ms)"),
            Value::TimeSpan(t) => write!(f, "timespan({t} ticks)"),
            Value::Uuid(u) => f.write_str(&format_uuid(u)),
            Value::Opaque(b) => write!(f, "opaque({} bytes)", b.len()),
        }
    }
}

/// The lowercase hyphenated form of a UUID (`8-4-4-4-12` hex digits), as .NET's
/// `Guid.ToString()` prints it.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A three-valued truth: `Some(true)`, `Some(false)` or `None` for unknown.
pub(crate) type Truth = Option<bool>;

/// The value of a condition: `Bool` or `Null` (unknown).
pub(crate) fn truth_value(t: Truth) -> Value {
    t.map_or(Value::Null, Value::Bool)
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub(crate) fn sql(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// Arithmetic operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl ArithOp {
    pub(crate) fn sql(self) -> &'static str {
        match self {
            ArithOp::Add => "+",
            ArithOp::Sub => "-",
            ArithOp::Mul => "*",
            ArithOp::Div => "/",
            ArithOp::Rem => "%",
        }
    }
}

fn type_error(op: &'static str, a: &Value, b: &Value) -> EvalError {
    EvalError::Type {
        op,
        left: a.kind(),
        right: b.kind(),
    }
}

/// Equality as `=` sees it: `None` when either side is null, numbers compared after promotion
/// (`1 = 1.0`), strings ordinally and case-sensitively, kinds without a conversion between them
/// refused.
pub(crate) fn equal(a: &Value, b: &Value) -> Result<Truth, EvalError> {
    use Value::*;
    Ok(Some(match (a, b) {
        (Null, _) | (_, Null) => return Ok(None),
        (Bool(x), Bool(y)) => x == y,
        (Long(x), Long(y)) => x == y,
        (Long(x), Double(y)) => (*x as f64) == *y,
        (Double(x), Long(y)) => *x == (*y as f64),
        (Double(x), Double(y)) => x == y,
        (String(x), String(y)) => x == y,
        (DateTime(x), DateTime(y)) => x == y,
        (TimeSpan(x), TimeSpan(y)) => x == y,
        (Uuid(x), Uuid(y)) => x == y,
        (Opaque(x), Opaque(y)) => x == y,
        _ => return Err(type_error("=", a, b)),
    }))
}

/// Ordering as `<`, `<=`, `>`, `>=` see it: `Ok(None)` when either side is null; a NaN makes
/// every ordering false (as in C#), which `order` reports as `Some(None)`.
fn order(op: CmpOp, a: &Value, b: &Value) -> Result<Option<Option<Ordering>>, EvalError> {
    use Value::*;
    Ok(Some(match (a, b) {
        (Null, _) | (_, Null) => return Ok(None),
        (Long(x), Long(y)) => Some(x.cmp(y)),
        (Long(x), Double(y)) => (*x as f64).partial_cmp(y),
        (Double(x), Long(y)) => x.partial_cmp(&(*y as f64)),
        (Double(x), Double(y)) => x.partial_cmp(y),
        (String(x), String(y)) => Some(x.cmp(y)),
        (DateTime(x), DateTime(y)) => Some(x.cmp(y)),
        (TimeSpan(x), TimeSpan(y)) => Some(x.cmp(y)),
        _ => return Err(type_error(op.sql(), a, b)),
    }))
}

/// Evaluates `a op b` to a three-valued truth.
pub(crate) fn compare(op: CmpOp, a: &Value, b: &Value) -> Result<Truth, EvalError> {
    match op {
        CmpOp::Eq => equal(a, b),
        CmpOp::Ne => Ok(equal(a, b).map_err(|_| type_error("<>", a, b))?.map(|t| !t)),
        _ => Ok(order(op, a, b)?.map(|ord| {
            ord.is_some_and(|o| match op {
                CmpOp::Lt => o.is_lt(),
                CmpOp::Le => o.is_le(),
                CmpOp::Gt => o.is_gt(),
                CmpOp::Ge => o.is_ge(),
                CmpOp::Eq | CmpOp::Ne => unreachable!("handled above"),
            })
        })),
    }
}

/// Evaluates `a op b`. Null in, null out. `long op long` stays `long` (checked: overflow and
/// division by zero are errors, `/` truncates, `%` takes the dividend's sign); with a `double`
/// on either side both become `double` (IEEE: `1.0 / 0` is infinity). `+` also joins two
/// strings; dates and durations combine as in .NET (`datetime - datetime` is a `timespan`).
pub(crate) fn arith(op: ArithOp, a: &Value, b: &Value) -> Result<Value, EvalError> {
    use Value::*;
    let overflow = |r: Option<i64>| r.ok_or(EvalError::Overflow);
    Ok(match (op, a, b) {
        (_, Null, _) | (_, _, Null) => Null,
        (_, Long(x), Long(y)) => Long(match op {
            ArithOp::Add => overflow(x.checked_add(*y))?,
            ArithOp::Sub => overflow(x.checked_sub(*y))?,
            ArithOp::Mul => overflow(x.checked_mul(*y))?,
            ArithOp::Div | ArithOp::Rem if *y == 0 => return Err(EvalError::DivideByZero),
            ArithOp::Div => overflow(x.checked_div(*y))?,
            ArithOp::Rem => overflow(x.checked_rem(*y))?,
        }),
        (_, Long(_) | Double(_), Long(_) | Double(_)) => {
            let (x, y) = (as_f64(a), as_f64(b));
            Double(match op {
                ArithOp::Add => x + y,
                ArithOp::Sub => x - y,
                ArithOp::Mul => x * y,
                ArithOp::Div => x / y,
                ArithOp::Rem => x % y,
            })
        }
        (ArithOp::Add, String(x), String(y)) => String(format!("{x}{y}")),
        (ArithOp::Add, TimeSpan(x), TimeSpan(y)) => TimeSpan(overflow(x.checked_add(*y))?),
        (ArithOp::Sub, TimeSpan(x), TimeSpan(y)) => TimeSpan(overflow(x.checked_sub(*y))?),
        (ArithOp::Add, DateTime(t), TimeSpan(d)) | (ArithOp::Add, TimeSpan(d), DateTime(t)) => {
            DateTime(overflow(t.checked_add(d / TICKS_PER_MILLISECOND))?)
        }
        (ArithOp::Sub, DateTime(t), TimeSpan(d)) => {
            DateTime(overflow(t.checked_sub(d / TICKS_PER_MILLISECOND))?)
        }
        (ArithOp::Sub, DateTime(x), DateTime(y)) => TimeSpan(overflow(
            x.checked_sub(*y)
                .and_then(|ms| ms.checked_mul(TICKS_PER_MILLISECOND)),
        )?),
        _ => return Err(type_error(op.sql(), a, b)),
    })
}

fn as_f64(v: &Value) -> f64 {
    match v {
        Value::Long(n) => *n as f64,
        Value::Double(x) => *x,
        _ => unreachable!("only called on numbers"),
    }
}

/// Unary `-`: numbers and durations; null stays null.
pub(crate) fn negate(v: &Value) -> Result<Value, EvalError> {
    match v {
        Value::Null => Ok(Value::Null),
        Value::Long(n) => n.checked_neg().map(Value::Long).ok_or(EvalError::Overflow),
        Value::Double(x) => Ok(Value::Double(-x)),
        Value::TimeSpan(t) => t
            .checked_neg()
            .map(Value::TimeSpan)
            .ok_or(EvalError::Overflow),
        other => Err(EvalError::TypeUnary {
            what: "unary -",
            found: other.kind(),
        }),
    }
}

/// Unary `+`: the identity on numbers and durations; null stays null.
pub(crate) fn plus(v: &Value) -> Result<Value, EvalError> {
    match v {
        Value::Null | Value::Long(_) | Value::Double(_) | Value::TimeSpan(_) => Ok(v.clone()),
        other => Err(EvalError::TypeUnary {
            what: "unary +",
            found: other.kind(),
        }),
    }
}

/// Equality as a correlation filter sees it: never an error. Equal kinds compare as `=` does,
/// `long` and `double` after promotion, different kinds are unequal. A `Null` in the filter
/// matches a missing or null property.
pub(crate) fn correlation_equal(wanted: &Value, found: Option<&Value>) -> bool {
    match (wanted, found) {
        (Value::Null, None | Some(Value::Null)) => true,
        (_, None) => false,
        (w, Some(f)) => matches!(equal(w, f), Ok(Some(true))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promotion_and_integer_semantics() {
        use ArithOp::*;
        assert_eq!(arith(Add, &1.into(), &2.into()), Ok(Value::Long(3)));
        assert_eq!(arith(Add, &1.into(), &2.5.into()), Ok(Value::Double(3.5)));
        assert_eq!(arith(Div, &7.into(), &2.into()), Ok(Value::Long(3)));
        assert_eq!(arith(Div, &(-7).into(), &2.into()), Ok(Value::Long(-3)));
        assert_eq!(arith(Rem, &(-7).into(), &2.into()), Ok(Value::Long(-1)));
        assert_eq!(arith(Div, &7.into(), &2.0.into()), Ok(Value::Double(3.5)));
        assert_eq!(
            arith(Div, &1.into(), &0.into()),
            Err(EvalError::DivideByZero)
        );
        assert_eq!(
            arith(Rem, &1.into(), &0.into()),
            Err(EvalError::DivideByZero)
        );
        assert_eq!(
            arith(Div, &1.0.into(), &0.into()),
            Ok(Value::Double(f64::INFINITY))
        );
        assert_eq!(
            arith(Add, &i64::MAX.into(), &1.into()),
            Err(EvalError::Overflow)
        );
        assert_eq!(
            arith(Div, &i64::MIN.into(), &(-1).into()),
            Err(EvalError::Overflow)
        );
        assert_eq!(negate(&i64::MIN.into()), Err(EvalError::Overflow));
        assert_eq!(arith(Mul, &Value::Null, &2.into()), Ok(Value::Null));
        assert_eq!(arith(Add, &"a".into(), &"b".into()), Ok("ab".into()));
        assert!(matches!(
            arith(Add, &"a".into(), &1.into()),
            Err(EvalError::Type { op: "+", .. })
        ));
        assert!(matches!(
            arith(Mul, &true.into(), &1.into()),
            Err(EvalError::Type { .. })
        ));
    }

    #[test]
    fn dates_and_durations() {
        use ArithOp::*;
        let t = Value::DateTime(1_000);
        let d = Value::TimeSpan(5 * TICKS_PER_MILLISECOND);
        assert_eq!(arith(Add, &t, &d), Ok(Value::DateTime(1_005)));
        assert_eq!(arith(Add, &d, &t), Ok(Value::DateTime(1_005)));
        assert_eq!(arith(Sub, &t, &d), Ok(Value::DateTime(995)));
        assert_eq!(
            arith(Sub, &Value::DateTime(3_000), &t),
            Ok(Value::TimeSpan(2_000 * TICKS_PER_MILLISECOND))
        );
        assert_eq!(
            arith(Add, &d, &d),
            Ok(Value::TimeSpan(10 * TICKS_PER_MILLISECOND))
        );
        assert!(arith(Add, &t, &t).is_err());
        assert_eq!(
            compare(CmpOp::Lt, &t, &Value::DateTime(2_000)),
            Ok(Some(true))
        );
        assert_eq!(negate(&d), Ok(Value::TimeSpan(-5 * TICKS_PER_MILLISECOND)));
    }

    #[test]
    fn comparisons() {
        use CmpOp::*;
        assert_eq!(compare(Eq, &1.into(), &1.0.into()), Ok(Some(true)));
        assert_eq!(compare(Gt, &2.into(), &1.5.into()), Ok(Some(true)));
        assert_eq!(compare(Eq, &"a".into(), &"A".into()), Ok(Some(false)));
        assert_eq!(compare(Lt, &"a".into(), &"b".into()), Ok(Some(true)));
        assert_eq!(compare(Eq, &Value::Null, &1.into()), Ok(None));
        assert_eq!(compare(Ne, &Value::Null, &Value::Null), Ok(None));
        let nan = Value::Double(f64::NAN);
        assert_eq!(compare(Eq, &nan, &nan), Ok(Some(false)));
        assert_eq!(compare(Ne, &nan, &nan), Ok(Some(true)));
        assert_eq!(compare(Lt, &nan, &1.into()), Ok(Some(false)));
        assert_eq!(compare(Ge, &nan, &1.into()), Ok(Some(false)));
        assert!(matches!(
            compare(Eq, &"1".into(), &1.into()),
            Err(EvalError::Type { op: "=", .. })
        ));
        assert!(matches!(
            compare(Ne, &"1".into(), &1.into()),
            Err(EvalError::Type { op: "<>", .. })
        ));
        assert!(compare(Lt, &true.into(), &false.into()).is_err());
        assert_eq!(compare(Eq, &true.into(), &true.into()), Ok(Some(true)));
    }

    #[test]
    fn correlation_equality_never_fails() {
        assert!(correlation_equal(&"x".into(), Some(&"x".into())));
        assert!(!correlation_equal(&"x".into(), Some(&"X".into())));
        assert!(!correlation_equal(&"1".into(), Some(&1.into())));
        assert!(correlation_equal(&1.into(), Some(&1.0.into())));
        assert!(!correlation_equal(&1.into(), None));
        assert!(correlation_equal(&Value::Null, None));
        assert!(correlation_equal(&Value::Null, Some(&Value::Null)));
        assert!(!correlation_equal(&Value::Null, Some(&"x".into())));
    }

    #[test]
    fn uuid_text() {
        let u = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ];
        assert_eq!(format_uuid(&u), "12345678-9abc-def0-0123-456789abcdef");
    }
}
