//! The backend HTTP API (docs/protocols.md §6): `POST /publish`, `GET /metrics`,
//! `GET /health`. hyper on the integration-side tokio thread.

use std::convert::Infallible;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prost::Message as _;
use serde::Deserialize;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::bus::Broker;
use crate::bus::{ShardMsg, ShardRouter};
use crate::clients::ClientRegistry;
use crate::handle::PushOutcome;
use crate::metrics;
use crate::publish::{self, Message};
use crate::rpc::proto;
use crate::snapshot::Telemetry;

pub struct ApiContext {
    pub broker: Arc<dyn Broker>,
    /// The counters and measurements `/metrics`, `/stats` and the live
    /// stream read (also the global counters and the config).
    pub telemetry: Telemetry,
    pub max_body: usize,
    /// Head and body of a request must arrive within this.
    pub request_timeout: std::time::Duration,
    pub publish_limits: publish::Limits,
    pub router: ShardRouter,
    pub clients: Arc<ClientRegistry>,
    /// With a network broker: its metrics.
    pub cluster_metrics: Option<Arc<crate::broker::cluster::ClusterMetrics>>,
    pub webrocket: Arc<crate::webrocket::WebRocket>,
    /// Enables `/admin/…`; requests must carry it as a bearer token.
    pub admin_token: Option<String>,
}

pub async fn serve(listener: TcpListener, ctx: Arc<ApiContext>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(ctx.telemetry.config.server.api_max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "api accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // Past the cap a connection is closed at once: it holds no task.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            ctx.telemetry.metrics.deny(metrics::Denied::ApiConnections);
            debug!(%peer, "api connection refused: server.api_max_connections reached");
            drop(stream);
            continue;
        };
        let ctx = ctx.clone();
        let ctx_timeout = ctx.request_timeout;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(route_streaming(req, ctx).await) }
            });
            // Without a timer hyper silently skips its header-read timeout.
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ctx_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await
            {
                debug!(%peer, error = %e, "api connection ended");
            }
            drop(slot);
        });
    }
}

pub type Reply = Response<Full<Bytes>>;

pub fn json(status: StatusCode, body: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, message: &str) -> Reply {
    json(status, serde_json::json!({ "error": message }).to_string())
}

/// The one streaming route, else `route`.
async fn route_streaming(req: Request<Incoming>, ctx: Arc<ApiContext>) -> crate::live::StreamReply {
    if req.uri().path() == "/stats/stream" && req.method() == Method::GET {
        return match crate::live::check(req.headers(), &ctx, false) {
            Some(denied) => denied.map(|b| b.boxed_unsync()),
            None => crate::live::stream(ctx),
        };
    }
    route(req, &ctx).await.map(|b| b.boxed_unsync())
}

async fn route(req: Request<Incoming>, ctx: &Arc<ApiContext>) -> Reply {
    let path = req.uri().path();
    if matches!(path, "/stats" | "/dashboard" | "/debug/pprof/profile") {
        if req.method() != Method::GET {
            return error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        }
        if let Some(denied) = crate::live::check(req.headers(), ctx, path == "/debug/pprof/profile") {
            return denied;
        }
        return match path {
            "/stats" => crate::live::stats(ctx),
            "/dashboard" => crate::live::dashboard(),
            _ => crate::live::profile(req.uri().query(), ctx).await,
        };
    }
    if path.starts_with("/admin/") {
        return admin_route(req, ctx).await;
    }
    if let Some(vhost) = path.strip_prefix("/workers") {
        let vhost = vhost.to_string();
        return worker_route(req, &vhost, ctx);
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => health(ctx),
        (&Method::GET | &Method::POST, "/metrics" | "/publish") if !api_authorized(req.headers(), ctx) => {
            unauthorized(ctx)
        }
        (&Method::POST, path)
            if path.len() > 1 && !path[1..].contains('/') && !api_authorized(req.headers(), ctx) =>
        {
            unauthorized(ctx)
        }
        (&Method::GET, "/metrics") => {
            let mut text = metrics::render(&ctx.telemetry.shard_metrics, &ctx.telemetry.metrics);
            ctx.telemetry.hook_metrics.render(&mut text);
            crate::snapshot::render_metrics(&ctx.telemetry, &mut text);
            if let Some(m) = &ctx.cluster_metrics {
                m.render(ctx.broker.name(), &mut text);
            }
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            r
        }
        (&Method::POST, "/publish") => {
            metrics::inc(&ctx.telemetry.metrics.http_publish_requests);
            let reply = publish_route(req, ctx).await;
            if !reply.status().is_success() {
                metrics::inc(&ctx.telemetry.metrics.http_publish_errors);
            }
            reply
        }
        (_, "/health" | "/metrics" | "/publish") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        (&Method::POST, path) if path.len() > 1 && !path[1..].contains('/') => {
            let client = path[1..].to_string();
            push_route(req, &client, ctx).await
        }
        (_, path) => error(StatusCode::NOT_FOUND, &format!("no route {path}")),
    }
}

