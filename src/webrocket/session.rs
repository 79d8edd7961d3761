//! One WebRocket session as a state machine: a client message in, effects
//! out through `Env` (frames to send, topics to join or leave, broadcasts,
//! triggers). No I/O and no awaits: the answers that take time (a secret's
//! hash check, a presence count across shards, whether another node has a
//! channel) come back as `Pending` for the driver.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::directory::{User, Vhost};
use crate::dialect::webrocket::{self as wire, Command, ErrorId, Perms, WrError};

/// What the session asks of its connection and the gateway.
pub trait Env {
    /// Is the connection subscribed to this topic key?
    fn is_subscribed(&self, topic: &str) -> bool;
    fn subscription_count(&self) -> usize;
    fn max_subscriptions(&self) -> usize;
    fn subscribe(&mut self, topic: &str);
    fn unsubscribe(&mut self, topic: &str);
    fn unsubscribe_all(&mut self);
    fn send(&mut self, frame: Bytes);
    /// A frame for every subscriber of `topic` on every shard.
    fn broadcast(&mut self, topic: String, frame: Bytes);
    /// Hands a trigger to one worker of the vhost; false if none took it.
    fn trigger(&mut self, message: String) -> bool;
    /// This session's id, as workers address it.
    fn sid(&self) -> String;
    /// The time now (for the authenticate rate limit).
    fn now(&self) -> Instant;
    /// Is this node one of a cluster (a channel unknown here may have
    /// subscribers on another node)?
    fn in_cluster(&self) -> bool;
}

/// `authenticate` attempts one connection may make per `AUTH_WINDOW`; one
/// more closes it with 1008 (each attempt with a secret costs ~19 MiB and
/// tens of milliseconds of hashing).
pub const MAX_AUTH_ATTEMPTS: u8 = 5;
pub const AUTH_WINDOW: Duration = Duration::from_secs(10);

/// Work the driver finishes asynchronously.
#[derive(Debug)]
pub enum Pending {
    /// Check `secret` against `user`'s hash, then call `on_verified`.
    Verify { user: Arc<User>, secret: String },
    /// Count the subscribers of `topic` on every shard (and node), then
    /// send `presence_frame(channel, …)`; with `known` false, a count of 0
    /// means the channel does not exist (CHANNEL_NOT_FOUND).
    Presence { channel: String, topic: String, known: bool },
    /// Ask the other nodes whether `channel` has subscribers there; if so
    /// broadcast `frame` to `topic` and answer `broadcasted`, else
    /// CHANNEL_NOT_FOUND.
    BroadcastElsewhere { channel: String, topic: String, frame: Bytes },
    /// Close the connection with 1000 (`disconnect`).
    Close,
    /// Close the connection with 1008 and this reason (abuse).
    PolicyClose(&'static str),
}

/// CHANNEL_NOT_FOUND for `channel`.
pub fn not_found(channel: &str) -> WrError {
    WrError::new(ErrorId::ChannelNotFound, format!("no channel {channel:?}"))
}

/// The outcome of a secret's hash check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Match,
    Mismatch,
    /// The hashing pool's queue is full: not checked.
    Busy,
}

#[derive(Debug)]
pub struct Session {
    pub vhost: Arc<Vhost>,
    /// The authenticated user's name.
    pub user: Option<Arc<str>>,
    pub perms: Perms,
    /// Start of the current rate-limit window and attempts within it.
    auth_attempts: Option<(Instant, u8)>,
    /// A connection token's `channels` claim: the only channels this
    /// session may subscribe to, whoever it logs in as.
    channels: Option<Arc<crate::auth::Grants>>,
}

impl Session {
    pub fn new(vhost: Arc<Vhost>) -> Session {
        let perms = vhost.anonymous;
        Session { vhost, user: None, perms, auth_attempts: None, channels: None }
    }

    /// A connection token's claims: logged in as its `sub` if the vhost has
    /// that user (no reply is sent: the client chose the token), and held
    /// to its `channels`.
    pub fn take_token(&mut self, token: &crate::auth::Identity) {
        self.channels = token.grants.clone();
        if let Some(user) = token.user.as_deref().and_then(|name| self.vhost.user(name)) {
            self.perms = user.perms;
            self.user = Some(user.name.clone());
        }
    }

