//! # Several writes, one netlink datagram
//!
//! A lease change costs one peer three or four kernel writes (neighbour, FDB entry, route, and
//! the route's nexthop object). Sent one by one, each is a `sendmsg`, a wait for the ACK and a
//! wake-up of the task that waits. The kernel reads every message of a datagram in turn
//! (`netlink_rcv_skb`) and answers each with its own ACK, in order, so [`Netlink::write_batch`]
//! puts the route-socket messages of a batch in one datagram and reads the ACKs back in that
//! order: one round trip for the lot.
//!
//! Nexthop objects travel on their own connection (see the `nexthop` module), so they frame
//! the batch: objects a route will name are written before the datagram, objects of deleted
//! routes after it (deleting an object a route still uses would sweep the whole FIB). A lease
//! change is then two round trips instead of four.
//!
//! Every write gets its own result; a failed one does not stop the others (the kernel goes on
//! with the next message too), and deletions of something already gone succeed, as the
//! one-at-a-time methods do.

use std::net::IpAddr;

use futures::StreamExt;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::{Netlink, NetlinkError, Result, Route};

/// One kernel write of a batch ([`crate::kernel::Kernel::write_batch`]), named like the
/// method that does it alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelWrite {
    /// [`Netlink::replace_neigh`].
    ReplaceNeigh {
        /// Device.
        ifindex: u32,
        /// Neighbour IP.
        ip: IpAddr,
        /// Its MAC.
        mac: [u8; 6],
    },
    /// [`Netlink::del_neigh`].
    DelNeigh {
        /// Device.
        ifindex: u32,
        /// Neighbour IP.
        ip: IpAddr,
    },
    /// [`Netlink::replace_fdb`].
    ReplaceFdb {
        /// Device.
        ifindex: u32,
        /// Entry MAC.
        mac: [u8; 6],
        /// Remote.
        dst: IpAddr,
    },
    /// [`Netlink::del_fdb`].
    DelFdb {
        /// Device.
        ifindex: u32,
        /// Entry MAC.
        mac: [u8; 6],
        /// The remote to remove (`None`: the whole entry).
        dst: Option<IpAddr>,
    },
    /// [`Netlink::replace_route`].
    ReplaceRoute(Route),
    /// [`Netlink::del_route`].
    DelRoute(Route),
}

/// One prepared request: what is sent, and whether "no such entry" counts as done.
pub(super) struct Prepared {
    pub(super) op: String,
    pub(super) msg: RouteNetlinkMessage,
    /// `NLM_F_*` beyond `NLM_F_REQUEST | NLM_F_ACK`.
    pub(super) flags: u16,
    pub(super) absent_ok: bool,
}

impl Prepared {
    pub(super) fn write(op: String, msg: RouteNetlinkMessage) -> Prepared {
        Prepared {
            op,
            msg,
            flags: NLM_F_CREATE | NLM_F_REPLACE,
            absent_ok: false,
        }
    }

    pub(super) fn delete(op: String, msg: RouteNetlinkMessage) -> Prepared {
        Prepared {
            op,
            msg,
            flags: 0,
            absent_ok: true,
        }
    }
}

/// `result`, with "no such entry" turned into success when `absent_ok`.
fn outcome(absent_ok: bool, result: Result<()>) -> Result<()> {
    match result {
        Err(NetlinkError::NotFound(_)) if absent_ok => Ok(()),
        other => other,
    }
}

impl Netlink {
    /// Sends one prepared request alone and waits for its ACK.
    pub(super) async fn send_prepared(&self, p: Prepared) -> Result<()> {
        let result = self.ack(&p.op, p.msg, p.flags).await;
        outcome(p.absent_ok, result)
    }

    /// One write through [`Netlink::write_batch`] (the methods that do a write alone).
    pub(super) async fn write_one(&self, write: KernelWrite) -> Result<()> {
        self.write_batch(std::slice::from_ref(&write))
            .await
            .pop()
            .unwrap_or_else(|| Err(NetlinkError::Other("empty batch result".into())))
    }

