//! A shard: one executor pinned to one core, owning a disjoint set of
//! connections, its own topic index and its own scratch buffers. Nothing here
//! is shared with other threads except the inbox and relaxed counters.

pub mod conn;
mod driver;
mod handshake;
pub mod ring;
mod stall;
pub mod topics;
mod webrocket;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;
use slab::Slab;
use tracing::{debug, warn};

use crate::bus::{Inbox, Interest, InterestSender, Peers, ShardMsg, ShardRouter, TrySendError};
use crate::clients::RegistryHandle;
use crate::config::Config;
use crate::handle::{Owner, PushOutcome};
use crate::hooks::{HookOutcome, HookRequest, HookSender};
use crate::metrics::{self, ShardMetrics};
use crate::publish::Delivery;
use crate::rt;
use crate::session::send_queue::Frame;
use crate::session::Tick;
use crate::stats::{self, Recorder, ShardStats, StallSite, TopN};
use crate::webrocket::WebRocket;
use conn::{ConnRef, ConnState};
use topics::{ConnKey, TopicIndex};

/// Size of the per-shard read buffer every connection reads into.
const READ_BUFFER: usize = 64 * 1024;
/// Close notifications a shard keeps while the hook queue is full; past
/// this they are dropped and counted (a backend down through a mass
/// disconnect of more clients than this).
const CLOSE_BACKLOG_MAX: usize = 100_000;
/// Close notifications handed to the hook queue per retry pass.
const CLOSE_RETRY_BATCH: usize = 1024;
/// The longest the inbox loop works before it lets the driver
/// write what it queued (and accepts, timers, hooks run).
const TURN_MAX: Duration = Duration::from_millis(50);
/// Slow consumers and protocol violators get this long to take their Close.
pub const CLOSE_LINGER: Duration = Duration::from_millis(1000);

/// What a shard thread needs to start.
pub struct ShardSetup {
    pub id: usize,
    pub config: Arc<Config>,
    pub metrics: Arc<ShardMetrics>,
    /// Connections open across all shards (for `max_connections`).
    pub open_connections: Arc<AtomicUsize>,
    pub inbox: Inbox,
    pub listener: std::net::TcpListener,
    /// To reach other shards (taking over a ClientId).
    pub router: ShardRouter,
    pub hooks: HookSender,
    pub clients: RegistryHandle,
    pub webrocket: Arc<WebRocket>,
    /// The other nodes, set once the network broker has started (before
    /// any client connects); never set with the memory broker.
    pub peers: Arc<OnceLock<Arc<dyn Peers>>>,
    /// With a network broker: where first and last subscribers are reported.
    pub interest: Option<InterestSender>,
    /// Where the shard publishes its measurements once a second.
    pub stats: Arc<ShardStats>,
}

pub struct Shard {
    /// This shard, for the timers it spawns.
    me: Weak<Shard>,
    pub id: usize,
    pub config: Arc<Config>,
    pub metrics: Arc<ShardMetrics>,
    open_connections: Arc<AtomicUsize>,
    conns: RefCell<Slab<ConnRef>>,
    topics: RefCell<TopicIndex>,
    read_buf: RefCell<Box<[u8]>>,
    json_buffers: RefCell<simd_json::Buffers>,
    started: Instant,
    draining: Cell<bool>,
    drain_waker: RefCell<Option<Waker>>,
    router: ShardRouter,
    pub hooks: HookSender,
    pub clients: RegistryHandle,
    pub webrocket: Arc<WebRocket>,
    peers: Arc<OnceLock<Arc<dyn Peers>>>,
    interest: Option<InterestSender>,
    stats: Arc<ShardStats>,
    pub(crate) recorder: RefCell<Recorder>,
    /// The stall detector.
    pub(crate) stalls: stall::StallWatch,
    /// The settings of vhosts added at run time (WebRocket, defaults).
    runtime_vhost: crate::config::VhostConfig,
    /// Hook requests outstanding per vhost path.
    hooks_in_flight: RefCell<std::collections::HashMap<Arc<str>, usize>>,
    /// Close notifications the full hook queue could not take yet, oldest
    /// first; one retry task works through them (`close_retry_running`).
    close_backlog: RefCell<VecDeque<HookRequest>>,
    close_retry_running: Cell<bool>,
    /// Connections ever registered here; part of each connection's id.
    registered: Cell<u64>,
    /// When a rate-limited warning was last logged (ms since start).
    last_warning_ms: Cell<Option<u64>>,
    /// The io_uring the driver watches the connections' sockets with.
    ring: RefCell<ring::Ring>,
    /// Set once the shard drained: the driver ends.
    driver_stopping: Cell<bool>,
}

