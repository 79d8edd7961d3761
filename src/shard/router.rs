//! Channels into the shards: one bounded crossbeam channel per shard plus an
//! `AtomicWaker`, because crossbeam has no async receive and a shard must
//! never block. Producers send, then wake; the shard registers its waker and
//! re-checks before sleeping, so no message is left unseen.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};

use crate::publish::Batch;

#[derive(Debug)]
pub enum ShardMsg {
    Deliver(Batch),
    /// Stop accepting, close every connection with 1001, exit.
    Shutdown,
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
        for inbox in self.inboxes.iter() {
            let mut msg = ShardMsg::Deliver(batch.clone());
            loop {
                match inbox.tx.try_send(msg) {
                    Ok(()) => {
                        inbox.waker.wake();
                        break;
                    }
                    Err(TrySendError::Full(back)) => {
                        msg = back;
                        inbox.waker.wake();
                        tokio::time::sleep(FULL_BACKOFF).await;
                    }
                    Err(TrySendError::Disconnected(_)) => return Err(Closed),
                }
            }
        }
        Ok(())
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
