//! The upgrade handshake of an accepted connection, as a short-lived task:
//! with TLS the TLS handshake first (`wire.rs`), the request read within
//! the handshake timeout, routing to a vhost, the
//! origin check, the backend's connect hook, then registration, the 101
//! and the hand-over of the socket to the shard's driver.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use hyper::header::{HeaderName, HeaderValue};

use super::conn::{ConnIdent, ConnState};
use super::effects;
use super::state::Shard;
use super::wire::{Wire, WireError};
use crate::clients::Claim;
use crate::config::{DuplicateClient, VhostConfig};
use crate::dialect::{proxy, Dialect};
use crate::hooks::{HookKind, HookOutcome};
use crate::metrics::{self, Refusal};
use crate::rt::{self, TcpStream};
use crate::session::{Kind, Session};
use crate::ws::handshake::{self, http_response, HttpError, MAX_REQUEST_HEAD};

/// Answers a connection over `max_connections` with 503 and closes it
/// (with TLS it is closed without an answer: a handshake would cost what
/// the limit is there to save).
pub async fn refuse(shard: Rc<Shard>, mut stream: TcpStream) {
    if shard.tls.is_some() {
        return;
    }
    let resp = HttpError::new(503, "server at max_connections").response();
    let _ = futures_lite::future::or(async { stream.write_all(&resp).await }, async {
        rt::sleep(Duration::from_secs(1)).await;
        Ok(())
    })
    .await;
}

