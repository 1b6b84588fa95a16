//! Property tests: no input makes parsing or evaluation panic; valid trees print and parse
//! back to themselves; deep nesting is refused.

use std::sync::Arc;

use proptest::prelude::*;

use super::sample;
use crate::ast::{Expr, PropRef};
use crate::like::LikePattern;
use crate::value::{ArithOp, CmpOp};
use crate::{Limits, Parameters, ParseErrorKind, SqlAction, SqlFilter, SystemProperty, Value};

fn params() -> Parameters {
    Parameters::new()
        .with("p1", 7)
        .with("p2", "str")
        .with("p3", 1.5)
        .with("p4", true)
        .with("p5", Value::Null)
}

/// Fragments that make up filter-looking text.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("(".to_owned()),
        Just(")".to_owned()),
        Just(",".to_owned()),
        Just(";".to_owned()),
        prop::sample::select(vec![
            "AND",
            "OR",
            "NOT",
            "IS",
            "NULL",
            "IN",
            "LIKE",
            "ESCAPE",
            "EXISTS",
            "TRUE",
            "FALSE",
            "SET",
            "REMOVE",
            "sys.",
            "user.",
            "sys.Label",
            "sys.To",
            "sys.SequenceNumber",
            "newid()",
            "p(",
            "property(",
            "=",
            "<>",
            "!=",
            "<",
            "<=",
            ">",
            ">=",
            "+",
            "-",
            "*",
            "/",
            "%",
            "@p1",
            "@p2",
            "@p4",
            "@nope",
            "color",
            "quantity",
            "price",
            "flag",
            "missing",
            "nothing",
            "[a]]b]",
            "\"q\"",
            "'%e%'",
            "'_'",
            "''",
            "0",
            "1",
            "-1",
            "9223372036854775807",
            "2.5",
            "1e3",
            "'",
            "[",
            "\"",
        ])
        .prop_map(str::to_owned),
        "[a-z0-9 .'%_!]{0,4}",
    ]
}

fn filterish() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(fragment(), 0..24).prop_map(|v| v.join(" ")),
        prop::collection::vec(fragment(), 0..24).prop_map(|v| v.concat()),
        ".{0,40}",
    ]
}

fn user_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "color", "quantity", "price", "flag", "missing", "nothing"
        ])
        .prop_map(str::to_owned),
        "[a-zA-Z \\]\\[\"'.é]{0,6}",
    ]
}

fn prop_ref() -> impl Strategy<Value = PropRef> {
    prop_oneof![
        user_name().prop_map(PropRef::User),
        prop::sample::select(SystemProperty::ALL.to_vec()).prop_map(PropRef::System),
    ]
}

fn constant() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::Long),
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(Value::Double),
        "[a-z' %_]{0,6}".prop_map(Value::String),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
    ]
}

fn value_leaf() -> impl Strategy<Value = Expr> {
    prop_oneof![
        4 => constant().prop_map(Expr::Const),
        4 => prop_ref().prop_map(Expr::Prop),
        1 => Just(Expr::NewId),
        1 => prop::sample::select(vec!["p1", "p2", "p3", "p4", "p5"]).prop_map(|n| Expr::Param {
            name: n.to_owned(),
            value: params().get(n).cloned().expect("defined"),
        }),
    ]
}

fn arith_op() -> impl Strategy<Value = ArithOp> {
    prop::sample::select(vec![
        ArithOp::Add,
        ArithOp::Sub,
        ArithOp::Mul,
        ArithOp::Div,
        ArithOp::Rem,
    ])
}

fn cmp_op() -> impl Strategy<Value = CmpOp> {
    prop::sample::select(vec![
        CmpOp::Eq,
        CmpOp::Ne,
        CmpOp::Lt,
        CmpOp::Le,
        CmpOp::Gt,
        CmpOp::Ge,
    ])
}

fn value_expr() -> impl Strategy<Value = Expr> {
    value_leaf().prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Neg(Box::new(e))),
            inner.clone().prop_map(|e| Expr::Plus(Box::new(e))),
            (arith_op(), inner.clone(), inner.clone()).prop_map(|(op, a, b)| Expr::Arith(
                op,
                Box::new(a),
                Box::new(b)
            )),
            "[a-z]{0,5}".prop_map(|s| Expr::PropertyFn(Box::new(Expr::Const(Value::String(s))))),
            inner.prop_map(|e| Expr::PropertyFn(Box::new(e))),
        ]
    })
}

