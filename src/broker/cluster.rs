//! Many nodes as one over a network broker (docs/cluster.md). Runs on the
//! integration thread. A node subscribes on the broker to a topic only
//! while one of its shards has a subscriber (shards report their first and
//! last subscriber per topic), publishes each delivery once as an envelope
//! carrying the encoded frame, and hands what arrives — its own
//! publications excepted: they reach this node's shards directly — to its
//! shards. Sequence numbers per origin and topic make loss visible
//! (`ringcast_broker_gaps_total`).
//!
//! Everything that arrives is treated as coming from a stranger: it must
//! carry a valid tag under the cluster secret (`seal`), be fresh, be new
//! (control messages), and what it asks is validated as the local API would
//! (a publication's frame, a replicated change) before it is applied.
//! Refusals are counted in `ringcast_broker_rejected_total{reason}` and
//! logged at most once per reason every 10 s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;
use tracing::{debug, warn};

use super::envelope::{
    self, Body, Gaps, Heartbeat, Publication, PushReply, PushRequest, Query, QueryReply, Received, Replicate,
    Seen, Trigger,
};
use super::seal::{self, Rejected, ReplayGuard, Sealer};
use super::transport::{Incoming, Transport, OPERATION_TIMEOUT};
use crate::bus::{BoxFuture, Broker, Interest, InterestReceiver, Peers};
use crate::bus::{ShardMsg, ShardRouter};
use crate::clients::ClientRegistry;
use crate::handle::PushOutcome;
use crate::metrics::{self, Histogram};
use crate::panics::{contained, spawn_tokio, Where};
use crate::proto::query::Ask;
use crate::publish::{Batch, Delivery, PublishError};
use crate::webrocket::WebRocket;

/// Frame bytes on their way to the broker at once; past it publishers get
/// an error (counted) instead of queueing without bound.
const OUTGOING_BYTES: usize = 64 * 1024 * 1024;
/// A topic nobody here holds any more is unsubscribed this long after.
const LINGER: Duration = Duration::from_millis(500);

#[derive(Default)]
pub struct ClusterMetrics {
    pub reconnects: Arc<AtomicU64>,
    pub publish_errors: AtomicU64,
    pub gaps: AtomicU64,
    pub bad_envelopes: AtomicU64,
    pub received: AtomicU64,
    pub subscriptions: AtomicU64,
    pub triggers_lost: AtomicU64,
    /// By `Rejected::index`.
    pub rejected: [AtomicU64; Rejected::ALL.len()],
    /// Publish → the broker took it.
    pub round_trip: Arc<Histogram>,
}

