//! One client connection: the upgrade handshake (a short-lived task, with
//! the backend's connect hook), then the connection's state, which the
//! shard's driver (`driver.rs`) feeds with what it reads and writes from.
//! Decoding and dispatch to the dialects live here; socket I/O does not.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::send_queue::{OverBudget, SendQueue};
use super::topics::ConnKey;
use super::{Shard, CLOSE_LINGER};
use crate::clients::Owner;
use crate::config::{DuplicateClient, OnBackendError, VhostConfig};
use crate::dialect::roadrunner::{self, Command, Reply};
use crate::dialect::{proxy, Dialect};
use crate::hooks::{HookKind, HookOutcome, HookRequest};
use crate::metrics::{self, Refusal};
use crate::rt::{self, TcpStream};
use crate::ws::handshake::{self, http_response, HttpError, MAX_REQUEST_HEAD};
use crate::ws::{close_frame, data_frame, Decoder, Event, Flow};

pub type ConnRef = Rc<RefCell<ConnState>>;

/// A connection: fanout pushes frames, the keepalive pass pings, shutdown
/// closes, hook tasks reply, the driver reads and writes.
#[derive(Debug, Default)]
pub struct ConnState {
    /// This connection's handle (`Shard::conn` resolves it), set at registration.
    pub owner: Owner,
    pub queue: SendQueue,
    /// The socket, once the handshake handed it to the driver.
    pub(super) fd: Option<OwnedFd>,
    /// Only while it holds something (a partial frame, a fragmented
    /// message, spare buffers, a stop): most connections are idle.
    decoder: Option<Box<Decoder>>,
    vhost: usize,
    /// Input is held while this many backend requests are in flight.
    pub(super) pause_at: usize,
    /// The decoder stopped at a message because input is held; it has
    /// buffered frames to resume from.
    pub(super) input_held: bool,
    pub(super) write_shut: bool,
    /// Input may be waiting: reported by the ring, not yet read to EAGAIN.
    pub(super) readable: bool,
    /// In the driver's list of connections to read from.
    pub(super) read_listed: bool,
    /// Marked for the driver's next flush pass.
    pub(super) scheduled: bool,
    /// An output poll is armed (the socket was full).
    pub(super) output_armed: bool,
    /// Topics joined; names shared with the shard's topic index.
    pub topics: Vec<Rc<str>>,
    pub last_rx_ms: u64,
    pub ping_outstanding: bool,
    /// Backend requests (or other pending work) for this connection's
    /// messages not yet answered; input is held meanwhile.
    pub(crate) in_flight: usize,
    /// WebRocket dialect: the session.
    pub(crate) wr: Option<Box<crate::webrocket::session::Session>>,
    /// Proxy dialect: the ClientId.
    client: Option<Rc<str>>,
    /// The reason of the first Close sent or received.
    close_reason: Option<Box<str>>,
    /// A Close is queued: nothing more is sent, input is ignored.
    pub(super) closing: bool,
    /// Drop the connection now.
    pub(super) forced: bool,
    /// The publication followed for latency this connection carries
    /// (`stats::ProbeMark`; 0: none).
    pub(crate) probe: crate::stats::ProbeMark,
}

impl ConnState {
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Queues a frame within `budget` bytes; frames for a closing
    /// connection are dropped silently.
    pub fn push(&mut self, frame: Bytes, budget: usize) -> Result<(), OverBudget> {
        self.enqueue(|q| q.push(frame, budget))
    }

    /// Queues the answer to a ping (see `SendQueue::push_pong`).
    pub fn push_pong(&mut self, pong: Bytes, budget: usize) -> Result<(), OverBudget> {
        self.enqueue(|q| q.push_pong(pong, budget))
    }

