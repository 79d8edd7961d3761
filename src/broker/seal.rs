//! Authenticated cluster envelopes: on the broker every envelope travels as
//! `tag (32 bytes) ‖ envelope`, the tag an HMAC-SHA256 of the envelope's
//! bytes under `[cluster] secret`. Anyone who can publish to the broker but
//! does not hold the secret cannot make a node apply anything. Pure: bytes
//! in, bytes out.
//!
//! Replays of genuine envelopes are bounded by the signed send time (older
//! than the replay window: refused) and, for control messages, by a cache
//! of the tags seen within the window (`ReplayGuard`); publications are
//! deduplicated by their sequence numbers instead.

use std::collections::{HashSet, VecDeque};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of the tag in front of every envelope.
pub const TAG_LEN: usize = 32;

/// Why a received broker message was refused; the label of
/// `ringcast_broker_rejected_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejected {
    /// Shorter than a tag.
    Unsigned,
    /// The tag does not verify under this node's secret.
    BadSignature,
    /// Not a cluster envelope this node can read.
    Malformed,
    /// Sent longer ago (or further ahead) than the replay window.
    Stale,
    /// A control envelope already seen within the window.
    Replayed,
    /// A publication whose frame is not one complete data frame.
    BadFrame,
    /// A sequence number too far from the stream's: the stream restarts.
    SequenceJump,
    /// A replicated WebRocket change that the admin API would refuse.
    BadChange,
}

impl Rejected {
    pub const ALL: [Rejected; 8] = [
        Rejected::Unsigned,
        Rejected::BadSignature,
        Rejected::Malformed,
        Rejected::Stale,
        Rejected::Replayed,
        Rejected::BadFrame,
        Rejected::SequenceJump,
        Rejected::BadChange,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Rejected::Unsigned => "unsigned",
            Rejected::BadSignature => "bad_signature",
            Rejected::Malformed => "malformed",
            Rejected::Stale => "stale",
            Rejected::Replayed => "replayed",
            Rejected::BadFrame => "bad_frame",
            Rejected::SequenceJump => "sequence_jump",
            Rejected::BadChange => "bad_change",
        }
    }

    pub fn index(self) -> usize {
        Rejected::ALL.iter().position(|r| *r == self).expect("listed")
    }
}

/// Seals outgoing envelopes and opens incoming ones.
#[derive(Clone)]
pub struct Sealer {
    /// `None`: `cluster.insecure` — tags are zeros and not checked.
    key: Option<Hmac<Sha256>>,
}

impl Sealer {
    /// A sealer with `secret` (at least `config::MIN_CLUSTER_SECRET_LEN` bytes; checked by
    /// the config), or an insecure one without.
    pub fn new(secret: Option<&[u8]>) -> Sealer {
        Sealer { key: secret.map(|s| Hmac::<Sha256>::new_from_slice(s).expect("HMAC takes any key length")) }
    }

    pub fn is_secure(&self) -> bool {
        self.key.is_some()
    }

    fn tag(&self, envelope: &[u8]) -> [u8; TAG_LEN] {
        match &self.key {
            Some(key) => {
                let mut mac = key.clone();
                mac.update(envelope);
                mac.finalize().into_bytes().into()
            }
            None => [0; TAG_LEN],
        }
    }

    /// `tag ‖ envelope`.
    pub fn seal(&self, envelope: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(TAG_LEN + envelope.len());
        out.extend_from_slice(&self.tag(envelope));
        out.extend_from_slice(envelope);
        out.into()
    }

    /// `tag ‖ message`, the message encoded once, straight behind the tag.
    pub fn seal_message(&self, message: &impl prost::Message) -> Bytes {
        let mut out = Vec::with_capacity(TAG_LEN + message.encoded_len());
        out.resize(TAG_LEN, 0);
        message.encode(&mut out).expect("a Vec grows as needed");
        let tag = self.tag(&out[TAG_LEN..]);
        out[..TAG_LEN].copy_from_slice(&tag);
        out.into()
    }