/// Whether a publish, push or metrics request may go on: always without
/// `server.api_token`, else with it as the bearer token.
fn api_authorized(headers: &hyper::HeaderMap, ctx: &ApiContext) -> bool {
    match &ctx.telemetry.config.server.api_token {
        None => true,
        Some(token) => crate::admin::token_eq(crate::admin::bearer(headers), token),
    }
}

fn unauthorized(ctx: &ApiContext) -> Reply {
    ctx.telemetry.metrics.deny(metrics::Denied::ApiUnauthorized);
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong API token (Authorization: Bearer <server.api_token>)",
    );
    r.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// `GET /health`: 200 while serving, 503 while the broker is unreachable;
/// warnings about how the node runs (`cluster.insecure`) ride along.
fn health(ctx: &ApiContext) -> Reply {
    let mut warnings = Vec::new();
    let c = &ctx.telemetry.config;
    if c.broker != "memory" && c.cluster.secret.is_none() {
        warnings.push(format!(
            "insecure cluster: envelopes on the {} broker are not authenticated (cluster.insecure = true; set cluster.secret)",
            c.broker
        ));
    }
    let mut body = match ctx.broker.degraded() {
        None => serde_json::json!({ "status": "ok" }),
        Some(why) => serde_json::json!({ "status": "degraded", "broker": why }),
    };
    if !warnings.is_empty() {
        body["warnings"] = serde_json::json!(warnings);
    }
    let status = if body["status"] == "ok" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json(status, body.to_string())
}