fn like(expr: Expr, pattern: String, escape: Option<char>, negated: bool) -> Option<Expr> {
    let compiled = LikePattern::compile(&pattern, escape).ok()?;
    Some(Expr::Like {
        expr: Box::new(expr),
        pattern: Box::new(Expr::Const(Value::String(pattern))),
        escape: escape.map(|c| Box::new(Expr::Const(Value::String(c.to_string())))),
        compiled: Some(Arc::new(compiled)),
        negated,
    })
}

fn condition_leaf() -> impl Strategy<Value = Expr> {
    prop_oneof![
        (cmp_op(), value_expr(), value_expr()).prop_map(|(op, a, b)| Expr::Compare(
            op,
            Box::new(a),
            Box::new(b)
        )),
        (value_expr(), any::<bool>()).prop_map(|(e, negated)| Expr::IsNull {
            expr: Box::new(e),
            negated
        }),
        (
            value_expr(),
            prop::collection::vec(value_expr(), 1..4),
            any::<bool>()
        )
            .prop_map(|(e, list, negated)| Expr::In {
                expr: Box::new(e),
                list,
                negated
            }),
        (
            value_expr(),
            "[ab%_!']{0,6}",
            prop::option::of(Just('!')),
            any::<bool>()
        )
            .prop_filter_map("pattern compiles", |(e, p, esc, n)| like(e, p, esc, n)),
        (value_expr(), value_expr(), any::<bool>())
            .prop_map(|(e, p, negated)| Expr::Like {
                expr: Box::new(e),
                pattern: Box::new(p),
                escape: None,
                compiled: None,
                negated,
            })
            .prop_filter("constant patterns are compiled", |e| match e {
                Expr::Like { pattern, .. } =>
                    !matches!(**pattern, Expr::Const(_) | Expr::Param { .. }),
                _ => true,
            }),
        prop_ref().prop_map(Expr::Exists),
        prop_ref().prop_map(Expr::Prop),
        any::<bool>().prop_map(|b| Expr::Const(Value::Bool(b))),
    ]
}

fn condition() -> impl Strategy<Value = Expr> {
    condition_leaf().prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
            prop::collection::vec(inner, 2..4).prop_map(Expr::Or),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in filterish()) {
        let msg = sample();
        if let Ok(f) = SqlFilter::parse(&text, &params()) {
            let _ = f.matches(&msg);
            // What parses prints canonically and parses back.
            let again = SqlFilter::parse(&f.canonical(), &params());
            prop_assert!(again.is_ok(), "{} -> {}: {:?}", text, f.canonical(), again);
        }
        if let Ok(a) = SqlAction::parse(&text, &params()) {
            let _ = a.apply(&msg);
        }
    }

    #[test]
    fn actions_never_panic(
        body in prop::collection::vec(fragment(), 0..16).prop_map(|v| v.join(" ")),
        verb in prop::sample::select(vec!["SET ", "REMOVE ", "SET a = ", "SET sys.To = "]),
    ) {
        let text = format!("{verb}{body}");
        if let Ok(a) = SqlAction::parse(&text, &params()) {
            let _ = a.apply(&sample());
        }
    }

    #[test]
    fn valid_trees_round_trip(tree in condition()) {
        let text = tree.to_string();
        let parsed = SqlFilter::parse_with_limits(
            &text,
            &params(),
            &Limits { max_expression_chars: usize::MAX, ..Limits::default() },
        );
        let parsed = match parsed {
            Ok(p) => p,
            Err(e) => return Err(TestCaseError::fail(format!("{text}: {e}"))),
        };
        prop_assert_eq!(parsed.expr(), &tree, "{}", text);
        prop_assert_eq!(parsed.canonical(), text);
        let _ = parsed.matches(&sample());
    }

    #[test]
    fn deep_nesting_is_refused(
        prefix in prop::collection::vec(
            prop::sample::select(vec!["(", "NOT ", "p(", "- (", "+ (", "NOT (", "property(", "-(-("]),
            65..3000,
        ),
    ) {
        let text = format!("{}1 = 1", prefix.concat());
        let limits = Limits { max_expression_chars: usize::MAX, ..Limits::default() };
        match SqlFilter::parse_with_limits(&text, &params(), &limits) {
            Err(e) => prop_assert!(
                matches!(e.kind, ParseErrorKind::TooDeep { limit: 64 }),
                "{}", e
            ),
            Ok(f) => prop_assert!(false, "accepted {}", f.canonical()),
        }
    }
}
