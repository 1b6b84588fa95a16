//! Duplicate detection: the message-ids a queue saw within its window.

use std::collections::{HashMap, VecDeque};

/// Message-ids by first-seen time (ms).
#[derive(Default)]
pub(super) struct History {
    seen: HashMap<Vec<u8>, i64>,
    order: VecDeque<(i64, Vec<u8>)>,
}

impl History {
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
