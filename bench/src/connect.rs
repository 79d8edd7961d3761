//! Connect ramp: N connections opened at a target rate; connect + upgrade
//! latency histogram, failures, and the time until all are connected.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::report;
use crate::wire::cpu_seconds;

#[derive(clap::Args)]
pub struct Args {
    /// The gateway's WebSocket address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: SocketAddr,
    #[arg(long, default_value = "/ws")]
    path: String,
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Connections started per second.
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    /// A connection not upgraded within this long counts as failed.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Spread client sockets over this many 127.0.0.x source addresses.
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Keep the connections open this long after the ramp.
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
    /// Directory for the JSON summary, HdrHistogram log and plot.
    #[arg(long, default_value = "target/bench/connect")]
    out: PathBuf,
}

#[derive(Default)]
struct Tally {
    connected: usize,
    failed: usize,
    first_error: Option<String>,
    last_done: Option<Instant>,
}

pub fn run(args: Args) -> Result<(), String> {
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, ramp(args))
}

async fn ramp(args: Args) -> Result<(), String> {
    let hist = Rc::new(RefCell::new(report::latency_histogram()));
    let tally = Rc::new(RefCell::new(Tally::default()));
    let cpu0 = cpu_seconds();
    let started = Instant::now();
    let gap = Duration::from_nanos(1_000_000_000 / args.rate.max(1));
    let mut held = Vec::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..args.connections {
        let (hist, tally, tx) = (hist.clone(), tally.clone(), tx.clone());
        let (target, path, sources, timeout) =
            (args.target, args.path.clone(), args.sources, args.timeout_ms);
        tokio::task::spawn_local(async move {
            let t0 = Instant::now();
            let result = tokio::time::timeout(
                Duration::from_millis(timeout),
                crate::wire::ws_connect(i, target, &path, sources),
            )
            .await;
            let mut t = tally.borrow_mut();
            match result {
                Ok(Ok(upgraded)) => {
                    let _ = hist.borrow_mut().record((t0.elapsed().as_micros() as u64).max(1));
                    t.connected += 1;
                    let _ = tx.send(upgraded.stream);
                }
                Ok(Err(e)) => {
                    t.failed += 1;
                    t.first_error.get_or_insert(e);
                }
                Err(_) => {
                    t.failed += 1;
                    t.first_error.get_or_insert_with(|| format!("no upgrade within {timeout} ms"));
                }
            }
            t.last_done = Some(Instant::now());
        });
        tokio::time::sleep_until((started + gap * (i as u32 + 1)).into()).await;
    }
    drop(tx);
    while let Some(stream) = rx.recv().await {
        held.push(stream);
    }
    report_ramp(&args, started, cpu0, &tally.borrow(), &hist.borrow())?;
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    drop(held);
    Ok(())
}

fn report_ramp(
    args: &Args,
    started: Instant,
    cpu0: Option<f64>,
    tally: &Tally,
    hist: &hdrhistogram::Histogram<u64>,
) -> Result<(), String> {
    let all_done = tally.last_done.map_or(0.0, |t| (t - started).as_secs_f64());
    println!(
        "ringcast-bench connect: {} connections at {}/s to {}{}",
        args.connections, args.rate, args.target, args.path
    );
    println!("connected {} failed {} in {:.2} s", tally.connected, tally.failed, all_done);
    if let Some(e) = &tally.first_error {
        println!("first error: {}", e.lines().next().unwrap_or(e));
    }
    let pct = report::percentiles_ms(hist);
    println!(
        "connect+upgrade ms: {}",
        pct.iter().map(|(n, v)| format!("{n} {v:.3}")).collect::<Vec<_>>().join("  ")
    );
    if let (Some(a), Some(b)) = (cpu0, cpu_seconds()) {
        println!("load generator CPU: {:.1} s over {:.1} s wall", b - a, started.elapsed().as_secs_f64());
    }
    let summary = serde_json::json!({
        "scenario": "connect",
        "connections": args.connections,
        "rate": args.rate,
        "connected": tally.connected,
        "failed": tally.failed,
        "seconds_to_all_done": all_done,
        "latency_ms": pct.iter().map(|(n, v)| (n.to_string(), *v)).collect::<std::collections::BTreeMap<_, _>>(),
    });
    let path = args.out.join("connect.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary).expect("json"))
        .map_err(|e| e.to_string())?;
    report::write_hlog(
        &args.out.join("connect.hlog"),
        hist,
        started.elapsed().as_secs_f64(),
        "connect + upgrade",
    )?;
    crate::plot::latency_distribution(
        &args.out.join("connect.svg"),
        "connect + upgrade latency",
        &[("connect", hist)],
    )?;
    println!("wrote {}, connect.hlog and connect.svg", path.display());
    Ok(())
}
