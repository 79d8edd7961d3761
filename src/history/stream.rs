//! One topic's history, without I/O or clocks of its own (times are passed
//! in, in ms): the publications kept (at most `size`, each for `ttl_ms`),
//! the offset of the newest, and the epoch that names this run of offsets.
//! A gap is answered whole or not at all: never a partial recovery.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

/// How much of a topic is kept, from its `[[history]]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Publications kept (1–10,000).
    pub size: usize,
    /// How long a publication is kept after it was published.
    pub ttl_ms: u64,
    /// How long the position (epoch, offset) outlives the last publication.
    pub meta_ttl_ms: u64,
}

/// Where a stream is: the offset of its newest publication (0: none yet)
/// in the run of offsets its epoch names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub offset: u64,
    pub epoch: Arc<str>,
}

/// A kept publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub offset: u64,
    pub payload: Bytes,
}

/// The answer to "what came after this position".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gap {
    /// Every publication after it is kept: the first `limit` of them, in
    /// offset order (empty when nothing was missed).
    Whole(Vec<Publication>),
    /// Another epoch, an offset ahead of the stream, or a missed
    /// publication no longer kept: nothing can be replayed.
    Lost,
}

/// Bytes a kept publication costs beyond its payload (the entry and the
/// payload's shared header), for the `ringcast_history_bytes` gauge.
pub const ENTRY_OVERHEAD: usize = std::mem::size_of::<Kept>() + 32;

#[derive(Debug)]
struct Kept {
    offset: u64,
    at_ms: u64,
    payload: Bytes,
}

#[derive(Debug)]
pub struct Stream {
    epoch: Arc<str>,
    top: u64,
    kept: VecDeque<Kept>,
    bytes: usize,
    last_ms: u64,
}

impl Stream {
    /// A stream with no publications, at offset 0 of `epoch`.
    pub fn new(epoch: Arc<str>, now_ms: u64) -> Stream {
        Stream { epoch, top: 0, kept: VecDeque::new(), bytes: 0, last_ms: now_ms }
    }

    pub fn position(&self) -> Position {
        Position { offset: self.top, epoch: self.epoch.clone() }
    }

    /// Publications kept now.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Bytes the kept publications cost (payloads and `ENTRY_OVERHEAD` each).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keeps `payload` as the next offset, which it returns; the oldest
    /// publication goes when `size` would be passed.
    pub fn append(&mut self, payload: Bytes, now_ms: u64, policy: &Policy) -> u64 {
        self.top += 1;
        self.last_ms = now_ms;
        self.bytes += payload.len() + ENTRY_OVERHEAD;
        self.kept.push_back(Kept { offset: self.top, at_ms: now_ms, payload });
        while self.kept.len() > policy.size.max(1) {
            self.drop_oldest();
        }
        self.top
    }

    /// Drops the publications older than `ttl_ms`.
    pub fn expire(&mut self, now_ms: u64, policy: &Policy) {
        while self.kept.front().is_some_and(|k| now_ms.saturating_sub(k.at_ms) >= policy.ttl_ms) {
            self.drop_oldest();
        }
    }

    /// Nothing kept and no publication for `meta_ttl_ms`: the position may go.
    pub fn is_stale(&self, now_ms: u64, policy: &Policy) -> bool {
        self.kept.is_empty() && now_ms.saturating_sub(self.last_ms) >= policy.meta_ttl_ms
    }

    /// The publications after `since`, at most `limit` — or `Lost` unless
    /// every one of them is still kept (call `expire` first).
    pub fn since(&self, since: &Position, limit: usize) -> Gap {
        if since.epoch != self.epoch || since.offset > self.top {
            return Gap::Lost;
        }
        let first_kept = self.kept.front().map_or(self.top + 1, |k| k.offset);
        if since.offset + 1 < first_kept {
            return Gap::Lost;
        }
        // Offsets are contiguous from `first_kept`: index arithmetic, no search.
        let skip = (since.offset + 1 - first_kept) as usize;
        Gap::Whole(self.kept.iter().skip(skip).take(limit).map(Kept::publication).collect())
    }

    /// The newest `limit` publications, in offset order.
    pub fn newest(&self, limit: usize) -> Vec<Publication> {
        let skip = self.kept.len().saturating_sub(limit);
        self.kept.iter().skip(skip).map(Kept::publication).collect()
    }

    fn drop_oldest(&mut self) {
        if let Some(k) = self.kept.pop_front() {
            self.bytes -= k.payload.len() + ENTRY_OVERHEAD;
        }
    }
}

