//! Where each proxy ClientId lives: one map for the node, so a push goes
//! straight to the owning shard without scanning connections. The map lives
//! on the integration thread: shards never lock it, they send their claims
//! and releases to `run` (a non-blocking channel send) and await a claim's
//! answer. Pushes look the owner up there too, so its lock is never
//! contended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_channel::oneshot;
use tokio::sync::mpsc;

use crate::handle::Owner;

#[derive(Debug, Default)]
pub struct ClientRegistry {
    map: Mutex<HashMap<Box<str>, Owner>>,
}

impl ClientRegistry {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Owner>> {
        // A panic elsewhere while holding the lock leaves the map intact.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `owner` under `client`. If the id is live: with `replace`
    /// the old owner is returned (to be closed), else `Err` with the owner.
    pub fn claim(&self, client: &str, owner: Owner, replace: bool) -> Claim {
        let mut map = self.map();
        match map.get_mut(client) {
            Some(old) if !replace => Claim::Taken(*old),
            Some(old) => Claim::Replaced(std::mem::replace(old, owner)),
            None => {
                map.insert(client.into(), owner);
                Claim::Registered
            }
        }
    }

    /// Forgets `client` if `owner` still holds it (a replacement may not);
    /// true if it did.
    pub fn release(&self, client: &str, owner: Owner) -> bool {
        let mut map = self.map();
        if map.get(client) == Some(&owner) {
            map.remove(client);
            return true;
        }
        false
    }

    pub fn lookup(&self, client: &str) -> Option<Owner> {
        self.map().get(client).copied()
    }
}

/// What a claim of a ClientId got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Registered; nobody held it.
    Registered,
    /// Registered; the connection that held it is to be closed.
    Replaced(Owner),
    /// Refused: a live connection holds it.
    Taken(Owner),
    /// The registry is gone (shutting down).
    ShuttingDown,
}

enum Op {
    Claim { client: Box<str>, owner: Owner, replace: bool, reply: oneshot::Sender<Claim> },
    Release { client: Box<str>, owner: Owner },
}

/// A shard's way to the registry: sending never blocks.
#[derive(Clone)]
pub struct RegistryHandle {
    tx: mpsc::UnboundedSender<Op>,
}

pub struct RegistryOps {
    rx: mpsc::UnboundedReceiver<Op>,
}

pub fn handle() -> (RegistryHandle, RegistryOps) {
    let (tx, rx) = mpsc::unbounded_channel();
    (RegistryHandle { tx }, RegistryOps { rx })
}

impl RegistryHandle {
    pub async fn claim(&self, client: &str, owner: Owner, replace: bool) -> Claim {
        let (reply, answer) = oneshot::channel();
        let op = Op::Claim { client: client.into(), owner, replace, reply };
        if self.tx.send(op).is_err() {
            return Claim::ShuttingDown;
        }
        answer.await.unwrap_or(Claim::ShuttingDown)
    }

    pub fn release(&self, client: &str, owner: Owner) {
        let _ = self.tx.send(Op::Release { client: client.into(), owner });
    }
}

/// Applies the shards' claims and releases in order (integration thread),
/// telling `here(client, true/false)` which ClientIds this node starts and
/// stops holding (the cluster announces them, so pushes from other nodes
/// find them).
pub async fn run(mut ops: RegistryOps, registry: Arc<ClientRegistry>, here: impl Fn(&str, bool)) {
    while let Some(op) = ops.rx.recv().await {
        match op {
            Op::Claim { client, owner, replace, reply } => {
                let claimed = registry.claim(&client, owner, replace);
                if claimed == Claim::Registered {
                    here(&client, true);
                }
                let _ = reply.send(claimed);
            }
            Op::Release { client, owner } => {
                if registry.release(&client, owner) {
                    here(&client, false);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(id: u64) -> Owner {
        Owner { shard: 0, key: id as usize, id }
    }

    #[test]
    fn claim_replace_reject_release() {
        let r = ClientRegistry::default();
        assert_eq!(r.claim("a", owner(1), true), Claim::Registered);
        assert_eq!(r.claim("a", owner(2), false), Claim::Taken(owner(1)));
        assert_eq!(r.claim("a", owner(3), true), Claim::Replaced(owner(1)));
        r.release("a", owner(1));
        assert_eq!(r.lookup("a"), Some(owner(3)), "the replaced owner's release is a no-op");
        r.release("a", owner(3));
        assert_eq!(r.lookup("a"), None);
    }
}
