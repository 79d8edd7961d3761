//! Counters for `GET /metrics` (Prometheus text format). Each shard writes
//! only its own counters (relaxed atomics, no contention); the API thread reads.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Latency percentiles in ms, as `/stats`, the hooks' view and the monitor
/// show them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Debug, Default)]
pub struct ShardMetrics {
    pub connections: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub connections_refused: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub slow_consumer_closes: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub idle_closes: AtomicU64,
    pub subscriptions: AtomicU64,
    pub pushes: AtomicU64,
    pub broadcasts: AtomicU64,
    pub backend_errors: AtomicU64,
    pub close_backlog: AtomicU64,
    pub close_hooks_dropped: AtomicU64,
    /// Upgrades refused, by `Refusal`.
    pub refused: [AtomicU64; Refusal::ALL.len()],
    /// Abuse limits hit, by `Limit`.
    pub limited: [AtomicU64; crate::limits::Limit::ALL.len()],
    /// Connections closed (4001) because their token expired.
    pub token_expired_closes: AtomicU64,
}

/// Why an upgrade did not become a connection (`reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `server.max_connections` reached (HTTP 503).
    MaxConnections,
    /// Not a valid WebSocket upgrade (400, 405, 426, 431).
    BadRequest,
    /// No vhost at the path (404).
    NotFound,
    /// Origin not allowed (403).
    Origin,
    /// The request did not arrive within `handshake_timeout_ms` (408).
    Timeout,
    /// The ClientId is connected already (409).
    DuplicateClient,
    /// The connect hook answered no.
    BackendRefused,
    /// The connect hook failed: unreachable, timeout, too large, busy.
    BackendError,
    /// The gateway is shutting down.
    ShuttingDown,
    /// The peer left or the socket failed before the upgrade completed.
    PeerGone,
    /// The TLS handshake failed (no ClientHello, no common protocol, a bad record).
    Tls,
    /// `[vhost.auth]`: a missing or invalid token (401).
    Token,
    /// `limits.max_connections_per_ip` or `limits.handshakes_per_ip_per_s` (429).
    RateLimited,
}

impl Refusal {
    pub const ALL: [Refusal; 13] = [
        Refusal::MaxConnections,
        Refusal::BadRequest,
        Refusal::NotFound,
        Refusal::Origin,
        Refusal::Timeout,
        Refusal::DuplicateClient,
        Refusal::BackendRefused,
        Refusal::BackendError,
        Refusal::ShuttingDown,
        Refusal::PeerGone,
        Refusal::Tls,
        Refusal::Token,
        Refusal::RateLimited,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::BadRequest => "bad_request",
            Refusal::NotFound => "not_found",
            Refusal::Origin => "origin",
            Refusal::Timeout => "timeout",
            Refusal::DuplicateClient => "duplicate_client",
            Refusal::BackendRefused => "backend_refused",
            Refusal::BackendError => "backend_error",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::PeerGone => "peer_gone",
            Refusal::Tls => "tls",
            Refusal::Token => "token",
            Refusal::RateLimited => "rate_limited",
        }
    }
}

impl ShardMetrics {
    pub fn refuse(&self, why: Refusal) {
        inc(&self.refused[why as usize]);
    }

    pub fn limited(&self, limit: crate::limits::Limit) {
        inc(&self.limited[limit as usize]);
    }
}

#[derive(Debug, Default)]
pub struct GlobalMetrics {
    pub rpc_requests: AtomicU64,
    pub rpc_errors: AtomicU64,
    pub http_publish_requests: AtomicU64,
    pub http_publish_errors: AtomicU64,
    pub published_messages: AtomicU64,
    pub publish_waits: AtomicU64,
    pub pushes_queued: AtomicU64,
    pub pushes_not_connected: AtomicU64,
    pub pushes_slow_consumer: AtomicU64,
    /// By `Denied::index`.
    pub denied: [AtomicU64; Denied::ALL.len()],
}

/// Work refused at a trust boundary (docs/security.md): the label of
/// `ringcast_denied_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// An API call without the `api_token` it needs (401).
    ApiUnauthorized,
    /// A push larger than `limits.max_backpressure` (413).
    PushTooLarge,
    /// An API connection over `server.api_max_connections`.
    ApiConnections,
    /// An RPC connection over `rpc.max_connections`.
    RpcConnections,
    /// An RPC call whose method name is over 256 bytes.
    RpcMethodName,
    /// An RPC client that did not read its replies within `rpc.write_timeout_ms`.
    RpcWriteTimeout,
}

