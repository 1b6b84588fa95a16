//! A subscription's rule operations on its `$management` node: `add-rule`, `remove-rule` and
//! `enumerate-rules`, as the JS SDK's `ServiceBusRuleManager` sends them.
//!
//! Requests carry a `rule-description` map (`sql-filter` or `correlation-filter`, and an
//! optional `sql-rule-action`); `enumerate-rules` answers with described lists under numeric
//! descriptors (rule description `0x0000013700000004`: `[filter, action, name]`; filters
//! `0x000000137000000{6,7,8,9}` for SQL, true, false and correlation; actions
//! `0x000001370000000{5,6}` for none and SQL). Everything the broker sends back is built from
//! typed values it owns, never a value a peer sent. An action's copies are made by
//! `rule_action.rs`.

use std::sync::Arc;

use ferrobus_codec::serde_amqp::described::Described;
use ferrobus_codec::serde_amqp::descriptor::Descriptor;
use ferrobus_codec::types::primitives::{OrderedMap, Timestamp, Uuid, Value};
use ferrobus_filter::{
    CorrelationFilter, Filter, Parameters, Rule, SqlAction, Value as FilterValue,
};
use ferrobus_store::{Subscription, Topic};

use crate::management::{field, from_store, int, map, text, Failure, Reply};

const RULE_DESCRIPTION: u64 = 0x0000_0137_0000_0004;
const EMPTY_ACTION: u64 = 0x0000_0137_0000_0005;
const SQL_ACTION: u64 = 0x0000_0137_0000_0006;
const SQL_FILTER: u64 = 0x0000_0013_7000_0006;
const TRUE_FILTER: u64 = 0x0000_0013_7000_0007;
const FALSE_FILTER: u64 = 0x0000_0013_7000_0008;
const CORRELATION_FILTER: u64 = 0x0000_0013_7000_0009;

/// Runs one rule operation.
pub fn handle(op: &str, topic: &Arc<Topic>, sub: &Arc<Subscription>, body: &Value, reply: Reply) {
    match op {
        "com.microsoft:add-rule" => match rule_of(body) {
            Ok(rule) => sub.add_rule(
                topic.storage(),
                rule,
                Box::new(move |r| reply(r.map(|()| Some(map(vec![]))).map_err(from_store))),
            ),
            Err(f) => reply(Err(f)),
        },
        "com.microsoft:remove-rule" => match text(field(body, "rule-name")) {
            Some(name) => sub.remove_rule(
                topic.storage(),
                &name,
                Box::new(move |r| reply(r.map(|()| Some(map(vec![]))).map_err(from_store))),
            ),
            None => reply(Err(Failure::bad("rule-name must be a non-empty string"))),
        },
        _ => reply(Ok(enumerate(&sub.rules(), body))),
    }
}

/// The rule an `add-rule` request describes, or why it cannot be added.
fn rule_of(body: &Value) -> Result<Rule, Failure> {
    let name = text(field(body, "rule-name"))
        .ok_or_else(|| Failure::bad("rule-name must be a non-empty string"))?;
    let desc = field(body, "rule-description")
        .filter(|d| matches!(d, Value::Map(_)))
        .ok_or_else(|| Failure::bad("rule-description must be a map"))?;
    let present = |k: &str| field(desc, k).filter(|v| !matches!(v, Value::Null));
    let action = match present("sql-rule-action").and_then(|a| text(field(a, "expression"))) {
        Some(expr) if !expr.trim().is_empty() => Some(
            SqlAction::parse(&expr, &Parameters::new())
                .map_err(|e| Failure::bad(format!("rule '{name}': action {expr:?}: {e}")))?,
        ),
        _ => None,
    };
    let filter = match (present("sql-filter"), present("correlation-filter")) {
        (Some(sql), None) => {
            let expr = text(field(sql, "expression"))
                .ok_or_else(|| Failure::bad("sql-filter needs an expression"))?;
            let mut params = Parameters::new();
            if let Some(Value::Map(m)) = field(sql, "parameters") {
                for (k, v) in m.iter() {
                    let key =
                        text(Some(k)).ok_or_else(|| Failure::bad("parameter names are strings"))?;
                    params.insert(&key, filter_value(v)?);
                }
            }
            Filter::sql(&expr, &params)
                .map_err(|e| Failure::bad(format!("rule '{name}': SQL filter {expr:?}: {e}")))?
        }
        (None, Some(c)) => Filter::Correlation(correlation(c)?),
        _ => {
            return Err(Failure::bad(
                "rule-description needs exactly one of sql-filter and correlation-filter",
            ))
        }
    };
    Ok(Rule {
        name,
        filter,
        action,
    })
}

