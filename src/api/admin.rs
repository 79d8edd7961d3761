//! The admin API (docs/admin.md): WebRocket vhosts, users, channels and
//! worker tokens under `/admin/…` on the API listener, enabled by
//! `server.admin_token`. Every change is committed to the store (durable)
//! before the answer, then applied to the directory and the shards.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::context::ApiContext;
use super::http::{json as reply_json, Reply};
use crate::bus::ports::channel_elsewhere;
use crate::bus::ShardMsg;
use crate::config::vhost_path_is_valid;
use crate::dialect::webrocket::{channel_name_is_valid, user_name_is_valid, Perms};
use crate::webrocket::directory::{new_token, Vhost};
use crate::webrocket::replicate;
use crate::webrocket::store::{UserRecord, Write};

/// An admin request refused: the status and why.
struct Fail(StatusCode, String);

impl Fail {
    fn reply(self) -> Reply {
        reply_json(self.0, json!({ "error": self.1 }).to_string())
    }
}

fn fail(status: StatusCode, message: impl AsRef<str>) -> Fail {
    Fail(status, message.as_ref().to_string())
}

fn ok(status: StatusCode, body: serde_json::Value) -> Reply {
    reply_json(status, body.to_string())
}

pub async fn route(method: &Method, path: &str, query: Option<&str>, body: Bytes, ctx: &ApiContext) -> Reply {
    let q: HashMap<String, String> =
        form_urlencoded::parse(query.unwrap_or("").as_bytes()).into_owned().collect();
    let wr = &ctx.webrocket;
    // One admin change at a time: the store and the directory see changes
    // in the same order.
    let _serial = match *method {
        Method::GET => None,
        _ => Some(wr.admin_lock.lock().await),
    };
    let vhost = || -> Result<Arc<Vhost>, Fail> {
        let path = q.get("vhost").ok_or_else(|| fail(StatusCode::BAD_REQUEST, "missing ?vhost=PATH"))?;
        wr.directory
            .vhost(path)
            .ok_or_else(|| fail(StatusCode::NOT_FOUND, format!("no webrocket vhost {path}")))
    };
    let result = match (method, path) {
        (&Method::GET, "/admin/vhosts") => Ok(list_vhosts(ctx)),
        (&Method::POST, "/admin/vhosts") => add_vhost(ctx, &body).await,
        (&Method::DELETE, "/admin/vhosts") => match vhost() {
            Ok(v) => delete_vhost(ctx, v).await,
            Err(r) => Err(r),
        },
        (&Method::GET, "/admin/token") => vhost().map(|v| ok(StatusCode::OK, json!({ "token": &*v.token() }))),
        (&Method::POST, "/admin/token") => match vhost() {
            Ok(v) => rotate_token(ctx, v).await,
            Err(r) => Err(r),
        },
        (&Method::GET, "/admin/users") => vhost().map(|v| {
            let users: Vec<_> = v
                .users()
                .iter()
                .map(|u| json!({ "name": &*u.name, "permissions": u.perms.names(), "secret": u.hash.is_some() }))
                .collect();
            ok(StatusCode::OK, json!(users))
        }),
        (&Method::POST, "/admin/users") => put_user(ctx, &body, true).await,
        (&Method::PATCH, "/admin/users") => put_user(ctx, &body, false).await,
        (&Method::DELETE, "/admin/users") => match (vhost(), q.get("name")) {
            (Ok(v), Some(name)) => delete_user(ctx, v, name).await,
            (Err(r), _) => Err(r),
            (_, None) => Err(fail(StatusCode::BAD_REQUEST, "missing ?name=USER")),
        },
        (&Method::GET, "/admin/channels") => match vhost() {
            Ok(v) => Ok(list_channels(ctx, v).await),
            Err(r) => Err(r),
        },
        (&Method::POST, "/admin/channels") => add_channel(ctx, &body).await,
        (&Method::DELETE, "/admin/channels") => match (vhost(), q.get("name")) {
            (Ok(v), Some(name)) => delete_channel(ctx, v, name).await,
            (Err(r), _) => Err(r),
            (_, None) => Err(fail(StatusCode::BAD_REQUEST, "missing ?name=CHANNEL")),
        },
        (_, "/admin/vhosts" | "/admin/token" | "/admin/users" | "/admin/channels") => {
            Err(fail(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"))
        }
        _ => Err(fail(StatusCode::NOT_FOUND, format!("no admin route {path}"))),
    };
    result.unwrap_or_else(Fail::reply)
}

fn parse_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Fail> {
    serde_json::from_slice(body).map_err(|e| fail(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

fn perms(names: &[String]) -> Result<Perms, Fail> {
    Perms::parse(names.iter().map(String::as_str)).map_err(|e| fail(StatusCode::BAD_REQUEST, e.to_string()))
}

/// Commits `writes` (durable before anything else), applies them to the
/// live state, tells the shards, and hands them to the other nodes.
async fn commit(ctx: &ApiContext, writes: Vec<Write>) -> Result<(), Fail> {
    ctx.webrocket
        .directory
        .store
        .apply(writes.clone())
        .await
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let effects = replicate::apply(&ctx.webrocket, &writes);
    for effect in &effects {
        let _ = ctx.router.to_every_shard(|| ShardMsg::from(effect)).await;
    }
    if let Some(peers) = &ctx.peers {
        peers.replicate(writes);
    }
    Ok(())
}

fn vhost_json(ctx: &ApiContext, v: &Vhost) -> serde_json::Value {
    json!({
        "path": &*v.path,
        "anonymous": v.anonymous.names(),
        "from_config": v.from_config,
        "users": v.users().len(),
        "channels": v.channels().len(),
        "workers": ctx.webrocket.workers.count(&v.path),
    })
}

fn list_vhosts(ctx: &ApiContext) -> Reply {
    let all: Vec<_> = ctx.webrocket.directory.vhosts().iter().map(|v| vhost_json(ctx, v)).collect();
    ok(StatusCode::OK, json!(all))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewVhost {
    path: String,
    #[serde(default)]
    anonymous: Vec<String>,
}

async fn add_vhost(ctx: &ApiContext, body: &[u8]) -> Result<Reply, Fail> {
    let NewVhost { path, anonymous } = parse_body(body)?;
    let anonymous = perms(&anonymous)?;
    if !vhost_path_is_valid(&path) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            format!("invalid vhost path {path:?}: `/` then printable ASCII without spaces, `?` or `#`"),
        ));
    }
    if ctx.telemetry.config.vhosts.iter().any(|v| v.path == path)
        || ctx.webrocket.directory.vhost(&path).is_some()
    {
        return Err(fail(StatusCode::CONFLICT, format!("vhost {path} exists")));
    }
    let token = new_token();
    commit(
        ctx,
        vec![
            Write::PutVhost { path: path.clone(), anonymous: anonymous.bits() },
            Write::PutToken { vhost: path.clone(), token },
        ],
    )
    .await?;
    let v = ctx
        .webrocket
        .directory
        .vhost(&path)
        .ok_or_else(|| fail(StatusCode::CONFLICT, format!("vhost {path} was deleted meanwhile")))?;
    Ok(ok(StatusCode::CREATED, vhost_json(ctx, &v)))
}

async fn delete_vhost(ctx: &ApiContext, v: Arc<Vhost>) -> Result<Reply, Fail> {
    if v.from_config {
        return Err(fail(
            StatusCode::CONFLICT,
            format!("vhost {} is declared in the config file; remove it there", v.path),
        ));
    }
    commit(ctx, vec![Write::DeleteVhost { path: v.path.to_string() }]).await?;
    Ok(ok(StatusCode::OK, json!({ "deleted": &*v.path })))
}

async fn rotate_token(ctx: &ApiContext, v: Arc<Vhost>) -> Result<Reply, Fail> {
    let token = new_token();
    commit(ctx, vec![Write::PutToken { vhost: v.path.to_string(), token: token.clone() }]).await?;
    Ok(ok(StatusCode::OK, json!({ "token": token })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserBody {
    vhost: String,
    name: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    permissions: Option<Vec<String>>,
}

async fn put_user(ctx: &ApiContext, body: &[u8], create: bool) -> Result<Reply, Fail> {
    let b: UserBody = parse_body(body)?;
    if !user_name_is_valid(&b.name) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            format!("invalid user name {:?}: ^[A-Za-z0-9_][A-Za-z0-9_.@-]{{0,63}}$", b.name),
        ));
    }
    let v = ctx
        .webrocket
        .directory
        .vhost(&b.vhost)
        .ok_or_else(|| fail(StatusCode::NOT_FOUND, format!("no webrocket vhost {}", b.vhost)))?;
    let existing = v.user(&b.name);
    let mut record = match (&existing, create) {
        (Some(_), true) => {
            return Err(fail(StatusCode::CONFLICT, format!("user {} exists in {}", b.name, v.path)))
        }
        (None, false) => {
            return Err(fail(StatusCode::NOT_FOUND, format!("no user {} in {}", b.name, v.path)))
        }
        (Some(u), false) => UserRecord { perms: u.perms.bits(), hash: u.hash.clone() },
        (None, true) => UserRecord { perms: 0, hash: None },
    };
    if let Some(p) = &b.permissions {
        record.perms = perms(p)?.bits();
    }
    if let Some(secret) = b.secret {
        record.hash = if secret.is_empty() {
            None
        } else {
            // On the same fixed pool as logins: no thread (and malloc arena) per call.
            let hashed = ctx.webrocket.secrets.hash(secret).await;
            Some(hashed.map_err(|e| fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?)
        };
    }
    commit(
        ctx,
        vec![Write::PutUser { vhost: v.path.to_string(), name: b.name.clone(), record: record.clone() }],
    )
    .await?;
    let status = if create { StatusCode::CREATED } else { StatusCode::OK };
    Ok(ok(
        status,
        json!({ "name": b.name, "permissions": Perms::from_bits(record.perms).names(), "secret": record.hash.is_some() }),
    ))
}

async fn delete_user(ctx: &ApiContext, v: Arc<Vhost>, name: &str) -> Result<Reply, Fail> {
    if v.user(name).is_none() {
        return Err(fail(StatusCode::NOT_FOUND, format!("no user {name} in {}", v.path)));
    }
    commit(ctx, vec![Write::DeleteUser { vhost: v.path.to_string(), name: name.into() }]).await?;
    Ok(ok(StatusCode::OK, json!({ "deleted": name })))
}

async fn list_channels(ctx: &ApiContext, v: Arc<Vhost>) -> Reply {
    let mut counts = ctx.router.channel_counts(&v.path).await;
    // Subscribers on the other nodes (network broker).
    let ask = crate::proto::query::Ask::ChannelCountsVhost(v.path.to_string());
    let elsewhere = match &ctx.peers {
        Some(peers) => peers.gather(ask).await,
        None => Vec::new(),
    };
    for r in elsewhere {
        for (name, n) in r.channels.into_iter().zip(r.counts) {
            *counts.entry(name).or_default() += n as usize;
        }
    }
    // Kept channels, and those made by subscribes on any node.
    let mut names = v.channels();
    names.extend(counts.iter().filter(|(_, n)| **n > 0).map(|(name, _)| name.clone()));
    names.sort();
    names.dedup();
    let all: Vec<_> = names
        .into_iter()
        .map(|name| {
            let n = counts.get(&name).copied().unwrap_or(0);
            json!({ "name": name, "subscribers": n })
        })
        .collect();
    ok(StatusCode::OK, json!(all))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelBody {
    vhost: String,
    name: String,
}

async fn add_channel(ctx: &ApiContext, body: &[u8]) -> Result<Reply, Fail> {
    let b: ChannelBody = parse_body(body)?;
    if !channel_name_is_valid(&b.name) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            format!("invalid channel name {:?}: ^[A-Za-z0-9_][A-Za-z0-9_.:-]{{0,127}}$", b.name),
        ));
    }
    let v = ctx
        .webrocket
        .directory
        .vhost(&b.vhost)
        .ok_or_else(|| fail(StatusCode::NOT_FOUND, format!("no webrocket vhost {}", b.vhost)))?;
    // A channel made by a subscribe is kept from now on.
    if v.channel_is_kept(&b.name) {
        return Err(fail(StatusCode::CONFLICT, format!("channel {} exists in {}", b.name, v.path)));
    }
    commit(ctx, vec![Write::PutChannel { vhost: v.path.to_string(), name: b.name.clone() }]).await?;
    Ok(ok(StatusCode::CREATED, json!({ "name": b.name, "subscribers": 0 })))
}

async fn delete_channel(ctx: &ApiContext, v: Arc<Vhost>, name: &str) -> Result<Reply, Fail> {
    if !v.channel_exists(name) && !channel_elsewhere(ctx.peers.as_deref(), &v, name).await {
        return Err(fail(StatusCode::NOT_FOUND, format!("no channel {name} in {}", v.path)));
    }
    commit(ctx, vec![Write::DeleteChannel { vhost: v.path.to_string(), name: name.into() }]).await?;
    Ok(ok(StatusCode::OK, json!({ "deleted": name })))
}
