//! The live WebRocket state every thread reads: vhosts, their users,
//! channels and worker tokens. Shards read it on authenticate, subscribe,
//! broadcast and presence (short read locks). The admin API's changes go to
//! the store too; a channel made by a subscribe lives only in memory, on the
//! nodes where it has subscribers, and goes when its last subscriber does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::store::{Loaded, Store, UserRecord, Write};
use crate::dialect::webrocket::Perms;

/// A user as sessions see it.
#[derive(Debug)]
pub struct User {
    pub name: Arc<str>,
    pub perms: Perms,
    /// PHC string of the secret's hash; none accepts any secret.
    pub hash: Option<String>,
}

#[derive(Debug)]
pub struct Vhost {
    pub path: Box<str>,
    pub anonymous: Perms,
    /// Declared in the config file: cannot be deleted at run time.
    pub from_config: bool,
    /// Topic-index key prefix of its channels; no roadrunner topic can
    /// start with it (control characters are not valid there).
    topic_prefix: Box<str>,
    users: RwLock<HashMap<Box<str>, Arc<User>>>,
    channels: RwLock<HashMap<Box<str>, Channel>>,
    /// Channels another node was recently found to have (subscribers
    /// there only), so a broadcast here does not ask the cluster each time.
    elsewhere: std::sync::Mutex<HashMap<Box<str>, Instant>>,
    token: RwLock<Arc<str>>,
    deleted: AtomicBool,
    /// `webrocket.max_channels_per_vhost` (shared by every vhost): a
    /// subscribe past it is refused.
    max_channels: Arc<AtomicUsize>,
}

/// A channel as this node knows it.
#[derive(Debug, Default)]
struct Channel {
    /// Made by the admin API (or loaded from the store): stays without
    /// subscribers.
    kept: bool,
    /// Shards of this node with at least one subscriber.
    shards: usize,
}

/// How long a channel found on another node counts as existing there.
const ELSEWHERE_FOR: Duration = Duration::from_secs(1);

/// `webrocket.max_channels_per_vhost`'s default.
pub const DEFAULT_MAX_CHANNELS: usize = 10_000;

/// A subscribe would create a channel past `max_channels_per_vhost`.
#[derive(Debug, PartialEq, Eq)]
pub struct TooManyChannels(pub usize);

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data
    // (every write is a single insert or remove): poisoning is ignored.
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// A random token of 256 bits, hex.
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS random source works");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A token as `new_token` makes them: 64 lowercase hex digits.
pub fn token_is_valid(token: &str) -> bool {
    token.len() == 64 && token.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Vhost {
    fn new(
        path: &str,
        anonymous: Perms,
        from_config: bool,
        token: String,
        max_channels: Arc<AtomicUsize>,
    ) -> Vhost {
        Vhost {
            path: path.into(),
            anonymous,
            from_config,
            topic_prefix: format!("\u{1}{path}\u{1}").into(),
            users: RwLock::default(),
            channels: RwLock::default(),
            elsewhere: std::sync::Mutex::default(),
            token: RwLock::new(token.into()),
            deleted: AtomicBool::new(false),
            max_channels,
        }
    }

    /// The topic-index key of `channel`.
    pub fn topic(&self, channel: &str) -> String {
        format!("{}{channel}", self.topic_prefix)
    }

    /// The channel named by a topic-index key of this vhost.
    pub fn channel_of<'t>(&self, topic: &'t str) -> Option<&'t str> {
        topic.strip_prefix(&*self.topic_prefix)
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub fn user(&self, name: &str) -> Option<Arc<User>> {
        read(&self.users).get(name).cloned()
    }

    pub fn users(&self) -> Vec<Arc<User>> {
        let mut all: Vec<_> = read(&self.users).values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Kept, or subscribed on this node.
    pub fn channel_exists(&self, name: &str) -> bool {
        read(&self.channels).contains_key(name)
    }

    /// Made by the admin API (persisted).
    pub fn channel_is_kept(&self, name: &str) -> bool {
        read(&self.channels).get(name).is_some_and(|c| c.kept)
    }

    pub fn channels(&self) -> Vec<String> {
        let mut all: Vec<String> = read(&self.channels).keys().map(|c| c.to_string()).collect();
        all.sort();
        all
    }

    /// May a subscribe make `name` exist here? An error past
    /// `max_channels_per_vhost` (anonymous clients must not grow the
    /// directory without bound). Shards subscribing at the same moment may
    /// pass it together: the bound holds to within the shard count.
    pub fn room_for(&self, name: &str) -> Result<(), TooManyChannels> {
        let channels = read(&self.channels);
        let max = self.max_channels.load(Ordering::Relaxed);
        if channels.len() >= max && !channels.contains_key(name) {
            return Err(TooManyChannels(max));
        }
        Ok(())
    }

    /// A shard's first subscriber of `name`: it exists while any shard has one.
    pub fn shard_subscribed(&self, name: &str) {
        write(&self.channels).entry(name.into()).or_default().shards += 1;
    }

    /// A shard's last subscriber of `name` left: a channel nobody made with
    /// the admin API is gone once no shard has subscribers.
    pub fn shard_unsubscribed(&self, name: &str) {
        let mut channels = write(&self.channels);
        if let Some(c) = channels.get_mut(name) {
            c.shards = c.shards.saturating_sub(1);
            if c.shards == 0 && !c.kept {
                channels.remove(name);
            }
        }
    }

    /// Another node has subscribers of `name` (found in the last second).
    pub fn seen_elsewhere(&self, name: &str) -> bool {
        let seen = self.elsewhere.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(name).is_some_and(|at| at.elapsed() < ELSEWHERE_FOR)
    }

    /// Remembers that another node has `name`, within the vhost's channel bound.
    pub fn note_elsewhere(&self, name: &str) {
        let mut seen = self.elsewhere.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= self.max_channels.load(Ordering::Relaxed) {
            seen.retain(|_, at| at.elapsed() < ELSEWHERE_FOR);
        }
        if seen.len() < self.max_channels.load(Ordering::Relaxed) {
            seen.insert(name.into(), Instant::now());
        }
    }

    pub fn token(&self) -> Arc<str> {
        read(&self.token).clone()
    }

    // The mutators below are called by the admin API after the store
    // committed the same change.

    pub fn set_user(&self, name: &str, record: &UserRecord) -> Arc<User> {
        let user = Arc::new(User {
            name: name.into(),
            perms: Perms::from_bits(record.perms),
            hash: record.hash.clone(),
        });
        write(&self.users).insert(name.into(), user.clone());
        user
    }

    pub fn remove_user(&self, name: &str) -> bool {
        write(&self.users).remove(name).is_some()
    }

    /// Keeps `name` (admin API, store); true if it was not kept before.
    pub fn add_channel(&self, name: &str) -> bool {
        !std::mem::replace(&mut write(&self.channels).entry(name.into()).or_default().kept, true)
    }

    /// Deletes `name`; true if it existed here. Its subscribers are
    /// unsubscribed by the caller's effect, which ends the entry.
    pub fn remove_channel(&self, name: &str) -> bool {
        let mut channels = write(&self.channels);
        let Some(c) = channels.get_mut(name) else {
            return false;
        };
        c.kept = false;
        if c.shards == 0 {
            channels.remove(name);
        }
        true
    }

    pub fn set_token(&self, token: String) {
        *write(&self.token) = token.into();
    }
}

/// All vhosts of the WebRocket dialect, by path.
pub struct Directory {
    vhosts: RwLock<HashMap<Box<str>, Arc<Vhost>>>,
    pub store: Store,
    /// `webrocket.max_channels_per_vhost`, set at start.
    pub max_channels: Arc<AtomicUsize>,
}

/// A vhost the config file declares.
pub struct ConfigVhost<'a> {
    pub path: &'a str,
    pub anonymous: Perms,
}

