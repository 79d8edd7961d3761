//! Soak: everything a long-running gateway lives through, at once, for N
//! minutes — steady subscribers that read and answer pings, connection
//! churn with joins and leaves, publications, slow clients that never read
//! (closed and replaced), TLS clients — while the servers' RSS and open file
//! descriptors are sampled every second. Fails if RSS after the warm-up
//! grows past the bound, if descriptors are left over once the churn has
//! stopped, or if a steady subscriber was dropped.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::hold::{connect_joined, Conn};
use crate::protocol::Protocol;

#[derive(clap::Args)]
pub struct Args {
    /// The server's plain WebSocket address (roadrunner vhost at /ws).
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: SocketAddr,
    /// A second server (or listener) speaking wss://, trusted through
    /// `--tls-ca`: every `--tls-every`-th connection goes there.
    #[arg(long)]
    tls_target: Option<SocketAddr>,
    /// With `--tls-target`: one connection in this many is a TLS one.
    #[arg(long, default_value_t = 4)]
    tls_every: usize,
    /// The HTTP API of `--target` (POST /publish); with `--tls-target`,
    /// publications also go to `--tls-api`.
    #[arg(long, default_value = "127.0.0.1:8081")]
    api: SocketAddr,
    #[arg(long)]
    tls_api: Option<SocketAddr>,
    /// Servers to watch (RSS, open descriptors); give one per server.
    #[arg(long = "server-pid", required = true)]
    server_pids: Vec<u32>,
    /// Length of the churn-and-publish phase.
    #[arg(long, default_value_t = 2.0)]
    minutes: f64,
    /// Steady subscribers, held for the whole run.
    #[arg(long, default_value_t = 2_000)]
    connections: usize,
    /// Topics the subscribers spread over.
    #[arg(long, default_value_t = 100)]
    topics: usize,
    /// New short-lived connections per second (join, leave, close).
    #[arg(long, default_value_t = 50)]
    churn_per_s: u32,
    /// Publications per second to the subscribers' topics.
    #[arg(long, default_value_t = 200)]
    publish_per_s: u32,
    /// Clients that never read, replaced every 10 s (each is closed as a
    /// slow consumer once 32 KiB publications fill its budget: give the
    /// servers a small `server.send_buffer` so the kernel does not hold it all).
    #[arg(long, default_value_t = 10)]
    slow_clients: usize,
    /// Seconds after which memory must be flat (default: a fifth of the run, at least 10).
    #[arg(long)]
    warmup_secs: Option<u64>,
    /// Largest growth of RSS allowed after the warm-up, in percent (plus 8 MiB).
    #[arg(long, default_value_t = 10.0)]
    max_rss_growth_pct: f64,
    /// Spread client sockets over this many 127.0.0.x source addresses.
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Write the samples and the verdict as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Plot RSS and descriptors over time (SVG) here.
    #[arg(long)]
    svg: Option<std::path::PathBuf>,
}

const READERS: usize = 4;

/// Seconds since the workload started; (VmRSS KiB, open descriptors) per server.
type Sample = (f64, Vec<(u64, u64)>);
const SLOW_TOPIC: &str = "soak-slow";

/// (VmRSS KiB, open descriptors) of a process.
fn sample(pid: u32) -> Result<(u64, u64), String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("server {pid} is gone: {e}"))?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(|e| e.to_string())?.count() as u64;
    Ok((rss, fds))
}

/// Where connection `i` goes: (address, TLS settings).
fn route(args: &Args, i: usize) -> (SocketAddr, Option<Arc<rustls::ClientConfig>>) {
    match args.tls_target {
        Some(t) if i.is_multiple_of(args.tls_every.max(1)) => (t, crate::tls::client()),
        Some(_) => (args.target, None),
        None => (args.target, crate::tls::client()),
    }
}

fn open(args: &Args, i: usize, topic: &str) -> Result<Box<dyn Conn>, String> {
    let (target, tls) = route(args, i);
    let source = crate::wire::source_addr(i, args.sources);
    connect_joined(target, source, tls, Protocol::Roadrunner, None, topic)
        .map_err(|e| format!("connection {i} to {target}: {e}"))
}

/// A steady subscriber and its unparsed input.
struct Held {
    conn: Box<dyn Conn>,
    buf: Vec<u8>,
    alive: bool,
}

