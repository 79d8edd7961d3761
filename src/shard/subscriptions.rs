//! Join and leave bookkeeping: a shard's topic index and each connection's
//! list of joined topics kept in step, within the per-connection limit,
//! with the side effects of a topic's first and last subscriber here (a
//! WebRocket channel's shard count; with a network broker, the node's
//! interest in the topic). No sockets: the connection's list is passed in.

use std::rc::Rc;
use std::sync::Arc;

use futures_channel::oneshot;

use super::topics::{ConnKey, TopicIndex};
use crate::bus::{Interest, InterestSender};
use crate::metrics::{self, ShardMetrics};
use crate::webrocket::WebRocket;

pub struct Subscriptions {
    index: TopicIndex,
    metrics: Arc<ShardMetrics>,
    webrocket: Arc<WebRocket>,
    /// With a network broker: where first and last subscribers are reported.
    interest: Option<InterestSender>,
    /// This node's broker: a join or leave naming another is refused.
    broker: String,
    max_topics_per_connection: usize,
    max_topic_length: usize,
}

/// A confirmation from the network broker that this node's subscription
/// to a topic is in place.
pub type Confirmation = oneshot::Receiver<()>;

impl Subscriptions {
    pub fn new(
        metrics: Arc<ShardMetrics>,
        webrocket: Arc<WebRocket>,
        interest: Option<InterestSender>,
        broker: String,
        max_topics_per_connection: usize,
        max_topic_length: usize,
    ) -> Subscriptions {
        Subscriptions {
            index: TopicIndex::default(),
            metrics,
            webrocket,
            interest,
            broker,
            max_topics_per_connection,
            max_topic_length,
        }
    }

    pub fn index(&self) -> &TopicIndex {
        &self.index
    }

    pub fn index_mut(&mut self) -> &mut TopicIndex {
        &mut self.index
    }

    /// A join or leave names this node's broker (or none) and valid topics.
    pub fn acceptable(&self, broker: Option<&str>, topics: &[&str]) -> bool {
        use crate::dialect::roadrunner::topic_is_valid;
        broker.is_none_or(|b| b == self.broker)
            && !topics.is_empty()
            && topics.iter().all(|t| topic_is_valid(t, self.max_topic_length))
    }

    /// Applies a join of connection `key`, whose joined topics are `held`;
    /// None means refused (`#join`), with nothing changed. Else the broker
    /// confirmations to wait for before `@join` goes out (none with the
    /// memory broker, or when the topics were held here already).
    pub fn join(
        &mut self,
        key: ConnKey,
        held: &mut Vec<Rc<str>>,
        broker: Option<&str>,
        wanted: &[&str],
    ) -> Option<Vec<Confirmation>> {
        if !self.acceptable(broker, wanted) {
            return None;
        }
        let mut new: Vec<&str> =
            wanted.iter().copied().filter(|t| !held.iter().any(|have| &**have == *t)).collect();
        new.sort_unstable();
        new.dedup();
        if held.len() + new.len() > self.max_topics_per_connection {
            return None;
        }
        let mut confirmations = Vec::new();
        for t in new {
            let (name, confirm) = self.subscribe(t, key);
            held.push(name);
            confirmations.extend(confirm);
        }
        // Joins are rare and most connections hold a topic or two: exact
        // capacity saves 48 bytes per idle subscriber.
        held.shrink_to_fit();
        Some(confirmations)
    }

    /// Applies a leave; false means refused (`#leave`), with nothing changed.
    /// Topics not held are passed over.
    pub fn leave(
        &mut self,
        key: ConnKey,
        held: &mut Vec<Rc<str>>,
        broker: Option<&str>,
        topics: &[&str],
    ) -> bool {
        if !self.acceptable(broker, topics) {
            return false;
        }
        for t in topics {
            if let Some(pos) = held.iter().position(|have| &**have == *t) {
                held.swap_remove(pos);
                self.unsubscribe(t, key);
            }
        }
        true
    }

    /// Leaves every topic in `held` (a connection that closed, or whose
    /// vhost went).
    pub fn leave_all(&mut self, key: ConnKey, held: &mut Vec<Rc<str>>) {
        for t in held.drain(..) {
            self.unsubscribe(&t, key);
        }
    }

    /// Subscribes `key` in the topic index; returns the shared name to keep
    /// on the connection. A shard's first subscriber of a topic is reported
    /// to a network broker, whose confirmation the reply to the client
    /// waits for.
    pub fn subscribe(&mut self, topic: &str, key: ConnKey) -> (Rc<str>, Option<Confirmation>) {
        let (name, new) = self.index.subscribe(topic, key);
        metrics::inc(&self.metrics.subscriptions);
        if !new {
            return (name, None);
        }
        // A WebRocket channel exists while a shard has subscribers.
        if let Some((vhost, channel)) = self.webrocket.directory.channel_of_topic(topic) {
            vhost.shard_subscribed(channel);
        }
        let confirm = self.interest.as_ref().and_then(|tx| {
            let (confirmed, rx) = oneshot::channel();
            tx.send(Interest::Join { topic: topic.into(), confirmed }).ok().map(|()| rx)
        });
        (name, confirm)
    }

