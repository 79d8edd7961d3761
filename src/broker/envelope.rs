//! The envelope nodes exchange through the broker (`proto/cluster.proto`)
//! and the receiver's gap count. Pure: bytes in, values out.

use std::collections::HashMap;

use bytes::Bytes;
use prost::Message as _;

use crate::proto;

pub use proto::envelope::Body;
pub use proto::{
    Envelope, Heartbeat, Publication, PushReply, PushRequest, Query, QueryReply, Replicate, Trigger,
};

pub const VERSION: u32 = 2;

/// An envelope that cannot be used, with why.
#[derive(Debug, PartialEq, Eq)]
pub enum BadEnvelope {
    /// Not protobuf of an envelope (the decoder's reason).
    Undecodable(String),
    /// Another envelope version (an incompatible node).
    Version(u32),
    NoBody,
}

impl std::fmt::Display for BadEnvelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadEnvelope::Undecodable(e) => write!(f, "not a cluster envelope: {e}"),
            BadEnvelope::Version(v) => write!(f, "envelope version {v} (this node speaks {VERSION})"),
            BadEnvelope::NoBody => f.write_str("an envelope without a body"),
        }
    }
}

impl std::error::Error for BadEnvelope {}

/// The envelope of `body` from `origin`, sent at `sent_at_ms` (Unix ms);
/// sealed (`seal::Sealer::seal_message`) before it goes to the broker.
pub fn envelope(origin: &str, sent_at_ms: u64, body: Body) -> Envelope {
    Envelope { version: VERSION, origin: origin.to_string(), body: Some(body), sent_at_ms }
}

/// What a received envelope says.
#[derive(Debug)]
pub struct Received {
    pub origin: String,
    pub sent_at_ms: u64,
    pub body: Body,
}

/// Decodes a received envelope (`Bytes` fields stay slices of `bytes`).
pub fn decode(bytes: Bytes) -> Result<Received, BadEnvelope> {
    let e = Envelope::decode(bytes).map_err(|e| BadEnvelope::Undecodable(e.to_string()))?;
    if e.version != VERSION {
        return Err(BadEnvelope::Version(e.version));
    }
    let body = e.body.ok_or(BadEnvelope::NoBody)?;
    Ok(Received { origin: e.origin, sent_at_ms: e.sent_at_ms, body })
}

/// A sequence number further than this ahead of the expected one is not a
/// gap to count but a broken stream: it restarts.
pub const MAX_SEQUENCE_JUMP: u64 = 1 << 16;
/// Origins whose streams are tracked at once; past it the one heard from
/// least recently is forgotten (its streams restart, uncounted).
pub const MAX_ORIGINS: usize = 1024;

/// Per (origin, topic): the next sequence number expected. A jump counts
/// the numbers skipped; anything at or below the last one seen (a node
/// restarted with a new id never collides: ids are per process) is a
/// duplicate, ignored by the count (a replayed genuine envelope is one).
/// Bounded: at most `MAX_ORIGINS` origins, and a number more than
/// `MAX_SEQUENCE_JUMP` ahead is dropped and restarts the stream instead of
/// moving it (a forged `seq = 2^63` would otherwise make every genuine
/// publication after it a "duplicate").
#[derive(Default)]
pub struct Gaps {
    /// origin → its streams; looked up by `&str`, so a publication on a
    /// known stream allocates nothing.
    next: HashMap<String, Origin>,
    /// Bumped per publication seen: recency of origins.
    clock: u64,
}

#[derive(Default)]
struct Origin {
    /// topic → next expected.
    topics: HashMap<String, u64>,
    last_seen: u64,
}

/// What one received publication means for its stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    InOrder,
    /// This many publications before it never arrived.
    After(u64),
    /// Already seen (a broker redelivery): do not deliver again.
    Duplicate,
    /// Too far ahead of the stream's position: not delivered, and the
    /// stream starts again with whatever comes next.
    Reset,
}

impl Gaps {
    pub fn see(&mut self, origin: &str, topic: &str, seq: u64) -> Seen {
        self.clock += 1;
        let clock = self.clock;
        if !self.next.contains_key(origin) && self.next.len() >= MAX_ORIGINS {
            let oldest = self.next.iter().min_by_key(|(_, o)| o.last_seen).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.next.remove(&k);
            }
        }
        let o = match self.next.get_mut(origin) {
            Some(o) => o,
            None => self.next.entry(origin.to_string()).or_default(),
        };
        o.last_seen = clock;
        let Some(next) = o.topics.get_mut(topic) else {
            // The first seen on this stream: nothing to compare with.
            o.topics.insert(topic.to_string(), seq.saturating_add(1));
            return Seen::InOrder;
        };
        if seq > next.saturating_add(MAX_SEQUENCE_JUMP) {
            o.topics.remove(topic);
            return Seen::Reset;
        }
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
        for o in self.next.values_mut() {
            o.topics.remove(topic);
        }
        self.next.retain(|_, o| !o.topics.is_empty());
    }

    /// Origins tracked now.
    pub fn origins(&self) -> usize {
        self.next.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publication_round_trips_with_its_frame_shared() {
        let frame = Bytes::from_static(b"\x81\x03abc");
        let e = envelope("n1", 42, Body::Publication(Publication { topic: "t".into(), seq: 7, frame }));
        let r = decode(e.encode_to_vec().into()).unwrap();
        assert_eq!((r.origin.as_str(), r.sent_at_ms), ("n1", 42));
        let Body::Publication(p) = r.body else { panic!() };
        assert_eq!((p.topic.as_str(), p.seq, &p.frame[..]), ("t", 7, &b"\x81\x03abc"[..]));
    }

    #[test]
    fn foreign_bytes_and_other_versions_are_refused() {
        assert!(decode(Bytes::from_static(b"\xff\xff\xff")).is_err());
        let v1 = Envelope { version: 1, origin: "x".into(), body: None, sent_at_ms: 0 }.encode_to_vec();
        assert!(decode(v1.into()).unwrap_err().to_string().contains("version 1"));
        let empty = Envelope { version: 2, origin: "x".into(), body: None, sent_at_ms: 0 }.encode_to_vec();
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

    #[test]
    fn a_huge_jump_restarts_the_stream_instead_of_silencing_it() {
        let mut g = Gaps::default();
        assert_eq!(g.see("a", "t", 1), Seen::InOrder);
        assert_eq!(g.see("a", "t", 1 << 63), Seen::Reset);
        // The genuine stream goes on.
        assert_eq!(g.see("a", "t", 2), Seen::InOrder);
        assert_eq!(g.see("a", "t", 3), Seen::InOrder);
        // A jump within the bound is a gap; anything behind a duplicate.
        assert_eq!(g.see("a", "t", 10), Seen::After(6));
        assert_eq!(g.see("a", "t", 1), Seen::Duplicate);
    }

    #[test]
    fn origins_are_bounded_forgetting_the_least_recent() {
        let mut g = Gaps::default();
        for i in 0..MAX_ORIGINS + 10 {
            g.see(&format!("o{i}"), "t", 1);
            g.see("steady", "t", i as u64 + 1);
        }
        assert_eq!(g.origins(), MAX_ORIGINS);
        // The origin heard all along is still tracked.
        assert_eq!(g.see("steady", "t", MAX_ORIGINS as u64 + 11), Seen::InOrder);
        assert_eq!(g.see("steady", "t", 2), Seen::Duplicate);
    }
}
