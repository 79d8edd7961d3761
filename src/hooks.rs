//! Backend HTTP hooks (docs/protocols.md §4, §5). Shards hand requests to the
//! integration thread over a bounded channel and await a oneshot reply; the
//! requests run on hyper's pooled keep-alive client there. A slow or dead
//! backend costs a shard nothing but the waiting connections.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::mpsc;
use tracing::debug;

use crate::panics::{self, Where};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    Connect,
    Join,
    Message,
    Close,
}

impl HookKind {
    pub const ALL: [HookKind; 4] = [HookKind::Connect, HookKind::Join, HookKind::Message, HookKind::Close];

    pub fn name(self) -> &'static str {
        match self {
            HookKind::Connect => "connect",
            HookKind::Join => "join",
            HookKind::Message => "message",
            HookKind::Close => "close",
        }
    }
}

#[derive(Debug, Clone)]
pub struct HookRequest {
    pub kind: HookKind,
    pub method: hyper::Method,
    pub url: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    pub timeout: Duration,
    /// Extra attempts for a request that never reached the backend.
    pub retries: u32,
    /// Also retry after the request may have been sent.
    pub retry_sent: bool,
    /// Largest response body accepted.
    pub max_response: usize,
    /// The vhost it serves: each vhost's requests run within its own limit.
    pub vhost: Arc<str>,
    /// When it was made: its first attempt's deadline runs from here, so
    /// time spent queued counts.
    pub queued_at: Instant,
    /// https: the private CA the backend's certificate must chain to
    /// (`hooks.ca_file`); None: the system's roots.
    pub ca_file: Option<Arc<std::path::Path>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    Response {
        status: u16,
        content_type: Option<HeaderValue>,
        body: Bytes,
    },
    /// No connection to the backend (refused, reset, DNS): 502 territory.
    Unreachable(String),
    /// No complete answer within the timeout: 504 territory.
    Timeout,
    /// The gateway's own limit of hook requests in flight was reached.
    Busy,
    /// The response body exceeded `max_response`.
    TooLarge,
}

impl HookOutcome {
    fn metric_index(&self) -> usize {
        match self {
            HookOutcome::Response { status, .. } if (200..300).contains(status) => 0,
            HookOutcome::Response { .. } => 1,
            HookOutcome::Unreachable(_) => 2,
            HookOutcome::Timeout => 3,
            HookOutcome::Busy => 4,
            HookOutcome::TooLarge => 5,
        }
    }
}

const OUTCOMES: [&str; 6] = ["2xx", "refused", "unreachable", "timeout", "busy", "too_large"];
#[derive(Debug, Default)]
pub struct HookMetrics {
    /// Requests queued or running (for a shutdown that lets them finish).
    pending: AtomicU64,
    requests: [[AtomicU64; 6]; 4],
    latency: [crate::metrics::Histogram; 4],
}

impl HookMetrics {
    pub fn record(&self, kind: HookKind, outcome: &HookOutcome, took: Duration) {
        let k = kind as usize;
        self.requests[k][outcome.metric_index()].fetch_add(1, Relaxed);
        if !matches!(outcome, HookOutcome::Busy) {
            self.latency[k].record(took);
        }
    }

    /// Requests that got no usable answer: unreachable, timeout, too large.
    pub fn failures(&self) -> u64 {
        self.requests.iter().map(|k| k[2].load(Relaxed) + k[3].load(Relaxed) + k[5].load(Relaxed)).sum()
    }

    /// Latency percentiles (ms) per hook that was called.
    pub fn percentiles_ms(&self) -> std::collections::BTreeMap<String, crate::metrics::Percentiles> {
        HookKind::ALL
            .iter()
            .filter(|k| self.latency[**k as usize].count() > 0)
            .map(|k| (k.name().to_string(), self.latency[*k as usize].percentiles_ms()))
            .collect()
    }

    pub fn pending(&self) -> u64 {
        self.pending.load(Relaxed)
    }

    pub fn count(&self, kind: HookKind, outcome: &str) -> u64 {
        let o = OUTCOMES.iter().position(|x| *x == outcome).expect("known outcome");
        self.requests[kind as usize][o].load(Relaxed)
    }

    /// Prometheus text: requests by hook and outcome, latency histograms.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let _ =
            writeln!(out, "# HELP ringcast_hook_requests_total Backend hook requests by hook and outcome.");
        let _ = writeln!(out, "# TYPE ringcast_hook_requests_total counter");
        for kind in HookKind::ALL {
            for (o, name) in OUTCOMES.iter().enumerate() {
                let v = self.requests[kind as usize][o].load(Relaxed);
                let _ = writeln!(
                    out,
                    "ringcast_hook_requests_total{{hook=\"{}\",outcome=\"{name}\"}} {v}",
                    kind.name()
                );
            }
        }
        let _ = writeln!(out, "# HELP ringcast_hook_duration_seconds Backend hook latency.");
        let _ = writeln!(out, "# TYPE ringcast_hook_duration_seconds histogram");
        for kind in HookKind::ALL {
            let labels = format!("hook=\"{}\"", kind.name());
            self.latency[kind as usize].render_series("ringcast_hook_duration_seconds", &labels, out);
        }
    }
}

