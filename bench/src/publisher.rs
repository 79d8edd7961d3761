//! Publishers for `fanout`: what is due is sent every millisecond, round-robin
//! over the topics, each payload stamped `<seq>:<nanos since epoch>:` and
//! padded to the payload size. One connection per step, in order.
//!
//! | via    | roadrunner (ringcast, peers)              | nchan                      | nats                      |
//! |--------|-------------------------------------------|----------------------------|---------------------------|
//! | `rpc`  | goridge `broadcast.PublishAsync`          | —                          | —                         |
//! | `http` | `POST /publish` JSON                      | `POST /pub/<topic>` raw    | —                         |
//! | `ws`   | peers' `/pub`: `{"topics":[T],"payload":P}` text frames, pipelined | WebSocket on `/pub/<topic>`| `PUB` over its WebSocket  |
//! | `nats` | —                                         | —                          | `PUB` over its TCP port   |
//!
//! `webrocket` publishes `via ws` only: one client, authenticated as
//! `bench`, sending `{"broadcast":{"event":"pub","channel":T,"data":P}}`;
//! each `{"broadcasted":T}` reply is the acknowledgement.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;

use crate::protocol::{Protocol, NATS_CONNECT};
use crate::wire::masked_frame;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Rpc,
    Http,
    Ws,
    Nats,
}

impl Via {
    /// The publisher a protocol gets when `--publish-via` is not given.
    pub fn default_for(p: Protocol) -> Via {
        match p {
            Protocol::Roadrunner => Via::Rpc,
            Protocol::Nchan => Via::Http,
            Protocol::Nats => Via::Nats,
            Protocol::Webrocket => Via::Ws,
        }
    }

    /// Whether this server can be published to this way; the reason if not.
    pub fn check(self, p: Protocol) -> Result<(), String> {
        // Roadrunner over `ws`: the peers' publish endpoint (uWS.js, ws); the
        // dialect itself has no client publish, so ringcast refuses it.
        match (p, self) {
            (Protocol::Roadrunner, Via::Rpc | Via::Http | Via::Ws)
            | (Protocol::Nchan, Via::Http | Via::Ws)
            | (Protocol::Nats, Via::Ws | Via::Nats)
            | (Protocol::Webrocket, Via::Ws) => Ok(()),
            (p, v) => Err(format!("--protocol {p:?} cannot be published to via {v:?}").to_lowercase()),
        }
    }
}

/// What a step publishes, and where.
pub struct Plan<'a> {
    pub protocol: Protocol,
    pub via: Via,
    pub addr: SocketAddr,
    /// Path of the WebSocket publisher (nchan `/pub`, NATS `/`).
    pub ws_path: &'a str,
    pub topics: &'a [String],
    pub size: usize,
    pub rate: u64,
    pub duration: Duration,
    pub epoch: Instant,
}

/// The stamped payload for message `seq` of a topic.
fn payload(seq: u64, epoch: Instant, size: usize) -> Vec<u8> {
    let mut p = format!("{seq}:{}:", epoch.elapsed().as_nanos() as u64).into_bytes();
    p.resize(size.max(p.len()), b'x');
    p
}

/// Publishes `plan.rate`/s for `plan.duration`; `seq[t]` counts what went to
/// topic `t` (the caller's loss arithmetic depends on it being exact).
pub async fn run(plan: &Plan<'_>, seq: &mut [u64]) -> Result<(), String> {
    plan.via.check(plan.protocol)?;
    let mut sink = Sink::open(plan).await?;
    let started = tokio::time::Instant::now();
    let end = started + plan.duration;
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut batch = Vec::new();
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * plan.rate as f64) as u64;
        batch.clear();
        for n in sent..due {
            let t = (n % plan.topics.len() as u64) as usize;
            batch.push((t, payload(seq[t], plan.epoch, plan.size)));
            seq[t] += 1;
        }
        sent = due.max(sent);
        if !batch.is_empty() {
            sink.send(plan, &batch).await?;
        }
    }
    sink.finish().await
}

type Http1 = hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>;

enum Sink {
    /// goridge RPC: calls are written, replies read (and checked) by a task.
    Rpc {
        wr: OwnedWriteHalf,
        replies: Replies,
        call: u32,
        out: Vec<u8>,
    },
    Http {
        sender: Http1,
    },
    /// One WebSocket per topic (nchan) or one for all (NATS).
    Ws {
        conns: Vec<WsConn>,
        /// The server acknowledges the end with a pong (NATS: PONG to PING;
        /// roadrunner peers: a WebSocket Pong), not each message (nchan).
        ping_ack: bool,
        nats: bool,
        out: Vec<u8>,
    },
    Nats {
        wr: OwnedWriteHalf,
        replies: Replies,
        out: Vec<u8>,
    },
}