    /// Runs `add` on the queue unless closing; marks the connection for the
    /// driver's next pass if the queue was empty (else it is marked already).
    fn enqueue(
        &mut self,
        add: impl FnOnce(&mut SendQueue) -> Result<(), OverBudget>,
    ) -> Result<(), OverBudget> {
        if self.closing {
            return Ok(());
        }
        let was_empty = self.queue.is_empty();
        add(&mut self.queue)?;
        if was_empty {
            self.wake();
        }
        Ok(())
    }

    /// Queues a Close (`code` and `reason`; none: an empty Close) as the last
    /// frame and remembers the reason for the close hook. False if already closing.
    pub fn begin_close(&mut self, code: Option<u16>, reason: &str) -> bool {
        if self.closing {
            return false;
        }
        let frame = match code {
            Some(code) => close_frame(code, reason),
            None => data_frame(OpCode::Control(Control::Close), b""),
        };
        self.close_reason.get_or_insert_with(|| reason.into());
        self.queue.push_unbounded(frame);
        self.closing = true;
        self.wake();
        true
    }

    /// Marks the frame just queued as the probe `id`'s; false if closing
    /// (the frame was not queued).
    pub fn carry_probe(&mut self, id: u32) -> bool {
        if self.closing {
            return false;
        }
        self.probe = crate::stats::probe_mark(id, self.queue.frames());
        true
    }

    pub fn force_close(&mut self) {
        self.forced = true;
        self.wake();
    }

    /// Marks the connection for the driver's next flush pass (once).
    pub(crate) fn wake(&mut self) {
        if !self.scheduled {
            self.scheduled = true;
            super::driver::schedule(self.owner);
        }
    }
}

/// A backend's message to a client: text if it is UTF-8, else binary.
pub fn message_frame(body: &[u8]) -> Bytes {
    let opcode = if std::str::from_utf8(body).is_ok() { Data::Text } else { Data::Binary };
    data_frame(OpCode::Data(opcode), body)
}

/// Answers a connection over `max_connections` with 503 and closes it.
pub async fn refuse(mut stream: TcpStream) {
    let resp = HttpError::new(503, "server at max_connections").response();
    write_with_timeout(&mut stream, &resp).await;
}

async fn write_with_timeout(stream: &mut TcpStream, bytes: &[u8]) {
    let _ = futures_lite::future::or(async { stream.write_all(bytes).await }, async {
        rt::sleep(Duration::from_secs(1)).await;
        Ok(())
    })
    .await;
}

/// Releases the global connection slot if the handshake does not hand the
/// connection to the driver (which releases it when the connection ends).
struct Slot(Rc<Shard>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The handshake of an accepted connection; on success the connection is
/// registered, its socket handed to the shard's driver, and this task ends.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let slot = Slot(shard.clone());
    // Boxed: the handshake's state is large and short-lived.
    if Box::pin(open(shard, stream)).await {
        std::mem::forget(slot);
    }
}

