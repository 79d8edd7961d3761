//! The backend HTTP API (docs/protocols.md §6): `POST /publish`, `GET /metrics`,
//! `GET /health`. hyper on the integration-side tokio thread.

pub mod admin;
pub mod context;
pub mod http;
pub mod live;
pub mod workers;

use std::convert::Infallible;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prost::Message as _;
use serde::Deserialize;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::handle::PushOutcome;
use crate::metrics;
use crate::publish::{self, Message};
use crate::rpc::proto;
pub use context::ApiContext;
use http::{bearer, error, json, read_body, read_body_within, text, token_eq, Reply};

/// Serves the API on `listener`; with `tls`, as https (each connection's
/// TLS handshake must end within `server.api_request_timeout_ms`).
pub async fn serve(listener: TcpListener, ctx: Arc<ApiContext>, tls: Option<Arc<crate::tls::CertStore>>) {
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
        let tls = tls.as_ref().map(|certs| tokio_rustls::TlsAcceptor::from(certs.current()));
        crate::panics::spawn_tokio(crate::panics::Where::Integration, async move {
            match tls {
                None => serve_connection(stream, ctx, peer).await,
                Some(acceptor) => {
                    match tokio::time::timeout(ctx.request_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(stream, ctx, peer).await,
                        Ok(Err(e)) => debug!(%peer, error = %e, "api TLS handshake failed"),
                        Err(_) => debug!(%peer, "api TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
}

/// One API connection over `io` (a socket, or TLS over it).
async fn serve_connection<IO>(io: IO, ctx: Arc<ApiContext>, peer: std::net::SocketAddr)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let timeout = ctx.request_timeout;
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(route_streaming(req, ctx).await) }
    });
    // Without a timer hyper silently skips its header-read timeout.
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await
    {
        debug!(%peer, error = %e, "api connection ended");
    }
}

/// The one streaming route, else `route`.
async fn route_streaming(req: Request<Incoming>, ctx: Arc<ApiContext>) -> live::StreamReply {
    if req.uri().path() == "/stats/stream" && req.method() == Method::GET {
        return match live::check(req.headers(), &ctx, false) {
            Some(denied) => denied.map(|b| b.boxed_unsync()),
            None => live::stream(ctx),
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
        if let Some(denied) = live::check(req.headers(), ctx, path == "/debug/pprof/profile") {
            return denied;
        }
        return match path {
            "/stats" => live::stats(ctx),
            "/dashboard" => live::dashboard(),
            _ => live::profile(req.uri().query(), ctx).await,
        };
    }
    if path.starts_with("/admin/") {
        return admin_route(req, ctx).await;
    }
    if let Some(vhost) = path.strip_prefix("/workers") {
        let vhost = vhost.to_string();
        return workers::worker_route(req, &vhost, ctx);
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
        Some(token) => token_eq(bearer(headers), token),
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
    if !token_eq(bearer(req.headers()), token) {
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
    admin::route(&method, &path, query.as_deref(), body, ctx).await
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
        None => match &ctx.peers {
            None => PushOutcome::NotConnected,
            Some(peers) => match peers.push_elsewhere(client, body).await {
                Ok(outcome) => outcome,
                Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
            },
        },
        Some(owner) => match ctx.router.push(owner, body).await {
            Ok(outcome) => outcome,
            Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "gateway is shutting down"),
        },
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
