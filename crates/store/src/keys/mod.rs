//! The one place that knows how keys and records are laid out.
//!
//! Every integer in a key is fixed-width big-endian, so byte order equals numeric order;
//! entity names appear only in `meta` (name -> id), never in message keys.
//!
//! | CF | key | value |
//! |---|---|---|
//! | meta | `E` + entity name | entity id (u64) |
//! | meta | `N` + entity id | last sequence number assigned (u64, `Max` op) |
//! | body | owner id (u64) + seq (u64) | [`BodyRecord`] |
//! | ref | consumer id (u64) + lane (u8) + seq (u64) | [`RefRecord`] |
//! | meta | `R` + subscription id + rule name (lower case) | [`rules::encode_rule`] |
//! | meta | `C` + subscription id | the subscription's rules as last declared in the configuration |
//! | meta | `F` + topic id + topic seq | a scheduled message's forwarded copies ([`ForwardedSchedule`]) |
//! | session | entity id (u64) + session id (UTF-8) | the session's state (the client's bytes) |
//!
//! A topic's message has one body, at the topic's id and the topic's sequence number, and one
//! reference per subscription copy; each reference names that body
//! ([`RefRecord::shared_body`]) and carries the subscription's own sequence number in its key.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::StoreError;

pub mod rules;

const VERSION: u8 = 1;

/// Key of an entity's id in `meta`.
pub fn entity_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(b'E');
    k.extend_from_slice(name.as_bytes());
    k
}

/// Key in `meta` of where a topic's scheduled message has forwarded copies.
pub fn forwarded_schedule_key(topic: u64, seq: u64) -> Vec<u8> {
    let mut k = vec![b'F'];
    k.extend_from_slice(&topic.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The range of a topic's [`forwarded_schedule_key`]s.
pub fn forwarded_schedule_range(topic: u64) -> (Vec<u8>, Vec<u8>) {
    (
        forwarded_schedule_key(topic, 0),
        forwarded_schedule_key(topic, u64::MAX),
    )
}

/// Where a topic's scheduled message has copies that do not name its body (copies a
/// subscription forwarded to a queue or published to another topic), so that cancelling it by
/// the topic's sequence number reaches them after a restart too: each as (entity id, that
/// entity's sequence number of the copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedSchedule {
    /// When the message becomes available (ms since the epoch).
    pub due_ms: i64,
    pub copies: Vec<(u64, u64)>,
}

impl ForwardedSchedule {
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(13 + 16 * self.copies.len());
        b.put_u8(VERSION);
        b.put_i64(self.due_ms);
        b.put_u32(self.copies.len() as u32);
        for (entity, seq) in &self.copies {
            b.put_u64(*entity);
            b.put_u64(*seq);
        }
        b.freeze()
    }

    pub fn decode(v: &[u8]) -> Result<Self, StoreError> {
        let bad = || StoreError::Corrupt("forwarded schedule record".into());
        if v.len() < 13 || v[0] != VERSION {
            return Err(bad());
        }
        let due_ms = i64::from_be_bytes(v[1..9].try_into().expect("8 bytes"));
        let n = u32::from_be_bytes(v[9..13].try_into().expect("4 bytes")) as usize;
        if v.len() != 13 + 16 * n {
            return Err(bad());
        }
        let copies = v[13..]
            .chunks_exact(16)
            .map(|c| (u64_at(c, 0), u64_at(c, 8)))
            .collect();
        Ok(ForwardedSchedule { due_ms, copies })
    }
}

/// Key of an entity's last assigned sequence number in `meta`.
pub fn last_seq_key(id: u64) -> Vec<u8> {
    let mut k = vec![b'N'];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Key of a message-id in an entity's duplicate-detection history (`dedup`).
pub fn dedup_key(id: u64, message_id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + message_id.len());
    k.extend_from_slice(&id.to_be_bytes());
    k.extend_from_slice(message_id);
    k
}

/// Key of a session's state (`session`).
pub fn session_state_key(id: u64, session: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + session.len());
    k.extend_from_slice(&id.to_be_bytes());
    k.extend_from_slice(session.as_bytes());
    k
}

