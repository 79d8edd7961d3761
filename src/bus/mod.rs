//! The bus: what the control plane and the shards say to each other. The
//! messages into a shard (`ShardMsg`) and out of it to a network broker
//! (`Interest`), the router that carries them (`router`) and the port the
//! shards and the control plane publish and ask through (`ports`). It names
//! no shard internals and no broker: both sides import it, neither imports
//! the other.

pub mod gateway;
mod messages;
pub mod ports;
pub mod router;

pub use messages::{Interest, InterestReceiver, InterestSender, ShardMsg};
pub use ports::{BoxFuture, Broker, Peers};
pub use router::{Closed, Inbox, ShardRouter, TrySendError};
