//! A connection's outgoing frames, bounded in bytes (`max_backpressure`).
//! Frames are shared `Bytes`: queueing a publication copies nothing.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::Bytes;

#[derive(Debug, Default)]
pub struct SendQueue {
    frames: VecDeque<Bytes>,
    /// Bytes queued and not yet written, counting the front frame's remainder.
    queued: usize,
    /// How much of the front frame has been written already.
    front_written: usize,
}

/// Pushing would exceed the budget; the frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub struct OverBudget;

impl SendQueue {
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// Queues `frame` unless the queue would then hold more than `budget` bytes.
    pub fn push(&mut self, frame: Bytes, budget: usize) -> Result<(), OverBudget> {
        if self.queued + frame.len() > budget {
            return Err(OverBudget);
        }
        self.push_unbounded(frame);
        Ok(())
    }

    /// Queues a frame that must go out regardless of the budget (a Close).
    pub fn push_unbounded(&mut self, frame: Bytes) {
        self.queued += frame.len();
        self.frames.push_back(frame);
    }

    /// Drops every frame not yet started, keeping a partly written front
    /// frame so the byte stream stays well-formed. Returns frames dropped.
    pub fn discard_unsent(&mut self) -> usize {
        let keep = usize::from(self.front_written > 0);
        let dropped = self.frames.len().saturating_sub(keep);
        self.frames.truncate(keep);
        self.queued = self.frames.front().map_or(0, |f| f.len() - self.front_written);
        if self.frames.capacity() > 64 {
            self.frames.shrink_to(keep);
        }
        dropped
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
            self.front_written = 0;
            done += 1;
        }
        if self.frames.is_empty() && self.frames.capacity() > 16 {
            // A burst is over: give the memory back instead of keeping it per idle connection.
            self.frames = VecDeque::new();
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
        let mut slices = [IoSlice::new(&[]); 8];
        let n = q.slices(&mut slices);
        slices[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn budget_is_in_bytes() {
        let mut q = SendQueue::default();
        assert_eq!(q.push(b("12345"), 8), Ok(()));
        assert_eq!(q.push(b("1234"), 8), Err(OverBudget));
        assert_eq!(q.push(b("123"), 8), Ok(()));
        assert_eq!(q.queued_bytes(), 8);
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
}