/// Reads what arrived for each connection, answers pings; false once a
/// connection was closed by the server.
fn read_some(h: &mut Held, scratch: &mut [u8], frames: &AtomicU64) {
    loop {
        match h.conn.read(scratch) {
            Ok(0) => {
                h.alive = false;
                return;
            }
            Ok(n) => h.buf.extend_from_slice(&scratch[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(_) => {
                h.alive = false;
                return;
            }
        }
    }
    let mut pos = 0;
    let mut pongs = Vec::new();
    while let Some((start, len)) = crate::wire::parse_frame(&h.buf[pos..]) {
        match crate::wire::frame_opcode(&h.buf[pos..]) {
            0x9 => crate::wire::masked_frame(0xA, &h.buf[pos + start..pos + start + len], &mut pongs),
            0x8 => h.alive = false,
            _ => {
                frames.fetch_add(1, Relaxed);
            }
        }
        pos += start + len;
    }
    h.buf.drain(..pos);
    if !pongs.is_empty() && h.conn.write_all(&pongs).is_err() {
        h.alive = false;
    }
}

/// One HTTP/1.1 request on a fresh connection; the whole answer.
fn http(api: SocketAddr, method: &str, path: &str, body: &str) -> Option<String> {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut c = TcpStream::connect(api).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    c.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    c.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// `POST /publish`; true on 200.
fn publish(api: SocketAddr, topic: &str, payload: &str) -> bool {
    let body = format!(r#"{{"topics":["{topic}"],"payload":"{payload}"}}"#);
    http(api, "POST", "/publish", &body).is_some_and(|a| a.starts_with("HTTP/1.1 200"))
}

/// A counter's sum over its labels in a server's `/metrics`.
fn metric(api: SocketAddr, name: &str) -> u64 {
    let text = http(api, "GET", "/metrics", "").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Runs `tick` about `per_s` times a second until `stop`.
fn paced(per_s: u32, stop: &AtomicBool, mut tick: impl FnMut(u64)) {
    if per_s == 0 {
        return;
    }
    let started = Instant::now();
    let mut n = 0u64;
    while !stop.load(Relaxed) {
        let due = started + Duration::from_secs_f64(n as f64 / per_s as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        tick(n);
        n += 1;
    }
}

#[derive(Default)]
struct Counts {
    churned: AtomicU64,
    churn_failures: AtomicU64,
    published: AtomicU64,
    publish_failures: AtomicU64,
    slow_opened: AtomicU64,
    frames: AtomicU64,
    /// Deliveries the steady subscribers should read, by what was published.
    expected: AtomicU64,
}

pub fn run(args: Args) -> Result<(), String> {
    let args = Arc::new(args);
    let total = Duration::from_secs_f64(args.minutes * 60.0);
    let warmup = Duration::from_secs(args.warmup_secs.unwrap_or((total.as_secs() / 5).max(10)));
    if warmup + Duration::from_secs(10) > total {
        return Err(format!(
            "--minutes {} leaves no time after a {}s warm-up",
            args.minutes,
            warmup.as_secs()
        ));
    }

    // The steady subscribers, spread over READERS reader threads.
    let opened = Instant::now();
    let mut groups: Vec<Vec<Held>> = (0..READERS).map(|_| Vec::new()).collect();
    for i in 0..args.connections {
        let conn = open(&args, i, &format!("soak-{}", i % args.topics.max(1)))?;
        conn.tcp().set_nonblocking(true).map_err(|e| e.to_string())?;
        groups[i % READERS].push(Held { conn, buf: Vec::new(), alive: true });
    }
    println!(
        "soak: {} steady subscribers joined in {:.1}s",
        args.connections,
        opened.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(1));
    let fds_before: Vec<u64> =
        args.server_pids.iter().map(|&p| sample(p).map(|s| s.1)).collect::<Result<_, _>>()?;

    // Steady subscribers per (server, topic): what each publication should reach.
    let mut reach = vec![vec![0u64; args.topics.max(1)]; 2];
    for i in 0..args.connections {
        let tls = args.tls_target.is_some() && i.is_multiple_of(args.tls_every.max(1));
        reach[usize::from(tls)][i % args.topics.max(1)] += 1;
    }

    // Readers stop after the load, once what was published has arrived.
    let (stop, stop_reading) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let counts = Arc::new(Counts::default());
    let dropped = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for mut group in groups {
        let (stop, counts, dropped) = (stop_reading.clone(), counts.clone(), dropped.clone());
        readers.push(std::thread::spawn(move || {
            let mut scratch = vec![0u8; 64 * 1024];
            while !stop.load(Relaxed) {
                for h in group.iter_mut().filter(|h| h.alive) {
                    read_some(h, &mut scratch, &counts.frames);
                    if !h.alive {
                        dropped.fetch_add(1, Relaxed);
                    }
                }
                // Each subscriber gets a publication every few seconds: a
                // pass every 50 ms keeps up without a core spent on reads.
                std::thread::sleep(Duration::from_millis(50));
            }
            group
        }));
    }
    let mut threads = Vec::new();
    // Churn: connect, join two topics, leave one, close.
    {
        let (args, stop, counts) = (args.clone(), stop.clone(), counts.clone());
        threads.push(std::thread::spawn(move || {
            paced(args.churn_per_s, &stop, |n| {
                let i = args.connections + n as usize;
                let result =
                    open(&args, i, &format!("soak-{}", n as usize % args.topics.max(1))).and_then(|mut c| {
                        let mut frames = Vec::new();
                        crate::wire::masked_text(
                            br#"{"command":"join","topics":["soak-churn"]}"#,
                            &mut frames,
                        );
                        crate::wire::masked_text(
                            br#"{"command":"leave","topics":["soak-churn"]}"#,
                            &mut frames,
                        );
                        crate::wire::masked_frame(0x8, &1000u16.to_be_bytes(), &mut frames);
                        c.write_all(&frames).map_err(|e| e.to_string())
                    });
                let counter = if result.is_ok() { &counts.churned } else { &counts.churn_failures };
                counter.fetch_add(1, Relaxed);
            });
        }));
    }
    // Publications, to each server (each is its own node): small ones to
    // the subscribers, 16 KiB ones to the slow clients.
    {
        let (args, stop, counts) = (args.clone(), stop.clone(), counts.clone());
        threads.push(std::thread::spawn(move || {
            let big = "s".repeat(32 * 1024);
            let apis: Vec<SocketAddr> = [Some(args.api), args.tls_api].into_iter().flatten().collect();
            paced(args.publish_per_s, &stop, |n| {
                let topic = n as usize % args.topics.max(1);
                for (server, api) in apis.iter().enumerate() {
                    let ok = publish(*api, &format!("soak-{topic}"), &format!("p{n}"));
                    if n % 10 == 0 {
                        publish(*api, SLOW_TOPIC, &big);
                    }
                    let counter = if ok { &counts.published } else { &counts.publish_failures };
                    counter.fetch_add(1, Relaxed);
                    if ok {
                        counts.expected.fetch_add(reach[server][topic], Relaxed);
                    }
                }
            });
        }));
    }
    // Slow clients: a fresh set every 10 s; the old set is dropped.
    {
        let (args, stop, counts) = (args.clone(), stop.clone(), counts.clone());
        threads.push(std::thread::spawn(move || {
            let mut set: Vec<Box<dyn Conn>> = Vec::new();
            let mut round = 0usize;
            paced(1, &stop, |n| {
                if n % 10 != 0 {
                    return;
                }
                set.clear();
                for k in 0..args.slow_clients {
                    let i = usize::MAX / 2 + round * args.slow_clients + k;
                    if let Ok(c) = open(&args, i, SLOW_TOPIC) {
                        let _ = socket2::SockRef::from(c.tcp()).set_recv_buffer_size(4096);
                        set.push(c);
                        counts.slow_opened.fetch_add(1, Relaxed);
                    }
                }
                round += 1;
            });
        }));
    }

    // Sampling.
    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    while started.elapsed() < total {
        std::thread::sleep(Duration::from_secs(1));
        let now: Vec<(u64, u64)> = args.server_pids.iter().map(|&p| sample(p)).collect::<Result<_, _>>()?;
        let t = started.elapsed().as_secs_f64();
        if (t as u64).is_multiple_of(30) {
            let rss: Vec<String> = now.iter().map(|(r, f)| format!("{} MiB/{f} fds", r / 1024)).collect();
            println!("soak: {t:>5.0}s  {}  churned {}", rss.join("  "), counts.churned.load(Relaxed));
        }
        samples.push((t, now));
    }
    stop.store(true, Relaxed);
    for t in threads {
        let _ = t.join();
    }
    std::thread::sleep(Duration::from_secs(2));
    stop_reading.store(true, Relaxed);
    let held: Vec<Vec<Held>> = readers.into_iter().map(|r| r.join().expect("a reader")).collect();
    // The churned and slow connections are gone now, the steady ones still
    // open: descriptors must come back to what they were before the churn.
    let settled = Instant::now();
    let fds_after = loop {
        let now: Vec<u64> =
            args.server_pids.iter().map(|&p| sample(p).map(|s| s.1)).collect::<Result<_, _>>()?;
        let back = now.iter().zip(&fds_before).all(|(a, b)| *a <= b + 8);
        if back || settled.elapsed() > Duration::from_secs(15) {
            break now;
        }
        std::thread::sleep(Duration::from_millis(200));
    };

    drop(held);
    let apis: Vec<SocketAddr> = [Some(args.api), args.tls_api].into_iter().flatten().collect();
    let slow_closed: u64 = apis.iter().map(|a| metric(*a, "ringcast_slow_consumer_closes_total")).sum();
    let delivered = (counts.frames.load(Relaxed), counts.expected.load(Relaxed));
    let mut verdict =
        judge(&args, &samples, warmup, (&fds_before, &fds_after), dropped.load(Relaxed), delivered);
    let slow_opened = counts.slow_opened.load(Relaxed);
    let ok = slow_opened == 0 || slow_closed > 0;
    verdict.passed &= ok;
    verdict.lines.push(format!(
        "slow clients closed by the servers: {slow_closed} of {slow_opened} opened {}",
        if ok { "ok" } else { "NONE (is server.send_buffer small?)" }
    ));
    let c = &counts;
    println!(
        "soak: {:.1} min, {} churned ({} failed), {} published ({} failed), {} slow clients opened, {} frames read",
        args.minutes,
        c.churned.load(Relaxed),
        c.churn_failures.load(Relaxed),
        c.published.load(Relaxed),
        c.publish_failures.load(Relaxed),
        c.slow_opened.load(Relaxed),
        c.frames.load(Relaxed)
    );
    for line in &verdict.lines {
        println!("soak: {line}");
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "scenario": "soak",
            "minutes": args.minutes,
            "connections": args.connections,
            "warmup_secs": warmup.as_secs(),
            "churned": c.churned.load(Relaxed),
            "published": c.published.load(Relaxed),
            "slow_clients_opened": c.slow_opened.load(Relaxed),
            "slow_clients_closed": slow_closed,
            "fds_before": fds_before,
            "fds_after": fds_after,
            "delivered": delivered.0,
            "expected": delivered.1,
            "verdict": verdict.lines,
            "passed": verdict.passed,
            "samples": samples.iter().map(|(t, s)| serde_json::json!({"t": t, "rss_kib": s.iter().map(|x| x.0).collect::<Vec<_>>(), "fds": s.iter().map(|x| x.1).collect::<Vec<_>>()})).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&json).expect("json"))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        let series: Vec<(String, Vec<(f64, f64)>)> = args
            .server_pids
            .iter()
            .enumerate()
            .map(|(k, pid)| {
                let name = if k == 0 { format!("server {pid} (ws)") } else { format!("server {pid} (wss)") };
                (name, samples.iter().map(|(t, s)| (*t, s[k].0 as f64 / 1024.0)).collect())
            })
            .collect();
        let title = format!(
            "soak: RSS over {:.0} min, {} steady connections, churn {}/s",
            args.minutes, args.connections, args.churn_per_s
        );
        crate::plot::rss_over_time(path, &title, &series, warmup.as_secs_f64())?;
    }
    if verdict.passed {
        Ok(())
    } else {
        Err("soak failed: see the lines above".into())
    }
}

struct Verdict {
    passed: bool,
    lines: Vec<String>,
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// RSS after the warm-up against its end, descriptors before and after,
/// steady subscribers kept, every publication to them read.
fn judge(
    args: &Args,
    samples: &[Sample],
    warmup: Duration,
    (fds_before, fds_after): (&[u64], &[u64]),
    dropped: u64,
    (delivered, expected): (u64, u64),
) -> Verdict {
    let mut passed = true;
    let mut lines = Vec::new();
    let w = warmup.as_secs_f64();
    for (k, pid) in args.server_pids.iter().enumerate() {
        let window = |from: f64, to: f64| {
            median(samples.iter().filter(|(t, _)| *t >= from && *t < to).map(|(_, s)| s[k].0).collect())
        };
        let end = samples.last().map_or(0.0, |s| s.0);
        let base = window(w, w + 10.0);
        let last = window(end - 10.0, end + 1.0);
        let bound = (base as f64 * (1.0 + args.max_rss_growth_pct / 100.0)) as u64 + 8 * 1024;
        let ok = last <= bound;
        passed &= ok;
        lines.push(format!(
            "server {pid}: RSS {} KiB after the warm-up -> {} KiB at the end ({:+.1}%; bound {} KiB) {}",
            base,
            last,
            (last as f64 / base.max(1) as f64 - 1.0) * 100.0,
            bound,
            if ok { "ok" } else { "GREW" }
        ));
        let ok = fds_after[k] <= fds_before[k] + 8;
        passed &= ok;
        lines.push(format!(
            "server {pid}: {} descriptors before the churn, {} after it {}",
            fds_before[k],
            fds_after[k],
            if ok { "ok" } else { "LEAKED" }
        ));
    }
    let ok = dropped == 0;
    passed &= ok;
    lines.push(format!(
        "steady subscribers dropped by the server: {dropped} of {} {}",
        args.connections,
        if ok { "ok" } else { "FAILED" }
    ));
    let ok = delivered == expected;
    passed &= ok;
    lines.push(format!(
        "publications read by the steady subscribers: {delivered} of {expected} published to them {}",
        if ok { "ok" } else { "LOST OR EXTRA" }
    ));
    Verdict { passed, lines }
}
