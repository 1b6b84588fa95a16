//! The Service Bus emulator's `Config.json`, accepted as is.
//!
//! The file is JSON with `//` (and `/* */`) comments. It is translated into our TOML, so the
//! environment and command-line layers apply to it exactly as to a TOML file. It replaces
//! the default entity set and keeps the emulator's key rule (`RootManageSharedAccessKey` /
//! `SAS_KEY_VALUE`). Whatever Ferrobus does not support yet is named in a warning.

use serde_json::Value;

/// Emulator properties that Ferrobus does not apply yet, with the value that means "off".
const NOT_YET: &[(&str, Option<&str>)] = &[
    ("ForwardDeadLetteredMessagesTo", Some("\"\"")),
    ("ForwardTo", Some("\"\"")),
    ("RequiresSession", Some("false")),
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
        let ns_name = ns.get("Name").and_then(Value::as_str).unwrap_or("?");
        for (i, q) in array(ns, "Queues").iter().enumerate() {
            let name = q.get("Name").and_then(Value::as_str).ok_or_else(|| {
                anyhow::anyhow!("Config.json: Namespaces[{n}].Queues[{i}].Name is missing")
            })?;
            let mut keys: Vec<String> = Vec::new();
            if let Some(props) = q.get("Properties").and_then(Value::as_object) {
                for (key, value) in props {
                    let item = format!("queue '{name}': property {key}");
                    if key == "MaxDeliveryCount" {
                        let v = value
                            .as_u64()
                            .filter(|v| (1..=u32::MAX as u64).contains(v))
                            .ok_or_else(|| {
                                anyhow::anyhow!("Config.json: {item} must be a positive integer")
                            })?;
                        keys.push(format!("max_delivery_count = {v}"));
                    } else if let Some((_, ours)) = DURATIONS.iter().find(|(k, _)| k == key) {
                        let ms = value
                            .as_str()
                            .and_then(iso_duration_ms)
                            .filter(|ms| *ms >= 1000)
                            .ok_or_else(|| {
                                anyhow::anyhow!("Config.json: {item} must be an ISO-8601 duration of at least 1 s, like PT1M")
                            })?;
                        keys.push(format!("{ours} = {ms}"));
                    } else if let Some((_, ours)) = FLAGS.iter().find(|(k, _)| k == key) {
                        let b = value.as_bool().ok_or_else(|| {
                            anyhow::anyhow!("Config.json: {item} must be true or false")
                        })?;
                        keys.push(format!("{ours} = {b}"));
                    } else if let Some((_, off)) = NOT_YET.iter().find(|(k, _)| k == key) {
                        if off.is_none_or(|off| *value.to_string() != *off) {
                            warnings.push(format!(
                                "Config.json: {item} = {value} is not supported yet and is ignored"
                            ));
                        }
                    } else {
                        warnings.push(format!("Config.json: {item} is unknown and is ignored"));
                    }
                }
            }
            toml.push_str(&format!("[[queues]]\nname = {}\n", toml_string(name)));
            for k in keys {
                toml.push_str(&k);
                toml.push('\n');
            }
            toml.push('\n');
        }
        for t in array(ns, "Topics") {
            let topic = t.get("Name").and_then(Value::as_str).unwrap_or("?");
            warnings.push(format!(
                "Config.json: topic '{topic}' in namespace '{ns_name}' is not supported yet and is not created"
            ));
            for s in array(t, "Subscriptions") {
                let sub = s.get("Name").and_then(Value::as_str).unwrap_or("?");
                let rules = array(s, "Rules").len();
                warnings.push(format!(
                    "Config.json: subscription '{topic}/{sub}' ({rules} rules) is not supported yet and is not created"
                ));
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
        assert!(
            !all.contains("RequiresSession"),
            "off values need no warning: {all}"
        );
        assert!(all.contains("topic 'topic.1'"));
        assert!(all.contains("subscription 'topic.1/subscription.1' (1 rules)"));
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