/// The shard's own io_uring, made on the shard's thread before it reports
/// ready, so a kernel without what it needs stops the start with the reason.
pub fn ring() -> std::io::Result<ring::Ring> {
    ring::Ring::new(RING_ENTRIES)
}

/// Runs a shard until it has drained after a shutdown message.
pub async fn run(setup: ShardSetup, ring: ring::Ring) {
    let listener = rt::adopt_listener(setup.listener);
    let recorder = Recorder::new(setup.config.stats.enabled, setup.config.vhosts.len());
    let stalls = stall::StallWatch::new(
        setup.config.stats.enabled,
        Duration::from_millis(setup.config.stats.stall_log_ms),
    );
    let shard = Rc::new_cyclic(|me| Shard {
        me: me.clone(),
        id: setup.id,
        config: setup.config,
        metrics: setup.metrics,
        open_connections: setup.open_connections,
        conns: RefCell::new(Slab::new()),
        topics: RefCell::new(TopicIndex::default()),
        read_buf: RefCell::new(vec![0; READ_BUFFER].into_boxed_slice()),
        json_buffers: RefCell::new(simd_json::Buffers::new(1024)),
        started: Instant::now(),
        draining: Cell::new(false),
        drain_waker: RefCell::new(None),
        router: setup.router,
        hooks: setup.hooks,
        clients: setup.clients,
        webrocket: setup.webrocket,
        peers: setup.peers,
        interest: setup.interest,
        recorder: RefCell::new(recorder),
        stalls,
        stats: setup.stats,
        runtime_vhost: crate::config::VhostConfig::runtime_webrocket(),
        hooks_in_flight: RefCell::default(),
        close_backlog: RefCell::new(VecDeque::new()),
        close_retry_running: Cell::new(false),
        registered: Cell::new(0),
        last_warning_ms: Cell::new(None),
        ring: RefCell::new(ring),
        driver_stopping: Cell::new(false),
    });
    let driver = rt::spawn_joinable(driver::run(shard.clone()));
    rt::spawn(accept_loop(shard.clone(), listener));
    rt::spawn(keepalive_loop(shard.clone()));
    rt::spawn(stats_loop(shard.clone()));
    let inbox = setup.inbox;
    // The inbox has a task queue of its own, turned to within a millisecond
    // of a message arriving even while the driver is writing: a
    // publication that arrives mid-sweep is queued to the connections the
    // sweep has not reached yet, and they write it with what they had, so
    // it waits about one sweep, not the rest of this one plus its own.
    let inbox = rt::run_prompt(inbox_loop(shard.clone(), inbox), INBOX_LATENCY, "inbox").await;
    // Publishers see the shard as gone from now on instead of waiting on it.
    drop(inbox);
    shard.drain().await;
    shard.driver_stopping.set(true);
    shard.ring.borrow_mut().nudge();
    driver.await;
}

/// Operations per submission of a shard's ring (polls armed per turn before
/// it submits early).
const RING_ENTRIES: u32 = 4096;

/// How many subscribers ahead `deliver` prefetches a connection's state,
/// and then (once that has arrived) the tail of its send queue.
const PREFETCH_STATE: usize = 8;
const PREFETCH_QUEUE: usize = 4;

/// A hint to the CPU to load `p`'s cache line; never faults, whatever `p` is.
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads nothing into the program and
    // cannot fault, even for an address that is not mapped.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// How soon the inbox's task queue runs once a message waits.
const INBOX_LATENCY: Duration = Duration::from_millis(1);