/// The session id in a key of [`session_state_key`].
pub fn parse_session_state_key(k: &[u8]) -> Result<&str, StoreError> {
    k.get(8..)
        .and_then(|s| std::str::from_utf8(s).ok())
        .ok_or_else(|| StoreError::Corrupt("session state key".into()))
}

/// Key of a subscription's rule in `meta`.
pub fn rule_key(subscription: u64, name: &str) -> Vec<u8> {
    let mut k = rules_range(subscription).0;
    k.extend_from_slice(name.to_lowercase().as_bytes());
    k
}

/// Range of a subscription's rules in `meta`.
pub fn rules_range(subscription: u64) -> (Vec<u8>, Vec<u8>) {
    let mut lo = vec![b'R'];
    lo.extend_from_slice(&subscription.to_be_bytes());
    let mut hi = vec![b'R'];
    hi.extend_from_slice(&(subscription + 1).to_be_bytes());
    (lo, hi)
}

/// Key of the rules the configuration last declared for a subscription, in `meta`.
pub fn declared_rules_key(subscription: u64) -> Vec<u8> {
    let mut k = vec![b'C'];
    k.extend_from_slice(&subscription.to_be_bytes());
    k
}

/// Range of all entity keys in `meta`.
pub fn entity_range() -> (Vec<u8>, Vec<u8>) {
    (vec![b'E'], vec![b'F'])
}

