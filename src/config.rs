//! Configuration: TOML with embedded defaults, overridden by CLI flags.
//! Unknown keys and invalid values fail at start with a message naming them.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use crate::dialect::webrocket::Perms;
use crate::dialect::Dialect;
use crate::ws::origin::OriginPolicy;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub limits: Limits,
    pub rpc: RpcConfig,
    pub log: LogConfig,
    pub stats: StatsConfig,
    /// Broker for publications: `memory` (this node), `redis` or `nats`
    /// (many nodes as one, docs/cluster.md).
    pub broker: String,
    pub redis: RedisConfig,
    pub nats: NatsConfig,
    pub cluster: ClusterConfig,
    pub webrocket: WebRocketConfig,
    #[serde(rename = "vhost")]
    pub vhosts: Vec<VhostConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Public WebSocket listener.
    pub listen: SocketAddr,
    /// Backend HTTP API: publish, metrics, health.
    pub api_listen: SocketAddr,
    /// goridge RPC (RoadRunner's PHP clients).
    pub rpc_listen: SocketAddr,
    /// Executors pinned to cores; 0 = one per available core.
    pub shards: usize,
    /// Connections accepted at once across all shards; more get HTTP 503.
    pub max_connections: usize,
    /// Listen backlog of each shard's socket.
    pub backlog: u32,
    /// SO_SNDBUF of each client socket in bytes; 0 leaves the kernel's
    /// autotuning (up to `net.ipv4.tcp_wmem`'s maximum per socket).
    pub send_buffer: usize,
    /// On SIGINT/SIGTERM: how long clients get to close before the exit.
    pub shutdown_timeout_ms: u64,
    /// io_uring buffer memory per shard (locked memory; see docs/tuning).
    pub io_memory_kib: usize,
    /// Capacity of each shard's inbox of publication batches.
    pub shard_inbox: usize,
    /// Frame bytes each shard's inbox may hold; publishers wait past it.
    pub shard_inbox_bytes: usize,
    /// An HTTP API request's head and body must arrive within this.
    pub api_request_timeout_ms: u64,
    /// Where the WebRocket state store lives (vhosts, users, channels, tokens).
    pub data_dir: std::path::PathBuf,
    /// Enables the admin API (`/admin/…`); `RINGCAST_ADMIN_TOKEN` overrides it.
    pub admin_token: Option<String>,
    /// When set, `POST /publish`, pushes and `GET /metrics` need
    /// `Authorization: Bearer <api_token>`; `RINGCAST_API_TOKEN` overrides it.
    pub api_token: Option<String>,
    /// Lets the API listen on a non-loopback address without `api_token`,
    /// and goridge RPC (which carries no credentials) on any non-loopback
    /// address. Off: such a start is refused.
    pub allow_unauthenticated_remote: bool,
    /// HTTP API connections open at once; more are closed on accept.
    pub api_max_connections: usize,
    /// TLS on the public listener: every vhost is served as `wss://`.
    pub tls: Option<TlsFiles>,
    /// TLS on the HTTP API listener (`https://`).
    pub api_tls: Option<TlsFiles>,
    /// Proxies (CIDRs such as `10.0.0.0/8`, or addresses) whose
    /// `X-Forwarded-For` (last entry) or `X-Real-IP` names the client; from
    /// any other peer those headers are ignored.
    #[serde(deserialize_with = "cidrs")]
    pub trusted_proxies: Vec<crate::limits::Cidr>,
}

fn cidrs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<crate::limits::Cidr>, D::Error> {
    let texts = Vec::<String>::deserialize(d)?;
    texts.iter().map(|t| t.parse().map_err(serde::de::Error::custom)).collect()
}

