//! Drives WebRocket sessions on a shard: runs a client message through the
//! session machine with the shard as its `Env`, finishes what it leaves
//! pending (hash checks, presence counts across shards, a broadcast waiting
//! for a full inbox), and applies admin changes (user changed or deleted,
//! channel or vhost deleted) to this shard's sessions.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use futures_channel::oneshot;

use super::conn::{ConnRef, ConnState};
use super::state::{Shard, CLOSE_LINGER};
use super::topics::ConnKey;
use crate::bus::{ShardMsg, TrySendError};
use crate::dialect::webrocket as wire;
use crate::handle::{Owner, PushOutcome};
use crate::metrics;
use crate::publish::{Batch, Delivery};
use crate::rt;
use crate::webrocket::session::{not_found, Env, Pending, Session};
use crate::webrocket::workers;

/// The shard as a session's environment, for one message.
struct ShardEnv<'a> {
    shard: &'a Shard,
    st: &'a mut ConnState,
    key: ConnKey,
    vhost: &'a str,
    /// What this message leaves for a task to finish.
    left: Leftover,
}

impl Env for ShardEnv<'_> {
    fn is_subscribed(&self, topic: &str) -> bool {
        self.st.topics.iter().any(|t| &**t == topic)
    }

    fn subscription_count(&self) -> usize {
        self.st.topics.len()
    }

    fn max_subscriptions(&self) -> usize {
        self.shard.config.limits.max_topics_per_connection
    }

    fn subscribe(&mut self, topic: &str) {
        let (name, confirm) = self.shard.subscriptions.borrow_mut().subscribe(topic, self.key);
        // Exact capacity, as `Subscriptions::join`: subscribing is rare, memory per
        // idle connection is not.
        self.st.topics.reserve_exact(1);
        self.st.topics.push(name);
        self.left.confirmations.extend(confirm);
    }

    fn unsubscribe(&mut self, topic: &str) {
        if let Some(pos) = self.st.topics.iter().position(|t| &**t == topic) {
            self.st.topics.swap_remove(pos);
            self.shard.subscriptions.borrow_mut().unsubscribe(topic, self.key);
        }
    }

    fn unsubscribe_all(&mut self) {
        self.shard.subscriptions.borrow_mut().leave_all(self.key, &mut self.st.topics);
    }

    fn send(&mut self, frame: Bytes) {
        // After a subscription the broker has yet to confirm, replies wait
        // for it (a `subscribed` promises cluster-wide delivery).
        if !self.left.confirmations.is_empty() {
            self.left.held.push(frame);
            return;
        }
        if self.st.push(frame, self.shard.config.limits.max_backpressure).is_err() {
            self.shard.close_slow_consumer(self.st);
        }
    }

    fn broadcast(&mut self, topic: String, frame: Bytes) {
        metrics::inc(&self.shard.metrics.broadcasts);
        let batch: Batch = Arc::from(vec![Delivery::new(&topic, frame)]);
        if let Some(network) = &self.shard.interest {
            // Through the network broker, which brings it back to this
            // node's shards too.
            let _ = network.send(crate::bus::Interest::Publish { batch });
            return;
        }
        // Every shard through its inbox, this one too: in order with the
        // sender's earlier broadcasts, and delivering here would borrow the
        // sender's own state while it is held.
        for shard in 0..self.shard.router.shard_count() {
            let msg = ShardMsg::Deliver(batch.clone());
            // Once one waits, later shards wait behind it: keeps each
            // shard's view of this sender's broadcasts in order.
            if !self.left.waiting.is_empty() {
                self.left.waiting.push((shard, msg));
                continue;
            }
            match self.shard.router.try_send(shard, msg) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                Err(TrySendError::Full(back)) => self.left.waiting.push((shard, back)),
            }
        }
    }

    fn trigger(&mut self, message: String) -> bool {
        let wr = &self.shard.webrocket;
        match wr.workers.assign(self.vhost, message) {
            Ok(()) => true,
            // No worker here: one on another node, if any has some.
            Err(workers::NoWorker(message)) => {
                self.shard.peers().is_some_and(|p| p.trigger_elsewhere(self.vhost, message))
            }
        }
    }

    fn sid(&self) -> String {
        workers::sid(&self.shard.webrocket.node, self.st.owner)
    }

    fn now(&self) -> std::time::Instant {
        std::time::Instant::now()
    }

    fn in_cluster(&self) -> bool {
        self.shard.interest.is_some()
    }
}

/// Work a session left for the driver to finish in a task.
#[derive(Default)]
struct Leftover {
    /// Broadcasts to shards whose inbox was full.
    waiting: Vec<(usize, ShardMsg)>,
    /// Broker confirmations to wait for, then the frames to send.
    confirmations: Vec<oneshot::Receiver<()>>,
    held: Vec<Bytes>,
}

