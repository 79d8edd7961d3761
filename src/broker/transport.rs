//! What the cluster needs of a network broker: subscribe (confirmed),
//! unsubscribe, publish (accepted), and a stream of what arrives. Redis and
//! NATS implement it; each keeps its subscriptions across reconnects itself.

use std::time::Duration;

use bytes::Bytes;

use crate::bus::BoxFuture;

/// Why a broker operation failed; what the cluster logs and counts.
#[derive(Debug, Clone)]
pub struct TransportError {
    kind: TransportErrorKind,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransportErrorKind {
    /// The broker's URL or client settings cannot be used.
    Config,
    /// Not connected now (the transport reconnects by itself).
    Disconnected,
    /// No answer within the operation timeout.
    Timeout,
    /// The broker or its client refused or failed the operation.
    Broker,
}

impl TransportError {
    pub fn config(message: impl Into<String>) -> TransportError {
        TransportError { kind: TransportErrorKind::Config, message: message.into() }
    }

    pub fn disconnected() -> TransportError {
        TransportError { kind: TransportErrorKind::Disconnected, message: "not connected".into() }
    }

    pub fn timeout(after: std::time::Duration) -> TransportError {
        let message = format!("no answer within {} s", after.as_secs());
        TransportError { kind: TransportErrorKind::Timeout, message }
    }

    pub fn broker(e: impl std::fmt::Display) -> TransportError {
        TransportError { kind: TransportErrorKind::Broker, message: e.to_string() }
    }

    pub fn is_config(&self) -> bool {
        self.kind == TransportErrorKind::Config
    }

    pub fn is_disconnected(&self) -> bool {
        self.kind == TransportErrorKind::Disconnected
    }

    pub fn is_timeout(&self) -> bool {
        self.kind == TransportErrorKind::Timeout
    }
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TransportError {}

/// A message from the broker.
#[derive(Debug)]
pub struct Incoming {
    pub subject: String,
    pub payload: Bytes,
    /// NATS: where a request wants its answer.
    pub reply: Option<String>,
}

/// Where arriving messages go (bounded: a slow node makes the broker's
/// buffers, not ours, absorb the difference, and loss shows as gaps).
pub type IncomingSender = tokio::sync::mpsc::Sender<Incoming>;

/// Reconnect delays: 100 ms doubling to 5 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6))).min(Duration::from_secs(5))
}

/// How long a broker operation may take before the caller gets an error.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(3);

pub trait Transport: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Connected right now.
    fn connected(&self) -> bool;

    /// Why it is not connected (for `/health` and logs).
    fn last_error(&self) -> String;

    /// The broker subject of a topic and of a ClientId's pushes, and this
    /// node's reply subject.
    fn topic_subject(&self, topic: &str) -> String;
    fn client_subject(&self, client: &str) -> String;
    fn reply_subject(&self, node: &str) -> String;
    /// What every node hears: replication, heartbeats, queries.
    fn control_subject(&self) -> String;

    /// Subscribes; Ok once the broker confirmed. While disconnected it
    /// fails at once, and the subscription is made on reconnect.
    fn subscribe(&self, subject: String) -> BoxFuture<'_, Result<(), TransportError>>;

    fn unsubscribe(&self, subject: String) -> BoxFuture<'_, Result<(), TransportError>>;

    /// Publishes each (subject, payload) in order; Ok once the broker took
    /// them all. `Some(n)` per item where the broker says how many
    /// subscribers got it (Redis), `None` where it cannot (NATS).
    fn publish(
        &self,
        items: Vec<(String, Bytes)>,
    ) -> BoxFuture<'_, Result<Vec<Option<usize>>, TransportError>>;

    /// A request answered by one subscriber of `subject` (NATS request
    /// reply); `Ok(None)` when nobody subscribes. `None` (outer) when the
    /// broker has no requests of its own: the cluster then publishes with
    /// a reply subject and waits itself.
    fn has_requests(&self) -> bool {
        false
    }

    fn request(
        &self,
        _subject: String,
        _body: Bytes,
    ) -> Option<BoxFuture<'_, Result<Option<Bytes>, TransportError>>> {
        None
    }
}
