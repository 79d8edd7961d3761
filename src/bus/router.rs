//! Channels into the shards: one bounded crossbeam channel per shard plus an
//! `AtomicWaker`, because crossbeam has no async receive and a shard must
//! never block. Producers send, then wake; the shard registers its waker and
//! re-checks before sleeping, so no message is left unseen.
//!
//! A full inbox parks the publisher (no polling): it waits on a tokio
//! `Notify` that the integration thread's space relay fires once the shard
//! has taken a message. The shard's side of that is lock-free (an atomic
//! flag and an `AtomicWaker`), so shards never touch a lock here.

use std::future::poll_fn;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
pub use crossbeam_channel::TrySendError;
use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::messages::ShardMsg;
use crate::metrics::{self, GlobalMetrics};
use crate::publish::Batch;

/// "The inbox has room again", from a shard to the publishers it parked.
#[derive(Default)]
struct Space {
    /// A publisher found the inbox full and waits.
    wanted: AtomicBool,
    /// The shard took a message since `wanted` was set.
    freed: AtomicBool,
    /// The relay task (integration thread).
    relay: AtomicWaker,
    /// Parked publishers (touched by the integration thread only).
    publishers: tokio::sync::Notify,
}

struct InboxTx {
    tx: Sender<ShardMsg>,
    waker: Arc<AtomicWaker>,
    space: Arc<Space>,
    /// Frame bytes of the batches queued in this inbox.
    bytes: Arc<AtomicUsize>,
}

/// The receiving end, owned by one shard.
pub struct Inbox {
    rx: Receiver<ShardMsg>,
    waker: Arc<AtomicWaker>,
    space: Arc<Space>,
    bytes: Arc<AtomicUsize>,
}

/// Frame bytes a message holds (publications; others count as nothing).
fn msg_bytes(msg: &ShardMsg) -> usize {
    match msg {
        ShardMsg::Deliver(batch) => batch.iter().map(|d| d.frame.len() + d.topic.len()).sum(),
        ShardMsg::Push { body, .. } => body.len(),
        ShardMsg::Send { frame, .. } => frame.len(),
        _ => 0,
    }
}

/// Sends to shards from any thread.
#[derive(Clone)]
pub struct ShardRouter {
    inboxes: Arc<[InboxTx]>,
    /// An inbox holding this many frame bytes takes no more (but always one
    /// message when empty), whatever its count of messages.
    max_bytes: usize,
    /// Counts the times a publisher found an inbox full and waited.
    metrics: Arc<GlobalMetrics>,
}

/// The shards are gone (shutdown).
#[derive(Debug, PartialEq, Eq)]
pub struct Closed;

impl ShardRouter {
    /// Inboxes of at most `capacity` messages and `max_bytes` frame bytes.
    pub fn new(
        shards: usize,
        capacity: usize,
        max_bytes: usize,
        metrics: Arc<GlobalMetrics>,
    ) -> (ShardRouter, Vec<Inbox>) {
        let (txs, rxs) = (0..shards)
            .map(|_| {
                let (tx, rx) = crossbeam_channel::bounded(capacity);
                let waker = Arc::new(AtomicWaker::new());
                let space = Arc::new(Space::default());
                let bytes = Arc::new(AtomicUsize::new(0));
                let tx = InboxTx { tx, waker: waker.clone(), space: space.clone(), bytes: bytes.clone() };
                (tx, Inbox { rx, waker, space, bytes })
            })
            .unzip::<_, _, Vec<_>, Vec<_>>();
        (ShardRouter { inboxes: txs.into(), max_bytes, metrics }, rxs)
    }

    /// Starts the tasks that wake the publishers parked on full inboxes when
    /// their shard makes room. Call once, inside the integration thread's
    /// tokio runtime; they run for the process's life.
    pub fn spawn_space_relays(&self) {
        for inbox in self.inboxes.iter() {
            let space = inbox.space.clone();
            tokio::spawn(async move {
                loop {
                    poll_fn(|cx| {
                        space.relay.register(cx.waker());
                        if space.freed.swap(false, Ordering::AcqRel) {
                            Poll::Ready(())
                        } else {
                            Poll::Pending
                        }
                    })
                    .await;
                    space.publishers.notify_waiters();
                }
            });
        }
    }

