//! Topics, subscriptions and rules as the configuration declares them (`[[topics]]`), checked
//! and turned into the store's declarations. Filter texts are parsed here, at start-up: a bad
//! one stops the broker with the entity, the rule, the position and the reason.

use std::collections::HashMap;

use ferrobus_filter::{CorrelationFilter, Filter, Parameters, Rule, SqlAction, Value};
use ferrobus_store::{QueueConfig, SubscriptionConfig, TopicConfig, TopicSpec};
use serde::Deserialize;

use crate::config::{
    default_duplicate_window_ms, default_lock_duration_ms, default_max_delivery_count,
    default_max_size_mb,
};

/// `[[topics]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicDecl {
    /// Topic name (case-insensitive).
    pub name: String,
    /// Largest total payload each subscription holds, in MiB (`MaxSizeInMegabytes`).
    #[serde(default = "default_max_size_mb")]
    pub max_size_mb: u64,
    /// Time to live of messages that set none, and the cap on those that do, in ms; 0: none.
    #[serde(default)]
    pub default_message_ttl_ms: u64,
    /// Drop messages whose message-id was seen within the window (`RequiresDuplicateDetection`).
    #[serde(default)]
    pub requires_duplicate_detection: bool,
    /// The duplicate-detection window in milliseconds.
    #[serde(default = "default_duplicate_window_ms")]
    pub duplicate_detection_window_ms: u64,
    /// `[[topics.subscriptions]]`
    #[serde(default)]
    pub subscriptions: Vec<SubscriptionDecl>,
}

/// `[[topics.subscriptions]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionDecl {
    /// Subscription name (case-insensitive).
    pub name: String,
    /// Deliveries before a message is dead-lettered.
    #[serde(default = "default_max_delivery_count")]
    pub max_delivery_count: u32,
    /// How long a peek-lock lasts, in milliseconds.
    #[serde(default = "default_lock_duration_ms")]
    pub lock_duration_ms: u64,
    /// The subscription's own cap on time to live, in ms; 0: none (the topic's applies).
    #[serde(default)]
    pub default_message_ttl_ms: u64,
    /// Expired messages go to the dead-letter sub-queue.
    #[serde(default)]
    pub dead_lettering_on_message_expiration: bool,
    /// A message its rules cannot be evaluated on goes to the dead-letter sub-queue
    /// (`DeadLetteringOnFilterEvaluationExceptions`, Service Bus' default: on).
    #[serde(default = "yes")]
    pub dead_lettering_on_filter_evaluation_exceptions: bool,
    /// `[[topics.subscriptions.rules]]`; none declared: the `$Default` rule (every message).
    #[serde(default)]
    pub rules: Vec<RuleDecl>,
    /// A queue its copies go to instead (`ForwardTo`).
    #[serde(default)]
    pub forward_to: Option<String>,
    /// A queue or topic its dead-lettered messages go to (`ForwardDeadLetteredMessagesTo`).
    #[serde(default)]
    pub forward_dead_lettered_messages_to: Option<String>,
    /// Its copies are grouped in sessions by their SessionId (`RequiresSession`).
    #[serde(default)]
    pub requires_session: bool,
}

/// `[[topics.subscriptions.rules]]`: a SQL filter (`sql`), a correlation filter (any of the
/// correlation fields and `properties`), or, with neither, the true filter.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RuleDecl {
    pub name: String,
    /// A SQL filter expression.
    pub sql: Option<String>,
    /// A SQL rule action (`SET` / `REMOVE` statements) for the copies this rule selects.
    pub action: Option<String>,
    pub correlation_id: Option<String>,
    pub message_id: Option<String>,
    pub to: Option<String>,
    pub reply_to: Option<String>,
    pub label: Option<String>,
    pub session_id: Option<String>,
    pub reply_to_session_id: Option<String>,
    pub content_type: Option<String>,
    /// Application properties a correlation filter requires, with their values.
    #[serde(default)]
    pub properties: HashMap<String, PropertyValue>,
}

/// A correlation filter's property value: a string, an integer, a number or a boolean.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum PropertyValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

fn yes() -> bool {
    true
}

impl RuleDecl {
    fn correlation(&self) -> Option<CorrelationFilter> {
        let mut properties: Vec<(String, Value)> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    PropertyValue::Bool(b) => Value::Bool(*b),
                    PropertyValue::Int(n) => Value::Long(*n),
                    PropertyValue::Float(x) => Value::Double(*x),
                    PropertyValue::Text(s) => Value::String(s.clone()),
                };
                (k.clone(), v)
            })
            .collect();
        properties.sort_by(|a, b| a.0.cmp(&b.0));
        let f = CorrelationFilter {
            correlation_id: self.correlation_id.clone(),
            message_id: self.message_id.clone(),
            to: self.to.clone(),
            reply_to: self.reply_to.clone(),
            label: self.label.clone(),
            session_id: self.session_id.clone(),
            reply_to_session_id: self.reply_to_session_id.clone(),
            content_type: self.content_type.clone(),
            properties,
        };
        (!f.is_empty()).then_some(f)
    }

    /// The rule, or why it cannot be.
    fn rule(&self, at: &str) -> anyhow::Result<Rule> {
        if self.name.is_empty() {
            anyhow::bail!("configuration: {at}: a rule needs a name");
        }
        let at = format!("{at}.rules.{}", self.name);
        let action = match &self.action {
            Some(a) => Some(
                SqlAction::parse(a, &Parameters::default())
                    .map_err(|e| anyhow::anyhow!("configuration: {at}: action {a:?}: {e}"))?,
            ),
            None => None,
        };
        let filter = match (&self.sql, self.correlation()) {
            (Some(_), Some(_)) => anyhow::bail!(
                "configuration: {at}: a rule has either a SQL filter (`sql`) or correlation fields, not both"
            ),
            (Some(sql), None) => Filter::sql(sql, &Parameters::default())
                .map_err(|e| anyhow::anyhow!("configuration: {at}: SQL filter {sql:?}: {e}"))?,
            (None, Some(c)) => Filter::Correlation(c),
            (None, None) => Filter::True,
        };
        Ok(Rule {
            name: self.name.clone(),
            filter,
            action,
        })
    }
}