    /// `writes` in order (see the module docs): one result per write.
    pub async fn write_batch(&self, writes: &[KernelWrite]) -> Vec<Result<()>> {
        let mut results: Vec<Result<()>> = writes.iter().map(|_| Ok(())).collect();
        // Objects the routes will name, first.
        for (i, w) in writes.iter().enumerate() {
            if let KernelWrite::ReplaceRoute(r) = w
                && let Some(id) = r.nexthop_id
                && let Err(e) = self.replace_nexthop(&r.nexthop_object(id)).await
            {
                results[i] = Err(e);
            }
        }
        // The datagram: every request, tagged with the write it belongs to.
        let mut owner = Vec::new();
        let mut prepared = Vec::new();
        for (i, w) in writes.iter().enumerate() {
            if results[i].is_err() {
                continue;
            }
            for p in Self::prepare(w) {
                owner.push(i);
                prepared.push(p);
            }
        }
        for (i, r) in owner.into_iter().zip(self.ack_batch(prepared).await) {
            if results[i].is_ok() {
                results[i] = r;
            }
        }
        // Objects of deleted routes, last.
        for (i, w) in writes.iter().enumerate() {
            if let KernelWrite::DelRoute(r) = w
                && let Some(id) = r.nexthop_id
                && results[i].is_ok()
            {
                results[i] = self.del_nexthop(id).await;
            }
        }
        results
    }

    /// The route-socket requests of one write.
    fn prepare(w: &KernelWrite) -> Vec<Prepared> {
        match w {
            KernelWrite::ReplaceNeigh { ifindex, ip, mac } => {
                vec![Self::replace_neigh_request(*ifindex, *ip, *mac)]
            }
            KernelWrite::DelNeigh { ifindex, ip } => vec![Self::del_neigh_request(*ifindex, *ip)],
            KernelWrite::ReplaceFdb { ifindex, mac, dst } => {
                vec![Self::replace_fdb_request(*ifindex, *mac, *dst)]
            }
            KernelWrite::DelFdb { ifindex, mac, dst } => {
                vec![Self::del_fdb_request(*ifindex, *mac, *dst)]
            }
            KernelWrite::ReplaceRoute(r) => vec![Self::replace_route_request(r)],
            KernelWrite::DelRoute(r) => {
                // Through its object (`nhid`) and, for a route written the old way, inline;
                // whichever is not there answers "no such route", which is fine.
                let mut out = vec![Self::del_route_request(r)];
                if r.nexthop_id.is_some() {
                    out.push(Self::del_route_request(&Route {
                        nexthop_id: None,
                        ..r.clone()
                    }));
                }
                out
            }
        }
    }

    /// Sends `requests` as one datagram and returns one result per request, from the ACKs in
    /// order.
    async fn ack_batch(&self, requests: Vec<Prepared>) -> Vec<Result<()>> {
        let n = requests.len();
        if n == 0 {
            return Vec::new();
        }
        // What each request is (for its error and its verdict), and the messages themselves.
        let (requests, messages): (
            Vec<(String, bool)>,
            Vec<NetlinkMessage<RouteNetlinkMessage>>,
        ) = requests
            .into_iter()
            .map(|p| {
                let mut m = NetlinkMessage::from(p.msg);
                m.header.flags = p.flags | NLM_F_REQUEST | NLM_F_ACK;
                ((p.op, p.absent_ok), m)
            })
            .unzip();
        let mut acks: Vec<Result<()>> = Vec::with_capacity(n);
        match self
            .handle
            .request_batch(messages, netlink_sys::SocketAddr::new(0, 0))
        {
            Ok(mut replies) => {
                while let Some(reply) = replies.next().await {
                    let i = acks.len();
                    if i >= n {
                        break;
                    }
                    match reply.payload {
                        NetlinkPayload::Error(e) if e.code.is_some() => {
                            acks.push(Err(NetlinkError::from_message(&requests[i].0, &e)));
                        }
                        NetlinkPayload::Error(_) => acks.push(Ok(())),
                        NetlinkPayload::Overrun(_) => break,
                        // Echoes and other replies carry no verdict.
                        _ => {}
                    }
                }
            }
            Err(e) => {
                return requests
                    .iter()
                    .map(|(op, _)| Err(NetlinkError::other(op, &e)))
                    .collect();
            }
        }
        let mut acks = acks.into_iter();
        requests
            .into_iter()
            .map(|(op, absent_ok)| match acks.next() {
                Some(r) => outcome(absent_ok, r),
                None => Err(NetlinkError::Other(format!(
                    "{op}: no answer from the kernel"
                ))),
            })
            .collect()
    }
}
