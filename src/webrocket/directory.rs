//! The live WebRocket state every thread reads: vhosts, their users,
//! channels and worker tokens. Shards read it on authenticate, subscribe,
//! broadcast and presence (short read locks, written only by the admin API
//! and by the first subscribe to a channel); every change goes to the store
//! too.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

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
    channels: RwLock<HashSet<Box<str>>>,
    token: RwLock<Arc<str>>,
    deleted: AtomicBool,
    store: Store,
    hooks: Arc<Hooks>,
}

/// Called when a subscribe created a channel (to tell the other nodes).
pub type ChannelHook = Box<dyn Fn(&str, &str) + Send + Sync>;

/// Set once the broker runs.
pub struct Hooks {
    pub channel_created: std::sync::OnceLock<ChannelHook>,
    /// `webrocket.max_channels_per_vhost`: a subscribe past it is refused.
    pub max_channels: std::sync::atomic::AtomicUsize,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            channel_created: std::sync::OnceLock::new(),
            max_channels: std::sync::atomic::AtomicUsize::new(DEFAULT_MAX_CHANNELS),
        }
    }
}

/// `webrocket.max_channels_per_vhost`'s default.
pub const DEFAULT_MAX_CHANNELS: usize = 10_000;

/// A subscribe would create a channel past `max_channels_per_vhost`.
#[derive(Debug, PartialEq, Eq)]
pub struct TooManyChannels(pub usize);

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hooks")
    }
}

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
        store: Store,
        hooks: Arc<Hooks>,
    ) -> Vhost {
        Vhost {
            path: path.into(),
            anonymous,
            from_config,
            topic_prefix: format!("\u{1}{path}\u{1}").into(),
            users: RwLock::default(),
            channels: RwLock::default(),
            token: RwLock::new(token.into()),
            deleted: AtomicBool::new(false),
            store,
            hooks,
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

    pub fn channel_exists(&self, name: &str) -> bool {
        read(&self.channels).contains(name)
    }

    pub fn channels(&self) -> Vec<String> {
        let mut all: Vec<String> = read(&self.channels).iter().map(|c| c.to_string()).collect();
        all.sort();
        all
    }

    /// Makes `name` exist (a subscribe to a new channel); written to the
    /// store behind the caller's back. True if it is new; an error past
    /// `max_channels_per_vhost` (anonymous clients must not grow the
    /// directory, the store and every node's copy without bound).
    pub fn ensure_channel(&self, name: &str) -> Result<bool, TooManyChannels> {
        if self.channel_exists(name) {
            return Ok(false);
        }
        let max = self.hooks.max_channels.load(Ordering::Relaxed);
        let created = {
            let mut channels = write(&self.channels);
            if channels.len() >= max {
                return Err(TooManyChannels(max));
            }
            channels.insert(name.into())
        };
        if created {
            self.store
                .apply_later(vec![Write::PutChannel { vhost: self.path.to_string(), name: name.into() }]);
            if let Some(hook) = self.hooks.channel_created.get() {
                hook(&self.path, name);
            }
        }
        Ok(created)
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

    pub fn add_channel(&self, name: &str) -> bool {
        write(&self.channels).insert(name.into())
    }

    pub fn remove_channel(&self, name: &str) -> bool {
        write(&self.channels).remove(name)
    }

    pub fn set_token(&self, token: String) {
        *write(&self.token) = token.into();
    }
}

/// All vhosts of the WebRocket dialect, by path.
pub struct Directory {
    vhosts: RwLock<HashMap<Box<str>, Arc<Vhost>>>,
    pub store: Store,
    pub hooks: Arc<Hooks>,
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
        let hooks = Arc::new(Hooks::default());
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
            let v = Vhost::new(c.path, c.anonymous, true, token_for(c.path), store.clone(), hooks.clone());
            vhosts.insert(c.path.into(), Arc::new(v));
        }
        for (path, anonymous) in loaded.vhosts {
            if !vhosts.contains_key(path.as_str()) {
                let v = Vhost::new(
                    &path,
                    Perms::from_bits(anonymous),
                    false,
                    token_for(&path),
                    store.clone(),
                    hooks.clone(),
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
        (Directory { vhosts: RwLock::new(vhosts), store, hooks }, initial)
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
        let v = Arc::new(Vhost::new(path, anonymous, false, token, self.store.clone(), self.hooks.clone()));
        all.insert(path.into(), v.clone());
        Some(v)
    }

    /// Removes a runtime vhost; its sessions see it as deleted.
    pub fn remove_vhost(&self, path: &str) -> Option<Arc<Vhost>> {
        let v = write(&self.vhosts).remove(path)?;
        v.deleted.store(true, Ordering::Release);
        Some(v)
    }
}
