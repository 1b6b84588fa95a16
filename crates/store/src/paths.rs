//! Forwarding paths (`ForwardTo`), checked when the entities open.
//!
//! A message may be forwarded by queues (a chain: each queue names the next) and by
//! subscriptions (a topic's copy goes to a queue chain or to another topic, whose own
//! subscriptions may forward again). Every path a message can take must end: no entity is
//! reached twice, and no path is longer than [`MAX_FORWARD_HOPS`] forwards, counting each queue
//! and each subscription that forwards as one. The checks here refuse, with the path in the
//! message, what would break that; they also give each queue chain's end (where a sender's
//! messages are stored) and an order to open the topics in (a topic after every topic it
//! forwards into).

use std::collections::{HashMap, HashSet};

use crate::queue::QueueConfig;
use crate::topic::TopicSpec;
use crate::StoreError;

/// Most entities a message may pass through by forwarding (Service Bus: 4 hops).
pub const MAX_FORWARD_HOPS: usize = 4;

/// A queue chain's end and its length in hops.
#[derive(Debug, Clone)]
pub(crate) struct ChainEnd {
    pub end: String,
    pub hops: usize,
}

/// The end of every queue's forwarding chain, or why the chains cannot be: a destination that
/// does not exist, a queue that forwards to itself, a cycle, or a chain longer than
/// [`MAX_FORWARD_HOPS`]. `exists` tells whether a lower-case name is a queue or a topic.
pub(crate) fn queue_chains(
    declared: &[(String, QueueConfig)],
    exists: &dyn Fn(&str) -> bool,
) -> Result<HashMap<String, ChainEnd>, StoreError> {
    let next: HashMap<String, String> = declared
        .iter()
        .filter_map(|(n, c)| {
            c.forward_to
                .as_ref()
                .map(|f| (n.to_ascii_lowercase(), f.to_ascii_lowercase()))
        })
        .collect();
    let mut ends = HashMap::new();
    // in declaration order, so that a refusal names the same chain on every start
    for (name, _) in declared {
        let start = name.to_ascii_lowercase();
        let Some(first) = next.get(&start) else {
            continue;
        };
        let mut chain = vec![start.clone()];
        let mut at = first.clone();
        loop {
            if !exists(&at) {
                return Err(StoreError::Invalid(format!(
                    "queue '{start}' forwards to '{at}', which is not a queue or topic"
                )));
            }
            if chain.contains(&at) {
                chain.push(at);
                return Err(circle(&chain));
            }
            chain.push(at.clone());
            if chain.len() - 1 > MAX_FORWARD_HOPS {
                return Err(too_long(&chain));
            }
            match next.get(&at) {
                Some(n) => at = n.clone(),
                None => break,
            }
        }
        let hops = chain.len() - 1;
        ends.insert(start, ChainEnd { end: at, hops });
    }
    Ok(ends)
}

fn circle(path: &[String]) -> StoreError {
    StoreError::Invalid(format!(
        "forwarding goes round in a circle: {}",
        path.join(" -> ")
    ))
}

fn too_long(path: &[String]) -> StoreError {
    StoreError::Invalid(format!(
        "forwarding chain longer than {MAX_FORWARD_HOPS} hops: {}",
        path.join(" -> ")
    ))
}

/// Paths through topics: where each subscription's copies go (a queue chain, possibly ending
/// at a topic), checked for circles and length together with the queue chains. Returns the
/// order to open the topics in: each after every topic it forwards into.
pub(crate) fn topic_order(
    topics: &[TopicSpec],
    chains: &HashMap<String, ChainEnd>,
) -> Result<Vec<usize>, StoreError> {
    let index: HashMap<String, usize> = topics
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.to_ascii_lowercase(), i))
        .collect();
    let mut walk = Walk {
        topics,
        chains,
        index: &index,
        depth: HashMap::new(),
        on_path: Vec::new(),
        order: Vec::new(),
    };
    for (i, t) in topics.iter().enumerate() {
        let path = vec![t.name.to_ascii_lowercase()];
        walk.depth_of(i, &path)?;
    }
    // a queue chain that ends at a topic continues through it
    let mut starts: Vec<(&String, &ChainEnd)> = chains.iter().collect();
    starts.sort_by(|a, b| a.0.cmp(b.0));
    for (start, c) in starts {
        if let Some(&t) = index.get(&c.end) {
            let depth = walk.depth[&t];
            if c.hops + depth > MAX_FORWARD_HOPS {
                return Err(too_long(&[
                    start.clone(),
                    format!(
                        "... ({} hops to '{}', {} more after it)",
                        c.hops, c.end, depth
                    ),
                ]));
            }
        }
    }
    Ok(walk.order)
}

/// A depth-first walk over the topics' forwarding.
struct Walk<'a> {
    topics: &'a [TopicSpec],
    chains: &'a HashMap<String, ChainEnd>,
    index: &'a HashMap<String, usize>,
    /// Most forwards a message published to each topic can still go through.
    depth: HashMap<usize, usize>,
    /// The topics being walked, to find circles.
    on_path: Vec<usize>,
    /// Topics whose destinations are all done, in that order.
    order: Vec<usize>,
}

impl Walk<'_> {
    fn depth_of(&mut self, t: usize, path: &[String]) -> Result<usize, StoreError> {
        if let Some(d) = self.depth.get(&t) {
            return Ok(*d);
        }
        if self.on_path.contains(&t) {
            return Err(circle(path));
        }
        self.on_path.push(t);
        let spec = &self.topics[t];
        let mut depth = 0;
        for (sub, c) in &spec.subscriptions {
            let Some(to) = &c.forward_to else {
                continue;
            };
            let to = to.to_ascii_lowercase();
            let mut p = path.to_vec();
            p.push(format!("{}/subscriptions/{}", spec.name, sub).to_ascii_lowercase());
            p.push(to.clone());
            let (end, hops) = match self.chains.get(&to) {
                Some(c) => {
                    if c.end != to {
                        p.push(c.end.clone());
                    }
                    (c.end.clone(), 1 + c.hops)
                }
                None => (to, 1),
            };
            let further = match self.index.get(&end) {
                Some(&next) => self.depth_of(next, &p)?,
                None => 0,
            };
            if hops + further > MAX_FORWARD_HOPS {
                return Err(too_long(&p));
            }
            depth = depth.max(hops + further);
        }
        self.on_path.pop();
        self.depth.insert(t, depth);
        self.order.push(t);
        Ok(depth)
    }
}

/// Lower-case names of the topics and queues declared, for [`queue_chains`].
pub(crate) fn names(queues: &[(String, QueueConfig)], topics: &[TopicSpec]) -> HashSet<String> {
    queues
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .chain(topics.iter().map(|t| t.name.to_ascii_lowercase()))
        .collect()
}
