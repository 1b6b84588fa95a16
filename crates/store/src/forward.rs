//! Forwarding dead-letter sub-queues (`ForwardDeadLetteredMessagesTo`).
//!
//! A message dead-lettered in an entity that forwards its dead letters lands in its
//! dead-letter lane as usual (durably, by whatever dead-lettered it: a client, the delivery
//! count, its time to live, a failing filter). [`DeadLetterForward::run`], called by the
//! broker's periodic sweep and so also right after start-up, then moves what the lane holds
//! to the destination: one batch removes each message from the lane and stores it at the
//! destination (a queue, or a topic's matching subscriptions), so a crash leaves it in one
//! place or the other, never both and never neither. The destination sees the producer's
//! bytes, with the dead-letter reason, description and source entity.
//!
//! A destination that has no room refuses the batch: the messages stay in the dead-letter
//! lane (receivable there) and are tried again on the next sweep.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::queue::Queue;
use crate::registry::SendTarget;
use crate::storage::Batch;
use crate::NewMessage;

/// Messages moved per batch.
pub const FORWARD_BATCH: usize = 256;

/// One entity whose dead-letter sub-queue forwards, and where to.
pub(crate) struct DeadLetterForward {
    pub from: Arc<Queue>,
    pub to: SendTarget,
    /// The destination refused the last batch (logged once until it takes one again).
    blocked: AtomicBool,
}

impl DeadLetterForward {
    pub fn new(from: Arc<Queue>, to: SendTarget) -> Self {
        DeadLetterForward {
            from,
            to,
            blocked: AtomicBool::new(false),
        }
    }

    /// Moves everything the dead-letter lane holds now, [`FORWARD_BATCH`] messages per batch.
    pub fn run(&self) {
        loop {
            let moved = self.from.take_dead(FORWARD_BATCH);
            if moved.is_empty() {
                return;
            }
            let more = moved.len() == FORWARD_BATCH;
            let messages: Vec<NewMessage> = moved
                .iter()
                .map(|e| self.from.forwarded_message(e))
                .collect();
            let mut batch = Batch::default();
            let staged = match self.stage(messages, &mut batch) {
                Ok(staged) => staged,
                Err(why) => {
                    if !self.blocked.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            queue = %self.from.name(),
                            reason = %why,
                            "dead-lettered messages cannot be forwarded now; they stay in the dead-letter queue and are tried again"
                        );
                    }
                    self.from.return_dead(moved);
                    return;
                }
            };
            if self.blocked.swap(false, Ordering::Relaxed) {
                tracing::info!(queue = %self.from.name(), "forwarding dead-lettered messages again");
            }
            self.from.stage_removal(&moved, &mut batch);
            self.from.write_forwarding(batch, moved, staged);
            if !more {
                return;
            }
        }
    }

    /// Stages `messages` at the destination; returns what to do once the batch is written
    /// (made visible, or taken back), or why the destination refused them.
    fn stage(
        &self,
        messages: Vec<NewMessage>,
        batch: &mut Batch,
    ) -> Result<Box<dyn FnOnce(bool) + Send>, crate::StoreError> {
        match &self.to {
            SendTarget::Queue(q) => {
                let (mut outcome, staged) = q.stage_groups(vec![messages], batch);
                outcome.pop().expect("one group")?;
                let q = q.clone();
                Ok(Box::new(move |written| {
                    if written {
                        q.commit_enqueued(staged)
                    } else {
                        q.forget_enqueued(&staged)
                    }
                }))
            }
            SendTarget::Topic(t) => {
                let (mut outcome, staged) = t.stage(vec![messages], batch);
                outcome.pop().expect("one group")?;
                let t = t.clone();
                Ok(Box::new(move |written| {
                    if written {
                        t.commit(staged)
                    } else {
                        t.forget(staged)
                    }
                }))
            }
        }
    }
}
