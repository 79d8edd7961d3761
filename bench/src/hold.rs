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
    /// WebSocket path of a roadrunner vhost.
    #[arg(long, default_value = "/ws")]
    path: String,
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

fn open(args: &Args, i: usize) -> Result<TcpStream, String> {
    let source = crate::wire::source_addr(i, args.sources);
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| e.to_string())?;
    sock.bind(&SocketAddr::V4(SocketAddrV4::new(source, 0)).into())
        .map_err(|e| format!("bind {source}: {e}"))?;
    sock.connect(&args.target.into()).map_err(|e| format!("connection {i}: {e}"))?;
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let req = crate::wire::upgrade_request(&args.path);
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).map_err(|e| format!("connection {i} handshake: {e}"))?;
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(format!("connection {i}: {}", String::from_utf8_lossy(&head)));
    }
    let join = format!(r#"{{"command":"join","topics":["hold-{}"]}}"#, i % args.topics.max(1));
    let mut frame = Vec::new();
    crate::wire::masked_text(join.as_bytes(), &mut frame);
    s.write_all(&frame).map_err(|e| e.to_string())?;
    // Read the @join reply: 2-byte header (short reply).
    let mut hdr = [0u8; 2];
    s.read_exact(&mut hdr).map_err(|e| format!("connection {i} join: {e}"))?;
    let mut reply = vec![0u8; (hdr[1] & 0x7f) as usize];
    s.read_exact(&mut reply).map_err(|e| e.to_string())?;
    if !reply.starts_with(br#"{"topic":"@join""#) {
        return Err(format!("connection {i}: join refused: {}", String::from_utf8_lossy(&reply)));
    }
    Ok(s)
}

pub fn run(args: Args) -> Result<(), String> {
    // Warm up: shard buffers and allocator arenas exist before the baseline.
    let warm: Vec<TcpStream> = (0..64).map(|i| open(&args, i)).collect::<Result<_, _>>()?;
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
    }
    std::thread::sleep(Duration::from_secs(args.hold_secs));
    drop(warm);
    Ok(())
}
