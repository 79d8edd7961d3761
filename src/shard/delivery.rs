//! Delivery: a publication queued to this shard's subscribers of its
//! topic, a backend's push to one connection, and the takeover of a
//! ClientId held on another shard.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use indexmap::IndexSet;
use slab::Slab;

use super::conn::{ConnRef, ConnState};
use super::state::Shard;
use super::topics::ConnKey;
use crate::bus::{ShardMsg, TrySendError};
use crate::handle::{Owner, PushOutcome};
use crate::metrics;
use crate::publish::Delivery;
use crate::rt;
use crate::session::send_queue::Frame;

/// How many subscribers ahead `deliver` prefetches a connection's state,
/// and then (once that has arrived) the tail of its send queue.
const PREFETCH_STATE: usize = 8;
const PREFETCH_QUEUE: usize = 4;

/// A hint to the CPU to load `p`'s cache line; never faults, whatever `p` is.
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads nothing into the program and
    // cannot fault, even for an address that is not mapped.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Queues `frame` to each of `subscribers` within `budget` bytes; a
/// connection over it is handed to `slow` (which closes it). With a probe,
/// each frame queued carries it; returns how many did.
fn queue_to(
    conns: &Slab<ConnRef>,
    subscribers: &IndexSet<ConnKey>,
    frame: &Frame,
    budget: usize,
    probe: Option<u32>,
    mut slow: impl FnMut(&mut ConnState),
) -> usize {
    let mut probed = 0;
    let subscribers = subscribers.as_slice();
    for (i, &key) in subscribers.iter().enumerate() {
        // Each subscriber's state and queue tail is a cache miss at
        // 10,000 subscribers (a third of the shard's CPU at 2 million
        // deliveries/s): ask for them a few subscribers ahead.
        if let Some(ahead) = subscribers.get_index(i + PREFETCH_STATE).and_then(|&k| conns.get(k)) {
            prefetch(Rc::as_ptr(ahead).cast());
        }
        if let Some(ahead) = subscribers.get_index(i + PREFETCH_QUEUE).and_then(|&k| conns.get(k)) {
            if let Ok(st) = ahead.try_borrow() {
                prefetch(st.session.queue.next_slot());
            }
        }
        let Some(conn) = conns.get(key) else {
            debug_assert!(false, "topic index names a connection that is gone");
            continue;
        };
        let mut st = conn.borrow_mut();
        if st.push(frame.clone(), budget).is_err() {
            slow(&mut st);
        } else if let Some(id) = probe {
            probed += usize::from(st.carry_probe(id));
        }
    }
    probed
}

impl Shard {
    /// Queues a delivery to this shard's subscribers of its topic: one
    /// shard-local handle on the frame, shared without atomic counts,
    /// nothing copied or re-encoded.
    /// One delivery at a time is followed to its last socket (`stats`).
    pub(super) fn deliver(&self, d: &Delivery) {
        let conns = self.conns.borrow();
        let mut subscriptions = self.subscriptions.borrow_mut();
        let Some(entry) = subscriptions.index_mut().entry_mut(&d.topic) else {
            return;
        };
        entry.messages += 1;
        let probe = self.recorder.borrow_mut().start_probe(d.received);
        let budget = self.config.limits.max_backpressure;
        let frame = Frame::from(d.frame.clone());
        let probed =
            queue_to(&conns, &entry.subscribers, &frame, budget, probe, |st| self.close_slow_consumer(st));
        if let Some(id) = probe {
            self.recorder.borrow_mut().arm_probe(id, probed);
        }
    }

    /// A backend push (proxy dialect): queued like any frame.
    pub(super) fn push_to(&self, to: Owner, body: Bytes) -> PushOutcome {
        let Some(conn) = self.conn(to) else {
            return PushOutcome::NotConnected;
        };
        let mut st = conn.borrow_mut();
        if st.is_closing() {
            return PushOutcome::NotConnected;
        }
        if st.push(crate::session::message_frame(&body), self.config.limits.max_backpressure).is_err() {
            self.close_slow_consumer(&mut st);
            return PushOutcome::SlowConsumer;
        }
        metrics::inc(&self.metrics.pushes);
        PushOutcome::Queued
    }

