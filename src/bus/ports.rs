//! The ports the data plane and the control plane publish and ask through:
//! `Broker` carries publications (memory on one node; Redis or NATS between
//! nodes); `Peers` is the other nodes of a cluster (pushes, replies,
//! triggers and questions that must reach them). The memory broker has no
//! peers: where there are none the callers hold `None` and answer for
//! this node alone. Neither side learns which broker runs.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::handle::PushOutcome;
use crate::proto::query::Ask;
use crate::proto::QueryReply;
use crate::publish::{self, Batch, Message, PublishError};
use crate::webrocket::store::Write;
use crate::webrocket::Vhost;

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
}

/// The other nodes of a cluster, reached through the network broker.
pub trait Peers: Send + Sync + 'static {
    /// A push to a ClientId no shard of this node holds: asks the node that
    /// holds it.
    fn push_elsewhere(&self, client: &str, body: Bytes) -> BoxFuture<'_, Result<PushOutcome, PublishError>>;

    /// A proxy ClientId connected to (true) or left (false) this node.
    fn client_here(&self, client: &str, here: bool);

    /// WebRocket state committed here, for the other nodes to apply too.
    fn replicate(&self, writes: Vec<Write>);

    /// A WebRocket worker's reply to a session on another node (`node`, from the sid).
    fn session_reply_elsewhere(
        &self,
        node: &str,
        vhost: &str,
        sid: &str,
        frame: Bytes,
    ) -> BoxFuture<'_, Result<PushOutcome, PublishError>>;

    /// Hands a WebRocket trigger to a node with workers for `vhost`; false
    /// if no other node has any.
    fn trigger_elsewhere(&self, vhost: &str, message: String) -> bool;

    /// Asks the other nodes (presence, channel counts); their answers.
    fn gather(&self, ask: Ask) -> BoxFuture<'_, Vec<QueryReply>>;

    /// Does another node have `channel` of `vhost` (a channel made by a
    /// subscribe exists only where it has subscribers)? A yes is remembered
    /// for a second, so a stream of broadcasts asks once.
    fn channel_elsewhere<'a>(&'a self, vhost: &'a Vhost, channel: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            if vhost.seen_elsewhere(channel) {
                return true;
            }
            let found =
                self.gather(Ask::ChannelExistsTopic(vhost.topic(channel))).await.iter().any(|r| r.count > 0);
            if found {
                vhost.note_elsewhere(channel);
            }
            found
        })
    }
}

/// `Peers::channel_elsewhere` where there may be no peers (memory broker).
pub async fn channel_elsewhere(peers: Option<&dyn Peers>, vhost: &Vhost, channel: &str) -> bool {
    match peers {
        Some(p) => p.channel_elsewhere(vhost, channel).await,
        None => false,
    }
}
