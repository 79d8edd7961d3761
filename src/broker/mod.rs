//! Brokers carry publications to every subscriber of the system. `memory`
//! reaches this node's shards; network brokers (Redis, NATS) implement the
//! same trait and feed what they receive into the same shard router.

mod memory;

use std::future::Future;
use std::pin::Pin;

pub use memory::MemoryBroker;

use crate::publish::{Message, PublishError};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Broker: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Publishes validated messages; resolves once they are handed to the
    /// local shards (and, for a network broker, accepted by it).
    fn publish(&self, messages: Vec<Message>) -> BoxFuture<'_, Result<(), PublishError>>;
}