/// Takes the shard's messages until shutdown; hands the inbox back.
async fn inbox_loop(shard: Rc<Shard>, inbox: Inbox) -> Inbox {
    // An inbox that stays full must not keep the connections from writing
    // (their queues would fill and they would be closed as slow consumers)
    // while the publisher is the one to slow down. So a turn of inbox work
    // ends once it may have queued a quarter of the send budget to one
    // connection, or after TURN_MAX; then it waits until every connection
    // pass has written what it was given, not merely for its own queue's
    // next turn, which comes within INBOX_LATENCY.
    // Short of that it takes everything waiting: a backlog split over
    // several sweeps would cost a sendmsg per connection per sweep (a 5 ms
    // turn made p99 swing to 744 ms at 630,000 deliveries/s).
    let budget_share = (shard.config.limits.max_backpressure / 4).max(1);
    let mut turn = Instant::now();
    let mut turn_bytes = 0;
    loop {
        let mut waited = false;
        let msg = poll_fn(|cx| {
            let r = inbox.poll_recv(cx);
            waited |= r.is_pending();
            r
        })
        .await;
        if waited {
            (turn, turn_bytes) = (Instant::now(), 0);
        }
        match msg {
            Some(ShardMsg::Deliver(batch)) => {
                shard.stalls.doing("the inbox's deliveries");
                for d in batch.iter() {
                    if shard.stalls.enabled() {
                        let mut recorder = shard.recorder.borrow_mut();
                        let how = "a publication";
                        shard.stalls.waited(shard.id, &mut recorder, StallSite::Inbox, how, d.received);
                    }
                    if turn_bytes >= budget_share || turn.elapsed() >= TURN_MAX {
                        driver::after_pass().await;
                        (turn, turn_bytes) = (Instant::now(), 0);
                    }
                    turn_bytes += d.frame.len() + crate::session::send_queue::SLOT_COST;
                    shard.deliver(d);
                }
            }
            Some(ShardMsg::Push { to, body, reply }) => {
                let _ = reply.send(shard.push_to(to, body));
            }
            Some(ShardMsg::Replaced(owner)) => shard.close_replaced(owner),
            Some(ShardMsg::Send { to, vhost, frame, reply }) => {
                let _ = reply.send(shard.send_to_session(to, &vhost, frame));
            }
            Some(ShardMsg::Presence { topic, reply }) => {
                let _ = reply.send(shard.local_presence(&topic));
            }
            Some(ShardMsg::ChannelCounts { vhost, reply }) => {
                let _ = reply.send(shard.local_channel_counts(&vhost));
            }
            Some(ShardMsg::UserChanged { vhost, user }) => shard.user_changed(&vhost, &user),
            Some(ShardMsg::ChannelDeleted { topic }) => shard.channel_deleted(&topic),
            Some(ShardMsg::VhostDeleted { vhost }) => shard.vhost_deleted(&vhost),
            Some(ShardMsg::Shutdown) | None => break,
        }
    }
    inbox
}

impl Shard {
    /// The other nodes of the cluster (`None` with the memory broker).
    pub fn peers(&self) -> Option<&Arc<dyn Peers>> {
        self.peers.get()
    }

    /// Rate limit for warnings that a failing backend would repeat per
    /// connection: true at most once a second.
    pub(crate) fn log_allowed(&self) -> bool {
        let now = self.now_ms();
        let due = self.last_warning_ms.get().is_none_or(|t| now >= t + 1000);
        if due {
            self.last_warning_ms.set(Some(now));
        }
        due
    }

    /// A vhost's settings: index `config.vhosts.len()` is the one every
    /// vhost added at run time shares.
    pub fn vhost_config(&self, index: usize) -> &crate::config::VhostConfig {
        self.config.vhosts.get(index).unwrap_or(&self.runtime_vhost)
    }

    fn myself(&self) -> Rc<Shard> {
        self.me.upgrade().expect("a shard outlives its methods' calls")
    }