impl Directory {
    /// Builds the directory from the store and the config's vhosts; returns
    /// the writes that must be committed before serving (new tokens).
    pub fn load(store: Store, loaded: Loaded, configured: &[ConfigVhost<'_>]) -> (Directory, Vec<Write>) {
        let tokens: HashMap<String, String> = loaded.tokens.into_iter().collect();
        let max_channels = Arc::new(AtomicUsize::new(DEFAULT_MAX_CHANNELS));
        let mut initial = Vec::new();
        let mut vhosts = HashMap::new();
        let mut token_for = |path: &str| match tokens.get(path) {
            Some(t) => t.clone(),
            None => {
                let t = new_token();
                initial.push(Write::PutToken { vhost: path.into(), token: t.clone() });
                t
            }
        };
        for c in configured {
            let v = Vhost::new(c.path, c.anonymous, true, token_for(c.path), max_channels.clone());
            vhosts.insert(c.path.into(), Arc::new(v));
        }
        for (path, anonymous) in loaded.vhosts {
            if !vhosts.contains_key(path.as_str()) {
                let v = Vhost::new(
                    &path,
                    Perms::from_bits(anonymous),
                    false,
                    token_for(&path),
                    max_channels.clone(),
                );
                vhosts.insert(path.into(), Arc::new(v));
            }
        }
        for (vhost, name, record) in loaded.users {
            if let Some(v) = vhosts.get(vhost.as_str()) {
                v.set_user(&name, &record);
            }
        }
        for (vhost, name) in loaded.channels {
            if let Some(v) = vhosts.get(vhost.as_str()) {
                v.add_channel(&name);
            }
        }
        (Directory { vhosts: RwLock::new(vhosts), store, max_channels }, initial)
    }

    pub fn vhost(&self, path: &str) -> Option<Arc<Vhost>> {
        read(&self.vhosts).get(path).cloned()
    }

    pub fn vhosts(&self) -> Vec<Arc<Vhost>> {
        let mut all: Vec<_> = read(&self.vhosts).values().cloned().collect();
        all.sort_by(|a, b| a.path.cmp(&b.path));
        all
    }

    /// Adds a runtime vhost (after the store committed it). None if the path is taken.
    pub fn add_vhost(&self, path: &str, anonymous: Perms, token: String) -> Option<Arc<Vhost>> {
        let mut all = write(&self.vhosts);
        if all.contains_key(path) {
            return None;
        }
        let v = Arc::new(Vhost::new(path, anonymous, false, token, self.max_channels.clone()));
        all.insert(path.into(), v.clone());
        Some(v)
    }

    /// The vhost and channel a topic-index key names (a WebRocket topic is
    /// `\u{1}path\u{1}channel`).
    pub fn channel_of_topic<'t>(&self, topic: &'t str) -> Option<(Arc<Vhost>, &'t str)> {
        let (path, channel) = topic.strip_prefix('\u{1}')?.split_once('\u{1}')?;
        Some((self.vhost(path)?, channel))
    }

    /// Removes a runtime vhost; its sessions see it as deleted.
    pub fn remove_vhost(&self, path: &str) -> Option<Arc<Vhost>> {
        let v = write(&self.vhosts).remove(path)?;
        v.deleted.store(true, Ordering::Release);
        Some(v)
    }
}
