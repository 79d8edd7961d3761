//! Fanout: N subscribers over T topics, a publisher at R publications/s
//! (goridge RPC, HTTP, a WebSocket or NATS; see `publisher`); end-to-end
//! latency (a timestamp in each payload), deliveries/s and exact losses.
//! `--saturate` steps the rate up until delivery drops below 99.9 % or p99
//! passes `--p99-bound-ms`. `--protocol` picks the server's subscribe
//! protocol (ringcast's roadrunner dialect, nchan, NATS).
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
use tokio::io::AsyncWriteExt;

use crate::protocol::Protocol;
use crate::publisher::{self, Via};
use crate::report::{self, Delivery};
use crate::wire::{cpu_seconds, frame_opcode, masked_frame, parse_frame, process_cpu_seconds};

/// Width of one bucket of the throughput-over-time series.
const TIMELINE_BUCKET_MS: u64 = 100;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// The server's WebSocket address; several, comma-separated, spread
    /// the subscribers over them in turn (nodes of a cluster), and the
    /// publisher uses the first.
    #[arg(long, default_value = "127.0.0.1:8080", value_delimiter = ',')]
    target: Vec<SocketAddr>,
    /// How subscribers join: roadrunner (ringcast, bench/peers/*.js), nchan, nats.
    #[arg(long, value_enum, default_value = "roadrunner")]
    protocol: Protocol,
    /// WebSocket path (default: /ws roadrunner, /sub nchan — the topic is
    /// appended —, / nats).
    #[arg(long)]
    path: Option<String>,
    /// How to publish: rpc (goridge, ringcast), http (ringcast's or a peer's
    /// POST /publish; nchan POST /pub/<topic>), ws (nchan, NATS), nats (NATS
    /// TCP). Default: rpc, http for nchan, nats for NATS.
    #[arg(long, value_enum)]
    publish_via: Option<Via>,
    /// The publisher's address (default: 127.0.0.1:6001 for rpc,
    /// 127.0.0.1:4222 for nats, --target otherwise).
    #[arg(long)]
    publish_addr: Option<SocketAddr>,
    /// Path of a WebSocket publisher (default /pub for nchan, / for NATS).
    #[arg(long)]
    publish_path: Option<String>,
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
    /// Step the rate up by --step-factor from --rate until --give-up-after
    /// steps in a row failed; the figure is the highest step that passed.
    #[arg(long)]
    saturate: bool,
    /// With --saturate: consecutive failed steps that end the search. More
    /// than 1, because pass/fail need not be monotonic in the rate: a server
    /// that batches writes under load can fail a middle step (one syscall per
    /// delivery, p99 over the bound) and pass higher ones.
    #[arg(long, default_value_t = 3)]
    give_up_after: usize,
    /// Rate multiplier between --saturate steps (each step adds at least 1).
    #[arg(long, default_value_t = 1.5)]
    step_factor: f64,
    /// A step fails when its p99 passes this bound.
    #[arg(long, default_value_t = 50.0)]
    p99_bound_ms: f64,
    /// At most this many steps with --saturate.
    #[arg(long, default_value_t = 12)]
    max_steps: usize,
    /// The server's PID (for nginx: the worker), to report its CPU per step.
    #[arg(long)]
    server_pid: Option<u32>,
    /// ringcast's API address: after each step, its stall detector's waits
    /// (`GET /stats`, docs/metrics.md) are printed under the step.
    #[arg(long)]
    stats_api: Option<SocketAddr>,
    /// Directory for the JSON summary and HdrHistogram logs.
    #[arg(long, default_value = "target/bench/fanout")]
    out: PathBuf,
}