impl Kept {
    fn publication(&self) -> Publication {
        Publication { offset: self.offset, payload: self.payload.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy { size: 3, ttl_ms: 1_000, meta_ttl_ms: 10_000 };

    fn at(offset: u64, epoch: &str) -> Position {
        Position { offset, epoch: epoch.into() }
    }

    fn offsets(gap: Gap) -> Option<Vec<u64>> {
        match gap {
            Gap::Whole(p) => Some(p.iter().map(|p| p.offset).collect()),
            Gap::Lost => None,
        }
    }

    #[test]
    fn offsets_start_at_1_and_a_gap_is_answered_whole_or_not_at_all() {
        let mut s = Stream::new("e1".into(), 0);
        assert_eq!(s.position(), at(0, "e1"), "a topic with none yet is at 0");
        assert_eq!(offsets(s.since(&at(0, "e1"), 100)), Some(vec![]));
        for i in 1..=5u64 {
            assert_eq!(s.append(Bytes::from(format!("p{i}")), i, &POLICY), i);
        }
        assert_eq!((s.position(), s.len()), (at(5, "e1"), 3), "size 3 keeps 3, 4, 5");
        assert_eq!(offsets(s.since(&at(2, "e1"), 100)), Some(vec![3, 4, 5]));
        assert_eq!(offsets(s.since(&at(3, "e1"), 1)), Some(vec![4]), "limit pages");
        assert_eq!(offsets(s.since(&at(5, "e1"), 100)), Some(vec![]), "nothing missed");
        assert_eq!(s.since(&at(1, "e1"), 100), Gap::Lost, "2 is gone: never a partial replay");
        assert_eq!(s.since(&at(6, "e1"), 100), Gap::Lost, "ahead of the stream");
        assert_eq!(s.since(&at(4, "e2"), 100), Gap::Lost, "another epoch");
        assert_eq!(s.newest(2).iter().map(|p| p.offset).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(s.newest(100)[0].payload, "p3");
    }

    #[test]
    fn publications_expire_but_the_position_outlives_them_for_meta_ttl() {
        let mut s = Stream::new("e".into(), 0);
        s.append(Bytes::from_static(b"a"), 0, &POLICY);
        s.append(Bytes::from_static(b"bb"), 500, &POLICY);
        assert_eq!(s.bytes(), 3 + 2 * ENTRY_OVERHEAD);
        s.expire(1_000, &POLICY);
        assert_eq!((s.len(), s.bytes()), (1, 2 + ENTRY_OVERHEAD), "the first is past ttl_ms");
        assert_eq!(s.since(&at(0, "e"), 10), Gap::Lost);
        assert_eq!(offsets(s.since(&at(1, "e"), 10)), Some(vec![2]));
        s.expire(1_500, &POLICY);
        assert!(s.is_empty() && s.bytes() == 0);
        assert_eq!(offsets(s.since(&at(2, "e"), 10)), Some(vec![]), "up to date, nothing kept");
        assert_eq!(s.since(&at(1, "e"), 10), Gap::Lost);
        assert!(!s.is_stale(10_499, &POLICY));
        assert!(s.is_stale(10_500, &POLICY));
        assert_eq!(s.append(Bytes::from_static(b"c"), 2_000, &POLICY), 3, "offsets continue");
    }

    #[test]
    fn any_whole_gap_is_the_next_offsets_in_order_and_lost_only_when_one_is_gone() {
        // A small linear congruential generator: the same cases every run.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) % n
        };
        let policy = Policy { size: 7, ttl_ms: 50, meta_ttl_ms: 1_000 };
        let mut s = Stream::new("e".into(), 0);
        let mut now = 0;
        for _ in 0..5_000 {
            now += next(10);
            match next(3) {
                0 => {
                    s.append(Bytes::from_static(b"p"), now, &policy);
                }
                1 => s.expire(now, &policy),
                _ => {
                    let top = s.position().offset;
                    let since = next(top + 3);
                    let limit = 1 + next(10) as usize;
                    let kept: Vec<u64> = s.newest(usize::MAX).iter().map(|p| p.offset).collect();
                    match s.since(&at(since, "e"), limit) {
                        Gap::Whole(p) => {
                            let got: Vec<u64> = p.iter().map(|p| p.offset).collect();
                            let want: Vec<u64> = (since + 1..=top).take(limit).collect();
                            assert_eq!(got, want, "since {since}, top {top}, kept {kept:?}");
                        }
                        Gap::Lost => assert!(
                            since > top || (since < top && kept.first().is_none_or(|&f| f > since + 1)),
                            "lost with everything kept: since {since}, top {top}, kept {kept:?}"
                        ),
                    }
                }
            }
        }
    }
}
