//! Handles that cross every layer: which connection (`Owner`) and what
//! became of a message sent to one (`PushOutcome`). Plain data, no
//! behaviour, so the registry, the bus, the shards and the metrics can all
//! name them without importing each other.

/// A generation-checked handle to a connection, valid across shards and
/// awaits: `key` is its slab slot (reused after it closes), `id` is unique
/// for the process, so a handle never names a later connection in the slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owner {
    pub shard: usize,
    pub key: usize,
    pub id: u64,
}

/// What happened to a message for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Queued,
    NotConnected,
    /// The client's queue was over its budget; it is being closed.
    SlowConsumer,
}
