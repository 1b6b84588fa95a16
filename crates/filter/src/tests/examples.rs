//! The examples of Microsoft's filter and action documentation and of the emulator's sample
//! configuration.

use super::sample;
use crate::{
    select, Change, CorrelationFilter, Filter, Parameters, PropertyBag, Rule, SqlAction, SqlFilter,
    SystemProperty as S, Target, Value,
};

fn sql(text: &str) -> SqlFilter {
    SqlFilter::parse(text, &Parameters::new()).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

fn action(text: &str) -> SqlAction {
    SqlAction::parse(text, &Parameters::new()).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

#[test]
fn emulator_sample_rule() {
    let filter = sql("sys.MessageId = '123456' AND userProp1 = 'value1'");
    let msg = PropertyBag::new()
        .with_system(S::MessageId, "123456")
        .with_user("userProp1", "value1");
    assert_eq!(filter.matches(&msg), Ok(true));
    assert_eq!(
        filter.matches(&msg.clone().with_user("userProp1", "value2")),
        Ok(false)
    );
    assert_eq!(
        filter.matches(&PropertyBag::new().with_user("userProp1", "value1")),
        Ok(false)
    );
    let changes = action("SET sys.To = 'Entity'").apply(&msg).unwrap();
    assert_eq!(
        changes,
        vec![Change::Set(Target::System(S::To), "Entity".into())]
    );
}

#[test]
fn documentation_filters() {
    let msg = sample()
        .with_user("tag", "topic")
        .with_user("StoreId", "Store8");
    let yes = [
        "sys.Label LIKE '%bus%'",
        "sys.label LIKE '%bus%'",
        "sys.Label LIKE '%bus%' OR user.tag IN ('queue', 'topic', 'subscription')",
        "StoreId IN('Store1', 'Store2', 'Store8')",
        "sys.To IN ('Store5','Store6','Store7') OR StoreId = 'Store8'",
        "sys.messageid = '123456'",
        "color='red' AND quantity=10",
        "user.color='red'",
        "MessageProperty = 'A' OR quantity > 2.08",
        "quantity = 10 AND price = 2.5",
    ];
    for text in yes {
        assert_eq!(sql(text).matches(&msg), Ok(true), "{text}");
    }
    let no = [
        "sys.To NOT IN ('Store1','Store2','Store3','Store4','Store5','Store6','Store7','Store8') \
         OR StoreId NOT IN ('Store1','Store2','Store3','Store4','Store5','Store6','Store7','Store8')",
        "color='blue' AND quantity=10",
        "sys.correlationid like 'abc-%'",
        "user.SuperHero like 'SuperMan%'",
    ];
    for text in no {
        assert_eq!(sql(text).matches(&msg), Ok(false), "{text}");
    }
    let special = PropertyBag::new().with_user(
        "http://schemas.microsoft.com/xrm/2011/Claims/EntityLogicalName",
        "account",
    );
    let f = sql("\"http://schemas.microsoft.com/xrm/2011/Claims/EntityLogicalName\" = 'account'");
    assert_eq!(f.matches(&special), Ok(true));
}

#[test]
fn documentation_actions() {
    // SET quantity = quantity / 2; REMOVE priority; SET sys.CorrelationId = 'low';
    let msg = PropertyBag::new()
        .with_user("color", "red")
        .with_user("quantity", 10)
        .with_user("priority", "high");
    let a = action("SET quantity = quantity / 2; REMOVE priority;SET sys.CorrelationId = 'low';");
    let changes = a.apply(&msg).unwrap();
    assert_eq!(
        changes,
        vec![
            Change::Set(Target::User("quantity".into()), Value::Long(5)),
            Change::Remove(Target::User("priority".into())),
            Change::Set(Target::System(S::CorrelationId), "low".into()),
        ]
    );
    let mut copy = msg.clone();
    copy.apply(&changes);
    assert_eq!(
        copy.user,
        vec![
            ("color".into(), "red".into()),
            ("quantity".into(), 5.into())
        ]
    );
    assert_eq!(copy.system, vec![(S::CorrelationId, "low".into())]);

    // SET source='routedOrders' behind the parameterised filter source = @stringParam.
    let params = Parameters::new().with("@stringParam", "orders");
    let filter = SqlFilter::parse("source = @stringParam", &params).unwrap();
    let msg = PropertyBag::new().with_user("source", "orders");
    assert_eq!(filter.matches(&msg), Ok(true));
    assert_eq!(
        action("SET source='routedOrders'").apply(&msg).unwrap(),
        vec![Change::Set(
            Target::User("source".into()),
            "routedOrders".into()
        )]
    );
}

/// The documentation's scenario: five rules, two with actions, one message matching all five
/// gives three copies.
#[test]
fn rules_with_and_without_actions() {
    let rule = |name: &str, filter: Filter, act: Option<&str>| Rule {
        name: name.into(),
        filter,
        action: act.map(action),
    };
    let rules = vec![
        Rule::default_rule(),
        rule(
            "red",
            Filter::sql("color = 'red'", &Parameters::new()).unwrap(),
            None,
        ),
        rule(
            "corr",
            Filter::Correlation(CorrelationFilter::correlation_id("high")),
            None,
        ),
        rule("half", Filter::True, Some("SET quantity = quantity / 2")),
        rule(
            "tag",
            Filter::sql("quantity > 5", &Parameters::new()).unwrap(),
            Some("SET sys.Label = 'big'"),
        ),
        rule("never", Filter::False, Some("SET x = 1")),
        rule(
            "broken",
            Filter::sql("quantity / 0 = 1", &Parameters::new()).unwrap(),
            None,
        ),
    ];
    let msg = PropertyBag::new()
        .with_system(S::CorrelationId, "high")
        .with_user("color", "red")
        .with_user("quantity", 10);
    let sel = select(&rules, &msg);
    assert!(sel.plain);
    assert_eq!(sel.copies(), 3);
    assert_eq!(sel.with_actions[0].0.name, "half");
    assert_eq!(
        sel.with_actions[0].1,
        vec![Change::Set(Target::User("quantity".into()), 5.into())]
    );
    assert_eq!(sel.with_actions[1].0.name, "tag");
    // The plain copy was already decided, so the broken rule was not evaluated.
    assert!(sel.errors.is_empty());

    let sel = select(&rules[4..], &msg);
    assert_eq!(sel.copies(), 1);
    assert_eq!(sel.errors.len(), 1);
    assert_eq!(sel.errors[0].0.name, "broken");
}

#[test]
fn true_and_false_as_the_sdks_send_them() {
    let p = Parameters::new();
    assert_eq!(Filter::sql("1=1", &p), Ok(Filter::True));
    assert_eq!(Filter::sql(" 1 = 1 ", &p), Ok(Filter::True));
    assert_eq!(Filter::sql("1=0", &p), Ok(Filter::False));
    assert!(matches!(Filter::sql("1=2", &p), Ok(Filter::Sql(_))));
    assert_eq!(Filter::True.matches(&PropertyBag::new()), Ok(true));
    assert_eq!(Filter::False.matches(&PropertyBag::new()), Ok(false));
    assert_eq!(sql("1=1").matches(&PropertyBag::new()), Ok(true));
    assert_eq!(sql("1=0").matches(&PropertyBag::new()), Ok(false));
    assert!(Filter::sql("1=", &p).is_err());
}

#[test]
fn text_is_kept_for_enumerate_rules() {
    let f = sql("color = 'red'  AND  quantity > 1");
    assert_eq!(f.expression(), "color = 'red'  AND  quantity > 1");
    assert_eq!(f.to_string(), f.expression());
    assert_eq!(
        f.canonical(),
        "((user.[color] = 'red') AND (user.[quantity] > 1))"
    );
    let a = action("SET a = 1");
    assert_eq!(a.expression(), "SET a = 1");
}