/// Writes a refusal, giving up after a second.
async fn refuse_with_timeout(wire: &mut Wire, response: &[u8]) {
    let _ = futures_lite::future::or(wire.write_refusal(response), async {
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
async fn open(shard: Rc<Shard>, stream: TcpStream) -> bool {
    rt::set_nodelay(&stream);
    if shard.config.server.send_buffer > 0 {
        rt::set_send_buffer(&stream, shard.config.server.send_buffer);
    }
    let peer = stream.peer_addr().ok();
    let mut wire = match &shard.tls {
        None => Wire::plain(stream),
        Some(certs) => match crate::tls::TlsSession::new(certs.current()) {
            Ok(session) => Wire::tls(stream, session),
            Err(e) => {
                tracing::error!(error = %e, "cannot start a TLS session; connection dropped");
                return false;
            }
        },
    };
    let Some(Accepted { vhost, wr, upgrade, client, rest: mut leftover, ident, .. }) =
        upgrade(&shard, &mut wire, peer).await
    else {
        return false;
    };
    let v = &shard.vhost_config(vhost);
    // Registered before the 101 goes out: once a client sees the upgrade
    // complete, the gateway counts it and a push can reach it.
    let kind = match (v.dialect, &client) {
        (Dialect::Echo, _) => Kind::Echo,
        (Dialect::RoadRunner, _) => Kind::RoadRunner,
        (Dialect::WebRocket, _) => Kind::WebRocket,
        (Dialect::Proxy, Some(id)) => Kind::Proxy(Rc::from(&**id)),
        (Dialect::Proxy, None) => {
            // `route` gives every proxy path a ClientId; a bug, not input.
            tracing::error!(vhost = %v.path, "proxy connection without a ClientId dropped");
            return false;
        }
    };
    let pause_at = if v.dialect == Dialect::Proxy { v.max_in_flight_per_client } else { 1 };
    let wr = wr.map(|v| {
        let mut session = Box::new(crate::webrocket::session::Session::new(v));
        if let Some(ident) = &ident {
            session.take_token(&ident.token);
        }
        session
    });
    let state = Rc::new(RefCell::new(ConnState {
        session: Session::new(kind, pause_at, shard.now_ms()),
        wr,
        vhost,
        ident,
        ..Default::default()
    }));
    let owner = shard.register(&state, vhost);
    if let Some(id) = &client {
        match shard.clients.claim(id, owner, v.duplicate_client == DuplicateClient::Replace).await {
            Claim::Registered => {}
            Claim::Replaced(old) => shard.replace(old).await,
            refused @ (Claim::Taken(_) | Claim::ShuttingDown) => {
                shard.unregister(owner.key, vhost);
                metrics::inc(&shard.metrics.handshake_failures);
                let (refusal, e) = match refused {
                    Claim::Taken(_) => (
                        Refusal::DuplicateClient,
                        HttpError::new(409, format!("client {id} is already connected")),
                    ),
                    _ => (Refusal::ShuttingDown, HttpError::new(503, "gateway shutting down")),
                };
                shard.metrics.refuse(refusal);
                refuse_with_timeout(&mut wire, &e.response()).await;
                return false;
            }
        }
    }
    let written = wire.write_all(&upgrade.response()).await;
    let (stream, tls, plaintext) = wire.into_parts();
    let taken = written.and_then(|()| rt::take_socket(&stream));
    let fd = match taken {
        Ok(fd) => fd,
        Err(e) => {
            tracing::debug!(error = %e, "connection failed before the driver took it");
            effects::finish(&shard, &state, peer);
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
        st.tls =
            tls.map(|session| Box::new(super::conn::TlsLink { session, unsent: Vec::new(), closed: false }));
        super::driver::adopt(&shard, &mut st);
    }
    leftover.extend_from_slice(&plaintext);
    if !leftover.is_empty() {
        effects::on_bytes(&shard, &state, &mut leftover);
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
    /// The token's claims and the per-address slot, when the vhost or a
    /// limit needs them (kept by the connection).
    ident: Option<Box<ConnIdent>>,
    /// The client's address (behind a trusted proxy: the one it named),
    /// for the connect hook's `X-Real-IP`.
    address: Option<std::net::IpAddr>,
}

enum HandshakeEnd {
    /// Answer with this HTTP response and close.
    Refused(Vec<u8>, Refusal),
    /// The peer went away or the socket failed: nobody to answer.
    Gone,
    /// The TLS handshake failed (the alert went out).
    Tls(crate::tls::TlsError),
}

impl From<WireError> for HandshakeEnd {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Gone => HandshakeEnd::Gone,
            WireError::Tls(e) => HandshakeEnd::Tls(e),
            WireError::PlainHttp => {
                HttpError::new(400, "this port speaks TLS: connect with wss:// (or https://), not ws://")
                    .into()
            }
        }
    }
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
async fn upgrade(shard: &Shard, wire: &mut Wire, peer: Option<SocketAddr>) -> Option<Accepted> {
    let timeout = Duration::from_millis(shard.config.limits.handshake_timeout_ms);
    let deadline = std::time::Instant::now() + timeout;
    let read = futures_lite::future::or(read_upgrade(shard, wire), async {
        rt::sleep(timeout).await;
        Err(HttpError::new(408, "handshake timeout").into())
    })
    .await;
    // The connect hook's wait is part of the handshake: it ends at the
    // same deadline, whatever the hook's own timeout.
    let outcome = match read.and_then(|mut accepted| admit(shard, &mut accepted, peer).map(|()| accepted)) {
        Ok(accepted) => futures_lite::future::or(authorize(shard, &accepted, peer), async {
            rt::sleep(deadline.saturating_duration_since(std::time::Instant::now())).await;
            Err(HandshakeEnd::Refused(
                HttpError::new(504, "backend timeout (limits.handshake_timeout_ms)").response(),
                Refusal::Timeout,
            ))
        })
        .await
        .map(|()| accepted),
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
                    refuse_with_timeout(wire, &resp).await;
                }
                HandshakeEnd::Gone => shard.metrics.refuse(Refusal::PeerGone),
                HandshakeEnd::Tls(e) => {
                    shard.metrics.refuse(Refusal::Tls);
                    tracing::debug!(shard = shard.id, ?peer, error = %e, "TLS handshake failed");
                }
            }
            None
        }
    }
}

async fn read_upgrade(shard: &Shard, wire: &mut Wire) -> Result<Accepted, HandshakeEnd> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let filled = buf.len();
        buf.resize((filled + 1024).min(MAX_REQUEST_HEAD + 1), 0);
        let mut raw = 0;
        let read = wire.read(&mut buf[filled..], &mut raw).await;
        metrics::add(&shard.metrics.bytes_in, raw);
        let n = read?;
        buf.truncate(filled + n);
        if n == 0 {
            return Err(HandshakeEnd::Gone);
        }
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
        return Ok(Accepted {
            vhost,
            wr,
            upgrade,
            client,
            rest: buf.split_off(used),
            ident: None,
            address: None,
        });
    }
}