    /// Handles one text message; errors and replies go out through `env`.
    pub fn on_text(&mut self, message: &[u8], env: &mut impl Env) -> Option<Pending> {
        match wire::parse(message) {
            Ok(command) => match self.run(command, env) {
                Ok(pending) => pending,
                Err(e) => {
                    env.send(e.frame());
                    None
                }
            },
            Err(e) => {
                env.send(e.frame());
                None
            }
        }
    }

    pub fn on_binary(&mut self, env: &mut impl Env) {
        env.send(WrError::new(ErrorId::InvalidPayload, "binary frames are not supported").frame());
    }

    fn require(&self, right: Perms, what: &str) -> Result<(), WrError> {
        if self.perms.has(right) {
            Ok(())
        } else {
            Err(WrError::new(ErrorId::AccessDenied, format!("{what} needs the {right} permission")))
        }
    }

    fn run(&mut self, command: Command<'_>, env: &mut impl Env) -> Result<Option<Pending>, WrError> {
        match command {
            Command::Authenticate { user, secret } => {
                let now = env.now();
                let (since, n) = match self.auth_attempts {
                    Some((since, n)) if now.duration_since(since) < AUTH_WINDOW => (since, n + 1),
                    _ => (now, 1),
                };
                self.auth_attempts = Some((since, n));
                if n > MAX_AUTH_ATTEMPTS {
                    return Ok(Some(Pending::PolicyClose("too many authenticate attempts")));
                }
                let found = self
                    .vhost
                    .user(&user)
                    .ok_or_else(|| WrError::new(ErrorId::UserNotFound, format!("no user {user:?}")))?;
                match (&found.hash, secret) {
                    (None, _) => {
                        self.log_in(found, env);
                        Ok(None)
                    }
                    (Some(_), None) => Err(WrError::new(ErrorId::InvalidCredentials, "a secret is required")),
                    (Some(_), Some(secret)) => {
                        Ok(Some(Pending::Verify { user: found, secret: secret.into() }))
                    }
                }
            }
            Command::Subscribe { channel } => {
                self.require(Perms::READ, "subscribe")?;
                if self.channels.as_ref().is_some_and(|g| !g.allows(&channel)) {
                    return Err(WrError::new(
                        ErrorId::AccessDenied,
                        format!("your token does not grant channel {channel:?}"),
                    ));
                }
                let topic = self.vhost.topic(&channel);
                if !env.is_subscribed(&topic) {
                    if env.subscription_count() >= env.max_subscriptions() {
                        return Err(WrError::new(
                            ErrorId::TooManyChannels,
                            format!("at most {} channels per connection", env.max_subscriptions()),
                        ));
                    }
                    self.vhost.room_for(&channel).map_err(|e| {
                        WrError::new(
                            ErrorId::TooManyChannels,
                            format!("the vhost has {} channels (webrocket.max_channels_per_vhost)", e.0),
                        )
                    })?;
                    // Subscribed before the reply: a broadcast made after the
                    // client saw `subscribed` reaches it.
                    env.subscribe(&topic);
                }
                env.send(wire::named_reply("subscribed", &channel));
                Ok(None)
            }
            Command::Unsubscribe { channel } => {
                self.require(Perms::READ, "unsubscribe")?;
                let topic = self.vhost.topic(&channel);
                if !env.is_subscribed(&topic) {
                    return Err(WrError::new(
                        ErrorId::ChannelNotFound,
                        format!("not subscribed to {channel:?}"),
                    ));
                }
                env.unsubscribe(&topic);
                env.send(wire::named_reply("unsubscribed", &channel));
                Ok(None)
            }
            Command::Broadcast { event, channel, data } => {
                self.require(Perms::WRITE, "broadcast")?;
                let known = self.vhost.channel_exists(&channel) || self.vhost.seen_elsewhere(&channel);
                if !known && !env.in_cluster() {
                    return Err(not_found(&channel));
                }
                let topic = self.vhost.topic(&channel);
                let frame = wire::broadcast_frame(&event, &channel, data);
                if !known {
                    return Ok(Some(Pending::BroadcastElsewhere { channel: channel.into(), topic, frame }));
                }
                env.broadcast(topic, frame);
                env.send(wire::named_reply("broadcasted", &channel));
                Ok(None)
            }
            Command::Trigger { event, data } => {
                self.require(Perms::WRITE, "trigger")?;
                let message = wire::trigger_message(&event, data, &env.sid(), self.user.as_deref());
                if !env.trigger(message) {
                    return Err(WrError::new(
                        ErrorId::AssignationFailed,
                        format!("no backend worker of {} took {event:?}", self.vhost.path),
                    ));
                }
                env.send(wire::named_reply("triggered", &event));
                Ok(None)
            }
            Command::Presence { channel } => {
                self.require(Perms::MANAGE, "presence")?;
                let known = self.vhost.channel_exists(&channel);
                if !known && !env.in_cluster() {
                    return Err(not_found(&channel));
                }
                let topic = self.vhost.topic(&channel);
                Ok(Some(Pending::Presence { channel: channel.into(), topic, known }))
            }
            Command::Logout => {
                if self.user.is_none() {
                    return Err(WrError::new(ErrorId::AccessDenied, "not authenticated"));
                }
                self.log_out(env);
                env.send(wire::logged_out());
                Ok(None)
            }
            Command::Disconnect => Ok(Some(Pending::Close)),
        }
    }