/// A PEM certificate chain (leaf first) and its private key; read at
/// start and again on SIGHUP. Relative paths start at the working directory.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest client message (after reassembly); larger: close 1009.
    pub max_message_size: usize,
    /// Bytes queued to one client before it is closed as a slow consumer.
    pub max_backpressure: usize,
    pub max_topics_per_connection: usize,
    /// Time from accept to a complete upgrade request.
    pub handshake_timeout_ms: u64,
    /// A connection silent this long gets a ping.
    pub ping_interval_ms: u64,
    /// A connection silent this long (pongs count) is closed.
    pub idle_timeout_ms: u64,
    /// Backend hook requests in flight per shard; more are refused at once.
    pub max_hooks_in_flight: usize,
    /// (message, topic) pairs in one publish request.
    pub max_publish_topics: usize,
    /// Frame bytes one publish request may make the gateway encode
    /// (payload + topic + envelope, per topic).
    pub max_publish_bytes: usize,
    /// Longest topic name in bytes (joins and publishes).
    pub max_topic_length: usize,
    /// Open connections per client address (IPv6: per /64); more get HTTP
    /// 429. 0: no limit.
    pub max_connections_per_ip: u32,
    /// Upgrade requests per second per client address; more get HTTP 429.
    /// 0: no limit.
    pub handshakes_per_ip_per_s: u32,
    /// Client messages per second per connection (a token bucket of
    /// `messages_burst`); past it: Close 1008 "rate limit". 0: no limit.
    pub messages_per_s: u32,
    /// The bucket's size: messages a connection may send at once (0: one
    /// second's worth, `messages_per_s`).
    pub messages_burst: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RpcConfig {
    /// Largest goridge frame payload; a header claiming more closes the connection.
    pub max_frame_size: usize,
    /// A frame must arrive whole within this of its first byte; a connection
    /// that stalls mid-frame is closed. Idle connections between calls stay.
    pub frame_timeout_ms: u64,
    /// A reply must be taken by the client within this; a client that sends
    /// calls and never reads is dropped.
    pub write_timeout_ms: u64,
    /// RPC connections open at once; more are closed on accept.
    pub max_connections: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`, `rediss://` for TLS (private CA: `SSL_CERT_FILE`).
    pub url: String,
    /// Prepended to every channel ringcast uses.
    pub prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig { url: "redis://127.0.0.1:6379".into(), prefix: "ringcast:".into() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// `nats://host:port`, several comma-separated for a NATS cluster.
    pub url: String,
    /// Prepended to every subject ringcast uses.
    pub prefix: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig { url: "nats://127.0.0.1:4222".into(), prefix: "ringcast.".into() }
    }
}

/// What every WebRocket vhost shares.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebRocketConfig {
    /// Channels one vhost may hold; a `subscribe` that would create one
    /// more answers `TOO_MANY_CHANNELS`.
    pub max_channels_per_vhost: usize,
}

impl Default for WebRocketConfig {
    fn default() -> Self {
        WebRocketConfig { max_channels_per_vhost: crate::webrocket::directory::DEFAULT_MAX_CHANNELS }
    }
}

/// The shortest `cluster.secret` accepted (bytes): the key of the envelopes'
/// HMAC (`broker::seal`).
pub const MIN_CLUSTER_SECRET_LEN: usize = 32;
/// Shortest `[vhost.auth] jwt_hmac_secret`: the hash's output size, as RFC 7518 §3.2 asks.
pub const MIN_HMAC_SECRET_LEN: usize = 32;

/// How nodes sharing a network broker trust each other (docs/cluster.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Shared by every node: signs and checks every envelope (HMAC-SHA256),
    /// at least 32 bytes; `RINGCAST_CLUSTER_SECRET` overrides it. Required
    /// with `broker = "redis"` or `"nats"` unless `insecure = true`.
    pub secret: Option<String>,
    /// Run a network broker without a secret: anyone who can publish to the
    /// broker can then inject publications and WebRocket changes.
    pub insecure: bool,
    /// Envelopes sent longer ago than this (by their signed send time), or
    /// this far in the future, are refused; control messages seen within it
    /// are taken once. Covers the clock difference between nodes.
    pub replay_window_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig { secret: None, insecure: false, replay_window_ms: 30_000 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter, e.g. `info` or `ringcast=debug`; `RUST_LOG` overrides it.
    pub level: String,
    /// `text` (human-readable) or `json` (one object per line).
    pub format: LogFormat,
}

