//! A queue: FIFO competing consumers over credit, peek-lock, and its dead-letter sub-queue.
//!
//! One [`Queue`] owns its state behind one mutex. Messages live in lanes: the main lane
//! (available, plus those locked by a consumer), the deferred set, and the dead-letter lane,
//! which keeps each message's original sequence number. A consumer registers with a lane and a
//! credit; the queue hands deliveries to its [`ConsumerSink`] while it has credit.

mod complete;
pub(crate) mod copy;
mod dispatch;
mod enqueue;
mod forward;
pub(crate) mod history;
mod lane;
mod manage;
mod schedule;
mod sessions;
mod settle;
mod ttl;

pub use manage::{MessageState, Peeked};
pub use sessions::SessionLock;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::bodies::SharedBodies;
use crate::keys::{self, BodyRecord, RefRecord};
use crate::storage::{decode_max, Batch, Cf, Storage};
use crate::{now_ms, Completion, LockToken, Message, NewMessage, StoreError};
use lane::{Consumer, LaneState};

const LANE_ACTIVE: u8 = b'A';
const LANE_DEFERRED: u8 = b'D';
const LANE_DEAD: u8 = b'X';
const LANE_SCHEDULED: u8 = b'S';

/// The reason given to messages dead-lettered because their time to live ended.
pub const TTL_EXPIRED: &str = "TTLExpiredException";

/// The reason given to messages dead-lettered for too many deliveries.
pub const MAX_DELIVERY_COUNT_EXCEEDED: &str = "MaxDeliveryCountExceeded";

/// Which part of a queue a link reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// The queue itself.
    Main,
    /// Its dead-letter sub-queue (`<queue>/$DeadLetterQueue`).
    DeadLetter,
}

impl Lane {
    fn key_byte(self) -> u8 {
        match self {
            Lane::Main => LANE_ACTIVE,
            Lane::DeadLetter => LANE_DEAD,
        }
    }
}

/// How a consumer takes messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiveMode {
    /// The message is locked until the consumer settles it.
    PeekLock,
    /// The message is removed as it is delivered.
    ReceiveAndDelete,
}

/// What a consumer decided about a locked message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done: remove the message.
    Complete,
    /// Give it back without counting a delivery attempt.
    Release,
    /// Give it back and count a delivery attempt.
    Abandon,
    /// Keep it aside; it is only received again by sequence number.
    Defer,
    /// Move it to the dead-letter sub-queue.
    DeadLetter {
        /// Why.
        reason: Option<String>,
        /// More about why.
        description: Option<String>,
    },
}

/// One message handed to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message.
    pub message: Arc<Message>,
    /// The lock, in peek-lock mode.
    pub lock: Option<LockToken>,
    /// Earlier delivery attempts.
    pub delivery_count: u32,
    /// Until when the lock holds (ms since the epoch), in peek-lock mode.
    pub locked_until_ms: Option<i64>,
    /// Why the message was dead-lettered, when it comes from the dead-letter lane.
    pub dead_letter_reason: Option<String>,
    /// The dead-letter description.
    pub dead_letter_description: Option<String>,
    /// The entity whose dead-letter sub-queue forwarded the message here, if one did.
    pub dead_letter_source: Option<String>,
}

/// Where a consumer's deliveries go (the consumer link's connection). Called with the queue's
/// lock held: implementations hand the value over (e.g. to a channel) and return at once.
pub trait ConsumerSink: Send + Sync {
    /// A delivery within the consumer's credit.
    fn deliver(&self, delivery: Delivery);
    /// A drain finished: everything available was delivered and the rest of the credit is
    /// used up; `delivery_count` is the consumer's delivery count afterwards.
    fn drained(&self, delivery_count: u32);
    /// The consumer's session lock expired: it holds the session no more, and its locked
    /// messages went back (counted). A session receiver's link should end with
    /// `com.microsoft:session-lock-lost`.
    fn session_lost(&self) {}
}

