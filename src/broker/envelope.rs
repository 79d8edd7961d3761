//! The envelope nodes exchange through the broker (`proto/cluster.proto`)
//! and the receiver's gap count. Pure: bytes in, values out.

use std::collections::HashMap;

use bytes::Bytes;
use prost::Message as _;

pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/ringcast.cluster.v1.rs"));
}

pub use proto::envelope::Body;
pub use proto::{
    Envelope, Heartbeat, Publication, PushReply, PushRequest, Query, QueryReply, Replicate, Trigger,
};

pub const VERSION: u32 = 1;

/// An envelope that cannot be used, with why.
#[derive(Debug, PartialEq, Eq)]
pub struct BadEnvelope(pub String);

pub fn encode(origin: &str, body: Body) -> Bytes {
    Envelope { version: VERSION, origin: origin.to_string(), body: Some(body) }.encode_to_vec().into()
}

/// Decodes a received envelope (`Bytes` fields stay slices of `bytes`).
pub fn decode(bytes: Bytes) -> Result<(String, Body), BadEnvelope> {
    let e = Envelope::decode(bytes).map_err(|e| BadEnvelope(format!("not a cluster envelope: {e}")))?;
    if e.version != VERSION {
        return Err(BadEnvelope(format!("envelope version {} (this node speaks {VERSION})", e.version)));
    }
    let body = e.body.ok_or_else(|| BadEnvelope("an envelope without a body".into()))?;
    Ok((e.origin, body))
}

/// Per (origin, topic): the next sequence number expected. A jump counts
/// the numbers skipped; anything at or below the last one seen (a node
/// restarted with a new id never collides: ids are per process) is a
/// duplicate, ignored by the count.
#[derive(Default)]
pub struct Gaps {
    /// origin → topic → next expected; looked up by `&str`, so a
    /// publication on a known stream allocates nothing.
    next: HashMap<String, HashMap<String, u64>>,
}

/// What one received publication means for its stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    InOrder,
    /// This many publications before it never arrived.
    After(u64),
    /// Already seen (a broker redelivery): do not deliver again.
    Duplicate,
}

impl Gaps {
    pub fn see(&mut self, origin: &str, topic: &str, seq: u64) -> Seen {
        let topics = match self.next.get_mut(origin) {
            Some(t) => t,
            None => self.next.entry(origin.to_string()).or_default(),
        };
        let Some(next) = topics.get_mut(topic) else {
            // The first seen on this stream: nothing to compare with.
            topics.insert(topic.to_string(), seq.saturating_add(1));
            return Seen::InOrder;
        };
        if seq < *next {
            return Seen::Duplicate;
        }
        let missed = seq - *next;
        *next = seq.saturating_add(1);
        if missed == 0 {
            Seen::InOrder
        } else {
            Seen::After(missed)
        }
    }

    /// Interest in `topic` ended: its streams restart from whatever comes next.
    pub fn forget_topic(&mut self, topic: &str) {
        for topics in self.next.values_mut() {
            topics.remove(topic);
        }
        self.next.retain(|_, t| !t.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publication_round_trips_with_its_frame_shared() {
        let frame = Bytes::from_static(b"\x81\x03abc");
        let bytes = encode("n1", Body::Publication(Publication { topic: "t".into(), seq: 7, frame }));
        let (origin, body) = decode(bytes).unwrap();
        assert_eq!(origin, "n1");
        let Body::Publication(p) = body else { panic!() };
        assert_eq!((p.topic.as_str(), p.seq, &p.frame[..]), ("t", 7, &b"\x81\x03abc"[..]));
    }

    #[test]
    fn foreign_bytes_and_other_versions_are_refused() {
        assert!(decode(Bytes::from_static(b"\xff\xff\xff")).is_err());
        let v2 = Envelope { version: 2, origin: "x".into(), body: None }.encode_to_vec();
        assert!(decode(v2.into()).unwrap_err().0.contains("version 2"));
        let empty = Envelope { version: 1, origin: "x".into(), body: None }.encode_to_vec();
        assert!(decode(empty.into()).is_err());
    }

    #[test]
    fn gaps_are_counted_per_origin_and_topic() {
        let mut g = Gaps::default();
        assert_eq!(g.see("a", "t", 5), Seen::InOrder);
        assert_eq!(g.see("a", "t", 6), Seen::InOrder);
        assert_eq!(g.see("a", "u", 1), Seen::InOrder);
        assert_eq!(g.see("a", "t", 9), Seen::After(2));
        assert_eq!(g.see("a", "t", 9), Seen::Duplicate);
        assert_eq!(g.see("b", "t", 1), Seen::InOrder);
        g.forget_topic("t");
        assert_eq!(g.see("a", "t", 20), Seen::InOrder);
    }
}
