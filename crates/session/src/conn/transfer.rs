//! Transfers: messages from producers, deliveries to consumers.

use bytes::{Bytes, BytesMut};
use ferrobus_codec::frame::encode_transfer;
use ferrobus_codec::message::{encode_delivery_prefix, HeaderFields, Sections};
use ferrobus_codec::types::definitions::{AmqpError, LinkError, SessionError};
use ferrobus_codec::types::messaging::DeliveryState;
use ferrobus_codec::types::performatives::Transfer;
use ferrobus_codec::types::primitives::Binary;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::warn;

use super::attach::{LinkKind, Partial};
use super::disposition::PendingDisposition;
use super::session::{Pending, INCOMING_WINDOW};
use super::{error, Connection, Fatal};
use crate::api::{LinkId, OutgoingBody, OutgoingDelivery};
use ferrobus_codec::types::definitions::Role;

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub(super) fn on_transfer(
        &mut self,
        channel: u16,
        t: Transfer,
        payload: Bytes,
    ) -> Result<(), Fatal> {
        let max_message = self.cfg.max_message_size;
        let handle = t.handle.0;
        let Some(session) = self.session(channel)? else {
            return Ok(());
        };
        session.next_incoming_id = session.next_incoming_id.wrapping_add(1);
        session.incoming_window = session.incoming_window.saturating_sub(1);
        let renew_window = session.incoming_window < INCOMING_WINDOW / 2;
        if renew_window {
            session.incoming_window = INCOMING_WINDOW;
        }
        let Some(link) = session.links.get_mut(&handle) else {
            self.unattached(channel, handle);
            return Ok(());
        };
        let link_id = link.id;
        let inl = match &mut link.kind {
            LinkKind::Closing | LinkKind::Pending(_) => return Ok(()),
            LinkKind::Out(_) => {
                self.end_session(
                    channel,
                    error(
                        SessionError::ErrantLink,
                        format!("transfer on handle {handle}, where the client receives"),
                    ),
                );
                return Ok(());
            }
            LinkKind::In(inl) => inl,
        };
        let mut complete = None;
        let mut handed = false;
        let mut too_large: Option<(u32, bool, u64)> = None;
        let mut fail = None;
        if inl.partial.is_none() {
            // the first frame of a delivery
            match t.delivery_id {
                None => {
                    fail = Some(error(
                        AmqpError::InvalidField,
                        "the first transfer of a delivery needs a delivery-id",
                    ))
                }
                Some(_) if inl.credit == 0 => {
                    fail = Some(error(
                        LinkError::TransferLimitExceeded,
                        "transfer without link credit",
                    ))
                }
                Some(id) => {
                    inl.credit -= 1;
                    inl.delivery_count = inl.delivery_count.wrapping_add(1);
                    let settled = t.settled.unwrap_or(false);
                    let format = t.message_format.unwrap_or(0);
                    if t.aborted {
                    } else if t.more {
                        let mut buf = BytesMut::with_capacity(payload.len() * 4);
                        buf.extend_from_slice(&payload);
                        inl.partial = Some(Partial {
                            delivery_id: id,
                            settled,
                            message_format: format,
                            size: payload.len() as u64,
                            buf,
                        });
                    } else {
                        complete = Some((id, settled, format, payload));
                    }
                }
            }
        } else if t.aborted {
            inl.partial = None;
        } else {
            let p = inl.partial.as_mut().expect("checked");
            p.size += payload.len() as u64;
            // past the limit the rest is read and dropped: the delivery is refused, the link stays
            if p.size <= max_message {
                p.buf.extend_from_slice(&payload);
            } else if !p.buf.is_empty() {
                p.buf = BytesMut::new();
            }
            p.settled |= t.settled.unwrap_or(false);
            if !t.more {
                let p = inl.partial.take().expect("checked");
                if p.size > max_message {
                    too_large = Some((p.delivery_id, p.settled, p.size));
                } else {
                    complete = Some((p.delivery_id, p.settled, p.message_format, p.buf.freeze()));
                }
            }
        }
        if let Some((id, settled, format, payload)) = complete {
            if payload.len() as u64 > max_message {
                too_large = Some((id, settled, payload.len() as u64));
            } else {
                if !settled {
                    inl.unsettled.insert(id);
                }
                inl.outstanding += 1;
                inl.ep.message(id, settled, format, payload);
                handed = true;
            }
        }
        if let Some((id, settled, _)) = too_large {
            // answered like any other outcome, so credit flows as usual
            if !settled {
                inl.unsettled.insert(id);
            }
            inl.outstanding += 1;
        }
        if handed && !self.incoming.contains(&(channel, handle)) {
            self.incoming.push((channel, handle));
        }
        if renew_window {
            self.session_flow(channel);
        }
        if let Some(err) = fail {
            self.detach_with_error(link_id, err);
        }
        if let Some((id, _, size)) = too_large {
            let err = error(
                LinkError::MessageSizeExceeded,
                format!("a message of {size} bytes is larger than max-message-size {max_message}"),
            );
            let state = DeliveryState::Rejected(ferrobus_codec::types::messaging::Rejected {
                error: Some(err),
            });
            self.published(link_id, id, state);
        }
        Ok(())
    }

    /// The outcome of a producer's message is known.
    pub(super) fn published(&mut self, link: LinkId, id: u32, state: DeliveryState) {
        let Some(&(channel, handle)) = self.links.get(&link) else {
            return;
        };
        let window = self.cfg.link_credit;
        let Some(s) = self.sessions.get_mut(&channel) else {
            return;
        };
        let Some(LinkKind::In(inl)) = s.links.get_mut(&handle).map(|l| &mut l.kind) else {
            return;
        };
        inl.outstanding = inl.outstanding.saturating_sub(1);
        if inl.unsettled.remove(&id) {
            self.dispositions.push(PendingDisposition {
                channel,
                role: Role::Receiver,
                id,
                state,
            });
        }
        // credit comes back as outcomes do, so a slow store slows its producers down
        if inl.credit + inl.outstanding <= window / 2 {
            inl.credit = window - inl.outstanding.min(window);
            let (count, credit) = (inl.delivery_count, inl.credit);
            self.link_flow(channel, handle, count, credit, false);
        }
    }

    /// A delivery for an outgoing link: send it now, or once the session window opens.
    pub(super) fn deliver(&mut self, link: LinkId, d: OutgoingDelivery) {
        let Some(&(channel, _)) = self.links.get(&link) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&channel) else {
            return;
        };
        if !s.pending.is_empty() || s.remote_incoming_window == 0 {
            s.pending.push_back(Pending::Deliver(link, d));
            return;
        }
        self.send_delivery(channel, link, d);
    }

    pub(super) fn send_delivery(&mut self, channel: u16, link: LinkId, d: OutgoingDelivery) {
        let Some(&(_, handle)) = self.links.get(&link) else {
            return;
        };
        let max_frame = self.peer_max_frame;
        let Some(s) = self.sessions.get_mut(&channel) else {
            return;
        };
        let Some(LinkKind::Out(out)) = s.links.get_mut(&handle).map(|l| &mut l.kind) else {
            return;
        };
        let settled = d.settled || out.presettled;
        let id = s.next_delivery_id;
        s.next_delivery_id = s.next_delivery_id.wrapping_add(1);
        out.delivery_count = out.delivery_count.wrapping_add(1);
        out.credit = out.credit.saturating_sub(1);
        let transfer = Transfer {
            handle: handle.into(),
            delivery_id: Some(id),
            delivery_tag: Some(Binary::from(d.tag.to_vec())),
            message_format: Some(d.message_format),
            settled: Some(settled),
            more: false,
            rcv_settle_mode: None,
            state: None,
            resume: false,
            aborted: false,
            batchable: false,
        };
        let frames = match &d.body {
            OutgoingBody::Encoded(bytes) => {
                encode_transfer(&mut self.wbuf, channel, transfer, &[bytes], max_frame)
            }
            OutgoingBody::Stored {
                payload,
                delivery_count,
                ttl_ms,
                annotations,
                owned,
            } => {
                let mut prefix = BytesMut::with_capacity(128);
                let bare = match Sections::scan_stored(payload) {
                    Ok(sections) => match sections
                        .header(payload)
                        .map(|h| HeaderFields::for_delivery(h.as_ref(), *delivery_count, *ttl_ms))
                        .and_then(|header| {
                            encode_delivery_prefix(
                                &mut prefix,
                                payload,
                                &sections,
                                &header,
                                annotations,
                                owned,
                            )
                        }) {
                        Ok(()) => &payload[sections.bare.clone()],
                        Err(e) => {
                            warn!(error = %e, "stored message annotations unreadable; sending it as stored");
                            prefix.clear();
                            &payload[..]
                        }
                    },
                    Err(e) => {
                        warn!(error = %e, "stored message unreadable; sending it as stored");
                        &payload[..]
                    }
                };
                encode_transfer(
                    &mut self.wbuf,
                    channel,
                    transfer,
                    &[&prefix, bare],
                    max_frame,
                )
            }
        };
        s.next_outgoing_id = s.next_outgoing_id.wrapping_add(frames);
        s.remote_incoming_window = s.remote_incoming_window.saturating_sub(frames);
        if !settled {
            s.unsettled.insert(id, (link, d.tag));
        }
    }
}
