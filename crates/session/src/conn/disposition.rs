//! Dispositions: consumers settle our deliveries; we settle producers' transfers.

use ferrobus_codec::types::definitions::Role;
use ferrobus_codec::types::messaging::DeliveryState;
use ferrobus_codec::types::performatives::{Disposition, Performative};
use tokio::io::{AsyncRead, AsyncWrite};

use super::attach::LinkKind;
use super::{Connection, Fatal};
use crate::api::LinkId;

/// A settled disposition waiting to be written; consecutive ones with the same outcome go
/// out as one range.
pub(crate) struct PendingDisposition {
    pub channel: u16,
    pub role: Role,
    pub id: u32,
    pub state: DeliveryState,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub(super) fn on_disposition(&mut self, channel: u16, d: Disposition) -> Result<(), Fatal> {
        if self.session(channel)?.is_none() {
            return Ok(());
        }
        let links = &self.links;
        let session = self.sessions.get_mut(&channel).expect("checked");
        if d.role == Role::Sender {
            // the peer settles its own transfers: we settled them first already
            return Ok(());
        }
        let first = d.first;
        let span = d.last.unwrap_or(first).wrapping_sub(first);
        let ids: Vec<u32> = if (span as usize) < session.unsettled.len() {
            (0..=span)
                .map(|i| first.wrapping_add(i))
                .filter(|id| session.unsettled.contains_key(id))
                .collect()
        } else {
            let mut v: Vec<u32> = session
                .unsettled
                .keys()
                .copied()
                .filter(|id| id.wrapping_sub(first) <= span)
                .collect();
            v.sort_by_key(|id| id.wrapping_sub(first));
            v
        };
        // the links that heard of a delivery (a range is usually all one link's)
        let mut touched: Vec<u32> = Vec::new();
        for id in ids {
            let (link, tag) = if d.settled {
                session.unsettled.remove(&id).expect("listed")
            } else {
                *session.unsettled.get(&id).expect("listed")
            };
            let Some(&(_, handle)) = links.get(&link) else {
                continue;
            };
            if let Some(LinkKind::Out(out)) = session.links.get_mut(&handle).map(|l| &mut l.kind) {
                out.ep.disposition(id, tag, d.state.clone(), d.settled);
                if !touched.contains(&handle) {
                    touched.push(handle);
                }
            }
        }
        for handle in touched {
            if let Some(LinkKind::Out(out)) = session.links.get_mut(&handle).map(|l| &mut l.kind) {
                out.ep.dispositions_end();
            }
        }
        Ok(())
    }

    /// The outcome of the peer's unsettled disposition is final: echo it settled.
    pub(super) fn settled(&mut self, link: LinkId, id: u32, state: DeliveryState) {
        let Some(&(channel, _)) = self.links.get(&link) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&channel) else {
            return;
        };
        if s.unsettled.remove(&id).is_some() {
            self.dispositions.push(PendingDisposition {
                channel,
                role: Role::Sender,
                id,
                state,
            });
        }
    }

    /// Writes the queued dispositions, merging runs of consecutive delivery-ids with the same
    /// outcome into one frame.
    pub(super) fn flush_dispositions(&mut self) {
        let pending = std::mem::take(&mut self.dispositions);
        let mut iter = pending.into_iter().peekable();
        while let Some(p) = iter.next() {
            let mut last = p.id;
            while let Some(n) = iter.peek() {
                let mergeable = n.channel == p.channel
                    && n.role == p.role
                    && n.id == last.wrapping_add(1)
                    && same_outcome(&n.state, &p.state);
                if !mergeable {
                    break;
                }
                last = n.id;
                iter.next();
            }
            let disp = Disposition {
                role: p.role,
                first: p.id,
                last: (last != p.id).then_some(last),
                settled: true,
                state: Some(p.state),
                batchable: false,
            };
            if self.sessions.contains_key(&p.channel) {
                self.write(p.channel, &Performative::Disposition(disp));
            }
        }
    }
}

fn same_outcome(a: &DeliveryState, b: &DeliveryState) -> bool {
    matches!(
        (a, b),
        (DeliveryState::Accepted(_), DeliveryState::Accepted(_))
    ) || matches!(
        (a, b),
        (DeliveryState::Released(_), DeliveryState::Released(_))
    )
}