/// Handshake, connect hook, registration, the 101, the hand-over; true if
/// the driver has the connection now.
async fn open(shard: Rc<Shard>, mut stream: TcpStream) -> bool {
    rt::set_nodelay(&stream);
    if shard.config.server.send_buffer > 0 {
        rt::set_send_buffer(&stream, shard.config.server.send_buffer);
    }
    let peer = stream.peer_addr().ok();
    let Some(Accepted { vhost, wr, upgrade, client, rest: mut leftover }) =
        upgrade(&shard, &mut stream, peer).await
    else {
        return false;
    };
    let v = &shard.vhost_config(vhost);
    // Registered before the 101 goes out: once a client sees the upgrade
    // complete, the gateway counts it and a push can reach it.
    let state = Rc::new(RefCell::new(ConnState {
        last_rx_ms: shard.now_ms(),
        wr: wr.map(|v| Box::new(crate::webrocket::session::Session::new(v))),
        vhost,
        pause_at: if v.dialect == Dialect::Proxy { v.max_in_flight_per_client } else { 1 },
        ..Default::default()
    }));
    let owner = shard.register(&state, vhost);
    if let Some(id) = &client {
        match shard.clients.claim(id, owner, v.duplicate_client == DuplicateClient::Replace).await {
            Ok(None) => {}
            Ok(Some(old)) => shard.replace(old).await,
            Err(live) => {
                shard.unregister(owner.key, vhost);
                metrics::inc(&shard.metrics.handshake_failures);
                shard.metrics.refuse(if live.is_some() {
                    Refusal::DuplicateClient
                } else {
                    Refusal::ShuttingDown
                });
                let e = match live {
                    Some(_) => HttpError::new(409, format!("client {id} is already connected")),
                    None => HttpError::new(503, "gateway shutting down"),
                };
                write_with_timeout(&mut stream, &e.response()).await;
                return false;
            }
        }
        state.borrow_mut().client = Some(Rc::from(&**id));
    }
    let taken = match stream.write_all(&upgrade.response()).await {
        Ok(()) => rt::take_socket(&stream),
        Err(e) => Err(e),
    };
    let fd = match taken {
        Ok(fd) => fd,
        Err(e) => {
            tracing::debug!(error = %e, "connection failed before the driver took it");
            finish(&shard, &state, peer);
            return false;
        }
    };
    // The glommio stream and its poll source go; the driver has the socket.
    drop(stream);
    tracing::debug!(
        shard = shard.id,
        conn = owner.id,
        vhost = %v.path,
        dialect = %v.dialect,
        ?peer,
        client = client.as_deref(),
        "connection open"
    );
    {
        let mut st = state.borrow_mut();
        st.fd = Some(fd);
        super::driver::adopt(&shard, &mut st);
    }
    if !leftover.is_empty() {
        on_bytes(&shard, &state, &mut leftover);
    }
    true
}

struct Accepted {
    vhost: usize,
    /// WebRocket dialect: the vhost's live state.
    wr: Option<Arc<crate::webrocket::Vhost>>,
    upgrade: handshake::Upgrade,
    /// Proxy dialect: the ClientId from the path.
    client: Option<String>,
    /// Bytes that followed the request.
    rest: Vec<u8>,
}

enum HandshakeEnd {
    /// Answer with this HTTP response and close.
    Refused(Vec<u8>, Refusal),
    /// The peer went away or the socket failed: nobody to answer.
    Gone,
}

impl From<HttpError> for HandshakeEnd {
    fn from(e: HttpError) -> Self {
        let why = match e.status {
            403 => Refusal::Origin,
            404 => Refusal::NotFound,
            408 => Refusal::Timeout,
            _ => Refusal::BadRequest,
        };
        HandshakeEnd::Refused(e.response(), why)
    }
}

/// Reads the upgrade request within the handshake timeout and asks the
/// backend's connect hook; answers refusals itself.
async fn upgrade(shard: &Shard, stream: &mut TcpStream, peer: Option<SocketAddr>) -> Option<Accepted> {
    let timeout = Duration::from_millis(shard.config.limits.handshake_timeout_ms);
    let read = futures_lite::future::or(read_upgrade(shard, stream), async {
        rt::sleep(timeout).await;
        Err(HttpError::new(408, "handshake timeout").into())
    })
    .await;
    let outcome = match read {
        Ok(accepted) => authorize(shard, &accepted, peer).await.map(|()| accepted),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(accepted) => Some(accepted),
        Err(end) => {
            metrics::inc(&shard.metrics.handshake_failures);
            match end {
                HandshakeEnd::Refused(resp, why) => {
                    shard.metrics.refuse(why);
                    let status =
                        String::from_utf8_lossy(resp.split(|&b| b == b'\r').next().unwrap_or_default());
                    tracing::debug!(shard = shard.id, ?peer, %status, reason = why.name(), "upgrade refused");
                    write_with_timeout(stream, &resp).await;
                }
                HandshakeEnd::Gone => shard.metrics.refuse(Refusal::PeerGone),
            }
            None
        }
    }
}