/// Key of a message body.
pub fn body_key(owner: u64, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&owner.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Decodes a body key into (owner, seq).
pub fn parse_body_key(k: &[u8]) -> Result<(u64, u64), StoreError> {
    if k.len() != 16 {
        return Err(StoreError::Corrupt(format!(
            "body key of {} bytes",
            k.len()
        )));
    }
    Ok((u64_at(k, 0), u64_at(k, 8)))
}

/// Key of a message reference.
pub fn ref_key(consumer: u64, lane: u8, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.extend_from_slice(&consumer.to_be_bytes());
    k.push(lane);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Decodes a reference key into (consumer, lane, seq).
pub fn parse_ref_key(k: &[u8]) -> Result<(u64, u8, u64), StoreError> {
    if k.len() != 17 {
        return Err(StoreError::Corrupt(format!("ref key of {} bytes", k.len())));
    }
    Ok((u64_at(k, 0), k[8], u64_at(k, 9)))
}

/// Range covering every key of one id (as the first 8 bytes).
pub fn id_range(id: u64) -> (Vec<u8>, Vec<u8>) {
    (id.to_be_bytes().to_vec(), (id + 1).to_be_bytes().to_vec())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A stored message body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyRecord {
    /// Enqueue time, ms since the epoch.
    pub enqueued_ms: i64,
    /// Expiry time, ms since the epoch (0: never).
    pub expires_ms: i64,
    /// The producer's bytes.
    pub payload: Bytes,
}

impl BodyRecord {
    /// Encodes the record (version, enqueued time, payload).
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(17 + self.payload.len());
        b.put_u8(VERSION);
        b.put_i64(self.enqueued_ms);
        b.put_i64(self.expires_ms);
        b.put_slice(&self.payload);
        b.freeze()
    }

    /// Decodes a record; the payload is a slice of `v`, not a copy.
    pub fn decode(v: &Bytes) -> Result<Self, StoreError> {
        if v.len() < 17 || v[0] != VERSION {
            return Err(StoreError::Corrupt("body record".into()));
        }
        Ok(BodyRecord {
            enqueued_ms: i64::from_be_bytes(v[1..9].try_into().expect("8 bytes")),
            expires_ms: i64::from_be_bytes(v[9..17].try_into().expect("8 bytes")),
            payload: v.slice(17..),
        })
    }
}

/// A stored reference: the per-consumer state of one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefRecord {
    /// Payload bytes of the message (for accounting without reading the body).
    pub size: u32,
    /// Earlier delivery attempts.
    pub delivery_count: u32,
    /// Why it was dead-lettered, if it was.
    pub dead_letter_reason: Option<String>,
    /// The dead-letter description, if any.
    pub dead_letter_description: Option<String>,
    /// When a scheduled message becomes available (ms since the epoch).
    pub scheduled_ms: Option<i64>,
    /// When the message expires (ms since the epoch), if it has a time to live.
    pub expires_ms: Option<i64>,
    /// Where the body lives when it is shared with other references (a topic's message:
    /// owner id and sequence number of its body); `None`: the body is the entity's own,
    /// at the reference's entity id and sequence number.
    pub shared_body: Option<(u64, u64)>,
    /// The entity whose dead-letter sub-queue forwarded the message here
    /// (`ForwardDeadLetteredMessagesTo`), delivered as `x-opt-deadletter-source`.
    pub dead_letter_source: Option<String>,
    /// The message's session (its `group-id`), kept so that a session entity rebuilds its
    /// sessions from references alone.
    pub session: Option<Arc<str>>,
}

impl RefRecord {
    /// Encodes the record.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(16);
        b.put_u8(VERSION);
        b.put_u32(self.size);
        b.put_u32(self.delivery_count);
        for s in [&self.dead_letter_reason, &self.dead_letter_description] {
            match s {
                None => b.put_u8(0),
                Some(s) => {
                    b.put_u8(1);
                    b.put_u32(s.len() as u32);
                    b.put_slice(s.as_bytes());
                }
            }
        }
        let flags = u8::from(self.scheduled_ms.is_some())
            | u8::from(self.expires_ms.is_some()) << 1
            | u8::from(self.shared_body.is_some()) << 2
            | u8::from(self.dead_letter_source.is_some()) << 3
            | u8::from(self.session.is_some()) << 4;
        b.put_u8(flags);
        for v in [self.scheduled_ms, self.expires_ms].into_iter().flatten() {
            b.put_i64(v);
        }
        if let Some((owner, seq)) = self.shared_body {
            b.put_u64(owner);
            b.put_u64(seq);
        }
        for text in [self.dead_letter_source.as_deref(), self.session.as_deref()]
            .into_iter()
            .flatten()
        {
            b.put_u32(text.len() as u32);
            b.put_slice(text.as_bytes());
        }
        b.freeze()
    }

    /// Decodes a record.
    pub fn decode(v: &[u8]) -> Result<Self, StoreError> {
        let bad = || StoreError::Corrupt("ref record".into());
        if v.len() < 9 || v[0] != VERSION {
            return Err(bad());
        }
        let size = u32::from_be_bytes(v[1..5].try_into().expect("4 bytes"));
        let delivery_count = u32::from_be_bytes(v[5..9].try_into().expect("4 bytes"));
        let mut pos = 9;
        let mut strings = [None, None];
        for s in &mut strings {
            match v.get(pos).ok_or_else(bad)? {
                0 => pos += 1,
                1 => {
                    let n = v.get(pos + 1..pos + 5).ok_or_else(bad)?;
                    let n = u32::from_be_bytes(n.try_into().expect("4 bytes")) as usize;
                    let text = v.get(pos + 5..pos + 5 + n).ok_or_else(bad)?;
                    *s = Some(String::from_utf8(text.to_vec()).map_err(|_| bad())?);
                    pos += 5 + n;
                }
                _ => return Err(bad()),
            }
        }
        let [dead_letter_reason, dead_letter_description] = strings;
        let flags = *v.get(pos).ok_or_else(bad)?;
        pos += 1;
        let mut next = |present: bool| -> Result<Option<i64>, StoreError> {
            if !present {
                return Ok(None);
            }
            let b = v.get(pos..pos + 8).ok_or_else(bad)?;
            pos += 8;
            Ok(Some(i64::from_be_bytes(b.try_into().expect("8 bytes"))))
        };
        let scheduled_ms = next(flags & 1 != 0)?;
        let expires_ms = next(flags & 2 != 0)?;
        let shared_body = match (next(flags & 4 != 0)?, next(flags & 4 != 0)?) {
            (Some(owner), Some(seq)) => Some((owner as u64, seq as u64)),
            _ => None,
        };
        let mut text = |present: bool| -> Result<Option<String>, StoreError> {
            if !present {
                return Ok(None);
            }
            let n = v.get(pos..pos + 4).ok_or_else(bad)?;
            let n = u32::from_be_bytes(n.try_into().expect("4 bytes")) as usize;
            let text = v.get(pos + 4..pos + 4 + n).ok_or_else(bad)?;
            pos += 4 + n;
            Ok(Some(String::from_utf8(text.to_vec()).map_err(|_| bad())?))
        };
        let dead_letter_source = text(flags & 8 != 0)?;
        let session = text(flags & 16 != 0)?.map(Arc::from);
        if flags & !31 != 0 || pos != v.len() {
            return Err(bad());
        }
        Ok(RefRecord {
            size,
            delivery_count,
            dead_letter_reason,
            dead_letter_description,
            scheduled_ms,
            expires_ms,
            shared_body,
            dead_letter_source,
            session,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_keys_sort_by_owner_then_sequence() {
        let pairs = [
            (1u64, 1u64),
            (1, 255),
            (1, 256),
            (1, u64::MAX),
            (2, 0),
            (256, 3),
        ];
        let keys: Vec<_> = pairs.iter().map(|(o, s)| body_key(*o, *s)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        for ((o, s), k) in pairs.iter().zip(&keys) {
            assert_eq!(parse_body_key(k).unwrap(), (*o, *s));
        }
    }

    #[test]
    fn ref_keys_sort_by_consumer_lane_sequence_and_stay_in_their_id_range() {
        let triples = [
            (5u64, b'A', 9u64),
            (5, b'A', 10),
            (5, b'D', 1),
            (5, b'X', 0),
            (6, b'A', 0),
        ];
        let keys: Vec<_> = triples
            .iter()
            .map(|(c, l, s)| ref_key(*c, *l, *s))
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        let (lo, hi) = id_range(5);
        assert!(keys[..4].iter().all(|k| lo <= *k && *k < hi));
        assert!(keys[4] >= hi);
        assert_eq!(parse_ref_key(&keys[2]).unwrap(), (5, b'D', 1));
    }

    #[test]
    fn records_round_trip_and_reject_garbage() {
        let r = RefRecord {
            size: 1024,
            delivery_count: 7,
            dead_letter_reason: Some("MaxDeliveryCountExceeded".into()),
            dead_letter_description: None,
            scheduled_ms: Some(1_800_000_000_000),
            expires_ms: Some(1_900_000_000_000),
            shared_body: Some((7, u64::MAX)),
            dead_letter_source: Some("orders/Subscriptions/audit".into()),
            session: Some("customer-42".into()),
        };
        assert_eq!(RefRecord::decode(&r.encode()).unwrap(), r);
        let session_only = RefRecord {
            session: Some("s".into()),
            ..RefRecord::default()
        };
        assert_eq!(
            RefRecord::decode(&session_only.encode()).unwrap(),
            session_only
        );
        let truncated = r.encode();
        assert!(RefRecord::decode(&truncated[..truncated.len() - 1]).is_err());
        let shared_only = RefRecord {
            shared_body: Some((3, 4)),
            ..RefRecord::default()
        };
        assert_eq!(
            RefRecord::decode(&shared_only.encode()).unwrap(),
            shared_only
        );
        let plain = RefRecord::default();
        assert_eq!(RefRecord::decode(&plain.encode()).unwrap(), plain);
        assert_eq!(RefRecord::decode(&r.encode()).unwrap(), r);
        let b = BodyRecord {
            enqueued_ms: 1234,
            expires_ms: 5678,
            payload: Bytes::from_static(b"xyz"),
        };
        assert_eq!(BodyRecord::decode(&b.encode()).unwrap(), b);
        assert!(RefRecord::decode(&[1, 0, 0]).is_err());
        assert!(RefRecord::decode(&[1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 9]).is_err());
        assert!(RefRecord::decode(&[1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 2, 1]).is_err());
        assert!(BodyRecord::decode(&Bytes::from_static(&[9; 12])).is_err());
        let f = ForwardedSchedule {
            due_ms: 1_800_000_000_000,
            copies: vec![(3, 9), (u64::MAX, 1)],
        };
        assert_eq!(ForwardedSchedule::decode(&f.encode()).unwrap(), f);
        assert!(ForwardedSchedule::decode(&f.encode()[..20]).is_err());
    }
}