/// The store's declarations of the configured topics, or the first thing wrong with them.
pub fn topic_specs(topics: &[TopicDecl]) -> anyhow::Result<Vec<TopicSpec>> {
    topics.iter().map(spec).collect()
}

fn spec(t: &TopicDecl) -> anyhow::Result<TopicSpec> {
    if t.name.is_empty() || t.name.contains('$') {
        anyhow::bail!("configuration: topics: invalid topic name {:?}", t.name);
    }
    let mut subscriptions = Vec::with_capacity(t.subscriptions.len());
    for s in &t.subscriptions {
        let at = format!("topics.{}.subscriptions.{}", t.name, s.name);
        if s.name.is_empty() || s.name.contains('$') || s.name.contains('/') {
            anyhow::bail!("configuration: {at}: invalid subscription name");
        }
        if s.lock_duration_ms < 1000 {
            anyhow::bail!("configuration: {at}: lock_duration_ms must be at least 1000");
        }
        if s.max_delivery_count == 0 {
            anyhow::bail!("configuration: {at}: max_delivery_count must be at least 1");
        }
        let mut rules = Vec::with_capacity(s.rules.len().max(1));
        for r in &s.rules {
            if rules
                .iter()
                .any(|x: &Rule| x.name.eq_ignore_ascii_case(&r.name))
            {
                anyhow::bail!("configuration: {at}: rule '{}' is declared twice", r.name);
            }
            rules.push(r.rule(&at)?);
        }
        if rules.is_empty() {
            rules.push(Rule::default_rule());
        }
        subscriptions.push((
            s.name.clone(),
            SubscriptionConfig {
                queue: QueueConfig {
                    max_delivery_count: s.max_delivery_count,
                    lock_duration_ms: s.lock_duration_ms,
                    default_ttl_ms: s.default_message_ttl_ms,
                    dead_letter_on_expiration: s.dead_lettering_on_message_expiration,
                    forward_dead_lettered_to: s
                        .forward_dead_lettered_messages_to
                        .clone()
                        .filter(|f| !f.is_empty()),
                    requires_session: s.requires_session,
                    ..QueueConfig::default()
                },
                rules,
                dead_letter_on_filter_errors: s.dead_lettering_on_filter_evaluation_exceptions,
                forward_to: s.forward_to.clone().filter(|f| !f.is_empty()),
            },
        ));
    }
    Ok(TopicSpec {
        name: t.name.clone(),
        config: TopicConfig {
            default_ttl_ms: t.default_message_ttl_ms,
            duplicate_detection_ms: if t.requires_duplicate_detection {
                t.duplicate_detection_window_ms
            } else {
                0
            },
            max_size_bytes: t.max_size_mb * 1024 * 1024,
        },
        subscriptions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> anyhow::Result<Vec<TopicSpec>> {
        #[derive(Deserialize)]
        struct Doc {
            topics: Vec<TopicDecl>,
        }
        use config::{File, FileFormat};
        let d: Doc = config::Config::builder()
            .add_source(File::from_str(toml, FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        topic_specs(&d.topics)
    }

    #[test]
    fn subscriptions_and_rules_of_each_kind() {
        let specs = parse(
            r#"
            [[topics]]
            name = "orders"
            requires_duplicate_detection = true
            [[topics.subscriptions]]
            name = "all"
            [[topics.subscriptions]]
            name = "big"
            lock_duration_ms = 5000
            [[topics.subscriptions.rules]]
            name = "amount"
            sql = "amount > 100"
            [[topics.subscriptions.rules]]
            name = "vip"
            label = "vip"
            properties = { tier = "gold", level = 3 }
            "#,
        )
        .unwrap();
        let t = &specs[0];
        assert_eq!(t.config.duplicate_detection_ms, 600_000);
        assert_eq!(t.subscriptions[0].1.rules, vec![Rule::default_rule()]);
        let big = &t.subscriptions[1].1;
        assert_eq!(big.queue.lock_duration_ms, 5000);
        assert!(matches!(big.rules[0].filter, Filter::Sql(_)));
        match &big.rules[1].filter {
            Filter::Correlation(c) => {
                assert_eq!(c.label.as_deref(), Some("vip"));
                assert_eq!(
                    c.properties,
                    vec![
                        ("level".to_string(), Value::Long(3)),
                        ("tier".to_string(), Value::String("gold".into()))
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_rules_are_refused_with_where_and_why() {
        let e = parse(
            r#"
            [[topics]]
            name = "t"
            [[topics.subscriptions]]
            name = "s"
            [[topics.subscriptions.rules]]
            name = "broken"
            sql = "amount >"
            "#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("topics.t.subscriptions.s.rules.broken"), "{e}");
        assert!(e.contains("position"), "{e}");
        let e = parse(
            r#"
            [[topics]]
            name = "t"
            [[topics.subscriptions]]
            name = "s"
            [[topics.subscriptions.rules]]
            name = "a"
            sql = "1=1"
            action = "SET x ="
            "#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("rules.a: action"), "{e}");
    }
}
