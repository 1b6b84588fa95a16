//! Every grammar feature, with the position of every kind of parse error.

use super::{err_kind, eval, eval_on, parse_err, sample};
use crate::{
    EvalError, Limits, Parameters, ParseError, ParseErrorKind as K, PropertyBag, SqlFilter,
    SystemProperty, Value,
};

#[test]
fn comparisons() {
    assert_eq!(eval("quantity = 10"), Some(true));
    assert_eq!(eval("quantity <> 10"), Some(false));
    assert_eq!(eval("quantity != 10"), Some(false));
    assert_eq!(eval("quantity > 9"), Some(true));
    assert_eq!(eval("quantity >= 10"), Some(true));
    assert_eq!(eval("quantity < 10"), Some(false));
    assert_eq!(eval("quantity <= 10"), Some(true));
    assert_eq!(eval("price > 2"), Some(true));
    assert_eq!(eval("quantity = 10.0"), Some(true));
    assert_eq!(eval("color = 'red'"), Some(true));
    assert_eq!(eval("color = 'RED'"), Some(false));
    assert_eq!(eval("color < 's'"), Some(true));
    assert_eq!(eval("flag = TRUE"), Some(true));
    assert_eq!(eval("sys.SequenceNumber = 42"), Some(true));
}

#[test]
fn arithmetic_and_precedence() {
    assert_eq!(eval("1 + 2 * 3 = 7"), Some(true));
    assert_eq!(eval("(1 + 2) * 3 = 9"), Some(true));
    assert_eq!(eval("10 - 4 - 3 = 3"), Some(true));
    assert_eq!(eval("100 / 10 / 5 = 2"), Some(true));
    assert_eq!(eval("7 % 3 = 1"), Some(true));
    assert_eq!(eval("7 / 2 = 3"), Some(true));
    assert_eq!(eval("7 / 2.0 = 3.5"), Some(true));
    assert_eq!(eval("quantity / 4 = 2"), Some(true));
    assert_eq!(eval("price * 2 = 5"), Some(true));
    assert_eq!(eval("-quantity = -10"), Some(true));
    assert_eq!(eval("+quantity = 10"), Some(true));
    assert_eq!(eval("- -quantity = 10"), Some(true));
    assert_eq!(eval("2 - -3 = 5"), Some(true));
    assert_eq!(eval("-9223372036854775808 < 0"), Some(true));
    assert_eq!(eval("'ab' + 'cd' = 'abcd'"), Some(true));
    assert_eq!(eval("quantity * 2 + 1 > quantity + 10"), Some(true));
}

#[test]
fn constants() {
    assert_eq!(eval("1894 = 1894"), Some(true));
    assert_eq!(eval("1894.1204 > 1894"), Some(true));
    assert_eq!(eval("2.0 = 2"), Some(true));
    assert_eq!(eval("101.5E5 = 10150000"), Some(true));
    assert_eq!(eval("0.5E-2 = 0.005"), Some(true));
    assert_eq!(eval("TRUE"), Some(true));
    assert_eq!(eval("FALSE"), Some(false));
    assert_eq!(eval("true = TrUe"), Some(true));
    assert_eq!(eval("NULL"), None);
    assert_eq!(eval("'it''s' = 'it' + '''s'"), Some(true));
    assert_eq!(eval("'' = ''"), Some(true));
    assert_eq!(eval("'héllo ☃' LIKE 'h_llo _'"), Some(true));
}

#[test]
fn properties_and_scopes() {
    assert_eq!(eval("user.color = 'red'"), Some(true));
    assert_eq!(eval("USER.COLOR = 'red'"), Some(true));
    assert_eq!(eval("Color = 'red'"), Some(true));
    assert_eq!(eval("[color] = 'red'"), Some(true));
    assert_eq!(eval("\"color\" = 'red'"), Some(true));
    assert_eq!(eval("[Property With Space] = 'x'"), Some(true));
    assert_eq!(eval("[HR-EmployeeID] = 7"), Some(true));
    assert_eq!(eval("user.[HR-EmployeeID] = 7"), Some(true));
    assert_eq!(eval("[sys].[Label] = 'service bus'"), Some(true));
    assert_eq!(eval("sys.label = 'service bus'"), Some(true));
    assert_eq!(eval("SYS.Subject = 'service bus'"), Some(true));
    assert_eq!(eval("sys.MessageId = '123456'"), Some(true));
    let msg = PropertyBag::new().with_user("a]b", 1).with_user("q\"x", 2);
    assert_eq!(eval_on("[a]]b] = 1", &msg), Ok(Some(true)));
    assert_eq!(eval_on("\"q\"\"x\" = 2", &msg), Ok(Some(true)));
    // A user property called `sys` or `user`, and keywords as delimited names.
    let msg = PropertyBag::new()
        .with_user("sys", 1)
        .with_user("in", 2)
        .with_user("AND", 3);
    assert_eq!(
        eval_on("sys = 1 AND [in] = 2 AND user.[and] = 3", &msg),
        Ok(Some(true))
    );
}