impl ClusterMetrics {
    pub fn render(&self, broker: &str, out: &mut String) {
        use std::fmt::Write;
        let series: [(&str, &str, &str, u64); 7] = [
            (
                "ringcast_broker_triggers_lost_total",
                "counter",
                "WebRocket triggers forwarded to a node whose workers had gone.",
                self.triggers_lost.load(Ordering::Relaxed),
            ),
            (
                "ringcast_broker_reconnects_total",
                "counter",
                "Reconnections to the broker.",
                self.reconnects.load(Ordering::Relaxed),
            ),
            (
                "ringcast_broker_publish_errors_total",
                "counter",
                "Publications refused because the broker was unreachable, slow or its outgoing queue full.",
                self.publish_errors.load(Ordering::Relaxed),
            ),
            (
                "ringcast_broker_gaps_total",
                "counter",
                "Publications from other nodes (or this one) that never arrived, by sequence number.",
                self.gaps.load(Ordering::Relaxed),
            ),
            (
                "ringcast_broker_bad_envelopes_total",
                "counter",
                "Broker messages that were not a known cluster envelope.",
                self.bad_envelopes.load(Ordering::Relaxed),
            ),
            (
                "ringcast_broker_received_total",
                "counter",
                "Publications received from the broker.",
                self.received.load(Ordering::Relaxed),
            ),
            (
                "ringcast_broker_subscriptions",
                "gauge",
                "Topics this node is subscribed to on the broker.",
                self.subscriptions.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, value) in series {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{broker=\"{broker}\"}} {value}"
            );
        }
        let name = "ringcast_broker_rejected_total";
        let _ = writeln!(
            out,
            "# HELP {name} Broker messages refused and never applied: unsigned, bad_signature, malformed, stale, \
             replayed, bad_frame, sequence_jump, bad_change.\n# TYPE {name} counter"
        );
        for r in Rejected::ALL {
            let value = self.rejected[r.index()].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{broker=\"{broker}\",reason=\"{}\"}} {value}", r.label());
        }
        self.round_trip.render(
            "ringcast_broker_round_trip_seconds",
            "From handing publications to the broker to its acknowledgement.",
            &format!("broker=\"{broker}\""),
            out,
        );
    }
}

#[derive(Default)]
struct TopicState {
    /// Shards with a subscriber.
    shards: usize,
    /// The broker confirmed our subscription.
    confirmed: bool,
    subscribing: bool,
    /// Joins waiting for the confirmation.
    waiting: Vec<oneshot::Sender<()>>,
    /// When the last shard left.
    idle_since: Option<Instant>,
}

#[derive(Default)]
struct State {
    topics: HashMap<Box<str>, TopicState>,
    gaps: Gaps,
    /// Proxy ClientIds connected here: how many connections hold each.
    clients: HashMap<String, usize>,
}

/// What a node trusts of what arrives through the broker.
pub struct Trust {
    pub sealer: Sealer,
    /// `cluster.replay_window_ms`.
    pub window_ms: u64,
    /// Every vhost path of the config file: replicated changes never
    /// create or delete them.
    pub configured_vhosts: Vec<String>,
}

/// Control envelopes remembered for the replay check.
const REPLAY_MEMORY: usize = 65_536;
/// A refusal of one reason is logged at most once per this.
const REJECT_LOG_EVERY: Duration = Duration::from_secs(10);

pub struct Cluster {
    node: String,
    trust: Trust,
    replays: Mutex<ReplayGuard>,
    /// Per reason: when a refusal was last logged, and how many since.
    reject_log: Mutex<[(Option<Instant>, u64); Rejected::ALL.len()]>,
    transport: Arc<dyn Transport>,
    router: ShardRouter,
    clients: Arc<ClientRegistry>,
    pub metrics: Arc<ClusterMetrics>,
    state: Mutex<State>,
    /// Sequence numbers per topic; held across handing a batch to the
    /// transport, so numbers reach the broker in order.
    seq: tokio::sync::Mutex<HashMap<Box<str>, u64>>,
    outgoing: Arc<tokio::sync::Semaphore>,
    requests: Mutex<HashMap<u64, oneshot::Sender<PushOutcome>>>,
    next_request: AtomicU64,
    /// Answers to this node's queries, by query id.
    queries: Mutex<HashMap<u64, tokio::sync::mpsc::UnboundedSender<QueryReply>>>,
    /// Other nodes seen on the control subject, and the vhosts they have
    /// workers for.
    members: Mutex<HashMap<String, Member>>,
    wr: Arc<WebRocket>,
}

struct Member {
    seen: Instant,
    worker_vhosts: Vec<String>,
}

/// A node unheard of this long is gone.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a query waits for the other nodes' answers.
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

fn outcome_of(o: i32) -> PushOutcome {
    use crate::proto::push_reply::Outcome;
    match Outcome::try_from(o) {
        Ok(Outcome::Queued) => PushOutcome::Queued,
        Ok(Outcome::SlowConsumer) => PushOutcome::SlowConsumer,
        _ => PushOutcome::NotConnected,
    }
}

fn outcome_code(o: PushOutcome) -> i32 {
    use crate::proto::push_reply::Outcome;
    (match o {
        PushOutcome::Queued => Outcome::Queued,
        PushOutcome::NotConnected => Outcome::NotConnected,
        PushOutcome::SlowConsumer => Outcome::SlowConsumer,
    }) as i32
}

impl Cluster {
    /// Starts the node's side of the cluster on the current tokio runtime:
    /// what shards report (`interest`), what arrives from the transport
    /// (`incoming`), and the
    /// sweep that drops topics nobody holds.
    pub fn start(
        (transport, incoming): (Arc<dyn Transport>, tokio::sync::mpsc::Receiver<Incoming>),
        interest: InterestReceiver,
        router: ShardRouter,
        clients: Arc<ClientRegistry>,
        metrics: Arc<ClusterMetrics>,
        wr: Arc<WebRocket>,
        trust: Trust,
    ) -> Arc<Cluster> {
        let c = Arc::new(Cluster {
            node: wr.node.clone(),
            trust,
            replays: Mutex::new(ReplayGuard::new(REPLAY_MEMORY)),
            reject_log: Mutex::new([(None, 0); Rejected::ALL.len()]),
            transport,
            router,
            clients,
            metrics,
            state: Mutex::new(State::default()),
            seq: tokio::sync::Mutex::new(HashMap::new()),
            outgoing: Arc::new(tokio::sync::Semaphore::new(OUTGOING_BYTES)),
            requests: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            queries: Mutex::new(HashMap::new()),
            members: Mutex::new(HashMap::new()),
            wr,
        });
        spawn_tokio(Where::Broker, c.clone().run_interest(interest));
        spawn_tokio(Where::Broker, c.clone().run_incoming(incoming));
        spawn_tokio(Where::Broker, c.clone().sweep());
        // This node's inbox (answers, triggers, session replies) and the
        // control subject every node hears (replication, heartbeats, queries).
        let t = c.clone();
        spawn_tokio(Where::Broker, async move {
            let _ = t.transport.subscribe(t.transport.reply_subject(&t.node)).await;
            let _ = t.transport.subscribe(t.transport.control_subject()).await;
        });
        spawn_tokio(Where::Broker, c.clone().heartbeat());
        c
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `body` from this node, sealed for the broker.
    fn seal(&self, body: Body) -> Bytes {
        self.trust.sealer.seal_message(&envelope::envelope(&self.node, seal::unix_ms(), body))
    }

    /// Counts a refused message and logs it, at most once per reason per
    /// `REJECT_LOG_EVERY` (a flood of forgeries must not flood the log).
    fn reject(&self, why: Rejected, detail: &str) {
        metrics::inc(&self.metrics.rejected[why.index()]);
        let mut log = self.reject_log.lock().unwrap_or_else(|e| e.into_inner());
        let (last, since) = &mut log[why.index()];
        *since += 1;
        if last.is_none_or(|t| t.elapsed() >= REJECT_LOG_EVERY) {
            warn!(
                reason = why.label(),
                refused = *since,
                detail,
                "refused a broker message (count since the last such line; others are not logged for 10 s)"
            );
            *last = Some(Instant::now());
            *since = 0;
        }
    }

    /// Opens, decodes and checks what arrived: the envelope, if it is to
    /// be applied.
    fn admit(&self, m: Incoming) -> Option<(Received, Option<String>)> {
        let (bytes, tag) = match self.trust.sealer.open(m.payload) {
            Ok(x) => x,
            Err(why) => {
                self.reject(why, &format!("on {}", m.subject));
                return None;
            }
        };
        let r = match envelope::decode(bytes) {
            Ok(r) => r,
            Err(e) => {
                metrics::inc(&self.metrics.bad_envelopes);
                self.reject(Rejected::Malformed, &e.to_string());
                return None;
            }
        };
        let now = seal::unix_ms();
        if !seal::fresh(r.sent_at_ms, now, self.trust.window_ms) {
            self.reject(
                Rejected::Stale,
                &format!("from {} sent at {} ms, now {now} ms (clocks apart?)", r.origin, r.sent_at_ms),
            );
            return None;
        }
        // This node's own envelopes come back from the broker: its
        // publications were delivered here directly, its control messages
        // are for the others. Push requests and replies carry their own ids
        // (a client may have moved here meanwhile).
        if r.origin == self.node && !matches!(r.body, Body::PushRequest(_) | Body::PushReply(_)) {
            return None;
        }
        // A control message is taken once: a genuine one replayed within
        // the window would otherwise repeat a push or an admin change.
        // Publications are deduplicated by their sequence numbers.
        if self.trust.sealer.is_secure() && !matches!(r.body, Body::Publication(_)) {
            let first =
                self.replays.lock().unwrap_or_else(|e| e.into_inner()).first(tag, now, self.trust.window_ms);
            if !first {
                self.reject(Rejected::Replayed, &format!("from {}", r.origin));
                return None;
            }
        }
        Some((r, m.reply))
    }

    async fn run_interest(self: Arc<Self>, mut rx: InterestReceiver) {
        while let Some(op) = rx.recv().await {
            match op {
                Interest::Join { topic, confirmed } => self.join(topic, confirmed),
                Interest::Leave { topic } => {
                    let mut st = self.state();
                    if let Some(t) = st.topics.get_mut(&topic) {
                        t.shards = t.shards.saturating_sub(1);
                        if t.shards == 0 {
                            t.idle_since = Some(Instant::now());
                        }
                    }
                }
                Interest::Publish { batch } => {
                    let c = self.clone();
                    spawn_tokio(Where::Broker, async move {
                        if let Err(e) = c.publish_frames(batch).await {
                            debug!(error = %e, "a client broadcast did not reach the broker");
                        }
                    });
                }
            }
        }
    }

    fn join(self: &Arc<Self>, topic: Box<str>, confirmed: oneshot::Sender<()>) {
        let mut st = self.state();
        let t = st.topics.entry(topic.clone()).or_default();
        t.shards += 1;
        t.idle_since = None;
        if t.confirmed {
            let _ = confirmed.send(());
            return;
        }
        t.waiting.push(confirmed);
        if t.subscribing {
            return;
        }
        t.subscribing = true;
        drop(st);
        let c = self.clone();
        spawn_tokio(Where::Broker, async move {
            let subject = c.transport.topic_subject(&topic);
            let result = c.transport.subscribe(subject).await;
            let mut st = c.state();
            let Some(t) = st.topics.get_mut(&topic) else { return };
            t.subscribing = false;
            // Unconfirmed (broker down): the join holds locally; the
            // transport subscribes when the broker returns.
            t.confirmed = result.is_ok();
            if t.confirmed {
                metrics::inc(&c.metrics.subscriptions);
            }
            for w in t.waiting.drain(..) {
                let _ = w.send(());
            }
        });
    }

    /// Unsubscribes topics nobody here has held for `LINGER`.
    async fn sweep(self: Arc<Self>) {
        let mut tick = tokio::time::interval(LINGER / 2);
        loop {
            tick.tick().await;
            let idle: Vec<(Box<str>, bool)> = {
                let mut st = self.state();
                let done: Vec<(Box<str>, bool)> = st
                    .topics
                    .iter()
                    .filter(|(_, t)| !t.subscribing && t.idle_since.is_some_and(|i| i.elapsed() >= LINGER))
                    .map(|(k, t)| (k.clone(), t.confirmed))
                    .collect();
                for (topic, _) in &done {
                    st.topics.remove(topic);
                    st.gaps.forget_topic(topic);
                }
                done
            };
            for (topic, confirmed) in idle {
                if confirmed {
                    metrics::dec(&self.metrics.subscriptions);
                }
                let _ = self.transport.unsubscribe(self.transport.topic_subject(&topic)).await;
            }
        }
    }

    async fn run_incoming(self: Arc<Self>, mut rx: tokio::sync::mpsc::Receiver<Incoming>) {
        while let Some(m) = rx.recv().await {
            // Each message in its own containment: a bug that one message
            // from the broker reaches costs that message, not the cluster.
            let _ = contained(Where::Broker, self.clone().on_incoming(m)).await;
        }
    }

    async fn on_incoming(self: Arc<Self>, m: Incoming) {
        crate::panics::inject(Where::Broker);
        let Some((Received { origin, body, .. }, reply)) = self.admit(m) else { return };
        match body {
            Body::Publication(p) => self.on_publication(&origin, p).await,
            Body::PushRequest(r) => {
                let c = self.clone();
                spawn_tokio(Where::Broker, async move { c.on_push_request(r, reply).await });
            }
            Body::PushReply(r) => {
                let waiting = self.requests.lock().unwrap_or_else(|e| e.into_inner()).remove(&r.id);
                if let Some(w) = waiting {
                    let _ = w.send(outcome_of(r.outcome));
                }
            }
            Body::Replicate(r) => self.on_replicate(&origin, &r.writes_json).await,
            Body::Heartbeat(h) => self.on_heartbeat(origin, h.worker_vhosts),
            Body::Query(q) => {
                let c = self.clone();
                spawn_tokio(Where::Broker, async move { c.on_query(q).await });
            }
            Body::QueryReply(r) => {
                let waiting = self.queries.lock().unwrap_or_else(|e| e.into_inner()).get(&r.id).cloned();
                if let Some(w) = waiting {
                    let _ = w.send(r);
                }
            }
            Body::Trigger(t) => {
                if self.wr.workers.assign(&t.vhost, t.message).is_err() {
                    metrics::inc(&self.metrics.triggers_lost);
                    warn!(vhost = %t.vhost, "a trigger forwarded here found no worker; dropped");
                }
            }
        }
    }

    async fn on_publication(&self, origin: &str, p: Publication) {
        metrics::inc(&self.metrics.received);
        // The frame goes to sockets as it is: it must be one complete data
        // frame, as this node would encode it, not a Close or half a frame.
        if let Err(e) = crate::ws::encode::check_data_frame(&p.frame) {
            self.reject(Rejected::BadFrame, &format!("from {origin} on {:?}: {}", p.topic, e.0));
            return;
        }
        let seen = {
            let mut st = self.state();
            if !st.topics.contains_key(p.topic.as_str()) {
                return; // an unsubscribe on its way
            }
            st.gaps.see(origin, &p.topic, p.seq)
        };
        match seen {
            Seen::Duplicate => return,
            Seen::Reset => {
                metrics::inc(&self.metrics.gaps);
                self.reject(
                    Rejected::SequenceJump,
                    &format!("from {origin} on {:?}: seq {}; the stream restarts", p.topic, p.seq),
                );
                return;
            }
            Seen::After(missed) => {
                metrics::add(&self.metrics.gaps, missed);
                warn!(origin, topic = %p.topic, missed, "publications from the broker missing");
            }
            Seen::InOrder => {}
        }
        let batch: Batch = Arc::from(vec![Delivery::new(&p.topic, p.frame)]);
        // Parks while a shard's inbox is full: the broker's buffers take
        // the difference (and loss past them shows as gaps).
        let _ = self.router.dispatch(batch).await;
    }

    async fn on_push_request(&self, r: PushRequest, reply: Option<String>) {
        let session = (!r.session_vhost.is_empty()).then(|| crate::webrocket::workers::parse_sid(&r.client));
        let outcome = match session {
            // A worker's reply to a WebRocket session here.
            Some(Some((node, to))) if crate::webrocket::workers::is_node(node, &self.node) => self
                .router
                .send_to_session(to, &r.session_vhost, r.body.clone())
                .await
                .unwrap_or(PushOutcome::NotConnected),
            Some(_) => PushOutcome::NotConnected,
            None => self.push_here(&r).await,
        };
        self.answer(&r, reply, outcome).await;
    }

    async fn push_here(&self, r: &PushRequest) -> PushOutcome {
        match self.clients.lookup(&r.client) {
            None => PushOutcome::NotConnected,
            Some(owner) => self.router.push(owner, r.body.clone()).await.unwrap_or(PushOutcome::NotConnected),
        }
    }

    async fn answer(&self, r: &PushRequest, reply: Option<String>, outcome: PushOutcome) {
        let Some(to) = reply.or((!r.reply_to.is_empty()).then(|| r.reply_to.clone())) else { return };
        let body = self.seal(Body::PushReply(PushReply { id: r.id, outcome: outcome_code(outcome) }));
        if let Err(e) = self.transport.publish(vec![(to, body)]).await {
            debug!(error = %e, "a push reply did not reach the broker");
        }
    }

    /// Asks the node(s) subscribed to `subject` to push (or hand a session
    /// reply) and waits for the outcome; NotConnected when nobody listens.
    async fn request_node(
        &self,
        subject: String,
        mut request: PushRequest,
    ) -> Result<PushOutcome, PublishError> {
        if !self.transport.connected() {
            return Err(self.unreachable());
        }
        if self.transport.has_requests() {
            let body = self.seal(Body::PushRequest(request));
            let asked = self.transport.request(subject.clone(), body).expect("has requests");
            return match asked.await {
                Ok(None) => Ok(PushOutcome::NotConnected),
                Ok(Some(answer)) => {
                    let incoming = Incoming { subject, payload: answer, reply: None };
                    match self.admit(incoming) {
                        Some((Received { body: Body::PushReply(r), .. }, _)) => Ok(outcome_of(r.outcome)),
                        _ => Err(PublishError::Broker("an unreadable or unsigned push reply".into())),
                    }
                }
                Err(e) => Err(PublishError::Broker(e.to_string())),
            };
        }
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        let forget = || self.requests.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        request.reply_to = self.transport.reply_subject(&self.node);
        request.id = id;
        let body = self.seal(Body::PushRequest(request));
        match self.transport.publish(vec![(subject, body)]).await {
            Err(e) => {
                forget();
                Err(PublishError::Broker(e.to_string()))
            }
            // Nobody subscribes: no node has it.
            Ok(counts) if counts.first() == Some(&Some(0)) => {
                forget();
                Ok(PushOutcome::NotConnected)
            }
            Ok(_) => match tokio::time::timeout(OPERATION_TIMEOUT, rx).await {
                Ok(Ok(outcome)) => Ok(outcome),
                _ => {
                    forget();
                    Err(PublishError::Broker("the node holding the client did not answer".into()))
                }
            },
        }
    }

    /// Tells the others every second that this node is alive, and which
    /// vhosts it has workers for.
    async fn heartbeat(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if !self.transport.connected() {
                continue;
            }
            let beat = Heartbeat { worker_vhosts: self.wr.workers.vhosts() };
            let body = self.seal(Body::Heartbeat(beat));
            let _ = self.transport.publish(vec![(self.transport.control_subject(), body)]).await;
            let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
            members.retain(|_, m| m.seen.elapsed() < MEMBER_TIMEOUT * 2);
        }
    }

