//! Backend workers' pools: per vhost, the connected workers (served by
//! `api::workers`) a trigger goes to, one of them round-robin, and the
//! session ids (`sid`) their replies are addressed by. Shards hand triggers
//! over with a non-blocking `try_send`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

/// Triggers waiting for one worker, in number and in bytes; past either
/// the next worker is tried (and with none left, ASSIGNATION_FAILED).
pub const WORKER_QUEUE: usize = 1024;
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

/// No worker here took a trigger: the message, handed back (to try
/// another node).
#[derive(Debug)]
pub struct NoWorker(pub String);

impl Workers {
    fn pools(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Pool>> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives `message` to the next worker of `vhost` that has room; gives
    /// it back when none is connected or all are full.
    pub fn assign(&self, vhost: &str, message: String) -> Result<(), NoWorker> {
        let mut pools = self.pools();
        let Some(pool) = pools.get_mut(vhost) else {
            return Err(NoWorker(message));
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
        Err(NoWorker(message))
    }

    /// The vhosts with at least one worker here.
    pub fn vhosts(&self) -> Vec<String> {
        self.pools().iter().filter(|(_, p)| !p.workers.is_empty()).map(|(v, _)| v.to_string()).collect()
    }

    pub fn count(&self, vhost: &str) -> usize {
        self.pools().get(vhost).map_or(0, |p| p.workers.len())
    }

    pub fn add(
        &self,
        vhost: &str,
        tx: mpsc::Sender<String>,
        queued: Arc<AtomicUsize>,
        token: Arc<str>,
    ) -> u64 {
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

    pub fn remove(&self, vhost: &str, id: u64) {
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