/// The live measurements of docs/metrics.md beyond plain counters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsConfig {
    /// Publish → socket latency, send queue depths, hottest topics. Off:
    /// shards record none of them (the counters stay).
    pub enabled: bool,
    /// Topics listed by subscribers and by message rate (dashboard, `/stats`).
    pub top_topics: usize,
    /// A shard's work that waits longer than this to run is logged (the
    /// stall detector; 0: no log). Needs `enabled`.
    pub stall_log_ms: u64,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig { enabled: true, top_topics: 10, stall_log_ms: 50 }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostConfig {
    /// Exact path; for `proxy`, the prefix before `<ClientId>` (ends with `/`).
    pub path: String,
    pub dialect: Dialect,
    /// Browser origins that may connect (`*`, exact origins, `https://*.domain`);
    /// others get HTTP 403. See `ws::origin`.
    #[serde(default = "any_origin", deserialize_with = "origin_policy")]
    pub allowed_origin: OriginPolicy,
    /// `proxy`: the backend base URL; ringcast calls `{backend}/<ClientId>`.
    #[serde(default)]
    pub backend: Option<String>,
    /// `proxy`: a second connection with a live ClientId replaces the old one
    /// (closed with 1008) or is rejected (409).
    #[serde(default)]
    pub duplicate_client: DuplicateClient,
    /// `proxy`: a message the backend did not take is dropped (logged,
    /// counted) or closes the connection (1011).
    #[serde(default)]
    pub on_backend_error: OnBackendError,
    /// `proxy`: messages of one client in flight to the backend at once;
    /// 1 keeps replies in order.
    #[serde(default = "one")]
    pub max_in_flight_per_client: usize,
    #[serde(default)]
    pub hooks: HooksConfig,
    /// `webrocket`: rights of unauthenticated sessions, e.g. `["READ"]`.
    #[serde(default, deserialize_with = "perms")]
    pub anonymous: Perms,
    /// JWT connection tokens (docs/security.md); none: no token is read.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
}

/// `[vhost.auth]`: connection tokens, checked before the upgrade.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 tokens signed with this secret (at least 32 bytes).
    pub jwt_hmac_secret: Option<String>,
    /// RS256, ES256 (P-256) or EdDSA (Ed25519) tokens: the PEM public key.
    pub jwt_public_key: Option<std::path::PathBuf>,
    /// A missing or invalid token gets HTTP 401; false: tokenless clients
    /// connect as anonymous (a token that is sent must still be valid).
    pub required: bool,
    /// Slack for `exp` and `nbf`, also for expiry while connected.
    pub leeway_ms: u64,
    /// When set, the token's `aud` must hold this.
    pub aud: Option<String>,
    /// When set, the token's `iss` must be this.
    pub iss: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_hmac_secret: None,
            jwt_public_key: None,
            required: true,
            leeway_ms: 0,
            aud: None,
            iss: None,
        }
    }
}

impl VhostConfig {
    /// The backend URLs the vhost calls: its proxy backend and its hooks.
    pub fn urls(&self) -> impl Iterator<Item = &str> {
        [&self.backend, &self.hooks.connect, &self.hooks.join, &self.hooks.close]
            .into_iter()
            .filter_map(|u| u.as_deref())
    }

    /// What a WebRocket vhost added at run time uses (it has no config
    /// entry): any origin, no hooks, defaults.
    pub fn runtime_webrocket() -> VhostConfig {
        VhostConfig {
            path: String::new(),
            dialect: Dialect::WebRocket,
            allowed_origin: any_origin(),
            backend: None,
            duplicate_client: DuplicateClient::default(),
            on_backend_error: OnBackendError::default(),
            max_in_flight_per_client: 1,
            hooks: HooksConfig::default(),
            anonymous: Perms::NONE,
            auth: None,
        }
    }
}

fn perms<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Perms, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    Perms::parse(names.iter().map(String::as_str)).map_err(serde::de::Error::custom)
}

