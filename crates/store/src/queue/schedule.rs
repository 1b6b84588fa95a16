//! Scheduled messages: stored at once, available at their time.

use std::sync::Arc;

use super::{Batch, Cf, Completion, Entry, Lane, Queue, StoreError, LANE_ACTIVE, LANE_SCHEDULED};
use crate::keys::{self, RefRecord};

impl Queue {
    /// Holds committed messages until their time.
    pub(crate) fn add_scheduled(&self, items: Vec<(Entry, Option<i64>)>) {
        if items.is_empty() {
            return;
        }
        let mut st = self.lock();
        for (e, at) in items {
            let at = at.unwrap_or(0);
            st.due.insert((at, e.msg.seq));
            st.scheduled.insert(e.msg.seq, (e, at));
        }
    }

    /// Makes every scheduled message due at or before `now` (ms) available.
    pub fn release_due(self: &Arc<Self>, now: i64) {
        let mut batch = Batch::default();
        let mut ready = Vec::new();
        {
            let mut guard = self.lock();
            let st = &mut *guard;
            while let Some(&(at, seq)) = st.due.first() {
                if at > now {
                    break;
                }
                st.due.pop_first();
                if let Some((e, _)) = st.scheduled.remove(&seq) {
                    batch.delete(Cf::Ref, keys::ref_key(self.id, LANE_SCHEDULED, seq));
                    let r = RefRecord {
                        scheduled_ms: None,
                        ..e.ref_record()
                    };
                    batch.put(
                        Cf::Ref,
                        keys::ref_key(self.id, LANE_ACTIVE, seq),
                        r.encode(),
                    );
                    ready.push(e);
                }
            }
        }
        if ready.is_empty() {
            return;
        }
        let me = self.clone();
        // on a write failure the messages still become available (nothing is lost); after a
        // restart they would be scheduled again, already due
        self.write(
            batch,
            Box::new(move |_| me.make_available(Lane::Main, ready, true)),
        );
    }

    /// Cancels scheduled messages. All or nothing: a number that is not scheduled is
    /// [`StoreError::NotFound`].
    pub fn cancel_scheduled(self: &Arc<Self>, seqs: &[u64], done: Completion<()>) {
        let mut batch = Batch::default();
        {
            let mut guard = self.lock();
            let st = &mut *guard;
            if let Some(missing) = seqs.iter().find(|s| !st.scheduled.contains_key(s)) {
                drop(guard);
                return done(Err(StoreError::NotFound(format!(
                    "no scheduled message with sequence number {missing}"
                ))));
            }
            for seq in seqs {
                if let Some((e, at)) = st.scheduled.remove(seq) {
                    st.due.remove(&(at, *seq));
                    st.bytes -= e.msg.payload.len() as u64;
                    self.drop_body(&mut batch, &e);
                    batch.delete(Cf::Ref, keys::ref_key(self.id, LANE_SCHEDULED, *seq));
                }
            }
        }
        self.write(batch, done);
    }
}