    /// Tells the shard that owns `owner` to close it (ClientId taken over).
    pub(super) async fn replace(&self, owner: Owner) {
        if owner.shard == self.id {
            return self.close_replaced(owner);
        }
        let mut msg = ShardMsg::Replaced(owner);
        // Bounded: a shard that takes no messages for a second is draining.
        for _ in 0..1000 {
            match self.router.try_send(owner.shard, msg) {
                Err(TrySendError::Full(back)) => {
                    msg = back;
                    rt::sleep(Duration::from_millis(1)).await;
                }
                _ => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slab of `n` fresh connections.
    fn connections(n: usize) -> Slab<ConnRef> {
        let mut conns = Slab::new();
        for _ in 0..n {
            conns.insert(ConnRef::default());
        }
        conns
    }

    fn frame(len: usize) -> Frame {
        Frame::from(Bytes::from(vec![b'x'; len]))
    }

    fn frames(conns: &Slab<ConnRef>, key: ConnKey) -> usize {
        conns[key].borrow().session.queue.frames()
    }

    #[test]
    fn a_publication_reaches_exactly_the_subscriber_set() {
        let conns = connections(40);
        // More subscribers than the prefetch distance, not in slab order.
        let subscribers: IndexSet<ConnKey> = (0..40).rev().filter(|k| k % 3 != 0).collect();
        let mut slow = Vec::new();
        let probed = queue_to(&conns, &subscribers, &frame(10), 1 << 20, Some(7), |st| slow.push(st.owner));
        assert!(slow.is_empty());
        assert_eq!(probed, subscribers.len(), "every queued frame carries the probe");
        for key in 0..40 {
            assert_eq!(frames(&conns, key), usize::from(key % 3 != 0), "connection {key}");
            assert_eq!(conns[key].borrow().scheduled, key % 3 != 0, "marked for the driver: {key}");
        }
        queue_to(&conns, &subscribers, &frame(10), 1 << 20, None, |_| panic!("nobody is slow"));
        assert_eq!(frames(&conns, 1), 2, "a second publication queues behind the first");
    }

    #[test]
    fn a_subscriber_over_its_budget_is_handed_over_and_the_others_still_get_the_frame() {
        let conns = connections(3);
        for key in 0..3 {
            conns[key].borrow_mut().owner = Owner { shard: 0, key, id: key as u64 + 1 };
        }
        let budget = 1000;
        conns[1].borrow_mut().push(frame(990), budget).expect("room for one");
        let subscribers: IndexSet<ConnKey> = (0..3).collect();
        let mut slow = Vec::new();
        let probed =
            queue_to(&conns, &subscribers, &frame(100), budget, Some(1), |st| slow.push(st.owner.key));
        assert_eq!(slow, [1]);
        assert_eq!(probed, 2);
        assert_eq!((frames(&conns, 0), frames(&conns, 1), frames(&conns, 2)), (1, 1, 1));
    }

    #[test]
    fn a_closing_subscriber_takes_no_more_frames() {
        let conns = connections(2);
        assert!(conns[0].borrow_mut().session.begin_close(Some(1001), "going away"));
        let before = frames(&conns, 0);
        let subscribers: IndexSet<ConnKey> = (0..2).collect();
        let probed = queue_to(&conns, &subscribers, &frame(10), 1 << 20, Some(3), |_| panic!("not slow"));
        assert_eq!(frames(&conns, 0), before, "only the Close it has");
        assert_eq!(frames(&conns, 1), 1);
        assert_eq!(probed, 1, "the probe is not carried by a frame that was dropped");
    }
}
