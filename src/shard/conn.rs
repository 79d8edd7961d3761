//! One client connection: the upgrade handshake, then a single task that
//! reads into the shard's scratch buffer, decodes frames in place, and writes
//! its queue of shared frames with one `sendmsg` per batch.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::send_queue::{OverBudget, SendQueue};
use super::topics::ConnKey;
use super::{Shard, CLOSE_LINGER};
use crate::dialect::roadrunner::{self, Command, Reply};
use crate::dialect::Dialect;
use crate::metrics;
use crate::rt::{self, TcpStream};
use crate::ws::handshake::{self, HttpError, MAX_REQUEST_HEAD};
use crate::ws::{close_frame, data_frame, Decoder, Event, Flow};

pub type ConnRef = Rc<RefCell<ConnState>>;

/// The part of a connection that the shard touches: fanout pushes frames,
/// the keepalive pass pings, shutdown closes.
#[derive(Debug)]
pub struct ConnState {
    pub queue: SendQueue,
    waker: Option<Waker>,
    /// Topics joined; names shared with the shard's topic index.
    pub topics: Vec<Rc<str>>,
    pub last_rx_ms: u64,
    pub ping_outstanding: bool,
    /// A Close is queued: nothing more is sent, input is ignored.
    closing: bool,
    /// Drop the connection now.
    forced: bool,
}

