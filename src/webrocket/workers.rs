//! Backend workers: WebSocket connections on the API listener
//! (`/workers<vhost path>`, `Authorization: Bearer <vhost token>`). Triggers
//! go to one worker of the vhost, round-robin; workers reply to sessions and
//! broadcast to channels. Runs on the integration thread (tokio); shards hand
//! triggers over with a non-blocking `try_send`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tracing::debug;

use super::WebRocket;
use crate::bus::{ShardMsg, ShardRouter};
use crate::dialect::webrocket::{self as wire, ErrorId, WorkerCommand, WrError};
use crate::handle::PushOutcome;
use crate::publish::Delivery;

/// Triggers waiting for one worker, in number and in bytes; past either
/// the next worker is tried (and with none left, ASSIGNATION_FAILED).
const WORKER_QUEUE: usize = 1024;
const WORKER_QUEUE_BYTES: usize = 16 * 1024 * 1024;

struct Worker {
    id: u64,
    tx: mpsc::Sender<String>,
    /// Bytes of the triggers in `tx`, taken back as the worker's task sends them.
    queued: Arc<AtomicUsize>,
    /// The token it connected with.
    token: Arc<str>,
}

#[derive(Default)]
struct Pool {
    workers: Vec<Worker>,
    next: usize,
}

/// The connected workers of every vhost.
#[derive(Default)]
pub struct Workers {
    pools: Mutex<HashMap<Box<str>, Pool>>,
    ids: AtomicU64,
}

impl Workers {
    fn pools(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Pool>> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives `message` to the next worker of `vhost` that has room; gives
    /// it back when none is connected or all are full.
    pub fn assign(&self, vhost: &str, message: String) -> Result<(), String> {
        let mut pools = self.pools();
        let Some(pool) = pools.get_mut(vhost) else {
            return Err(message);
        };
        let mut message = message;
        for _ in 0..pool.workers.len() {
            let i = pool.next % pool.workers.len();
            pool.next = i + 1;
            let w = &pool.workers[i];
            let size = message.len();
            if w.queued.load(Ordering::Relaxed) + size > WORKER_QUEUE_BYTES {
                continue;
            }
            match w.tx.try_send(message) {
                Ok(()) => {
                    w.queued.fetch_add(size, Ordering::Relaxed);
                    return Ok(());
                }
                Err(mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m)) => message = m,
            }
        }
        Err(message)
    }

    /// The vhosts with at least one worker here.
    pub fn vhosts(&self) -> Vec<String> {
        self.pools().iter().filter(|(_, p)| !p.workers.is_empty()).map(|(v, _)| v.to_string()).collect()
    }

    pub fn count(&self, vhost: &str) -> usize {
        self.pools().get(vhost).map_or(0, |p| p.workers.len())
    }

    fn add(&self, vhost: &str, tx: mpsc::Sender<String>, queued: Arc<AtomicUsize>, token: Arc<str>) -> u64 {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        self.pools().entry(vhost.into()).or_default().workers.push(Worker { id, tx, queued, token });
        id
    }

    /// Disconnects the workers of `vhost` that connected with another token
    /// than `current` (after a rotation).
    pub fn drop_stale(&self, vhost: &str, current: &str) {
        if let Some(pool) = self.pools().get_mut(vhost) {
            pool.workers.retain(|w| &*w.token == current);
        }
    }

    fn remove(&self, vhost: &str, id: u64) {
        if let Some(pool) = self.pools().get_mut(vhost) {
            pool.workers.retain(|w| w.id != id);
        }
    }

    /// Disconnects every worker of `vhost` (token rotated, vhost deleted).
    pub fn drop_all(&self, vhost: &str) {
        self.pools().remove(vhost);
    }
}

/// A session id as workers see it: the node's id, the connection's
/// process-wide id and its slot — so a reply finds the node and the shard,
/// and checks it is the same session.
pub fn sid(node: &str, owner: crate::handle::Owner) -> String {
    format!("{node}-{:x}-{:x}", owner.id, owner.key)
}

/// The node prefix and the session's handle.
pub fn parse_sid(sid: &str) -> Option<(&str, crate::handle::Owner)> {
    let mut parts = sid.splitn(3, '-');
    let (node, id, key) = (parts.next()?, parts.next()?, parts.next()?);
    let id = u64::from_str_radix(id, 16).ok()?;
    let key = usize::from_str_radix(key, 16).ok()?;
    Some((node, crate::handle::Owner { shard: (id >> 48) as usize, key, id }))
}

/// Whether a sid's node part names `node`.
pub fn is_node(part: &str, node: &str) -> bool {
    part == node
}

/// What a worker connection works with.
pub struct WorkerLink {
    pub vhost: Arc<super::directory::Vhost>,
    /// The token it connected with (a rotation drops it).
    pub token: Arc<str>,
    pub wr: Arc<WebRocket>,
    pub router: ShardRouter,
    pub broker: Arc<dyn crate::bus::Broker>,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
}

/// Serves one upgraded worker connection until it ends, the worker stops
/// answering pings, or its vhost's token is rotated.
pub async fn serve<S>(ws: tokio_tungstenite::WebSocketStream<S>, link: WorkerLink)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let WorkerLink { vhost, token, wr, router, broker, ping_interval, idle_timeout } = link;
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
                    Message::Text(text) => on_message(text.as_str(), &vhost, &wr, &router, &*broker).await,
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
    vhost: &super::directory::Vhost,
    wr: &WebRocket,
    router: &ShardRouter,
    broker: &dyn crate::bus::Broker,
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
                return match broker.session_reply_elsewhere(node, &vhost.path, &sid, frame).await {
                    Ok(PushOutcome::Queued) => None,
                    _ => not_found(),
                };
            }
            if to.shard >= router.shard_count() {
                return not_found();
            }
            let (reply, answer) = futures_channel::oneshot::channel();
            let msg = ShardMsg::Send { to, frame, vhost: vhost.path.clone(), reply };
            if router.send(to.shard, msg).await.is_err() {
                return not_found();
            }
            match answer.await {
                Ok(PushOutcome::Queued) => None,
                _ => not_found(),
            }
        }
        WorkerCommand::Broadcast { channel, event, data } => {
            if !vhost.channel_exists(&channel) && !wr.channel_elsewhere(vhost, &channel).await {
                return Some(super::session::not_found(&channel));
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
