//! A connection's outgoing frames, bounded in bytes (`max_backpressure`).
//! Frames are shared: queueing a publication copies nothing, and within a
//! shard a frame's handle is counted without atomics (`Frame`).
//!
//! The budget counts what a queued frame really costs this connection: its
//! bytes plus its queue slot. Pongs are coalesced once a connection has
//! `DISTINCT_PONGS` of them waiting (RFC 6455 §5.5.3 allows answering only
//! the latest ping), so a ping flood holds a handful of pongs at most, while
//! a short burst of pings still gets a pong each.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::ops::Deref;
use std::rc::Rc;

use bytes::Bytes;

/// A frame as a shard's queues hold it: one handle per publication per
/// shard, shared by its subscribers with a plain (non-atomic) count, and a
/// queue slot of one pointer instead of a `Bytes`' four words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(Rc<Bytes>);

impl From<Bytes> for Frame {
    fn from(bytes: Bytes) -> Frame {
        Frame(Rc::new(bytes))
    }
}

impl Deref for Frame {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

/// A queue of frames whose first one is held inline: a connection that has
/// one frame queued at a time (fanout to idle subscribers) never allocates,
/// and an idle connection holds no queue memory at all.
#[derive(Debug, Default)]
struct Frames {
    first: Option<Frame>,
    /// The frames after `first`; empty whenever `first` is.
    rest: VecDeque<Frame>,
}

impl Frames {
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn front(&self) -> Option<&Frame> {
        self.first.as_ref()
    }

    fn push_back(&mut self, frame: Frame) {
        if self.first.is_none() {
            self.first = Some(frame);
        } else {
            self.rest.push_back(frame);
        }
    }

    fn pop_front(&mut self) -> Option<Frame> {
        let front = self.first.take();
        self.first = self.rest.pop_front();
        front
    }

