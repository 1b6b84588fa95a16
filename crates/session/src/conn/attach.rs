//! Attach and Detach: links come and go.

use std::collections::HashSet;

use bytes::BytesMut;
use ferrobus_codec::types::definitions::{
    Error, LinkError, ReceiverSettleMode, Role, SenderSettleMode, SessionError,
};
use ferrobus_codec::types::messaging::{
    Modified, Outcome, Rejected, Source, Target, TargetArchetype,
};
use ferrobus_codec::types::performatives::{Attach, Detach, Performative};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{error, Connection, Fatal};
use crate::api::{AttachRequest, Endpoint, IncomingLink, LinkId, Outbox, OutgoingLink, Refusal};

pub(crate) struct Link {
    pub id: LinkId,
    /// The link's name and whether the peer sends on it: what identifies a link (part 2.6.1).
    pub name: String,
    pub peer_sends: bool,
    pub kind: LinkKind,
}

pub(crate) enum LinkKind {
    In(InLink),
    Out(OutLink),
    /// We detached (or refused) the link and wait for the peer's detach.
    Closing,
    /// The router has not answered the attach yet ([`Endpoint::Later`]).
    Pending(Box<PendingAttach>),
}

/// An attach waiting for the router's answer.
pub(crate) struct PendingAttach {
    attach: Attach,
    presettled: bool,
    /// The peer's last flow for the link meanwhile: delivery count, credit, drain.
    pub flow: Option<(u32, u32, bool)>,
}

impl PendingAttach {
    /// Our answer to the attach when it ends before the router answered: no terminus (a
    /// refusal); the detach follows. None of the peer's values is echoed.
    fn refused(&self) -> Attach {
        Attach {
            name: self.attach.name.clone(),
            handle: self.attach.handle.clone(),
            role: match self.attach.role {
                Role::Sender => Role::Receiver,
                Role::Receiver => Role::Sender,
            },
            snd_settle_mode: self.attach.snd_settle_mode.clone(),
            rcv_settle_mode: self.attach.rcv_settle_mode.clone(),
            source: None,
            target: None,
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: Some(0),
            max_message_size: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        }
    }
}

/// A link the peer sends on.
pub(crate) struct InLink {
    pub ep: Box<dyn IncomingLink>,
    /// Credit the peer still has.
    pub credit: u32,
    /// The peer's delivery count as we have counted it.
    pub delivery_count: u32,
    /// Messages handed to the endpoint whose outcome has not come back.
    pub outstanding: u32,
    /// Delivery-ids the peer sent unsettled and that await our disposition.
    pub unsettled: HashSet<u32>,
    /// A multi-frame delivery being reassembled.
    pub partial: Option<Partial>,
}

pub(crate) struct Partial {
    pub delivery_id: u32,
    pub settled: bool,
    pub message_format: u32,
    pub buf: BytesMut,
    /// Bytes received so far (the buffer is dropped once the message is too large).
    pub size: u64,
}

/// A link we send on.
pub(crate) struct OutLink {
    pub ep: Box<dyn OutgoingLink>,
    /// Deliveries sent (the link's delivery count).
    pub delivery_count: u32,
    /// Credit the peer gave, as of our delivery count.
    pub credit: u32,
    pub presettled: bool,
}

/// The source we attach with, from the one the peer proposed.
///
/// The broker never encodes a `Value` a peer sent: serde_amqp 0.18's encoder panics on some
/// values its decoder accepts (a map with a timestamp key before a binary value) and writes
/// others wrongly (arrays of non-ASCII strings). So the reply keeps the terminus's typed fields
/// and drops those that hold peer values: the filter set (no filter is applied on a link yet,
/// and a reply lists only the filters in force, part 3.5.3), the dynamic node properties, and
/// the error or annotations of a default outcome.
fn echo_source(s: &Source) -> Source {
    Source {
        address: s.address.clone(),
        durable: s.durable.clone(),
        expiry_policy: s.expiry_policy.clone(),
        timeout: s.timeout,
        dynamic: s.dynamic,
        dynamic_node_properties: None,
        distribution_mode: s.distribution_mode.clone(),
        filter: None,
        default_outcome: s.default_outcome.as_ref().map(|o| match o {
            Outcome::Rejected(_) => Outcome::Rejected(Rejected { error: None }),
            Outcome::Modified(m) => Outcome::Modified(Modified {
                delivery_failed: m.delivery_failed,
                undeliverable_here: m.undeliverable_here,
                message_annotations: None,
            }),
            o => o.clone(),
        }),
        outcomes: s.outcomes.clone(),
        capabilities: s.capabilities.clone(),
    }
}