fn correlation(c: &Value) -> Result<CorrelationFilter, Failure> {
    let t = |k: &str| text(field(c, k));
    let mut properties = Vec::new();
    if let Some(Value::Map(m)) = field(c, "properties") {
        for (k, v) in m.iter() {
            let key = text(Some(k)).ok_or_else(|| Failure::bad("property names are strings"))?;
            properties.push((key, filter_value(v)?));
        }
    }
    Ok(CorrelationFilter {
        correlation_id: t("correlation-id"),
        message_id: t("message-id"),
        to: t("to"),
        reply_to: t("reply-to"),
        label: t("label"),
        session_id: t("session-id"),
        reply_to_session_id: t("reply-to-session-id"),
        content_type: t("content-type"),
        properties,
    })
}

/// A request's property or parameter value as filters compare it.
fn filter_value(v: &Value) -> Result<FilterValue, Failure> {
    Ok(match v {
        Value::Null => FilterValue::Null,
        Value::Bool(b) => FilterValue::Bool(*b),
        Value::String(s) => FilterValue::String(s.clone()),
        Value::Symbol(s) => FilterValue::String(s.as_str().to_string()),
        Value::Float(x) => FilterValue::Double(f64::from(x.into_inner())),
        Value::Double(x) => FilterValue::Double(x.into_inner()),
        Value::Timestamp(t) => FilterValue::DateTime(t.milliseconds()),
        Value::Uuid(u) => FilterValue::Uuid(*u.as_inner()),
        Value::Char(c) => FilterValue::String(c.to_string()),
        other => match int(other) {
            Some(n) => FilterValue::Long(n),
            None => {
                return Err(Failure::bad(
                    "property values must be strings, numbers, booleans, timestamps or uuids",
                ))
            }
        },
    })
}

/// The value we send for a filter's value (typed, ours).
fn amqp_value(v: &FilterValue) -> Value {
    match v {
        FilterValue::Null | FilterValue::Opaque(_) => Value::Null,
        FilterValue::Bool(b) => Value::Bool(*b),
        FilterValue::Long(n) => Value::Long(*n),
        FilterValue::Double(x) => Value::Double((*x).into()),
        FilterValue::String(s) => Value::String(s.clone()),
        FilterValue::DateTime(t) => Value::Timestamp(Timestamp::from_milliseconds(*t)),
        FilterValue::TimeSpan(t) => Value::Long(*t),
        FilterValue::Uuid(u) => Value::Uuid(Uuid::from(*u)),
    }
}

fn described(code: u64, fields: Vec<Value>) -> Value {
    Value::Described(Box::new(Described {
        descriptor: Descriptor::Code(code),
        value: Value::List(fields),
    }))
}

fn filter_description(f: &Filter) -> Value {
    let opt = |s: &Option<String>| s.clone().map_or(Value::Null, Value::String);
    match f {
        Filter::True => described(TRUE_FILTER, vec![]),
        Filter::False => described(FALSE_FILTER, vec![]),
        Filter::Sql(sql) => described(
            SQL_FILTER,
            vec![Value::String(sql.expression().to_string())],
        ),
        Filter::Correlation(c) => {
            let mut props = OrderedMap::new();
            for (k, v) in &c.properties {
                props.insert(Value::String(k.clone()), amqp_value(v));
            }
            described(
                CORRELATION_FILTER,
                vec![
                    opt(&c.correlation_id),
                    opt(&c.message_id),
                    opt(&c.to),
                    opt(&c.reply_to),
                    opt(&c.label),
                    opt(&c.session_id),
                    opt(&c.reply_to_session_id),
                    opt(&c.content_type),
                    Value::Map(props),
                ],
            )
        }
    }
}

/// `enumerate-rules`: the rules from `skip`, at most `top` of them; 204 when none.
fn enumerate(rules: &[Rule], body: &Value) -> Option<Value> {
    let skip = field(body, "skip").and_then(int).unwrap_or(0).max(0) as usize;
    let top = field(body, "top").and_then(int).unwrap_or(i64::MAX).max(0) as usize;
    let listed: Vec<Value> = rules
        .iter()
        .skip(skip)
        .take(top)
        .map(|r| {
            let desc = described(
                RULE_DESCRIPTION,
                vec![
                    filter_description(&r.filter),
                    match &r.action {
                        Some(a) => {
                            described(SQL_ACTION, vec![Value::String(a.expression().to_string())])
                        }
                        None => described(EMPTY_ACTION, vec![]),
                    },
                    Value::String(r.name.clone()),
                ],
            );
            map(vec![("rule-description", desc)])
        })
        .collect();
    (!listed.is_empty()).then(|| map(vec![("rules", Value::List(listed))]))
}