async fn read_upgrade(shard: &Shard, stream: &mut TcpStream) -> Result<Accepted, HandshakeEnd> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let filled = buf.len();
        buf.resize((filled + 1024).min(MAX_REQUEST_HEAD + 1), 0);
        let n = stream.read(&mut buf[filled..]).await.map_err(|_| HandshakeEnd::Gone)?;
        buf.truncate(filled + n);
        if n == 0 {
            return Err(HandshakeEnd::Gone);
        }
        metrics::add(&shard.metrics.bytes_in, n as u64);
        let Some((upgrade, used)) = handshake::parse(&buf)? else {
            continue;
        };
        // WebRocket vhosts added at run time first: a proxy prefix such as
        // `/` would take every path otherwise.
        let (vhost, client) = match shard.webrocket.directory.vhost(&upgrade.path) {
            Some(v) if !v.from_config => (shard.config.vhosts.len(), None),
            _ => route(&shard.config.vhosts, &upgrade.path)?,
        };
        if !shard.vhost_config(vhost).allowed_origin.allows(upgrade.origin.as_deref()) {
            return Err(HttpError::new(403, "origin not allowed").into());
        }
        let wr = match shard.vhost_config(vhost).dialect {
            Dialect::WebRocket => {
                Some(shard.webrocket.directory.vhost(&upgrade.path).ok_or_else(|| {
                    HttpError::new(404, format!("no WebSocket endpoint at {}", upgrade.path))
                })?)
            }
            _ => None,
        };
        return Ok(Accepted { vhost, wr, upgrade, client, rest: buf.split_off(used) });
    }
}

/// The vhost for `path`: an exact path, else the longest proxy prefix.
fn route(vhosts: &[VhostConfig], path: &str) -> Result<(usize, Option<String>), HttpError> {
    if let Some(i) = vhosts.iter().position(|v| v.dialect != Dialect::Proxy && v.path == path) {
        return Ok((i, None));
    }
    let prefix = vhosts
        .iter()
        .enumerate()
        .filter(|(_, v)| v.dialect == Dialect::Proxy && path.starts_with(&v.path))
        .max_by_key(|(_, v)| v.path.len());
    match prefix {
        Some((i, v)) => match proxy::client_id(&v.path, path) {
            Some(id) => Ok((i, Some(id.to_string()))),
            None => Err(HttpError::new(
                400,
                format!(
                    "invalid ClientId in {path}: one path segment of A-Z a-z 0-9 - _ . ~, at most {} bytes",
                    proxy::MAX_CLIENT_ID
                ),
            )),
        },
        None => Err(HttpError::new(404, format!("no WebSocket endpoint at {path}"))),
    }
}