impl Leftover {
    fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.confirmations.is_empty()
    }
}

/// Runs `f` with the connection's session taken out of its state (so the
/// session and the state can both be borrowed mutably) and the shard as env.
fn with_session<R>(
    shard: &Shard,
    st: &mut ConnState,
    f: impl FnOnce(&mut Session, &mut ShardEnv<'_>) -> R,
) -> Option<(R, Leftover)> {
    let mut session = st.wr.take()?;
    let key = st.owner.key;
    // A reference count, not a copy of the path, per message.
    let vhost = session.vhost.clone();
    let mut env = ShardEnv { shard, st, key, vhost: &vhost.path, left: Leftover::default() };
    let r = f(&mut session, &mut env);
    let left = std::mem::take(&mut env.left);
    st.wr = Some(session);
    Some((r, left))
}

/// Finishes a session's leftover work in a task, the connection's input
/// held meanwhile (its order is kept).
fn finish_later(shard: &Rc<Shard>, st: &mut ConnState, left: Leftover) {
    if left.is_empty() {
        return;
    }
    st.session.await_answer();
    rt::spawn(finish_leftover(shard.clone(), st.owner, left));
}

async fn finish_leftover(shard: Rc<Shard>, owner: Owner, left: Leftover) {
    for (to, msg) in left.waiting {
        if shard.router.send(to, msg).await.is_err() {
            break;
        }
    }
    for c in left.confirmations {
        let _ = c.await;
    }
    let held = left.held;
    finish(&shard, owner, move |_, env| {
        for frame in held {
            env.send(frame);
        }
    });
}

/// A text (or, `text == None`, binary) message from a WebRocket client.
pub(super) fn on_message(shard: &Rc<Shard>, conn: &ConnRef, text: Option<&[u8]>) {
    let mut st = conn.borrow_mut();
    // Connected while its vhost was being deleted (after the shards were
    // told): close it like the others.
    if st.wr.as_ref().is_some_and(|s| s.vhost.is_deleted()) {
        shard.start_close(&mut st, Some(1001), "vhost deleted", CLOSE_LINGER);
        return;
    }
    let Some((pending, left)) = with_session(shard, &mut st, |s, env| match text {
        Some(t) => s.on_text(t, env),
        None => {
            s.on_binary(env);
            None
        }
    }) else {
        return;
    };
    let owner = st.owner;
    finish_later(shard, &mut st, left);
    match pending {
        None => {}
        Some(Pending::Close) => shard.start_close(&mut st, Some(1000), "", CLOSE_LINGER),
        Some(Pending::PolicyClose(reason)) => shard.start_close(&mut st, Some(1008), reason, CLOSE_LINGER),
        Some(Pending::Verify { user, secret }) => {
            let Some(hash) = user.hash.clone() else { return };
            st.session.await_answer();
            let checker = shard.webrocket.secrets.clone();
            let shard = shard.clone();
            rt::spawn(async move {
                let verdict = checker.check(hash, secret).await;
                finish(&shard, owner, |s, env| s.on_verified(user, verdict, env));
            });
        }
        Some(Pending::Presence { channel, topic, known }) => {
            st.session.await_answer();
            let shard = shard.clone();
            rt::spawn(async move {
                let (count, users) = presence(&shard, topic).await;
                let frame = if count == 0 && !known {
                    not_found(&channel).frame()
                } else {
                    let names: Vec<&str> = users.iter().map(|u| &**u).collect();
                    wire::presence_frame(&channel, count, &names)
                };
                finish(&shard, owner, |_, env| env.send(frame));
            });
        }
        Some(Pending::BroadcastElsewhere { channel, topic, frame }) => {
            st.session.await_answer();
            let Some(session) = st.wr.as_ref() else { return };
            let vhost = session.vhost.clone();
            let shard = shard.clone();
            rt::spawn(async move {
                let peers = shard.peers().cloned();
                let ask = {
                    let name = channel.clone();
                    shard.webrocket.runtime.spawn(async move {
                        crate::bus::ports::channel_elsewhere(peers.as_deref(), &vhost, &name).await
                    })
                };
                let found = ask.await.unwrap_or(false);
                finish(&shard, owner, move |_, env| {
                    if found {
                        env.broadcast(topic, frame);
                        env.send(wire::named_reply("broadcasted", &channel));
                    } else {
                        env.send(not_found(&channel).frame());
                    }
                });
            });
        }
    }
}

/// Resumes a connection after pending work: runs `f` if it is still the
/// same connection, releases its held input and wakes it.
fn finish(shard: &Rc<Shard>, owner: Owner, f: impl FnOnce(&mut Session, &mut ShardEnv<'_>)) {
    let Some(conn) = shard.conn(owner) else {
        return;
    };
    let mut st = conn.borrow_mut();
    st.session.answered();
    if let Some(((), left)) = with_session(shard, &mut st, f) {
        finish_later(shard, &mut st, left);
    }
    st.wake();
}

/// Subscribers of `topic` on every shard: their count and the distinct
/// names of the authenticated ones, sorted.
async fn presence(shard: &Shard, topic: String) -> (usize, Vec<Arc<str>>) {
    let (mut count, mut users) = shard.router.presence(&topic).await;
    // The other nodes' subscribers (network broker), asked on the
    // integration thread where the broker runs.
    if let Some(peers) = shard.peers().cloned() {
        let ask = crate::proto::query::Ask::PresenceTopic(topic.clone());
        let remote = shard.webrocket.runtime.spawn(async move { peers.gather(ask).await });
        for r in remote.await.unwrap_or_default() {
            count += r.count as usize;
            users.extend(r.users.into_iter().map(Arc::from));
        }
    }
    users.sort();
    users.dedup();
    (count, users)
}

impl Shard {
    /// This shard's part of a presence count.
    pub(super) fn local_presence(&self, topic: &str) -> (usize, Vec<Arc<str>>) {
        let conns = self.conns.borrow();
        let mut users = Vec::new();
        let mut count = 0;
        for key in self.subscriptions.borrow().index().subscribers(topic) {
            count += 1;
            let Some(conn) = conns.get(key) else { continue };
            if let Some(user) = conn.borrow().wr.as_ref().and_then(|s| s.user.clone()) {
                users.push(user);
            }
        }
        (count, users)
    }

    /// Subscriber counts of a vhost's channels on this shard.
    pub(super) fn local_channel_counts(&self, vhost: &str) -> Vec<(String, usize)> {
        let Some(v) = self.webrocket.directory.vhost(vhost) else {
            return Vec::new();
        };
        self.subscriptions
            .borrow()
            .index()
            .counts()
            .filter_map(|(topic, n)| Some((v.channel_of(topic)?.to_string(), n)))
            .collect()
    }

    /// A worker's reply to one session of `vhost`.
    pub(super) fn send_to_session(&self, to: Owner, vhost: &str, frame: Bytes) -> PushOutcome {
        let Some(conn) = self.conn(to) else {
            return PushOutcome::NotConnected;
        };
        let mut st = conn.borrow_mut();
        let same_vhost = st.wr.as_ref().is_some_and(|s| &*s.vhost.path == vhost && !s.vhost.is_deleted());
        if !same_vhost || st.is_closing() {
            return PushOutcome::NotConnected;
        }
        if st.push(frame, self.config.limits.max_backpressure).is_err() {
            self.close_slow_consumer(&mut st);
            return PushOutcome::SlowConsumer;
        }
        PushOutcome::Queued
    }

    /// Applies an admin change to `user` of `vhost` to its sessions here.
    pub(super) fn user_changed(&self, vhost: &str, user: &str) {
        let Some(v) = self.webrocket.directory.vhost(vhost) else { return };
        let current = v.user(user);
        for (_, conn) in self.conns.borrow().iter() {
            let mut st = conn.borrow_mut();
            let hit =
                st.wr.as_ref().is_some_and(|s| &*s.vhost.path == vhost && s.user.as_deref() == Some(user));
            if hit && !st.is_closing() {
                // Changes only unsubscribe and send: nothing is left over.
                with_session(self, &mut st, |s, env| s.on_user_changed(current.as_deref(), env));
            }
        }
    }

    /// Drops every subscription to a deleted channel here.
    pub(super) fn channel_deleted(&self, topic: &str) {
        let mut subscriptions = self.subscriptions.borrow_mut();
        let keys: Vec<ConnKey> = subscriptions.index().subscribers(topic).collect();
        let conns = self.conns.borrow();
        for key in keys {
            subscriptions.unsubscribe(topic, key);
            if let Some(conn) = conns.get(key) {
                conn.borrow_mut().topics.retain(|t| &**t != topic);
            }
        }
    }

    /// Closes every session of a deleted vhost here (1001).
    pub(super) fn vhost_deleted(&self, vhost: &str) {
        for (_, conn) in self.conns.borrow().iter() {
            let mut st = conn.borrow_mut();
            if st.wr.as_ref().is_some_and(|s| &*s.vhost.path == vhost) {
                // Unsubscribed now, not when the close completes: a vhost
                // made again under the path starts with no channels of these.
                let key = st.owner.key;
                self.subscriptions.borrow_mut().leave_all(key, &mut st.topics);
                self.start_close(&mut st, Some(1001), "vhost deleted", CLOSE_LINGER);
            }
        }
    }
}
