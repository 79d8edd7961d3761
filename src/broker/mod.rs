//! Brokers carry publications to every subscriber of the system. `memory`
//! reaches this node's shards; the network brokers (Redis, NATS) carry an
//! envelope between nodes (`cluster`) and feed what they receive into the
//! same shard router. Shards never learn which one runs: a network broker
//! only adds an interest channel (first / last subscriber of a topic on a
//! shard) that the memory broker does not need.

pub mod cluster;
pub mod envelope;
mod memory;
pub mod nats;
pub mod redis;
pub mod seal;
pub mod transport;

pub use memory::MemoryBroker;