    fn on_heartbeat(&self, origin: String, worker_vhosts: Vec<String>) {
        let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        members.insert(origin, Member { seen: Instant::now(), worker_vhosts });
    }

    /// Another node's WebRocket change: checked as the admin API checks
    /// its own, then committed here too and applied.
    async fn on_replicate(&self, origin: &str, json: &[u8]) {
        let writes: Vec<crate::webrocket::store::Write> = match serde_json::from_slice(json) {
            Ok(w) => w,
            Err(e) => {
                metrics::inc(&self.metrics.bad_envelopes);
                self.reject(
                    Rejected::Malformed,
                    &format!("an unreadable replicated change from {origin}: {e}"),
                );
                return;
            }
        };
        if let Err(why) = crate::webrocket::replicate::check(&writes, &self.trust.configured_vhosts) {
            self.reject(Rejected::BadChange, &format!("from {origin}: {why}"));
            return;
        }
        if let Err(e) = self.wr.directory.store.apply(writes.clone()).await {
            warn!(error = %e, "a replicated change could not be stored here");
        }
        for effect in crate::webrocket::replicate::apply(&self.wr, &writes) {
            let _ = self.router.to_every_shard(|| ShardMsg::from(&effect)).await;
        }
    }

    /// Another node asks: this node's part of the answer.
    async fn on_query(&self, q: Query) {
        let mut reply = QueryReply { id: q.id, ..Default::default() };
        match q.ask {
            Some(Ask::PresenceTopic(topic)) => {
                let (count, users) = self.router.presence(&topic).await;
                reply.count = count as u64;
                reply.users = users.iter().map(|u| u.to_string()).collect();
            }
            Some(Ask::ChannelCountsVhost(vhost)) => {
                for (name, n) in self.router.channel_counts(&vhost).await {
                    reply.channels.push(name);
                    reply.counts.push(n as u64);
                }
            }
            Some(Ask::ChannelExistsTopic(topic)) => {
                let d = &self.wr.directory;
                let exists = d.channel_of_topic(&topic).is_some_and(|(v, channel)| v.channel_exists(channel));
                reply.count = u64::from(exists);
            }
            None => return,
        }
        let body = self.seal(Body::QueryReply(reply));
        let _ = self.transport.publish(vec![(q.reply_to, body)]).await;
    }

