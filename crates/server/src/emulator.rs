//! The Service Bus emulator's `Config.json`, accepted as is.
//!
//! The file is JSON with `//` (and `/* */`) comments. It is translated into our TOML, so the
//! environment and command-line layers apply to it exactly as to a TOML file. It replaces
//! the default entity set and keeps the emulator's key rule (`RootManageSharedAccessKey` /
//! `SAS_KEY_VALUE`). Whatever Ferrobus does not support yet is named in a warning.

use serde_json::Value;

/// Emulator properties naming another entity, with our keys.
const FORWARDS: &[(&str, &str)] = &[
    ("ForwardTo", "forward_to"),
    (
        "ForwardDeadLetteredMessagesTo",
        "forward_dead_lettered_messages_to",
    ),
];

/// Emulator queue properties that map onto our queue keys: duration ones (ISO-8601, to ms).
const DURATIONS: &[(&str, &str)] = &[
    ("LockDuration", "lock_duration_ms"),
    ("DefaultMessageTimeToLive", "default_message_ttl_ms"),
    (
        "DuplicateDetectionHistoryTimeWindow",
        "duplicate_detection_window_ms",
    ),
];

/// Emulator queue properties that map onto our queue keys: booleans.
const FLAGS: &[(&str, &str)] = &[
    (
        "DeadLetteringOnMessageExpiration",
        "dead_lettering_on_message_expiration",
    ),
    ("RequiresDuplicateDetection", "requires_duplicate_detection"),
    ("RequiresSession", "requires_session"),
    (
        "DeadLetteringOnFilterEvaluationExceptions",
        "dead_lettering_on_filter_evaluation_exceptions",
    ),
];

/// Our keys each entity kind takes.
const QUEUE_KEYS: &[&str] = &[
    "lock_duration_ms",
    "default_message_ttl_ms",
    "duplicate_detection_window_ms",
    "dead_lettering_on_message_expiration",
    "requires_duplicate_detection",
    "max_delivery_count",
    "forward_to",
    "forward_dead_lettered_messages_to",
    "requires_session",
];
const TOPIC_KEYS: &[&str] = &[
    "default_message_ttl_ms",
    "duplicate_detection_window_ms",
    "requires_duplicate_detection",
];
const SUBSCRIPTION_KEYS: &[&str] = &[
    "lock_duration_ms",
    "default_message_ttl_ms",
    "dead_lettering_on_message_expiration",
    "dead_lettering_on_filter_evaluation_exceptions",
    "max_delivery_count",
    "forward_to",
    "forward_dead_lettered_messages_to",
    "requires_session",
];

/// Appends `[[table]]` with its name and keys.
fn push_table(toml: &mut String, table: &str, name: &str, keys: &[String]) {
    toml.push_str(&format!("[[{table}]]\nname = {}\n", toml_string(name)));
    for k in keys {
        toml.push_str(k);
        toml.push('\n');
    }
    toml.push('\n');
}

/// Our keys for an entity's `Properties`; what we do not apply yet, or what does not apply to
/// this kind of entity, becomes a warning.
fn entity_keys(
    item: &str,
    entity: &Value,
    allowed: &[&str],
    warnings: &mut Vec<String>,
) -> anyhow::Result<Vec<String>> {
    let mut keys: Vec<String> = Vec::new();
    let Some(props) = entity.get("Properties").and_then(Value::as_object) else {
        return Ok(keys);
    };
    for (key, value) in props {
        let item = format!("{item}: property {key}");
        let (ours, text) = if key == "MaxDeliveryCount" {
            let v = value
                .as_u64()
                .filter(|v| (1..=u32::MAX as u64).contains(v))
                .ok_or_else(|| anyhow::anyhow!("Config.json: {item} must be a positive integer"))?;
            ("max_delivery_count", v.to_string())
        } else if let Some((_, ours)) = DURATIONS.iter().find(|(k, _)| k == key) {
            let ms = value
                .as_str()
                .and_then(iso_duration_ms)
                .filter(|ms| *ms >= 1000)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "Config.json: {item} must be an ISO-8601 duration of at least 1 s, like PT1M"
                    )
                })?;
            (*ours, ms.to_string())
        } else if let Some((_, ours)) = FLAGS.iter().find(|(k, _)| k == key) {
            let b = value
                .as_bool()
                .ok_or_else(|| anyhow::anyhow!("Config.json: {item} must be true or false"))?;
            (*ours, b.to_string())
        } else if let Some((_, ours)) = FORWARDS.iter().find(|(k, _)| k == key) {
            let to = value
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("Config.json: {item} must be an entity name"))?;
            if to.is_empty() {
                continue;
            }
            (*ours, toml_string(to))
        } else {
            warnings.push(format!("Config.json: {item} is unknown and is ignored"));
            continue;
        };
        if allowed.contains(&ours) {
            keys.push(format!("{ours} = {text}"));
        } else {
            warnings.push(format!(
                "Config.json: {item} does not apply to this kind of entity and is ignored"
            ));
        }
    }
    Ok(keys)
}