fn one() -> usize {
    1
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DuplicateClient {
    #[default]
    Replace,
    Reject,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBackendError {
    #[default]
    Drop,
    Close,
}

/// Backend HTTP hooks of a vhost (docs/protocols.md §5). For `proxy` vhosts the
/// connect, message and close calls go to `backend`; these URLs are for the
/// other dialects.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// `GET` before the upgrade; 2xx allows, anything else is the answer.
    pub connect: Option<String>,
    /// `POST` on a roadrunner `join`; 2xx allows, else `#join`.
    pub join: Option<String>,
    /// `POST` after a connection ended.
    pub close: Option<String>,
    /// Per attempt, connect + response.
    pub timeout_ms: u64,
    /// Extra attempts for a request that never reached the backend.
    pub retries: u32,
    /// Also retry requests that may have reached the backend (it may then
    /// see a message twice).
    pub retry_sent: bool,
    /// https hooks (and a proxy vhost's https `backend`) must present a
    /// certificate chaining to this CA (PEM); without it, to the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            connect: None,
            join: None,
            close: None,
            timeout_ms: 5_000,
            retries: 2,
            retry_sent: false,
            ca_file: None,
        }
    }
}

fn any_origin() -> OriginPolicy {
    OriginPolicy::Any
}

fn origin_policy<'de, D: serde::Deserializer<'de>>(d: D) -> Result<OriginPolicy, D::Error> {
    let text = String::deserialize(d)?;
    OriginPolicy::parse(&text).map_err(serde::de::Error::custom)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            limits: Limits::default(),
            rpc: RpcConfig::default(),
            log: LogConfig::default(),
            stats: StatsConfig::default(),
            broker: "memory".into(),
            redis: RedisConfig::default(),
            nats: NatsConfig::default(),
            cluster: ClusterConfig::default(),
            webrocket: WebRocketConfig::default(),
            vhosts: vec![VhostConfig {
                path: "/ws".into(),
                dialect: Dialect::RoadRunner,
                allowed_origin: any_origin(),
                backend: None,
                duplicate_client: DuplicateClient::default(),
                on_backend_error: OnBackendError::default(),
                max_in_flight_per_client: 1,
                hooks: HooksConfig::default(),
                anonymous: Perms::NONE,
                auth: None,
            }],
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".parse().expect("literal"),
            api_listen: "127.0.0.1:8081".parse().expect("literal"),
            rpc_listen: "127.0.0.1:6001".parse().expect("literal"),
            shards: 0,
            max_connections: 1_000_000,
            backlog: 4096,
            send_buffer: 0,
            shutdown_timeout_ms: 5_000,
            io_memory_kib: 512,
            shard_inbox: 4096,
            shard_inbox_bytes: 64 * 1024 * 1024,
            api_request_timeout_ms: 10_000,
            data_dir: "ringcast-data".into(),
            admin_token: None,
            api_token: None,
            allow_unauthenticated_remote: false,
            api_max_connections: 1024,
            tls: None,
            api_tls: None,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 64 * 1024,
            max_backpressure: 1024 * 1024,
            max_topics_per_connection: 256,
            handshake_timeout_ms: 10_000,
            ping_interval_ms: 25_000,
            idle_timeout_ms: 60_000,
            max_hooks_in_flight: 1024,
            max_publish_topics: 10_000,
            max_publish_bytes: 64 * 1024 * 1024,
            max_topic_length: 256,
            max_connections_per_ip: 0,
            handshakes_per_ip_per_s: 0,
            messages_per_s: 0,
            messages_burst: 0,
        }
    }
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            max_frame_size: 16 * 1024 * 1024,
            frame_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
            max_connections: 1024,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: LogFormat::Text }
    }
}

/// A configuration that cannot be used, with what to change.
#[derive(Debug)]
pub struct ConfigError {
    kind: ConfigErrorKind,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConfigErrorKind {
    /// The file could not be read.
    Read,
    /// Not TOML, or a key or value of the wrong shape.
    Syntax,
    /// A value out of range or settings that contradict each other.
    Invalid,
    /// A listener that would expose the API or RPC without credentials.
    Exposed,
}

impl ConfigError {
    fn new(kind: ConfigErrorKind, message: String) -> ConfigError {
        ConfigError { kind, message }
    }

    /// For errors found outside this module's checks (the command line).
    pub fn invalid(message: impl Into<String>) -> ConfigError {
        ConfigError::new(ConfigErrorKind::Invalid, message.into())
    }

