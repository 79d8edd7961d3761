//! Opens N WebSocket connections, each joined to a topic, holds them idle,
//! and reads the server's resident memory from /proc before and after.

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// The server's WebSocket address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: SocketAddr,
    /// How connections subscribe: roadrunner (ringcast, bench/peers/*.js), nchan, nats.
    #[arg(long, value_enum, default_value = "roadrunner")]
    protocol: crate::protocol::Protocol,
    /// WebSocket path (default: /ws roadrunner, /sub nchan — the topic is
    /// appended —, / nats).
    #[arg(long)]
    path: Option<String>,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Distinct topics joined (connection i joins topic i % topics).
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// The server's PID, to read its memory from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Spread client sockets over this many 127.0.0.x source addresses.
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Seconds to hold the connections after the measurement.
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
    /// Also write the figures as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// (VmRSS, RssAnon) in KiB.
fn memory_kib(pid: u32) -> Result<(u64, u64), String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("RssAnon:")))
}

/// A held connection: plain TCP, or TLS with `--tls-ca`.
pub trait Conn: Read + Write + Send {
    /// The TCP socket under it (to set timeouts or non-blocking mode).
    fn tcp(&self) -> &TcpStream;
}

impl Conn for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Conn for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref()
    }
}

fn open(args: &Args, i: usize) -> Result<Box<dyn Conn>, String> {
    let source = crate::wire::source_addr(i, args.sources);
    let topic = format!("hold-{}", i % args.topics.max(1));
    let tls = crate::tls::client();
    connect_joined(args.target, source, tls, args.protocol, args.path.as_deref(), &topic)
        .map_err(|e| format!("connection {i}: {e}"))
}

/// A blocking connection from `source` to `target` (TLS with `tls`),
/// upgraded and subscribed to `topic`: returns once the protocol says the
/// subscription is active.
pub fn connect_joined(
    target: SocketAddr,
    source: std::net::Ipv4Addr,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    p: crate::protocol::Protocol,
    path: Option<&str>,
    topic: &str,
) -> Result<Box<dyn Conn>, String> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| e.to_string())?;
    sock.bind(&SocketAddr::V4(SocketAddrV4::new(source, 0)).into())
        .map_err(|e| format!("bind {source}: {e}"))?;
    sock.connect(&target.into()).map_err(|e| e.to_string())?;
    let tcp: TcpStream = sock.into();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let mut s: Box<dyn Conn> = match tls {
        None => Box::new(tcp),
        Some(config) => {
            let conn = rustls::ClientConnection::new(config, crate::tls::server_name())
                .map_err(|e| format!("TLS: {e}"))?;
            Box::new(rustls::StreamOwned::new(conn, tcp))
        }
    };
    let req = crate::wire::upgrade_request(&p.subscribe_path(path.unwrap_or(p.default_path()), topic));
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).map_err(|e| format!("handshake: {e}"))?;
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(String::from_utf8_lossy(&head).into_owned());
    }
    let mut frames = Vec::new();
    p.subscribe_frames(topic, &mut frames);
    s.write_all(&frames).map_err(|e| e.to_string())?;
    // Read until the protocol says the subscription is active.
    let mut sub = p.subscription();
    let (mut buf, mut filled) = (vec![0u8; 4096], 0);
    while !sub.joined() {
        if filled == buf.len() {
            return Err("oversized reply while joining".into());
        }
        let n = s.read(&mut buf[filled..]).map_err(|e| format!("join: {e}"))?;
        if n == 0 {
            return Err("closed while joining".into());
        }
        filled += n;
        let mut pos = 0;
        while let Some((start, len)) = crate::wire::parse_frame(&buf[pos..filled]) {
            if crate::wire::frame_opcode(&buf[pos..]) < 0x8 {
                sub.on_frame(&buf[pos + start..pos + start + len], |_| {})?;
            }
            pos += start + len;
        }
        buf.copy_within(pos..filled, 0);
        filled -= pos;
    }
    Ok(s)
}

pub fn run(args: Args) -> Result<(), String> {
    // Warm up: shard buffers and allocator arenas exist before the baseline.
    let warm: Vec<Box<dyn Conn>> = (0..64).map(|i| open(&args, i)).collect::<Result<_, _>>()?;
    std::thread::sleep(Duration::from_millis(300));
    let before = args.server_pid.map(memory_kib).transpose()?;
    let started = Instant::now();
    let mut conns = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        conns.push(open(&args, i + 64)?);
    }
    let took = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    println!(
        "connections: {} (+64 warm-up) opened and joined in {:.2}s",
        args.connections,
        took.as_secs_f64()
    );
    if let (Some(pid), Some((rss0, anon0))) = (args.server_pid, before) {
        let (rss1, anon1) = memory_kib(pid)?;
        let per = |a: u64, b: u64| (b.saturating_sub(a) as f64 * 1024.0) / args.connections as f64;
        println!("server VmRSS:   {rss0} KiB -> {rss1} KiB = {:.0} bytes per connection", per(rss0, rss1));
        println!(
            "server RssAnon: {anon0} KiB -> {anon1} KiB = {:.0} bytes per connection",
            per(anon0, anon1)
        );
        if let Some(path) = &args.json {
            let json = serde_json::json!({
                "scenario": "hold",
                "protocol": format!("{:?}", args.protocol).to_lowercase(),
                "connections": args.connections,
                "seconds_to_open": took.as_secs_f64(),
                "rss_bytes_per_connection": per(rss0, rss1),
                "rss_anon_bytes_per_connection": per(anon0, anon1),
            });
            std::fs::write(path, serde_json::to_string_pretty(&json).expect("json"))
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    std::thread::sleep(Duration::from_secs(args.hold_secs));
    drop(warm);
    Ok(())
}
