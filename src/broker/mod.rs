//! Brokers carry publications to every subscriber of the system. `memory`
//! reaches this node's shards; the network brokers (Redis, NATS) carry an
//! envelope between nodes (`cluster`) and feed what they receive into the
//! same shard router. Shards never learn which one runs: a network broker
//! only adds an interest channel (first / last subscriber of a topic on a
//! shard) that the memory broker does not need.

pub mod cluster;
pub mod envelope;
mod memory;
pub mod nats;
pub mod redis;
pub mod seal;
pub mod transport;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures_channel::oneshot;

pub use memory::MemoryBroker;

use crate::publish::{self, Batch, Message, PublishError};
use crate::shard::PushOutcome;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Broker: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Hands encoded deliveries to every subscriber of their topics (on
    /// this node, or on every node through the network broker); resolves
    /// once the shards or the broker took them.
    fn publish_frames(&self, batch: Batch) -> BoxFuture<'_, Result<(), PublishError>>;

    /// Publishes validated messages.
    fn publish(&self, messages: Vec<Message>) -> BoxFuture<'_, Result<(), PublishError>> {
        let batch = publish::encode(&messages);
        self.publish_frames(batch)
    }

    /// `None` when healthy; else why not (`/health` answers 503 with it).
    fn degraded(&self) -> Option<String> {
        None
    }

    /// A push to a ClientId no shard of this node holds: asks the other
    /// nodes. The memory broker has no other nodes.
    fn push_elsewhere(
        &self,
        _client: &str,
        _body: Bytes,
    ) -> BoxFuture<'_, Result<PushOutcome, PublishError>> {
        Box::pin(async { Ok(PushOutcome::NotConnected) })
    }

    /// A proxy ClientId connected to (true) or left (false) this node.
    fn client_here(&self, _client: &str, _here: bool) {}

    /// WebRocket state committed here, for the other nodes to apply too.
    fn replicate(&self, _writes: Vec<crate::webrocket::store::Write>) {}

    /// A WebRocket worker's reply to a session on another node (`node`, from the sid).
    fn session_reply_elsewhere(
        &self,
        _node: &str,
        _vhost: &str,
        _sid: &str,
        _frame: Bytes,
    ) -> BoxFuture<'_, Result<PushOutcome, PublishError>> {
        Box::pin(async { Ok(PushOutcome::NotConnected) })
    }

    /// Hands a WebRocket trigger to a node with workers for `vhost`; false
    /// if no other node has any.
    fn trigger_elsewhere(&self, _vhost: &str, _message: String) -> bool {
        false
    }

    /// Asks the other nodes (presence, channel counts); their answers.
    fn gather(&self, _ask: envelope::proto::query::Ask) -> BoxFuture<'_, Vec<envelope::QueryReply>> {
        Box::pin(async { Vec::new() })
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
