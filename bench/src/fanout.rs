//! Fanout: N subscribers over T topics (roadrunner dialect), a publisher at
//! R publications/s over goridge RPC; end-to-end latency (a timestamp in each
//! payload), deliveries/s and exact losses. `--saturate` steps the rate up
//! until delivery drops below 99.9 % or p99 passes `--p99-bound-ms`.
//!
//! Subscriber threads are pinned (core_affinity), each a single-threaded
//! runtime with many connections; frames are parsed in place in one buffer
//! per connection, with no allocation per message.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::report::{self, Delivery};
use crate::wire::{cpu_seconds, masked_text, parse_frame};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// The gateway's WebSocket address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: SocketAddr,
    /// Path of a roadrunner vhost.
    #[arg(long, default_value = "/ws")]
    path: String,
    /// The gateway's goridge RPC address (publisher).
    #[arg(long, default_value = "127.0.0.1:6001")]
    rpc: SocketAddr,
    /// Publish with `POST /publish` (JSON) to this HTTP address instead of
    /// RPC: ringcast's API listener, or a peer server that speaks the same.
    #[arg(long)]
    publish_http: Option<SocketAddr>,
    #[arg(long, default_value_t = 1_000)]
    subscribers: usize,
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// Publications per second (all topics together).
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Payload bytes (at least 32).
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Seconds of publishing per step.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Time allowed for the last deliveries to arrive after a step.
    #[arg(long, default_value_t = 2_000)]
    drain_ms: u64,
    /// Subscriber threads (pinned to cores in turn).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Spread client sockets over this many 127.0.0.x source addresses.
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Step the rate up ×1.5 from --rate until a step fails.
    #[arg(long)]
    saturate: bool,
    /// A step fails when its p99 passes this bound.
    #[arg(long, default_value_t = 50.0)]
    p99_bound_ms: f64,
    /// At most this many steps with --saturate.
    #[arg(long, default_value_t = 12)]
    max_steps: usize,
    /// Directory for the JSON summary and HdrHistogram logs.
    #[arg(long, default_value = "target/bench/fanout")]
    out: PathBuf,
}

/// What one subscriber thread reports for a step.
struct ThreadReport {
    hist: Histogram<u64>,
    received: u64,
    out_of_order: u64,
}

enum Command {
    /// Report the step's figures and start a new step.
    Report(mpsc::Sender<ThreadReport>),
    Stop,
}

#[derive(serde::Serialize)]
struct StepSummary {
    rate_offered: u64,
    publications: u64,
    seconds: f64,
    deliveries_expected: u64,
    deliveries_received: u64,
    lost: u64,
    out_of_order: u64,
    deliveries_per_second: f64,
    latency_ms: std::collections::BTreeMap<String, f64>,
    passed: bool,
}