/// The target we attach with: the peer's without its dynamic node properties (see
/// [`echo_source`]).
fn echo_target(t: &TargetArchetype) -> TargetArchetype {
    match t {
        TargetArchetype::Target(t) => TargetArchetype::Target(Target {
            dynamic_node_properties: None,
            ..t.clone()
        }),
        #[allow(unreachable_patterns)]
        other => other.clone(),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub(super) fn on_attach(&mut self, channel: u16, attach: Attach) -> Result<(), Fatal> {
        let handle = attach.handle.0;
        let in_use = match self.session(channel)? {
            None => return Ok(()),
            Some(session) => session.links.contains_key(&handle),
        };
        if in_use {
            self.end_session(
                channel,
                error(
                    SessionError::HandleInUse,
                    format!("handle {handle} is already attached"),
                ),
            );
            return Ok(());
        }
        let peer_sends = attach.role == Role::Sender;
        self.steal(channel, &attach.name, peer_sends);
        let id = self.new_link_id();
        let outbox = Outbox {
            link: id,
            tx: self.tx.clone(),
        };
        let presettled = !peer_sends && attach.snd_settle_mode == SenderSettleMode::Settled;
        let req = AttachRequest {
            attach: &attach,
            container_id: &self.peer_container,
            user: self.user.as_deref(),
            outbox,
            presettled,
            connection: self.id,
            session: channel,
        };
        let endpoint = self.router.attach(req);
        if let Ok(Endpoint::Later) = endpoint {
            let session = self.sessions.get_mut(&channel).expect("checked above");
            session.links.insert(
                handle,
                Link {
                    id,
                    name: attach.name.clone(),
                    peer_sends,
                    kind: LinkKind::Pending(Box::new(PendingAttach {
                        attach,
                        presettled,
                        flow: None,
                    })),
                },
            );
            self.links.insert(id, (channel, handle));
            return Ok(());
        }
        self.answer_attach(channel, id, &attach, presettled, endpoint);
        Ok(())
    }

    /// The router answered an attach it took time over: answer the peer now, unless the link
    /// went away meanwhile (then the endpoint is dropped here, which undoes what it holds).
    pub(super) fn attached(&mut self, id: LinkId, endpoint: Result<Endpoint, Refusal>) {
        let Some(&(channel, handle)) = self.links.get(&id) else {
            return;
        };
        let Some(link) = self
            .sessions
            .get_mut(&channel)
            .and_then(|s| s.links.get_mut(&handle))
        else {
            return;
        };
        if !matches!(link.kind, LinkKind::Pending(_)) {
            return;
        }
        let LinkKind::Pending(p) = std::mem::replace(&mut link.kind, LinkKind::Closing) else {
            unreachable!("checked above");
        };
        self.links.remove(&id);
        self.answer_attach(channel, id, &p.attach, p.presettled, endpoint);
        if let Some((count, credit, drain)) = p.flow {
            self.replay_flow(channel, handle, count, credit, drain);
        }
    }

    /// Writes our attach for the router's answer and sets the link up.
    fn answer_attach(
        &mut self,
        channel: u16,
        id: LinkId,
        attach: &Attach,
        presettled: bool,
        endpoint: Result<Endpoint, Refusal>,
    ) {
        let handle = attach.handle.0;
        let peer_sends = attach.role == Role::Sender;
        let mut reply = Attach {
            name: attach.name.clone(),
            handle: attach.handle.clone(),
            role: if peer_sends {
                Role::Receiver
            } else {
                Role::Sender
            },
            snd_settle_mode: attach.snd_settle_mode.clone(),
            rcv_settle_mode: attach.rcv_settle_mode.clone(),
            source: attach.source.as_deref().map(echo_source).map(Box::new),
            target: attach.target.as_deref().map(echo_target).map(Box::new),
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: Some(0),
            max_message_size: Some(self.cfg.max_message_size),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        let Some(session) = self.sessions.get_mut(&channel) else {
            return;
        };
        match endpoint {
            Err(refusal) => {
                reply.source = None;
                reply.target = None;
                session.links.insert(
                    handle,
                    Link {
                        id,
                        name: attach.name.clone(),
                        peer_sends,
                        kind: LinkKind::Closing,
                    },
                );
                self.write(channel, &Performative::Attach(reply));
                self.write(
                    channel,
                    &Performative::Detach(Detach {
                        handle: handle.into(),
                        closed: true,
                        error: Some(refusal.0),
                    }),
                );
            }
            Ok(Endpoint::Incoming(ep)) => {
                // we settle first: the peer's transfer is settled by our disposition
                reply.rcv_settle_mode = ReceiverSettleMode::First;
                let credit = self.cfg.link_credit;
                let delivery_count = attach.initial_delivery_count.unwrap_or(0);
                let link = InLink {
                    ep,
                    credit,
                    delivery_count,
                    outstanding: 0,
                    unsettled: HashSet::new(),
                    partial: None,
                };
                session.links.insert(
                    handle,
                    Link {
                        id,
                        name: attach.name.clone(),
                        peer_sends,
                        kind: LinkKind::In(link),
                    },
                );
                self.links.insert(id, (channel, handle));
                self.write(channel, &Performative::Attach(reply));
                self.link_flow(channel, handle, delivery_count, credit, false);
            }
            Ok(Endpoint::Outgoing(ep)) => {
                reply.snd_settle_mode = if presettled {
                    SenderSettleMode::Settled
                } else {
                    SenderSettleMode::Unsettled
                };
                let extra = ep.reply();
                if let (Some(filter), Some(source)) = (extra.source_filter, reply.source.as_mut()) {
                    source.filter = Some(filter);
                }
                reply.properties = extra.properties;
                let link = OutLink {
                    ep,
                    delivery_count: 0,
                    credit: 0,
                    presettled,
                };
                session.links.insert(
                    handle,
                    Link {
                        id,
                        name: attach.name.clone(),
                        peer_sends,
                        kind: LinkKind::Out(link),
                    },
                );
                self.links.insert(id, (channel, handle));
                self.write(channel, &Performative::Attach(reply));
            }
            Ok(Endpoint::Later) => {
                // a router answers later only once; a second "later" is a refusal
                let refusal = Refusal(error(
                    ferrobus_codec::types::definitions::AmqpError::InternalError,
                    "the attach was not answered".to_string(),
                ));
                self.answer_attach(channel, id, attach, presettled, Err(refusal));
            }
        }
    }

    pub(super) fn on_detach(&mut self, channel: u16, detach: Detach) -> Result<(), Fatal> {
        let handle = detach.handle.0;
        let link = match self.session(channel)? {
            None => return Ok(()),
            Some(session) => {
                // a detach for a handle we do not know is ignored (it may answer our own)
                let Some(link) = session.links.remove(&handle) else {
                    return Ok(());
                };
                session.unsettled.retain(|_, (l, _)| *l != link.id);
                session.pending.retain(|p| p.link() != link.id);
                link
            }
        };
        self.links.remove(&link.id);
        if let LinkKind::Pending(p) = &link.kind {
            // never answered: answer the attach (refused) before the detach
            self.write(channel, &Performative::Attach(p.refused()));
        }
        if !matches!(link.kind, LinkKind::Closing) {
            self.write(
                channel,
                &Performative::Detach(Detach {
                    handle: handle.into(),
                    closed: detach.closed,
                    error: None,
                }),
            );
        }
        // dropping the endpoint here returns whatever the link still had locked
        drop(link);
        Ok(())
    }

    /// A live link of this session with the name and direction of a new attach is taken over
    /// by the new one: the old link is detached with `amqp:link:stolen` first (part 2.6.1: a
    /// name identifies one link). Clients that name links after their address, such as
    /// Proton's `BlockingConnection`, match our attach reply to the first link of that name;
    /// with the old link detached first they find the new one, and the connection lives on.
    fn steal(&mut self, channel: u16, name: &str, peer_sends: bool) {
        let Some(session) = self.sessions.get(&channel) else {
            return;
        };
        let old = session.links.values().find(|l| {
            l.name == name && l.peer_sends == peer_sends && !matches!(l.kind, LinkKind::Closing)
        });
        if let Some(old) = old.map(|l| l.id) {
            self.detach_with_error(
                old,
                error(
                    LinkError::Stolen,
                    format!("link '{name}' was attached again on this session; the new attach took it over"),
                ),
            );
        }
    }

    /// Detaches a link on the broker's initiative.
    pub(super) fn detach_with_error(&mut self, id: LinkId, err: Error) {
        let Some((channel, handle)) = self.links.remove(&id) else {
            return;
        };
        if let Some(session) = self.sessions.get_mut(&channel) {
            let mut unanswered = None;
            if let Some(link) = session.links.get_mut(&handle) {
                if let LinkKind::Pending(p) = std::mem::replace(&mut link.kind, LinkKind::Closing) {
                    unanswered = Some(p.refused());
                }
            }
            if let Some(reply) = unanswered {
                // never answered: answer the attach (refused) before the detach
                self.write(channel, &Performative::Attach(reply));
            }
            let Some(session) = self.sessions.get_mut(&channel) else {
                return;
            };
            session.unsettled.retain(|_, (l, _)| *l != id);
            self.write(
                channel,
                &Performative::Detach(Detach {
                    handle: handle.into(),
                    closed: true,
                    error: Some(err),
                }),
            );
        }
    }
}
