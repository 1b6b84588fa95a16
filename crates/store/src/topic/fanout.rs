//! Fan-out: which subscriptions take a message and how (shared, changed by a rule action,
//! dead-lettered, or published onward), and whether they all have room for it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use ferrobus_filter::{select, Change, SystemProperty, Target};

use super::{Topic, FILTER_EVALUATION_FAILED};
use crate::{NewMessage, StoreError};

/// A copy's SessionId when a rule action changed it: `Some(None)` when it removed it.
pub(super) type SessionChange = Option<Option<Arc<str>>>;

/// One copy of a message for a subscription.
pub(super) enum CopyKind {
    /// The producer's bytes, in the topic's shared body.
    Shared,
    /// A copy a rule action changed: bytes of its own (and its SessionId, if the action
    /// changed that).
    Changed(Bytes, SessionChange),
    /// Straight to the dead-letter sub-queue (a rule failed), sharing the body.
    Dead(String, String),
    /// Published to the topic the subscription forwards to (index into `onward`).
    Onward(usize, Bytes, SessionChange),
}

/// Where one message goes: per subscription, the copies it gets.
pub(super) type Fanout = Vec<(usize, CopyKind)>;

/// The SessionId of a copy of a message sent with `sent`.
pub(super) fn session_of(kind: &CopyKind, sent: &Option<Arc<str>>) -> Option<Arc<str>> {
    match kind {
        CopyKind::Changed(_, Some(s)) | CopyKind::Onward(_, _, Some(s)) => s.clone(),
        _ => sent.clone(),
    }
}

/// What a rule action's changes do to the SessionId, if they touch it (the last change wins;
/// the broker writes the value as text, as it does in the copy's properties).
fn session_change(changes: &[Change]) -> SessionChange {
    let mut out = None;
    for c in changes {
        match c {
            Change::Set(Target::System(SystemProperty::SessionId), v) => {
                out = Some(v.system_text().map(Arc::from))
            }
            Change::Remove(Target::System(SystemProperty::SessionId)) => out = Some(None),
            _ => {}
        }
    }
    out
}

impl Topic {
    /// Which subscriptions take a message, and how (a dead-letter reason for a copy whose rules
    /// failed to evaluate, in a subscription that dead-letters those).
    pub(super) fn fan_out(&self, payload: &Bytes) -> Fanout {
        let started = std::time::Instant::now();
        let out = self.select(payload);
        let ns = started.elapsed().as_nanos() as u64;
        self.stats.filter_ns.fetch_add(ns, Ordering::Relaxed);
        out
    }

    fn select(&self, payload: &Bytes) -> Fanout {
        let view = (self.view)(payload);
        let mut out = Vec::new();
        for (i, s) in self.subs.iter().enumerate() {
            let rules = s.rules();
            let sel = select(&rules, view.as_ref());
            let mut failed: Option<String> = sel
                .errors
                .first()
                .map(|(rule, e)| format!("rule '{}' could not be evaluated: {e}", rule.name));
            let mut copies = 0;
            // a forwarded copy is stored in the destination queue with a body of its own
            let forwarded = s.target != i;
            // a copy for another topic is published there, made with the bytes it carries
            let own = |bytes: Bytes, session: SessionChange| match s.onward {
                Some(o) => CopyKind::Onward(o, bytes, session),
                None => CopyKind::Changed(bytes, session),
            };
            if sel.plain {
                let kind = if forwarded || s.onward.is_some() {
                    own(payload.clone(), None)
                } else {
                    CopyKind::Shared
                };
                out.push((s.target, kind));
                copies += 1;
            }
            for (rule, changes) in &sel.with_actions {
                match (self.rewrite)(payload, &rule.name, changes) {
                    Ok(bytes) => {
                        out.push((s.target, own(bytes, session_change(changes))));
                        copies += 1;
                    }
                    Err(e) => {
                        failed
                            .get_or_insert(format!("rule '{}': its action failed: {e}", rule.name));
                    }
                }
            }
            if let (0, true, Some(why)) = (copies, s.dead_letter_on_filter_errors, failed) {
                out.push((i, CopyKind::Dead(FILTER_EVALUATION_FAILED.to_string(), why)));
            }
        }
        out
    }

    /// Refuses a group if a subscription it goes to has no room for it.
    pub(super) fn check_room(&self, group: &[(NewMessage, Fanout)]) -> Result<(), StoreError> {
        let mut incoming = vec![0u64; self.targets.len()];
        for (m, fanout) in group {
            for (i, _) in fanout {
                incoming[*i] += m.payload.len() as u64;
            }
        }
        for (q, n) in self.targets.iter().zip(incoming) {
            if n > 0 {
                q.check_room(n)?;
            }
        }
        // a copy for an entity that requires sessions needs a session id
        for (m, fanout) in group {
            let missing = fanout.iter().find(|(i, k)| {
                self.targets[*i].requires_session()
                    && !matches!(k, CopyKind::Dead(..))
                    && session_of(k, &m.session_id).is_none()
            });
            if let Some((i, _)) = missing {
                return Err(self.targets[*i].session_required());
            }
        }
        Ok(())
    }
}