/// The abuse limits and the token, once the request is read and before
/// the connect hook: 429 for an address over its limits (nothing costly
/// done for it yet), 401 for a token the vhost refuses.
fn admit(shard: &Shard, a: &mut Accepted, peer: Option<SocketAddr>) -> Result<(), HandshakeEnd> {
    use crate::auth::{Identity, TokenError};
    use crate::limits::{Admission, Limit};
    let trusted = &shard.config.server.trusted_proxies;
    a.address = peer.map(|p| {
        let forwarded =
            a.upgrade.forward.iter().find(|(k, _)| *k == "x-forwarded-for").map(|(_, v)| v.as_str());
        crate::limits::client_address(p.ip(), forwarded, a.upgrade.real_ip.as_deref(), trusted)
    });
    let slot = match (&shard.per_ip, a.address) {
        (Some(per_ip), Some(ip)) => match per_ip.admit(ip) {
            Ok(slot) => Some(slot),
            Err(why) => {
                shard.metrics.limited(match why {
                    Admission::Connections(_) => Limit::ConnectionsPerIp,
                    Admission::Handshakes(_) => Limit::HandshakesPerIp,
                });
                let mut e = HttpError::new(429, why.to_string());
                e.header = Some(("Retry-After", "1"));
                return Err(HandshakeEnd::Refused(e.response(), Refusal::RateLimited));
            }
        },
        _ => None,
    };
    let unauthorized = |e: TokenError| {
        let mut h = HttpError::new(401, format!("invalid token: {e}"));
        h.header = Some(("WWW-Authenticate", "Bearer"));
        HandshakeEnd::Refused(h.response(), Refusal::Token)
    };
    let token = match (shard.verifier(a.vhost), a.upgrade.token.as_deref()) {
        (None, _) => Identity::default(),
        (Some(v), None) if !v.required => Identity::default(),
        (Some(_), None) => return Err(unauthorized(TokenError::Missing)),
        (Some(v), Some(t)) => v.verify(t, crate::auth::unix_ms()).map_err(unauthorized)?,
    };
    if slot.is_some() || token != Identity::default() {
        a.ident = Some(Box::new(ConnIdent { token, _slot: slot }));
    }
    Ok(())
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
        // A client's own X-Forwarded-For is dropped unless it came through a
        // trusted proxy: the backend must not take a forged address.
        let peer_ip = crate::limits::canonical(peer.ip());
        let trusted = shard.config.server.trusted_proxies.iter().any(|c| c.contains(peer_ip));
        match forward.iter_mut().find(|(k, _)| *k == "x-forwarded-for") {
            Some((_, v)) if trusted => *v = format!("{v}, {peer_ip}"),
            Some((_, v)) => *v = peer_ip.to_string(),
            None => forward.push(("x-forwarded-for", peer_ip.to_string())),
        }
        forward.push(("x-real-ip", a.address.unwrap_or(peer_ip).to_string()));
    }
    if let Some(user) = a.ident.as_ref().and_then(|i| i.token.user.as_deref()) {
        forward.push(("x-ringcast-user", user.to_string()));
    }
    forward.push(("x-ringcast-path", a.upgrade.path.clone()));
    let mut request = effects::hook_request(v, HookKind::Connect, hyper::Method::GET, url, 64 * 1024);
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