/// Per-queue settings.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Deliveries before a message is dead-lettered (`MaxDeliveryCount`).
    pub max_delivery_count: u32,
    /// Bytes of message payload the queue may hold (`MaxSizeInMegabytes`).
    pub max_size_bytes: u64,
    /// How long a peek-lock lasts (`LockDuration`), in milliseconds.
    pub lock_duration_ms: u64,
    /// Time to live of messages that set none, and the cap on those that do
    /// (`DefaultMessageTimeToLive`), in milliseconds; 0: none.
    pub default_ttl_ms: u64,
    /// Expired messages go to the dead-letter sub-queue instead of being dropped
    /// (`DeadLetteringOnMessageExpiration`).
    pub dead_letter_on_expiration: bool,
    /// Duplicate-detection window in milliseconds (`RequiresDuplicateDetection` with
    /// `DuplicateDetectionHistoryTimeWindow`); 0: off.
    pub duplicate_detection_ms: u64,
    /// The queue or topic messages sent to this queue go to instead (`ForwardTo`); resolved by
    /// [`crate::Entities`], which senders ask where an address leads.
    pub forward_to: Option<String>,
    /// The queue or topic its dead-lettered messages go to (`ForwardDeadLetteredMessagesTo`),
    /// moved there from the dead-letter sub-queue by [`crate::Entities`].
    pub forward_dead_lettered_to: Option<String>,
    /// Messages are grouped in sessions (`RequiresSession`): each needs a session id, and
    /// receivers take a session's lock and get only its messages ([`Queue::accept_session`]).
    pub requires_session: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_delivery_count: 10,
            max_size_bytes: 1024 * 1024 * 1024,
            lock_duration_ms: 60_000,
            default_ttl_ms: 0,
            dead_letter_on_expiration: false,
            duplicate_detection_ms: 0,
            forward_to: None,
            forward_dead_lettered_to: None,
            requires_session: false,
        }
    }
}

/// Counts for metrics and management.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages waiting to be delivered.
    pub active: u64,
    /// Messages locked by a consumer.
    pub locked: u64,
    /// Deferred messages.
    pub deferred: u64,
    /// Messages in the dead-letter sub-queue.
    pub dead_lettered: u64,
    /// Scheduled messages.
    pub scheduled: u64,
    /// Messages whose time to live ended since the broker started (dropped or dead-lettered).
    pub expired_total: u64,
    /// Payload bytes held.
    pub bytes: u64,
    /// Consumer links.
    pub consumers: u64,
    /// Sessions with messages available (session entities).
    pub sessions_available: u64,
    /// Sessions a receiver holds the lock of.
    pub sessions_locked: u64,
    /// Session locks that expired while held, since the broker started.
    pub session_locks_lost: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    msg: Arc<Message>,
    /// Where its body is when other references share it (see [`RefRecord::shared_body`]).
    shared: Option<(u64, u64)>,
    delivery_count: u32,
    dead_letter_reason: Option<String>,
    dead_letter_description: Option<String>,
    /// The entity whose dead-letter sub-queue forwarded it here, if one did.
    dead_letter_source: Option<String>,
}

impl Entry {
    fn ref_record(&self) -> RefRecord {
        RefRecord {
            size: self.msg.payload.len() as u32,
            delivery_count: self.delivery_count,
            dead_letter_reason: self.dead_letter_reason.clone(),
            dead_letter_description: self.dead_letter_description.clone(),
            scheduled_ms: None,
            expires_ms: self.msg.expires_ms,
            shared_body: self.shared,
            dead_letter_source: self.dead_letter_source.clone(),
            session: self.msg.session.clone(),
        }
    }
}

struct Locked {
    entry: Entry,
    lane: Lane,
    consumer: u64,
    expires_ms: i64,
    /// A deferred message received by sequence number: its home is the deferred set.
    deferred: bool,
}

/// The consumer id of locks taken through management (receive-by-sequence-number); any
/// holder of the lock token may settle them.
pub(crate) const MANAGEMENT: u64 = 0;