    fn unreachable(&self) -> PublishError {
        PublishError::Broker(format!(
            "{} unreachable: {}",
            self.transport.name(),
            self.transport.last_error()
        ))
    }
}

impl Broker for Cluster {
    fn name(&self) -> &'static str {
        self.transport.name()
    }

    fn publish_frames(&self, batch: Batch) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(async move {
            let result = self.publish_inner(batch).await;
            if result.is_err() {
                metrics::inc(&self.metrics.publish_errors);
            }
            result
        })
    }

    fn degraded(&self) -> Option<String> {
        (!self.transport.connected())
            .then(|| format!("{}: {}", self.transport.name(), self.transport.last_error()))
    }
}

impl Peers for Cluster {
    fn push_elsewhere(&self, client: &str, body: Bytes) -> BoxFuture<'_, Result<PushOutcome, PublishError>> {
        let request = PushRequest { client: client.to_string(), body, ..Default::default() };
        Box::pin(self.request_node(self.transport.client_subject(client), request))
    }

    fn session_reply_elsewhere(
        &self,
        node: &str,
        vhost: &str,
        sid: &str,
        frame: Bytes,
    ) -> BoxFuture<'_, Result<PushOutcome, PublishError>> {
        let request = PushRequest {
            client: sid.to_string(),
            body: frame,
            session_vhost: vhost.to_string(),
            ..Default::default()
        };
        Box::pin(self.request_node(self.transport.reply_subject(node), request))
    }

    fn replicate(&self, writes: Vec<crate::webrocket::store::Write>) {
        let Ok(json) = serde_json::to_vec(&writes) else { return };
        let body = self.seal(Body::Replicate(Replicate { writes_json: json.into() }));
        let subject = self.transport.control_subject();
        let transport = self.transport.clone();
        let metrics = self.metrics.clone();
        self.wr.runtime.spawn(async move {
            if let Err(e) = transport.publish(vec![(subject, body)]).await {
                metrics::inc(&metrics.publish_errors);
                warn!(error = %e, "a WebRocket change did not reach the other nodes (they keep their state)");
            }
        });
    }

    fn trigger_elsewhere(&self, vhost: &str, message: String) -> bool {
        let nodes: Vec<String> = {
            let members = self.members.lock().unwrap_or_else(|e| e.into_inner());
            members
                .iter()
                .filter(|(_, m)| {
                    m.seen.elapsed() < MEMBER_TIMEOUT && m.worker_vhosts.iter().any(|v| v == vhost)
                })
                .map(|(n, _)| n.clone())
                .collect()
        };
        if nodes.is_empty() {
            return false;
        }
        let pick = self.next_request.fetch_add(1, Ordering::Relaxed) as usize % nodes.len();
        let subject = self.transport.reply_subject(&nodes[pick]);
        let body = self.seal(Body::Trigger(Trigger { vhost: vhost.to_string(), message }));
        let transport = self.transport.clone();
        let metrics = self.metrics.clone();
        self.wr.runtime.spawn(async move {
            if transport.publish(vec![(subject, body)]).await.is_err() {
                metrics::inc(&metrics.triggers_lost);
            }
        });
        true
    }

    fn gather(&self, ask: Ask) -> BoxFuture<'_, Vec<QueryReply>> {
        Box::pin(async move {
            let expected = {
                let members = self.members.lock().unwrap_or_else(|e| e.into_inner());
                members.values().filter(|m| m.seen.elapsed() < MEMBER_TIMEOUT).count()
            };
            if expected == 0 || !self.transport.connected() {
                return Vec::new();
            }
            let id = self.next_request.fetch_add(1, Ordering::Relaxed);
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            self.queries.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
            let q = Query { id, reply_to: self.transport.reply_subject(&self.node), ask: Some(ask) };
            let body = self.seal(Body::Query(q));
            let mut answers = Vec::new();
            if self.transport.publish(vec![(self.transport.control_subject(), body)]).await.is_ok() {
                let deadline = tokio::time::Instant::now() + QUERY_TIMEOUT;
                while answers.len() < expected {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(r)) => answers.push(r),
                        _ => break,
                    }
                }
            }
            self.queries.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            answers
        })
    }

    fn client_here(&self, client: &str, here: bool) {
        let subject = self.transport.client_subject(client);
        let mut st = self.state();
        let n = st.clients.entry(client.to_string()).or_default();
        let change = if here {
            *n += 1;
            *n == 1
        } else {
            *n = n.saturating_sub(1);
            *n == 0
        };
        if !here && *n == 0 {
            st.clients.remove(client);
        }
        drop(st);
        if change {
            let t = self.transport.clone();
            spawn_tokio(Where::Broker, async move {
                let _ = if here { t.subscribe(subject).await } else { t.unsubscribe(subject).await };
            });
        }
    }
}

