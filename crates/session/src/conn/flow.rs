//! Flow: session windows, link credit and drain.

use ferrobus_codec::types::performatives::{Flow, Performative};
use tokio::io::{AsyncRead, AsyncWrite};

use super::attach::LinkKind;
use super::session::Pending;
use super::{Connection, Fatal};

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub(super) fn on_flow(&mut self, channel: u16, flow: Flow) -> Result<(), Fatal> {
        let Some(session) = self.session(channel)? else {
            return Ok(());
        };
        // the peer's window counts from its next-incoming-id (our first transfer-id if unset)
        let next_in = flow.next_incoming_id.unwrap_or(0);
        session.remote_incoming_window = next_in
            .wrapping_add(flow.incoming_window)
            .wrapping_sub(session.next_outgoing_id);
        let Some(handle) = flow.handle.map(|h| h.0) else {
            if flow.echo {
                self.session_flow(channel);
            }
            self.pump(channel);
            return Ok(());
        };
        let Some(link) = session.links.get_mut(&handle) else {
            self.unattached(channel, handle);
            return Ok(());
        };
        let mut echo = None;
        match &mut link.kind {
            LinkKind::Closing => {}
            // kept until the attach is answered
            LinkKind::Pending(p) => {
                p.flow = Some((
                    flow.delivery_count.unwrap_or(0),
                    flow.link_credit.unwrap_or(0),
                    flow.drain,
                ));
            }
            LinkKind::Out(out) => {
                let count = flow.delivery_count.unwrap_or(0);
                let credit = flow.link_credit.unwrap_or(0);
                out.credit = (count.wrapping_add(credit).wrapping_sub(out.delivery_count) as i32)
                    .max(0) as u32;
                out.ep.flow(count, credit, flow.drain);
                if flow.echo && !flow.drain {
                    echo = Some((out.delivery_count, out.credit));
                }
            }
            LinkKind::In(inl) => {
                if flow.echo {
                    echo = Some((inl.delivery_count, inl.credit));
                }
            }
        }
        if let Some((count, credit)) = echo {
            self.link_flow(channel, handle, count, credit, false);
        }
        self.pump(channel);
        Ok(())
    }

    /// Applies a flow the peer sent while the link's attach was pending.
    pub(super) fn replay_flow(
        &mut self,
        channel: u16,
        handle: u32,
        count: u32,
        credit: u32,
        drain: bool,
    ) {
        let Some(s) = self.sessions.get_mut(&channel) else {
            return;
        };
        if let Some(LinkKind::Out(out)) = s.links.get_mut(&handle).map(|l| &mut l.kind) {
            out.credit =
                (count.wrapping_add(credit).wrapping_sub(out.delivery_count) as i32).max(0) as u32;
            out.ep.flow(count, credit, drain);
        }
        self.pump(channel);
    }

    /// Writes a flow for one link, with the session's state.
    pub(super) fn link_flow(
        &mut self,
        channel: u16,
        handle: u32,
        delivery_count: u32,
        credit: u32,
        drain: bool,
    ) {
        let Some(s) = self.sessions.get(&channel) else {
            return;
        };
        let flow = Flow {
            next_incoming_id: Some(s.next_incoming_id),
            incoming_window: s.incoming_window,
            next_outgoing_id: s.next_outgoing_id,
            outgoing_window: u32::MAX,
            handle: Some(handle.into()),
            delivery_count: Some(delivery_count),
            link_credit: Some(credit),
            available: None,
            drain,
            echo: false,
            properties: None,
        };
        self.write(channel, &Performative::Flow(flow));
    }

    /// Writes a session-only flow.
    pub(super) fn session_flow(&mut self, channel: u16) {
        let Some(s) = self.sessions.get(&channel) else {
            return;
        };
        let flow = Flow {
            next_incoming_id: Some(s.next_incoming_id),
            incoming_window: s.incoming_window,
            next_outgoing_id: s.next_outgoing_id,
            outgoing_window: u32::MAX,
            handle: None,
            delivery_count: None,
            link_credit: None,
            available: None,
            drain: false,
            echo: false,
            properties: None,
        };
        self.write(channel, &Performative::Flow(flow));
    }

    /// Sends what waited for the peer's session window, in order.
    pub(super) fn pump(&mut self, channel: u16) {
        loop {
            let Some(s) = self.sessions.get_mut(&channel) else {
                return;
            };
            let ready = match s.pending.front() {
                None => return,
                Some(Pending::Drained(..)) => true,
                Some(Pending::Deliver(..)) => s.remote_incoming_window > 0,
            };
            if !ready {
                return;
            }
            match s.pending.pop_front().expect("front exists") {
                Pending::Deliver(link, d) => self.send_delivery(channel, link, d),
                Pending::Drained(link, count) => self.send_drained(channel, link, count),
            }
        }
    }

    /// A drain finished on the entity's side: echo the flow with the credit used up.
    pub(super) fn drained(&mut self, link: crate::api::LinkId, count: u32) {
        let Some(&(channel, _)) = self.links.get(&link) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&channel) else {
            return;
        };
        if !s.pending.is_empty() {
            s.pending.push_back(Pending::Drained(link, count));
            return;
        }
        self.send_drained(channel, link, count);
    }

    fn send_drained(&mut self, channel: u16, link: crate::api::LinkId, count: u32) {
        let Some(&(_, handle)) = self.links.get(&link) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&channel) else {
            return;
        };
        if let Some(LinkKind::Out(out)) = s.links.get_mut(&handle).map(|l| &mut l.kind) {
            out.delivery_count = count;
            out.credit = 0;
            self.link_flow(channel, handle, count, 0, true);
        }
    }
}
