//! Where each proxy ClientId lives: one map for the node, touched when a
//! client connects or leaves (never per message), so a push goes straight
//! to the owning shard without scanning connections.

use std::collections::HashMap;
use std::sync::Mutex;

/// A generation-checked handle to a connection, valid across shards and
/// awaits: `key` is its slab slot (reused after it closes), `id` is unique
/// for the process, so a handle never names a later connection in the slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owner {
    pub shard: usize,
    pub key: usize,
    pub id: u64,
}

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
    pub fn claim(&self, client: &str, owner: Owner, replace: bool) -> Result<Option<Owner>, Owner> {
        let mut map = self.map();
        match map.get_mut(client) {
            Some(old) if !replace => Err(*old),
            Some(old) => Ok(Some(std::mem::replace(old, owner))),
            None => {
                map.insert(client.into(), owner);
                Ok(None)
            }
        }
    }

    /// Forgets `client` if `owner` still holds it (a replacement may not).
    pub fn release(&self, client: &str, owner: Owner) {
        let mut map = self.map();
        if map.get(client) == Some(&owner) {
            map.remove(client);
        }
    }

    pub fn lookup(&self, client: &str) -> Option<Owner> {
        self.map().get(client).copied()
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
        assert_eq!(r.claim("a", owner(1), true), Ok(None));
        assert_eq!(r.claim("a", owner(2), false), Err(owner(1)));
        assert_eq!(r.claim("a", owner(3), true), Ok(Some(owner(1))));
        r.release("a", owner(1));
        assert_eq!(r.lookup("a"), Some(owner(3)), "the replaced owner's release is a no-op");
        r.release("a", owner(3));
        assert_eq!(r.lookup("a"), None);
    }
}