impl ConnState {
    fn new(now_ms: u64) -> Self {
        ConnState {
            queue: SendQueue::default(),
            waker: None,
            topics: Vec::new(),
            last_rx_ms: now_ms,
            ping_outstanding: false,
            closing: false,
            forced: false,
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Queues a frame within `budget` bytes; frames for a closing
    /// connection are dropped silently.
    pub fn push(&mut self, frame: Bytes, budget: usize) -> Result<(), OverBudget> {
        if self.closing {
            return Ok(());
        }
        let was_empty = self.queue.is_empty();
        self.queue.push(frame, budget)?;
        if was_empty {
            self.wake();
        }
        Ok(())
    }

    /// Queues `close` as the last frame. False if already closing.
    pub fn begin_close(&mut self, close: Bytes) -> bool {
        if self.closing {
            return false;
        }
        self.queue.push_unbounded(close);
        self.closing = true;
        self.wake();
        true
    }

    pub fn force_close(&mut self) {
        self.forced = true;
        self.wake();
    }

    fn wake(&mut self) {
        if let Some(w) = &self.waker {
            w.wake_by_ref();
        }
    }
}

/// Answers a connection over `max_connections` with 503 and closes it.
pub async fn refuse(mut stream: TcpStream) {
    let resp = HttpError::new(503, "server at max_connections").response();
    let _ = futures_lite::future::or(async { stream.write_all(&resp).await }, async {
        rt::sleep(Duration::from_secs(1)).await;
        Ok(())
    })
    .await;
}

/// Releases the global connection slot however the connection ends.
struct Slot(Rc<Shard>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

pub async fn serve(shard: Rc<Shard>, mut stream: TcpStream) {
    let _slot = Slot(shard.clone());
    rt::set_nodelay(&stream);
    let Some((vhost, upgrade, mut leftover)) = upgrade(&shard, &mut stream).await else {
        return;
    };
    // Registered before the 101 goes out: once a client sees the upgrade
    // complete, the gateway already counts and can address it.
    let state = Rc::new(RefCell::new(ConnState::new(shard.now_ms())));
    let key = shard.register(state.clone());
    if stream.write_all(&upgrade.response()).await.is_err() {
        shard.unregister(key);
        return;
    }
    let mut conn = Connection {
        stream,
        decoder: Decoder::new(),
        state,
        shard: shard.clone(),
        key,
        dialect: shard.config.vhosts[vhost].dialect,
        write_shut: false,
    };
    if !leftover.is_empty() {
        conn.on_bytes(&mut leftover);
        drop(leftover);
    }
    poll_fn(|cx| conn.poll(cx)).await;
    shard.unregister(key);
}

enum HandshakeEnd {
    Refused(HttpError),
    /// The peer went away or the socket failed: nobody to answer.
    Gone,
}

/// Reads the upgrade request within the handshake timeout, answering
/// refusals. Returns the vhost index, the upgrade, and any bytes that
/// followed the request.
async fn upgrade(shard: &Shard, stream: &mut TcpStream) -> Option<(usize, handshake::Upgrade, Vec<u8>)> {
    let timeout = Duration::from_millis(shard.config.limits.handshake_timeout_ms);
    let outcome = futures_lite::future::or(read_upgrade(shard, stream), async {
        rt::sleep(timeout).await;
        Err(HandshakeEnd::Refused(HttpError::new(408, "handshake timeout")))
    })
    .await;
    let response = match outcome {
        Ok(accepted) => return Some(accepted),
        Err(HandshakeEnd::Gone) => None,
        Err(HandshakeEnd::Refused(e)) => Some(e.response()),
    };
    metrics::inc(&shard.metrics.handshake_failures);
    if let Some(resp) = response {
        let _ = futures_lite::future::or(async { stream.write_all(&resp).await }, async {
            rt::sleep(Duration::from_secs(1)).await;
            Ok(())
        })
        .await;
    }
    None
}

async fn read_upgrade(
    shard: &Shard,
    stream: &mut TcpStream,
) -> Result<(usize, handshake::Upgrade, Vec<u8>), HandshakeEnd> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let filled = buf.len();
        buf.resize((filled + 1024).min(MAX_REQUEST_HEAD + 1), 0);
        let n = stream.read(&mut buf[filled..]).await.map_err(|_| HandshakeEnd::Gone)?;
        buf.truncate(filled + n);
        if n == 0 {
            return Err(HandshakeEnd::Gone);
        }
        metrics::add(&shard.metrics.bytes_in, n as u64);
        let Some((upgrade, used)) = handshake::parse(&buf).map_err(HandshakeEnd::Refused)? else {
            continue;
        };
        let vhosts = &shard.config.vhosts;
        let Some(vhost) = vhosts.iter().position(|v| v.path == upgrade.path) else {
            return Err(HandshakeEnd::Refused(HttpError::new(
                404,
                format!("no WebSocket endpoint at {}", upgrade.path),
            )));
        };
        if !handshake::origin_allowed(&vhosts[vhost].allowed_origin, upgrade.origin.as_deref()) {
            return Err(HandshakeEnd::Refused(HttpError::new(403, "origin not allowed")));
        }
        return Ok((vhost, upgrade, buf.split_off(used)));
    }
}

/// Reads handled per wake-up before yielding to other connections.
const READS_PER_POLL: usize = 16;
/// Frames gathered into one `sendmsg`.
const MAX_IOV: usize = 64;

struct Connection {
    stream: TcpStream,
    decoder: Decoder,
    state: ConnRef,
    shard: Rc<Shard>,
    key: ConnKey,
    dialect: Dialect,
    write_shut: bool,
}

impl Connection {
    /// Ready when the connection is finished and can be dropped.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut st = self.state.borrow_mut();
            if st.forced {
                return Poll::Ready(());
            }
            if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                st.waker = Some(cx.waker().clone());
            }
        }
        for _ in 0..READS_PER_POLL {
            if self.flush(cx).is_err() {
                return Poll::Ready(());
            }
            let closing = {
                let st = self.state.borrow();
                if st.closing && st.queue.is_empty() && !self.write_shut {
                    // Our Close is out: FIN, then wait for the peer's end.
                    rt::shutdown_write(&self.stream);
                    self.write_shut = true;
                }
                st.closing
            };
            let shard = self.shard.clone();
            let mut buf = shard.read_buf.borrow_mut();
            match rt::poll_read(&mut self.stream, cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(n)) => {
                    metrics::add(&shard.metrics.bytes_in, n as u64);
                    {
                        let mut st = self.state.borrow_mut();
                        st.last_rx_ms = shard.now_ms();
                        st.ping_outstanding = false;
                    }
                    if !closing {
                        // This task is running: replies it queues need no wake-up.
                        let waker = self.state.borrow_mut().waker.take();
                        self.on_bytes(&mut buf[..n]);
                        self.state.borrow_mut().waker = waker;
                    }
                }
            }
        }
        // Fairness: let other connections run, then continue.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Writes as much of the queue as the socket takes; registers for
    /// writability when it takes no more. Err: the socket failed.
    fn flush(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        loop {
            let mut st = self.state.borrow_mut();
            if st.queue.is_empty() {
                return Ok(());
            }
            let written = {
                let mut slices = [IoSlice::new(&[]); MAX_IOV];
                let n = st.queue.slices(&mut slices);
                let first = if n > 1 {
                    match rt::send_vectored(&self.stream, &slices[..n]) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                        other => Some(other),
                    }
                } else {
                    None
                };
                match first {
                    Some(result) => result?,
                    None => match rt::poll_write(&mut self.stream, cx, &slices[0]) {
                        Poll::Pending => return Ok(()),
                        Poll::Ready(result) => result?,
                    },
                }
            };
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            let frames = st.queue.advance(written);
            let m = &self.shard.metrics;
            metrics::add(&m.bytes_out, written as u64);
            metrics::add(&m.messages_out, frames as u64);
        }
    }

    fn on_bytes(&mut self, input: &mut [u8]) {
        let Connection { decoder, state, shard, key, dialect, .. } = self;
        let max = shard.config.limits.max_message_size;
        let result = decoder.feed(input, max, &mut |event| handle_event(shard, state, *key, *dialect, event));
        if let Err(v) = result {
            metrics::inc(&shard.metrics.protocol_errors);
            let mut st = state.borrow_mut();
            shard.start_close(state, &mut st, close_frame(v.code, v.reason), CLOSE_LINGER);
        }
    }
}

