//! Abuse limits on the public port (docs/security.md): who the client is
//! behind trusted proxies (`address.rs`), open connections and handshakes
//! per address (`per_ip.rs`), a connection's message rate (`bucket.rs`).

mod address;
mod bucket;
mod per_ip;

pub use address::{canonical, client_address, Cidr};
pub use bucket::{Bucket, Rate};
pub use per_ip::{Admission, IpSlot, PerIp};

/// A limit that was hit: the `limit` label of `ringcast_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    ConnectionsPerIp,
    HandshakesPerIp,
    MessagesPerS,
    TopicLength,
}

impl Limit {
    pub const ALL: [Limit; 4] =
        [Limit::ConnectionsPerIp, Limit::HandshakesPerIp, Limit::MessagesPerS, Limit::TopicLength];

    pub fn label(self) -> &'static str {
        match self {
            Limit::ConnectionsPerIp => "connections_per_ip",
            Limit::HandshakesPerIp => "handshakes_per_ip",
            Limit::MessagesPerS => "messages_per_s",
            Limit::TopicLength => "topic_length",
        }
    }
}
