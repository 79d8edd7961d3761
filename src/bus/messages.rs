//! The messages into a shard and out of it to a network broker.

use std::sync::Arc;

use bytes::Bytes;
use futures_channel::oneshot;

use crate::handle::{Owner, PushOutcome};
use crate::publish::Batch;
use crate::webrocket::replicate::Effect;

/// A message to one shard.
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
    /// A worker's reply to one WebRocket session of `vhost`.
    Send {
        to: Owner,
        vhost: Box<str>,
        frame: Bytes,
        reply: oneshot::Sender<PushOutcome>,
    },
    /// This shard's subscribers of a topic: their count and user names.
    Presence {
        topic: Box<str>,
        reply: oneshot::Sender<(usize, Vec<Arc<str>>)>,
    },
    /// This shard's subscriber count per channel of a WebRocket vhost.
    ChannelCounts {
        vhost: Box<str>,
        reply: oneshot::Sender<Vec<(String, usize)>>,
    },
    /// The admin changed or deleted a WebRocket user.
    UserChanged {
        vhost: Box<str>,
        user: Box<str>,
    },
    /// The admin deleted a channel (a topic-index key): drop its subscribers.
    ChannelDeleted {
        topic: Box<str>,
    },
    /// The admin deleted a WebRocket vhost: close its sessions (1001).
    VhostDeleted {
        vhost: Box<str>,
    },
    /// Stop accepting, close every connection with 1001, exit.
    Shutdown,
}

/// What a shard must hear of a committed WebRocket change.
impl From<&Effect> for ShardMsg {
    fn from(effect: &Effect) -> ShardMsg {
        match effect.clone() {
            Effect::UserChanged { vhost, user } => ShardMsg::UserChanged { vhost, user },
            Effect::ChannelDeleted { topic } => ShardMsg::ChannelDeleted { topic },
            Effect::VhostDeleted { vhost } => ShardMsg::VhostDeleted { vhost },
        }
    }
}

/// What a shard tells a network broker about its topic index.
#[derive(Debug)]
pub enum Interest {
    /// The shard's first subscriber of `topic`: `confirmed` fires once the
    /// node's broker subscription is confirmed (or at once while the broker
    /// is unreachable: the join then holds locally and the subscription is
    /// made when the broker returns).
    Join { topic: Box<str>, confirmed: oneshot::Sender<()> },
    /// The shard's last subscriber of `topic` left.
    Leave { topic: Box<str> },
    /// A shard's own publication (a WebRocket client broadcast).
    Publish { batch: Batch },
}

/// A shard's end of the interest channel. Unbounded, yet bounded in
/// practice: a shard sends one `Join` and one `Leave` per topic it starts
/// and stops holding, and `Publish` only what its clients' input produced
/// (that input is held while a publication waits elsewhere).
pub type InterestSender = tokio::sync::mpsc::UnboundedSender<Interest>;
pub type InterestReceiver = tokio::sync::mpsc::UnboundedReceiver<Interest>;
