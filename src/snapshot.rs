//! One picture of the gateway: what `GET /stats`, the `/stats/stream`
//! events, the dashboard and `ringcast ctl monitor` show (docs/metrics.md).
//! Built from the same counters and shard measurements as `GET /metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::hooks::HookMetrics;
use crate::metrics::{GlobalMetrics, Histogram as RoundTrips, Percentiles, Refusal, ShardMetrics};
use crate::stats::{Published, ShardStats, TopicStat};

/// What a snapshot reads: the node's counters and measurements (shared
/// atomics, never the shards themselves) and how to ask the broker's health.
pub struct Telemetry {
    pub shard_metrics: Vec<Arc<ShardMetrics>>,
    pub shard_stats: Vec<Arc<ShardStats>>,
    /// When the gateway started (uptime).
    pub started: Instant,
    /// The addresses bound: WebSocket, API, RPC.
    pub bound: [SocketAddr; 3],
    pub metrics: Arc<GlobalMetrics>,
    pub hook_metrics: Arc<HookMetrics>,
    /// With a network broker: publish → the broker took it.
    pub broker_round_trip: Option<Arc<RoundTrips>>,
    /// This node's id (the cluster's `origin`).
    pub node: String,
    pub broker_name: &'static str,
    /// `None` while the broker is healthy, else why not.
    pub broker_degraded: Box<dyn Fn() -> Option<String> + Send + Sync>,
    pub config: Arc<Config>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: String,
    pub node: String,
    pub unix_ms: u64,
    pub uptime_seconds: f64,
    pub config: ConfigSummary,
    pub health: Health,
    pub totals: Totals,
    pub shards: Vec<ShardView>,
    pub vhosts: Vec<VhostView>,
    /// Upgrades refused since the start, by reason.
    pub refused: BTreeMap<String, u64>,
    /// Publish (received by this node) → last subscriber socket, in ms,
    /// since the start.
    pub publish_to_socket_ms: Percentiles,
    /// The same over the last second (what the shards folded last).
    pub publish_to_socket_last_second_ms: Percentiles,
    /// Bytes queued on a connection when it starts a write.
    pub queue_depth_bytes: Percentiles,
    /// Backend hook latency per hook (ms; bucket upper bounds).
    pub hook_ms: BTreeMap<String, Percentiles>,
    /// Publish → the network broker took it (ms), with one running.
    pub broker_round_trip_ms: Option<Percentiles>,
    /// Approximate across shards: each lists its own top topics.
    pub top_topics_by_subscribers: Vec<TopicView>,
    pub top_topics_by_rate: Vec<TopicView>,
    /// Per second since the previous snapshot of a stream (absent in `/stats`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rates: Option<Rates>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigSummary {
    pub listen: String,
    pub api_listen: String,
    pub rpc_listen: String,
    pub shards: usize,
    pub broker: String,
    pub max_connections: usize,
    pub max_backpressure: usize,
    pub stats_enabled: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    /// `ok` or `degraded` (as `GET /health`).
    pub status: String,
    pub broker: String,
    pub broker_error: Option<String>,
    /// Backend hook requests queued or running.
    pub hooks_pending: u64,
    /// Hook requests that found no answer (unreachable, timeout, too large).
    pub hook_failures: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub connections: u64,
    pub subscriptions: u64,
    pub topics: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub published: u64,
    pub slow_consumer_closes: u64,
    pub refused: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardView {
    pub shard: usize,
    pub connections: u64,
    pub subscriptions: u64,
    pub topics: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_out: u64,
    pub slow_consumer_closes: u64,
    /// The stall detector's waits since the start (ms), by where.
    #[serde(default)]
    pub stall_ms: BTreeMap<String, Percentiles>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VhostView {
    pub path: String,
    pub dialect: String,
    pub connections: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicView {
    pub topic: String,
    pub subscribers: u64,
    pub messages_per_second: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub messages_in: f64,
    pub messages_out: f64,
    pub published: f64,
    pub bytes_out: f64,
}

/// Label of the connections of vhosts added at run time (WebRocket).
pub const RUNTIME_VHOSTS: &str = "(runtime)";

pub fn percentiles(h: &Histogram<u64>, scale: f64) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    let q = |q: f64| h.value_at_quantile(q) as f64 / scale;
    Percentiles { count: h.len(), p50: q(0.5), p99: q(0.99), p999: q(0.999), max: h.max() as f64 / scale }
}

/// The shards' published measurements, merged.
pub struct Merged {
    pub per_shard: Vec<Published>,
    pub publish_to_socket: Histogram<u64>,
    pub publish_to_socket_recent: Histogram<u64>,
    pub queue_depth: Histogram<u64>,
}

impl Merged {
    pub fn read(ctx: &Telemetry) -> Merged {
        let per_shard: Vec<Published> = ctx.shard_stats.iter().map(|s| s.read()).collect();
        let mut publish_to_socket = crate::stats::latency_histogram();
        let mut publish_to_socket_recent = crate::stats::latency_histogram();
        let mut queue_depth = crate::stats::depth_histogram();
        for p in &per_shard {
            let _ = publish_to_socket.add(&p.publish_to_socket);
            let _ = publish_to_socket_recent.add(&p.publish_to_socket_recent);
            let _ = queue_depth.add(&p.queue_depth);
        }
        Merged { per_shard, publish_to_socket, publish_to_socket_recent, queue_depth }
    }

    /// The `n` top topics by subscribers and by message rate, all shards merged.
    pub fn top(&self, n: usize) -> (Vec<TopicView>, Vec<TopicView>) {
        let shards = || self.per_shard.iter();
        (
            merge_top(shards().map(|p| p.top_by_subscribers.clone()), n, |t| t.subscribers as f64),
            merge_top(shards().map(|p| p.top_by_rate.clone()), n, |t| t.messages_per_second),
        )
    }
}

/// Merges the shards' top lists by topic and ranks again: subscribers add
/// up; the message rate is the highest any shard saw (each shard with
/// subscribers gets every message of the topic).
fn merge_top(
    lists: impl Iterator<Item = Vec<TopicStat>>,
    n: usize,
    key: fn(&TopicView) -> f64,
) -> Vec<TopicView> {
    let mut by_topic: BTreeMap<String, TopicView> = BTreeMap::new();
    for list in lists {
        for t in list {
            let v = by_topic.entry(t.topic.clone()).or_insert(TopicView {
                topic: t.topic,
                subscribers: 0,
                messages_per_second: 0.0,
            });
            v.subscribers += t.subscribers;
            v.messages_per_second = v.messages_per_second.max(t.messages_per_second);
        }
    }
    let mut all: Vec<TopicView> = by_topic.into_values().collect();
    all.sort_by(|a, b| key(b).total_cmp(&key(a)).then_with(|| a.topic.cmp(&b.topic)));
    all.truncate(n);
    all
}

/// Path and dialect of vhost index `i` (past the configured ones: the
/// share of the vhosts added at run time).
fn vhost_label(ctx: &Telemetry, i: usize) -> (String, String) {
    ctx.config.vhosts.get(i).map_or((RUNTIME_VHOSTS.to_string(), "webrocket".to_string()), |v| {
        (v.path.clone(), v.dialect.to_string())
    })
}

/// Every vhost with its connections (the configured ones, then the runtime share).
pub fn vhost_views(ctx: &Telemetry, merged: &Merged) -> Vec<VhostView> {
    (0..=ctx.config.vhosts.len())
        .map(|i| {
            let (path, dialect) = vhost_label(ctx, i);
            VhostView {
                path,
                dialect,
                connections: merged
                    .per_shard
                    .iter()
                    .map(|p| p.vhost_connections.get(i).copied().unwrap_or(0))
                    .sum(),
            }
        })
        .collect()
}

impl Snapshot {
    pub fn collect(ctx: &Telemetry) -> Snapshot {
        let merged = Merged::read(ctx);
        let shards: Vec<ShardView> = ctx
            .shard_metrics
            .iter()
            .zip(&merged.per_shard)
            .enumerate()
            .map(|(shard, (m, p))| ShardView {
                shard,
                connections: m.connections.load(Relaxed),
                subscriptions: m.subscriptions.load(Relaxed),
                topics: p.topics,
                messages_in: m.messages_in.load(Relaxed),
                messages_out: m.messages_out.load(Relaxed),
                bytes_out: m.bytes_out.load(Relaxed),
                slow_consumer_closes: m.slow_consumer_closes.load(Relaxed),
                stall_ms: crate::stats::StallSite::ALL
                    .iter()
                    .map(|s| (s.name().to_string(), percentiles(&p.stalls[*s as usize], 1000.0)))
                    .collect(),
            })
            .collect();
        let mut refused = BTreeMap::new();
        for why in Refusal::ALL {
            let n: u64 = ctx.shard_metrics.iter().map(|m| m.refused[why as usize].load(Relaxed)).sum();
            refused.insert(why.name().to_string(), n);
        }
        let sum = |f: fn(&crate::metrics::ShardMetrics) -> u64| ctx.shard_metrics.iter().map(|m| f(m)).sum();
        let totals = Totals {
            connections: sum(|m| m.connections.load(Relaxed)),
            subscriptions: sum(|m| m.subscriptions.load(Relaxed)),
            topics: shards.iter().map(|s| s.topics).sum(),
            messages_in: sum(|m| m.messages_in.load(Relaxed)),
            messages_out: sum(|m| m.messages_out.load(Relaxed)),
            bytes_in: sum(|m| m.bytes_in.load(Relaxed)),
            bytes_out: sum(|m| m.bytes_out.load(Relaxed)),
            published: ctx.metrics.published_messages.load(Relaxed),
            slow_consumer_closes: sum(|m| m.slow_consumer_closes.load(Relaxed)),
            refused: refused.values().sum(),
        };
        let degraded = (ctx.broker_degraded)();
        let server = &ctx.config.server;
        let (top_topics_by_subscribers, top_topics_by_rate) = merged.top(ctx.config.stats.top_topics);
        Snapshot {
            version: env!("CARGO_PKG_VERSION").to_string(),
            node: ctx.node.clone(),
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            uptime_seconds: ctx.started.elapsed().as_secs_f64(),
            config: ConfigSummary {
                listen: ctx.bound[0].to_string(),
                api_listen: ctx.bound[1].to_string(),
                rpc_listen: ctx.bound[2].to_string(),
                shards: ctx.shard_metrics.len(),
                broker: ctx.config.broker.clone(),
                max_connections: server.max_connections,
                max_backpressure: ctx.config.limits.max_backpressure,
                stats_enabled: ctx.config.stats.enabled,
            },
            health: Health {
                status: if degraded.is_some() { "degraded" } else { "ok" }.to_string(),
                broker: ctx.broker_name.to_string(),
                broker_error: degraded,
                hooks_pending: ctx.hook_metrics.pending(),
                hook_failures: ctx.hook_metrics.failures(),
            },
            vhosts: vhost_views(ctx, &merged),
            totals,
            shards,
            refused,
            publish_to_socket_ms: percentiles(&merged.publish_to_socket, 1000.0),
            publish_to_socket_last_second_ms: percentiles(&merged.publish_to_socket_recent, 1000.0),
            queue_depth_bytes: percentiles(&merged.queue_depth, 1.0),
            hook_ms: ctx.hook_metrics.percentiles_ms(),
            broker_round_trip_ms: ctx.broker_round_trip.as_ref().map(|h| h.percentiles_ms()),
            top_topics_by_subscribers,
            top_topics_by_rate,
            rates: None,
        }
    }

    /// Per-second rates from `previous` to this one.
    pub fn rates_since(&self, previous: &Snapshot) -> Rates {
        let secs = ((self.unix_ms.saturating_sub(previous.unix_ms)) as f64 / 1000.0).max(0.001);
        let per = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
        let (a, b) = (&self.totals, &previous.totals);
        Rates {
            messages_in: per(a.messages_in, b.messages_in),
            messages_out: per(a.messages_out, b.messages_out),
            published: per(a.published, b.published),
            bytes_out: per(a.bytes_out, b.bytes_out),
        }
    }
}

/// Upper bounds of the send queue depth histogram's buckets (bytes).
const DEPTH_BOUNDS: [u64; 10] =
    [128, 512, 2048, 8192, 32_768, 131_072, 524_288, 2_097_152, 8_388_608, 33_554_432];

/// A Prometheus histogram series from an HdrHistogram whose values are
/// `unit`s of the exported bounds (µs for seconds: 1e6).
fn hdr_series(name: &str, labels: &str, h: &Histogram<u64>, bounds: &[f64], unit: f64, out: &mut String) {
    use std::fmt::Write;
    for b in bounds {
        let n = if h.is_empty() { 0 } else { h.count_between(0, (b * unit) as u64) };
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {n}");
    }
    let sum = if h.is_empty() { 0.0 } else { h.mean() * h.len() as f64 / unit };
    let _ = writeln!(
        out,
        "{name}_bucket{{{labels},le=\"+Inf\"}} {}\n{name}_sum{{{labels}}} {sum}\n{name}_count{{{labels}}} {}",
        h.len(),
        h.len()
    );
}

/// The series of docs/metrics.md built on the shards' measurements.
pub fn render_metrics(ctx: &Telemetry, out: &mut String) {
    use crate::metrics::head;
    use std::fmt::Write;
    let merged = Merged::read(ctx);
    let shards = || merged.per_shard.iter().enumerate();
    let name = "ringcast_publish_to_socket_seconds";
    head(out, name, "histogram", "A publication received by this node to its last subscriber's socket write (sampled: one in flight per shard).");
    for (i, p) in shards() {
        hdr_series(name, &format!("shard=\"{i}\""), &p.publish_to_socket, &crate::metrics::BOUNDS, 1e6, out);
    }
    let name = "ringcast_shard_stall_seconds";
    head(out, name, "histogram", "How long a shard's work waited to run once it could: where=inbox, a publication taken by this node until the shard starts queueing it; where=driver, the connection driver runnable until its turn.");
    for (i, p) in shards() {
        for site in crate::stats::StallSite::ALL {
            let labels = format!("shard=\"{i}\",where=\"{}\"", site.name());
            hdr_series(name, &labels, &p.stalls[site as usize], &crate::metrics::BOUNDS, 1e6, out);
        }
    }
    let name = "ringcast_send_queue_depth_bytes";
    head(out, name, "histogram", "Bytes queued on a connection when it starts a write.");
    let depth_bounds: Vec<f64> = DEPTH_BOUNDS.iter().map(|b| *b as f64).collect();
    for (i, p) in shards() {
        hdr_series(name, &format!("shard=\"{i}\""), &p.queue_depth, &depth_bounds, 1.0, out);
    }
    let name = "ringcast_latency_probes_given_up_total";
    head(out, name, "counter", "Followed publications not written to every subscriber within 10 s.");
    for (i, p) in shards() {
        let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", p.probes_given_up);
    }
    let name = "ringcast_vhost_connections";
    head(out, name, "gauge", "Open connections by vhost and dialect.");
    for (i, p) in shards() {
        for (v, n) in p.vhost_connections.iter().enumerate() {
            let (path, dialect) = vhost_label(ctx, v);
            let path = label_value(&path);
            let _ = writeln!(out, "{name}{{shard=\"{i}\",vhost=\"{path}\",dialect=\"{dialect}\"}} {n}");
        }
    }
    head(out, "ringcast_topics", "gauge", "Topics with subscribers.");
    for (i, p) in shards() {
        let _ = writeln!(out, "ringcast_topics{{shard=\"{i}\"}} {}", p.topics);
    }
    let name = "ringcast_handshakes_refused_total";
    head(out, name, "counter", "Upgrades that did not become connections, by reason.");
    for (i, m) in ctx.shard_metrics.iter().enumerate() {
        for why in Refusal::ALL {
            let n = m.refused[why as usize].load(Relaxed);
            let _ = writeln!(out, "{name}{{shard=\"{i}\",reason=\"{}\"}} {n}", why.name());
        }
    }
    let (by_subscribers, by_rate) = merged.top(ctx.config.stats.top_topics);
    let name = "ringcast_top_topic_subscribers";
    top_gauge(out, name, "Subscribers of the stats.top_topics topics with the most.", &by_subscribers, |t| {
        t.subscribers as f64
    });
    let name = "ringcast_top_topic_messages_per_second";
    top_gauge(out, name, "Message rate of the stats.top_topics busiest topics.", &by_rate, |t| {
        t.messages_per_second
    });
    head(out, "ringcast_uptime_seconds", "gauge", "Seconds since the gateway started.");
    let _ = writeln!(out, "ringcast_uptime_seconds {}", ctx.started.elapsed().as_secs_f64());
    head(out, "ringcast_build_info", "gauge", "The running version.");
    let _ = writeln!(out, "ringcast_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
}

/// A gauge per listed topic.
fn top_gauge(out: &mut String, name: &str, help: &str, topics: &[TopicView], value: fn(&TopicView) -> f64) {
    use std::fmt::Write;
    crate::metrics::head(out, name, "gauge", help);
    for t in topics {
        let _ = writeln!(out, "{name}{{topic=\"{}\"}} {}", label_value(&t.topic), value(t));
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_latency_histogram_in_ms() {
        let mut h = crate::stats::latency_histogram();
        for us in 1..=1000 {
            h.record(us * 10).unwrap();
        }
        let p = percentiles(&h, 1000.0);
        assert_eq!(p.count, 1000);
        assert!((p.p50 - 5.0).abs() < 0.1, "{p:?}");
        assert!((p.p99 - 9.9).abs() < 0.1, "{p:?}");
        assert!((p.max - 10.0).abs() < 0.1, "{p:?}");
        assert_eq!(percentiles(&crate::stats::latency_histogram(), 1.0), Percentiles::default());
    }

    #[test]
    fn top_lists_of_shards_are_merged_by_topic() {
        let stat =
            |t: &str, s: u64, r: f64| TopicStat { topic: t.into(), subscribers: s, messages_per_second: r };
        let lists = vec![vec![stat("a", 5, 1.0), stat("b", 4, 0.0)], vec![stat("b", 3, 2.0)]];
        let top = merge_top(lists.into_iter(), 1, |t| t.subscribers as f64);
        assert_eq!(top, [TopicView { topic: "b".into(), subscribers: 7, messages_per_second: 2.0 }]);
    }
}