    /// Milliseconds since the shard started (monotonic).
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Queues a delivery to this shard's subscribers of its topic: one
    /// shard-local handle on the frame, shared without atomic counts,
    /// nothing copied or re-encoded.
    /// One delivery at a time is followed to its last socket (`stats`).
    fn deliver(&self, d: &Delivery) {
        let conns = self.conns.borrow();
        let mut topics = self.topics.borrow_mut();
        let Some(entry) = topics.entry_mut(&d.topic) else {
            return;
        };
        entry.messages += 1;
        let probe = self.recorder.borrow_mut().start_probe(d.received);
        let mut probed = 0;
        let budget = self.config.limits.max_backpressure;
        let subscribers = entry.subscribers.as_slice();
        let frame = Frame::from(d.frame.clone());
        for (i, &key) in subscribers.iter().enumerate() {
            // Each subscriber's state and queue tail is a cache miss at
            // 10,000 subscribers (a third of the shard's CPU at 2 million
            // deliveries/s): ask for them a few subscribers ahead.
            if let Some(ahead) = subscribers.get_index(i + PREFETCH_STATE).and_then(|&k| conns.get(k)) {
                prefetch(Rc::as_ptr(ahead).cast());
            }
            if let Some(ahead) = subscribers.get_index(i + PREFETCH_QUEUE).and_then(|&k| conns.get(k)) {
                if let Ok(st) = ahead.try_borrow() {
                    prefetch(st.session.queue.next_slot());
                }
            }
            let Some(conn) = conns.get(key) else {
                debug_assert!(false, "topic index names a connection that is gone");
                continue;
            };
            let mut st = conn.borrow_mut();
            if st.push(frame.clone(), budget).is_err() {
                self.close_slow_consumer(&mut st);
            } else if let Some(id) = probe {
                probed += usize::from(st.carry_probe(id));
            }
        }
        if let Some(id) = probe {
            self.recorder.borrow_mut().arm_probe(id, probed);
        }
    }

    /// `frames` of a connection's queue were written (or dropped): releases
    /// the probe it carried once the probe's frame is among them.
    pub(crate) fn frames_gone(&self, st: &mut ConnState, frames: usize) {
        let (left, done) = stats::probe_advance(st.probe, frames);
        st.probe = left;
        if let Some(id) = done {
            self.recorder.borrow_mut().probe_done(id);
        }
    }

    pub(crate) fn close_slow_consumer(&self, st: &mut ConnState) {
        if st.session.close_slow_consumer() {
            self.slow_consumer_closed(st);
            self.closing(st, CLOSE_LINGER);
        }
    }

    /// Counts a slow consumer whose session dropped its unsent frames (and
    /// queued a Close), and releases the probe it may have carried.
    pub(crate) fn slow_consumer_closed(&self, st: &mut ConnState) {
        metrics::inc(&self.metrics.slow_consumer_closes);
        debug!(
            shard = self.id,
            conn = st.owner.id,
            queued = st.session.queue.queued_bytes(),
            "closing slow consumer"
        );
        self.frames_gone(st, usize::MAX);
    }

    /// Queues a Close after what is already queued; the connection is
    /// dropped when the peer closes too, or after `linger` at the latest.
    pub(crate) fn start_close(&self, st: &mut ConnState, code: Option<u16>, reason: &str, linger: Duration) {
        if st.session.begin_close(code, reason) {
            self.closing(st, linger);
        }
    }

    /// A Close was queued on `st`: the driver writes it, and the connection
    /// is dropped after `linger` if the peer has not closed by then.
    pub(crate) fn closing(&self, st: &mut ConnState, linger: Duration) {
        st.wake();
        let owner = st.owner;
        let shard = self.myself();
        rt::spawn(async move {
            rt::sleep(linger).await;
            if let Some(conn) = shard.conn(owner) {
                conn.borrow_mut().force_close();
            }
        });
    }

    /// A process-wide connection id: shard in the top bits, a counter below.
    fn next_conn_id(&self) -> u64 {
        let n = self.registered.get() + 1;
        self.registered.set(n);
        ((self.id as u64) << 48) | n
    }