    pub fn shard_count(&self) -> usize {
        self.inboxes.len()
    }

    /// Hands `batch` to every shard. Shards with room get it at once; then
    /// the publisher parks on each full one in turn, so a busy shard delays
    /// neither the others nor (beyond its own room) memory: publishers slow
    /// down instead of queues growing.
    pub async fn dispatch(&self, batch: Batch) -> Result<(), Closed> {
        let mut full = Vec::new();
        for shard in 0..self.inboxes.len() {
            match self.try_send(shard, ShardMsg::Deliver(batch.clone())) {
                Ok(()) => {}
                Err(TrySendError::Full(msg)) => full.push((shard, msg)),
                Err(TrySendError::Disconnected(_)) => return Err(Closed),
            }
        }
        for (shard, msg) in full {
            self.send(shard, msg).await?;
        }
        Ok(())
    }

    /// Sends `make()` to every shard in turn (tokio side), each parked
    /// while its inbox is full.
    pub async fn to_every_shard(&self, make: impl Fn() -> ShardMsg) -> Result<(), Closed> {
        for shard in 0..self.inboxes.len() {
            self.send(shard, make()).await?;
        }
        Ok(())
    }

    /// Sends to one shard from the tokio side (the integration thread, where
    /// the space relays of `spawn_space_relays` run), parked while its
    /// inbox is full.
    pub async fn send(&self, shard: usize, mut msg: ShardMsg) -> Result<(), Closed> {
        let space = &self.inboxes[shard].space;
        loop {
            // Listening before trying: room made after the try is not missed.
            let notified = space.publishers.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_send(shard, msg) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(back)) => msg = back,
                Err(TrySendError::Disconnected(_)) => return Err(Closed),
            }
            space.wanted.store(true, Ordering::SeqCst);
            // Pairs with the fence after the shard's receive: either the
            // shard sees `wanted`, or this retry sees the room it made.
            fence(Ordering::SeqCst);
            match self.try_send(shard, msg) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(back)) => msg = back,
                Err(TrySendError::Disconnected(_)) => return Err(Closed),
            }
            metrics::inc(&self.metrics.publish_waits);
            notified.await;
        }
    }

    /// Sends without waiting (any thread; shards use this and back off on
    /// their own timer when the inbox is full).
    pub fn try_send(&self, shard: usize, msg: ShardMsg) -> Result<(), TrySendError<ShardMsg>> {
        let inbox = &self.inboxes[shard];
        let size = msg_bytes(&msg);
        // Counted before the send so the shard never subtracts first; taken
        // back if the channel refuses. An empty inbox takes any one message.
        let before = inbox.bytes.fetch_add(size, Ordering::SeqCst);
        if before > 0 && before + size > self.max_bytes {
            inbox.bytes.fetch_sub(size, Ordering::SeqCst);
            return Err(TrySendError::Full(msg));
        }
        let result = inbox.tx.try_send(msg);
        if result.is_err() {
            inbox.bytes.fetch_sub(size, Ordering::SeqCst);
        }
        inbox.waker.wake();
        result
    }

    /// Tells every shard to drain; blocks the calling (non-shard) thread
    /// while an inbox is full.
    pub fn shutdown(&self) {
        for inbox in self.inboxes.iter() {
            let _ = inbox.tx.send(ShardMsg::Shutdown);
            inbox.waker.wake();
        }
    }
}

impl Inbox {
    /// `Ready(None)` when every sender is gone.
    pub fn poll_recv(&self, cx: &Context<'_>) -> Poll<Option<ShardMsg>> {
        let got = self.poll_inner(cx);
        if matches!(got, Poll::Ready(Some(_))) {
            fence(Ordering::SeqCst);
            if self.space.wanted.swap(false, Ordering::SeqCst) {
                self.space.freed.store(true, Ordering::Release);
                self.space.relay.wake();
            }
        }
        got
    }