struct HookJob {
    request: HookRequest,
    reply: oneshot::Sender<HookOutcome>,
}

/// Submits hook requests from any thread (shards).
#[derive(Clone)]
pub struct HookSender {
    tx: mpsc::Sender<HookJob>,
    /// Close notifications: a queue of their own, so a burst of
    /// disconnects never delays a connect.
    close_tx: mpsc::Sender<HookJob>,
    metrics: Arc<HookMetrics>,
}

pub struct HookReceiver {
    rx: mpsc::Receiver<HookJob>,
    close_rx: mpsc::Receiver<HookJob>,
}

/// The hook queues: `capacity` requests (connect, join, message) and as
/// many close notifications.
pub fn channel(capacity: usize, metrics: Arc<HookMetrics>) -> (HookSender, HookReceiver) {
    let (tx, rx) = mpsc::channel(capacity);
    let (close_tx, close_rx) = mpsc::channel(capacity);
    (HookSender { tx, close_tx, metrics }, HookReceiver { rx, close_rx })
}

#[cfg(test)]
impl HookReceiver {
    /// A close notification waiting in the queue (shard unit tests).
    pub(crate) fn try_take_close(&mut self) -> Option<HookRequest> {
        self.close_rx.try_recv().ok().map(|job| job.request)
    }
}

impl HookSender {
    /// Queues `request`; the receiver yields its outcome. Never blocks: a
    /// full queue answers `Busy` at once.
    pub fn submit(&self, request: HookRequest) -> oneshot::Receiver<HookOutcome> {
        let (reply, rx) = oneshot::channel();
        let kind = request.kind;
        self.metrics.pending.fetch_add(1, Relaxed);
        if let Err(e) = self.tx.try_send(HookJob { request, reply }) {
            self.metrics.pending.fetch_sub(1, Relaxed);
            let job = match e {
                mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
            };
            self.metrics.record(kind, &HookOutcome::Busy, Duration::ZERO);
            let _ = job.reply.send(HookOutcome::Busy);
        }
        rx
    }

    /// Queues `request` if there is room, else hands it back: for requests
    /// that must not be dropped (close notifications), whose caller retries.
    pub fn try_submit(
        &self,
        request: HookRequest,
    ) -> Result<oneshot::Receiver<HookOutcome>, Box<HookRequest>> {
        let (reply, rx) = oneshot::channel();
        self.metrics.pending.fetch_add(1, Relaxed);
        let queue = if request.kind == HookKind::Close { &self.close_tx } else { &self.tx };
        match queue.try_send(HookJob { request, reply }) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job)) => {
                self.metrics.pending.fetch_sub(1, Relaxed);
                Err(Box::new(job.request))
            }
        }
    }

    pub fn metrics(&self) -> &HookMetrics {
        &self.metrics
    }
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One pooled client per trust: the system's roots (or none, if no https
/// URL needs them), and one for each `ca_file` configured. Built at start,
/// so an unreadable CA file stops the start.
#[derive(Clone)]
pub struct Backends {
    default: HttpClient,
    private: std::collections::HashMap<Arc<std::path::Path>, HttpClient>,
}

impl Backends {
    pub fn new(config: &crate::config::Config) -> Result<Backends, crate::tls::TlsError> {
        let mut private = std::collections::HashMap::new();
        let mut system_needed = false;
        for v in &config.vhosts {
            match &v.hooks.ca_file {
                Some(path) if !private.contains_key(path.as_path()) => {
                    let tls = crate::tls::client_config(Some(path))?;
                    private.insert(Arc::from(path.as_path()), client(tls));
                }
                Some(_) => {}
                None => system_needed |= v.urls().any(|u| u.starts_with("https:")),
            }
        }
        let default = match system_needed {
            true => crate::tls::client_config(None)?,
            false => Arc::new(trusting_nothing()),
        };
        Ok(Backends { default: client(default), private })
    }

    /// The client whose trust the request asks for; one with a `ca_file`
    /// not loaded at start (none: vhosts come from the start's config)
    /// would get the default, which fails closed.
    fn for_request(&self, r: &HookRequest) -> &HttpClient {
        r.ca_file.as_ref().and_then(|path| self.private.get(path)).unwrap_or(&self.default)
    }
}

/// TLS settings that verify no server: for a client used with http only.
fn trusting_nothing() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// A pooled keep-alive client over http and https with `tls`'s trust.
fn client(tls: Arc<rustls::ClientConfig>) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    // hyper-rustls hands plain http through and wraps https in TLS.
    connector.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls).clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    // The idle timeout needs the pool timer; without it idle connections
    // to the backend were never closed.
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(1024)
        .build(https)
}

/// Hook requests executing at once per vhost, and for close notifications
/// (each holds one backend connection).
const MAX_CONCURRENT_REQUESTS: usize = 256;