struct State {
    next_seq: u64,
    main: LaneState,
    dead: LaneState,
    deferred: BTreeMap<u64, Entry>,
    locks: HashMap<LockToken, Locked>,
    /// Available main-lane messages that expire, by expiry time.
    expiring: BTreeSet<(i64, u64)>,
    /// Message-ids seen, for duplicate detection.
    dedup: history::History,
    /// Scheduled messages by sequence number, with their due time (ms).
    scheduled: BTreeMap<u64, (Entry, i64)>,
    /// Scheduled messages by due time.
    due: BTreeSet<(i64, u64)>,
    /// The locks by expiry time.
    expiries: BTreeSet<(i64, LockToken)>,
    bytes: u64,
    next_consumer: u64,
    /// The sessions of a session entity (empty otherwise).
    sessions: sessions::Sessions,
}

/// A queue and its dead-letter sub-queue.
pub struct Queue {
    name: String,
    id: u64,
    config: QueueConfig,
    storage: Arc<dyn Storage>,
    state: Mutex<State>,
    tokens: LockTokens,
    /// Messages expired since start (for metrics).
    expired: AtomicU64,
    /// The counts of the bodies this queue shares with others (a subscription's, with its
    /// topic's other subscriptions); `None` for a queue, whose bodies are its own.
    bodies: Option<Arc<SharedBodies>>,
    /// Told when a session becomes available to a next-available receiver.
    session_signal: std::sync::OnceLock<sessions::Signal>,
}

impl Queue {
    /// Opens the queue with id `id`, recovering its messages from `storage`.
    pub fn open(
        name: &str,
        id: u64,
        config: QueueConfig,
        storage: Arc<dyn Storage>,
    ) -> Result<Arc<Queue>, StoreError> {
        Self::open_with_bodies(name, id, config, storage, None)
    }

    /// [`Queue::open`] for an entity whose references may name shared bodies (a topic's
    /// subscription): each one found is counted in `bodies`.
    pub(crate) fn open_with_bodies(
        name: &str,
        id: u64,
        config: QueueConfig,
        storage: Arc<dyn Storage>,
        bodies: Option<Arc<SharedBodies>>,
    ) -> Result<Arc<Queue>, StoreError> {
        let mut st = State {
            next_seq: 1,
            main: LaneState::default(),
            dead: LaneState::default(),
            deferred: BTreeMap::new(),
            locks: HashMap::new(),
            scheduled: BTreeMap::new(),
            expiring: BTreeSet::new(),
            dedup: history::History::default(),
            due: BTreeSet::new(),
            expiries: BTreeSet::new(),
            bytes: 0,
            next_consumer: 1,
            sessions: sessions::Sessions::default(),
        };
        let meta = storage.get_many(Cf::Meta, &[keys::last_seq_key(id)])?;
        st.next_seq = meta[0].as_deref().and_then(decode_max).unwrap_or(0) + 1;
        // Only references are read: bodies stay on disk until a consumer needs them. A
        // message that was locked when the broker stopped already has that delivery counted
        // in its reference (see `dispatch`).
        let (lo, hi) = keys::id_range(id);
        let mut deferred = Vec::new();
        let mut scheduled = Vec::new();
        storage.for_each(Cf::Ref, &lo, &hi, &mut |k, v| {
            let (_, lane, seq) = keys::parse_ref_key(k)?;
            let r = RefRecord::decode(v)?;
            st.bytes += r.size as u64;
            if let Some(at) = r.shared_body {
                match &bodies {
                    Some(b) => b.retain(at, 1),
                    None => {
                        return Err(StoreError::Corrupt(format!(
                            "queue '{name}' holds a reference to a shared body"
                        )))
                    }
                }
            }
            st.next_seq = st.next_seq.max(seq + 1);
            match lane {
                LANE_ACTIVE => {
                    match r.session.filter(|_| config.requires_session) {
                        Some(session) => st.sessions.recover(session, seq),
                        None => st.main.push_spilled(seq),
                    }
                    if let Some(at) = r.expires_ms {
                        st.expiring.insert((at, seq));
                    }
                }
                LANE_DEAD => st.dead.push_spilled(seq),
                LANE_DEFERRED => deferred.push(seq),
                LANE_SCHEDULED => scheduled.push((seq, r.scheduled_ms.unwrap_or(0))),
                other => return Err(StoreError::Corrupt(format!("unknown lane {other}"))),
            }
            Ok(())
        })?;
        st.sessions.recovered();
        for e in load_entries(storage.as_ref(), id, LANE_DEFERRED, &deferred)? {
            st.deferred.insert(e.msg.seq, e);
        }
        let seqs: Vec<u64> = scheduled.iter().map(|(s, _)| *s).collect();
        for (e, (_, at)) in load_entries(storage.as_ref(), id, LANE_SCHEDULED, &seqs)?
            .into_iter()
            .zip(scheduled)
        {
            st.due.insert((at, e.msg.seq));
            st.scheduled.insert(e.msg.seq, (e, at));
        }
        // the duplicate-detection history: ids still in their window come back, older go
        let mut stale = Batch::default();
        st.dedup = history::History::load(
            storage.as_ref(),
            id,
            config.duplicate_detection_ms,
            now_ms(),
            &mut stale,
        )?;
        if !stale.is_empty() {
            storage.write(stale, Box::new(|_| {}));
        }
        Ok(Arc::new(Queue {
            name: name.to_string(),
            id,
            config,
            storage,
            state: Mutex::new(st),
            tokens: LockTokens::new(id),
            expired: AtomicU64::new(0),
            bodies,
            session_signal: std::sync::OnceLock::new(),
        }))
    }

