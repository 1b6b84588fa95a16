//! The `$cbs` node: claims-based security. Clients put SAS tokens with `put-token`; each is
//! validated (signature, key rule, expiry) whatever its `type` says, and answered with
//! `status-code` / `status-description` (200, or 401 for a bad token).

use std::sync::Arc;

use ferrobus_codec::types::primitives::{SimpleValue, Value};

use crate::config::KeyRule;

/// Per connection: the entity paths (lower case, no scheme or host) its tokens cover; an
/// empty path covers the whole namespace.
pub type Grants = Arc<std::sync::Mutex<std::collections::HashMap<u64, Vec<String>>>>;
use crate::nodes::{response, Node, Request, Respond};
use crate::sas;

/// The `$cbs` node.
pub struct Cbs {
    pub keys: Arc<Vec<KeyRule>>,
    /// What each connection's valid tokens cover.
    pub grants: Grants,
    pub metrics: Arc<ferrobus_metrics::Metrics>,
}

impl Node for Cbs {
    fn name(&self) -> &str {
        "$cbs"
    }

    fn handle(&self, req: Request, respond: Respond) {
        let (code, text) = self.put_token(&req);
        if code == 401 {
            self.metrics.auth_failures.inc();
        }
        respond(response(
            req.message_id.clone(),
            vec![
                ("status-code", SimpleValue::Int(code)),
                ("status-description", SimpleValue::String(text)),
            ],
            Value::Null,
        ))
    }
}

impl Cbs {
    fn put_token(&self, req: &Request) -> (i32, String) {
        match req.text("operation") {
            Some("put-token") => {}
            other => return (400, format!("unsupported $cbs operation {other:?}")),
        }
        let Value::String(token) = &req.body else {
            return (
                400,
                "the put-token body must be the token as a string".into(),
            );
        };
        if !token.starts_with(sas::PREFIX) {
            // classified by content, never by `type` (Python labels SAS tokens "jwt")
            return (401, "only SharedAccessSignature tokens are accepted".into());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        match sas::validate(token, &self.keys, now) {
            Ok(g) => {
                tracing::debug!(resource = %g.resource, key = %g.key_name, "token accepted");
                let scope = ferrobus_store::registry::strip_authority(&g.resource)
                    .trim_matches('/')
                    .to_ascii_lowercase();
                self.grants
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(req.connection)
                    .or_default()
                    .push(scope);
                (200, "OK".into())
            }
            Err(why) => {
                tracing::info!(reason = %why, "token refused");
                (401, format!("unauthorized: {why}"))
            }
        }
    }
}
