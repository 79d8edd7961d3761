//! The gateway's side of a session's effects, carried out with the shard:
//! joins and leaves (through the join hook if the vhost has one), messages
//! forwarded to a backend, WebRocket commands, close timers, and the close
//! notification when a connection ends.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};

use super::conn::{ConnRef, ConnState};
use super::state::{Shard, CLOSE_LINGER};
use super::subscriptions::Confirmation;
use crate::config::{OnBackendError, VhostConfig};
use crate::dialect::proxy;
use crate::handle::Owner;
use crate::hooks::{HookKind, HookOutcome, HookRequest};
use crate::metrics;
use crate::rt;
use crate::session::{Answer, Context, Effect, Session};

/// Messages a call takes up after answers that came at once (joins,
/// leaves, WebRocket commands); the driver's read turns take the rest.
const RESUMES_PER_CALL: usize = 64;

pub(super) fn hook_request(
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
        vhost: v.path.as_str().into(),
        queued_at: std::time::Instant::now(),
        ca_file: v.hooks.ca_file.as_deref().map(Arc::from),
    }
}

/// `X-Ringcast-User: <sub>` for a connection that came with a token.
fn user_header(user: Option<&Arc<str>>) -> Option<(hyper::header::HeaderName, HeaderValue)> {
    let value = HeaderValue::from_str(user?).ok()?;
    Some((hyper::header::HeaderName::from_static("x-ringcast-user"), value))
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
    let (owner, vhost, client, reason, user) = {
        let mut st = conn.borrow_mut();
        let user = st.user().cloned();
        (st.owner, st.vhost, st.session.client().cloned(), st.session.take_close_reason(), user)
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
    if let Some(mut request) = close_hook(v, owner.id, client.as_deref(), reason.as_deref()) {
        request.headers.extend(user_header(user.as_ref()));
        // Not awaited (the outcome is counted in the hook metrics); a
        // full hook queue puts it in the shard's backlog, not a timer.
        shard.notify_closed(request);
    }
}

/// Feeds what arrived to the connection's session and carries out what it
/// asks; then takes up held input as long as answers come at once.
pub(super) fn on_bytes(shard: &Rc<Shard>, conn: &ConnRef, input: &mut [u8]) {
    step(shard, conn, Some(input));
    resume(shard, conn);
}

/// Takes up input held for answers that have come, as long as answers
/// come at once (at most `RESUMES_PER_CALL` messages; the driver's read
/// turns go on with the rest, `can_resume` listing the connection).
pub(super) fn resume(shard: &Rc<Shard>, conn: &ConnRef) {
    for _ in 0..RESUMES_PER_CALL {
        if !conn.borrow().session.can_resume() {
            return;
        }
        step(shard, conn, None);
    }
}

/// One run of the session over `input` (None: its held input), then its effects.
fn step(shard: &Rc<Shard>, conn: &ConnRef, input: Option<&mut [u8]>) {
    let mut effects = Vec::new();
    let messages = {
        let mut st = conn.borrow_mut();
        let mut json = shard.json_buffers.borrow_mut();
        let limits = &shard.config.limits;
        let mut cx = Context {
            max_message_size: limits.max_message_size,
            budget: limits.max_backpressure,
            json: &mut json,
            rate: shard.message_rate,
            // The clock is read only when a rate needs it.
            now_ms: if shard.message_rate.is_some() { shard.now_ms() } else { 0 },
        };
        let was_empty = st.session.queue.is_empty();
        let n = match input {
            Some(bytes) => st.session.on_bytes(bytes, &mut cx, &mut effects),
            None => st.session.resume(&mut cx, &mut effects),
        };
        // A queue that had frames is marked already (or waits for output room).
        if was_empty && !st.session.queue.is_empty() {
            st.wake();
        }
        n
    };
    metrics::add(&shard.metrics.messages_in, messages);
    for effect in effects {
        apply(shard, conn, effect);
    }
}

/// Carries out one effect of a connection's session.
fn apply(shard: &Rc<Shard>, conn: &ConnRef, effect: Effect) {
    match effect {
        Effect::Join { broker, topics } => join(shard, conn, broker, topics),
        Effect::Leave { broker, topics } => {
            crate::panics::inject(crate::panics::Where::Connection);
            let mut st = conn.borrow_mut();
            let names = names(&topics);
            let ok = shard.subscriptions.borrow_mut().leave(
                st.owner.key,
                &mut st.topics,
                broker.as_deref(),
                &names,
            );
            let budget = shard.config.limits.max_backpressure;
            answer(shard, &mut st, |s, out| s.leave_answered(ok, &names, budget, out));
        }
        Effect::Forward { body, text } => forward(shard, conn, body, text),
        Effect::Refresh { token } => {
            let mut st = conn.borrow_mut();
            let refused = refresh(shard, &mut st, &token).err();
            let budget = shard.config.limits.max_backpressure;
            answer(shard, &mut st, |s, out| s.refresh_answered(refused.as_deref(), budget, out));
        }
        Effect::WebRocket(text) => {
            super::webrocket::on_message(shard, conn, text.as_deref());
            answer(shard, &mut conn.borrow_mut(), |s, _| s.answered());
        }
        local => settle(shard, &mut conn.borrow_mut(), local),
    }
}

/// The gateway's part of what a session did to itself: a close to time,
/// a slow consumer or a protocol error to count.
fn settle(shard: &Shard, st: &mut ConnState, effect: Effect) {
    match effect {
        Effect::Closing => shard.closing(st, CLOSE_LINGER),
        Effect::SlowConsumer => shard.slow_consumer_closed(st),
        Effect::ProtocolError => metrics::inc(&shard.metrics.protocol_errors),
        Effect::RateLimited => shard.metrics.limited(crate::limits::Limit::MessagesPerS),
        request => debug_assert!(false, "an answer asked for more: {request:?}"),
    }
}

/// Gives a session an answer (`f`), settles what that did and marks the
/// connection: its queue may have a reply, its held input may go on.
fn answer(shard: &Shard, st: &mut ConnState, f: impl FnOnce(&mut Session, &mut Vec<Effect>)) {
    let mut out = Vec::new();
    f(&mut st.session, &mut out);
    for effect in out {
        settle(shard, st, effect);
    }
    st.wake();
}

/// A RoadRunner `refresh`: a valid token for the same user replaces the
/// connection's claims (expiry, topics); else the reason, and the old
/// token stays.
fn refresh(shard: &Shard, st: &mut ConnState, token: &str) -> Result<(), String> {
    let Some(verifier) = shard.verifier(st.vhost) else {
        return Err("this endpoint takes no tokens ([vhost.auth] is not set)".into());
    };
    let fresh = verifier.verify(token, crate::auth::unix_ms()).map_err(|e| e.to_string())?;
    let ident = st.ident.get_or_insert_with(Default::default);
    if ident.token.user.is_some() && ident.token.user != fresh.user {
        return Err(crate::auth::TokenError::OtherUser.to_string());
    }
    ident.token = fresh;
    Ok(())
}

fn names(topics: &[String]) -> Vec<&str> {
    topics.iter().map(String::as_str).collect()
}

/// A RoadRunner join: through the join hook if the vhost has one, else at
/// once. Subscribed before `@join` is queued: anything published after the
/// client sees it reaches it.
fn join(shard: &Rc<Shard>, conn: &ConnRef, broker: Option<String>, topics: Vec<String>) {
    let mut st = conn.borrow_mut();
    let v = &shard.vhost_config(st.vhost);
    let names = names(&topics);
    if names.iter().any(|t| t.len() > shard.config.limits.max_topic_length) {
        shard.metrics.limited(crate::limits::Limit::TopicLength);
    }
    // The token's `topics` claim: a join naming any other topic is refused whole.
    if !names.iter().all(|t| st.may_join(t)) {
        let budget = shard.config.limits.max_backpressure;
        return answer(shard, &mut st, |s, out| s.join_answered(false, &names, budget, out));
    }
    if let Some(url) = &v.hooks.join {
        if shard.subscriptions.borrow().acceptable(broker.as_deref(), &names) {
            let (owner, user) = (st.owner, st.user().cloned());
            drop(st);
            return join_with_hook(shard, owner, user, v, url, broker, topics);
        }
    }
    let joined =
        shard.subscriptions.borrow_mut().join(st.owner.key, &mut st.topics, broker.as_deref(), &names);
    if let Some(confirmations) = answer_join(shard, &mut st, &names, joined) {
        let owner = st.owner;
        drop(st);
        rt::spawn(joined_when_confirmed(shard.clone(), owner, confirmations, topics));
    }
}

/// Answers a join that was refused (None) or needs no broker confirmation;
/// else returns the confirmations to wait for: with a network broker `@join`
/// goes out once it confirmed this node's subscriptions (cluster-wide
/// delivery from then on).
fn answer_join(
    shard: &Shard,
    st: &mut ConnState,
    names: &[&str],
    joined: Option<Vec<Confirmation>>,
) -> Option<Vec<Confirmation>> {
    match joined {
        Some(confirmations) if !confirmations.is_empty() => Some(confirmations),
        joined => {
            let budget = shard.config.limits.max_backpressure;
            answer(shard, st, |s, out| s.join_answered(joined.is_some(), names, budget, out));
            None
        }
    }
}

/// Asks the join hook (`POST {"connection","topics"}`), then joins or
/// refuses. The task holds the connection's handle, not the connection: if
/// it closed while the backend thought, the answer is dropped (its slab
/// slot may already serve another client).
fn join_with_hook(
    shard: &Rc<Shard>,
    owner: Owner,
    user: Option<Arc<str>>,
    v: &VhostConfig,
    url: &str,
    broker: Option<String>,
    topics: Vec<String>,
) {
    let mut request = hook_request(v, HookKind::Join, hyper::Method::POST, url.to_string(), 4096);
    let body = serde_json::json!({ "connection": owner.id.to_string(), "topics": topics });
    request.body = Bytes::from(body.to_string());
    request.headers.push((CONTENT_TYPE, HeaderValue::from_static("application/json")));
    request.headers.extend(user_header(user.as_ref()));
    let shard = shard.clone();
    rt::spawn(async move {
        crate::panics::inject(crate::panics::Where::ShardTask);
        let outcome = shard.call_hook(request).await;
        let Some(conn) = shard.conn(owner) else {
            return;
        };
        let allowed = matches!(outcome, HookOutcome::Response { status: 200..=299, .. });
        // The borrow ends before any await.
        let confirmations = {
            let mut st = conn.borrow_mut();
            let names = names(&topics);
            let joined = if allowed {
                shard.subscriptions.borrow_mut().join(owner.key, &mut st.topics, broker.as_deref(), &names)
            } else {
                None
            };
            answer_join(&shard, &mut st, &names, joined)
        };
        let Some(confirmations) = confirmations else { return };
        joined_when_confirmed(shard, owner, confirmations, topics).await;
    });
}

/// Answers a join once the broker confirmed every new subscription.
async fn joined_when_confirmed(
    shard: Rc<Shard>,
    owner: Owner,
    confirmations: Vec<Confirmation>,
    topics: Vec<String>,
) {
    for c in confirmations {
        let _ = c.await;
    }
    let Some(conn) = shard.conn(owner) else {
        return;
    };
    let names = names(&topics);
    let budget = shard.config.limits.max_backpressure;
    answer(&shard, &mut conn.borrow_mut(), |s, out| s.join_answered(true, &names, budget, out));
}

/// Proxy dialect: `POST {backend}/<ClientId>` with the message; a non-empty
/// 2xx answer goes back to the client.
fn forward(shard: &Rc<Shard>, conn: &ConnRef, body: Bytes, is_text: bool) {
    let mut st = conn.borrow_mut();
    let (owner, vhost, user) = (st.owner, st.vhost, st.user().cloned());
    let v = &shard.vhost_config(vhost);
    let (Some(client), Some(backend)) = (st.session.client().cloned(), &v.backend) else {
        // Not a proxy connection after all: nothing will answer.
        return answer(shard, &mut st, |s, _| s.answered());
    };
    drop(st);
    let url = proxy::client_url(backend, &client);
    let mut request =
        hook_request(v, HookKind::Message, hyper::Method::POST, url, shard.config.limits.max_message_size);
    let content_type = if is_text { "text/plain; charset=utf-8" } else { "application/octet-stream" };
    request.headers.push((CONTENT_TYPE, HeaderValue::from_static(content_type)));
    request.headers.extend(user_header(user.as_ref()));
    request.body = body;
    let shard = shard.clone();
    rt::spawn(async move {
        let outcome = shard.call_hook(request).await;
        // Gone meanwhile: nobody to answer (the slot may hold another client).
        let Some(conn) = shard.conn(owner) else {
            return;
        };
        let result = match outcome {
            HookOutcome::Response { status: 200..=299, body, .. } => Answer::Reply(body),
            failed => {
                metrics::inc(&shard.metrics.backend_errors);
                tracing::debug!(client = %client, outcome = ?failed, "backend did not take a message");
                let close = shard.vhost_config(vhost).on_backend_error == OnBackendError::Close;
                Answer::Failed { close }
            }
        };
        let budget = shard.config.limits.max_backpressure;
        answer(&shard, &mut conn.borrow_mut(), |s, out| s.forward_answered(result, budget, out));
    });
}