    fn register(&self, conn: &ConnRef, vhost: usize) -> Owner {
        metrics::inc(&self.metrics.connections);
        self.recorder.borrow_mut().connection_opened(vhost);
        metrics::inc(&self.metrics.connections_accepted);
        let id = self.next_conn_id();
        let key = self.conns.borrow_mut().insert(conn.clone());
        let owner = Owner { shard: self.id, key, id };
        conn.borrow_mut().owner = owner;
        owner
    }

    /// The connection a ring completion names, if it is still the same one.
    fn conn_by_token(&self, token: ring::Token) -> Option<ConnRef> {
        let conns = self.conns.borrow();
        let conn = conns.get(token.key)?;
        let same = ring::Token::new(token.key, conn.borrow().owner.id) == token;
        same.then(|| conn.clone())
    }

    /// The connection `owner` names, if it is still the same one.
    pub(crate) fn conn(&self, owner: Owner) -> Option<ConnRef> {
        let conns = self.conns.borrow();
        conns.get(owner.key).filter(|c| c.borrow().owner == owner).cloned()
    }

    /// A backend push (proxy dialect): queued like any frame.
    fn push_to(&self, to: Owner, body: Bytes) -> PushOutcome {
        let Some(conn) = self.conn(to) else {
            return PushOutcome::NotConnected;
        };
        let mut st = conn.borrow_mut();
        if st.is_closing() {
            return PushOutcome::NotConnected;
        }
        if st.push(crate::session::message_frame(&body), self.config.limits.max_backpressure).is_err() {
            self.close_slow_consumer(&mut st);
            return PushOutcome::SlowConsumer;
        }
        metrics::inc(&self.metrics.pushes);
        PushOutcome::Queued
    }

    fn close_replaced(&self, owner: Owner) {
        if let Some(conn) = self.conn(owner) {
            let mut st = conn.borrow_mut();
            self.start_close(&mut st, Some(1008), "replaced by a new connection", CLOSE_LINGER);
        }
    }

    /// Tells the shard that owns `owner` to close it (ClientId taken over).
    async fn replace(&self, owner: Owner) {
        if owner.shard == self.id {
            return self.close_replaced(owner);
        }
        let mut msg = ShardMsg::Replaced(owner);
        // Bounded: a shard that takes no messages for a second is draining.
        for _ in 0..1000 {
            match self.router.try_send(owner.shard, msg) {
                Err(TrySendError::Full(back)) => {
                    msg = back;
                    rt::sleep(Duration::from_millis(1)).await;
                }
                _ => return,
            }
        }
    }

    /// Runs a backend hook request, within the shard's in-flight limit.
    /// The limit is per vhost: one vhost's hanging backend cannot take the
    /// room of another's.
    pub(crate) async fn call_hook(&self, request: HookRequest) -> HookOutcome {
        let vhost = request.vhost.clone();
        {
            let mut in_flight = self.hooks_in_flight.borrow_mut();
            let n = in_flight.entry(vhost.clone()).or_default();
            if *n >= self.config.limits.max_hooks_in_flight {
                self.hooks.metrics().record(request.kind, &HookOutcome::Busy, Duration::ZERO);
                return HookOutcome::Busy;
            }
            *n += 1;
        }
        // Released when the call ends or is abandoned (a handshake that
        // reached its deadline drops this future mid-wait).
        let _slot = HookSlot { in_flight: &self.hooks_in_flight, vhost };
        let outcome = self.hooks.submit(request).await;
        outcome.unwrap_or(HookOutcome::Unreachable("gateway shutting down".into()))
    }

    /// Sends a close notification, never dropping it for a full hook queue:
    /// it waits in the shard's backlog (in order) for one retry task.
    pub(crate) fn notify_closed(&self, request: HookRequest) {
        let mut backlog = self.close_backlog.borrow_mut();
        let request = if backlog.is_empty() {
            match self.hooks.try_submit(request) {
                Ok(_) => return,
                Err(back) => *back,
            }
        } else {
            request
        };
        if backlog.len() >= CLOSE_BACKLOG_MAX {
            metrics::inc(&self.metrics.close_hooks_dropped);
            if self.log_allowed() {
                warn!(
                    shard = self.id,
                    "close hook backlog full ({CLOSE_BACKLOG_MAX}); dropping close notifications"
                );
            }
            return;
        }
        backlog.push_back(request);
        metrics::inc(&self.metrics.close_backlog);
        drop(backlog);
        if !self.close_retry_running.replace(true) {
            rt::spawn(retry_close_notifications(self.myself()));
        }
    }