/// Our keys for one rule: `{Name, Properties: {FilterType, SqlFilter: {SqlExpression},
/// CorrelationFilter: {...}, Action: {SqlExpression}}}`. A rule without properties is the
/// true filter.
fn rule_keys(sub: &str, index: usize, rule: &Value) -> anyhow::Result<Vec<String>> {
    let at = format!("Config.json: {sub}: Rules[{index}]");
    let mut keys = Vec::new();
    let Some(props) = rule.get("Properties") else {
        return Ok(keys);
    };
    let text = |v: Option<&Value>, what: &str| -> anyhow::Result<Option<String>> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => anyhow::bail!("{at}: {what} must be a string, not {other}"),
        }
    };
    let kind = text(props.get("FilterType"), "FilterType")?;
    match kind.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("sql") => {
            let sql = text(
                props.pointer("/SqlFilter/SqlExpression"),
                "SqlFilter.SqlExpression",
            )?
            .ok_or_else(|| anyhow::anyhow!("{at}: a Sql rule needs SqlFilter.SqlExpression"))?;
            keys.push(format!("sql = {}", toml_string(&sql)));
        }
        Some("correlation") => {
            let c = props.get("CorrelationFilter").and_then(Value::as_object);
            for (json, ours) in CORRELATION_FIELDS {
                if let Some(v) = text(c.and_then(|c| c.get(*json)), json)? {
                    keys.push(format!("{ours} = {}", toml_string(&v)));
                }
            }
            if let Some(p) = c
                .and_then(|c| c.get("Properties"))
                .and_then(Value::as_object)
            {
                let mut inline = Vec::new();
                for (k, v) in p {
                    let v = match v {
                        Value::String(s) => toml_string(s),
                        Value::Bool(_) | Value::Number(_) => v.to_string(),
                        other => anyhow::bail!(
                            "{at}: correlation property '{k}' must be a string, number or boolean, not {other}"
                        ),
                    };
                    inline.push(format!("{} = {v}", toml_string(k)));
                }
                keys.push(format!("properties = {{ {} }}", inline.join(", ")));
            }
        }
        None => {}
        Some(other) => anyhow::bail!("{at}: FilterType {other:?} is not Sql or Correlation"),
    }
    if let Some(action) = text(
        props.pointer("/Action/SqlExpression"),
        "Action.SqlExpression",
    )? {
        if !action.trim().is_empty() {
            keys.push(format!("action = {}", toml_string(&action)));
        }
    }
    Ok(keys)
}

/// Correlation filter fields: the emulator's name, ours.
const CORRELATION_FIELDS: &[(&str, &str)] = &[
    ("ContentType", "content_type"),
    ("CorrelationId", "correlation_id"),
    ("Label", "label"),
    ("MessageId", "message_id"),
    ("ReplyTo", "reply_to"),
    ("ReplyToSessionId", "reply_to_session_id"),
    ("SessionId", "session_id"),
    ("To", "to"),
];