    /// The queue's entity id.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue's settings.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Hands a batch to the storage, resolving its shared-body releases first.
    fn write(&self, batch: Batch, done: Completion<()>) {
        match &self.bodies {
            Some(b) => b.write(self.storage.as_ref(), batch, done),
            None => self.storage.write(batch, done),
        }
    }

    /// Records in `batch` that `entry`'s body goes with it: deleted if it is the queue's own,
    /// released if it is shared.
    fn drop_body(&self, batch: &mut Batch, entry: &Entry) {
        match entry.shared {
            None => batch.delete(Cf::Body, keys::body_key(self.id, entry.msg.seq)),
            Some(at) => batch.releases.push(at),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("queue state poisoned")
    }

    /// Makes messages of both lanes available again (returned, not fresh), in the given order.
    fn make_available_again(&self, entries: Vec<(Lane, Entry)>) {
        let (main, dead): (Vec<_>, Vec<_>) =
            entries.into_iter().partition(|(l, _)| *l == Lane::Main);
        for (lane, es) in [(Lane::Main, main), (Lane::DeadLetter, dead)] {
            if !es.is_empty() {
                self.make_available(lane, es.into_iter().map(|(_, e)| e).collect(), false);
            }
        }
    }

    pub(crate) fn make_available(&self, lane: Lane, entries: Vec<Entry>, fresh: bool) {
        let mut pending = Batch::default();
        {
            let mut st = self.lock();
            let st = &mut *st;
            let mut touched = Vec::new();
            for e in entries {
                if let (Lane::Main, Some(at)) = (lane, e.msg.expires_ms) {
                    st.expiring.insert((at, e.msg.seq));
                }
                match (&e.msg.session, lane) {
                    (Some(_), Lane::Main) if self.config.requires_session => {
                        self.push_session(st, e, fresh, &mut touched)
                    }
                    _ => lane_mut(&mut st.main, &mut st.dead, lane).push(e, fresh),
                }
            }
            self.dispatch(st, lane, &mut pending);
            for session in touched {
                self.dispatch_at(st, lane, Some(&session), &mut pending);
            }
            self.write_in_background(pending);
        }
    }

    /// Registers a consumer on `lane` with no credit yet.
    pub fn add_consumer(
        self: &Arc<Self>,
        lane: Lane,
        mode: ReceiveMode,
        sink: Arc<dyn ConsumerSink>,
    ) -> ConsumerHandle {
        let mut guard = self.lock();
        let st = &mut *guard;
        let id = st.next_consumer;
        st.next_consumer += 1;
        let ls = lane_mut(&mut st.main, &mut st.dead, lane);
        ls.consumers.push(Consumer {
            id,
            mode,
            credit: 0,
            delivery_count: 0,
            sink,
        });
        ConsumerHandle {
            queue: self.clone(),
            id,
            lane,
            session: None,
            closed: false,
        }
    }

    /// Counts for metrics.
    pub fn stats(&self) -> QueueStats {
        let st = self.lock();
        let locked_dead = st
            .locks
            .values()
            .filter(|l| l.lane == Lane::DeadLetter)
            .count();
        QueueStats {
            active: (st.main.len() + st.sessions.of.len()) as u64,
            locked: st.locks.len() as u64,
            deferred: st.deferred.len() as u64,
            dead_lettered: (st.dead.len() + locked_dead) as u64,
            bytes: st.bytes,
            consumers: (st.main.consumers.len() + st.dead.consumers.len()) as u64,
            scheduled: st.scheduled.len() as u64,
            expired_total: self.expired.load(Ordering::Relaxed),
            sessions_available: st.sessions.available() as u64,
            sessions_locked: st.sessions.locked() as u64,
            session_locks_lost: st.sessions.lost_total,
        }
    }
}

fn lane_mut<'a>(main: &'a mut LaneState, dead: &'a mut LaneState, lane: Lane) -> &'a mut LaneState {
    match lane {
        Lane::Main => main,
        Lane::DeadLetter => dead,
    }
}

/// The lane a consumer reads: `lane`, or the session's part of the main lane.
fn lane_of<'a>(
    st: &'a mut State,
    lane: Lane,
    session: Option<&Arc<str>>,
) -> Option<&'a mut LaneState> {
    match session {
        None => Some(lane_mut(&mut st.main, &mut st.dead, lane)),
        Some(s) => st.sessions.map.get_mut(s).map(|slot| &mut slot.lane),
    }
}