/// Runs hook requests until every sender is gone (integration thread).
pub async fn run(mut receiver: HookReceiver, metrics: Arc<HookMetrics>, backends: Backends) {
    // Bounded concurrency keeps the backend's keep-alive connections busy
    // instead of opening a new connection for every request of a burst
    // (measured: 15,000 closes at once took seconds each without it).
    // One limit per vhost and one for close notifications: a vhost whose
    // backend hangs fills its own, never another's. The loop never waits
    // for a permit itself (that made every vhost wait behind one).
    let mut pools: std::collections::HashMap<Arc<str>, Arc<tokio::sync::Semaphore>> = Default::default();
    let closes = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_REQUESTS));
    // Request ids: a per-process random prefix and a counter, sent to the
    // backend as `X-Request-Id` and logged with the call, so one hook call
    // can be found in both logs.
    let mut prefix = [0u8; 4];
    let _ = getrandom::fill(&mut prefix);
    let prefix = u32::from_le_bytes(prefix);
    let mut calls: u64 = 0;
    loop {
        let job = tokio::select! {
            biased;
            Some(job) = receiver.rx.recv() => job,
            Some(job) = receiver.close_rx.recv() => job,
            else => break,
        };
        let pool = if job.request.kind == HookKind::Close {
            closes.clone()
        } else {
            pools
                .entry(job.request.vhost.clone())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_REQUESTS)))
                .clone()
        };
        let client = backends.for_request(&job.request).clone();
        let metrics = metrics.clone();
        calls += 1;
        let request_id = format!("{prefix:08x}-{calls}");
        panics::spawn_tokio(Where::Integration, async move {
            panics::inject(Where::Integration);
            let started = Instant::now();
            // Waiting for room counts against the first attempt's deadline.
            let deadline = tokio::time::Instant::from_std(job.request.queued_at + job.request.timeout);
            let outcome = match tokio::time::timeout_at(deadline, pool.acquire_owned()).await {
                Ok(Ok(permit)) => {
                    let outcome = execute(&client, &job.request, &request_id).await;
                    drop(permit);
                    outcome
                }
                _ => HookOutcome::Timeout,
            };
            let took = started.elapsed();
            debug!(
                request_id,
                hook = job.request.kind.name(),
                url = %job.request.url,
                outcome = OUTCOMES[outcome.metric_index()],
                ms = took.as_secs_f64() * 1e3,
                "hook call"
            );
            metrics.record(job.request.kind, &outcome, took);
            let _ = job.reply.send(outcome);
            metrics.pending.fetch_sub(1, Relaxed);
        });
    }
}

async fn execute(client: &HttpClient, r: &HookRequest, request_id: &str) -> HookOutcome {
    let mut attempt = 0;
    loop {
        let outcome = attempt_once(client, r, request_id, attempt == 0).await;
        let (retry, outcome) = match outcome {
            Attempt::Done(o) => (false, o),
            Attempt::NotSent(e) => (true, HookOutcome::Unreachable(e)),
            Attempt::MaybeSent(o) => (r.retry_sent, o),
        };
        if !retry || attempt >= r.retries {
            return outcome;
        }
        attempt += 1;
        debug!(request_id, url = %r.url, attempt, "retrying hook request");
        tokio::time::sleep(Duration::from_millis(20 << attempt.min(5))).await;
    }
}

enum Attempt {
    Done(HookOutcome),
    /// Failed before the request could reach the backend: safe to retry.
    NotSent(String),
    /// Failed after it may have reached the backend.
    MaybeSent(HookOutcome),
}

async fn attempt_once(client: &HttpClient, r: &HookRequest, request_id: &str, first: bool) -> Attempt {
    let mut builder =
        hyper::Request::builder().method(r.method.clone()).uri(&r.url).header("x-request-id", request_id);
    for (k, v) in &r.headers {
        builder = builder.header(k, v);
    }
    let request = match builder.body(Full::new(r.body.clone())) {
        Ok(req) => req,
        Err(e) => return Attempt::Done(HookOutcome::Unreachable(format!("invalid hook request: {e}"))),
    };
    // The first attempt's deadline runs from when the request was queued;
    // a retry gets a whole timeout of its own.
    let deadline = match first {
        true => tokio::time::Instant::from_std(r.queued_at + r.timeout),
        false => tokio::time::Instant::now() + r.timeout,
    };
    let response = match tokio::time::timeout_at(deadline, client.request(request)).await {
        Err(_) => return Attempt::MaybeSent(HookOutcome::Timeout),
        Ok(Err(e)) if e.is_connect() => return Attempt::NotSent(error_chain(&e)),
        Ok(Err(e)) => return Attempt::MaybeSent(HookOutcome::Unreachable(error_chain(&e))),
        Ok(Ok(resp)) => resp,
    };
    let status = response.status().as_u16();
    let content_type = response.headers().get(CONTENT_TYPE).cloned();
    let body = Limited::new(response.into_body(), r.max_response).collect();
    match tokio::time::timeout_at(deadline, body).await {
        Err(_) => Attempt::MaybeSent(HookOutcome::Timeout),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Attempt::Done(HookOutcome::TooLarge),
        Ok(Err(e)) => Attempt::MaybeSent(HookOutcome::Unreachable(e.to_string())),
        Ok(Ok(b)) => Attempt::Done(HookOutcome::Response { status, content_type, body: b.to_bytes() }),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
