//! A shard's topic index: topic → the shard's connections subscribed to it.
//! Shard-local, so it needs no locks; fanout iterates a contiguous set.

use std::collections::HashMap;
use std::rc::Rc;

use indexmap::IndexSet;

pub type ConnKey = usize;

#[derive(Debug, Default)]
pub struct TopicIndex {
    topics: HashMap<Rc<str>, IndexSet<ConnKey>>,
}

impl TopicIndex {
    /// Subscribes `conn`; returns the shared topic name to keep on the
    /// connection, and whether the topic is new here.
    pub fn subscribe(&mut self, topic: &str, conn: ConnKey) -> (Rc<str>, bool) {
        if let Some(set) = self.topics.get_mut(topic) {
            set.insert(conn);
            let (name, _) = self.topics.get_key_value(topic).expect("just found");
            return (name.clone(), false);
        }
        let name: Rc<str> = Rc::from(topic);
        let mut set = IndexSet::with_capacity(1);
        set.insert(conn);
        self.topics.insert(name.clone(), set);
        (name, true)
    }

    /// Unsubscribes `conn`; true if that left the topic without subscribers here.
    pub fn unsubscribe(&mut self, topic: &str, conn: ConnKey) -> bool {
        if let Some(set) = self.topics.get_mut(topic) {
            set.swap_remove(&conn);
            if set.is_empty() {
                self.topics.remove(topic);
                return true;
            }
        }
        false
    }

    pub fn subscribers(&self, topic: &str) -> impl Iterator<Item = ConnKey> + '_ {
        self.topics.get(topic).into_iter().flat_map(|s| s.iter().copied())
    }

    /// Every topic with its number of subscribers here.
    pub fn counts(&self) -> impl Iterator<Item = (&str, usize)> + '_ {
        self.topics.iter().map(|(t, s)| (&**t, s.len()))
    }

    pub fn topic_count(&self) -> usize {
        self.topics.len()
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
}
