//! Live measurements beyond counters (docs/metrics.md): publish → socket
//! latency, send queue depths, connections per vhost, hottest topics.
//!
//! A shard records into its own `Recorder` (plain fields, no atomics, no
//! locks). Once a second it folds that into its `ShardStats`, a mutex only
//! readers (`/metrics`, `/stats`) contend for, so the hot path never locks.
//!
//! Publish → socket latency is sampled: a shard follows one publication at a
//! time (a *probe*) from the moment the node received it until the last of
//! its subscribers' sockets took the frame. Each subscriber connection keeps
//! the probe's id and how many frames are ahead of it (one `u64`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

/// Longest latency recorded exactly (µs); a probe still open after this is
/// recorded as this and given up.
pub const LATENCY_MAX_US: u64 = 10_000_000;
/// Largest queue depth recorded exactly (bytes).
const DEPTH_MAX: u64 = 1 << 30;
/// How long after a reader's last look shards keep scanning topics.
const WANTED_FOR_MS: u64 = 30_000;

pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 2).expect("valid bounds")
}

pub fn depth_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, DEPTH_MAX, 2).expect("valid bounds")
}

/// A connection's probe mark: 0 when it carries none, else the probe id
/// (high 32 bits) and the frames queued up to and including the probe's.
pub type ProbeMark = u64;

pub fn probe_mark(id: u32, frames_ahead: usize) -> ProbeMark {
    ((id as u64) << 32) | (frames_ahead.min(u32::MAX as usize) as u64)
}

/// `frames` were written: the mark left, and the probe id if the probe's
/// frame was among them.
pub fn probe_advance(mark: ProbeMark, frames: usize) -> (ProbeMark, Option<u32>) {
    if mark == 0 || frames == 0 {
        return (mark, None);
    }
    let left = mark & 0xffff_ffff;
    if frames as u64 >= left {
        (0, Some((mark >> 32) as u32))
    } else {
        (mark - frames as u64, None)
    }
}

/// Where the stall detector watches a shard's work wait (`shard::stall`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallSite {
    /// A publication taken by the node until the shard starts queueing it.
    Inbox = 0,
    /// The connection driver runnable until its turn starts.
    Driver = 1,
}

impl StallSite {
    pub const ALL: [StallSite; 2] = [StallSite::Inbox, StallSite::Driver];

    pub fn name(self) -> &'static str {
        match self {
            StallSite::Inbox => "inbox",
            StallSite::Driver => "driver",
        }
    }
}

struct Probe {
    id: u32,
    received: Instant,
    /// Connections whose socket has not taken the frame yet.
    waiting: usize,
}

/// A shard's own measurements (shard-local).
pub struct Recorder {
    pub enabled: bool,
    publish_to_socket: Histogram<u64>,
    queue_depth: Histogram<u64>,
    probe: Option<Probe>,
    last_probe_id: u32,
    probes_given_up: u64,
    /// Open connections per vhost index (the last: vhosts added at run time).
    vhost_connections: Vec<u64>,
    /// Stall detector waits (µs) per `StallSite`.
    stalls: [Histogram<u64>; 2],
}

impl Recorder {
    pub fn new(enabled: bool, vhosts: usize) -> Self {
        Recorder {
            enabled,
            publish_to_socket: latency_histogram(),
            queue_depth: depth_histogram(),
            probe: None,
            last_probe_id: 0,
            probes_given_up: 0,
            vhost_connections: vec![0; vhosts + 1],
            stalls: [latency_histogram(), latency_histogram()],
        }
    }

    /// Work at `site` waited `d` to run.
    pub fn stall(&mut self, site: StallSite, d: Duration) {
        self.stalls[site as usize].saturating_record((d.as_micros() as u64).max(1));
    }

    /// A publication received at `received` is about to be queued: its probe
    /// id if it is to be followed (none is in flight).
    pub fn start_probe(&mut self, received: Instant) -> Option<u32> {
        if !self.enabled {
            return None;
        }
        if let Some(p) = &self.probe {
            if p.received.elapsed() < Duration::from_micros(LATENCY_MAX_US) {
                return None;
            }
            // A socket that takes nothing for this long: record the bound.
            self.publish_to_socket.saturating_record(LATENCY_MAX_US);
            self.probes_given_up += 1;
        }
        self.last_probe_id = self.last_probe_id.wrapping_add(1).max(1);
        self.probe = Some(Probe { id: self.last_probe_id, received, waiting: 0 });
        Some(self.last_probe_id)
    }

