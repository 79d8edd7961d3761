//! The asks: one method per question or order the control plane (and a
//! shard, for presence) puts to the shards through the router, each with
//! its reply channel and fan-out written once here instead of at every
//! caller.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_channel::oneshot;

use super::messages::ShardMsg;
use super::router::{Closed, ShardRouter};
use crate::handle::{Owner, PushOutcome};

impl ShardRouter {
    /// A backend push to one client: what became of it. A reply lost to a
    /// connection that ended meanwhile counts as not connected.
    pub async fn push(&self, to: Owner, body: Bytes) -> Result<PushOutcome, Closed> {
        if to.shard >= self.shard_count() {
            return Ok(PushOutcome::NotConnected);
        }
        let (reply, answer) = oneshot::channel();
        self.send(to.shard, ShardMsg::Push { to, body, reply }).await?;
        Ok(answer.await.unwrap_or(PushOutcome::NotConnected))
    }

    /// A worker's reply to one WebRocket session of `vhost`.
    pub async fn send_to_session(&self, to: Owner, vhost: &str, frame: Bytes) -> Result<PushOutcome, Closed> {
        if to.shard >= self.shard_count() {
            return Ok(PushOutcome::NotConnected);
        }
        let (reply, answer) = oneshot::channel();
        self.send(to.shard, ShardMsg::Send { to, vhost: vhost.into(), frame, reply }).await?;
        Ok(answer.await.unwrap_or(PushOutcome::NotConnected))
    }

    /// Subscribers of `topic` on every shard of this node: their count and
    /// the user names each shard reported (not deduplicated across shards).
    /// Every shard is asked before any answer is awaited.
    pub async fn presence(&self, topic: &str) -> (usize, Vec<Arc<str>>) {
        let mut answers = Vec::new();
        for shard in 0..self.shard_count() {
            let (reply, answer) = oneshot::channel();
            if self.send(shard, ShardMsg::Presence { topic: topic.into(), reply }).await.is_ok() {
                answers.push(answer);
            }
        }
        let (mut count, mut users) = (0, Vec::new());
        for answer in answers {
            if let Ok((n, names)) = answer.await {
                count += n;
                users.extend(names);
            }
        }
        (count, users)
    }

    /// Subscribers per channel of WebRocket vhost `vhost`, over every shard
    /// of this node.
    pub async fn channel_counts(&self, vhost: &str) -> HashMap<String, usize> {
        let mut answers = Vec::new();
        for shard in 0..self.shard_count() {
            let (reply, answer) = oneshot::channel();
            if self.send(shard, ShardMsg::ChannelCounts { vhost: vhost.into(), reply }).await.is_ok() {
                answers.push(answer);
            }
        }
        let mut counts = HashMap::new();
        for answer in answers {
            for (name, n) in answer.await.unwrap_or_default() {
                *counts.entry(name).or_default() += n;
            }
        }
        counts
    }
}
