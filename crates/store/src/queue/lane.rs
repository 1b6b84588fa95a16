//! One lane of a queue (its main lane or its dead-letter lane): the available messages, split
//! into a bounded in-memory window and the sequence numbers of those that live only on disk.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use super::{ConsumerSink, Entry, ReceiveMode};
use crate::StoreError;

/// Messages a lane keeps in memory ahead of its consumers.
pub(super) const WINDOW_MESSAGES: usize = 512;
/// Payload bytes a lane keeps in memory ahead of its consumers.
pub(super) const WINDOW_BYTES: usize = 8 * 1024 * 1024;

/// Reads the given spilled messages back from storage.
pub(super) type Loader<'a> = &'a dyn Fn(&[u64]) -> Result<Vec<Entry>, StoreError>;

pub(super) struct Consumer {
    pub id: u64,
    pub mode: ReceiveMode,
    pub credit: u32,
    pub delivery_count: u32,
    pub sink: Arc<dyn ConsumerSink>,
}

#[derive(Default)]
pub(super) struct LaneState {
    /// Available messages held in memory, by sequence number.
    window: BTreeMap<u64, Entry>,
    window_bytes: usize,
    /// Available messages whose body is only on disk, in sequence order; all of them come
    /// after every fresh message in the window.
    spilled: VecDeque<u64>,
    pub consumers: Vec<Consumer>,
    /// Where the round robin over consumers resumes.
    pub next: usize,
}

impl LaneState {
    /// Available messages.
    pub fn len(&self) -> usize {
        self.window.len() + self.spilled.len()
    }

    pub fn is_empty(&self) -> bool {
        self.window.is_empty() && self.spilled.is_empty()
    }

    /// A message on disk only (recovery).
    pub fn push_spilled(&mut self, seq: u64) {
        let pos = self.spilled.partition_point(|s| *s < seq);
        self.spilled.insert(pos, seq);
    }

    /// Makes a message available. A `fresh` one (just enqueued) stays in memory only while
    /// the window has room and nothing is on disk ahead of it; a returned one (it was locked,
    /// so it is in memory already) always goes back into the window.
    pub fn push(&mut self, e: Entry, fresh: bool) {
        let full = self.window.len() >= WINDOW_MESSAGES || self.window_bytes >= WINDOW_BYTES;
        if fresh && (full || !self.spilled.is_empty()) {
            self.push_spilled(e.msg.seq);
        } else {
            self.window_bytes += e.msg.payload.len();
            self.window.insert(e.msg.seq, e);
        }
    }

    /// Takes the first available message, loading more from disk with `load` when the window
    /// runs low. On a load error the spilled messages stay where they are.
    pub fn pop(&mut self, load: Loader<'_>) -> Result<Option<Entry>, StoreError> {
        // load when the window runs low, or when a returned message sits in the window behind
        // messages on disk (they must come out in order)
        let behind = || match (self.spilled.front(), self.window.first_key_value()) {
            (Some(s), Some((w, _))) => s < w,
            _ => false,
        };
        if !self.spilled.is_empty() && (self.window.len() < WINDOW_MESSAGES / 4 || behind()) {
            let n = (WINDOW_MESSAGES - self.window.len()).min(self.spilled.len());
            let seqs: Vec<u64> = self.spilled.iter().take(n).copied().collect();
            let entries = load(&seqs)?;
            self.spilled.drain(..n);
            for e in entries {
                self.window_bytes += e.msg.payload.len();
                self.window.insert(e.msg.seq, e);
            }
        }
        Ok(self.window.pop_first().map(|(_, e)| {
            self.window_bytes -= e.msg.payload.len();
            e
        }))
    }

    /// Takes message `seq` out of the lane: `Some(Some(entry))` from the window,
    /// `Some(None)` if it was only on disk, `None` if it is not available.
    pub fn take(&mut self, seq: u64) -> Option<Option<Entry>> {
        if let Some(e) = self.window.remove(&seq) {
            self.window_bytes -= e.msg.payload.len();
            return Some(Some(e));
        }
        let pos = self.spilled.binary_search(&seq).ok()?;
        self.spilled.remove(pos);
        Some(None)
    }

    /// Message `seq` if it is in the window.
    pub fn get(&self, seq: u64) -> Option<&Entry> {
        self.window.get(&seq)
    }

    /// Messages in the window from sequence number `from`, in order.
    pub fn window_from(&self, from: u64) -> impl Iterator<Item = &Entry> {
        self.window.range(from..).map(|(_, e)| e)
    }

    /// Sequence numbers of spilled messages from `from`, in order.
    pub fn spilled_from(&self, from: u64) -> impl Iterator<Item = u64> + '_ {
        let start = self.spilled.partition_point(|s| *s < from);
        self.spilled.range(start..).copied()
    }

    /// True while there is something to hand out and someone to take it.
    pub fn dispatchable(&self) -> bool {
        !self.is_empty() && self.consumers.iter().any(|c| c.credit > 0)
    }

    /// The next consumer with credit, round robin.
    pub fn next_consumer(&mut self) -> Option<usize> {
        let n = self.consumers.len();
        let i = (0..n)
            .map(|k| (self.next + k) % n)
            .find(|&i| self.consumers[i].credit > 0)?;
        self.next = (i + 1) % n;
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;
    use bytes::Bytes;

    fn entry(seq: u64) -> Entry {
        Entry {
            shared: None,
            msg: Arc::new(Message {
                seq,
                enqueued_ms: 0,
                expires_ms: None,
                payload: Bytes::from_static(b"x"),
                session: None,
            }),
            delivery_count: 0,
            dead_letter_reason: None,
            dead_letter_description: None,
            dead_letter_source: None,
        }
    }

    #[test]
    fn fresh_messages_spill_past_the_window_and_come_back_in_order() {
        let mut lane = LaneState::default();
        let total = WINDOW_MESSAGES as u64 * 3;
        for seq in 1..=total {
            lane.push(entry(seq), true);
        }
        assert_eq!(lane.window.len(), WINDOW_MESSAGES);
        assert_eq!(lane.len() as u64, total);
        let load = |seqs: &[u64]| Ok(seqs.iter().map(|s| entry(*s)).collect());
        let mut got = vec![];
        while let Some(e) = lane.pop(&load).unwrap() {
            got.push(e.msg.seq);
            assert!(lane.window.len() <= WINDOW_MESSAGES);
        }
        assert_eq!(got, (1..=total).collect::<Vec<_>>());
    }

    #[test]
    fn a_failed_load_keeps_the_spilled_messages() {
        let mut lane = LaneState::default();
        lane.push_spilled(7);
        let fail = |_: &[u64]| Err(StoreError::Storage("boom".into()));
        assert!(lane.pop(&fail).is_err());
        assert_eq!(lane.len(), 1);
    }
}
