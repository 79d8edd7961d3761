//! Backend workers' WebSocket connections on the API listener
//! (`/workers<vhost path>`, `Authorization: Bearer <vhost token>`), on the
//! integration thread (tokio): the upgrade, then each worker's messages
//! (replies to sessions, broadcasts to channels) and its triggers. The pools
//! they join are `webrocket::workers::Workers`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tracing::debug;

use super::context::ApiContext;
use super::http::{bearer, error, token_eq, Reply};
use crate::bus::ports::channel_elsewhere;
use crate::bus::{Broker, Peers, ShardRouter};
use crate::dialect::webrocket::{self as wire, ErrorId, WorkerCommand, WrError};
use crate::handle::PushOutcome;
use crate::publish::Delivery;
use crate::webrocket::workers::{is_node, parse_sid, WORKER_QUEUE};
use crate::webrocket::{Vhost, WebRocket};

/// `GET /workers<vhost path>`: a backend worker's WebSocket upgrade, with
/// the vhost's access token as a bearer token (401 otherwise).
pub fn worker_route(mut req: Request<Incoming>, vhost: &str, ctx: &Arc<ApiContext>) -> Reply {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let Some(v) = ctx.webrocket.directory.vhost(vhost) else {
        return error(StatusCode::NOT_FOUND, &format!("no webrocket vhost {vhost}"));
    };
    let presented = bearer(req.headers()).to_string();
    if !token_eq(&presented, &v.token()) {
        let mut r =
            error(StatusCode::UNAUTHORIZED, "missing or wrong vhost access token (Authorization: Bearer …)");
        r.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let h = req.headers();
    let is_upgrade = h
        .get(hyper::header::UPGRADE)
        .and_then(|u| u.to_str().ok())
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let key = h.get(hyper::header::SEC_WEBSOCKET_KEY).cloned();
    let version_ok = h.get(hyper::header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v.as_bytes() == b"13");
    let (true, Some(key), true) = (is_upgrade && req.method() == Method::GET, key, version_ok) else {
        return error(StatusCode::UPGRADE_REQUIRED, "a WebSocket upgrade (version 13) is expected here");
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    let ctx = ctx.clone();
    let token: Arc<str> = presented.as_str().into();
    crate::panics::spawn_tokio(crate::panics::Where::Integration, async move {
        let io = match upgrade.await {
            Ok(io) => TokioIo::new(io),
            Err(e) => {
                debug!(error = %e, "worker upgrade failed");
                return;
            }
        };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        let limits = &ctx.telemetry.config.limits;
        let link = WorkerLink {
            vhost: v,
            token,
            wr: ctx.webrocket.clone(),
            router: ctx.router.clone(),
            broker: ctx.broker.clone(),
            peers: ctx.peers.clone(),
            ping_interval: std::time::Duration::from_millis(limits.ping_interval_ms),
            idle_timeout: std::time::Duration::from_millis(limits.idle_timeout_ms),
        };
        serve(ws, link).await;
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(hyper::header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(hyper::header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        h.insert(hyper::header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    r
}

/// What a worker connection works with.
pub struct WorkerLink {
    pub vhost: Arc<Vhost>,
    /// The token it connected with (a rotation drops it).
    pub token: Arc<str>,
    pub wr: Arc<WebRocket>,
    pub router: ShardRouter,
    pub broker: Arc<dyn Broker>,
    pub peers: Option<Arc<dyn Peers>>,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
}

/// Serves one upgraded worker connection until it ends, the worker stops
/// answering pings, or its vhost's token is rotated.
pub async fn serve<S>(ws: tokio_tungstenite::WebSocketStream<S>, link: WorkerLink)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let WorkerLink { vhost, token, wr, router, broker, peers, ping_interval, idle_timeout } = link;
    let (tx, mut triggers) = mpsc::channel::<String>(WORKER_QUEUE);
    let queued = Arc::new(AtomicUsize::new(0));
    let id = wr.workers.add(&vhost.path, tx, queued.clone(), token);
    debug!(vhost = %vhost.path, worker = id, "worker connected");
    let (mut sink, mut stream) = ws.split();
    let mut ping = tokio::time::interval(ping_interval);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            trigger = triggers.recv() => match trigger {
                Some(t) => {
                    queued.fetch_sub(t.len(), Ordering::Relaxed);
                    if sink.send(Message::text(t)).await.is_err() { break }
                }
                // Dropped from the pool: token rotated or vhost deleted.
                None => {
                    let _ = sink.send(Message::Close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                        code: 1008.into(),
                        reason: "worker access revoked".into(),
                    }))).await;
                    break;
                }
            },
            message = stream.next() => {
                let Some(Ok(message)) = message else { break };
                last_heard = tokio::time::Instant::now();
                let answer = match message {
                    Message::Text(text) => on_message(text.as_str(), &vhost, &wr, &router, &*broker, peers.as_deref()).await,
                    Message::Binary(_) => Some(WrError::new(ErrorId::InvalidPayload, "binary frames are not supported")),
                    Message::Close(_) => break,
                    _ => None,
                };
                if let Some(e) = answer {
                    if sink.send(Message::text(e.json())).await.is_err() { break }
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > idle_timeout {
                    debug!(vhost = %vhost.path, worker = id, "worker silent; dropping it");
                    break;
                }
                if sink.send(Message::Ping(Vec::new().into())).await.is_err() { break }
            }
        }
    }
    wr.workers.remove(&vhost.path, id);
    debug!(vhost = %vhost.path, worker = id, "worker gone");
}

/// A worker's reply or broadcast; the error to send back, if any.
async fn on_message(
    text: &str,
    vhost: &Vhost,
    wr: &WebRocket,
    router: &ShardRouter,
    broker: &dyn Broker,
    peers: Option<&dyn Peers>,
) -> Option<WrError> {
    let command = match wire::parse_worker(text) {
        Ok(c) => c,
        Err(e) => return Some(e),
    };
    match command {
        WorkerCommand::Reply { sid, event, data } => {
            let not_found = || Some(WrError::new(ErrorId::SessionNotFound, sid.to_string()));
            let Some((node, to)) = parse_sid(&sid) else {
                return not_found();
            };
            let frame = wire::reply_frame(&event, data);
            if !is_node(node, &wr.node) {
                // A session on another node of the cluster.
                let Some(peers) = peers else { return not_found() };
                return match peers.session_reply_elsewhere(node, &vhost.path, &sid, frame).await {
                    Ok(PushOutcome::Queued) => None,
                    _ => not_found(),
                };
            }
            match router.send_to_session(to, &vhost.path, frame).await {
                Ok(PushOutcome::Queued) => None,
                _ => not_found(),
            }
        }
        WorkerCommand::Broadcast { channel, event, data } => {
            if !vhost.channel_exists(&channel) && !channel_elsewhere(peers, vhost, &channel).await {
                return Some(crate::webrocket::session::not_found(&channel));
            }
            let delivery =
                Delivery::new(&vhost.topic(&channel), wire::broadcast_frame(&event, &channel, data));
            let batch: crate::publish::Batch = Arc::from(vec![delivery]);
            // Through the broker: with a network broker it reaches every node.
            broker
                .publish_frames(batch)
                .await
                .err()
                .map(|e| WrError::new(ErrorId::AssignationFailed, e.to_string()))
        }
    }
}
