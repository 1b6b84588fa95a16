//! Rule actions: statement syntax, what may be set, conversions, and sequential semantics.

use crate::{
    Change, EvalError, Limits, Parameters, ParseError, ParseErrorKind as K, PropertyBag, SqlAction,
    SystemProperty as S, Target, Value,
};

fn action(text: &str) -> SqlAction {
    SqlAction::parse(text, &Parameters::new()).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

fn err(text: &str) -> ParseError {
    SqlAction::parse(text, &Parameters::new()).unwrap_err()
}

fn user(name: &str) -> Target {
    Target::User(name.into())
}

#[test]
fn separators() {
    let expected = vec![
        Change::Set(user("a"), 1.into()),
        Change::Set(user("b"), 2.into()),
    ];
    for text in [
        "SET a = 1, SET b = 2",
        "SET a = 1; SET b = 2",
        "SET a = 1; SET b = 2;",
        "SET a = 1;, SET b = 2",
        "SET a = 1 SET b = 2",
        "set a = 1; Set b = 2",
    ] {
        assert_eq!(
            action(text).apply(&PropertyBag::new()),
            Ok(expected.clone()),
            "{text}"
        );
    }
}

#[test]
fn statement_errors() {
    assert_eq!(
        err(""),
        ParseError::new(
            0,
            K::Expected {
                expected: "SET or REMOVE",
                found: "end of text".into()
            }
        )
    );
    assert_eq!(
        err("SET a = 1;;"),
        ParseError::new(
            10,
            K::Expected {
                expected: "SET or REMOVE",
                found: "';'".into()
            }
        )
    );
    assert_eq!(
        err("UPDATE a = 1").kind,
        K::Expected {
            expected: "SET or REMOVE",
            found: "name \"UPDATE\"".into()
        }
    );
    assert_eq!(
        err("SET a 1").kind,
        K::Expected {
            expected: "'='",
            found: "1".into()
        }
    );
    assert_eq!(err("SET a = b = 1"), ParseError::new(8, K::ExpectedValue));
    assert_eq!(err("SET x = a > 1"), ParseError::new(8, K::ExpectedValue));
    assert_eq!(
        err("SET sys.SequenceNumber = 1"),
        ParseError::new(4, K::ReadOnly("SequenceNumber"))
    );
    assert_eq!(
        err("SET sys.EnqueuedTimeUtc = NULL").kind,
        K::ReadOnly("EnqueuedTimeUtc")
    );
    assert_eq!(
        err("REMOVE sys.MessageId"),
        ParseError::new(7, K::ReadOnly("MessageId"))
    );
    assert_eq!(
        err("REMOVE sys.DeliveryCount").kind,
        K::ReadOnly("DeliveryCount")
    );
    assert_eq!(
        err("SET sys.Nope = 1").kind,
        K::UnknownSystemProperty("Nope".into())
    );
    let many = vec!["SET a = 1"; 33].join("; ");
    assert_eq!(err(&many).kind, K::TooManyStatements { limit: 32 });
    assert!(SqlAction::parse(&vec!["SET a = 1"; 32].join("; "), &Parameters::new()).is_ok());
    let few = Limits {
        max_action_statements: 2,
        ..Limits::default()
    };
    let e =
        SqlAction::parse_with_limits("SET a = 1; SET b = 2; SET c = 3", &Parameters::new(), &few)
            .unwrap_err();
    assert_eq!(e, ParseError::new(22, K::TooManyStatements { limit: 2 }));
}

#[test]
fn statements_see_earlier_changes() {
    let msg = PropertyBag::new().with_user("a", 1);
    let changes = action("SET a = a + 1; SET b = a * 10; SET A = a + 1")
        .apply(&msg)
        .unwrap();
    assert_eq!(
        changes,
        vec![
            Change::Set(user("A"), 3.into()),
            Change::Set(user("b"), 20.into())
        ]
    );
}

#[test]
fn remove() {
    let msg = PropertyBag::new().with_user("Priority", "high");
    assert_eq!(
        action("REMOVE priority").apply(&msg),
        Ok(vec![Change::Remove(user("priority"))])
    );
    assert_eq!(action("REMOVE missing").apply(&msg), Ok(vec![]));
    assert_eq!(
        action("SET x = 1; REMOVE x").apply(&msg),
        Ok(vec![Change::Remove(user("x"))])
    );
    assert_eq!(
        action("REMOVE priority; SET q = priority").apply(&msg),
        Ok(vec![
            Change::Remove(user("priority")),
            Change::Set(user("q"), Value::Null)
        ])
    );
    assert_eq!(
        action("REMOVE sys.Label").apply(&msg),
        Ok(vec![Change::Remove(Target::System(S::Label))])
    );
}

#[test]
fn conversions() {
    let msg = PropertyBag::new()
        .with_user("d", 1.5)
        .with_user("n", 4)
        .with_system(S::Label, "old");
    // long over an existing double stays double (C# implicit long -> double).
    assert_eq!(
        action("SET d = 2").apply(&msg),
        Ok(vec![Change::Set(user("d"), Value::Double(2.0))])
    );
    // double over an existing long: no implicit conversion, the double is kept.
    assert_eq!(
        action("SET n = 2.5").apply(&msg),
        Ok(vec![Change::Set(user("n"), Value::Double(2.5))])
    );
    // Missing user properties are unknown, which is stored as null.
    assert_eq!(
        action("SET x = missing + 1").apply(&msg),
        Ok(vec![Change::Set(user("x"), Value::Null)])
    );
    // System properties take their own kind; newid() fills a string property with its text.
    let changes = action("SET sys.MessageId = newid()").apply(&msg).unwrap();
    match &changes[..] {
        [Change::Set(Target::System(S::MessageId), Value::String(s))] => {
            assert_eq!(s.len(), 36);
            assert_eq!(&s[14..15], "4");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        action("SET sys.Label = sys.Label + '-copy'").apply(&msg),
        Ok(vec![Change::Set(
            Target::System(S::Label),
            "old-copy".into()
        )])
    );
    assert_eq!(
        action("SET sys.Label = NULL").apply(&msg),
        Ok(vec![Change::Set(Target::System(S::Label), Value::Null)])
    );
    assert_eq!(
        action("SET sys.To = 5").apply(&msg),
        Err(EvalError::BadSystemValue {
            property: "To",
            found: "long"
        })
    );
    assert_eq!(
        action("SET sys.MessageId = missing").apply(&msg),
        Err(EvalError::BadSystemValue {
            property: "MessageId",
            found: "null"
        })
    );
    assert_eq!(
        action("SET sys.TimeToLive = 5").apply(&msg),
        Err(EvalError::BadSystemValue {
            property: "TimeToLive",
            found: "long"
        })
    );
    let params = Parameters::new().with("ttl", Value::TimeSpan(10));
    let a = SqlAction::parse("SET sys.TimeToLive = @ttl", &params).unwrap();
    assert_eq!(
        a.apply(&msg),
        Ok(vec![Change::Set(
            Target::System(S::TimeToLive),
            Value::TimeSpan(10)
        )])
    );
    assert_eq!(
        action("SET x = 1 / 0").apply(&msg),
        Err(EvalError::DivideByZero)
    );
}