    pub fn is_read(&self) -> bool {
        self.kind == ConfigErrorKind::Read
    }

    pub fn is_syntax(&self) -> bool {
        self.kind == ConfigErrorKind::Syntax
    }

    pub fn is_invalid(&self) -> bool {
        self.kind == ConfigErrorKind::Invalid
    }

    pub fn is_exposed(&self) -> bool {
        self.kind == ConfigErrorKind::Exposed
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Known brokers in this build.
pub const BROKERS: &[&str] = &["memory", "redis", "nats"];

impl Config {
    /// What one publish request may make the gateway encode.
    pub fn publish_limits(&self) -> crate::publish::Limits {
        crate::publish::Limits {
            max_topics: self.limits.max_publish_topics,
            max_bytes: self.limits.max_publish_bytes,
            max_topic_length: self.limits.max_topic_length,
        }
    }

    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::new(ConfigErrorKind::Syntax, format!("{origin}: {e}")))
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(ConfigErrorKind::Read, format!("cannot read config {}: {e}", path.display()))
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// The number of shards to run: `server.shards`, or one per available core.
    pub fn shard_count(&self) -> usize {
        match self.server.shards {
            0 => core_affinity::get_core_ids().map_or(1, |c| c.len().max(1)),
            n => n,
        }
    }

    /// Checks values serde cannot: ranges and cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |key: &str, why: &str| Err(ConfigError::invalid(format!("invalid `{key}`: {why}")));
        if self.server.shards > 1024 {
            return fail("server.shards", "at most 1024");
        }
        if self.stats.top_topics > 1000 {
            return fail("stats.top_topics", "at most 1000");
        }
        if self.server.max_connections == 0 {
            return fail("server.max_connections", "must be at least 1");
        }
        if self.server.shard_inbox_bytes < 64 * 1024 {
            return fail("server.shard_inbox_bytes", "must be at least 65536");
        }
        if self.server.shard_inbox == 0 {
            return fail("server.shard_inbox", "must be at least 1");
        }
        if self.server.io_memory_kib < 64 {
            return fail("server.io_memory_kib", "must be at least 64");
        }
        let l = &self.limits;
        if l.max_message_size < 125 {
            return fail("limits.max_message_size", "must be at least 125 bytes");
        }
        if l.max_backpressure < 1024 {
            return fail("limits.max_backpressure", "must be at least 1024 bytes");
        }
        if l.handshake_timeout_ms == 0 {
            return fail("limits.handshake_timeout_ms", "must be above 0");
        }
        if l.ping_interval_ms == 0 || l.idle_timeout_ms <= l.ping_interval_ms {
            return fail(
                "limits.idle_timeout_ms",
                "must be above limits.ping_interval_ms, which must be above 0",
            );
        }
        if l.max_publish_topics == 0 {
            return fail("limits.max_publish_topics", "must be at least 1");
        }
        if l.max_publish_bytes < 1024 {
            return fail("limits.max_publish_bytes", "must be at least 1024 bytes");
        }
        if l.max_topic_length == 0 || l.max_topic_length > 65_536 {
            return fail("limits.max_topic_length", "must be 1 to 65536");
        }
        if l.messages_burst > 0 && l.messages_per_s == 0 {
            return fail("limits.messages_burst", "needs limits.messages_per_s above 0");
        }
        if l.max_hooks_in_flight == 0 {
            return fail("limits.max_hooks_in_flight", "must be at least 1");
        }
        if self.rpc.frame_timeout_ms == 0 {
            return fail("rpc.frame_timeout_ms", "must be above 0");
        }
        if self.server.api_request_timeout_ms == 0 {
            return fail("server.api_request_timeout_ms", "must be above 0");
        }
        if self.rpc.max_frame_size < 64 {
            return fail("rpc.max_frame_size", "must be at least 64 bytes");
        }
        if !BROKERS.contains(&self.broker.as_str()) {
            return fail("broker", &format!("unknown broker {:?}; known: {BROKERS:?}", self.broker));
        }
        let c = &self.cluster;
        if let Some(secret) = &c.secret {
            if secret.len() < MIN_CLUSTER_SECRET_LEN {
                return fail(
                    "cluster.secret",
                    "use at least 32 bytes (e.g. `openssl rand -hex 32`), the same on every node",
                );
            }
            if c.insecure {
                return fail("cluster.insecure", "a cluster.secret is set: drop `insecure = true`");
            }
        } else if self.broker != "memory" && !c.insecure {
            return Err(ConfigError::invalid(format!(
                "broker = {:?} needs `cluster.secret` (or RINGCAST_CLUSTER_SECRET): at least 32 bytes shared by \
                 every node, so nodes only apply what other nodes signed; `cluster.insecure = true` runs without \
                 one (anyone who can publish to the broker can then inject messages)",
                self.broker
            )));
        }
        if self.webrocket.max_channels_per_vhost == 0 {
            return fail("webrocket.max_channels_per_vhost", "must be at least 1");
        }
        if c.replay_window_ms < 1_000 {
            return fail("cluster.replay_window_ms", "must be at least 1000");
        }
        if self.server.admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            return fail("server.admin_token", "use at least 16 characters");
        }
        if self.server.api_token.as_ref().is_some_and(|t| t.len() < 16) {
            return fail("server.api_token", "use at least 16 characters");
        }
        if self.rpc.write_timeout_ms == 0 {
            return fail("rpc.write_timeout_ms", "must be above 0");
        }
        if self.rpc.max_connections == 0 {
            return fail("rpc.max_connections", "must be at least 1");
        }
        if self.server.api_max_connections == 0 {
            return fail("server.api_max_connections", "must be at least 1");
        }
        self.check_exposure()?;
        if self.nats.prefix.contains(['*', '>', ' ']) || self.nats.prefix.starts_with('.') {
            return fail("nats.prefix", "NATS subject characters only (no `*`, `>`, spaces or leading `.`)");
        }
        if self.vhosts.is_empty() {
            return fail("vhost", "at least one [[vhost]] is needed");
        }
        for (i, v) in self.vhosts.iter().enumerate() {
            if !vhost_path_is_valid(&v.path) {
                return fail(
                    &format!("vhost[{i}].path"),
                    "must start with `/`, printable ASCII without spaces, `?` or `#`, at most 256 bytes",
                );
            }
            let key = |name: &str| format!("vhost[{i}].{name}");
            if v.dialect == Dialect::Proxy {
                if !v.path.ends_with('/') {
                    return fail(&key("path"), "a proxy vhost's path is a prefix ending with `/`");
                }
                match &v.backend {
                    None => return fail(&key("backend"), "a proxy vhost needs the backend's base URL"),
                    Some(url) => check_url(url)
                        .map_err(|e| ConfigError::invalid(format!("invalid `{}`: {e}", key("backend"))))?,
                }
            } else if v.backend.is_some() {
                return fail(&key("backend"), "only proxy vhosts have a backend; use [vhost.hooks]");
            }
            if v.max_in_flight_per_client == 0 || v.max_in_flight_per_client > 64 {
                return fail(&key("max_in_flight_per_client"), "must be 1 to 64");
            }
            for (name, url) in
                [("connect", &v.hooks.connect), ("join", &v.hooks.join), ("close", &v.hooks.close)]
            {
                if let Some(url) = url {
                    check_url(url).map_err(|e| {
                        ConfigError::invalid(format!("invalid `{}`: {e}", key(&format!("hooks.{name}"))))
                    })?;
                }
            }
            if v.hooks.join.is_some() && v.dialect != Dialect::RoadRunner {
                return fail(&key("hooks.join"), "join hooks apply to roadrunner vhosts");
            }
            if v.anonymous != Perms::NONE && v.dialect != Dialect::WebRocket {
                return fail(&key("anonymous"), "anonymous rights apply to webrocket vhosts");
            }
            if let Some(a) = &v.auth {
                if a.jwt_hmac_secret.is_some() == a.jwt_public_key.is_some() {
                    return fail(
                        &key("auth"),
                        "set exactly one of jwt_hmac_secret (HS256) and jwt_public_key (RS256, ES256, EdDSA)",
                    );
                }
                if a.jwt_hmac_secret.as_ref().is_some_and(|s| s.len() < MIN_HMAC_SECRET_LEN) {
                    return fail(
                        &key("auth.jwt_hmac_secret"),
                        "use at least 32 bytes (e.g. `openssl rand -hex 32`)",
                    );
                }
            }
            if v.hooks.timeout_ms == 0 {
                return fail(&key("hooks.timeout_ms"), "must be above 0");
            }
            if self.vhosts[..i].iter().any(|o| o.path == v.path) {
                return fail(&format!("vhost[{i}].path"), &format!("{:?} is used twice", v.path));
            }
        }
        Ok(())
    }
}