    /// Hands backlog entries to the hook queue while it takes them (at most
    /// a batch); true if any went.
    fn submit_close_backlog(&self) -> bool {
        let mut backlog = self.close_backlog.borrow_mut();
        let mut sent = 0;
        while sent < CLOSE_RETRY_BATCH {
            let Some(request) = backlog.pop_front() else { break };
            if let Err(back) = self.hooks.try_submit(request) {
                backlog.push_front(*back);
                break;
            }
            sent += 1;
        }
        metrics::sub(&self.metrics.close_backlog, sent as u64);
        sent > 0
    }

    fn unregister(&self, key: ConnKey, vhost: usize) {
        let conn = self.conns.borrow_mut().remove(key);
        let mut topics = self.topics.borrow_mut();
        let mut st = conn.borrow_mut();
        self.frames_gone(&mut st, usize::MAX);
        self.recorder.borrow_mut().connection_closed(vhost);
        for t in st.topics.drain(..) {
            self.index_unsubscribe(&mut topics, &t, key);
        }
        metrics::dec(&self.metrics.connections);
    }

    /// A join or leave names this node's broker (or none) and valid topics.
    fn acceptable(&self, broker: Option<&str>, topics: &[&str]) -> bool {
        use crate::dialect::roadrunner::topic_is_valid;
        broker.is_none_or(|b| b == self.config.broker)
            && !topics.is_empty()
            && topics.iter().all(|t| topic_is_valid(t))
    }

    /// Applies a join; None means refused (`#join`), with nothing changed.
    /// Else the broker confirmations to wait for before `@join` goes out
    /// (none with the memory broker, or when the topics were held here).
    fn join(
        &self,
        key: ConnKey,
        st: &mut ConnState,
        broker: Option<&str>,
        wanted: &[&str],
    ) -> Option<Vec<oneshot::Receiver<()>>> {
        if !self.acceptable(broker, wanted) {
            return None;
        }
        let mut new: Vec<&str> =
            wanted.iter().copied().filter(|t| !st.topics.iter().any(|have| &**have == *t)).collect();
        new.sort_unstable();
        new.dedup();
        if st.topics.len() + new.len() > self.config.limits.max_topics_per_connection {
            return None;
        }
        let mut confirmations = Vec::new();
        for t in new {
            let (name, confirm) = self.index_subscribe(t, key);
            st.topics.push(name);
            confirmations.extend(confirm);
        }
        // Joins are rare and most connections hold a topic or two: exact
        // capacity saves 48 bytes per idle subscriber.
        st.topics.shrink_to_fit();
        Some(confirmations)
    }

    /// Subscribes `key` in the topic index. A shard's first subscriber of
    /// a topic is reported to a network broker, whose confirmation the
    /// reply to the client waits for.
    pub(crate) fn index_subscribe(
        &self,
        topic: &str,
        key: ConnKey,
    ) -> (Rc<str>, Option<oneshot::Receiver<()>>) {
        let (name, new) = self.topics.borrow_mut().subscribe(topic, key);
        metrics::inc(&self.metrics.subscriptions);
        if new {
            // A WebRocket channel exists while a shard has subscribers.
            if let Some((vhost, channel)) = self.webrocket.directory.channel_of_topic(topic) {
                vhost.shard_subscribed(channel);
            }
        }
        let confirm = match (&self.interest, new) {
            (Some(tx), true) => {
                let (confirmed, rx) = oneshot::channel();
                tx.send(Interest::Join { topic: topic.into(), confirmed }).ok().map(|()| rx)
            }
            _ => None,
        };
        (name, confirm)
    }