/// What one subscriber thread reports for a step.
struct ThreadReport {
    hist: Histogram<u64>,
    received: u64,
    out_of_order: u64,
    /// Deliveries per TIMELINE_BUCKET_MS since the start (never reset).
    timeline: Vec<u64>,
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
    extra: u64,
    out_of_order: u64,
    deliveries_per_second: f64,
    /// Cores' worth of CPU used while publishing: the generator, the server.
    generator_cpu: Option<f64>,
    /// Of which the publisher's thread.
    publisher_cpu: Option<f64>,
    /// The publisher was cut off (the step failed).
    publisher_error: Option<String>,
    server_cpu: Option<f64>,
    latency_ms: std::collections::BTreeMap<String, f64>,
    /// With --stats-api: the server's stall p99 and max (ms) per site.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_stall_ms: Option<crate::server_stats::Stalls>,
    passed: bool,
}

pub fn run(args: Args) -> Result<(), String> {
    if args.size < 32 || args.topics == 0 || args.subscribers == 0 || args.threads == 0 {
        return Err("--size must be ≥ 32 and --topics, --subscribers, --threads ≥ 1".into());
    }
    if args.step_factor <= 1.0 {
        return Err("--step-factor must be above 1".into());
    }
    let via = args.publish_via.unwrap_or(Via::default_for(args.protocol));
    via.check(args.protocol)?;
    let publish_addr = args.publish_addr.unwrap_or(match via {
        Via::Rpc => SocketAddr::from(([127, 0, 0, 1], 6001)),
        Via::Nats => SocketAddr::from(([127, 0, 0, 1], 4222)),
        Via::Http | Via::Ws => args.target[0],
    });
    let publish_path = args.publish_path.clone().unwrap_or_else(|| match args.protocol {
        Protocol::Nchan | Protocol::Roadrunner => "/pub".into(),
        Protocol::Nats => "/".into(),
        Protocol::Webrocket => Protocol::Webrocket.default_path().into(),
    });
    let topic_names: Vec<String> = (0..args.topics).map(|t| format!("t{t}")).collect();
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
                "only {} of {} subscribers joined (raise ulimit -n? is the gateway at {:?}?)",
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
        "ringcast-bench fanout: {} {:?} subscribers over {} topics, {}-byte payloads, {} s per step, publishing via {:?} to {publish_addr}",
        args.subscribers, args.protocol, args.topics, args.size, args.duration_secs, via
    );
    println!(
        "{:>10} {:>12} {:>14} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "rate",
        "publications",
        "deliveries/s",
        "lost",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9",
        "p99.99",
        "max",
        "gen cpu",
        "pub cpu",
        "srv cpu"
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let mut seq = vec![0u64; args.topics];
    let mut summaries = Vec::new();
    let mut best: Option<u64> = None;
    let mut plotted: Vec<(String, Histogram<u64>)> = Vec::new();
    let mut rate = args.rate;
    let mut timeline = Vec::new();
    let mut step_starts = Vec::new();
    let server_pid = args.server_pid.map(|p| p.to_string());
    let server_cpu = || server_pid.as_deref().and_then(process_cpu_seconds);
    let (mut failed_in_a_row, mut first_failed) = (0, None);
    for _ in 0..if args.saturate { args.max_steps } else { 1 } {
        let before = seq.clone();
        let cpu_before = (cpu_seconds(), server_cpu());
        // The publisher runs on this thread alone: its CPU shows whether it
        // could have been the limit.
        let publisher_before = process_cpu_seconds("thread-self");
        let started = Instant::now();
        step_starts.push((started - epoch).as_secs_f64());
        let plan = publisher::Plan {
            protocol: args.protocol,
            via,
            addr: publish_addr,
            ws_path: &publish_path,
            topics: &topic_names,
            size: args.size,
            rate,
            duration: Duration::from_secs(args.duration_secs),
            epoch,
        };
        // A publisher the server cut off fails the step (and ends the
        // search); what was measured before stays in the summary.
        let publish_error = rt.block_on(publisher::run(&plan, &mut seq)).err();
        if let (Some(e), false) = (&publish_error, args.saturate) {
            return Err(e.clone());
        }
        let seconds = started.elapsed().as_secs_f64();
        let share = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / seconds);
        let (generator_cpu, server_cpu) =
            (share(cpu_before.0, cpu_seconds()), share(cpu_before.1, server_cpu()));
        let publisher_cpu = share(publisher_before, process_cpu_seconds("thread-self"));
        std::thread::sleep(Duration::from_millis(args.drain_ms));
        let published: Vec<u64> = seq.iter().zip(&before).map(|(a, b)| a - b).collect();
        let mut hist = report::latency_histogram();
        let (mut received, mut out_of_order) = (0, 0);
        timeline.clear();
        for c in &controls {
            let (tx, rx) = mpsc::channel();
            c.send(Command::Report(tx)).map_err(|_| "a subscriber thread died")?;
            let r =
                rx.recv_timeout(Duration::from_secs(10)).map_err(|_| "a subscriber thread did not report")?;
            hist.add(&r.hist).map_err(|e| e.to_string())?;
            received += r.received;
            out_of_order += r.out_of_order;
            if timeline.len() < r.timeline.len() {
                timeline.resize(r.timeline.len(), 0);
            }
            timeline.iter_mut().zip(&r.timeline).for_each(|(a, b)| *a += b);
        }
        let d = Delivery { expected: Delivery::expected_from(&published, &subscribers_per_topic), received };
        let pct = report::percentiles_ms(&hist);
        let p99 = pct.iter().find(|(n, _)| *n == "p99").map_or(0.0, |p| p.1);
        // The publisher must also have kept up: a server that slows its
        // publish answers down is not delivering the offered rate.
        let offered = rate as f64 * args.duration_secs as f64;
        let kept_up = published.iter().sum::<u64>() as f64 >= 0.99 * offered;
        let passed = publish_error.is_none()
            && d.ratio() >= 0.999
            && d.extra() == 0
            && p99 <= args.p99_bound_ms
            && out_of_order == 0
            && kept_up;
        let cores = |c: Option<f64>| c.map_or("-".to_string(), |c| format!("{c:.2}"));
        println!(
            "{rate:>10} {:>12} {:>14.0} {:>8} {}{:>8} {:>8} {:>8}{}",
            published.iter().sum::<u64>(),
            report::per_second(received, seconds),
            d.lost(),
            pct.iter().map(|(_, v)| format!("{v:>9.3} ")).collect::<String>(),
            cores(generator_cpu),
            cores(publisher_cpu),
            cores(server_cpu),
            match (&publish_error, passed) {
                (Some(e), _) => format!(" ← failed: {e}"),
                (None, false) => " ← failed".to_string(),
                (None, true) => String::new(),
            }
        );
        let server_stall_ms = match args.stats_api {
            None => None,
            Some(api) => match rt.block_on(crate::server_stats::stalls(api)) {
                Ok(s) => {
                    println!("{}", crate::server_stats::line(&s));
                    Some(s)
                }
                Err(e) => {
                    eprintln!("--stats-api: {e}");
                    None
                }
            },
        };
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
            extra: d.extra(),
            out_of_order,
            deliveries_per_second: report::per_second(received, seconds),
            generator_cpu,
            publisher_cpu,
            publisher_error: publish_error.clone(),
            server_cpu,
            latency_ms: pct.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
            server_stall_ms,
            passed,
        });
        if passed {
            best = Some(rate);
            failed_in_a_row = 0;
        } else {
            first_failed.get_or_insert(rate);
            failed_in_a_row += 1;
            if publish_error.is_some() || failed_in_a_row >= args.give_up_after {
                break;
            }
        }
        rate = ((rate as f64 * args.step_factor) as u64).max(rate + 1);
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
                "saturation: {r} publications/s = {} deliveries/s with ≥ 99.9 % delivered and p99 ≤ {} ms{}",
                r * args.subscribers as u64 / args.topics as u64,
                args.p99_bound_ms,
                first_failed
                    .filter(|f| *f < r)
                    .map_or(String::new(), |f| format!(" (a lower step, {f}/s, failed)"))
            ),
            None => println!("saturation: even the first step failed"),
        }
    }
    if let (Some(a), Some(b)) = (cpu0, cpu_seconds()) {
        println!("load generator CPU: {:.1} s over {:.1} s wall", b - a, epoch.elapsed().as_secs_f64());
    }
    let per_second = 1000.0 / TIMELINE_BUCKET_MS as f64;
    let throughput: Vec<(f64, f64)> = timeline
        .iter()
        .enumerate()
        .map(|(i, n)| (i as f64 / per_second, *n as f64 * per_second))
        .skip_while(|(t, _)| step_starts.first().is_some_and(|s| t < s))
        .collect();
    let json = serde_json::json!({
        "scenario": "fanout",
        "protocol": format!("{:?}", args.protocol).to_lowercase(),
        "publish_via": format!("{via:?}").to_lowercase(),
        "subscribers": args.subscribers,
        "topics": args.topics,
        "payload_bytes": args.size,
        "saturation_publications_per_second": best,
        "first_failed_publications_per_second": first_failed,
        "steps": summaries,
        "throughput_per_second": throughput.iter().map(|(t, v)| [*t, *v]).collect::<Vec<_>>(),
    });
    let series: Vec<(&str, &Histogram<u64>)> = plotted.iter().map(|(n, h)| (n.as_str(), h)).collect();
    crate::plot::latency_distribution(
        &args.out.join("fanout.svg"),
        "fanout latency by publication rate",
        &series,
    )?;
    crate::plot::throughput_over_time(
        &args.out.join("fanout-throughput.svg"),
        "fanout deliveries/s over time (steps start at the marks)",
        &throughput,
        &step_starts,
    )?;
    let path = args.out.join("fanout.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).expect("json"))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    println!(
        "wrote {}, fanout-<rate>.hlog (HdrHistogram interval logs), fanout.svg and fanout-throughput.svg",
        path.display()
    );
    Ok(())
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
        timeline: Vec::new(),
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
                        timeline: s.timeline.clone(),
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
    let topic = format!("t{}", i % args.topics);
    let path =
        args.protocol.subscribe_path(args.path.as_deref().unwrap_or(args.protocol.default_path()), &topic);
    let crate::wire::Upgraded { stream: mut s, mut buf, mut filled } =
        crate::wire::ws_connect(i, args.target[i % args.target.len()], &path, args.sources).await?;
    let mut out = Vec::with_capacity(128);
    args.protocol.subscribe_frames(&topic, &mut out);
    s.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut sub = args.protocol.subscription();
    if sub.joined() {
        joined.fetch_add(1, Ordering::Relaxed);
    }
    let mut last_seq: Option<u64> = None;
    let mut on_delivery = |payload: &[u8]| {
        if let Some((seq, sent_ns)) = report::parse_stamp(payload) {
            let now = epoch.elapsed().as_nanos() as u64;
            let mut st = stats.borrow_mut();
            let _ = st.hist.record((now.saturating_sub(sent_ns) / 1000).max(1));
            st.received += 1;
            let bucket = (now / 1_000_000 / TIMELINE_BUCKET_MS) as usize;
            if st.timeline.len() <= bucket {
                st.timeline.resize(bucket + 1, 0);
            }
            st.timeline[bucket] += 1;
            if last_seq.is_some_and(|l| seq <= l) {
                st.out_of_order += 1;
            }
            last_seq = Some(seq);
        }
    };
    loop {
        // Consume every complete frame in the buffer.
        let mut pos = 0;
        out.clear();
        while let Some((start, len)) = parse_frame(&buf[pos..filled]) {
            let payload = &buf[pos + start..pos + start + len];
            match frame_opcode(&buf[pos..]) {
                0x8 => return Err(format!("closed by the server: {}", String::from_utf8_lossy(payload))),
                0x9 => masked_frame(0xA, payload, &mut out),
                0xA => {}
                _ => {
                    let r = sub.on_frame(payload, &mut on_delivery)?;
                    if r.joined_now {
                        joined.fetch_add(1, Ordering::Relaxed);
                    }
                    if r.pong {
                        masked_frame(0x2, b"PONG\r\n", &mut out);
                    }
                }
            }
            pos += start + len;
        }
        if !out.is_empty() {
            s.write_all(&out).await.map_err(|e| e.to_string())?;
        }
        crate::wire::refill(&mut s, &mut buf, &mut filled, pos).await?;
    }
}