impl Config {
    /// The API and RPC listen on loopback unless exposing them is
    /// deliberate: the API with `api_token` (or the opt-out), goridge RPC —
    /// which has no way to carry credentials — only with the opt-out.
    fn check_exposure(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.allow_unauthenticated_remote {
            return Ok(());
        }
        if !s.api_listen.ip().is_loopback() && s.api_token.is_none() {
            return Err(ConfigError::new(
                ConfigErrorKind::Exposed,
                format!(
                    "refusing to serve the HTTP API on {} (not loopback) without `server.api_token` (or \
                 RINGCAST_API_TOKEN): anyone reaching it could publish and push; set a token, listen on \
                 127.0.0.1, or set `server.allow_unauthenticated_remote = true`",
                    s.api_listen
                ),
            ));
        }
        if !s.rpc_listen.ip().is_loopback() {
            return Err(ConfigError::new(
                ConfigErrorKind::Exposed,
                format!(
                "refusing to serve goridge RPC on {} (not loopback): the protocol carries no credentials, so \
                 anyone reaching it could publish; listen on 127.0.0.1 (or a private interface with \
                 `server.allow_unauthenticated_remote = true`)",
                s.rpc_listen
            ),
            ));
        }
        Ok(())
    }
}

/// A vhost path: `/` then printable ASCII without spaces, `?` or `#`, at most 256 bytes.
pub fn vhost_path_is_valid(path: &str) -> bool {
    path.starts_with('/')
        && path.len() <= 256
        && path.bytes().all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
}