    /// The answer to `Pending::Verify`.
    pub fn on_verified(&mut self, user: Arc<User>, verdict: Verdict, env: &mut impl Env) {
        if verdict == Verdict::Busy {
            let e = WrError::new(ErrorId::InvalidCredentials, "too many logins being checked; retry later");
            env.send(e.frame());
            return;
        }
        let ok = verdict == Verdict::Match;
        // The user may have been deleted or changed while the hash ran.
        let current = self.vhost.user(&user.name);
        match current {
            Some(now) if ok && Arc::ptr_eq(&now, &user) => self.log_in(now, env),
            Some(_) if ok => {
                env.send(WrError::new(ErrorId::InvalidCredentials, "the user changed; retry").frame())
            }
            Some(_) => env.send(WrError::new(ErrorId::InvalidCredentials, "wrong secret").frame()),
            None => {
                env.send(WrError::new(ErrorId::UserNotFound, format!("no user {:?}", &*user.name)).frame())
            }
        }
    }

    fn log_in(&mut self, user: Arc<User>, env: &mut impl Env) {
        if self.user.is_some() {
            self.log_out(env);
        }
        self.perms = user.perms;
        self.user = Some(user.name.clone());
        env.send(wire::named_reply("authenticated", &user.name));
    }

    fn log_out(&mut self, env: &mut impl Env) {
        env.unsubscribe_all();
        self.user = None;
        self.perms = self.vhost.anonymous;
    }

