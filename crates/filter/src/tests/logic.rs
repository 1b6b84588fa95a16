//! Three-valued logic: the AND / OR / NOT tables of the Service Bus documentation, and how
//! unknown flows through every operator.

use super::{eval, eval_on, sample};
use crate::{EvalError, Parameters, PropertyBag, SqlFilter, Value};

/// `T`, `F` and `U` (a missing property) as condition operands.
fn operand(t: Option<bool>) -> &'static str {
    match t {
        Some(true) => "bt",
        Some(false) => "bf",
        None => "missing",
    }
}

fn truths() -> PropertyBag {
    PropertyBag::new()
        .with_user("bt", true)
        .with_user("bf", false)
}

const ALL: [Option<bool>; 3] = [Some(true), Some(false), None];

#[test]
fn and_table() {
    for a in ALL {
        for b in ALL {
            let expected = match (a, b) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            };
            let text = format!("{} AND {}", operand(a), operand(b));
            assert_eq!(eval_on(&text, &truths()), Ok(expected), "{text}");
        }
    }
}

#[test]
fn or_table() {
    for a in ALL {
        for b in ALL {
            let expected = match (a, b) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            };
            let text = format!("{} OR {}", operand(a), operand(b));
            assert_eq!(eval_on(&text, &truths()), Ok(expected), "{text}");
        }
    }
}

#[test]
fn not_table() {
    for a in ALL {
        let text = format!("NOT {}", operand(a));
        assert_eq!(eval_on(&text, &truths()), Ok(a.map(|b| !b)), "{text}");
    }
}

#[test]
fn unknown_does_not_match() {
    let f = |t| SqlFilter::parse(t, &Parameters::new()).unwrap();
    let msg = sample();
    assert_eq!(f("missing = 1").matches(&msg), Ok(false));
    assert_eq!(f("NOT (missing = 1)").matches(&msg), Ok(false));
    assert_eq!(f("missing <> 1").matches(&msg), Ok(false));
    assert_eq!(f("missing = 1 OR color = 'red'").matches(&msg), Ok(true));
}

#[test]
fn unknown_propagates() {
    // Arithmetic and comparisons.
    assert_eq!(eval("missing + 1 = 1"), None);
    assert_eq!(eval("-missing = 1"), None);
    assert_eq!(eval("missing * 0 = 0"), None);
    assert_eq!(eval("1 = missing"), None);
    assert_eq!(eval("missing = missing"), None);
    assert_eq!(eval("nothing = NULL"), None);
    assert_eq!(eval("NULL = NULL"), None);
    assert_eq!(eval("NULL <> 1"), None);
    // LIKE: any unknown operand.
    assert_eq!(eval("missing LIKE '%'"), None);
    assert_eq!(eval("missing NOT LIKE '%'"), None);
    assert_eq!(eval("color LIKE missing"), None);
    assert_eq!(eval("color LIKE 'r%' ESCAPE missing"), None);
    // IN: unknown on the left; a null in the list when nothing else matched.
    assert_eq!(eval("missing IN ('a', 'b')"), None);
    assert_eq!(eval("missing NOT IN ('a', 'b')"), None);
    assert_eq!(eval("color IN ('red', missing)"), Some(true));
    assert_eq!(eval("color IN ('blue', missing)"), None);
    assert_eq!(eval("color NOT IN ('blue', missing)"), None);
    assert_eq!(eval("color NOT IN ('red', missing)"), Some(false));
    // IS NULL and EXISTS always decide.
    assert_eq!(eval("(missing + 1) IS NULL"), Some(true));
    assert_eq!(eval("EXISTS(missing) OR missing IS NULL"), Some(true));
    // p() of a missing name is unknown.
    assert_eq!(eval("p('missing') = 1"), None);
    // A missing system property reads as null, never as an error.
    assert_eq!(eval("sys.CorrelationId = 'x'"), None);
    assert_eq!(eval("sys.CorrelationId IS NULL"), Some(true));
}

#[test]
fn and_or_short_circuit_errors() {
    assert_eq!(eval("FALSE AND 1 / 0 = 1"), Some(false));
    assert_eq!(eval("TRUE OR 1 / 0 = 1"), Some(true));
    assert_eq!(
        eval_on("TRUE AND 1 / 0 = 1", &sample()),
        Err(EvalError::DivideByZero)
    );
    assert_eq!(
        eval_on("missing AND 1 / 0 = 1", &sample()),
        Err(EvalError::DivideByZero)
    );
}

#[test]
fn evaluation_errors() {
    let msg = sample();
    assert_eq!(
        eval_on("quantity / 0 = 1", &msg),
        Err(EvalError::DivideByZero)
    );
    assert_eq!(
        eval_on("quantity % 0 = 1", &msg),
        Err(EvalError::DivideByZero)
    );
    assert_eq!(eval_on("price / 0 > 1000", &msg), Ok(Some(true)));
    assert_eq!(
        eval_on("9223372036854775807 + quantity > 0", &msg),
        Err(EvalError::Overflow)
    );
    assert_eq!(
        eval_on("color = 1", &msg),
        Err(EvalError::Type {
            op: "=",
            left: "string",
            right: "long"
        })
    );
    assert_eq!(
        eval_on("color > 1", &msg),
        Err(EvalError::Type {
            op: ">",
            left: "string",
            right: "long"
        })
    );
    assert!(matches!(
        eval_on("color IN (1, 2)", &msg),
        Err(EvalError::Type { .. })
    ));
    assert!(matches!(
        eval_on("flag + 1 = 2", &msg),
        Err(EvalError::Type { .. })
    ));
    assert_eq!(
        eval_on("color", &msg),
        Err(EvalError::TypeUnary {
            what: "a filter",
            found: "string"
        })
    );
    assert_eq!(
        eval_on("color AND TRUE", &msg),
        Err(EvalError::TypeUnary {
            what: "AND",
            found: "string"
        })
    );
    assert!(matches!(
        eval_on("NOT quantity", &msg),
        Err(EvalError::TypeUnary { what: "NOT", .. })
    ));
    assert!(matches!(
        eval_on("-color = 1", &msg),
        Err(EvalError::TypeUnary {
            what: "unary -",
            ..
        })
    ));
    // A boolean property is a condition by itself.
    assert_eq!(eval_on("flag", &msg), Ok(Some(true)));
    assert_eq!(eval_on("nothing", &msg), Ok(None));
    // Opaque values exist, compare by bytes, refuse everything else.
    let msg = PropertyBag::new()
        .with_user("bin", Value::Opaque(vec![0xa0, 1, 7]))
        .with_user("bin2", Value::Opaque(vec![0xa0, 1, 7]));
    assert_eq!(
        eval_on("EXISTS(bin) AND bin IS NOT NULL", &msg),
        Ok(Some(true))
    );
    assert_eq!(eval_on("bin = bin2", &msg), Ok(Some(true)));
    assert!(eval_on("bin > bin2", &msg).is_err());
    assert!(eval_on("bin = 'x'", &msg).is_err());
}
