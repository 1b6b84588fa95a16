//! Time to live: available messages whose time ran out are dead-lettered or dropped, and
//! message-ids leave the duplicate-detection window.

use std::sync::atomic::Ordering;

use super::lane::LaneState;
use super::{load_entries, Entry, Lane, Queue, LANE_ACTIVE, LANE_DEAD, TTL_EXPIRED};
use crate::keys;
use crate::storage::{Batch, Cf};

impl Queue {
    /// What happens to an available message whose time to live ended: it goes to the
    /// dead-letter sub-queue (`TTLExpiredException`) or away. The writes join `pending`.
    pub(super) fn expire(
        &self,
        mut entry: Entry,
        dead: &mut LaneState,
        bytes: &mut u64,
        pending: &mut Batch,
    ) {
        self.expired.fetch_add(1, Ordering::Relaxed);
        let seq = entry.msg.seq;
        let active = keys::ref_key(self.id, LANE_ACTIVE, seq);
        if self.config.dead_letter_on_expiration {
            entry.dead_letter_reason = Some(TTL_EXPIRED.into());
            entry.dead_letter_description = Some("the message's time to live expired".into());
            pending.delete(Cf::Ref, active);
            pending.put(
                Cf::Ref,
                keys::ref_key(self.id, LANE_DEAD, seq),
                entry.ref_record().encode(),
            );
            dead.push(entry, false);
        } else {
            *bytes -= entry.msg.payload.len() as u64;
            self.drop_body(pending, &entry);
            pending.delete(Cf::Ref, active);
        }
    }

    /// Expires every available message whose time to live ended by `now` (ms), and forgets
    /// message-ids older than the duplicate-detection window.
    pub fn expire_messages(&self, now: i64) {
        let mut pending = Batch::default();
        let mut guard = self.lock();
        let st = &mut *guard;
        let mut on_disk = Vec::new();
        let mut expired = Vec::new();
        while let Some(&(at, seq)) = st.expiring.first() {
            if at > now {
                break;
            }
            st.expiring.pop_first();
            // a session entity's available message is in its session's lane
            let session = st.sessions.of.remove(&seq);
            let lane = match &session {
                None => Some(&mut st.main),
                Some(s) => st.sessions.map.get_mut(s).map(|slot| &mut slot.lane),
            };
            match lane.and_then(|l| l.take(seq)) {
                Some(Some(e)) => expired.push(e),
                Some(None) => on_disk.push((seq, session.clone())),
                None => {}
            }
            if let Some(s) = &session {
                st.sessions.tidy(s);
            }
        }
        let seqs: Vec<u64> = on_disk.iter().map(|(s, _)| *s).collect();
        match load_entries(self.storage.as_ref(), self.id, LANE_ACTIVE, &seqs) {
            Ok(es) => expired.extend(es),
            Err(e) => {
                tracing::warn!(queue = %self.name, error = %e, "reading expired messages failed");
                for (seq, session) in on_disk {
                    match session {
                        None => st.main.push_spilled(seq),
                        Some(s) => st.sessions.recover(s, seq),
                    }
                }
            }
        }
        let moved = !expired.is_empty() && self.config.dead_letter_on_expiration;
        for e in expired {
            self.expire(e, &mut st.dead, &mut st.bytes, &mut pending);
        }
        if moved {
            self.dispatch(st, Lane::DeadLetter, &mut pending);
        }
        if self.config.duplicate_detection_ms > 0 {
            for id in st.dedup.prune(now, self.config.duplicate_detection_ms) {
                pending.delete(Cf::Dedup, keys::dedup_key(self.id, &id));
            }
        }
        self.write_in_background(pending);
    }
}