#[test]
fn functions() {
    assert_eq!(eval("property('color') = 'red'"), Some(true));
    assert_eq!(eval("p('COLOR') = 'red'"), Some(true));
    assert_eq!(eval("P('user.color') = 'red'"), Some(true));
    assert_eq!(eval("p('sys.Label') = 'service bus'"), Some(true));
    assert_eq!(eval("p('co' + 'lor') = 'red'"), Some(true));
    assert_eq!(eval("p('missing') = 'red'"), None);
    assert_eq!(eval("p(NULL) IS NULL"), Some(true));
    assert_eq!(eval("newid() = newid()"), Some(false));
    assert_eq!(eval("newid() IS NOT NULL"), Some(true));
    // A property whose value names another property.
    let msg = PropertyBag::new()
        .with_user("which", "target")
        .with_user("target", 5);
    assert_eq!(eval_on("p(which) = 5", &msg), Ok(Some(true)));
    let msg = PropertyBag::new().with_user("which", "sys.Nope");
    assert_eq!(
        eval_on("p(which) = 5", &msg),
        Err(EvalError::UnknownSystemProperty("Nope".into()))
    );
    assert!(matches!(
        eval_on("p(1) = 5", &msg),
        Err(EvalError::TypeUnary {
            what: "property()",
            ..
        })
    ));
}

#[test]
fn is_null_exists_in_like() {
    assert_eq!(eval("missing IS NULL"), Some(true));
    assert_eq!(eval("nothing IS NULL"), Some(true));
    assert_eq!(eval("color IS NULL"), Some(false));
    assert_eq!(eval("color IS NOT NULL"), Some(true));
    assert_eq!(eval("sys.ReplyTo IS NULL"), Some(true));
    assert_eq!(eval("EXISTS(color)"), Some(true));
    assert_eq!(eval("EXISTS (nothing)"), Some(true));
    assert_eq!(eval("EXISTS(missing)"), Some(false));
    assert_eq!(eval("NOT EXISTS(missing)"), Some(true));
    assert_eq!(eval("EXISTS(sys.Label)"), Some(true));
    assert_eq!(eval("EXISTS(sys.ReplyTo)"), Some(false));
    assert_eq!(eval("color IN ('blue', 'red')"), Some(true));
    assert_eq!(eval("color NOT IN ('blue', 'red')"), Some(false));
    assert_eq!(eval("quantity IN (1, 2.0, 10)"), Some(true));
    assert_eq!(eval("quantity IN (5 + 5)"), Some(true));
    assert_eq!(eval("color IN ('blue')"), Some(false));
    assert_eq!(eval("sys.Label LIKE '%bus%'"), Some(true));
    assert_eq!(eval("sys.Label LIKE 'service%'"), Some(true));
    assert_eq!(eval("sys.Label LIKE 'Service%'"), Some(false));
    assert_eq!(eval("sys.Label NOT LIKE '%bus'"), Some(false));
    assert_eq!(eval("sys.Label LIKE 's_rvice bus'"), Some(true));
    assert_eq!(eval("sys.Label LIKE color"), Some(false));
    assert_eq!(eval("sys.Label LIKE 'service' + '%'"), Some(true));
    let msg = PropertyBag::new()
        .with_user("code", "ABC%")
        .with_user("esc", "\\");
    assert_eq!(
        eval_on("code LIKE 'ABC\\%' ESCAPE '\\'", &msg),
        Ok(Some(true))
    );
    assert_eq!(
        eval_on("'ABCD' LIKE 'ABC\\%' ESCAPE '\\'", &msg),
        Ok(Some(false))
    );
    assert_eq!(
        eval_on("code LIKE 'ABC!%' ESCAPE esc", &msg),
        Ok(Some(false))
    );
    assert_eq!(
        eval_on("code LIKE 'ABC\\%' ESCAPE esc", &msg),
        Ok(Some(true))
    );
    assert_eq!(
        eval_on("code LIKE 'ABC\\' ESCAPE esc", &msg),
        Err(EvalError::BadPattern(
            "the pattern ends with the escape character"
        ))
    );
    assert!(matches!(
        eval_on("quantity LIKE '1%'", &sample()),
        Err(EvalError::TypeUnary { what: "LIKE", .. })
    ));
}