impl Denied {
    pub const ALL: [Denied; 6] = [
        Denied::ApiUnauthorized,
        Denied::PushTooLarge,
        Denied::ApiConnections,
        Denied::RpcConnections,
        Denied::RpcMethodName,
        Denied::RpcWriteTimeout,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Denied::ApiUnauthorized => "api_unauthorized",
            Denied::PushTooLarge => "push_too_large",
            Denied::ApiConnections => "api_connections",
            Denied::RpcConnections => "rpc_connections",
            Denied::RpcMethodName => "rpc_method_name",
            Denied::RpcWriteTimeout => "rpc_write_timeout",
        }
    }

    fn index(self) -> usize {
        Denied::ALL.iter().position(|r| *r == self).expect("listed")
    }
}

impl GlobalMetrics {
    pub fn deny(&self, why: Denied) {
        inc(&self.denied[why.index()]);
    }

    pub fn record_push(&self, outcome: crate::handle::PushOutcome) {
        use crate::handle::PushOutcome::*;
        inc(match outcome {
            Queued => &self.pushes_queued,
            NotConnected => &self.pushes_not_connected,
            SlowConsumer => &self.pushes_slow_consumer,
        });
    }
}

/// Upper bounds (seconds) of the latency histograms' buckets.
pub const BOUNDS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A Prometheus histogram of durations: relaxed atomics, no locks.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last is +Inf.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn record(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        let i = BOUNDS.iter().position(|b| s <= *b).unwrap_or(BOUNDS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Percentiles in ms, each the upper bound of the bucket it falls in
    /// (beyond the last bound: the last bound).
    pub fn percentiles_ms(&self) -> Percentiles {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let at = |q: f64| {
            let rank = ((q * total as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return BOUNDS[i.min(BOUNDS.len() - 1)] * 1000.0;
                }
            }
            BOUNDS[BOUNDS.len() - 1] * 1000.0
        };
        if total == 0 {
            return Default::default();
        }
        Percentiles { count: total, p50: at(0.5), p99: at(0.99), p999: at(0.999), max: at(1.0) }
    }

    pub fn render(&self, name: &str, help: &str, labels: &str, out: &mut String) {
        head(out, name, "histogram", help);
        self.render_series(name, labels, out);
    }

    /// The series alone (one label set of a histogram whose HELP and TYPE
    /// are written once).
    pub fn render_series(&self, name: &str, labels: &str, out: &mut String) {
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Relaxed);
            let le = BOUNDS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}\n{name}_count{{{labels}}} {}", self.count());
    }
}

/// A series' `# HELP` and `# TYPE` lines.
pub fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}

pub fn sub(c: &AtomicU64, n: u64) {
    c.fetch_sub(n, Relaxed);
}

pub fn dec(c: &AtomicU64) {
    c.fetch_sub(1, Relaxed);
}

type Field = fn(&ShardMetrics) -> &AtomicU64;

const SHARD_SERIES: &[(&str, &str, &str, Field)] = &[
    ("ringcast_connections", "gauge", "Open WebSocket connections.", |m| &m.connections),
    ("ringcast_connections_accepted_total", "counter", "WebSocket upgrades completed.", |m| {
        &m.connections_accepted
    }),
    ("ringcast_connections_refused_total", "counter", "Connections refused at max_connections.", |m| {
        &m.connections_refused
    }),
    (
        "ringcast_handshake_failures_total",
        "counter",
        "Upgrade requests answered with an HTTP error or timed out.",
        |m| &m.handshake_failures,
    ),
    ("ringcast_messages_in_total", "counter", "Client messages received.", |m| &m.messages_in),
    ("ringcast_messages_out_total", "counter", "Frames written to clients.", |m| &m.messages_out),
    ("ringcast_bytes_in_total", "counter", "Bytes read from clients.", |m| &m.bytes_in),
    ("ringcast_bytes_out_total", "counter", "Bytes written to clients.", |m| &m.bytes_out),
    (
        "ringcast_slow_consumer_closes_total",
        "counter",
        "Connections closed for exceeding max_backpressure.",
        |m| &m.slow_consumer_closes,
    ),
    (
        "ringcast_protocol_errors_total",
        "counter",
        "Connections closed for WebSocket protocol violations.",
        |m| &m.protocol_errors,
    ),
    (
        "ringcast_idle_closes_total",
        "counter",
        "Connections closed after idle_timeout_ms without traffic.",
        |m| &m.idle_closes,
    ),
    ("ringcast_subscriptions", "gauge", "Topic subscriptions held.", |m| &m.subscriptions),
    ("ringcast_pushes_total", "counter", "Backend pushes queued to a client (proxy dialect).", |m| &m.pushes),
    ("ringcast_broadcasts_total", "counter", "WebRocket client broadcasts accepted.", |m| &m.broadcasts),
    (
        "ringcast_backend_errors_total",
        "counter",
        "Client messages the backend did not take (proxy dialect).",
        |m| &m.backend_errors,
    ),
    (
        "ringcast_close_hook_backlog",
        "gauge",
        "Close notifications waiting for room in the backend hook queue.",
        |m| &m.close_backlog,
    ),
    (
        "ringcast_close_hooks_dropped_total",
        "counter",
        "Close notifications never sent: backlog full, or still waiting at the shutdown deadline.",
        |m| &m.close_hooks_dropped,
    ),
    (
        "ringcast_token_expired_closes_total",
        "counter",
        "Connections closed with 4001 because their token expired ([vhost.auth]).",
        |m| &m.token_expired_closes,
    ),
];