/// A consumer's registration with a queue lane. Dropping it (or [`ConsumerHandle::close`])
/// unregisters the consumer and returns its locked messages with their delivery count raised.
pub struct ConsumerHandle {
    queue: Arc<Queue>,
    id: u64,
    lane: Lane,
    /// The session whose lock the consumer holds (session entities).
    session: Option<Arc<str>>,
    closed: bool,
}

impl ConsumerHandle {
    /// The receiver's flow state: its delivery count and link credit. With `drain`, whatever is
    /// available is delivered, the rest of the credit is used up and the sink hears `drained`.
    pub fn flow(&self, delivery_count: u32, link_credit: u32, drain: bool) {
        self.queue.flow(
            self.id,
            self.lane,
            self.session.as_ref(),
            delivery_count,
            link_credit,
            drain,
        );
    }

    /// Settles a locked message; `done` hears once the outcome is durable.
    pub fn settle(&self, lock: LockToken, outcome: Outcome, done: Completion<()>) {
        self.queue.settle(Some(self.id), lock, outcome, true, done);
    }

    /// Settles a lock the client already considers settled (it settled first and hears
    /// nothing back): `done` runs once the settlement is written, before it is synced (see
    /// [`Batch::lazy`]).
    pub fn settle_unconfirmed(&self, lock: LockToken, outcome: Outcome, done: Completion<()>) {
        self.queue.settle(Some(self.id), lock, outcome, false, done);
    }

    /// Completes locked messages the client already considers settled (it settled first and
    /// hears nothing back), with one storage write for all of them: `done` hears, once it is
    /// written (before it is synced, see [`Batch::lazy`]), which ones were completed (a lock
    /// already lost is not).
    pub fn complete_unconfirmed(&self, locks: &[LockToken], done: Completion<Vec<bool>>) {
        self.queue.complete_unconfirmed(self.id, locks, done);
    }

    /// Unregisters the consumer and returns its locked messages (a session receiver's
    /// without counting a delivery, and its session's lock is released).
    pub fn close(mut self) {
        self.closed = true;
        self.unregister();
    }

    fn unregister(&self) {
        match &self.session {
            None => self.queue.remove_consumer(self.id, self.lane),
            Some(s) => self.queue.release_session(s, self.id, false),
        }
    }
}

impl Drop for ConsumerHandle {
    fn drop(&mut self) {
        if !self.closed {
            self.unregister();
        }
    }
}

