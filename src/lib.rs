//! ringcast: a thread-per-core WebSocket pub/sub gateway on io_uring.
//! See docs/architecture.md for the map of this crate.

pub mod api;
pub mod auth;
pub mod broker;
pub mod bus;
pub mod clients;
pub mod config;
pub mod ctl;
pub mod dialect;
pub mod handle;
pub mod history;
pub mod hooks;
pub mod limits;
pub mod metrics;
pub mod monitor;
pub mod panics;
pub mod proto;
pub mod publish;
pub mod rpc;
pub mod rt;
pub mod server;
pub mod session;
pub mod shard;
pub mod snapshot;
pub mod stats;
pub mod tls;
pub mod webrocket;
pub mod ws;
