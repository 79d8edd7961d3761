//! What every scenario's client needs on the wire, without allocation per
//! message: the upgrade, masked client frames, server frame boundaries, and
//! the generator's own CPU time.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// A client connection: plain TCP, or TLS with `--tls-ca`.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

pub type ReadHalf = Box<dyn AsyncRead + Unpin + Send>;
pub type WriteHalf = Box<dyn AsyncWrite + Unpin + Send>;

impl Stream {
    /// Independent read and write halves (plain TCP without a lock).
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(s);
                (Box::new(r), Box::new(w))
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The upgrade request every scenario sends.
pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// The source address for client `i`: 127.0.0.1 … 127.0.0.`sources`, so
/// one destination port can take more than ~28,000 connections.
pub fn source_addr(i: usize, sources: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 1 + (i % sources.max(1) as usize) as u8)
}

/// An upgraded connection and a read buffer holding `filled` bytes that
/// arrived after the 101 (frames the caller must not lose).
pub struct Upgraded {
    pub stream: Stream,
    pub buf: Vec<u8>,
    pub filled: usize,
}

/// Connects client `i` to `target` and upgrades on `path`. Every error
/// starts with `connect:` so scenarios can tell connect failures apart.
pub async fn ws_connect(i: usize, target: SocketAddr, path: &str, sources: u8) -> Result<Upgraded, String> {
    let fail = |e: &dyn std::fmt::Display| format!("connect: {e}");
    let source = source_addr(i, sources);
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| fail(&e))?;
    socket
        .bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))
        .map_err(|e| fail(&format!("bind {source}: {e}")))?;
    let tcp = socket.connect(target).await.map_err(|e| fail(&e))?;
    let _ = tcp.set_nodelay(true);
    let mut stream = match crate::tls::client() {
        None => Stream::Plain(tcp),
        Some(config) => {
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(crate::tls::server_name(), tcp)
                .await
                .map_err(|e| fail(&format!("TLS: {e}")))?;
            Stream::Tls(Box::new(tls))
        }
    };
    stream.write_all(upgrade_request(path).as_bytes()).await.map_err(|e| fail(&e))?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut filled = 0;
    let head_end = loop {
        if filled == buf.len() {
            return Err(fail(&"oversized upgrade response"));
        }
        let n = stream.read(&mut buf[filled..]).await.map_err(|e| fail(&e))?;
        if n == 0 {
            return Err(fail(&"closed during the handshake"));
        }
        filled += n;
        if let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        return Err(fail(&String::from_utf8_lossy(&buf[..head_end])));
    }
    buf.copy_within(head_end..filled, 0);
    Ok(Upgraded { stream, buf, filled: filled - head_end })
}

/// Drops the `consumed` bytes at the front of `buf[..*filled]`, doubles a
/// full buffer, and reads more after what is left. Returns the bytes read;
/// the end of the stream is an error.
pub async fn refill<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut Vec<u8>,
    filled: &mut usize,
    consumed: usize,
) -> Result<usize, String> {
    buf.copy_within(consumed..*filled, 0);
    *filled -= consumed;
    if *filled == buf.len() {
        buf.resize(buf.len() * 2, 0);
    }
    let n = rd.read(&mut buf[*filled..]).await.map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("closed by the server".into());
    }
    *filled += n;
    Ok(n)
}

/// Appends a masked text frame carrying `payload` (clients must mask).
pub fn masked_text(payload: &[u8], out: &mut Vec<u8>) {
    masked_frame(0x1, payload, out)
}

/// Appends a final masked frame with `opcode` (1 text, 2 binary, 0xA pong).
pub fn masked_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// (payload start, payload length) of a complete unmasked server frame at
/// the start of `buf`; None until it has fully arrived.
pub fn parse_frame(buf: &[u8]) -> Option<(usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (start, len) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
        127 if buf.len() >= 10 => (10, u64::from_be_bytes(buf[2..10].try_into().ok()?) as usize),
        126 | 127 => return None,
        n => (2, n as usize),
    };
    (buf.len() >= start + len).then_some((start, len))
}

/// The opcode of the frame at the start of `buf` (at least one byte).
pub fn frame_opcode(buf: &[u8]) -> u8 {
    buf[0] & 0x0f
}

/// This process's user + system CPU seconds (so a reader can tell whether
/// the generator was the bottleneck).
pub fn cpu_seconds() -> Option<f64> {
    process_cpu_seconds("self")
}

/// User + system CPU seconds of every thread of process `pid` ("self" or a
/// number), from /proc.
pub fn process_cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    Some((fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_the_gateway_decoder() {
        for len in [0usize, 5, 125, 126, 70_000] {
            let payload = vec![b'a'; len];
            let mut frame = Vec::new();
            masked_text(&payload, &mut frame);
            let mut seen = None;
            ringcast::ws::Decoder::new()
                .feed(&mut frame, 1 << 20, &mut |e| {
                    if let ringcast::ws::Event::Text(t) = e {
                        seen = Some(t.len());
                    }
                    ringcast::ws::Flow::Continue
                })
                .unwrap();
            assert_eq!(seen, Some(len));
        }
    }

    #[test]
    fn server_frame_boundaries() {
        let text = ringcast::ws::OpCode::Data(ringcast::ws::Data::Text);
        let frame = ringcast::ws::data_frame(text, &[b'x'; 300]);
        assert_eq!(parse_frame(&frame), Some((4, 300)));
        assert_eq!(parse_frame(&frame[..100]), None);
        assert_eq!(parse_frame(&[0x81, 2, b'h', b'i']), Some((2, 2)));
    }
}
