//! The goridge RPC listener (tokio, integration side). Calls on one
//! connection are handled in order; a PublishAsync is answered before its
//! publication completes, but the next call waits for it, which bounds the
//! work one client can queue.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::frame;
use super::service::{self, Action, CallError};
use crate::bus::Broker;
use crate::metrics::{self, Denied, GlobalMetrics};

/// Writes a reply within the write timeout; a client that does not read
/// its replies is dropped (an error ends the connection).
async fn reply(stream: &mut TcpStream, out: &[u8], ctx: &RpcContext) -> std::io::Result<()> {
    match tokio::time::timeout(ctx.write_timeout, stream.write_all(out)).await {
        Ok(r) => r,
        Err(_) => {
            ctx.metrics.deny(Denied::RpcWriteTimeout);
            warn!(
                timeout_ms = ctx.write_timeout.as_millis() as u64,
                "closing rpc connection: the client did not read its reply within rpc.write_timeout_ms"
            );
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "reply not read in time"))
        }
    }
}

pub struct RpcContext {
    pub broker: Arc<dyn Broker>,
    pub broker_name: String,
    pub max_frame_size: usize,
    /// A frame must arrive whole within this of its first byte.
    pub frame_timeout: std::time::Duration,
    pub publish_limits: crate::publish::Limits,
    pub metrics: Arc<GlobalMetrics>,
    /// A reply must be taken by the client within this (`rpc.write_timeout_ms`).
    pub write_timeout: std::time::Duration,
    /// Connections open at once (`rpc.max_connections`).
    pub max_connections: usize,
}

pub async fn serve(listener: TcpListener, ctx: Arc<RpcContext>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(ctx.max_connections));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // Past the cap a connection is closed at once (each may
                // buffer up to rpc.max_frame_size).
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    ctx.metrics.deny(Denied::RpcConnections);
                    debug!(%peer, "rpc connection refused: rpc.max_connections reached");
                    continue;
                };
                let ctx = ctx.clone();
                crate::panics::spawn_tokio(crate::panics::Where::Integration, async move {
                    if let Err(e) = connection(stream, &ctx).await {
                        debug!(%peer, error = %e, "rpc connection closed");
                    }
                    drop(slot);
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
            if call.method_too_long {
                ctx.metrics.deny(Denied::RpcMethodName);
            }
            out.clear();
            match std::mem::replace(&mut call.action, Action::Fail(CallError::Options(0))) {
                Action::Fail(e) => {
                    metrics::inc(&ctx.metrics.rpc_errors);
                    call.error_reply(&mut out, &e.to_string());
                    reply(&mut stream, &out, ctx).await?;
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
                    reply(&mut stream, &out, ctx).await?;
                }
                Action::Publish { messages, wait: false } => {
                    let count = messages.len() as u64;
                    call.ok_reply(&mut out);
                    reply(&mut stream, &out, ctx).await?;
                    match ctx.broker.publish(messages).await {
                        Ok(()) => metrics::add(&ctx.metrics.published_messages, count),
                        Err(e) => warn!(error = %e, "PublishAsync failed after its reply"),
                    }
                }
            }
        }
        buf.drain(..start);
        // A large frame's buffer is not kept for an idle connection.
        if buf.capacity() > 64 * 1024 && buf.len() < 4096 {
            buf.shrink_to(4096);
        }
        // Part of a frame is here: the rest must follow within the frame
        // timeout (a stalled or dribbling sender is cut off). Between frames
        // an idle connection may wait as long as it likes. The clock runs
        // per frame: one that completed restarts it for the next.
        if buf.is_empty() || start > 0 {
            frame_started = None;
        }
        if !buf.is_empty() {
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