impl Cluster {
    async fn publish_inner(&self, batch: Batch) -> Result<(), PublishError> {
        if !self.transport.connected() {
            return Err(self.unreachable());
        }
        let bytes: usize = batch.iter().map(|d| d.frame.len() + d.topic.len()).sum();
        let permits = u32::try_from(bytes.min(OUTGOING_BYTES)).unwrap_or(u32::MAX);
        let Ok(_permit) = self.outgoing.try_acquire_many(permits) else {
            return Err(PublishError::Broker(format!(
                "outgoing queue to {} full ({} MiB waiting)",
                self.transport.name(),
                OUTGOING_BYTES >> 20
            )));
        };
        let started = Instant::now();
        // Numbers are taken and handed over under one lock: they reach the
        // broker in order.
        let mut seq = self.seq.lock().await;
        let items = batch
            .iter()
            .map(|d| {
                let n = match seq.get_mut(&d.topic) {
                    Some(n) => n,
                    None => seq.entry(d.topic.clone()).or_insert(0),
                };
                *n += 1;
                let p = Publication { topic: d.topic.to_string(), seq: *n, frame: d.frame.clone() };
                (self.transport.topic_subject(&d.topic), self.seal(Body::Publication(p)))
            })
            .collect();
        let result = self.transport.publish(items).await;
        if result.is_ok() {
            // This node's subscribers get it here, in sequence order (the
            // lock is still held); its echo from the broker is ignored.
            let _ = self.router.dispatch(batch).await;
        }
        drop(seq);
        self.metrics.round_trip.record(started.elapsed());
        result.map(|_| ()).map_err(|e| {
            if self.transport.connected() {
                PublishError::Broker(e.to_string())
            } else {
                self.unreachable()
            }
        })
    }
}
