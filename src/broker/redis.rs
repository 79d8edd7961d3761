//! Redis pub/sub as the cluster's transport (the `redis` crate): one pub/sub
//! connection for subscriptions and one multiplexed connection for
//! PUBLISH, both re-made with capped backoff after a failure; every
//! subscribed channel is subscribed again on reconnect.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink};
use tracing::{info, warn};

use super::transport::{backoff, Incoming, IncomingSender, Transport, TransportError, OPERATION_TIMEOUT};
use crate::bus::BoxFuture;

#[derive(Default)]
struct Links {
    sink: Option<PubSubSink>,
    publisher: Option<MultiplexedConnection>,
    last_error: String,
}

pub struct RedisTransport {
    client: redis::Client,
    prefix: String,
    links: Mutex<Links>,
    /// Channels wanted, subscribed again on every reconnect.
    wanted: Mutex<HashSet<String>>,
    connected: AtomicBool,
    reconnects: Arc<AtomicU64>,
}

fn timeout_error<T>(r: Result<T, tokio::time::error::Elapsed>) -> Result<T, TransportError> {
    r.map_err(|_| TransportError::timeout(OPERATION_TIMEOUT))
}

impl RedisTransport {
    /// Starts connecting in the background (a node starts while Redis is down).
    pub fn start(
        url: &str,
        prefix: &str,
        incoming: IncomingSender,
        reconnects: Arc<AtomicU64>,
    ) -> Result<Arc<RedisTransport>, TransportError> {
        let client = redis::Client::open(url)
            .map_err(|e| TransportError::config(format!("invalid redis.url {url:?}: {e}")))?;
        let t = Arc::new(RedisTransport {
            client,
            prefix: prefix.to_string(),
            links: Mutex::new(Links { last_error: "connecting".into(), ..Default::default() }),
            wanted: Mutex::new(HashSet::new()),
            connected: AtomicBool::new(false),
            reconnects,
        });
        tokio::spawn(t.clone().run(incoming));
        Ok(t)
    }

    fn links(&self) -> std::sync::MutexGuard<'_, Links> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wanted(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.wanted.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn run(self: Arc<Self>, incoming: IncomingSender) {
        let mut attempt = 0;
        let mut ever = false;
        loop {
            match self.connect().await {
                Ok(mut stream) => {
                    attempt = 0;
                    if ever {
                        self.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    ever = true;
                    info!("redis broker connected");
                    while let Some(msg) = stream.next().await {
                        let subject = msg.get_channel_name().to_string();
                        let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                        if incoming.send(Incoming { subject, payload, reply: None }).await.is_err() {
                            return;
                        }
                    }
                    self.connected.store(false, Ordering::SeqCst);
                    let mut l = self.links();
                    l.sink = None;
                    l.publisher = None;
                    l.last_error = "connection lost".into();
                    warn!("redis broker connection lost; reconnecting");
                }
                Err(e) => {
                    if attempt == 0 {
                        warn!(error = %e, "redis broker unreachable; retrying");
                    }
                    self.links().last_error = e.to_string();
                }
            }
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
        }
    }

    /// Both connections, every wanted channel subscribed; then connected.
    async fn connect(&self) -> Result<redis::aio::PubSubStream, TransportError> {
        let pubsub =
            timeout_error(tokio::time::timeout(OPERATION_TIMEOUT, self.client.get_async_pubsub()).await)?
                .map_err(TransportError::broker)?;
        let publisher = timeout_error(
            tokio::time::timeout(OPERATION_TIMEOUT, self.client.get_multiplexed_async_connection()).await,
        )?
        .map_err(TransportError::broker)?;
        let (mut sink, stream) = pubsub.split();
        // Subscriptions wanted meanwhile are in `wanted` too: subscribing
        // twice is harmless in Redis.
        let wanted: Vec<String> = self.wanted().iter().cloned().collect();
        for channel in wanted {
            timeout_error(tokio::time::timeout(OPERATION_TIMEOUT, sink.subscribe(&channel)).await)?
                .map_err(TransportError::broker)?;
        }
        let mut l = self.links();
        l.sink = Some(sink);
        l.publisher = Some(publisher);
        l.last_error.clear();
        self.connected.store(true, Ordering::SeqCst);
        Ok(stream)
    }
}

impl Transport for RedisTransport {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    fn last_error(&self) -> String {
        self.links().last_error.clone()
    }

    fn topic_subject(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    fn client_subject(&self, client: &str) -> String {
        format!("{}client:{client}", self.prefix)
    }

    fn reply_subject(&self, node: &str) -> String {
        format!("{}reply:{node}", self.prefix)
    }

    fn control_subject(&self) -> String {
        format!("{}control", self.prefix)
    }

    fn subscribe(&self, subject: String) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            self.wanted().insert(subject.clone());
            let sink = self.links().sink.clone().ok_or_else(TransportError::disconnected)?;
            let mut sink = sink;
            timeout_error(tokio::time::timeout(OPERATION_TIMEOUT, sink.subscribe(&subject)).await)?
                .map_err(TransportError::broker)
        })
    }

    fn unsubscribe(&self, subject: String) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            self.wanted().remove(&subject);
            let Some(mut sink) = self.links().sink.clone() else {
                return Ok(());
            };
            timeout_error(tokio::time::timeout(OPERATION_TIMEOUT, sink.unsubscribe(&subject)).await)?
                .map_err(TransportError::broker)
        })
    }

    fn publish(
        &self,
        items: Vec<(String, Bytes)>,
    ) -> BoxFuture<'_, Result<Vec<Option<usize>>, TransportError>> {
        Box::pin(async move {
            let mut conn = self.links().publisher.clone().ok_or_else(TransportError::disconnected)?;
            let mut pipe = redis::pipe();
            for (subject, payload) in &items {
                pipe.cmd("PUBLISH").arg(subject).arg(&payload[..]);
            }
            let counts: Vec<usize> =
                timeout_error(tokio::time::timeout(OPERATION_TIMEOUT, pipe.query_async(&mut conn)).await)?
                    .map_err(TransportError::broker)?;
            Ok(counts.into_iter().map(Some).collect())
        })
    }
}