    /// Unsubscribes `key`; a shard's last subscriber leaving is reported.
    pub(crate) fn index_unsubscribe(&self, index: &mut TopicIndex, topic: &str, key: ConnKey) {
        metrics::dec(&self.metrics.subscriptions);
        if index.unsubscribe(topic, key) {
            if let Some((vhost, channel)) = self.webrocket.directory.channel_of_topic(topic) {
                vhost.shard_unsubscribed(channel);
            }
            if let Some(tx) = &self.interest {
                let _ = tx.send(Interest::Leave { topic: topic.into() });
            }
        }
    }

    /// Applies a leave; false means refused (`#leave`), with nothing changed.
    fn leave(&self, key: ConnKey, st: &mut ConnState, broker: Option<&str>, topics: &[&str]) -> bool {
        if !self.acceptable(broker, topics) {
            return false;
        }
        let mut index = self.topics.borrow_mut();
        for t in topics {
            if let Some(pos) = st.topics.iter().position(|have| &**have == *t) {
                st.topics.swap_remove(pos);
                self.index_unsubscribe(&mut index, t, key);
            }
        }
        true
    }

    /// Stops accepting, sends every client Close 1001 after what it already
    /// has queued, and returns when all are gone or the timeout passed.
    async fn drain(&self) {
        self.draining.set(true);
        if let Some(w) = self.drain_waker.borrow_mut().take() {
            w.wake();
        }
        let timeout = Duration::from_millis(self.config.server.shutdown_timeout_ms);
        // Clients get half the timeout to answer the Close: a client that
        // never answers is dropped then, and its close notification still has
        // the other half to reach the backend before the exit.
        for (_, conn) in self.conns.borrow().iter() {
            let mut st = conn.borrow_mut();
            self.start_close(&mut st, Some(1001), "server shutting down", timeout / 2);
        }
        let deadline = Instant::now() + timeout;
        while !(self.conns.borrow().is_empty() && self.close_backlog.borrow().is_empty())
            && Instant::now() < deadline
        {
            rt::sleep(Duration::from_millis(10)).await;
        }
        let unsent = std::mem::take(&mut *self.close_backlog.borrow_mut()).len() as u64;
        if unsent > 0 {
            metrics::add(&self.metrics.close_hooks_dropped, unsent);
            metrics::sub(&self.metrics.close_backlog, unsent);
            warn!(shard = self.id, unsent, "shutdown deadline passed with close notifications unsent");
        }
        debug!(shard = self.id, left = self.conns.borrow().len(), "shard drained");
    }

