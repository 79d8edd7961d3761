//! Channels into the shards: one bounded crossbeam channel per shard plus an
//! `AtomicWaker`, because crossbeam has no async receive and a shard must
//! never block. Producers send, then wake; the shard registers its waker and
//! re-checks before sleeping, so no message is left unseen.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
pub use crossbeam_channel::TrySendError;
use crossbeam_channel::{Receiver, Sender, TryRecvError};

use bytes::Bytes;
use futures_channel::oneshot;

use crate::clients::Owner;
use crate::publish::Batch;

#[derive(Debug)]
pub enum ShardMsg {
    Deliver(Batch),
    /// A backend push to one client (proxy dialect).
    Push {
        to: Owner,
        body: Bytes,
        reply: oneshot::Sender<PushOutcome>,
    },
    /// Close a connection whose ClientId was taken over (1008).
    Replaced(Owner),
    /// Stop accepting, close every connection with 1001, exit.
    Shutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Queued,
    NotConnected,
    /// The client's queue was over its budget; it is being closed.
    SlowConsumer,
}

struct InboxTx {
    tx: Sender<ShardMsg>,
    waker: Arc<AtomicWaker>,
}

/// The receiving end, owned by one shard.
pub struct Inbox {
    rx: Receiver<ShardMsg>,
    waker: Arc<AtomicWaker>,
}

/// Sends to shards from any thread.
#[derive(Clone)]
pub struct ShardRouter {
    inboxes: Arc<[InboxTx]>,
}

/// The shards are gone (shutdown).
#[derive(Debug, PartialEq, Eq)]
pub struct Closed;

/// How long a producer waits before retrying a full inbox.
const FULL_BACKOFF: Duration = Duration::from_micros(200);

impl ShardRouter {
    pub fn new(shards: usize, capacity: usize) -> (ShardRouter, Vec<Inbox>) {
        let (txs, rxs) = (0..shards)
            .map(|_| {
                let (tx, rx) = crossbeam_channel::bounded(capacity);
                let waker = Arc::new(AtomicWaker::new());
                (InboxTx { tx, waker: waker.clone() }, Inbox { rx, waker })
            })
            .unzip::<_, _, Vec<_>, Vec<_>>();
        (ShardRouter { inboxes: txs.into() }, rxs)
    }

    pub fn shard_count(&self) -> usize {
        self.inboxes.len()
    }

    /// Hands `batch` to every shard, waiting (asynchronously, on the tokio
    /// side) while a shard's inbox is full: publishers slow down instead of
    /// memory growing.
    pub async fn dispatch(&self, batch: Batch) -> Result<(), Closed> {
        for shard in 0..self.inboxes.len() {
            self.send(shard, ShardMsg::Deliver(batch.clone())).await?;
        }
        Ok(())
    }

    /// Sends to one shard from the tokio side, waiting while its inbox is full.
    pub async fn send(&self, shard: usize, mut msg: ShardMsg) -> Result<(), Closed> {
        loop {
            match self.try_send(shard, msg) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(back)) => {
                    msg = back;
                    tokio::time::sleep(FULL_BACKOFF).await;
                }
                Err(TrySendError::Disconnected(_)) => return Err(Closed),
            }
        }
    }

    /// Sends without waiting (any thread; shards use this and back off on
    /// their own timer when the inbox is full).
    pub fn try_send(&self, shard: usize, msg: ShardMsg) -> Result<(), TrySendError<ShardMsg>> {
        let inbox = &self.inboxes[shard];
        let result = inbox.tx.try_send(msg);
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
