//! A shard's state: the connections it owns, their subscriptions, its
//! scratch buffers and handles to the rest of the node, and the life of a
//! connection on it (registered, looked up by handle, closed with a linger
//! timer, unregistered). What the shard does with that state lives beside
//! it: delivery (`delivery.rs`), a session's effects (`effects.rs`), socket
//! I/O (`driver.rs`), the once-a-second timers (`timers.rs`).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::{Rc, Weak};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use slab::Slab;
use tracing::{debug, warn};

use super::conn::{ConnRef, ConnState};
use super::hook_calls::{Closed, HookCalls, CLOSE_BACKLOG_MAX};
use super::ring;
use super::stall::StallWatch;
use super::subscriptions::Subscriptions;
use super::topics::ConnKey;
use crate::bus::{Inbox, InterestSender, Peers, ShardRouter};
use crate::clients::RegistryHandle;
use crate::config::Config;
use crate::handle::Owner;
use crate::hooks::{HookOutcome, HookRequest, HookSender};
use crate::metrics::{self, ShardMetrics};
use crate::rt;
use crate::stats::{self, Recorder, ShardStats};
use crate::webrocket::WebRocket;

/// Size of the per-shard read buffer every connection reads into.
const READ_BUFFER: usize = 64 * 1024;
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
    /// `[server.tls]`: the certificate new handshakes get.
    pub tls: Option<Arc<crate::tls::CertStore>>,
    /// `[vhost.auth]` by vhost index (vhosts added at run time have none).
    pub auth: Arc<[Option<crate::auth::Verifier>]>,
    /// Per-address limits, shared by every shard; None: none set.
    pub per_ip: Option<Arc<crate::limits::PerIp>>,
}

pub struct Shard {
    /// This shard, for the timers it spawns.
    me: Weak<Shard>,
    pub id: usize,
    pub config: Arc<Config>,
    pub metrics: Arc<ShardMetrics>,
    /// Connections open across all shards (for `max_connections`).
    pub(super) open_connections: Arc<AtomicUsize>,
    pub(super) conns: RefCell<Slab<ConnRef>>,
    /// The topic index and each connection's joins, kept in step.
    pub(super) subscriptions: RefCell<Subscriptions>,
    pub(super) read_buf: RefCell<Box<[u8]>>,
    pub(super) json_buffers: RefCell<simd_json::Buffers>,
    started: Instant,
    pub(super) draining: Cell<bool>,
    drain_waker: RefCell<Option<Waker>>,
    pub(super) router: ShardRouter,
    pub clients: RegistryHandle,
    pub webrocket: Arc<WebRocket>,
    peers: Arc<OnceLock<Arc<dyn Peers>>>,
    /// With a network broker: where first and last subscribers are reported.
    pub(super) interest: Option<InterestSender>,
    pub(super) stats: Arc<ShardStats>,
    pub(crate) recorder: RefCell<Recorder>,
    /// The stall detector.
    pub(crate) stalls: StallWatch,
    /// The settings of vhosts added at run time (WebRocket, defaults).
    runtime_vhost: crate::config::VhostConfig,
    /// Backend hook calls: the in-flight limit and the close backlog.
    hook_calls: HookCalls,
    /// Connections ever registered here; part of each connection's id.
    registered: Cell<u64>,
    /// When a rate-limited warning was last logged (ms since start).
    last_warning_ms: Cell<Option<u64>>,
    /// The io_uring the driver watches the connections' sockets with.
    pub(super) ring: RefCell<ring::Ring>,
    /// Set once the shard drained: the driver ends.
    pub(super) driver_stopping: Cell<bool>,
    /// `[server.tls]`: the certificate new handshakes get.
    pub(super) tls: Option<Arc<crate::tls::CertStore>>,
    /// Scratch for TLS: what a read decrypted, what a flush encrypts.
    pub(super) tls_scratch: RefCell<TlsScratch>,
    /// `[vhost.auth]` by vhost index.
    pub(super) auth: Arc<[Option<crate::auth::Verifier>]>,
    pub(super) per_ip: Option<Arc<crate::limits::PerIp>>,
    /// `limits.messages_per_s`.
    pub(super) message_rate: Option<crate::limits::Rate>,
}