    /// Resolves once a shutdown began.
    async fn draining(&self) {
        poll_fn(|cx| {
            if self.draining.get() {
                Poll::Ready(())
            } else {
                *self.drain_waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// Works through the close backlog: retries as soon as the hook queue took
/// something, backing off (5 ms doubling to 500 ms) while it takes nothing.
async fn retry_close_notifications(shard: Rc<Shard>) {
    let mut delay = Duration::from_millis(5);
    loop {
        rt::sleep(delay).await;
        let progressed = shard.submit_close_backlog();
        if shard.close_backlog.borrow().is_empty() {
            shard.close_retry_running.set(false);
            return;
        }
        delay =
            if progressed { Duration::from_millis(5) } else { (delay * 2).min(Duration::from_millis(500)) };
    }
}

async fn accept_loop(shard: Rc<Shard>, listener: rt::TcpListener) {
    let max = shard.config.server.max_connections;
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.draining().await;
            None
        })
        .await;
        match accepted {
            None => return,
            Some(Ok(stream)) => {
                shard.stalls.doing("an accept");
                if shard.open_connections.fetch_add(1, Ordering::Relaxed) >= max {
                    shard.open_connections.fetch_sub(1, Ordering::Relaxed);
                    metrics::inc(&shard.metrics.connections_refused);
                    shard.metrics.refuse(metrics::Refusal::MaxConnections);
                    rt::spawn(handshake::refuse(stream));
                } else {
                    rt::spawn(handshake::serve(shard.clone(), stream));
                }
            }
            Some(Err(e)) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(shard = shard.id, error = %e, "accept failed; raise `ulimit -n` (see docs/tuning.md)");
                rt::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Topics looked at per slice of a scan before the shard yields.
const SCAN_SLICE: usize = 4096;

/// Once a second: publishes the shard's measurements; while someone looks
/// (`ShardStats::wanted`), ranks its topics first, a slice per turn.
async fn stats_loop(shard: Rc<Shard>) {
    let mut last_scan = Instant::now();
    loop {
        rt::sleep(Duration::from_secs(1)).await;
        if shard.draining.get() {
            return;
        }
        shard.stalls.doing("the stats fold");
        let top_n = shard.config.stats.top_topics;
        let top = if shard.config.stats.enabled && shard.stats.wanted() {
            let seconds = last_scan.elapsed().as_secs_f64();
            last_scan = Instant::now();
            let (mut by_subscribers, mut by_rate) = (TopN::new(top_n), TopN::new(top_n));
            let mut at = Some(0);
            while let Some(from) = at {
                at = shard.topics.borrow_mut().scan(
                    from,
                    SCAN_SLICE,
                    seconds,
                    &mut by_subscribers,
                    &mut by_rate,
                );
                if at.is_some() {
                    rt::yield_now().await;
                }
            }
            Some((by_subscribers.into_vec(), by_rate.into_vec()))
        } else {
            None
        };
        let topics = shard.topics.borrow().topic_count() as u64;
        shard.stats.fold(&mut shard.recorder.borrow_mut(), topics, top);
    }
}

/// Slices a keepalive round is cut into (one slice per tick).
const KEEPALIVE_SLICES: usize = 10;

/// Pings connections silent for `ping_interval_ms` and closes those silent
/// for `idle_timeout_ms`; gives back queue memory left from bursts. One
/// round per second over the shard's connections, instead of a timer per
/// connection, in `KEEPALIVE_SLICES` slices of the connection slab a tick
/// apart, each connection pinged after its own share of the interval
/// (`session::ping_after_for`): connections that arrived together are not
/// all pinged in one go. 10,000 pings written and 10,000 pongs read at once
/// held a shard's publications back 100-200 ms every ping interval.
async fn keepalive_loop(shard: Rc<Shard>) {
    let ping_interval = shard.config.limits.ping_interval_ms;
    let close_after = shard.config.limits.idle_timeout_ms;
    let tick = Duration::from_millis((ping_interval.min(1000) / KEEPALIVE_SLICES as u64).max(1));
    let ping = crate::ws::data_frame(
        tungstenite::protocol::frame::coding::OpCode::Control(
            tungstenite::protocol::frame::coding::Control::Ping,
        ),
        b"",
    );
    let mut slice = 0;
    while !shard.draining.get() {
        rt::sleep(tick).await;
        shard.stalls.doing("the keepalive scan");
        let now = shard.now_ms();
        let budget = shard.config.limits.max_backpressure;
        let conns = shard.conns.borrow();
        let per_slice = conns.capacity().div_ceil(KEEPALIVE_SLICES);
        let keys = slice * per_slice..((slice + 1) * per_slice).min(conns.capacity());
        slice = (slice + 1) % KEEPALIVE_SLICES;
        for conn in keys.filter_map(|key| conns.get(key)) {
            let mut st = conn.borrow_mut();
            st.session.queue.release_if_idle();
            let ping_after = crate::session::ping_after_for(ping_interval, st.owner.id);
            match st.session.tick(now, ping_after, close_after, &ping, budget) {
                Tick::Quiet => {}
                Tick::Pinged => st.wake(),
                Tick::IdleTimeout => {
                    metrics::inc(&shard.metrics.idle_closes);
                    shard.closing(&mut st, CLOSE_LINGER);
                }
                Tick::SlowConsumer => {
                    shard.slow_consumer_closed(&mut st);
                    shard.closing(&mut st, CLOSE_LINGER);
                }
            }
        }
    }
}

/// One vhost's hook call counted in the shard's in-flight limit.
struct HookSlot<'a> {
    in_flight: &'a RefCell<std::collections::HashMap<Arc<str>, usize>>,
    vhost: Arc<str>,
}

impl Drop for HookSlot<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.in_flight.borrow_mut();
        if let Some(n) = in_flight.get_mut(&self.vhost) {
            *n -= 1;
            if *n == 0 {
                in_flight.remove(&self.vhost);
            }
        }
    }
}