fn handle_event(shard: &Shard, conn: &ConnRef, key: ConnKey, dialect: Dialect, event: Event<'_>) -> Flow {
    let budget = shard.config.limits.max_backpressure;
    let reply = match event {
        Event::Text(text) => {
            metrics::inc(&shard.metrics.messages_in);
            match dialect {
                Dialect::Echo => Some(data_frame(OpCode::Data(Data::Text), text)),
                Dialect::RoadRunner => roadrunner_message(shard, conn, key, text),
            }
        }
        Event::Binary(bin) => {
            metrics::inc(&shard.metrics.messages_in);
            match dialect {
                Dialect::Echo => Some(data_frame(OpCode::Data(Data::Binary), bin)),
                Dialect::RoadRunner => Some(roadrunner::error_frame("binary frames are not supported")),
            }
        }
        Event::Ping(payload) => Some(data_frame(OpCode::Control(Control::Pong), payload)),
        Event::Pong(_) => None,
        Event::Close(code, _) => {
            // Echo the status code, as RFC 6455 §5.5.1 suggests.
            let close = match code {
                Some(code) => close_frame(code, ""),
                None => data_frame(OpCode::Control(Control::Close), b""),
            };
            let mut st = conn.borrow_mut();
            shard.start_close(conn, &mut st, close, CLOSE_LINGER);
            return Flow::Stop;
        }
    };
    let mut st = conn.borrow_mut();
    if let Some(frame) = reply {
        if st.push(frame, budget).is_err() {
            shard.close_slow_consumer(conn, &mut st);
        }
    }
    if st.is_closing() {
        Flow::Stop
    } else {
        Flow::Continue
    }
}

fn roadrunner_message(shard: &Shard, conn: &ConnRef, key: ConnKey, text: &mut [u8]) -> Option<Bytes> {
    let mut buffers = shard.json_buffers.borrow_mut();
    let command = match roadrunner::parse_command(text, &mut buffers) {
        Ok(c) => c,
        Err(bad) => return Some(roadrunner::error_frame(&bad.0)),
    };
    let mut st = conn.borrow_mut();
    match command {
        Command::Headers => None,
        Command::Join { broker, topics } => {
            // Subscribed before the reply is queued: anything published
            // after the client sees @join reaches it.
            let ok = shard.join(key, &mut st, broker, &topics);
            Some(roadrunner::reply_frame(if ok { Reply::Joined } else { Reply::JoinFailed }, &topics))
        }
        Command::Leave { broker, topics } => {
            let ok = shard.leave(key, &mut st, broker, &topics);
            Some(roadrunner::reply_frame(if ok { Reply::Left } else { Reply::LeaveFailed }, &topics))
        }
    }
}