    /// Unsubscribes `key`; a shard's last subscriber leaving is reported.
    pub fn unsubscribe(&mut self, topic: &str, key: ConnKey) {
        metrics::dec(&self.metrics.subscriptions);
        if self.index.unsubscribe(topic, key) {
            if let Some((vhost, channel)) = self.webrocket.directory.channel_of_topic(topic) {
                vhost.shard_unsubscribed(channel);
            }
            if let Some(tx) = &self.interest {
                let _ = tx.send(Interest::Leave { topic: topic.into() });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::InterestReceiver;
    use crate::webrocket::store::{Loaded, Store};
    use crate::webrocket::Directory;
    use std::sync::atomic::Ordering::Relaxed;

    struct Fixture {
        subs: Subscriptions,
        metrics: Arc<ShardMetrics>,
        interest: InterestReceiver,
        _runtime: tokio::runtime::Runtime,
    }

    fn fixture(max_topics: usize) -> Fixture {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (directory, _) = Directory::load(Store::disabled(), Loaded::default(), &[]);
        let webrocket = WebRocket::new(directory, runtime.handle().clone());
        let metrics = Arc::new(ShardMetrics::default());
        let (tx, interest) = tokio::sync::mpsc::unbounded_channel();
        let subs = Subscriptions::new(metrics.clone(), webrocket, Some(tx), "redis".into(), max_topics, 256);
        Fixture { subs, metrics, interest, _runtime: runtime }
    }

    /// What the shard reported to the broker since the last call.
    fn reported(f: &mut Fixture) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(i) = f.interest.try_recv() {
            out.push(match i {
                Interest::Join { topic, .. } => format!("join {topic}"),
                Interest::Leave { topic } => format!("leave {topic}"),
                Interest::Publish { .. } => "publish".into(),
            });
        }
        out
    }

    fn names(held: &[Rc<str>]) -> Vec<&str> {
        held.iter().map(|t| &**t).collect()
    }

    fn subscribers(f: &Fixture, topic: &str) -> Vec<ConnKey> {
        let mut keys: Vec<_> = f.subs.index().subscribers(topic).collect();
        keys.sort();
        keys
    }

    #[test]
    fn only_a_topics_first_and_last_subscriber_reach_the_broker() {
        let mut f = fixture(10);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let confirm = f.subs.join(1, &mut a, None, &["news", "chat"]).expect("joined");
        assert_eq!(confirm.len(), 2, "two new topics: two broker confirmations");
        assert_eq!(reported(&mut f), ["join chat", "join news"]);
        let confirm = f.subs.join(2, &mut b, Some("redis"), &["news"]).expect("joined");
        assert!(confirm.is_empty(), "the node has news already");
        assert!(reported(&mut f).is_empty());
        assert_eq!(subscribers(&f, "news"), [1, 2]);
        assert_eq!(f.metrics.subscriptions.load(Relaxed), 3);

        assert!(f.subs.leave(1, &mut a, None, &["news"]));
        assert!(reported(&mut f).is_empty(), "connection 2 still holds news");
        assert_eq!(names(&a), ["chat"]);
        assert!(f.subs.leave(2, &mut b, None, &["news"]));
        assert_eq!(reported(&mut f), ["leave news"]);
        assert_eq!(subscribers(&f, "news"), Vec::<ConnKey>::new());
        f.subs.leave_all(1, &mut a);
        assert_eq!(reported(&mut f), ["leave chat"]);
        assert!(a.is_empty());
        assert_eq!(f.subs.index().topic_count(), 0);
        assert_eq!(f.metrics.subscriptions.load(Relaxed), 0);
    }

    #[test]
    fn a_join_is_all_or_nothing() {
        let mut f = fixture(3);
        let mut held = Vec::new();
        f.subs.join(1, &mut held, None, &["a", "b"]).expect("joined");
        reported(&mut f);
        // Past the limit (a is held; b, c, d would make four): nothing changes.
        assert!(f.subs.join(1, &mut held, None, &["a", "c", "d"]).is_none());
        // Another node's broker, an invalid name, nothing at all: refused.
        assert!(f.subs.join(1, &mut held, Some("nats"), &["c"]).is_none());
        assert!(f.subs.join(1, &mut held, None, &["c", ""]).is_none());
        assert!(f.subs.join(1, &mut held, None, &[]).is_none());
        assert_eq!(names(&held), ["a", "b"]);
        assert_eq!(f.subs.index().topic_count(), 2);
        assert!(reported(&mut f).is_empty());
        // Duplicates count once and what is held already is passed over.
        f.subs.join(1, &mut held, None, &["c", "c", "a"]).expect("joined");
        assert_eq!(names(&held), ["a", "b", "c"]);
        assert_eq!(f.metrics.subscriptions.load(Relaxed), 3);
    }

    #[test]
    fn leaving_what_is_not_held_changes_nothing() {
        let mut f = fixture(3);
        let mut held = Vec::new();
        f.subs.join(1, &mut held, None, &["a"]).expect("joined");
        reported(&mut f);
        assert!(f.subs.leave(1, &mut held, None, &["b"]));
        assert!(!f.subs.leave(1, &mut held, Some("nats"), &["a"]), "another broker's leave is refused");
        assert_eq!(names(&held), ["a"]);
        assert_eq!(subscribers(&f, "a"), [1]);
        assert!(reported(&mut f).is_empty());
    }
}
