//! A shard's topic index: topic → the shard's connections subscribed to it.
//! Shard-local, so it needs no locks; fanout iterates a contiguous set.

use std::rc::Rc;

use indexmap::{IndexMap, IndexSet};

use crate::stats::{TopN, TopicStat};

pub type ConnKey = usize;

/// A topic's subscribers here and how many messages it got.
#[derive(Debug, Default)]
pub struct TopicEntry {
    pub subscribers: IndexSet<ConnKey>,
    /// Messages delivered to this topic here.
    pub messages: u64,
    /// `messages` at the last scan (for the rate).
    messages_at_scan: u64,
}

#[derive(Debug, Default)]
pub struct TopicIndex {
    /// An index map: a scan can go through it in slices across yields.
    topics: IndexMap<Rc<str>, TopicEntry>,
}

impl TopicIndex {
    /// Subscribes `conn`; returns the shared topic name to keep on the
    /// connection, and whether the topic is new here.
    pub fn subscribe(&mut self, topic: &str, conn: ConnKey) -> (Rc<str>, bool) {
        if let Some((_, name, entry)) = self.topics.get_full_mut(topic) {
            entry.subscribers.insert(conn);
            return (name.clone(), false);
        }
        let name: Rc<str> = Rc::from(topic);
        let mut entry = TopicEntry { subscribers: IndexSet::with_capacity(1), ..Default::default() };
        entry.subscribers.insert(conn);
        self.topics.insert(name.clone(), entry);
        (name, true)
    }

    /// Unsubscribes `conn`; true if that left the topic without subscribers here.
    pub fn unsubscribe(&mut self, topic: &str, conn: ConnKey) -> bool {
        if let Some(entry) = self.topics.get_mut(topic) {
            entry.subscribers.swap_remove(&conn);
            if entry.subscribers.is_empty() {
                self.topics.swap_remove(topic);
                return true;
            }
        }
        false
    }

    pub fn subscribers(&self, topic: &str) -> impl Iterator<Item = ConnKey> + '_ {
        self.topics.get(topic).into_iter().flat_map(|e| e.subscribers.iter().copied())
    }

    /// A topic's entry, to deliver to it (and count the message).
    pub fn entry_mut(&mut self, topic: &str) -> Option<&mut TopicEntry> {
        self.topics.get_mut(topic)
    }

    /// Every topic with its number of subscribers here.
    pub fn counts(&self) -> impl Iterator<Item = (&str, usize)> + '_ {
        self.topics.iter().map(|(t, e)| (&**t, e.subscribers.len()))
    }

    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// Offers topics `range` (clamped) to the top lists, with their message
    /// rate over `seconds` since the last scan; returns where to go on
    /// (None: done). Topics removed or moved between slices may be missed.
    pub fn scan(
        &mut self,
        from: usize,
        max: usize,
        seconds: f64,
        by_subscribers: &mut TopN<TopicStat>,
        by_rate: &mut TopN<TopicStat>,
    ) -> Option<usize> {
        let end = (from + max).min(self.topics.len());
        for i in from..end {
            let (name, e) = self.topics.get_index_mut(i).expect("in range");
            let rate = (e.messages - e.messages_at_scan) as f64 / seconds.max(0.001);
            e.messages_at_scan = e.messages;
            let subscribers = e.subscribers.len() as u64;
            let stat = || TopicStat { topic: name.to_string(), subscribers, messages_per_second: rate };
            if by_subscribers.admits(subscribers as f64) {
                by_subscribers.offer(subscribers as f64, stat());
            }
            if rate > 0.0 && by_rate.admits(rate) {
                by_rate.offer(rate, stat());
            }
        }
        (end < self.topics.len()).then_some(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_shares_names_and_unsubscribe_cleans_up() {
        let mut idx = TopicIndex::default();
        let (a, new) = idx.subscribe("t", 1);
        assert!(new);
        let (b, new) = idx.subscribe("t", 2);
        assert!(!new);
        assert!(Rc::ptr_eq(&a, &b));
        let mut subs: Vec<_> = idx.subscribers("t").collect();
        subs.sort();
        assert_eq!(subs, [1, 2]);
        assert!(!idx.unsubscribe("t", 1));
        assert_eq!(idx.subscribers("t").collect::<Vec<_>>(), [2]);
        assert!(idx.unsubscribe("t", 2));
        assert_eq!(idx.topic_count(), 0);
        assert_eq!(idx.subscribers("t").count(), 0);
        assert!(!idx.unsubscribe("never", 9));
    }

    #[test]
    fn scan_ranks_topics_by_subscribers_and_rate() {
        let mut idx = TopicIndex::default();
        for conn in 0..3 {
            idx.subscribe("many", conn);
        }
        idx.subscribe("busy", 9);
        idx.entry_mut("busy").unwrap().messages += 20;
        let (mut subs, mut rate) = (TopN::new(1), TopN::new(5));
        assert_eq!(idx.scan(0, 1, 2.0, &mut subs, &mut rate), Some(1));
        assert_eq!(idx.scan(1, 1, 2.0, &mut subs, &mut rate), None);
        let subs = subs.into_vec();
        assert_eq!((subs[0].topic.as_str(), subs[0].subscribers), ("many", 3));
        let rate = rate.into_vec();
        assert_eq!(rate.len(), 1, "topics without messages are not listed by rate");
        assert_eq!((rate[0].topic.as_str(), rate[0].messages_per_second), ("busy", 10.0));
        let mut again = TopN::new(5);
        idx.scan(0, 10, 1.0, &mut TopN::new(1), &mut again);
        assert!(again.into_vec().is_empty(), "the rate counts messages since the last scan");
    }
}
