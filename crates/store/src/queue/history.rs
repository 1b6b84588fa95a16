//! Duplicate detection: the message-ids a queue saw within its window.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use crate::keys;
use crate::storage::{Batch, Cf, Storage};
use crate::StoreError;

/// Message-ids by first-seen time (ms).
#[derive(Default)]
pub(crate) struct History {
    seen: HashMap<Vec<u8>, i64>,
    order: VecDeque<(i64, Vec<u8>)>,
}

impl History {
    /// The history of entity `id` as stored, keeping ids seen less than `window` ms before
    /// `now`; the keys of older ones are put in `stale` for deletion.
    pub fn load(
        storage: &dyn Storage,
        id: u64,
        window: u64,
        now: i64,
        stale: &mut Batch,
    ) -> Result<History, StoreError> {
        let mut h = History::default();
        if window == 0 {
            return Ok(h);
        }
        let (lo, hi) = keys::id_range(id);
        let mut ids = Vec::new();
        storage.for_each(Cf::Dedup, &lo, &hi, &mut |k, v| {
            let at = <[u8; 8]>::try_from(v).map(i64::from_be_bytes).unwrap_or(0);
            if now - at < window as i64 {
                ids.push((at, k[8..].to_vec()));
            } else {
                stale.delete(Cf::Dedup, k.to_vec());
            }
            Ok(())
        })?;
        ids.sort();
        for (at, message_id) in ids {
            h.record(message_id, at);
        }
        Ok(h)
    }

    /// Whether a message with `message_id` arriving `now` at entity `id` is a duplicate; if
    /// not, it is remembered (in memory, and in `batch`).
    pub fn admit(
        &mut self,
        id: u64,
        message_id: &[u8],
        now: i64,
        window: u64,
        batch: &mut Batch,
    ) -> bool {
        if self.seen(message_id, now, window) {
            return false;
        }
        self.record(message_id.to_vec(), now);
        batch.put(
            Cf::Dedup,
            keys::dedup_key(id, message_id),
            Bytes::copy_from_slice(&now.to_be_bytes()),
        );
        true
    }

    /// True if `id` was seen less than `window` ms before `now`.
    pub fn seen(&self, id: &[u8], now: i64, window: u64) -> bool {
        self.seen.get(id).is_some_and(|t| now - t < window as i64)
    }

    /// Remembers `id` as seen at `at`.
    pub fn record(&mut self, id: Vec<u8>, at: i64) {
        self.seen.insert(id.clone(), at);
        self.order.push_back((at, id));
    }

    /// Forgets ids older than `window` ms; returns them (their stored keys can go).
    pub fn prune(&mut self, now: i64, window: u64) -> Vec<Vec<u8>> {
        let mut gone = Vec::new();
        while let Some((at, _)) = self.order.front() {
            if now - at < window as i64 {
                break;
            }
            let (at, id) = self.order.pop_front().expect("front exists");
            if self.seen.get(&id) == Some(&at) {
                self.seen.remove(&id);
                gone.push(id);
            }
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_duplicates_within_the_window_only() {
        let mut h = History::default();
        h.record(b"a".to_vec(), 1000);
        assert!(h.seen(b"a", 1500, 1000));
        assert!(!h.seen(b"a", 2000, 1000));
        assert!(!h.seen(b"b", 1500, 1000));
        assert_eq!(h.prune(1999, 1000), Vec::<Vec<u8>>::new());
        assert_eq!(h.prune(2000, 1000), vec![b"a".to_vec()]);
        assert!(!h.seen(b"a", 2000, 1000));
    }
}
