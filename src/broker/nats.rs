//! NATS as the cluster's transport (`async-nats`): the client reconnects
//! (capped backoff) and re-sends its subscriptions by itself. Subjects are
//! `<prefix>t.<topic>` with the topic base64url-encoded (topics may hold
//! characters NATS subjects may not), likewise for ClientIds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use tracing::warn;

use super::transport::{backoff, Incoming, IncomingSender, Transport, TransportError, OPERATION_TIMEOUT};
use crate::bus::BoxFuture;

pub struct NatsTransport {
    client: async_nats::Client,
    prefix: String,
    incoming: IncomingSender,
    /// Subject → the task forwarding its messages (dropping the
    /// subscriber, when aborted, unsubscribes).
    subscriptions: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    last_error: Arc<Mutex<String>>,
}

fn encode(name: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(name)
}

fn timeout_error<T>(r: Result<T, tokio::time::error::Elapsed>) -> Result<T, TransportError> {
    r.map_err(|_| TransportError::timeout(OPERATION_TIMEOUT))
}

impl NatsTransport {
    /// Connects in the background (a node starts while NATS is down).
    /// `urls` is a comma-separated list of servers of one NATS cluster.
    pub async fn start(
        urls: &str,
        prefix: &str,
        incoming: IncomingSender,
        reconnects: Arc<AtomicU64>,
    ) -> Result<Arc<NatsTransport>, TransportError> {
        let servers: Vec<async_nats::ServerAddr> = urls
            .split(',')
            .map(|u| {
                u.trim().parse().map_err(|e| TransportError::config(format!("invalid nats.url {u:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let last_error = Arc::new(Mutex::new("connecting".to_string()));
        let events = last_error.clone();
        let options = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| backoff(attempts as u32))
            // Messages a subscription buffers before NATS counts us a slow
            // consumer and drops (then seen as gaps, never silently).
            .subscription_capacity(16 * 1024)
            .event_callback(move |event| {
                let events = events.clone();
                let reconnects = reconnects.clone();
                async move {
                    let mut e = events.lock().unwrap_or_else(|e| e.into_inner());
                    match event {
                        async_nats::Event::Connected => {
                            if e.as_str() != "connecting" {
                                reconnects.fetch_add(1, Ordering::Relaxed);
                            }
                            e.clear();
                        }
                        async_nats::Event::Disconnected => {
                            warn!("nats broker connection lost; reconnecting");
                            *e = "connection lost".into();
                        }
                        other => *e = other.to_string(),
                    }
                }
            });
        let client = async_nats::connect_with_options(servers, options)
            .await
            .map_err(|e| TransportError::config(format!("cannot start the NATS client: {e}")))?;
        Ok(Arc::new(NatsTransport {
            client,
            prefix: prefix.to_string(),
            incoming,
            subscriptions: Mutex::new(HashMap::new()),
            last_error,
        }))
    }

    fn subscriptions(&self) -> std::sync::MutexGuard<'_, HashMap<String, tokio::task::JoinHandle<()>>> {
        self.subscriptions.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn flush(&self) -> Result<(), TransportError> {
        timeout_error(tokio::time::timeout(OPERATION_TIMEOUT, self.client.flush()).await)?
            .map_err(TransportError::broker)
    }
}

impl Transport for NatsTransport {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn last_error(&self) -> String {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn topic_subject(&self, topic: &str) -> String {
        format!("{}t.{}", self.prefix, encode(topic))
    }

    fn client_subject(&self, client: &str) -> String {
        format!("{}c.{}", self.prefix, encode(client))
    }

    fn reply_subject(&self, node: &str) -> String {
        format!("{}r.{}", self.prefix, encode(node))
    }

    fn control_subject(&self) -> String {
        format!("{}control", self.prefix)
    }

    fn subscribe(&self, subject: String) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            if self.subscriptions().contains_key(&subject) {
                return if self.connected() {
                    self.flush().await
                } else {
                    Err(TransportError::disconnected())
                };
            }
            // The client queues the SUB while disconnected and sends it (and
            // every other) on reconnect.
            let mut subscriber =
                self.client.subscribe(subject.clone()).await.map_err(TransportError::broker)?;
            let incoming = self.incoming.clone();
            let name = subject.clone();
            let task = tokio::spawn(async move {
                while let Some(m) = subscriber.next().await {
                    let reply = m.reply.map(|r| r.to_string());
                    let msg = Incoming { subject: name.clone(), payload: m.payload, reply };
                    if incoming.send(msg).await.is_err() {
                        return;
                    }
                }
            });
            if let Some(old) = self.subscriptions().insert(subject, task) {
                old.abort();
            }
            if !self.connected() {
                return Err(TransportError::disconnected());
            }
            // PING/PONG after the SUB: the server has it.
            self.flush().await
        })
    }

    fn unsubscribe(&self, subject: String) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            if let Some(task) = self.subscriptions().remove(&subject) {
                task.abort();
            }
            Ok(())
        })
    }

    fn publish(
        &self,
        items: Vec<(String, Bytes)>,
    ) -> BoxFuture<'_, Result<Vec<Option<usize>>, TransportError>> {
        Box::pin(async move {
            // The client would queue publications while disconnected and
            // send them later: refuse instead, the publisher hears of it.
            if !self.connected() {
                return Err(TransportError::disconnected());
            }
            let n = items.len();
            for (subject, payload) in items {
                self.client.publish(subject, payload).await.map_err(TransportError::broker)?;
            }
            self.flush().await?;
            Ok(vec![None; n])
        })
    }

    fn has_requests(&self) -> bool {
        true
    }

    fn request(
        &self,
        subject: String,
        body: Bytes,
    ) -> Option<BoxFuture<'_, Result<Option<Bytes>, TransportError>>> {
        Some(Box::pin(async move {
            if !self.connected() {
                return Err(TransportError::disconnected());
            }
            let asked = tokio::time::timeout(OPERATION_TIMEOUT, self.client.request(subject, body)).await;
            match timeout_error(asked)? {
                Ok(m) => Ok(Some(m.payload)),
                Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(None),
                Err(e) => Err(TransportError::broker(e)),
            }
        }))
    }
}