    /// The envelope's bytes (a slice of `sealed`) and its tag, if the tag
    /// verifies (in constant time).
    pub fn open(&self, sealed: Bytes) -> Result<(Bytes, [u8; TAG_LEN]), Rejected> {
        if sealed.len() < TAG_LEN {
            return Err(Rejected::Unsigned);
        }
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&sealed[..TAG_LEN]);
        let envelope = sealed.slice(TAG_LEN..);
        if let Some(key) = &self.key {
            let mut mac = key.clone();
            mac.update(&envelope);
            mac.verify_slice(&tag).map_err(|_| Rejected::BadSignature)?;
        }
        Ok((envelope, tag))
    }
}

/// Whether an envelope sent at `sent_at_ms` (Unix ms, as signed by its
/// origin) may be taken at `now_ms`: within `window_ms` either way (clocks
/// of nodes differ a little).
pub fn fresh(sent_at_ms: u64, now_ms: u64, window_ms: u64) -> bool {
    sent_at_ms.abs_diff(now_ms) <= window_ms
}

/// The tags of control envelopes taken within the replay window, so the
/// same envelope is applied once. Bounded: past `capacity` the oldest are
/// forgotten (the window then shrinks to what fits; counted by the caller
/// as nothing: a replay that old is refused as stale anyway once the
/// window passes).
pub struct ReplayGuard {
    seen: HashSet<[u8; TAG_LEN]>,
    order: VecDeque<([u8; TAG_LEN], u64)>,
    capacity: usize,
}

impl ReplayGuard {
    pub fn new(capacity: usize) -> ReplayGuard {
        ReplayGuard { seen: HashSet::new(), order: VecDeque::new(), capacity: capacity.max(1) }
    }

    /// True the first time `tag` is offered (within the window ending at
    /// `now_ms`); false for a repeat.
    pub fn first(&mut self, tag: [u8; TAG_LEN], now_ms: u64, window_ms: u64) -> bool {
        while let Some((old, at)) = self.order.front() {
            if now_ms.saturating_sub(*at) > 2 * window_ms || self.order.len() >= self.capacity {
                self.seen.remove(old);
                self.order.pop_front();
            } else {
                break;
            }
        }
        if !self.seen.insert(tag) {
            return false;
        }
        self.order.push_back((tag, now_ms));
        true
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_sealed_envelope_opens_under_the_same_secret_only() {
        let s = Sealer::new(Some(SECRET));
        let sealed = s.seal(b"envelope");
        let (inner, _) = s.open(sealed.clone()).unwrap();
        assert_eq!(&inner[..], b"envelope");
        let other = Sealer::new(Some(b"another secret of at least 32 bytes!"));
        assert_eq!(other.open(sealed.clone()).unwrap_err(), Rejected::BadSignature);
        // Unsigned bytes and a flipped bit are refused.
        assert_eq!(s.open(Bytes::from_static(b"short")).unwrap_err(), Rejected::Unsigned);
        let mut flipped = sealed.to_vec();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(s.open(flipped.into()).unwrap_err(), Rejected::BadSignature);
        // What an insecure node sends does not open on a secure one.
        let insecure = Sealer::new(None);
        assert_eq!(s.open(insecure.seal(b"x")).unwrap_err(), Rejected::BadSignature);
        assert!(insecure.open(sealed).is_ok());
    }

    #[test]
    fn freshness_allows_skew_both_ways() {
        assert!(fresh(1_000, 1_500, 30_000));
        assert!(fresh(31_000, 1_000, 30_000));
        assert!(!fresh(1_000, 31_001, 30_000));
        assert!(!fresh(u64::MAX, 0, 30_000));
    }

    #[test]
    fn a_tag_is_taken_once_and_the_guard_stays_bounded() {
        let mut g = ReplayGuard::new(3);
        assert!(g.first([1; 32], 0, 100));
        assert!(!g.first([1; 32], 10, 100));
        assert!(g.first([2; 32], 10, 100));
        assert!(g.first([3; 32], 10, 100));
        assert!(g.first([4; 32], 10, 100));
        assert_eq!(g.len(), 3);
        // Old entries leave with time.
        assert!(g.first([5; 32], 1_000, 100));
        assert_eq!(g.len(), 1);
    }
}