/// When a new message becomes available (if it is scheduled for later) and when it expires:
/// its time to live, capped by the entity's default (which also applies when it sets none),
/// counted from its scheduled time if it has one.
pub(crate) fn timing(m: &NewMessage, default_ttl_ms: u64, now: i64) -> (Option<i64>, Option<i64>) {
    let at = m.scheduled_ms.filter(|at| *at > now);
    let ttl = match (m.ttl_ms, default_ttl_ms) {
        (Some(t), 0) => Some(t),
        (Some(t), d) => Some(t.min(d)),
        (None, 0) => None,
        (None, d) => Some(d),
    };
    let expires = ttl.map(|t| {
        at.unwrap_or(now)
            .saturating_add(t.min(i64::MAX as u64) as i64)
    });
    (at, expires)
}

/// Reads the messages `seqs` of lane `lane` (reference and body) back from storage.
fn load_entries(
    storage: &dyn Storage,
    id: u64,
    lane: u8,
    seqs: &[u64],
) -> Result<Vec<Entry>, StoreError> {
    if seqs.is_empty() {
        return Ok(Vec::new());
    }
    let refs = storage.get_many(
        Cf::Ref,
        &seqs
            .iter()
            .map(|s| keys::ref_key(id, lane, *s))
            .collect::<Vec<_>>(),
    )?;
    let missing =
        |seq: &u64| StoreError::Corrupt(format!("message {seq} of entity {id} is missing"));
    let refs = seqs
        .iter()
        .zip(refs)
        .map(|(seq, r)| RefRecord::decode(&r.ok_or_else(|| missing(seq))?))
        .collect::<Result<Vec<_>, _>>()?;
    let bodies = storage.get_many(
        Cf::Body,
        &seqs
            .iter()
            .zip(&refs)
            .map(|(s, r)| {
                let (owner, seq) = r.shared_body.unwrap_or((id, *s));
                keys::body_key(owner, seq)
            })
            .collect::<Vec<_>>(),
    )?;
    let mut out = Vec::with_capacity(seqs.len());
    for ((seq, r), b) in seqs.iter().zip(refs).zip(bodies) {
        let b = BodyRecord::decode(&b.ok_or_else(|| missing(seq))?)?;
        out.push(Entry {
            shared: r.shared_body,
            msg: Arc::new(Message {
                seq: *seq,
                enqueued_ms: b.enqueued_ms,
                // a subscription's copy may expire before its topic's body says
                expires_ms: r.expires_ms.or((b.expires_ms != 0).then_some(b.expires_ms)),
                payload: b.payload,
                session: r.session.clone(),
            }),
            delivery_count: r.delivery_count,
            dead_letter_reason: r.dead_letter_reason,
            dead_letter_description: r.dead_letter_description,
            dead_letter_source: r.dead_letter_source,
        });
    }
    Ok(out)
}

/// Writes a batch and waits for it (start-up only).
pub(crate) fn write_and_wait(storage: &dyn Storage, batch: Batch) -> Result<(), StoreError> {
    let (tx, rx) = std::sync::mpsc::channel();
    storage.write(batch, Box::new(move |r| drop(tx.send(r))));
    rx.recv()
        .map_err(|_| StoreError::Storage("storage went away".into()))?
}

/// Lock tokens: unique in the process and unpredictable across restarts (a random prefix
/// per queue and a counter), laid out as RFC 4122 version-4 UUIDs.
struct LockTokens {
    prefix: [u8; 8],
    counter: AtomicU64,
}

impl LockTokens {
    fn new(queue_id: u64) -> Self {
        let random = uuid::Uuid::new_v4().into_bytes();
        let mut prefix = [0u8; 8];
        for (i, b) in prefix.iter_mut().enumerate() {
            *b = random[i] ^ queue_id.to_be_bytes()[i];
        }
        LockTokens {
            prefix,
            counter: AtomicU64::new(u64::from_be_bytes(random[8..].try_into().expect("8 bytes"))),
        }
    }

    fn next(&self) -> LockToken {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut t = [0u8; 16];
        t[..8].copy_from_slice(&self.prefix);
        t[8..].copy_from_slice(&n.to_be_bytes());
        t[6] = (t[6] & 0x0f) | 0x40;
        t[8] = (t[8] & 0x3f) | 0x80;
        t
    }
}

#[cfg(test)]
mod tests;