/// Renders every series, per shard where the value is per shard.
pub fn render(shards: &[Arc<ShardMetrics>], global: &GlobalMetrics) -> String {
    let mut out = String::with_capacity(4096);
    for (name, kind, help, field) in SHARD_SERIES {
        head(&mut out, name, kind, help);
        for (i, m) in shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", field(m).load(Relaxed));
        }
    }
    let globals: [(&str, &str, &AtomicU64); 6] = [
        ("ringcast_rpc_requests_total", "goridge RPC calls received.", &global.rpc_requests),
        ("ringcast_rpc_errors_total", "goridge RPC calls answered with an error.", &global.rpc_errors),
        ("ringcast_http_publish_requests_total", "POST /publish requests.", &global.http_publish_requests),
        (
            "ringcast_http_publish_errors_total",
            "POST /publish requests refused.",
            &global.http_publish_errors,
        ),
        (
            "ringcast_published_messages_total",
            "Messages published (each to one or more topics).",
            &global.published_messages,
        ),
        (
            "ringcast_publish_waits_total",
            "Times a publisher waited for a shard's full inbox (backpressure).",
            &global.publish_waits,
        ),
    ];
    for (name, help, v) in globals {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Relaxed));
    }
    let _ =
        writeln!(out, "# HELP ringcast_push_requests_total Backend pushes (POST /<ClientId>) by outcome.");
    let _ = writeln!(out, "# TYPE ringcast_push_requests_total counter");
    for (outcome, v) in [
        ("queued", &global.pushes_queued),
        ("not_connected", &global.pushes_not_connected),
        ("slow_consumer", &global.pushes_slow_consumer),
    ] {
        let _ = writeln!(out, "ringcast_push_requests_total{{outcome=\"{outcome}\"}} {}", v.load(Relaxed));
    }
    head(
        &mut out,
        "ringcast_limited_total",
        "counter",
        "Abuse limits hit on the public port (docs/security.md), by limit.",
    );
    for (i, m) in shards.iter().enumerate() {
        for l in crate::limits::Limit::ALL {
            let n = m.limited[l as usize].load(Relaxed);
            let _ = writeln!(out, "ringcast_limited_total{{shard=\"{i}\",limit=\"{}\"}} {n}", l.label());
        }
    }
    head(
        &mut out,
        "ringcast_denied_total",
        "counter",
        "API and RPC requests and connections refused at a trust boundary, by reason.",
    );
    for r in Denied::ALL {
        let _ = writeln!(
            out,
            "ringcast_denied_total{{reason=\"{}\"}} {}",
            r.label(),
            global.denied[r.index()].load(Relaxed)
        );
    }
    head(
        &mut out,
        "ringcast_panics_total",
        "counter",
        "Panics caught and contained (docs/security.md), by where: the gateway served on.",
    );
    for w in crate::panics::Where::ALL {
        let _ = writeln!(out, "ringcast_panics_total{{where=\"{}\"}} {}", w.label(), crate::panics::count(w));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_per_shard_series() {
        let shards = vec![Arc::new(ShardMetrics::default()), Arc::new(ShardMetrics::default())];
        inc(&shards[1].connections);
        let text = render(&shards, &GlobalMetrics::default());
        assert!(text.contains("ringcast_connections{shard=\"0\"} 0\n"));
        assert!(text.contains("ringcast_connections{shard=\"1\"} 1\n"));
        assert!(text.contains("# TYPE ringcast_messages_out_total counter\n"));
        assert!(text.contains("ringcast_rpc_requests_total 0\n"));
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        use std::time::Duration;
        let h = Histogram::default();
        h.record(Duration::from_micros(300));
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(20));
        let mut out = String::new();
        h.render("x_seconds", "help", "k=\"v\"", &mut out);
        assert!(out.contains("# TYPE x_seconds histogram"), "{out}");
        assert!(out.contains("x_seconds_bucket{k=\"v\",le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{k=\"v\",le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{k=\"v\",le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{k=\"v\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_count{k=\"v\"} 3"), "{out}");
        assert!(out.contains("x_seconds_sum{k=\"v\"} 20.0033"), "{out}");
        let p = h.percentiles_ms();
        assert_eq!((p.count, p.p50, p.max), (3, 5.0, 10_000.0));
    }
}
