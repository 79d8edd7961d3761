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
    /// Sends shard `shard` the message `ask` makes around a reply channel
    /// and awaits the reply; `None` when the shard dropped it (the
    /// connection asked about ended meanwhile) or there is no such shard.
    async fn ask<T>(
        &self,
        shard: usize,
        ask: impl FnOnce(oneshot::Sender<T>) -> ShardMsg,
    ) -> Result<Option<T>, Closed> {
        if shard >= self.shard_count() {
            return Ok(None);
        }
        let (reply, answer) = oneshot::channel();
        self.send(shard, ask(reply)).await?;
        Ok(answer.await.ok())
    }

    /// Asks every shard (all asked before any answer is awaited); the
    /// answers of those that gave one.
    async fn ask_every_shard<T>(&self, ask: impl Fn(oneshot::Sender<T>) -> ShardMsg) -> Vec<T> {
        let mut answers = Vec::new();
        for shard in 0..self.shard_count() {
            let (reply, answer) = oneshot::channel();
            if self.send(shard, ask(reply)).await.is_ok() {
                answers.push(answer);
            }
        }
        let mut got = Vec::with_capacity(answers.len());
        for answer in answers {
            if let Ok(a) = answer.await {
                got.push(a);
            }
        }
        got
    }

    /// A backend push to one client: what became of it. A reply lost to a
    /// connection that ended meanwhile counts as not connected.
    pub async fn push(&self, to: Owner, body: Bytes) -> Result<PushOutcome, Closed> {
        let outcome = self.ask(to.shard, |reply| ShardMsg::Push { to, body, reply }).await?;
        Ok(outcome.unwrap_or(PushOutcome::NotConnected))
    }

    /// A worker's reply to one WebRocket session of `vhost`.
    pub async fn send_to_session(&self, to: Owner, vhost: &str, frame: Bytes) -> Result<PushOutcome, Closed> {
        let outcome =
            self.ask(to.shard, |reply| ShardMsg::Send { to, vhost: vhost.into(), frame, reply }).await?;
        Ok(outcome.unwrap_or(PushOutcome::NotConnected))
    }

    /// Subscribers of `topic` on every shard of this node: their count and
    /// the user names each shard reported (not deduplicated across shards).
    pub async fn presence(&self, topic: &str) -> (usize, Vec<Arc<str>>) {
        let answers = self.ask_every_shard(|reply| ShardMsg::Presence { topic: topic.into(), reply }).await;
        let (mut count, mut users) = (0, Vec::new());
        for (n, names) in answers {
            count += n;
            users.extend(names);
        }
        (count, users)
    }

    /// Subscribers per channel of WebRocket vhost `vhost`, over every shard
    /// of this node.
    pub async fn channel_counts(&self, vhost: &str) -> HashMap<String, usize> {
        let answers =
            self.ask_every_shard(|reply| ShardMsg::ChannelCounts { vhost: vhost.into(), reply }).await;
        let mut counts = HashMap::new();
        for (name, n) in answers.into_iter().flatten() {
            *counts.entry(name).or_default() += n;
        }
        counts
    }
}
