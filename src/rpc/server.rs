//! The goridge RPC listener (tokio, integration side). Calls on one
//! connection are handled in order; a PublishAsync is answered before its
//! publication completes, but the next call waits for it, which bounds the
//! work one client can queue.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::frame;
use super::service::{self, Action};
use crate::broker::Broker;
use crate::metrics::{self, GlobalMetrics};

pub struct RpcContext {
    pub broker: Arc<dyn Broker>,
    pub broker_name: String,
    pub max_frame_size: usize,
    /// A frame must arrive whole within this of its first byte.
    pub frame_timeout: std::time::Duration,
    pub publish_limits: crate::publish::Limits,
    pub metrics: Arc<GlobalMetrics>,
}

pub async fn serve(listener: TcpListener, ctx: Arc<RpcContext>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, &ctx).await {
                        debug!(%peer, error = %e, "rpc connection closed");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "rpc accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(mut stream: TcpStream, ctx: &RpcContext) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut out = Vec::with_capacity(256);
    let mut frame_started: Option<tokio::time::Instant> = None;
    loop {
        // Handle every complete frame in the buffer.
        let mut start = 0;
        loop {
            let decoded = match frame::decode(&buf[start..], ctx.max_frame_size) {
                Ok(d) => d,
                Err(e) => {
                    warn!(error = %e, "closing rpc connection: malformed goridge frame");
                    return Ok(());
                }
            };
            let Some((f, used)) = decoded else { break };
            start += used;
            metrics::inc(&ctx.metrics.rpc_requests);
            let mut call = service::interpret(&f, &ctx.broker_name, &ctx.publish_limits);
            out.clear();
            match std::mem::replace(&mut call.action, Action::Fail(String::new())) {
                Action::Fail(e) => {
                    metrics::inc(&ctx.metrics.rpc_errors);
                    call.error_reply(&mut out, &e);
                    stream.write_all(&out).await?;
                }
                Action::Publish { messages, wait: true } => {
                    let count = messages.len() as u64;
                    match ctx.broker.publish(messages).await {
                        Ok(()) => {
                            metrics::add(&ctx.metrics.published_messages, count);
                            call.ok_reply(&mut out);
                        }
                        Err(e) => {
                            metrics::inc(&ctx.metrics.rpc_errors);
                            call.error_reply(&mut out, &e.to_string());
                        }
                    }
                    stream.write_all(&out).await?;
                }
                Action::Publish { messages, wait: false } => {
                    let count = messages.len() as u64;
                    call.ok_reply(&mut out);
                    stream.write_all(&out).await?;
                    match ctx.broker.publish(messages).await {
                        Ok(()) => metrics::add(&ctx.metrics.published_messages, count),
                        Err(e) => warn!(error = %e, "PublishAsync failed after its reply"),
                    }
                }
            }
        }
        buf.drain(..start);
        // Part of a frame is here: the rest must follow within the frame
        // timeout (a stalled or dribbling sender is cut off). Between frames
        // an idle connection may wait as long as it likes.
        if buf.is_empty() {
            frame_started = None;
        } else {
            frame_started.get_or_insert_with(tokio::time::Instant::now);
        }
        // Read more; the decoder has already refused oversized claims.
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(4096);
        }
        let read = stream.read_buf(&mut buf);
        let n = match frame_started {
            None => read.await?,
            Some(t) => match tokio::time::timeout_at(t + ctx.frame_timeout, read).await {
                Ok(n) => n?,
                Err(_) => {
                    warn!(
                        timeout_ms = ctx.frame_timeout.as_millis() as u64,
                        "closing rpc connection: frame not completed within rpc.frame_timeout_ms"
                    );
                    return Ok(());
                }
            },
        };
        if n == 0 {
            return Ok(());
        }
    }
}