    /// The probe's frame was queued to `connections` sockets (0: dropped).
    pub fn arm_probe(&mut self, id: u32, connections: usize) {
        match &mut self.probe {
            Some(p) if p.id == id && connections > 0 => p.waiting = connections,
            Some(p) if p.id == id => self.probe = None,
            _ => {}
        }
    }

    /// One connection wrote the probe's frame (or went away without it).
    pub fn probe_done(&mut self, id: u32) {
        let Some(p) = &mut self.probe else { return };
        if p.id != id {
            return;
        }
        p.waiting = p.waiting.saturating_sub(1);
        if p.waiting == 0 {
            let us = p.received.elapsed().as_micros() as u64;
            self.publish_to_socket.saturating_record(us.max(1));
            self.probe = None;
        }
    }

    /// A connection of vhost `index` (past the configured ones: a runtime
    /// vhost) registered.
    pub fn connection_opened(&mut self, index: usize) {
        let last = self.vhost_connections.len() - 1;
        self.vhost_connections[index.min(last)] += 1;
    }

    pub fn connection_closed(&mut self, index: usize) {
        let last = self.vhost_connections.len() - 1;
        let n = &mut self.vhost_connections[index.min(last)];
        *n = n.saturating_sub(1);
    }

    /// A connection is about to write `bytes` queued bytes.
    pub fn queue_depth(&mut self, bytes: usize) {
        if self.enabled {
            self.queue_depth.saturating_record(bytes.max(1) as u64);
        }
    }
}

/// One topic's share of the traffic.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TopicStat {
    pub topic: String,
    pub subscribers: u64,
    pub messages_per_second: f64,
}

/// What a shard last published of its measurements (cumulative histograms).
#[derive(Clone)]
pub struct Published {
    pub publish_to_socket: Histogram<u64>,
    /// Only what the last fold brought (about the last second).
    pub publish_to_socket_recent: Histogram<u64>,
    pub queue_depth: Histogram<u64>,
    pub probes_given_up: u64,
    pub vhost_connections: Vec<u64>,
    /// Stall detector waits (µs) per `StallSite`, since the start.
    pub stalls: [Histogram<u64>; 2],
    pub topics: u64,
    /// Empty unless someone looked within the last `WANTED_FOR_MS`.
    pub top_by_subscribers: Vec<TopicStat>,
    pub top_by_rate: Vec<TopicStat>,
}