pub fn run(args: Args) -> Result<(), String> {
    if args.size < 32 || args.topics == 0 || args.subscribers == 0 || args.threads == 0 {
        return Err("--size must be ≥ 32 and --topics, --subscribers, --threads ≥ 1".into());
    }
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let epoch = Instant::now();
    let cpu0 = cpu_seconds();
    let joined = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut controls = Vec::new();
    let mut threads = Vec::new();
    for t in 0..args.threads {
        let (tx, rx) = mpsc::channel();
        controls.push(tx);
        let (args, joined, failed) = (args.clone(), joined.clone(), failed.clone());
        let core = (!cores.is_empty()).then(|| cores[t % cores.len()]);
        threads.push(std::thread::spawn(move || {
            if let Some(c) = core {
                core_affinity::set_for_current(c);
            }
            subscriber_thread(t, &args, epoch, joined, failed, rx)
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while joined.load(Ordering::Relaxed) < args.subscribers {
        if failed.load(Ordering::Relaxed) || Instant::now() > deadline {
            for c in &controls {
                let _ = c.send(Command::Stop);
            }
            return Err(format!(
                "only {} of {} subscribers joined (raise ulimit -n? is the gateway at {}?)",
                joined.load(Ordering::Relaxed),
                args.subscribers,
                args.target
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let subscribers_per_topic: Vec<u64> = (0..args.topics)
        .map(|t| (0..args.subscribers).filter(|i| i % args.topics == t).count() as u64)
        .collect();
    println!(
        "ringcast-bench fanout: {} subscribers over {} topics, {}-byte payloads, {} s per step via goridge RPC",
        args.subscribers, args.topics, args.size, args.duration_secs
    );
    println!(
        "{:>10} {:>12} {:>14} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "rate",
        "publications",
        "deliveries/s",
        "lost",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9",
        "p99.99",
        "max"
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let mut seq = vec![0u64; args.topics];
    let mut summaries = Vec::new();
    let mut best: Option<u64> = None;
    let mut plotted: Vec<(String, Histogram<u64>)> = Vec::new();
    let mut rate = args.rate;
    for _ in 0..if args.saturate { args.max_steps } else { 1 } {
        let before = seq.clone();
        let started = Instant::now();
        match args.publish_http {
            Some(addr) => rt.block_on(publish_http(&args, addr, rate, epoch, &mut seq))?,
            None => rt.block_on(publish(&args, rate, epoch, &mut seq))?,
        }
        let seconds = started.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(args.drain_ms));
        let published: Vec<u64> = seq.iter().zip(&before).map(|(a, b)| a - b).collect();
        let mut hist = report::latency_histogram();
        let (mut received, mut out_of_order) = (0, 0);
        for c in &controls {
            let (tx, rx) = mpsc::channel();
            c.send(Command::Report(tx)).map_err(|_| "a subscriber thread died")?;
            let r =
                rx.recv_timeout(Duration::from_secs(10)).map_err(|_| "a subscriber thread did not report")?;
            hist.add(&r.hist).map_err(|e| e.to_string())?;
            received += r.received;
            out_of_order += r.out_of_order;
        }
        let d = Delivery { expected: Delivery::expected_from(&published, &subscribers_per_topic), received };
        let pct = report::percentiles_ms(&hist);
        let p99 = pct.iter().find(|(n, _)| *n == "p99").map_or(0.0, |p| p.1);
        // The publisher must also have kept up: a server that slows its
        // publish answers down is not delivering the offered rate.
        let offered = rate as f64 * args.duration_secs as f64;
        let kept_up = published.iter().sum::<u64>() as f64 >= 0.99 * offered;
        let passed = d.ratio() >= 0.999 && p99 <= args.p99_bound_ms && out_of_order == 0 && kept_up;
        println!(
            "{rate:>10} {:>12} {:>14.0} {:>8} {}{}",
            published.iter().sum::<u64>(),
            report::per_second(received, seconds),
            d.lost(),
            pct.iter().map(|(_, v)| format!("{v:>9.3} ")).collect::<String>(),
            if passed { "" } else { " ← failed" }
        );
        report::write_hlog(
            &args.out.join(format!("fanout-{rate}.hlog")),
            &hist,
            seconds,
            "fanout publish → receipt",
        )?;
        plotted.push((format!("{rate}/s"), hist.clone()));
        summaries.push(StepSummary {
            rate_offered: rate,
            publications: published.iter().sum(),
            seconds,
            deliveries_expected: d.expected,
            deliveries_received: d.received,
            lost: d.lost(),
            out_of_order,
            deliveries_per_second: report::per_second(received, seconds),
            latency_ms: pct.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
            passed,
        });
        if !passed {
            break;
        }
        best = Some(rate);
        rate = rate * 3 / 2;
    }
    for c in &controls {
        let _ = c.send(Command::Stop);
    }
    for t in threads {
        let _ = t.join();
    }
    if args.saturate {
        match best {
            Some(r) => println!(
                "saturation: {r} publications/s = {} deliveries/s with ≥ 99.9 % delivered and p99 ≤ {} ms",
                r * args.subscribers as u64 / args.topics as u64,
                args.p99_bound_ms
            ),
            None => println!("saturation: even the first step failed"),
        }
    }
    if let (Some(a), Some(b)) = (cpu0, cpu_seconds()) {
        println!("load generator CPU: {:.1} s over {:.1} s wall", b - a, epoch.elapsed().as_secs_f64());
    }
    let json = serde_json::json!({
        "scenario": "fanout",
        "subscribers": args.subscribers,
        "topics": args.topics,
        "payload_bytes": args.size,
        "saturation_publications_per_second": best,
        "steps": summaries,
    });
    let series: Vec<(&str, &Histogram<u64>)> = plotted.iter().map(|(n, h)| (n.as_str(), h)).collect();
    crate::plot::latency_distribution(
        &args.out.join("fanout.svg"),
        "fanout latency by publication rate",
        &series,
    )?;
    let path = args.out.join("fanout.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).expect("json"))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    println!("wrote {}, fanout-<rate>.hlog (HdrHistogram interval logs) and fanout.svg", path.display());
    Ok(())
}

/// Publishes `rate`/s for the step's duration with one `POST /publish` per
/// message over one kept-alive HTTP/1.1 connection, in order.
async fn publish_http(
    args: &Args,
    addr: SocketAddr,
    rate: u64,
    epoch: Instant,
    seq: &mut [u64],
) -> Result<(), String> {
    use http_body_util::{BodyExt, Full};
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("http {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("http {addr}: {e}"))?;
    tokio::spawn(conn);
    let started = tokio::time::Instant::now();
    let end = started + Duration::from_secs(args.duration_secs);
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let t = (sent % args.topics as u64) as usize;
            let mut payload = format!("{}:{}:", seq[t], epoch.elapsed().as_nanos() as u64);
            payload.extend(std::iter::repeat_n('x', args.size.saturating_sub(payload.len())));
            seq[t] += 1;
            sent += 1;
            let body = format!(r#"{{"topics":["t{t}"],"payload":"{payload}"}}"#);
            let req = hyper::Request::post("/publish")
                .header("host", addr.to_string())
                .header("content-type", "application/json")
                .body(Full::new(bytes::Bytes::from(body)))
                .map_err(|e| e.to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| format!("publish: {e}"))?;
            let status = resp.status();
            let text = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            if !status.is_success() {
                return Err(format!("publish: {status}: {}", String::from_utf8_lossy(&text)));
            }
        }
    }
    Ok(())
}

/// Publishes `rate`/s for the step's duration, round-robin over topics, in
/// one `broadcast.PublishAsync` per millisecond holding what is due.
async fn publish(args: &Args, rate: u64, epoch: Instant, seq: &mut [u64]) -> Result<(), String> {
    let stream =
        tokio::net::TcpStream::connect(args.rpc).await.map_err(|e| format!("rpc {}: {e}", args.rpc))?;
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    // Replies are read and dropped; an error reply ends the run.
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut pending = Vec::new();
        loop {
            let n = rd.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok::<_, String>(());
            }
            pending.extend_from_slice(&buf[..n]);
            while let Ok(Some((f, used))) = ringcast::rpc::frame::decode(&pending, usize::MAX) {
                if f.flags & ringcast::rpc::frame::ERROR != 0 {
                    return Err(format!("publish failed: {}", String::from_utf8_lossy(f.payload)));
                }
                pending.drain(..used);
            }
        }
    });
    let topics: Vec<String> = (0..args.topics).map(|t| format!("t{t}")).collect();
    let method = b"broadcast.PublishAsync";
    let started = tokio::time::Instant::now();
    let end = started + Duration::from_secs(args.duration_secs);
    let (mut sent, mut call) = (0u64, 0u32);
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        if due <= sent {
            continue;
        }
        let now = epoch.elapsed().as_nanos() as u64;
        let messages = (sent..due)
            .map(|n| {
                let t = (n % args.topics as u64) as usize;
                let mut payload = format!("{}:{now}:", seq[t]).into_bytes();
                payload.resize(args.size, b'x');
                seq[t] += 1;
                ringcast::rpc::proto::broadcast::Message {
                    command: String::new(),
                    topics: vec![topics[t].clone()],
                    payload,
                }
            })
            .collect();
        sent = due;
        let body = ringcast::rpc::proto::broadcast::Request { messages }.encode_to_vec();
        out.clear();
        call += 1;
        ringcast::rpc::frame::encode(
            &mut out,
            ringcast::rpc::frame::CODEC_PROTO,
            &[call, method.len() as u32],
            &[method, &body],
        );
        wr.write_all(&out).await.map_err(|e| e.to_string())?;
    }
    wr.shutdown().await.map_err(|e| e.to_string())?;
    reader.await.map_err(|e| e.to_string())?
}

fn subscriber_thread(
    t: usize,
    args: &Args,
    epoch: Instant,
    joined: Arc<AtomicUsize>,
    failed: Arc<AtomicBool>,
    control: mpsc::Receiver<Command>,
) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    let stats = Rc::new(RefCell::new(ThreadReport {
        hist: report::latency_histogram(),
        received: 0,
        out_of_order: 0,
    }));
    local.block_on(&rt, async {
        for i in (t..args.subscribers).step_by(args.threads) {
            let (args, stats, joined, failed) = (args.clone(), stats.clone(), joined.clone(), failed.clone());
            tokio::task::spawn_local(async move {
                if let Err(e) = subscriber(i, &args, epoch, &joined, &stats).await {
                    eprintln!("subscriber {i}: {e}");
                    failed.store(true, Ordering::Relaxed);
                }
            });
            // Pace the connects a little so the accept queue keeps up.
            if i % 500 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        loop {
            match control.try_recv() {
                Ok(Command::Report(reply)) => {
                    let mut s = stats.borrow_mut();
                    let r = ThreadReport {
                        hist: s.hist.clone(),
                        received: s.received,
                        out_of_order: s.out_of_order,
                    };
                    s.hist.reset();
                    s.received = 0;
                    s.out_of_order = 0;
                    let _ = reply.send(r);
                }
                Ok(Command::Stop) | Err(mpsc::TryRecvError::Disconnected) => return,
                Err(mpsc::TryRecvError::Empty) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    });
}

async fn subscriber(
    i: usize,
    args: &Args,
    epoch: Instant,
    joined: &AtomicUsize,
    stats: &RefCell<ThreadReport>,
) -> Result<(), String> {
    let crate::wire::Upgraded { stream: mut s, mut buf, mut filled } =
        crate::wire::ws_connect(i, args.target, &args.path, args.sources).await?;
    let join = format!(r#"{{"command":"join","topics":["t{}"]}}"#, i % args.topics);
    let mut frame = Vec::with_capacity(join.len() + 8);
    masked_text(join.as_bytes(), &mut frame);
    s.write_all(&frame).await.map_err(|e| e.to_string())?;
    let mut joined_yet = false;
    let mut last_seq: Option<u64> = None;
    loop {
        // Consume every complete frame in the buffer.
        let mut pos = 0;
        while let Some((start, len)) = parse_frame(&buf[pos..filled]) {
            let payload = &buf[pos + start..pos + start + len];
            if !joined_yet {
                if !payload.starts_with(br#"{"topic":"@join""#) {
                    return Err(format!("join refused: {}", String::from_utf8_lossy(payload)));
                }
                joined_yet = true;
                joined.fetch_add(1, Ordering::Relaxed);
            } else if let Some((seq, sent_ns)) = report::parse_stamp(payload) {
                let now = epoch.elapsed().as_nanos() as u64;
                let mut st = stats.borrow_mut();
                let _ = st.hist.record((now.saturating_sub(sent_ns) / 1000).max(1));
                st.received += 1;
                if last_seq.is_some_and(|l| seq <= l) {
                    st.out_of_order += 1;
                }
                last_seq = Some(seq);
            }
            pos += start + len;
        }
        buf.copy_within(pos..filled, 0);
        filled -= pos;
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = s.read(&mut buf[filled..]).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed by the server".into());
        }
        filled += n;
    }
}