/// Our TOML for an emulator `Config.json`, and the warnings about what it asks for that is
/// not supported yet.
pub fn to_toml(text: &str) -> anyhow::Result<(String, Vec<String>)> {
    let json: Value = serde_json::from_str(&strip_comments(text))
        .map_err(|e| anyhow::anyhow!("Config.json: not valid JSON (comments allowed): {e}"))?;
    let mut warnings = Vec::new();
    let namespaces = json
        .pointer("/UserConfig/Namespaces")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow::anyhow!("Config.json: UserConfig.Namespaces is missing"))?;
    if namespaces.len() > 1 {
        warnings.push(format!(
            "Config.json: {} namespaces declared; Ferrobus serves their entities as one namespace",
            namespaces.len()
        ));
    }
    let mut toml = String::from(
        "# translated from the Service Bus emulator's Config.json\n\
         [[auth.keys]]\nname = \"RootManageSharedAccessKey\"\nkey = \"SAS_KEY_VALUE\"\n\n",
    );
    for (n, ns) in namespaces.iter().enumerate() {
        for (i, q) in array(ns, "Queues").iter().enumerate() {
            let name = q.get("Name").and_then(Value::as_str).ok_or_else(|| {
                anyhow::anyhow!("Config.json: Namespaces[{n}].Queues[{i}].Name is missing")
            })?;
            let keys = entity_keys(&format!("queue '{name}'"), q, QUEUE_KEYS, &mut warnings)?;
            push_table(&mut toml, "queues", name, &keys);
        }
        for (i, t) in array(ns, "Topics").iter().enumerate() {
            let topic = t.get("Name").and_then(Value::as_str).ok_or_else(|| {
                anyhow::anyhow!("Config.json: Namespaces[{n}].Topics[{i}].Name is missing")
            })?;
            let keys = entity_keys(&format!("topic '{topic}'"), t, TOPIC_KEYS, &mut warnings)?;
            push_table(&mut toml, "topics", topic, &keys);
            for (j, sub) in array(t, "Subscriptions").iter().enumerate() {
                let name = sub.get("Name").and_then(Value::as_str).ok_or_else(|| {
                    anyhow::anyhow!(
                        "Config.json: topic '{topic}': Subscriptions[{j}].Name is missing"
                    )
                })?;
                let label = format!("subscription '{topic}/{name}'");
                let keys = entity_keys(&label, sub, SUBSCRIPTION_KEYS, &mut warnings)?;
                push_table(&mut toml, "topics.subscriptions", name, &keys);
                for (k, rule) in array(sub, "Rules").iter().enumerate() {
                    let keys = rule_keys(&label, k, rule)?;
                    let rule_name = rule.get("Name").and_then(Value::as_str);
                    push_table(
                        &mut toml,
                        "topics.subscriptions.rules",
                        rule_name.unwrap_or(ferrobus_filter::DEFAULT_RULE_NAME),
                        &keys,
                    );
                }
            }
        }
    }
    Ok((toml, warnings))
}

/// Milliseconds of an ISO-8601 duration without years or months (`P1DT2H3M4.5S`).
pub fn iso_duration_ms(s: &str) -> Option<u64> {
    let rest = s.strip_prefix('P')?;
    let (days, time) = match rest.split_once('T') {
        Some((d, t)) => (d, t),
        None => (rest, ""),
    };
    let mut ms: f64 = 0.0;
    let mut any = false;
    for (part, units) in [
        (days, &[('D', 86_400_000.0)][..]),
        (
            time,
            &[('H', 3_600_000.0), ('M', 60_000.0), ('S', 1000.0)][..],
        ),
    ] {
        let mut num = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                num.push(c);
                continue;
            }
            let factor = units.iter().find(|(u, _)| *u == c)?.1;
            ms += num.parse::<f64>().ok()? * factor;
            num.clear();
            any = true;
        }
        if !num.is_empty() {
            return None;
        }
    }
    any.then_some(ms as u64)
}

fn array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn toml_string(s: &str) -> String {
    // JSON string escaping is valid TOML basic-string escaping for every character
    serde_json::to_string(s).expect("a string serialises")
}