#[test]
fn parameters() {
    let params = Parameters::new()
        .with("@stringParam", "orders")
        .with("n", 10)
        .with("@dt", Value::DateTime(1_000))
        .with(
            "@span",
            Value::TimeSpan(5_000 * crate::TICKS_PER_MILLISECOND),
        );
    let parse = |t| SqlFilter::parse(t, &params).unwrap();
    let msg = PropertyBag::new()
        .with_user("source", "orders")
        .with_user("quantity", 10)
        .with_user("DateTimeMp", Value::DateTime(500))
        .with_user("DateTimeMp2", Value::DateTime(4_000));
    assert_eq!(parse("source = @stringParam").matches(&msg), Ok(true));
    assert_eq!(parse("source = @STRINGPARAM").matches(&msg), Ok(true));
    assert_eq!(parse("quantity = @n").matches(&msg), Ok(true));
    assert_eq!(parse("DateTimeMp < @dt").matches(&msg), Ok(true));
    assert_eq!(parse("DateTimeMp > @dt").matches(&msg), Ok(false));
    assert_eq!(
        parse("(DateTimeMp2 - DateTimeMp) <= @span").matches(&msg),
        Ok(true)
    );
    assert_eq!(
        parse("DateTimeMp2-DateTimeMp <= @span").matches(&msg),
        Ok(true)
    );
    let e = SqlFilter::parse("a = @missing", &params).unwrap_err();
    assert_eq!(e, ParseError::new(4, K::UnknownParameter("missing".into())));
}

#[test]
fn keywords_are_case_insensitive() {
    assert_eq!(
        eval("color = 'red' and NOT (quantity iS nUlL) oR FaLsE"),
        Some(true)
    );
    assert_eq!(eval("color not in ('x') AND exists(color)"), Some(true));
    assert_eq!(eval("sys.label like '%BUS' escape '!'"), Some(false));
}

#[test]
fn parse_errors_carry_positions() {
    let cases: &[(&str, usize, K)] = &[
        ("", 0, expected("a value", "end of text")),
        ("a =", 3, expected("a value", "end of text")),
        (
            "a = 1 b",
            6,
            expected("an operator or the end of the expression", "name \"b\""),
        ),
        ("(a = 1", 6, expected("')'", "end of text")),
        (
            "a = 1)",
            5,
            expected("an operator or the end of the expression", "')'"),
        ),
        ("a IS 1", 5, expected("NULL", "1")),
        ("a IN 1", 5, expected("'('", "1")),
        ("a IN (1 2)", 8, expected("',' or ')'", "2")),
        ("a IN ()", 6, expected("a value", "')'")),
        ("EXISTS a", 7, expected("'('", "name \"a\"")),
        ("EXISTS(1)", 7, expected("a property name", "1")),
        ("a = 'x", 4, K::UnterminatedString),
        ("[abc = 1", 0, K::UnterminatedIdentifier),
        ("a = #", 4, K::UnexpectedChar('#')),
        ("a = 12x", 4, K::BadNumber),
        ("a = 9223372036854775808", 4, K::NumberOutOfRange),
        ("a = 1e400", 4, K::NumberOutOfRange),
        ("foo.bar = 1", 0, K::UnknownScope("foo".into())),
        ("sys.Nope = 1", 4, K::UnknownSystemProperty("Nope".into())),
        (
            "sys.LockToken = 1",
            4,
            K::UnknownSystemProperty("LockToken".into()),
        ),
        (
            "p('sys.Nope') = 1",
            2,
            K::UnknownSystemProperty("Nope".into()),
        ),
        ("nope(1) = 1", 0, K::UnknownFunction("nope".into())),
        ("1 + 2", 0, K::ExpectedCondition),
        ("'a'", 0, K::ExpectedCondition),
        ("a = 1 AND 2", 10, K::ExpectedCondition),
        ("NOT 5", 4, K::ExpectedCondition),
        ("(a = 1) + 1 = 2", 0, K::ExpectedValue),
        ("a = (b = 1)", 4, K::ExpectedValue),
        (
            "a LIKE 5",
            7,
            K::BadPattern("pattern and escape must be strings"),
        ),
        (
            "a LIKE 'x!' ESCAPE '!'",
            7,
            K::BadPattern("the pattern ends with the escape character"),
        ),
        (
            "a LIKE 'x' ESCAPE '!!'",
            18,
            K::BadPattern("the escape must be exactly one character"),
        ),
        ("and = 1", 0, expected("a value", "AND")),
        (
            "a = 1 = 2",
            6,
            expected("an operator or the end of the expression", "'='"),
        ),
        ("a = 5.", 4, K::BadNumber),
        ("a = .5", 4, expected("a value", "'.'")),
        ("user.in = 1", 5, expected("a property name", "IN")),
        ("a.b = 1", 0, K::UnknownScope("a".into())),
    ];
    for (text, position, kind) in cases {
        let e = parse_err(text);
        assert_eq!((e.position, &e.kind), (*position, kind), "{text:?}: {e}");
    }
    assert_eq!(
        parse_err("a = 1 b").to_string(),
        "expected an operator or the end of the expression, found name \"b\" (at position 6)"
    );
}