    fn get_mut(&mut self, index: usize) -> Option<&mut Frame> {
        match index {
            0 => self.first.as_mut(),
            i => self.rest.get_mut(i - 1),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Frame> {
        self.first.iter().chain(self.rest.iter())
    }

    /// Keeps the first `keep` frames.
    fn truncate(&mut self, keep: usize) {
        if keep == 0 {
            self.first = None;
        }
        self.rest.truncate(keep.saturating_sub(1));
    }

    /// Gives back the memory of a burst once it is over.
    fn release_spare(&mut self, above: usize) {
        if self.rest.capacity() > above {
            self.rest.shrink_to(self.rest.len());
        }
    }
}

#[derive(Debug, Default)]
pub struct SendQueue {
    frames: Frames,
    /// Bytes queued and not yet written, counting the front frame's remainder.
    queued: usize,
    /// How much of the front frame has been written already.
    front_written: usize,
    /// Frames popped from the front since the queue was made: with it, a
    /// frame's position survives pops.
    popped: u64,
    /// Position (`popped`-based) of the latest queued pong, if one is queued.
    pong_at: Option<u64>,
    /// Pongs queued since the queue was last empty.
    pongs_waiting: u8,
}

/// Pongs a connection gets queued one per ping before new ones replace the
/// latest: a burst is answered in full, a flood costs this many at most.
const DISTINCT_PONGS: u8 = 16;

/// What a queue slot costs besides the frame's bytes (the `Frame` handle;
/// a publication's shared handle is one per shard, not per connection).
pub const SLOT_COST: usize = std::mem::size_of::<Frame>();

/// Pushing would exceed the budget; the frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub struct OverBudget;

impl SendQueue {
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Frames queued, the front one even if partly written.
    pub fn frames(&self) -> usize {
        self.frames.len()
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// Memory the queue holds for this connection: unsent bytes plus slots.
    pub fn cost(&self) -> usize {
        self.queued + self.frames.len() * SLOT_COST
    }

    /// Queues `frame` unless the queue would then cost more than `budget` bytes.
    pub fn push(&mut self, frame: impl Into<Frame>, budget: usize) -> Result<(), OverBudget> {
        let frame = frame.into();
        if self.cost() + frame.len() + SLOT_COST > budget {
            return Err(OverBudget);
        }
        self.push_unbounded(frame);
        Ok(())
    }

    /// Queues a pong; with `DISTINCT_PONGS` already waiting it replaces the
    /// latest one that has not started to go out: only the latest ping needs
    /// an answer.
    pub fn push_pong(&mut self, pong: Bytes, budget: usize) -> Result<(), OverBudget> {
        let pong = Frame::from(pong);
        if let Some(at) = self.pong_at.filter(|_| self.pongs_waiting >= DISTINCT_PONGS) {
            let started = at == self.popped && self.front_written > 0;
            if at >= self.popped && !started {
                let slot = self.frames.get_mut((at - self.popped) as usize).expect("a queued pong");
                self.queued = self.queued - slot.len() + pong.len();
                *slot = pong;
                return Ok(());
            }
        }
        self.push(pong, budget)?;
        self.pong_at = Some(self.popped + self.frames.len() as u64 - 1);
        self.pongs_waiting = self.pongs_waiting.saturating_add(1);
        Ok(())
    }

    /// Queues a frame that must go out regardless of the budget (a Close).
    pub fn push_unbounded(&mut self, frame: impl Into<Frame>) {
        let frame = frame.into();
        self.queued += frame.len();
        self.frames.push_back(frame);
    }

    /// Drops every frame not yet started, keeping a partly written front
    /// frame so the byte stream stays well-formed. Returns frames dropped.
    pub fn discard_unsent(&mut self) -> usize {
        let keep = usize::from(self.front_written > 0);
        let dropped = self.frames.len().saturating_sub(keep);
        self.frames.truncate(keep);
        self.pong_at = self.pong_at.filter(|&at| at < self.popped + keep as u64);
        self.queued = self.frames.front().map_or(0, |f| f.len() - self.front_written);
        self.frames.release_spare(64);
        dropped
    }

    /// Where the next push will write: a hint for prefetching (off by a
    /// slot when the queue must grow, which costs nothing but the hint).
    pub fn next_slot(&self) -> *const u8 {
        if self.frames.first.is_none() {
            return (&self.frames.first as *const Option<Frame>).cast();
        }
        let (a, b) = self.frames.rest.as_slices();
        let tail = if b.is_empty() { a } else { b };
        tail.as_ptr_range().end.cast()
    }

    /// Fills `out` with the unwritten bytes, front first; returns slices used.
    pub fn slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (i, frame) in self.frames.iter().take(out.len()).enumerate() {
            let start = if i == 0 { self.front_written } else { 0 };
            out[i] = IoSlice::new(&frame[start..]);
            n += 1;
        }
        n
    }

    /// Gives back the memory a burst left behind, if the queue is empty.
    /// Called once a second (keepalive pass), not on every drain: a busy
    /// connection would otherwise regrow its queue every flush pass (at 2
    /// million deliveries/s, 5 % of the shard's CPU in realloc).
    pub fn release_if_idle(&mut self) {
        if self.frames.is_empty() {
            self.frames.release_spare(0);
        }
    }

    /// Marks `written` bytes as sent; returns how many frames completed.
    pub fn advance(&mut self, mut written: usize) -> usize {
        self.queued -= written;
        let mut done = 0;
        while written > 0 {
            let front = self.frames.front().expect("advance past the queued bytes");
            let left = front.len() - self.front_written;
            if written < left {
                self.front_written += written;
                break;
            }
            written -= left;
            self.frames.pop_front();
            self.popped += 1;
            self.front_written = 0;
            done += 1;
        }
        if self.frames.is_empty() {
            self.pongs_waiting = 0;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    fn pending(q: &SendQueue) -> Vec<u8> {
        let mut slices = [IoSlice::new(&[]); 64];
        let n = q.slices(&mut slices);
        slices[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn one_frame_at_a_time_needs_no_allocation_and_idle_queues_give_memory_back() {
        let mut q = SendQueue::default();
        for _ in 0..3 {
            q.push(b("one"), 100).unwrap();
            assert_eq!(q.frames.rest.capacity(), 0, "the first frame is inline");
            q.advance(3);
        }
        for _ in 0..40 {
            q.push(b("x"), 10_000).unwrap();
        }
        q.advance(40);
        assert!(q.frames.rest.capacity() >= 39, "kept for the next burst");
        q.release_if_idle();
        assert_eq!(q.frames.rest.capacity(), 0);
    }

    #[test]
    fn budget_is_in_bytes() {
        let mut q = SendQueue::default();
        let budget = 8 + 2 * SLOT_COST;
        assert_eq!(q.push(b("12345"), budget), Ok(()));
        assert_eq!(q.push(b("1234"), budget), Err(OverBudget));
        assert_eq!(q.push(b("123"), budget), Ok(()));
        assert_eq!(q.queued_bytes(), 8);
        assert_eq!(q.cost(), budget);
    }

    #[test]
    fn partial_writes_resume_mid_frame() {
        let mut q = SendQueue::default();
        q.push(b("hello"), 100).unwrap();
        q.push(b("world"), 100).unwrap();
        assert_eq!(q.advance(3), 0);
        assert_eq!(pending(&q), b"loworld");
        assert_eq!(q.advance(4), 1);
        assert_eq!(pending(&q), b"rld");
        assert_eq!(q.queued_bytes(), 3);
        assert_eq!(q.advance(3), 1);
        assert!(q.is_empty());
    }

    #[test]
    fn discard_keeps_the_frame_in_flight() {
        let mut q = SendQueue::default();
        q.push(b("abc"), 100).unwrap();
        q.push(b("def"), 100).unwrap();
        q.advance(1);
        assert_eq!(q.discard_unsent(), 1);
        q.push_unbounded(b("CLOSE"));
        assert_eq!(pending(&q), b"bcCLOSE");
        assert_eq!(q.queued_bytes(), 7);

        let mut fresh = SendQueue::default();
        fresh.push(b("abc"), 100).unwrap();
        assert_eq!(fresh.discard_unsent(), 1);
        assert!(fresh.is_empty());
        assert_eq!(fresh.queued_bytes(), 0);
    }

    #[test]
    fn budget_counts_slots_too() {
        let mut q = SendQueue::default();
        let budget = 10 * (1 + SLOT_COST);
        for _ in 0..10 {
            q.push(b("x"), budget).unwrap();
        }
        assert_eq!(q.push(b("x"), budget), Err(OverBudget), "a 1-byte frame costs its slot");
        assert_eq!(q.cost(), budget);
    }

    #[test]
    fn a_ping_burst_gets_every_pong_a_flood_coalesces() {
        let mut q = SendQueue::default();
        q.push(b("data"), 10_000).unwrap();
        let pongs: Vec<Bytes> = (0..20).map(|i| Bytes::from(format!("p{i:02}"))).collect();
        for p in &pongs[..16] {
            q.push_pong(p.clone(), 10_000).unwrap();
        }
        let burst: Vec<u8> = pongs[..16].iter().flat_map(|p| p.to_vec()).collect();
        assert_eq!(pending(&q)[4..], burst[..], "16 pings, 16 pongs");
        for p in &pongs[16..] {
            q.push_pong(p.clone(), 10_000).unwrap();
        }
        assert_eq!(q.frames.len(), 17, "past 16, new pongs replace the latest");
        assert!(pending(&q).ends_with(b"p14p19"));
        // Once the queue drained, a new burst is answered in full again.
        q.advance(q.queued_bytes());
        for p in &pongs[..3] {
            q.push_pong(p.clone(), 10_000).unwrap();
        }
        assert_eq!(pending(&q), b"p00p01p02");
    }

    #[test]
    fn a_pong_that_started_going_out_is_not_replaced() {
        let mut q = SendQueue::default();
        for i in 0..16 {
            q.push_pong(Bytes::from(format!("p{i:02}")), 10_000).unwrap();
        }
        q.advance(15 * 3 + 1);
        q.push_pong(b("p99"), 10_000).unwrap();
        assert_eq!(pending(&q), b"15p99", "the started pong completes, the new one follows");
        q.discard_unsent();
        assert_eq!(pending(&q), b"15");
        q.push_pong(b("pA1"), 10_000).unwrap();
        q.push_pong(b("pA2"), 10_000).unwrap();
        assert_eq!(pending(&q), b"15pA2", "still coalescing: the queue never drained");
    }
}