/// Removes `//` and `/* */` comments outside string literals.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        out.push(n);
                    }
                }
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match (c, chars.peek()) {
            ('"', _) => {
                in_string = true;
                out.push(c);
            }
            ('/', Some('/')) => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            ('/', Some('*')) => {
                chars.next();
                let mut prev = ' ';
                for n in chars.by_ref() {
                    if prev == '*' && n == '/' {
                        break;
                    }
                    prev = n;
                }
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
  "UserConfig": {
    "Namespaces": [
      {
        "Name": "sbemulatorns", // cannot be renamed
        "Queues": [
          {
            "Name": "queue.1",
            "Properties": {
              "DeadLetteringOnMessageExpiration": false,
              "DefaultMessageTimeToLive": "PT1H",
              "DuplicateDetectionHistoryTimeWindow": "PT20S",
              "ForwardDeadLetteredMessagesTo": "",
              "ForwardTo": "",
              "LockDuration": "PT1M",
              "MaxDeliveryCount": 3,
              "RequiresDuplicateDetection": false,
              "RequiresSession": false
            }
          }
        ],
        /* topics: sb://names stay intact */
        "Topics": [
          { "Name": "topic.1", "Properties": {}, "Subscriptions": [ { "Name": "subscription.1", "Rules": [ {} ] } ] }
        ]
      }
    ],
    "Logging": { "Type": "File" }
  }
}"#;

    #[test]
    fn the_emulator_sample_translates_with_warnings_naming_what_is_ignored() {
        let (toml, warnings) = to_toml(SAMPLE).unwrap();
        assert!(
            toml.contains("lock_duration_ms = 60000\nmax_delivery_count = 3\n")
                && toml.contains("default_message_ttl_ms = 3600000")
                && toml.contains("duplicate_detection_window_ms = 20000")
                && toml.contains("dead_lettering_on_message_expiration = false"),
            "{toml}"
        );
        assert!(toml.contains("RootManageSharedAccessKey"));
        let all = warnings.join("\n");
        assert!(!all.contains("LockDuration"), "{all}");
        assert!(!all.contains("RequiresSession"), "{all}");
        assert!(toml.contains("requires_session = false"), "{toml}");
        assert!(toml.contains("[[topics]]\nname = \"topic.1\""), "{toml}");
        assert!(
            toml.contains("[[topics.subscriptions]]\nname = \"subscription.1\""),
            "{toml}"
        );
        assert!(!all.contains("topic"), "topics are supported: {all}");
    }

    #[test]
    fn rules_of_both_kinds_become_rules() {
        let json = r#"{"UserConfig":{"Namespaces":[{"Name":"sbemulatorns","Topics":[{
          "Name":"t","Properties":{"DefaultMessageTimeToLive":"PT1H"},
          "Subscriptions":[{"Name":"s","Properties":{"LockDuration":"PT1M","MaxDeliveryCount":3},
            "Rules":[
              {"Name":"sql","Properties":{"FilterType":"Sql","SqlFilter":{"SqlExpression":"a = 'b'"}}},
              {"Name":"corr","Properties":{"FilterType":"Correlation",
                "CorrelationFilter":{"CorrelationId":"id-1","Properties":{"prop1":"v1","n":2}}}}
            ]}]}]}]}}"#;
        let (toml, warnings) = to_toml(json).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(toml.contains("sql = \"a = 'b'\""), "{toml}");
        assert!(toml.contains("correlation_id = \"id-1\""), "{toml}");
        assert!(
            toml.contains("properties = { \"n\" = 2, \"prop1\" = \"v1\" }"),
            "{toml}"
        );
        let c: crate::config::Config = config::Config::builder()
            .add_source(config::File::from_str(&toml, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        let specs = crate::topology::topic_specs(&c.topics).unwrap();
        assert_eq!(specs[0].subscriptions[0].1.rules.len(), 2);
        assert_eq!(specs[0].config.default_ttl_ms, 3_600_000);
    }

    #[test]
    fn iso_durations() {
        assert_eq!(iso_duration_ms("PT1M"), Some(60_000));
        assert_eq!(iso_duration_ms("PT5S"), Some(5_000));
        assert_eq!(iso_duration_ms("P1DT1H"), Some(90_000_000));
        assert_eq!(iso_duration_ms("PT0.5S"), Some(500));
        assert_eq!(iso_duration_ms("PT"), None);
        assert_eq!(iso_duration_ms("1M"), None);
        assert_eq!(iso_duration_ms("PT5X"), None);
    }

    #[test]
    fn comments_inside_strings_survive() {
        assert_eq!(
            strip_comments(r#"{"a": "sb://x" // c"#),
            "{\"a\": \"sb://x\" "
        );
        assert_eq!(strip_comments("[1, /* two */ 3]"), "[1,  3]");
    }

    #[test]
    fn bad_values_name_the_item() {
        let bad = r#"{"UserConfig":{"Namespaces":[{"Queues":[{"Name":"q","Properties":{"MaxDeliveryCount":"x"}}]}]}}"#;
        let e = to_toml(bad).unwrap_err().to_string();
        assert!(e.contains("queue 'q': property MaxDeliveryCount"), "{e}");
    }
}