    /// The admin changed (`Some`) or deleted (`None`) this session's user.
    pub fn on_user_changed(&mut self, user: Option<&User>, env: &mut impl Env) {
        match user {
            None => {
                self.log_out(env);
                env.send(wire::logged_out());
            }
            Some(u) => {
                self.perms = u.perms;
                if !u.perms.has(Perms::READ) {
                    env.unsubscribe_all();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webrocket::directory::{ConfigVhost, Directory};
    use crate::webrocket::store::{Store, UserRecord};

    #[derive(Default)]
    struct Recorder {
        topics: Vec<String>,
        sent: Vec<String>,
        broadcasts: Vec<(String, String)>,
        triggers: Vec<String>,
        workers: bool,
        now: Option<Instant>,
        cluster: bool,
        /// Told of first and last subscribers, as a shard's topic index tells it.
        vhost: Option<Arc<Vhost>>,
    }

    impl Recorder {
        fn of(vhost: &Arc<Vhost>) -> Recorder {
            Recorder { vhost: Some(vhost.clone()), ..Recorder::default() }
        }

        fn index(&self, topic: &str, subscribed: bool) {
            let Some(v) = &self.vhost else { return };
            let channel = v.channel_of(topic).unwrap();
            if subscribed {
                v.shard_subscribed(channel)
            } else {
                v.shard_unsubscribed(channel)
            }
        }
    }

    impl Env for Recorder {
        fn is_subscribed(&self, topic: &str) -> bool {
            self.topics.iter().any(|t| t == topic)
        }
        fn subscription_count(&self) -> usize {
            self.topics.len()
        }
        fn max_subscriptions(&self) -> usize {
            2
        }
        fn subscribe(&mut self, topic: &str) {
            self.index(topic, true);
            self.topics.push(topic.into());
        }
        fn unsubscribe(&mut self, topic: &str) {
            self.index(topic, false);
            self.topics.retain(|t| t != topic);
        }
        fn unsubscribe_all(&mut self) {
            for t in std::mem::take(&mut self.topics) {
                self.index(&t, false);
            }
        }
        fn send(&mut self, frame: Bytes) {
            self.sent.push(String::from_utf8(frame[2..].to_vec()).unwrap());
        }
        fn broadcast(&mut self, topic: String, frame: Bytes) {
            self.broadcasts.push((topic, String::from_utf8(frame[2..].to_vec()).unwrap()));
        }
        fn trigger(&mut self, message: String) -> bool {
            self.triggers.push(message);
            self.workers
        }
        fn sid(&self) -> String {
            "s1".into()
        }
        fn now(&self) -> Instant {
            self.now.unwrap_or_else(Instant::now)
        }
        fn in_cluster(&self) -> bool {
            self.cluster
        }
    }

    fn vhost(anonymous: Perms) -> (tempfile::TempDir, Arc<Vhost>) {
        let dir = tempfile::tempdir().unwrap();
        let (store, loaded) = Store::open(dir.path()).unwrap();
        let (d, _) = Directory::load(store, loaded, &[ConfigVhost { path: "/w", anonymous }]);
        let v = d.vhost("/w").unwrap();
        v.set_user("joe", &UserRecord { perms: Perms::ALL.bits(), hash: None });
        v.set_user("ro", &UserRecord { perms: Perms::READ.bits(), hash: None });
        v.set_user("locked", &UserRecord { perms: Perms::ALL.bits(), hash: Some("$argon2id$x".into()) });
        (dir, v)
    }

    fn say(s: &mut Session, env: &mut Recorder, m: &str) -> Option<Pending> {
        s.on_text(m.as_bytes(), env)
    }

    fn last(env: &Recorder) -> &str {
        env.sent.last().map(String::as_str).unwrap_or("")
    }

    #[test]
    fn anonymous_rights_come_from_the_vhost() {
        let (_d, v) = vhost(Perms::NONE);
        let (mut s, mut env) = (Session::new(v), Recorder::default());
        say(&mut s, &mut env, r#"{"subscribe":{"channel":"room"}}"#);
        assert!(last(&env).contains("ACCESS_DENIED"), "{}", last(&env));
        let (_d, v) = vhost(Perms::READ);
        let (mut s, mut env) = (Session::new(v.clone()), Recorder::of(&v));
        say(&mut s, &mut env, r#"{"subscribe":{"channel":"room"}}"#);
        assert_eq!(last(&env), r#"{"subscribed":"room"}"#);
        assert!(v.channel_exists("room"), "subscribe creates the channel");
        assert_eq!(env.topics, [v.topic("room")]);
        say(&mut s, &mut env, r#"{"unsubscribe":{"channel":"room"}}"#);
        assert!(!v.channel_exists("room"), "it goes with its last subscriber");
    }

    #[test]
    fn a_channel_unknown_here_is_looked_for_on_the_other_nodes() {
        let (_d, v) = vhost(Perms::ALL);
        let (mut s, mut env) = (Session::new(v.clone()), Recorder::of(&v));
        say(&mut s, &mut env, r#"{"broadcast":{"event":"e","channel":"far"}}"#);
        assert!(last(&env).contains("CHANNEL_NOT_FOUND"), "alone, at once");
        env.cluster = true;
        let p = say(&mut s, &mut env, r#"{"broadcast":{"event":"e","channel":"far"}}"#);
        assert!(matches!(p, Some(Pending::BroadcastElsewhere { .. })), "{p:?}");
        let p = say(&mut s, &mut env, r#"{"presence":{"channel":"far"}}"#);
        assert!(matches!(p, Some(Pending::Presence { known: false, .. })), "{p:?}");
        v.note_elsewhere("far");
        assert!(say(&mut s, &mut env, r#"{"broadcast":{"event":"e","channel":"far"}}"#).is_none());
        assert_eq!(last(&env), r#"{"broadcasted":"far"}"#);
    }

    #[test]
    fn subscribes_make_channels_up_to_the_vhost_bound_and_kept_ones_stay() {
        let (d, _) = Directory::load(
            Store::disabled(),
            Default::default(),
            &[ConfigVhost { path: "/w", anonymous: Perms::READ }],
        );
        d.max_channels.store(2, std::sync::atomic::Ordering::Relaxed);
        let v = d.vhost("/w").unwrap();
        v.add_channel("kept");
        let (mut a, mut env) = (Session::new(v.clone()), Recorder::of(&v));
        say(&mut a, &mut env, r#"{"subscribe":{"channel":"x"}}"#);
        say(&mut a, &mut env, r#"{"subscribe":{"channel":"y"}}"#);
        assert!(last(&env).contains("TOO_MANY_CHANNELS"), "{}", last(&env));
        say(&mut a, &mut env, r#"{"subscribe":{"channel":"kept"}}"#);
        assert_eq!(last(&env), r#"{"subscribed":"kept"}"#, "existing channels take subscribers");
        say(&mut a, &mut env, r#"{"unsubscribe":{"channel":"x"}}"#);
        say(&mut a, &mut env, r#"{"unsubscribe":{"channel":"kept"}}"#);
        assert_eq!(v.channels(), ["kept"]);
        say(&mut a, &mut env, r#"{"subscribe":{"channel":"y"}}"#);
        assert_eq!(last(&env), r#"{"subscribed":"y"}"#);
    }

    #[test]
    fn permission_comes_before_existence() {
        let (_d, v) = vhost(Perms::NONE);
        let (mut s, mut env) = (Session::new(v), Recorder::default());
        say(&mut s, &mut env, r#"{"broadcast":{"event":"e","channel":"nowhere"}}"#);
        assert!(last(&env).contains("ACCESS_DENIED"));
        say(&mut s, &mut env, r#"{"authenticate":{"user":"joe"}}"#);
        assert_eq!(last(&env), r#"{"authenticated":"joe"}"#);
        say(&mut s, &mut env, r#"{"broadcast":{"event":"e","channel":"nowhere"}}"#);
        assert!(last(&env).contains("CHANNEL_NOT_FOUND"));
        say(&mut s, &mut env, r#"{"unsubscribe":{"channel":"nowhere"}}"#);
        assert!(last(&env).contains("CHANNEL_NOT_FOUND"));
    }

    #[test]
    fn authentication_order_and_a_failed_attempt_changes_nothing() {
        let (_d, v) = vhost(Perms::NONE);
        let (mut s, mut env) = (Session::new(v), Recorder::default());
        say(&mut s, &mut env, r#"{"authenticate":{"user":"joe"}}"#);
        say(&mut s, &mut env, r#"{"subscribe":{"channel":"a"}}"#);
        say(&mut s, &mut env, r#"{"authenticate":{"user":"nobody"}}"#);
        assert!(last(&env).contains("USER_NOT_FOUND"));
        say(&mut s, &mut env, r#"{"authenticate":{"user":"locked"}}"#);
        assert!(last(&env).contains("INVALID_CREDENTIALS"));
        assert_eq!(s.user.as_deref(), Some("joe"));
        assert_eq!(env.topics.len(), 1, "a failed authenticate leaves the subscriptions");
        let pending = say(&mut s, &mut env, r#"{"authenticate":{"user":"locked","secret":"x"}}"#);
        let Some(Pending::Verify { user, secret }) = pending else { panic!("{pending:?}") };
        assert_eq!(secret, "x");
        s.on_verified(user.clone(), Verdict::Mismatch, &mut env);
        assert!(last(&env).contains("INVALID_CREDENTIALS"));
        s.on_verified(user, Verdict::Match, &mut env);
        assert_eq!(last(&env), r#"{"authenticated":"locked"}"#);
        assert!(env.topics.is_empty(), "a new login drops the old user's subscriptions");
    }

    #[test]
    fn broadcast_trigger_logout_and_limits() {
        let (_d, v) = vhost(Perms::NONE);
        let (mut s, mut env) = (Session::new(v.clone()), Recorder::of(&v));
        say(&mut s, &mut env, r#"{"authenticate":{"user":"joe"}}"#);
        say(&mut s, &mut env, r#"{"subscribe":{"channel":"a"}}"#);
        say(&mut s, &mut env, r#"{"subscribe":{"channel":"a"}}"#);
        say(&mut s, &mut env, r#"{"subscribe":{"channel":"b"}}"#);
        say(&mut s, &mut env, r#"{"subscribe":{"channel":"c"}}"#);
        assert!(last(&env).contains("TOO_MANY_CHANNELS"));
        say(&mut s, &mut env, r#"{"broadcast":{"event":"hi","channel":"a","data":{"b":1,"a":2}}}"#);
        assert_eq!(env.broadcasts, [(v.topic("a"), r#"{"hi":{"channel":"a","data":{"b":1,"a":2}}}"#.into())]);
        assert_eq!(last(&env), r#"{"broadcasted":"a"}"#);
        say(&mut s, &mut env, r#"{"trigger":{"event":"go"}}"#);
        assert!(last(&env).contains("ASSIGNATION_FAILED"));
        env.workers = true;
        say(&mut s, &mut env, r#"{"trigger":{"event":"go","data":[1]}}"#);
        assert_eq!(last(&env), r#"{"triggered":"go"}"#);
        assert_eq!(env.triggers[1], r#"{"trigger":{"event":"go","data":[1],"sid":"s1","user":"joe"}}"#);
        assert!(matches!(
            say(&mut s, &mut env, r#"{"presence":{"channel":"a"}}"#),
            Some(Pending::Presence { .. })
        ));
        say(&mut s, &mut env, r#"{"logout":true}"#);
        assert_eq!(last(&env), r#"{"loggedOut":true}"#);
        assert!(env.topics.is_empty());
        say(&mut s, &mut env, r#"{"logout":true}"#);
        assert!(last(&env).contains("ACCESS_DENIED"));
        assert!(matches!(say(&mut s, &mut env, r#"{"disconnect":true}"#), Some(Pending::Close)));
    }

    #[test]
    fn losing_read_drops_subscriptions_and_deletion_logs_out() {
        let (_d, v) = vhost(Perms::NONE);
        let (mut s, mut env) = (Session::new(v.clone()), Recorder::of(&v));
        say(&mut s, &mut env, r#"{"authenticate":{"user":"ro"}}"#);
        say(&mut s, &mut env, r#"{"subscribe":{"channel":"a"}}"#);
        say(&mut s, &mut env, r#"{"presence":{"channel":"a"}}"#);
        assert!(last(&env).contains("ACCESS_DENIED"), "presence needs MANAGE");
        let w = v.set_user("ro", &UserRecord { perms: Perms::WRITE.bits(), hash: None });
        s.on_user_changed(Some(&w), &mut env);
        assert!(env.topics.is_empty());
        s.on_user_changed(None, &mut env);
        assert_eq!(last(&env), r#"{"loggedOut":true}"#);
        assert_eq!(s.user, None);
    }

    #[test]
    fn a_sixth_authenticate_within_ten_seconds_closes_with_1008() {
        let (_d, v) = vhost(Perms::NONE);
        let (mut s, mut env) = (Session::new(v), Recorder::default());
        let start = Instant::now();
        env.now = Some(start);
        for _ in 0..MAX_AUTH_ATTEMPTS {
            assert!(say(&mut s, &mut env, r#"{"authenticate":{"user":"nobody"}}"#).is_none());
            assert!(last(&env).contains("USER_NOT_FOUND"));
        }
        let sixth = say(&mut s, &mut env, r#"{"authenticate":{"user":"joe"}}"#);
        assert!(matches!(sixth, Some(Pending::PolicyClose(_))), "{sixth:?}");
        // After the window, attempts are counted afresh.
        let (_d, v) = vhost(Perms::NONE);
        let mut s = Session::new(v);
        for i in 0..12u64 {
            env.now = Some(start + Duration::from_secs(i * 3));
            assert!(say(&mut s, &mut env, r#"{"authenticate":{"user":"joe"}}"#).is_none());
        }
    }
}