fn expected(expected: &'static str, found: &str) -> K {
    K::Expected {
        expected,
        found: found.to_owned(),
    }
}

#[test]
fn positions_count_characters_not_bytes() {
    assert_eq!(parse_err("'é☃' = #").position, 7);
}

#[test]
fn limits() {
    let limits = Limits::default();
    assert_eq!(
        (
            limits.max_expression_chars,
            limits.max_depth,
            limits.max_action_statements
        ),
        (1024, 64, 32)
    );
    let long = format!("a = '{}'", "x".repeat(1018));
    assert_eq!(long.chars().count(), 1024);
    assert!(SqlFilter::parse(&long, &Parameters::new()).is_ok());
    let too_long = format!("a = '{}'", "é".repeat(1019));
    assert_eq!(
        parse_err(&too_long),
        ParseError::new(1024, K::TooLong { limit: 1024 })
    );
    let deep = |n| format!("{}a = 1{}", "(".repeat(n), ")".repeat(n));
    assert!(SqlFilter::parse(&deep(60), &Parameters::new()).is_ok());
    assert_eq!(err_kind(&deep(65)), K::TooDeep { limit: 64 });
    assert_eq!(
        err_kind(&format!("{}TRUE", "NOT ".repeat(65))),
        K::TooDeep { limit: 64 }
    );
    assert_eq!(
        err_kind(&format!("{}1 = 1", "-".repeat(70))),
        K::TooDeep { limit: 64 }
    );
    assert_eq!(
        err_kind(&format!("a = {}", "1 + ".repeat(70) + "1")),
        K::TooDeep { limit: 64 }
    );
    assert_eq!(
        err_kind(&format!("{}1 = 1", "p(".repeat(70))),
        K::TooDeep { limit: 64 }
    );
    // A long AND chain is one level, not one per operand.
    let chain = vec!["a = 1"; 100].join(" AND ");
    assert!(SqlFilter::parse(&chain, &Parameters::new()).is_ok());
    // Huge inputs under raised limits are still refused by depth, not by the stack.
    let big = Limits {
        max_expression_chars: 10_000_000,
        ..Limits::default()
    };
    let nested = format!("{}1{} = 1", "(".repeat(1_000_000), ")".repeat(1_000_000));
    let e = SqlFilter::parse_with_limits(&nested, &Parameters::new(), &big).unwrap_err();
    assert_eq!(e, ParseError::new(64, K::TooDeep { limit: 64 }));
}

#[test]
fn system_property_values() {
    let msg = PropertyBag::new()
        .with_system(SystemProperty::EnqueuedTimeUtc, Value::DateTime(10_000))
        .with_system(SystemProperty::TimeToLive, Value::TimeSpan(600_000_000))
        .with_system(SystemProperty::Size, 300);
    assert_eq!(eval_on("sys.Size > 256", &msg), Ok(Some(true)));
    assert_eq!(
        eval_on(
            "sys.TimeToLive = sys.TimeToLive + sys.TimeToLive - sys.TimeToLive",
            &msg
        ),
        Ok(Some(true))
    );
    assert_eq!(
        eval_on(
            "sys.EnqueuedTimeUtc + sys.TimeToLive > sys.EnqueuedTimeUtc",
            &msg
        ),
        Ok(Some(true))
    );
    assert_eq!(eval_on("sys.ExpiresAt IS NULL", &msg), Ok(Some(true)));
}