/// A hook or backend URL that cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub enum BadUrl {
    NotAUrl { url: String, reason: String },
    NotHttp(String),
    HasQuery(String),
}

impl std::fmt::Display for BadUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadUrl::NotAUrl { url, reason } => write!(f, "{url:?} is not a URL: {reason}"),
            BadUrl::NotHttp(url) => write!(f, "{url:?}: an http:// or https:// URL with a host is needed"),
            BadUrl::HasQuery(url) => write!(f, "{url:?}: no query string, please"),
        }
    }
}

impl std::error::Error for BadUrl {}

/// Hook and backend URLs are `http://` or `https://host[:port][/path]`.
pub fn check_url(url: &str) -> Result<(), BadUrl> {
    let uri: hyper::Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| BadUrl::NotAUrl {
        url: url.into(),
        reason: e.to_string(),
    })?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(BadUrl::NotHttp(url.into()));
    }
    if uri.query().is_some() {
        return Err(BadUrl::HasQuery(url.into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_docs() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.vhosts[0].path, "/ws");
        assert_eq!(c.limits.max_backpressure, 1 << 20);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml("[limits]\nmax_backpresure = 5\n", "x.toml").unwrap_err();
        assert!(e.to_string().contains("max_backpresure"), "{e}");
        assert!(e.is_syntax() && !e.is_invalid(), "{e:?}");
        let e = Config::from_toml("colour = 1\n", "x.toml").unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = Config::from_toml("[[vhost]]\npath = \"/\"\ndialect = \"klingon\"\n", "x.toml").unwrap_err();
        assert!(e.to_string().contains("klingon"), "{e}");
        let c = Config::from_toml("[limits]\nidle_timeout_ms = 10\nping_interval_ms = 20\n", "x").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("limits.idle_timeout_ms"));
        let c = Config::from_toml("broker = \"kafka\"\n", "x").unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("kafka") && e.is_invalid(), "{e:?}");
        let c = Config::from_toml(
            "[[vhost]]\npath=\"/a\"\ndialect=\"echo\"\n[[vhost]]\npath=\"/a\"\ndialect=\"echo\"\n",
            "x",
        )
        .unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("used twice"));
    }

    #[test]
    fn proxy_and_hook_rules() {
        let base = "[[vhost]]\npath = \"/\"\ndialect = \"proxy\"\n";
        let c = Config::from_toml(base, "x").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("vhost[0].backend"));
        let c = Config::from_toml(&format!("{base}backend = \"ftp://x\"\n"), "x").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("http:// or https://"));
        Config::from_toml(&format!("{base}backend = \"https://x\"\n"), "x").unwrap().validate().unwrap();
        let c = Config::from_toml(&format!("{base}backend = \"http://127.0.0.1:5000\"\n"), "x").unwrap();
        c.validate().unwrap();
        assert_eq!(c.vhosts[0].duplicate_client, DuplicateClient::Replace);
        let c =
            Config::from_toml("[[vhost]]\npath = \"/p\"\ndialect = \"proxy\"\nbackend = \"http://a\"\n", "x")
                .unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("ending with `/`"));
        let c = Config::from_toml(
            "[[vhost]]\npath = \"/e\"\ndialect = \"echo\"\n[vhost.hooks]\njoin = \"http://a/j\"\n",
            "x",
        )
        .unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("vhost[0].hooks.join"));
        let e = Config::from_toml(
            "[[vhost]]\npath = \"/e\"\ndialect = \"echo\"\n[vhost.hooks]\njion = \"x\"\n",
            "x",
        )
        .unwrap_err();
        assert!(e.to_string().contains("jion"));
    }

    #[test]
    fn a_network_broker_needs_a_secret_or_an_explicit_insecure() {
        let c = Config::from_toml("broker = \"redis\"\n", "x").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("cluster.secret") && e.contains("RINGCAST_CLUSTER_SECRET"), "{e}");
        let c = Config::from_toml("broker = \"nats\"\n[cluster]\ninsecure = true\n", "x").unwrap();
        c.validate().unwrap();
        let c = Config::from_toml("broker = \"redis\"\n[cluster]\nsecret = \"short\"\n", "x").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("32 bytes"));
        let long = "s".repeat(32);
        let c =
            Config::from_toml(&format!("broker = \"redis\"\n[cluster]\nsecret = \"{long}\"\n"), "x").unwrap();
        c.validate().unwrap();
        Config::default().validate().unwrap();
    }

    #[test]
    fn exposed_api_and_rpc_need_a_token_or_an_explicit_opt_out() {
        let c = Config::from_toml("[server]\napi_listen = \"0.0.0.0:8081\"\n", "x").unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.is_exposed(), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("server.api_token") && e.contains("0.0.0.0:8081"), "{e}");
        let c = Config::from_toml(
            "[server]\napi_listen = \"0.0.0.0:8081\"\napi_token = \"0123456789abcdef\"\n",
            "x",
        )
        .unwrap();
        c.validate().unwrap();
        let c = Config::from_toml(
            "[server]\nrpc_listen = \"0.0.0.0:6001\"\napi_token = \"0123456789abcdef\"\n",
            "x",
        )
        .unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("goridge RPC"));
        let c = Config::from_toml(
            "[server]\nrpc_listen = \"0.0.0.0:6001\"\napi_listen = \"[::]:1\"\nallow_unauthenticated_remote = true\n",
            "x",
        )
        .unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn an_unreadable_file_is_a_read_error_naming_it() {
        let e = Config::load(Path::new("/nonexistent/ringcast.toml")).unwrap_err();
        assert!(e.is_read() && e.to_string().contains("/nonexistent/ringcast.toml"), "{e:?}");
    }

    #[test]
    fn shipped_configs_load() {
        for f in [
            "config/roadrunner.toml",
            "config/echo.toml",
            "config/proxy.toml",
            "config/wss.toml",
            "config/webrocket.toml",
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
            Config::load(&path).unwrap().validate().unwrap();
        }
    }
}
