//! The driver's work list: which connections want a flush pass, and who
//! waits for one to end. Shard-local (one shard per thread, so a thread
//! local); connections mark themselves through `ConnState::wake`, the
//! inbox waits with `after_pass`, and the driver (`driver.rs`) takes the
//! marks pass by pass.

use std::cell::RefCell;
use std::task::{Context, Waker};
use std::time::Instant;

use crate::handle::Owner;

#[derive(Default)]
struct Work {
    /// Connections to write or look at, in the order they were marked.
    dirty: Vec<Owner>,
    /// Someone waits for a pass (`after_pass`).
    kicked: bool,
    waker: Option<Waker>,
    passes_done: u64,
    in_pass: bool,
    pass_waiters: Vec<(u64, Waker)>,
    /// The stall detector reads the clock (`stats.enabled`).
    timed: bool,
    /// When the idle driver was first woken since its last turn.
    woken_at: Option<Instant>,
}

impl Work {
    /// Wakes the idle driver (noting when, for the stall detector).
    fn wake_driver(&mut self) {
        if let Some(waker) = self.waker.take() {
            if self.timed && self.woken_at.is_none() {
                self.woken_at = Some(Instant::now());
            }
            waker.wake();
        }
    }
}

thread_local! {
    static WORK: RefCell<Work> = RefCell::new(Work::default());
}

fn with<R>(f: impl FnOnce(&mut Work) -> R) -> R {
    WORK.with(|w| f(&mut w.borrow_mut()))
}

/// Marks a connection for the next flush pass (the caller keeps a flag so a
/// connection is listed once).
pub(super) fn schedule(owner: Owner) {
    with(|w| {
        w.dirty.push(owner);
        w.wake_driver();
    });
}

/// Resolves once a flush pass that started after this call has ended:
/// everything queued before the call has been offered to its socket.
pub(super) async fn after_pass() {
    let target = with(|w| {
        w.kicked = true;
        w.wake_driver();
        w.passes_done + if w.in_pass { 2 } else { 1 }
    });
    std::future::poll_fn(|cx| {
        with(|w| {
            if w.passes_done >= target {
                std::task::Poll::Ready(())
            } else {
                w.pass_waiters.push((target, cx.waker().clone()));
                std::task::Poll::Pending
            }
        })
    })
    .await
}

/// The driver reads the clock for the stall detector.
pub(super) fn set_timed(timed: bool) {
    with(|w| w.timed = timed);
}

/// Connections are marked for a pass.
pub(super) fn has_marks() -> bool {
    with(|w| !w.dirty.is_empty())
}

/// For the idle driver: `Some(since)` if a mark or an `after_pass` waits
/// (since when, if timed), else registers `cx` to be woken by the next.
pub(super) fn poll_marked(cx: &Context<'_>) -> Option<Option<Instant>> {
    with(|w| {
        if !w.dirty.is_empty() || std::mem::take(&mut w.kicked) {
            Some(w.woken_at.take())
        } else {
            // Parking now: nothing is pending, so any earlier wake time is
            // stale (it would count the whole idle time as a stall).
            w.woken_at = None;
            w.waker = Some(cx.waker().clone());
            None
        }
    })
}

/// The driver was woken by its ring, not by a mark. Its registration is
/// dropped too: marks made while it is busy need no wake (the driver looks
/// for them before it parks), and one would leave a wake time behind.
pub(super) fn woken_by_ring() {
    with(|w| {
        w.woken_at = None;
        w.waker = None;
    });
}

/// Starts a pass: the marks so far move into `batch` (empty on entry).
pub(super) fn begin_pass(batch: &mut Vec<Owner>) {
    with(|w| {
        w.in_pass = true;
        std::mem::swap(&mut w.dirty, batch);
    });
}

/// Ends a pass: wakes those waiting for it.
pub(super) fn end_pass() {
    with(|w| {
        w.in_pass = false;
        w.passes_done += 1;
        let done = w.passes_done;
        w.pass_waiters.retain(|(target, waker)| {
            if *target <= done {
                waker.wake_by_ref();
            }
            *target > done
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::Poll;

    fn owner(key: usize) -> Owner {
        Owner { shard: 0, key, id: key as u64 + 1 }
    }

    fn poll_once(f: std::pin::Pin<&mut impl Future<Output = ()>>) -> Poll<()> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_pass_takes_the_marks_in_order() {
        schedule(owner(3));
        schedule(owner(1));
        assert!(has_marks());
        let mut batch = Vec::new();
        begin_pass(&mut batch);
        assert_eq!(batch, vec![owner(3), owner(1)]);
        assert!(!has_marks());
        schedule(owner(2));
        end_pass();
        batch.clear();
        begin_pass(&mut batch);
        assert_eq!(batch, vec![owner(2)], "a mark made during a pass is the next pass's");
        end_pass();
    }

    #[test]
    fn after_pass_waits_for_a_pass_that_started_after_it() {
        let mut batch = Vec::new();
        // Asked between passes: the next pass is enough.
        let mut waiting = pin!(after_pass());
        assert!(poll_once(waiting.as_mut()).is_pending());
        begin_pass(&mut batch);
        end_pass();
        assert!(poll_once(waiting.as_mut()).is_ready());

        // Asked during a pass: that pass may have passed its connection
        // already, so only the one after it counts.
        begin_pass(&mut batch);
        let mut waiting = pin!(after_pass());
        assert!(poll_once(waiting.as_mut()).is_pending());
        end_pass();
        assert!(poll_once(waiting.as_mut()).is_pending());
        begin_pass(&mut batch);
        end_pass();
        assert!(poll_once(waiting.as_mut()).is_ready());
    }

    #[test]
    fn a_mark_while_busy_after_a_ring_wake_leaves_no_stale_wake_time() {
        // The regression: the driver parks, its ring wakes it, a mark made
        // during that busy turn noted a wake time, the pass took the mark,
        // and the next mark, seconds of idleness later, reported the whole
        // idle time as a stall ("work waited 2036 ms to run").
        set_timed(true);
        let cx = Context::from_waker(Waker::noop());
        assert!(poll_marked(&cx).is_none(), "parks");
        woken_by_ring();
        schedule(owner(1));
        let mut batch = Vec::new();
        begin_pass(&mut batch);
        end_pass();
        assert!(poll_marked(&cx).is_none(), "parks again");
        std::thread::sleep(std::time::Duration::from_millis(30));
        let marked = Instant::now();
        schedule(owner(2));
        let since = poll_marked(&cx).expect("the mark wakes it").expect("timed");
        assert!(since >= marked, "the wait counts from the mark, not from the busy turn before");
        set_timed(false);
    }

    #[test]
    fn an_idle_driver_sees_a_waiting_after_pass() {
        let cx = Context::from_waker(Waker::noop());
        assert!(poll_marked(&cx).is_none());
        let mut waiting = pin!(after_pass());
        assert!(poll_once(waiting.as_mut()).is_pending());
        assert!(poll_marked(&cx).is_some(), "the kick wakes the driver with nothing marked");
        assert!(poll_marked(&cx).is_none(), "once");
    }
}