/// A shard's measurements as readers see them.
pub struct ShardStats {
    published: Mutex<Published>,
    /// Unix ms until which readers want the topic lists.
    wanted_until_ms: AtomicU64,
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl ShardStats {
    pub fn new(vhosts: usize) -> Self {
        ShardStats {
            published: Mutex::new(Published {
                publish_to_socket: latency_histogram(),
                publish_to_socket_recent: latency_histogram(),
                queue_depth: depth_histogram(),
                probes_given_up: 0,
                vhost_connections: vec![0; vhosts + 1],
                stalls: [latency_histogram(), latency_histogram()],
                topics: 0,
                top_by_subscribers: Vec::new(),
                top_by_rate: Vec::new(),
            }),
            wanted_until_ms: AtomicU64::new(0),
        }
    }

    /// A copy for a reader; topic lists are gathered from now on.
    pub fn read(&self) -> Published {
        self.wanted_until_ms.store(unix_ms() + WANTED_FOR_MS, Relaxed);
        self.published.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether shards should scan their topics (someone is looking).
    pub fn wanted(&self) -> bool {
        self.wanted_until_ms.load(Relaxed) > unix_ms()
    }

    /// Folds what a shard recorded since the last call into the published
    /// copy (the recorder's histograms start over).
    pub fn fold(&self, r: &mut Recorder, topics: u64, top: Option<(Vec<TopicStat>, Vec<TopicStat>)>) {
        let mut p = self.published.lock().unwrap_or_else(|e| e.into_inner());
        let _ = p.publish_to_socket.add(&r.publish_to_socket);
        p.publish_to_socket_recent.clone_from(&r.publish_to_socket);
        let _ = p.queue_depth.add(&r.queue_depth);
        r.publish_to_socket.reset();
        r.queue_depth.reset();
        for (p, r) in p.stalls.iter_mut().zip(r.stalls.iter_mut()) {
            let _ = p.add(&*r);
            r.reset();
        }
        p.probes_given_up += std::mem::take(&mut r.probes_given_up);
        p.vhost_connections.clone_from(&r.vhost_connections);
        p.topics = topics;
        if let Some((by_subscribers, by_rate)) = top {
            p.top_by_subscribers = by_subscribers;
            p.top_by_rate = by_rate;
        }
    }
}

/// The `n` largest by `key`, largest first (for small `n`).
#[derive(Debug)]
pub struct TopN<T> {
    n: usize,
    items: Vec<(f64, T)>,
}

impl<T> TopN<T> {
    pub fn new(n: usize) -> Self {
        TopN { n, items: Vec::with_capacity(n + 1) }
    }

    /// Whether `key` would enter (to skip building an item that would not).
    pub fn admits(&self, key: f64) -> bool {
        self.n > 0 && (self.items.len() < self.n || self.items.last().is_some_and(|(k, _)| key > *k))
    }

    pub fn offer(&mut self, key: f64, item: T) {
        if !self.admits(key) {
            return;
        }
        let at = self.items.partition_point(|(k, _)| *k >= key);
        self.items.insert(at, (key, item));
        self.items.truncate(self.n);
    }

    pub fn into_vec(self) -> Vec<T> {
        self.items.into_iter().map(|(_, t)| t).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_is_recorded_when_its_last_connection_wrote_it() {
        let mut r = Recorder::new(true, 1);
        let id = r.start_probe(Instant::now()).expect("none in flight");
        assert_eq!(r.start_probe(Instant::now()), None, "one at a time");
        r.arm_probe(id, 2);
        // Connection A: 3 frames ahead including the probe's.
        let (mark, done) = probe_advance(probe_mark(id, 3), 2);
        assert_eq!(done, None);
        assert_eq!(probe_advance(mark, 1), (0, Some(id)));
        r.probe_done(id);
        assert_eq!(r.publish_to_socket.len(), 0, "B has not written yet");
        r.probe_done(id);
        assert_eq!(r.publish_to_socket.len(), 1);
        assert!(r.start_probe(Instant::now()).is_some(), "the next one may start");
    }

    #[test]
    fn a_probe_nobody_got_is_dropped_and_a_stuck_one_given_up() {
        let mut r = Recorder::new(true, 1);
        let id = r.start_probe(Instant::now()).unwrap();
        r.arm_probe(id, 0);
        let old = Instant::now() - Duration::from_secs(11);
        let id = r.start_probe(old).unwrap();
        r.arm_probe(id, 1);
        assert!(r.start_probe(Instant::now()).is_some(), "stuck probe replaced");
        assert_eq!(r.probes_given_up, 1);
        assert_eq!(r.publish_to_socket.len(), 1);
        assert!(r.publish_to_socket.max() >= LATENCY_MAX_US * 99 / 100);
        r.probe_done(id);
        assert_eq!(r.publish_to_socket.len(), 1, "the old id is ignored");
    }

    #[test]
    fn disabled_records_nothing() {
        let mut r = Recorder::new(false, 1);
        assert_eq!(r.start_probe(Instant::now()), None);
        r.queue_depth(100);
        assert_eq!(r.queue_depth.len(), 0);
    }

    #[test]
    fn fold_accumulates_and_resets_the_recorder() {
        let stats = ShardStats::new(1);
        let mut r = Recorder::new(true, 1);
        r.queue_depth(500);
        for _ in 0..3 {
            r.connection_opened(0);
        }
        r.connection_opened(7);
        r.connection_closed(7);
        stats.fold(&mut r, 7, None);
        r.queue_depth(700);
        stats.fold(&mut r, 7, None);
        let p = stats.read();
        assert_eq!(p.queue_depth.len(), 2);
        assert_eq!(p.publish_to_socket_recent.len(), 0);
        assert_eq!(p.vhost_connections, [3, 0]);
        assert_eq!(p.topics, 7);
        assert!(stats.wanted());
    }

    #[test]
    fn top_n_keeps_the_largest_in_order() {
        let mut t = TopN::new(3);
        for (k, v) in [(1.0, "a"), (5.0, "b"), (3.0, "c"), (4.0, "d"), (0.5, "e")] {
            t.offer(k, v);
        }
        assert_eq!(t.into_vec(), ["b", "d", "c"]);
        assert!(!TopN::<()>::new(0).admits(1.0));
    }
}
