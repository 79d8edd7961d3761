//! The ports the data plane publishes and asks through: `Broker` carries
//! publications (memory on one node; Redis or NATS between nodes) and the
//! cluster's control calls. The shards and the control plane hold an
//! `Arc<dyn Broker>` and never learn which one runs.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::handle::PushOutcome;
use crate::proto::query::Ask;
use crate::proto::QueryReply;
use crate::publish::{self, Batch, Message, PublishError};
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
    fn gather(&self, _ask: Ask) -> BoxFuture<'_, Vec<QueryReply>> {
        Box::pin(async { Vec::new() })
    }

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
