//! Dialects: the wire protocol a vhost speaks to its clients. Each is a codec
//! free of I/O: client message bytes in, commands out; events in, frames out.

pub mod proxy;
pub mod roadrunner;
pub mod webrocket;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// RoadRunner websockets plugin protocol (docs/protocols.md §2).
    #[serde(rename = "roadrunner")]
    RoadRunner,
    /// Echoes every message back; for conformance testing.
    Echo,
    /// ws2api: every message is an HTTP request to the backend (§4).
    Proxy,
    /// WebRocket: vhost users, channels and backend workers (docs/protocols.md §7).
    #[serde(rename = "webrocket")]
    WebRocket,
}

impl std::fmt::Display for Dialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dialect::RoadRunner => "roadrunner",
            Dialect::Echo => "echo",
            Dialect::Proxy => "proxy",
            Dialect::WebRocket => "webrocket",
        })
    }
}