fn header_pairs(pairs: &[(&'static str, String)]) -> Vec<(HeaderName, HeaderValue)> {
    pairs
        .iter()
        .filter_map(|(k, v)| Some((HeaderName::from_static(k), HeaderValue::from_str(v).ok()?)))
        .collect()
}

fn hook_request(
    v: &VhostConfig,
    kind: HookKind,
    method: hyper::Method,
    url: String,
    max_response: usize,
) -> HookRequest {
    HookRequest {
        kind,
        method,
        url,
        headers: Vec::new(),
        body: Bytes::new(),
        timeout: Duration::from_millis(v.hooks.timeout_ms),
        retries: v.hooks.retries,
        retry_sent: v.hooks.retry_sent,
        max_response,
    }
}

/// The connect hook: `GET {backend}/<ClientId>` for proxy vhosts (body `ok`
/// allows), `GET {hooks.connect}` for others (2xx allows).
async fn authorize(shard: &Shard, a: &Accepted, peer: Option<SocketAddr>) -> Result<(), HandshakeEnd> {
    let v = &shard.vhost_config(a.vhost);
    let url = match (&a.client, &v.backend, &v.hooks.connect) {
        (Some(id), Some(backend), _) => proxy::client_url(backend, id),
        (None, _, Some(url)) => url.clone(),
        _ => return Ok(()),
    };
    let mut forward = a.upgrade.forward.clone();
    if let Some(peer) = peer {
        match forward.iter_mut().find(|(k, _)| *k == "x-forwarded-for") {
            Some((_, v)) => *v = format!("{v}, {}", peer.ip()),
            None => forward.push(("x-forwarded-for", peer.ip().to_string())),
        }
    }
    forward.push(("x-ringcast-path", a.upgrade.path.clone()));
    let mut request = hook_request(v, HookKind::Connect, hyper::Method::GET, url, 64 * 1024);
    request.headers = header_pairs(&forward);
    let outcome = shard.call_hook(request).await;
    let refusal = |status: u16, message: &str| {
        Err(HandshakeEnd::Refused(HttpError::new(status, message).response(), Refusal::BackendError))
    };
    match outcome {
        HookOutcome::Response { status, body, .. }
            if (a.client.is_some() && proxy::connect_allowed(status, &body))
                || (a.client.is_none() && (200..300).contains(&status)) =>
        {
            Ok(())
        }
        HookOutcome::Response { status, content_type, body } => {
            let ct =
                content_type.as_ref().and_then(|c| c.to_str().ok()).unwrap_or("text/plain; charset=utf-8");
            Err(HandshakeEnd::Refused(http_response(status, ct, "", &body), Refusal::BackendRefused))
        }
        HookOutcome::Unreachable(e) => {
            if shard.log_allowed() {
                tracing::warn!(vhost = %v.path, error = %e, "connect hook: backend unreachable (logged once a second)");
            }
            refusal(502, "backend unreachable")
        }
        HookOutcome::Timeout => refusal(504, "backend timeout"),
        HookOutcome::Busy => refusal(503, "too many backend requests in flight"),
        HookOutcome::TooLarge => refusal(502, "backend answer too large"),
    }
}

/// `DELETE {backend}/<ClientId>` with the close reason (proxy), or
/// `POST {hooks.close}` with `{"connection","reason"}` (others).
fn close_hook(
    v: &VhostConfig,
    conn_id: u64,
    client: Option<&str>,
    reason: Option<&str>,
) -> Option<HookRequest> {
    let mut request = match (client, &v.backend, &v.hooks.close) {
        (Some(id), Some(backend), _) => {
            let mut r =
                hook_request(v, HookKind::Close, hyper::Method::DELETE, proxy::client_url(backend, id), 4096);
            r.body = Bytes::from(proxy::close_body(reason));
            r
        }
        (None, _, Some(url)) => {
            let mut r = hook_request(v, HookKind::Close, hyper::Method::POST, url.clone(), 4096);
            let body = serde_json::json!({ "connection": conn_id.to_string(), "reason": reason });
            r.body = Bytes::from(body.to_string());
            r.headers.push((CONTENT_TYPE, HeaderValue::from_static("application/json")));
            r
        }
        _ => return None,
    };
    if request.headers.is_empty() {
        request.headers.push((CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8")));
    }
    Some(request)
}

/// Unregisters a connection whose socket is closed (or never handed over)
/// and tells the backend it is gone.
pub(super) fn finish(shard: &Rc<Shard>, conn: &ConnRef, peer: Option<SocketAddr>) {
    let (owner, vhost, client, reason) = {
        let mut st = conn.borrow_mut();
        (st.owner, st.vhost, st.client.clone(), st.close_reason.take())
    };
    shard.unregister(owner.key, vhost);
    if let Some(id) = &client {
        shard.clients.release(id, owner);
    }
    let v = &shard.vhost_config(vhost);
    tracing::debug!(
        shard = shard.id,
        conn = owner.id,
        vhost = %v.path,
        ?peer,
        reason = reason.as_deref().unwrap_or("peer closed or socket failed"),
        "connection closed"
    );
    if let Some(request) = close_hook(v, owner.id, client.as_deref(), reason.as_deref()) {
        // Not awaited (the outcome is counted in the hook metrics); a
        // full hook queue puts it in the shard's backlog, not a timer.
        shard.notify_closed(request);
    }
}

/// Decodes what arrived and hands each message to the dialect; stops at a
/// message while input is held for the backend (`input_held`).
pub(super) fn on_bytes(shard: &Rc<Shard>, conn: &ConnRef, input: &mut [u8]) {
    let (mut decoder, key, vhost, pause_at) = {
        let mut st = conn.borrow_mut();
        (st.decoder.take().map(|d| *d).unwrap_or_default(), st.owner.key, st.vhost, st.pause_at)
    };
    let max = shard.config.limits.max_message_size;
    let result = decoder.feed(input, max, &mut |event| {
        let flow = handle_event(shard, conn, key, vhost, event);
        let st = conn.borrow();
        if flow == Flow::Continue && st.in_flight >= pause_at {
            Flow::Pause
        } else {
            flow
        }
    });
    let mut st = conn.borrow_mut();
    st.decoder = (!decoder.is_blank()).then(|| Box::new(decoder));
    match result {
        Ok(Flow::Pause) => st.input_held = true,
        Ok(_) => {}
        Err(v) => {
            metrics::inc(&shard.metrics.protocol_errors);
            shard.start_close(&mut st, Some(v.code), v.reason, CLOSE_LINGER);
        }
    }
}

fn handle_event(shard: &Rc<Shard>, conn: &ConnRef, key: ConnKey, vhost: usize, event: Event<'_>) -> Flow {
    let budget = shard.config.limits.max_backpressure;
    let dialect = shard.vhost_config(vhost).dialect;
    let reply = match event {
        Event::Text(text) => {
            metrics::inc(&shard.metrics.messages_in);
            match dialect {
                Dialect::Echo => Some(data_frame(OpCode::Data(Data::Text), text)),
                Dialect::RoadRunner => roadrunner_message(shard, conn, key, vhost, text),
                Dialect::Proxy => {
                    forward(shard, conn, vhost, Bytes::copy_from_slice(text), true);
                    None
                }
                Dialect::WebRocket => {
                    super::webrocket::on_message(shard, conn, Some(text));
                    None
                }
            }
        }
        Event::Binary(bin) => {
            metrics::inc(&shard.metrics.messages_in);
            match dialect {
                Dialect::Echo => Some(data_frame(OpCode::Data(Data::Binary), bin)),
                Dialect::RoadRunner => Some(roadrunner::error_frame("binary frames are not supported")),
                Dialect::Proxy => {
                    forward(shard, conn, vhost, Bytes::copy_from_slice(bin), false);
                    None
                }
                Dialect::WebRocket => {
                    super::webrocket::on_message(shard, conn, None);
                    None
                }
            }
        }
        Event::Ping(payload) => {
            let pong = data_frame(OpCode::Control(Control::Pong), payload);
            let mut st = conn.borrow_mut();
            if st.push_pong(pong, budget).is_err() {
                shard.close_slow_consumer(&mut st);
            }
            return if st.is_closing() { Flow::Stop } else { Flow::Continue };
        }
        Event::Pong(_) => None,
        Event::Close(code, reason) => {
            // Echo the status code, as RFC 6455 §5.5.1 suggests; the close
            // hook gets the client's reason.
            let mut st = conn.borrow_mut();
            st.close_reason.get_or_insert_with(|| reason.into());
            shard.start_close(&mut st, code, "", CLOSE_LINGER);
            return Flow::Stop;
        }
    };
    let mut st = conn.borrow_mut();
    if let Some(frame) = reply {
        if st.push(frame, budget).is_err() {
            shard.close_slow_consumer(&mut st);
        }
    }
    if st.is_closing() {
        Flow::Stop
    } else {
        Flow::Continue
    }
}

fn roadrunner_message(
    shard: &Rc<Shard>,
    conn: &ConnRef,
    key: ConnKey,
    vhost: usize,
    text: &mut [u8],
) -> Option<Bytes> {
    let mut buffers = shard.json_buffers.borrow_mut();
    let command = match roadrunner::parse_command(text, &mut buffers) {
        Ok(c) => c,
        Err(bad) => return Some(roadrunner::error_frame(&bad.0)),
    };
    let mut st = conn.borrow_mut();
    match command {
        Command::Headers => None,
        Command::Join { broker, topics } => {
            let v = &shard.vhost_config(vhost);
            match &v.hooks.join {
                Some(url) if shard.acceptable(broker, &topics) => {
                    st.in_flight += 1;
                    let owner = st.owner;
                    // No borrow may be held across a spawn.
                    drop(st);
                    join_with_hook(shard, owner, v, url, broker, &topics);
                    None
                }
                _ => {
                    // Subscribed before the reply is queued: anything
                    // published after the client sees @join reaches it.
                    match shard.join(key, &mut st, broker, &topics) {
                        None => Some(roadrunner::reply_frame(Reply::JoinFailed, &topics)),
                        Some(confirmations) if confirmations.is_empty() => {
                            Some(roadrunner::reply_frame(Reply::Joined, &topics))
                        }
                        Some(confirmations) => {
                            // A network broker: @join once it confirmed
                            // this node's subscriptions (cluster-wide
                            // delivery from then on). Input waits meanwhile.
                            st.in_flight += 1;
                            let frame = roadrunner::reply_frame(Reply::Joined, &topics);
                            let owner = st.owner;
                            drop(st);
                            rt::spawn(reply_when_confirmed(shard.clone(), owner, confirmations, frame));
                            None
                        }
                    }
                }
            }
        }
        Command::Leave { broker, topics } => {
            let ok = shard.leave(key, &mut st, broker, &topics);
            Some(roadrunner::reply_frame(if ok { Reply::Left } else { Reply::LeaveFailed }, &topics))
        }
    }
}

/// Asks the join hook (`POST {"connection","topics"}`), then joins or
/// refuses. The connection's input is held meanwhile, so its commands keep
/// their order. The task holds the connection's handle, not the connection:
/// if it closed while the backend thought, the answer is dropped (its slab
/// slot may already serve another client).
/// The caller has counted the request in `in_flight`.
fn join_with_hook(
    shard: &Rc<Shard>,
    owner: Owner,
    v: &VhostConfig,
    url: &str,
    broker: Option<&str>,
    topics: &[&str],
) {
    let mut request = hook_request(v, HookKind::Join, hyper::Method::POST, url.to_string(), 4096);
    let body = serde_json::json!({ "connection": owner.id.to_string(), "topics": topics });
    request.body = Bytes::from(body.to_string());
    request.headers.push((CONTENT_TYPE, HeaderValue::from_static("application/json")));
    let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    let broker = broker.map(str::to_string);
    let shard = shard.clone();
    rt::spawn(async move {
        let outcome = shard.call_hook(request).await;
        let Some(conn) = shard.conn(owner) else {
            return;
        };
        let allowed = matches!(outcome, HookOutcome::Response { status: 200..=299, .. });
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        // The borrow ends before any await.
        let confirmations = {
            let mut st = conn.borrow_mut();
            let joined =
                if allowed { shard.join(owner.key, &mut st, broker.as_deref(), &names) } else { None };
            if joined.is_none() {
                st.in_flight -= 1;
                let frame = roadrunner::reply_frame(Reply::JoinFailed, &names);
                if st.push(frame, shard.config.limits.max_backpressure).is_err() {
                    shard.close_slow_consumer(&mut st);
                }
                st.wake();
            }
            joined
        };
        let Some(confirmations) = confirmations else { return };
        let frame = roadrunner::reply_frame(Reply::Joined, &names);
        reply_when_confirmed(shard, owner, confirmations, frame).await;
    });
}

/// Queues `frame` (an `@join`) once the broker confirmed every new
/// subscription, then releases the connection's input. The caller counted
/// the wait in `in_flight`.
async fn reply_when_confirmed(
    shard: Rc<Shard>,
    owner: Owner,
    confirmations: Vec<futures_channel::oneshot::Receiver<()>>,
    frame: Bytes,
) {
    for c in confirmations {
        let _ = c.await;
    }
    let Some(conn) = shard.conn(owner) else {
        return;
    };
    let mut st = conn.borrow_mut();
    st.in_flight -= 1;
    if st.push(frame, shard.config.limits.max_backpressure).is_err() {
        shard.close_slow_consumer(&mut st);
    }
    st.wake();
}

/// Proxy dialect: `POST {backend}/<ClientId>` with the message; a non-empty
/// 2xx answer goes back to the client.
fn forward(shard: &Rc<Shard>, conn: &ConnRef, vhost: usize, body: Bytes, is_text: bool) {
    let v = &shard.vhost_config(vhost);
    let mut st = conn.borrow_mut();
    let (Some(client), Some(backend)) = (st.client.clone(), &v.backend) else {
        return;
    };
    let url = proxy::client_url(backend, &client);
    let mut request =
        hook_request(v, HookKind::Message, hyper::Method::POST, url, shard.config.limits.max_message_size);
    let content_type = if is_text { "text/plain; charset=utf-8" } else { "application/octet-stream" };
    request.headers.push((CONTENT_TYPE, HeaderValue::from_static(content_type)));
    request.body = body;
    st.in_flight += 1;
    let owner = st.owner;
    // No borrow may be held across a spawn.
    drop(st);
    let shard = shard.clone();
    rt::spawn(async move {
        let outcome = shard.call_hook(request).await;
        // Gone meanwhile: nobody to answer (the slot may hold another client).
        let Some(conn) = shard.conn(owner) else {
            return;
        };
        let v = &shard.vhost_config(vhost);
        let mut st = conn.borrow_mut();
        st.in_flight -= 1;
        match outcome {
            HookOutcome::Response { status: 200..=299, body, .. } => {
                if !body.is_empty()
                    && st.push(message_frame(&body), shard.config.limits.max_backpressure).is_err()
                {
                    shard.close_slow_consumer(&mut st);
                }
            }
            failed => {
                metrics::inc(&shard.metrics.backend_errors);
                tracing::debug!(client = %client, outcome = ?failed, "backend did not take a message");
                if v.on_backend_error == OnBackendError::Close {
                    shard.start_close(&mut st, Some(1011), "backend error", CLOSE_LINGER);
                }
            }
        }
        st.wake();
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn routing_prefers_exact_paths_then_the_longest_proxy_prefix() {
        let c = Config::from_toml(
            "[[vhost]]\npath=\"/ws\"\ndialect=\"roadrunner\"\n\
             [[vhost]]\npath=\"/\"\ndialect=\"proxy\"\nbackend=\"http://a\"\n\
             [[vhost]]\npath=\"/chat/\"\ndialect=\"proxy\"\nbackend=\"http://b\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(route(&c.vhosts, "/ws").unwrap(), (0, None));
        assert_eq!(route(&c.vhosts, "/joe").unwrap(), (1, Some("joe".into())));
        assert_eq!(route(&c.vhosts, "/chat/joe").unwrap(), (2, Some("joe".into())));
        assert_eq!(route(&c.vhosts, "/chat/a/b").unwrap_err().status, 400);
        let only_rr = Config::default();
        assert_eq!(route(&only_rr.vhosts, "/x").unwrap_err().status, 404);
    }
}
