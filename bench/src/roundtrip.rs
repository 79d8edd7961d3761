//! ws2api round trips (ws2api's published workload, scaled): N connections to a
//! proxy vhost, ramped up at a target rate, each sending one message every
//! `--interval-ms`; the backend (e.g. `stub-backend`) echoes it and the
//! gateway brings the reply back. Reports messages/s and the round-trip
//! latency histogram, and the server's memory per connection.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::wire::{cpu_seconds, masked_text, parse_frame};

#[derive(clap::Args)]
pub struct Args {
    /// The gateway's WebSocket address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: SocketAddr,
    /// Path prefix of the proxy vhost; clients connect to `<prefix>bench-<i>`.
    #[arg(long, default_value = "/")]
    prefix: String,
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Connections opened per second during the ramp.
    #[arg(long, default_value_t = 4_000)]
    ramp_rate: u64,
    /// Each connection sends one message this often.
    #[arg(long, default_value_t = 10_000)]
    interval_ms: u64,
    /// Measurement time after the ramp.
    #[arg(long, default_value_t = 30)]
    duration_secs: u64,
    /// Message size in bytes (at least 16).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// The server's PID, to read its memory from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Spread client sockets over this many 127.0.0.x source addresses.
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// A reply not here after this long counts as lost; the client goes on.
    #[arg(long, default_value_t = 5_000)]
    reply_timeout_ms: u64,
}

#[derive(Default)]
struct Stats {
    sent: u64,
    received: u64,
    /// Messages whose reply did not come within `--reply-timeout-ms`.
    lost: u64,
    failed_connects: u64,
    errors: u64,
    first_error: Option<String>,
}

pub fn run(args: Args) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, drive(args))
}

fn rss_anon_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("RssAnon:"))?.split_whitespace().nth(1)?.parse().ok()
}

async fn drive(args: Args) -> Result<(), String> {
    let args = Rc::new(args);
    let hist = Rc::new(RefCell::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?,
    ));
    let stats = Rc::new(RefCell::new(Stats::default()));
    let measuring = Rc::new(std::cell::Cell::new(false));
    let cpu_start = cpu_seconds();
    let mem_before = args.server_pid.and_then(rss_anon_kib);
    let started = Instant::now();
    let gap = Duration::from_nanos(1_000_000_000 / args.ramp_rate.max(1));
    for i in 0..args.connections {
        let (args, hist, stats, measuring) = (args.clone(), hist.clone(), stats.clone(), measuring.clone());
        tokio::task::spawn_local(async move {
            if let Err(e) = client(i, &args, &hist, &stats, &measuring).await {
                let mut s = stats.borrow_mut();
                if e.starts_with("connect") {
                    s.failed_connects += 1;
                } else {
                    s.errors += 1;
                }
                s.first_error.get_or_insert(e);
            }
        });
        tokio::time::sleep_until((started + gap * (i as u32 + 1)).into()).await;
    }
    let ramp = started.elapsed();
    // Let the last connections finish their handshakes, then measure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mem_after = args.server_pid.and_then(rss_anon_kib);
    let (sent0, received0) = {
        let s = stats.borrow();
        (s.sent, s.received)
    };
    hist.borrow_mut().reset();
    measuring.set(true);
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration_secs)).await;
    let elapsed = window.elapsed().as_secs_f64();
    let s = stats.borrow();
    let h = hist.borrow();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "ringcast-bench roundtrip: {} connections, one {}-byte message each every {} ms",
        args.connections, args.size, args.interval_ms
    );
    println!(
        "ramp: {:.1}s to open {} connections ({} failed)",
        ramp.as_secs_f64(),
        args.connections,
        s.failed_connects
    );
    println!(
        "measured {:.0}s: {:.0} messages/s sent, {:.0} replies/s; {} replies lost in all, {} connections failed later",
        elapsed,
        (s.sent - sent0) as f64 / elapsed,
        (s.received - received0) as f64 / elapsed,
        s.lost,
        s.errors
    );
    if let Some(e) = &s.first_error {
        println!("first error: {e}");
    }
    println!(
        "round trip ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  p99.99 {:.3}  max {:.3}  (n={})",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        ms(0.9999),
        h.max() as f64 / 1000.0,
        h.len()
    );
    if let (Some(a), Some(b)) = (mem_before, mem_after) {
        println!(
            "server RssAnon: {a} KiB -> {b} KiB = {:.0} bytes per connection",
            (b.saturating_sub(a) * 1024) as f64 / args.connections as f64
        );
    }
    if let (Some(c0), Some(c1)) = (cpu_start, cpu_seconds()) {
        println!("load generator CPU: {:.1}s over {:.1}s wall", c1 - c0, started.elapsed().as_secs_f64());
    }
    Ok(())
}

async fn client(
    i: usize,
    args: &Args,
    hist: &RefCell<Histogram<u64>>,
    stats: &RefCell<Stats>,
    measuring: &std::cell::Cell<bool>,
) -> Result<(), String> {
    let path = format!("{}bench-{i}", args.prefix);
    let crate::wire::Upgraded { stream: mut s, mut buf, mut filled } =
        crate::wire::ws_connect(i, args.target, &path, args.sources).await?;
    // Spread the first sends over one interval so the load is steady.
    let interval = Duration::from_millis(args.interval_ms);
    let offset = interval.mul_f64((i as f64 * 0.618_033_988_7).fract());
    let mut next = tokio::time::Instant::now() + offset;
    let epoch = Instant::now();
    let mut frame = Vec::with_capacity(args.size + 14);
    loop {
        tokio::time::sleep_until(next).await;
        next += interval;
        let sent_at = epoch.elapsed().as_nanos() as u64;
        let mut payload = format!("{sent_at:016x}").into_bytes();
        payload.resize(args.size.max(16), b'x');
        frame.clear();
        masked_text(&payload, &mut frame);
        s.write_all(&frame).await.map_err(|e| e.to_string())?;
        stats.borrow_mut().sent += 1;
        // Read one reply frame (unmasked text from the server).
        let deadline = tokio::time::Instant::now() + Duration::from_millis(args.reply_timeout_ms);
        let reply = loop {
            if let Some(parsed) = parse_frame(&buf[..filled]) {
                break Some(parsed);
            }
            if filled == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
            let n = match tokio::time::timeout_at(deadline, s.read(&mut buf[filled..])).await {
                Err(_) => break None,
                Ok(r) => r.map_err(|e| e.to_string())?,
            };
            if n == 0 {
                return Err("closed by the server".into());
            }
            filled += n;
        };
        let Some((start, len)) = reply else {
            stats.borrow_mut().lost += 1;
            continue;
        };
        let echoed =
            std::str::from_utf8(&buf[start..start + 16]).ok().and_then(|h| u64::from_str_radix(h, 16).ok());
        if let Some(t) = echoed {
            let rtt_us = (epoch.elapsed().as_nanos() as u64).saturating_sub(t) / 1000;
            if measuring.get() {
                let _ = hist.borrow_mut().record(rtt_us.max(1));
            }
        }
        stats.borrow_mut().received += 1;
        buf.copy_within(start + len..filled, 0);
        filled -= start + len;
    }
}