    fn poll_inner(&self, cx: &Context<'_>) -> Poll<Option<ShardMsg>> {
        let got = self.receive(cx);
        if let Poll::Ready(Some(m)) = &got {
            self.bytes.fetch_sub(msg_bytes(m), Ordering::SeqCst);
        }
        got
    }

    fn receive(&self, cx: &Context<'_>) -> Poll<Option<ShardMsg>> {
        match self.rx.try_recv() {
            Ok(m) => return Poll::Ready(Some(m)),
            Err(TryRecvError::Disconnected) => return Poll::Ready(None),
            Err(TryRecvError::Empty) => {}
        }
        self.waker.register(cx.waker());
        // Re-check: a message sent before the registration would not wake us.
        match self.rx.try_recv() {
            Ok(m) => Poll::Ready(Some(m)),
            Err(TryRecvError::Disconnected) => Poll::Ready(None),
            Err(TryRecvError::Empty) => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::Delivery;
    use bytes::Bytes;

    fn recv(inbox: &Inbox) -> Option<ShardMsg> {
        match inbox.poll_recv(&Context::from_waker(std::task::Waker::noop())) {
            Poll::Ready(m) => m,
            Poll::Pending => None,
        }
    }

    fn batch(topic: &str) -> Batch {
        Arc::from(vec![Delivery::new(topic, Bytes::new())])
    }

    #[test]
    fn a_full_shard_parks_the_publisher_without_delaying_the_others() {
        let metrics = Arc::new(GlobalMetrics::default());
        let (router, inboxes) = ShardRouter::new(2, 1, 1 << 20, metrics.clone());
        let waits = || metrics.publish_waits.load(Ordering::Relaxed);
        router.try_send(0, ShardMsg::Deliver(batch("filler"))).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            router.spawn_space_relays();
            let publish = tokio::spawn({
                let router = router.clone();
                async move { router.dispatch(batch("news")).await }
            });
            // Shard 1 had room: it has the batch while shard 0 is still full.
            while waits() == 0 {
                tokio::task::yield_now().await;
            }
            assert!(matches!(recv(&inboxes[1]), Some(ShardMsg::Deliver(b)) if &*b[0].topic == "news"));
            assert!(!publish.is_finished());
            // Shard 0 takes its filler: the parked publisher is woken, not polled.
            assert!(matches!(recv(&inboxes[0]), Some(ShardMsg::Deliver(b)) if &*b[0].topic == "filler"));
            tokio::time::timeout(std::time::Duration::from_secs(5), publish).await.unwrap().unwrap().unwrap();
            assert!(matches!(recv(&inboxes[0]), Some(ShardMsg::Deliver(b)) if &*b[0].topic == "news"));
            assert_eq!(waits(), 1);
        });
    }

    #[test]
    fn inboxes_are_bounded_in_bytes_too() {
        let big = |n: usize| -> Batch { Arc::from(vec![Delivery::new("t", Bytes::from(vec![0u8; n]))]) };
        let (router, inboxes) = ShardRouter::new(1, 100, 1000, Arc::default());
        // An empty inbox takes any one message, even past the bound.
        router.try_send(0, ShardMsg::Deliver(big(5000))).unwrap();
        assert!(matches!(router.try_send(0, ShardMsg::Deliver(big(10))), Err(TrySendError::Full(_))));
        assert!(recv(&inboxes[0]).is_some());
        router.try_send(0, ShardMsg::Deliver(big(600))).unwrap();
        router.try_send(0, ShardMsg::Deliver(big(300))).unwrap();
        assert!(matches!(router.try_send(0, ShardMsg::Deliver(big(300))), Err(TrySendError::Full(_))));
        assert!(recv(&inboxes[0]).is_some());
        router.try_send(0, ShardMsg::Deliver(big(300))).unwrap();
    }
}