type Replies = tokio::task::JoinHandle<Result<(), String>>;

/// A WebSocket publisher connection. The server acknowledges: nchan answers
/// each message with a status frame; NATS answers PING with PONG.
struct WsConn {
    wr: crate::wire::WriteHalf,
    replies: Replies,
    acks: std::sync::Arc<std::sync::atomic::AtomicU64>,
    sent: u64,
}

impl Sink {
    async fn open(plan: &Plan<'_>) -> Result<Sink, String> {
        let addr = plan.addr;
        Ok(match plan.via {
            Via::Rpc => {
                let (rd, wr) = tcp(addr).await?.into_split();
                Sink::Rpc { wr, replies: tokio::spawn(rpc_replies(rd)), call: 0, out: Vec::new() }
            }
            Via::Http => {
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp(addr).await?))
                        .await
                        .map_err(|e| format!("publish http {addr}: {e}"))?;
                tokio::spawn(conn);
                Sink::Http { sender }
            }
            Via::Ws => {
                let paths: Vec<String> = match plan.protocol {
                    Protocol::Nchan => {
                        plan.topics.iter().map(|t| Protocol::Nchan.subscribe_path(plan.ws_path, t)).collect()
                    }
                    _ => vec![plan.ws_path.to_string()],
                };
                let mut conns = Vec::new();
                for path in paths {
                    let up = crate::wire::ws_connect(0, addr, &path, 1)
                        .await
                        .map_err(|e| format!("publish ws {addr}{path}: {e}"))?;
                    let (rd, mut wr) = up.stream.split();
                    if plan.protocol == Protocol::Nats {
                        let mut hello = Vec::new();
                        masked_frame(0x2, NATS_CONNECT.as_bytes(), &mut hello);
                        wr.write_all(&hello).await.map_err(|e| format!("publish ws: {e}"))?;
                    }
                    if plan.protocol == Protocol::Webrocket {
                        let mut hello = Vec::new();
                        let auth =
                            format!(r#"{{"authenticate":{{"user":"{}"}}}}"#, crate::protocol::WEBROCKET_USER);
                        masked_frame(0x1, auth.as_bytes(), &mut hello);
                        wr.write_all(&hello).await.map_err(|e| format!("publish ws: {e}"))?;
                    }
                    let acks = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
                    let replies =
                        tokio::spawn(ws_replies(rd, up.buf, up.filled, plan.protocol, acks.clone()));
                    conns.push(WsConn { wr, replies, acks, sent: 0 });
                }
                Sink::Ws {
                    conns,
                    ping_ack: !matches!(plan.protocol, Protocol::Nchan | Protocol::Webrocket),
                    nats: plan.protocol == Protocol::Nats,
                    out: Vec::new(),
                }
            }
            Via::Nats => {
                let (rd, mut wr) = tcp(addr).await?.into_split();
                wr.write_all(NATS_CONNECT.as_bytes()).await.map_err(|e| format!("publish nats: {e}"))?;
                Sink::Nats { wr, replies: tokio::spawn(nats_replies(rd)), out: Vec::new() }
            }
        })
    }

    async fn send(&mut self, plan: &Plan<'_>, batch: &[(usize, Vec<u8>)]) -> Result<(), String> {
        match self {
            Sink::Rpc { wr, call, out, .. } => {
                let messages = batch
                    .iter()
                    .map(|(t, p)| ringcast::rpc::proto::broadcast::Message {
                        command: String::new(),
                        topics: vec![plan.topics[*t].clone()],
                        payload: p.clone(),
                    })
                    .collect();
                let body = ringcast::rpc::proto::broadcast::Request { messages }.encode_to_vec();
                let method = b"broadcast.PublishAsync";
                *call += 1;
                out.clear();
                ringcast::rpc::frame::encode(
                    out,
                    ringcast::rpc::frame::CODEC_PROTO,
                    &[*call, method.len() as u32],
                    &[method, &body],
                );
                wr.write_all(out).await.map_err(|e| format!("publish rpc: {e}"))
            }
            Sink::Http { sender } => {
                for (t, p) in batch {
                    let topic = &plan.topics[*t];
                    let (uri, body, kind) = match plan.protocol {
                        Protocol::Nchan => (format!("/pub/{topic}"), p.clone(), "text/plain"),
                        _ => (
                            "/publish".to_string(),
                            format!(r#"{{"topics":["{topic}"],"payload":"{}"}}"#, String::from_utf8_lossy(p))
                                .into_bytes(),
                            "application/json",
                        ),
                    };
                    http_post(sender, plan.addr, &uri, kind, body).await?;
                }
                Ok(())
            }
            Sink::Ws { conns, out, .. } => {
                for (t, p) in batch {
                    out.clear();
                    let conn = match plan.protocol {
                        Protocol::Nchan => {
                            masked_frame(0x1, p, out);
                            &mut conns[*t]
                        }
                        Protocol::Roadrunner => {
                            let cmd = format!(
                                r#"{{"topics":["{}"],"payload":"{}"}}"#,
                                plan.topics[*t],
                                String::from_utf8_lossy(p)
                            );
                            masked_frame(0x1, cmd.as_bytes(), out);
                            &mut conns[0]
                        }
                        Protocol::Webrocket => {
                            let cmd = format!(
                                r#"{{"broadcast":{{"event":"pub","channel":"{}","data":"{}"}}}}"#,
                                plan.topics[*t],
                                String::from_utf8_lossy(p)
                            );
                            masked_frame(0x1, cmd.as_bytes(), out);
                            &mut conns[0]
                        }
                        Protocol::Nats => {
                            let mut cmd = format!("PUB {} {}\r\n", plan.topics[*t], p.len()).into_bytes();
                            cmd.extend_from_slice(p);
                            cmd.extend_from_slice(b"\r\n");
                            masked_frame(0x2, &cmd, out);
                            &mut conns[0]
                        }
                    };
                    conn.sent += 1;
                    conn.wr.write_all(out).await.map_err(|e| format!("publish ws: {e}"))?;
                }
                Ok(())
            }
            Sink::Nats { wr, out, .. } => {
                out.clear();
                for (t, p) in batch {
                    out.extend_from_slice(format!("PUB {} {}\r\n", plan.topics[*t], p.len()).as_bytes());
                    out.extend_from_slice(p);
                    out.extend_from_slice(b"\r\n");
                }
                wr.write_all(out).await.map_err(|e| format!("publish nats: {e}"))
            }
        }
    }

    /// Closes the publisher once the server has taken everything sent.
    async fn finish(self) -> Result<(), String> {
        let join = |r: Result<Result<(), String>, tokio::task::JoinError>| r.map_err(|e| e.to_string())?;
        match self {
            Sink::Rpc { mut wr, replies, .. } => {
                // The server answers every call before it sees the end.
                wr.shutdown().await.map_err(|e| e.to_string())?;
                join(replies.await)
            }
            Sink::Http { .. } => Ok(()),
            Sink::Ws { conns, ping_ack, nats, .. } => {
                use std::sync::atomic::Ordering::Relaxed;
                for mut c in conns {
                    // Closing before the server took the last messages loses
                    // them: wait for nchan's receipt of each, or the pong that
                    // follows everything sent (NATS PONG, WebSocket Pong).
                    let want = if ping_ack {
                        let mut ping = Vec::new();
                        if nats {
                            masked_frame(0x2, b"PING\r\n", &mut ping);
                        } else {
                            masked_frame(0x9, b"", &mut ping);
                        }
                        c.wr.write_all(&ping).await.map_err(|e| format!("publish ws: {e}"))?;
                        1
                    } else {
                        c.sent
                    };
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while c.acks.load(Relaxed) < want {
                        if c.replies.is_finished() || Instant::now() > deadline {
                            let why = match c.replies.await {
                                Ok(Err(e)) => e,
                                _ => "timed out".into(),
                            };
                            return Err(format!(
                                "publish ws: the server acknowledged {} of {want} ({why})",
                                c.acks.load(Relaxed)
                            ));
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    let _ = c.wr.shutdown().await;
                    c.replies.abort();
                }
                Ok(())
            }
            Sink::Nats { mut wr, replies, .. } => {
                // NATS answers PING in order: the PONG means every PUB was taken.
                wr.write_all(b"PING\r\n").await.map_err(|e| e.to_string())?;
                join(replies.await)
            }
        }
    }
}

async fn tcp(addr: SocketAddr) -> Result<tokio::net::TcpStream, String> {
    let s = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("publisher {addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

async fn http_post(
    sender: &mut Http1,
    addr: SocketAddr,
    uri: &str,
    kind: &str,
    body: Vec<u8>,
) -> Result<(), String> {
    use http_body_util::{BodyExt, Full};
    let req = hyper::Request::post(uri)
        .header("host", addr.to_string())
        .header("content-type", kind)
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| format!("publish {uri}: {e}"))?;
    let status = resp.status();
    let text = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    if !status.is_success() {
        return Err(format!("publish {uri}: {status}: {}", String::from_utf8_lossy(&text)));
    }
    Ok(())
}

/// Reads goridge replies until the server closes; an error reply ends the run.
async fn rpc_replies(mut rd: tokio::net::tcp::OwnedReadHalf) -> Result<(), String> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending = Vec::new();
    loop {
        let n = rd.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&buf[..n]);
        while let Ok(Some((f, used))) = ringcast::rpc::frame::decode(&pending, usize::MAX) {
            if f.flags & ringcast::rpc::frame::ERROR != 0 {
                return Err(format!("publish failed: {}", String::from_utf8_lossy(f.payload)));
            }
            pending.drain(..used);
        }
    }
}

/// Reads NATS server messages until the PONG that answers the final PING.
async fn nats_replies(mut rd: tokio::net::tcp::OwnedReadHalf) -> Result<(), String> {
    let mut reader = crate::protocol::NatsReader::default();
    let mut buf = vec![0u8; 16 * 1024];
    let mut done = false;
    while !done {
        let n = rd.read(&mut buf).await.map_err(|e| format!("publish nats: {e}"))?;
        if n == 0 {
            return Err("publish nats: the server closed the connection".into());
        }
        reader.feed(&buf[..n], |e| match e {
            crate::protocol::NatsEvent::Err(e) => Err(format!("publish nats: -ERR {e}")),
            crate::protocol::NatsEvent::Pong => {
                done = true;
                Ok(())
            }
            _ => Ok(()),
        })?;
    }
    Ok(())
}

/// Reads what a WebSocket publisher is sent and counts acknowledgements:
/// nchan's receipt frames, or NATS PONGs. A close from the server is an error.
async fn ws_replies(
    mut rd: crate::wire::ReadHalf,
    mut buf: Vec<u8>,
    mut filled: usize,
    protocol: Protocol,
    acks: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> Result<(), String> {
    use crate::protocol::NatsEvent;
    let mut nats = crate::protocol::NatsReader::default();
    loop {
        let mut pos = 0;
        while let Some((start, len)) = crate::wire::parse_frame(&buf[pos..filled]) {
            let payload = &buf[pos + start..pos + start + len];
            match crate::wire::frame_opcode(&buf[pos..]) {
                0x8 => return Err(format!("closed by the server: {}", String::from_utf8_lossy(payload))),
                0xA if protocol == Protocol::Roadrunner => {
                    acks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                op if op >= 0x8 => {}
                _ if protocol == Protocol::Roadrunner => {}
                _ if protocol == Protocol::Webrocket => {
                    if payload.starts_with(br#"{"broadcasted":"#) {
                        acks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    } else if payload.starts_with(br#"{"err":"#) {
                        return Err(format!("refused: {}", String::from_utf8_lossy(payload)));
                    }
                }
                _ if protocol == Protocol::Nats => nats.feed(payload, |e| {
                    match e {
                        NatsEvent::Err(e) => return Err(format!("-ERR {e}")),
                        NatsEvent::Pong => {
                            acks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        _ => {}
                    }
                    Ok(())
                })?,
                _ => {
                    acks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            pos += start + len;
        }
        crate::wire::refill(&mut rd, &mut buf, &mut filled, pos).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_protocol_has_a_default_publisher_it_accepts() {
        for p in [Protocol::Roadrunner, Protocol::Nchan, Protocol::Nats, Protocol::Webrocket] {
            assert_eq!(Via::default_for(p).check(p), Ok(()));
        }
        assert_eq!(Via::Ws.check(Protocol::Roadrunner), Ok(()), "the roadrunner peers' /pub endpoint");
        assert!(Via::Rpc.check(Protocol::Nats).is_err());
        assert!(Via::Http.check(Protocol::Nats).is_err());
    }

    #[test]
    fn payloads_carry_a_parsable_stamp_at_the_given_size() {
        let p = payload(41, Instant::now(), 128);
        assert_eq!(p.len(), 128);
        assert_eq!(crate::report::parse_stamp(&p).map(|s| s.0), Some(41));
        assert!(payload(1, Instant::now(), 4).len() > 4, "a stamp is never cut");
    }
}
