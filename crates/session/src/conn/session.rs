//! Sessions: Begin and End, windows, and the links a session holds.

use std::collections::{HashMap, VecDeque};

use ferrobus_codec::types::definitions::{AmqpError, ConnectionError, Error, SessionError};
use ferrobus_codec::types::performatives::{Begin, End, Performative};
use tokio::io::{AsyncRead, AsyncWrite};

use super::attach::Link;
use super::{close_with, error, Connection, Fatal};
use crate::api::{LinkId, OutgoingDelivery};

/// Our incoming window, in transfer frames; renewed when half of it is used.
pub(crate) const INCOMING_WINDOW: u32 = 65_536;
/// How many link handles a peer may use in one session.
const HANDLE_MAX: u32 = u32::MAX;

/// Work that waits for the peer's session window to open.
pub(crate) enum Pending {
    Deliver(LinkId, OutgoingDelivery),
    Drained(LinkId, u32),
}

pub(crate) struct Session {
    /// Transfer-id of our next transfer frame.
    pub next_outgoing_id: u32,
    /// Delivery-id of our next delivery.
    pub next_delivery_id: u32,
    /// Transfer frames the peer will still take.
    pub remote_incoming_window: u32,
    /// Transfer-id we expect next from the peer.
    pub next_incoming_id: u32,
    /// Frames the peer may still send before we must renew the window.
    pub incoming_window: u32,
    pub links: HashMap<u32, Link>,
    /// Our unsettled deliveries: delivery-id -> (link, tag).
    pub unsettled: HashMap<u32, (LinkId, [u8; 16])>,
    pub pending: VecDeque<Pending>,
    /// We ended the session with an error and wait for the peer's End.
    pub ending: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub(super) fn on_begin(&mut self, channel: u16, begin: Begin) -> Result<(), Fatal> {
        if begin.remote_channel.is_some() {
            return Err(close_with(
                AmqpError::NotAllowed,
                "a client may not answer a begin we never sent",
            ));
        }
        if channel > self.cfg.channel_max {
            return Err(close_with(
                ConnectionError::FramingError,
                format!(
                    "channel {channel} is above channel-max {}",
                    self.cfg.channel_max
                ),
            ));
        }
        if self.sessions.contains_key(&channel) {
            return Err(close_with(
                AmqpError::IllegalState,
                format!("channel {channel} already has a session"),
            ));
        }
        self.sessions.insert(
            channel,
            Session {
                next_outgoing_id: 0,
                next_delivery_id: 0,
                remote_incoming_window: begin.incoming_window,
                next_incoming_id: begin.next_outgoing_id,
                incoming_window: INCOMING_WINDOW,
                links: HashMap::new(),
                unsettled: HashMap::new(),
                pending: VecDeque::new(),
                ending: false,
            },
        );
        self.router.session_begun();
        let reply = Begin {
            remote_channel: Some(channel),
            next_outgoing_id: 0,
            incoming_window: INCOMING_WINDOW,
            outgoing_window: u32::MAX,
            handle_max: HANDLE_MAX.into(),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        self.write(channel, &Performative::Begin(reply));
        Ok(())
    }

    pub(super) fn on_end(&mut self, channel: u16, end: End) -> Result<(), Fatal> {
        let Some(session) = self.sessions.remove(&channel) else {
            return Err(close_with(
                ConnectionError::FramingError,
                format!("end on channel {channel} with no session"),
            ));
        };
        self.router.session_ended();
        if let Some(e) = &end.error {
            tracing::debug!(condition = ?e.condition, "peer ended a session with an error");
        }
        for link in session.links.values() {
            self.links.remove(&link.id);
        }
        if !session.ending {
            self.write(channel, &Performative::End(End { error: None }));
        }
        Ok(())
    }

    /// Ends a session with a session error; its links are gone at once.
    pub(super) fn end_session(&mut self, channel: u16, err: Error) {
        if let Some(session) = self.sessions.get_mut(&channel) {
            if session.ending {
                return;
            }
            session.ending = true;
            session.pending.clear();
            session.unsettled.clear();
            for (_, link) in session.links.drain() {
                self.links.remove(&link.id);
            }
            self.write(channel, &Performative::End(End { error: Some(err) }));
        }
    }

    /// The session on `channel`, or a connection error if there is none. `None` when the
    /// session is ending and the frame is to be ignored.
    pub(super) fn session(&mut self, channel: u16) -> Result<Option<&mut Session>, Fatal> {
        match self.sessions.get_mut(&channel) {
            None => Err(close_with(
                ConnectionError::FramingError,
                format!("frame on channel {channel}, which has no session"),
            )),
            Some(s) if s.ending => Ok(None),
            Some(s) => Ok(Some(s)),
        }
    }

    /// Ends the session because the peer used a handle that is not attached.
    pub(super) fn unattached(&mut self, channel: u16, handle: u32) {
        self.end_session(
            channel,
            error(
                SessionError::UnattachedHandle,
                format!("handle {handle} is not attached"),
            ),
        );
    }
}

impl Pending {
    pub(crate) fn link(&self) -> LinkId {
        match self {
            Pending::Deliver(l, _) | Pending::Drained(l, _) => *l,
        }
    }
}