/// The shard's TLS buffers, shared by its connections: between records a
/// connection holds none of its own.
#[derive(Default)]
pub(super) struct TlsScratch {
    pub plaintext: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl Shard {
    /// The shard of `setup`; hands back what the shard's loops take over
    /// (the inbox and the listener).
    pub fn new(setup: ShardSetup, ring: ring::Ring) -> (Rc<Shard>, Inbox, std::net::TcpListener) {
        let config = setup.config;
        let recorder = Recorder::new(config.stats.enabled, config.vhosts.len());
        let stalls = StallWatch::new(config.stats.enabled, Duration::from_millis(config.stats.stall_log_ms));
        let subscriptions = Subscriptions::new(
            setup.metrics.clone(),
            setup.webrocket.clone(),
            setup.interest.clone(),
            config.broker.clone(),
            config.limits.max_topics_per_connection,
            config.limits.max_topic_length,
        );
        let hook_calls = HookCalls::new(
            setup.hooks,
            setup.metrics.clone(),
            config.limits.max_hooks_in_flight,
            CLOSE_BACKLOG_MAX,
        );
        let message_rate =
            crate::limits::Rate::new(config.limits.messages_per_s, config.limits.messages_burst);
        let shard = Rc::new_cyclic(|me| Shard {
            me: me.clone(),
            id: setup.id,
            config,
            metrics: setup.metrics,
            open_connections: setup.open_connections,
            conns: RefCell::new(Slab::new()),
            subscriptions: RefCell::new(subscriptions),
            read_buf: RefCell::new(vec![0; READ_BUFFER].into_boxed_slice()),
            json_buffers: RefCell::new(simd_json::Buffers::new(1024)),
            started: Instant::now(),
            draining: Cell::new(false),
            drain_waker: RefCell::new(None),
            router: setup.router,
            clients: setup.clients,
            webrocket: setup.webrocket,
            peers: setup.peers,
            interest: setup.interest,
            recorder: RefCell::new(recorder),
            stalls,
            stats: setup.stats,
            runtime_vhost: crate::config::VhostConfig::runtime_webrocket(),
            hook_calls,
            registered: Cell::new(0),
            last_warning_ms: Cell::new(None),
            ring: RefCell::new(ring),
            driver_stopping: Cell::new(false),
            tls: setup.tls,
            tls_scratch: RefCell::default(),
            auth: setup.auth,
            per_ip: setup.per_ip,
            message_rate,
        });
        (shard, setup.inbox, setup.listener)
    }

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

    /// A vhost's token check, if it has `[vhost.auth]`.
    pub(super) fn verifier(&self, index: usize) -> Option<&crate::auth::Verifier> {
        self.auth.get(index).and_then(Option::as_ref)
    }

    pub(super) fn myself(&self) -> Rc<Shard> {
        self.me.upgrade().expect("a shard outlives its methods' calls")
    }

    /// Milliseconds since the shard started (monotonic).
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
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

    pub(super) fn register(&self, conn: &ConnRef, vhost: usize) -> Owner {
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
    pub(super) fn conn_by_token(&self, token: ring::Token) -> Option<ConnRef> {
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

    pub(super) fn close_replaced(&self, owner: Owner) {
        if let Some(conn) = self.conn(owner) {
            let mut st = conn.borrow_mut();
            self.start_close(&mut st, Some(1008), "replaced by a new connection", CLOSE_LINGER);
        }
    }

    pub(super) fn unregister(&self, key: ConnKey, vhost: usize) {
        let conn = self.conns.borrow_mut().remove(key);
        let mut st = conn.borrow_mut();
        self.frames_gone(&mut st, usize::MAX);
        self.recorder.borrow_mut().connection_closed(vhost);
        self.subscriptions.borrow_mut().leave_all(key, &mut st.topics);
        metrics::dec(&self.metrics.connections);
    }

    /// Runs a backend hook request within its vhost's in-flight limit.
    pub(crate) async fn call_hook(&self, request: HookRequest) -> HookOutcome {
        self.hook_calls.call(request).await
    }

    /// Sends a close notification; a full hook queue puts it in the
    /// shard's backlog (in order) for one retry task.
    pub(crate) fn notify_closed(&self, request: HookRequest) {
        if self.hook_calls.notify_closed(request) == Closed::Dropped && self.log_allowed() {
            warn!(
                shard = self.id,
                "close hook backlog full ({CLOSE_BACKLOG_MAX}); dropping close notifications"
            );
        }
        if let Some(retry) = self.hook_calls.retry_needed() {
            rt::spawn(retry);
        }
    }

    /// Stops accepting, sends every client Close 1001 after what it already
    /// has queued, and returns when all are gone or the timeout passed.
    pub(super) async fn drain(&self) {
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
        while !(self.conns.borrow().is_empty() && self.hook_calls.backlog_len() == 0)
            && Instant::now() < deadline
        {
            rt::sleep(Duration::from_millis(10)).await;
        }
        let unsent = self.hook_calls.drop_backlog();
        if unsent > 0 {
            warn!(shard = self.id, unsent, "shutdown deadline passed with close notifications unsent");
        }
        debug!(shard = self.id, left = self.conns.borrow().len(), "shard drained");
    }

    /// Resolves once a shutdown began.
    pub(super) async fn draining(&self) {
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
