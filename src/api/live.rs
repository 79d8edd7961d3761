//! Operator routes on the API listener (docs/metrics.md): `GET /stats`
//! (one snapshot), `GET /stats/stream` (Server-Sent Events, one snapshot a
//! second), `GET /dashboard` (a page embedded in the binary) and
//! `GET /debug/pprof/profile?seconds=N` (a CPU flamegraph SVG).
//!
//! With `server.admin_token` set they take it like the admin API, as a
//! bearer token or as the password of HTTP Basic auth (what a browser can
//! send to a page and its event stream); the profile needs it always.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{HeaderMap, Response, StatusCode};

use super::context::ApiContext;
use super::http::{json, token_eq, Reply};
use crate::snapshot::Snapshot;

pub type StreamReply = Response<UnsyncBoxBody<Bytes, Infallible>>;

const DASHBOARD: &str = include_str!("dashboard.html");
const PROFILE_SECONDS_MAX: u64 = 120;

/// The token presented as `Bearer <token>` or as Basic auth's password.
fn presented(headers: &HeaderMap) -> Option<String> {
    let h = headers.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(t) = h.strip_prefix("Bearer ") {
        return Some(t.to_string());
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(h.strip_prefix("Basic ")?.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(text.split_once(':').map_or(text.as_str(), |(_, password)| password).to_string())
}

/// None when the request may see operator routes; else the 401 to answer.
pub fn check(headers: &HeaderMap, ctx: &ApiContext, admin_only: bool) -> Option<Reply> {
    // Either token opens the live views (`admin_only`: profiling, the admin
    // token alone); with neither set they are open (the API then listens on
    // loopback, or by the operator's choice).
    let api_token = if admin_only { &None } else { &ctx.telemetry.config.server.api_token };
    let tokens: Vec<&String> = [&ctx.admin_token, api_token].into_iter().flatten().collect();
    if tokens.is_empty() {
        return None;
    }
    if presented(headers).is_some_and(|p| tokens.iter().any(|t| token_eq(&p, t))) {
        return None;
    }
    let body = r#"{"error":"missing or wrong admin token (Authorization: Bearer …, or Basic auth with the token as password)"}"#;
    let mut r = json(StatusCode::UNAUTHORIZED, body.into());
    r.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"ringcast\", charset=\"UTF-8\""));
    Some(r)
}

pub fn stats(ctx: &ApiContext) -> Reply {
    json(StatusCode::OK, serde_json::to_string(&Snapshot::collect(&ctx.telemetry)).unwrap_or_default())
}

pub fn dashboard() -> Reply {
    let mut r = Response::new(Full::new(Bytes::from_static(DASHBOARD.as_bytes())));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Self-contained: nothing loads from elsewhere.
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
        ),
    );
    r
}

/// `text/event-stream`: a snapshot at once, then one a second with the
/// rates since the previous one, until the client goes.
pub fn stream(ctx: Arc<ApiContext>) -> StreamReply {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    // A late tick must not be followed by a burst of catch-up events.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = (ctx, None::<Snapshot>, ticks);
    let events = futures_util::stream::unfold(state, |(ctx, previous, mut ticks)| async move {
        ticks.tick().await;
        let mut now = Snapshot::collect(&ctx.telemetry);
        if let Some(p) = &previous {
            now.rates = Some(now.rates_since(p));
        }
        let event = format!("event: snapshot\ndata: {}\n\n", serde_json::to_string(&now).unwrap_or_default());
        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(event))), (ctx, Some(now), ticks)))
    });
    let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(events.boxed())));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

static PROFILING: AtomicBool = AtomicBool::new(false);

/// A CPU profile of every thread for `seconds` (default 10), as a
/// flamegraph SVG. One at a time; the sampling runs only meanwhile.
pub async fn profile(query: Option<&str>, ctx: &ApiContext) -> Reply {
    if ctx.admin_token.is_none() {
        return json(
            StatusCode::NOT_FOUND,
            r#"{"error":"profiling needs the admin token: set server.admin_token or RINGCAST_ADMIN_TOKEN"}"#
                .into(),
        );
    }
    let seconds = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "seconds")
        .map(|(_, v)| v.parse::<u64>());
    let seconds = match seconds {
        None => 10,
        Some(Ok(s)) if (1..=PROFILE_SECONDS_MAX).contains(&s) => s,
        Some(_) => {
            let e = format!(r#"{{"error":"seconds must be 1 to {PROFILE_SECONDS_MAX}"}}"#);
            return json(StatusCode::BAD_REQUEST, e);
        }
    };
    if PROFILING.swap(true, Ordering::AcqRel) {
        return json(
            StatusCode::CONFLICT,
            r#"{"error":"a profile is being taken already; try again later"}"#.into(),
        );
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    // Its own thread: the profiler's guard is not Send, and rendering the
    // SVG is CPU work the API thread should not do.
    let spawned = std::thread::Builder::new().name("profiler".into()).spawn(move || {
        let _ = tx.send(take_profile(Duration::from_secs(seconds)));
        PROFILING.store(false, Ordering::Release);
    });
    if let Err(e) = spawned {
        PROFILING.store(false, Ordering::Release);
        return json(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "error": e.to_string() }).to_string(),
        );
    }
    match rx.await {
        Ok(Ok(svg)) => {
            let mut r = Response::new(Full::new(Bytes::from(svg)));
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("image/svg+xml"));
            r
        }
        Ok(Err(e)) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "error": format!("profiling failed: {e}") }).to_string(),
        ),
        Err(_) => json(StatusCode::INTERNAL_SERVER_ERROR, r#"{"error":"profiler thread ended"}"#.into()),
    }
}

fn take_profile(d: Duration) -> Result<Vec<u8>, pprof::Error> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(499)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()?;
    std::thread::sleep(d);
    let report = guard.report().build()?;
    let mut svg = Vec::new();
    report.flamegraph(&mut svg)?;
    Ok(svg)
}
