//! Publication history, for clients that reconnect and recover what they
//! missed (issue "History and recovery"). This is the node-local store the
//! memory broker will keep: which topics keep history (the first
//! `[[history]]` table whose pattern fits), one `Stream` per topic that has
//! one, and the totals behind the `ringcast_history_*` gauges. No I/O and
//! no clock: times come in as ms, so it can be tested and fuzzed alone.
//!
//! Not wired into publishing, joins or the API yet: the next steps are
//! offsets on deliveries, `@stream` and `recover` on joins, `/history`, and
//! the Redis and NATS stores.

pub mod stream;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::auth::Grants;
pub use stream::{Gap, Policy, Position, Publication, Stream};

/// The topics one policy covers (names, or prefixes ending in `*`).
#[derive(Debug)]
pub struct Table {
    pub topics: Grants,
    pub policy: Policy,
}

/// Every topic's history on this node.
pub struct Store {
    tables: Vec<Table>,
    streams: HashMap<Box<str>, (Stream, Policy)>,
    new_epoch: fn() -> Arc<str>,
}

impl Store {
    pub fn new(tables: Vec<Table>) -> Store {
        Store::with_epochs(tables, random_epoch)
    }

    /// A store whose epochs come from `new_epoch` (tests name them).
    pub fn with_epochs(tables: Vec<Table>, new_epoch: fn() -> Arc<str>) -> Store {
        Store { tables, streams: HashMap::new(), new_epoch }
    }

    /// The policy of the first table that fits `topic`; None: no history.
    pub fn policy(&self, topic: &str) -> Option<Policy> {
        self.tables.iter().find(|t| t.topics.allows(topic)).map(|t| t.policy)
    }

    /// Keeps a publication to `topic`; its position, or None if the topic
    /// keeps no history.
    pub fn publish(&mut self, topic: &str, payload: Bytes, now_ms: u64) -> Option<Position> {
        let (stream, policy) = self.stream(topic, now_ms)?;
        let offset = stream.append(payload, now_ms, policy);
        Some(Position { offset, epoch: stream.position().epoch })
    }

    /// Where `topic` is now (creating its epoch at offset 0 if it has none).
    pub fn position(&mut self, topic: &str, now_ms: u64) -> Option<Position> {
        Some(self.stream(topic, now_ms)?.0.position())
    }

    /// The current position and what came after `since` (whole or `Lost`).
    pub fn since(
        &mut self,
        topic: &str,
        since: &Position,
        limit: usize,
        now_ms: u64,
    ) -> Option<(Position, Gap)> {
        let (stream, _) = self.stream(topic, now_ms)?;
        Some((stream.position(), stream.since(since, limit)))
    }

    /// The current position and the newest `limit` publications.
    pub fn newest(&mut self, topic: &str, limit: usize, now_ms: u64) -> Option<(Position, Vec<Publication>)> {
        let (stream, _) = self.stream(topic, now_ms)?;
        Some((stream.position(), stream.newest(limit)))
    }

    /// Drops expired publications everywhere and the positions past
    /// `meta_ttl_ms` (a topic published to again then starts a new epoch).
    pub fn sweep(&mut self, now_ms: u64) {
        self.streams.retain(|_, (stream, policy)| {
            stream.expire(now_ms, policy);
            !stream.is_stale(now_ms, policy)
        });
    }

    /// (publications, bytes) kept over all topics: the gauges.
    pub fn totals(&self) -> (usize, usize) {
        self.streams.values().fold((0, 0), |(n, b), (s, _)| (n + s.len(), b + s.bytes()))
    }

    /// The topic's stream with its expired publications dropped; created
    /// with a fresh epoch if the topic keeps history and has none.
    fn stream(&mut self, topic: &str, now_ms: u64) -> Option<(&mut Stream, &Policy)> {
        if !self.streams.contains_key(topic) {
            let policy = self.policy(topic)?;
            self.streams.insert(topic.into(), (Stream::new((self.new_epoch)(), now_ms), policy));
        }
        let (stream, policy) = self.streams.get_mut(topic)?;
        stream.expire(now_ms, policy);
        Some((stream, policy))
    }
}

/// 8 random characters of `[0-9a-z]`: another run of offsets is told
/// from this one with a chance of 1 in 2.8 × 10^12.
fn random_epoch() -> Arc<str> {
    const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source works");
    b.iter().map(|&x| ALPHABET[x as usize % 36] as char).collect::<String>().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(patterns: &[&str], size: usize) -> Table {
        Table {
            topics: Grants::parse(patterns).unwrap(),
            policy: Policy { size, ttl_ms: 1_000, meta_ttl_ms: 5_000 },
        }
    }

    #[test]
    fn the_first_fitting_table_decides_and_other_topics_keep_nothing() {
        let mut store = Store::new(vec![table(&["chat.vip"], 10), table(&["chat.*", "news"], 2)]);
        assert_eq!(store.policy("chat.vip").unwrap().size, 10);
        assert_eq!(store.policy("chat.1").unwrap().size, 2);
        assert_eq!(store.policy("chat"), None);
        assert_eq!(store.publish("other", Bytes::from_static(b"x"), 0), None);
        assert_eq!(store.position("other", 0), None);

        let first = store.publish("news", Bytes::from_static(b"a"), 0).unwrap();
        assert_eq!(first.offset, 1);
        assert_eq!(first.epoch.len(), 8);
        for payload in ["b", "c"] {
            store.publish("news", Bytes::from(payload), 1);
        }
        assert_eq!(store.totals(), (2, 2 + 2 * stream::ENTRY_OVERHEAD), "size 2");
        let (now, gap) = store.since("news", &first, 10, 2).unwrap();
        assert_eq!((now.offset, &now.epoch), (3, &first.epoch));
        assert!(matches!(gap, Gap::Whole(ref p) if p.iter().map(|p| p.offset).eq([2, 3])));
        assert_ne!(store.position("chat.1", 2).unwrap().epoch, first.epoch, "an epoch per topic");
    }

    #[test]
    fn a_position_past_meta_ttl_is_forgotten_and_the_topic_starts_a_new_epoch() {
        fn named() -> Arc<str> {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            format!("e{}", N.fetch_add(1, Ordering::Relaxed)).into()
        }
        let mut store = Store::with_epochs(vec![table(&["t"], 5)], named);
        let old = store.publish("t", Bytes::from_static(b"a"), 0).unwrap();
        store.sweep(1_000);
        assert_eq!(store.totals(), (0, 0), "past ttl_ms");
        assert_eq!(store.position("t", 1_000).unwrap(), old, "the position stays");
        store.sweep(5_000);
        let new = store.position("t", 5_000).unwrap();
        assert_eq!(new.offset, 0);
        assert_ne!(new.epoch, old.epoch);
        assert_eq!(
            store.since("t", &old, 10, 5_000).unwrap().1,
            Gap::Lost,
            "another epoch: nothing replayed"
        );
    }
}
