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
//! lane (receivable there) and are tried again on the next sweep. Forwarding that could bring
//! a dead letter back to an entity it was dead-lettered in is refused at start-up
//! ([`refuse_circles`]), so no message goes round for ever.

use std::collections::{HashMap, VecDeque};
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

/// Refuses dead-letter forwarding that could bring a message back to an entity it was
/// dead-lettered in (directly, through `ForwardTo`, or through a topic's subscriptions): such a
/// message could go round for ever, e.g. expiring again wherever it arrives.
pub(crate) fn refuse_circles(forwards: &[DeadLetterForward]) -> Result<(), crate::StoreError> {
    let key = |q: &Queue| q.name().to_ascii_lowercase();
    let edges: HashMap<String, Vec<Arc<Queue>>> = forwards
        .iter()
        .map(|f| (key(&f.from), landings(&f.to)))
        .collect();
    let mut starts: Vec<&DeadLetterForward> = forwards.iter().collect();
    starts.sort_by_key(|f| key(&f.from));
    for f in starts {
        let start = key(&f.from);
        // breadth first, remembering how each entity was reached
        let mut came_from: HashMap<String, String> = HashMap::new();
        let mut queue: VecDeque<String> = VecDeque::from([start.clone()]);
        while let Some(at) = queue.pop_front() {
            for next in edges.get(&at).into_iter().flatten() {
                let n = key(next);
                if n == start {
                    let mut path = vec![n, at.clone()];
                    let mut back = at.clone();
                    while let Some(prev) = came_from.get(&back) {
                        path.push(prev.clone());
                        back = prev.clone();
                    }
                    path.reverse();
                    return Err(crate::StoreError::Invalid(format!(
                        "dead-lettered messages would be forwarded round in a circle: {}",
                        path.join(" -> ")
                    )));
                }
                if n != start && !came_from.contains_key(&n) {
                    came_from.insert(n.clone(), at.clone());
                    queue.push_back(n);
                }
            }
        }
    }
    Ok(())
}

/// The queues and subscriptions a message sent to `target` can be stored in.
fn landings(target: &SendTarget) -> Vec<Arc<Queue>> {
    match target {
        SendTarget::Queue(q) => vec![q.clone()],
        SendTarget::Topic(t) => t.landings(),
    }
}
