//! Correlation filters: equality on a fixed set of system properties and any application
//! properties, all of which must hold.

use crate::value::correlation_equal;
use crate::{Message, SystemProperty, Value};

/// A correlation filter. Every field that is set must equal the message's value; unset
/// fields are ignored. System fields compare as strings, exactly (case-sensitive). An
/// application property matches when the message has a property of that name
/// (case-insensitively) with an equal value: same kind and value, `long` and `double`
/// compared after promotion, never equal across other kinds; a `Value::Null` in the filter
/// asks for the property to be absent or null. A filter with no field set matches every
/// message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CorrelationFilter {
    /// `sys.CorrelationId`.
    pub correlation_id: Option<String>,
    /// `sys.MessageId`.
    pub message_id: Option<String>,
    /// `sys.To`.
    pub to: Option<String>,
    /// `sys.ReplyTo`.
    pub reply_to: Option<String>,
    /// `sys.Label` (AMQP `subject`; the add-rule map calls it `label`).
    pub label: Option<String>,
    /// `sys.SessionId`.
    pub session_id: Option<String>,
    /// `sys.ReplyToSessionId`.
    pub reply_to_session_id: Option<String>,
    /// `sys.ContentType`.
    pub content_type: Option<String>,
    /// Application properties and the values they must have.
    pub properties: Vec<(String, Value)>,
}

impl CorrelationFilter {
    /// A filter on the correlation id alone.
    pub fn correlation_id(id: impl Into<String>) -> Self {
        CorrelationFilter {
            correlation_id: Some(id.into()),
            ..Self::default()
        }
    }

    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        self.system_fields().iter().all(|(_, v)| v.is_none()) && self.properties.is_empty()
    }

    fn system_fields(&self) -> [(SystemProperty, &Option<String>); 8] {
        use SystemProperty as S;
        [
            (S::CorrelationId, &self.correlation_id),
            (S::MessageId, &self.message_id),
            (S::To, &self.to),
            (S::ReplyTo, &self.reply_to),
            (S::Label, &self.label),
            (S::SessionId, &self.session_id),
            (S::ReplyToSessionId, &self.reply_to_session_id),
            (S::ContentType, &self.content_type),
        ]
    }

    /// Whether the message matches. Never fails.
    pub fn matches(&self, msg: &dyn Message) -> bool {
        let system_ok = self
            .system_fields()
            .into_iter()
            .all(|(p, wanted)| match wanted {
                None => true,
                Some(w) => matches!(msg.system(p), Some(Value::String(s)) if s == *w),
            });
        system_ok
            && self
                .properties
                .iter()
                .all(|(name, v)| correlation_equal(v, msg.user(name).as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PropertyBag;
    use SystemProperty as S;

    #[test]
    fn docs_example() {
        // Label = "Important", ReplyTo = "johndoe@contoso.com", Properties["color"] = "Red".
        let filter = CorrelationFilter {
            label: Some("Important".into()),
            reply_to: Some("johndoe@contoso.com".into()),
            properties: vec![("color".into(), "Red".into())],
            ..Default::default()
        };
        let msg = PropertyBag::new()
            .with_system(S::Label, "Important")
            .with_system(S::ReplyTo, "johndoe@contoso.com")
            .with_user("Color", "Red");
        assert!(filter.matches(&msg));
        assert!(!filter.matches(&msg.clone().with_user("color", "red")));
        assert!(!filter.matches(&msg.clone().with_system(S::Label, "important")));
        let mut no_label = msg.clone();
        no_label.set_system(S::Label, Value::Null);
        assert!(!filter.matches(&no_label));
        assert!(!filter.matches(&PropertyBag::new()));
    }

    #[test]
    fn unset_fields_are_ignored_and_empty_matches_all() {
        let f = CorrelationFilter::correlation_id("Contoso");
        assert!(f.matches(&PropertyBag::new().with_system(S::CorrelationId, "Contoso")));
        assert!(!f.matches(&PropertyBag::new().with_system(S::CorrelationId, "contoso")));
        assert!(!f.is_empty());
        assert!(CorrelationFilter::default().is_empty());
        assert!(CorrelationFilter::default().matches(&PropertyBag::new()));
    }

    #[test]
    fn property_values_of_other_kinds() {
        let f = CorrelationFilter {
            properties: vec![
                ("n".into(), 10.into()),
                ("b".into(), true.into()),
                ("gone".into(), Value::Null),
            ],
            ..Default::default()
        };
        let msg = PropertyBag::new().with_user("n", 10.0).with_user("b", true);
        assert!(f.matches(&msg));
        assert!(!f.matches(&msg.clone().with_user("n", "10")));
        assert!(!f.matches(&msg.clone().with_user("gone", 1)));
        assert!(f.matches(&msg.clone().with_user("gone", Value::Null)));
    }
}