/// `/admin/…`: only with `server.admin_token` set and presented.
async fn admin_route(req: Request<Incoming>, ctx: &ApiContext) -> Reply {
    let Some(token) = &ctx.admin_token else {
        return error(
            StatusCode::NOT_FOUND,
            "the admin API is off: set server.admin_token or RINGCAST_ADMIN_TOKEN",
        );
    };
    if !crate::admin::token_eq(crate::admin::bearer(req.headers()), token) {
        let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong admin token (Authorization: Bearer …)");
        r.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let (method, path, query) =
        (req.method().clone(), req.uri().path().to_string(), req.uri().query().map(str::to_string));
    let body = match read_body(req, ctx).await {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    crate::admin::route(&method, &path, query.as_deref(), body, ctx).await
}

/// `GET /workers<vhost path>`: a backend worker's WebSocket upgrade, with
/// the vhost's access token as a bearer token (401 otherwise).
fn worker_route(mut req: Request<Incoming>, vhost: &str, ctx: &Arc<ApiContext>) -> Reply {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let Some(v) = ctx.webrocket.directory.vhost(vhost) else {
        return error(StatusCode::NOT_FOUND, &format!("no webrocket vhost {vhost}"));
    };
    let presented = crate::admin::bearer(req.headers()).to_string();
    if !crate::admin::token_eq(&presented, &v.token()) {
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
    tokio::spawn(async move {
        let io = match upgrade.await {
            Ok(io) => TokioIo::new(io),
            Err(e) => {
                debug!(error = %e, "worker upgrade failed");
                return;
            }
        };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        let limits = &ctx.telemetry.config.limits;
        let link = crate::webrocket::workers::WorkerLink {
            vhost: v,
            token,
            wr: ctx.webrocket.clone(),
            router: ctx.router.clone(),
            broker: ctx.broker.clone(),
            ping_interval: std::time::Duration::from_millis(limits.ping_interval_ms),
            idle_timeout: std::time::Duration::from_millis(limits.idle_timeout_ms),
        };
        crate::webrocket::workers::serve(ws, link).await;
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

fn text(status: StatusCode, body: &'static str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// ws2api push (docs/protocols.md §4): `POST /<ClientId>`, the body goes to that
/// client as one message. 200 `ok` once queued, 404 when not connected.
async fn push_route(req: Request<Incoming>, client: &str, ctx: &ApiContext) -> Reply {
    // A push larger than a client's whole send budget could only close it
    // as a slow consumer: refused before it is read.
    let budget = ctx.telemetry.config.limits.max_backpressure;
    let body = match read_body_within(req, ctx, budget.min(ctx.max_body)).await {
        Ok(b) => b,
        Err(reply) => {
            if reply.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ctx.telemetry.metrics.deny(metrics::Denied::PushTooLarge);
            }
            return reply;
        }
    };
    let outcome = match ctx.clients.lookup(client) {
        // Not here: another node may hold it.
        None => match ctx.broker.push_elsewhere(client, body).await {
            Ok(outcome) => outcome,
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        },
        Some(owner) => {
            let (reply, answer) = futures_channel::oneshot::channel();
            match ctx.router.send(owner.shard, ShardMsg::Push { to: owner, body, reply }).await {
                Ok(()) => answer.await.unwrap_or(PushOutcome::NotConnected),
                Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "gateway is shutting down"),
            }
        }
    };
    ctx.telemetry.metrics.record_push(outcome);
    match outcome {
        PushOutcome::Queued => text(StatusCode::OK, "ok"),
        PushOutcome::NotConnected => text(StatusCode::NOT_FOUND, "not connected"),
        PushOutcome::SlowConsumer => {
            text(StatusCode::SERVICE_UNAVAILABLE, "client is a slow consumer; closed")
        }
    }
}

/// The whole body, within `max_body` bytes and the request timeout (a
/// client dribbling its body must not hold a task forever).
async fn read_body(req: Request<Incoming>, ctx: &ApiContext) -> Result<Bytes, Reply> {
    read_body_within(req, ctx, ctx.max_body).await
}

/// `read_body` with a lower bound than `max_body` (pushes: `limits.max_backpressure`).
async fn read_body_within(req: Request<Incoming>, ctx: &ApiContext, limit: usize) -> Result<Bytes, Reply> {
    let key = if limit < ctx.max_body { "limits.max_backpressure" } else { "rpc.max_frame_size" };
    let collect = Limited::new(req.into_body(), limit).collect();
    match tokio::time::timeout(ctx.request_timeout, collect).await {
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            &format!(
                "body not received within {} ms (server.api_request_timeout_ms)",
                ctx.request_timeout.as_millis()
            ),
        )),
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(error(StatusCode::PAYLOAD_TOO_LARGE, &format!("body exceeds {limit} bytes ({key})")))
        }
        Ok(Err(e)) => Err(error(StatusCode::BAD_REQUEST, &format!("cannot read body: {e}"))),
    }
}

/// `{"topics": [...], "payload": "text"}` or with `"payload_base64"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    topics: Vec<String>,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    payload_base64: Option<String>,
}

async fn publish_route(req: Request<Incoming>, ctx: &ApiContext) -> Reply {
    let is_proto = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-protobuf"));
    let body = match read_body(req, ctx).await {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let messages = match if is_proto { decode_proto(&body) } else { decode_json(&body) } {
        Ok(m) => m,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    if let Err(e) = publish::validate(&messages, &ctx.publish_limits) {
        let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        return error(status, &e.to_string());
    }
    let count = messages.len() as u64;
    match ctx.broker.publish(messages).await {
        Ok(()) => {
            metrics::add(&ctx.telemetry.metrics.published_messages, count);
            json(StatusCode::OK, r#"{"ok":true}"#.into())
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

fn decode_proto(body: &[u8]) -> Result<Vec<Message>, String> {
    let req = proto::broadcast::Request::decode(body)
        .map_err(|e| format!("cannot decode broadcast.v1.Request: {e}"))?;
    Ok(req
        .messages
        .into_iter()
        .map(|m| Message { topics: m.topics, payload: Bytes::from(m.payload) })
        .collect())
}

fn decode_json(body: &[u8]) -> Result<Vec<Message>, String> {
    let b: PublishBody = serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let payload = match (b.payload, b.payload_base64) {
        (Some(text), None) => Bytes::from(text),
        (None, Some(b64)) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("payload_base64 is not base64: {e}"))?,
        ),
        (Some(_), Some(_)) => return Err("give either \"payload\" or \"payload_base64\", not both".into()),
        (None, None) => return Err("missing \"payload\" (text) or \"payload_base64\"".into()),
    };
    Ok(vec![Message { topics: b.topics, payload }])
}
