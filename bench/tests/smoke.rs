//! Each ringcast-bench scenario, briefly, against a real ringcast, so the
//! instruments cannot rot unnoticed.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BENCH: &str = env!("CARGO_BIN_EXE_ringcast-bench");

/// The gateway binary of the same build (cargo builds every workspace
/// binary before running tests).
fn gateway_binary() -> PathBuf {
    let mut p = PathBuf::from(BENCH);
    p.set_file_name("ringcast");
    assert!(p.exists(), "{} is missing: build the workspace (cargo test --workspace)", p.display());
    p
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts ringcast with `config` and `shards`; returns it and its
/// "listening" log line (`websocket=… api=… rpc=…`).
fn start_gateway(config: &str, shards: usize, dir: &tempfile::TempDir) -> (Killed, String) {
    let path = dir.path().join("ringcast.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(gateway_binary())
        .arg("--config")
        .arg(&path)
        .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0", "--rpc-listen", "127.0.0.1:0"])
        .args(["--shards", &shards.to_string()])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let line =
        lines.find_map(|l| l.ok().filter(|l| l.contains("ringcast listening:"))).expect("gateway started");
    std::thread::spawn(move || for _ in lines {});
    (Killed(child), line)
}

/// One `name=value` field of the listening line.
fn field(line: &str, name: &str) -> String {
    line.split(&format!("{name}=")).nth(1).unwrap().split_whitespace().next().unwrap().to_string()
}

/// Starts ringcast on one shard; returns it and its WebSocket address.
fn gateway(config: &str, dir: &tempfile::TempDir) -> (Killed, String) {
    let (server, line) = start_gateway(config, 1, dir);
    (server, field(&line, "websocket"))
}

/// Runs a fanout with `args` writing into `out_dir`; returns its output
/// and its first step's summary.
fn fanout_step(args: &[&str], out_dir: &std::path::Path) -> (String, serde_json::Value) {
    let mut all = args.to_vec();
    all.extend(["--drain-ms", "500", "--p99-bound-ms", "1000", "--out", out_dir.to_str().unwrap()]);
    let out = bench(&all);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("fanout.json")).unwrap()).unwrap();
    (out, summary["steps"][0].clone())
}

fn bench(args: &[&str]) -> String {
    let out = Command::new(BENCH).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{args:?}: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    text
}

#[test]
fn roundtrip_through_the_stub_backend() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _stub = Killed(
        Command::new(BENCH)
            .args(["stub-backend", "--listen", &format!("127.0.0.1:{port}")])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "the stub backend does not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let config =
        format!("[[vhost]]\npath = \"/\"\ndialect = \"proxy\"\nbackend = \"http://127.0.0.1:{port}\"\n");
    let (server, ws) = gateway(&config, &dir);
    let pid = server.0.id().to_string();
    let out = bench(&[
        "roundtrip",
        "--target",
        &ws,
        "--connections",
        "50",
        "--ramp-rate",
        "500",
        "--interval-ms",
        "100",
        "--duration-secs",
        "2",
        "--server-pid",
        &pid,
    ]);
    assert!(out.contains("(0 failed)"), "{out}");
    assert!(out.contains("0 replies lost in all, 0 connections failed later"), "{out}");
    let rate: f64 = out.split(" replies/s").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(rate > 200.0, "50 clients at 10 msg/s each: {out}");
    assert!(out.contains("bytes per connection"), "{out}");
}

#[test]
fn hold_reports_memory_per_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ws) = gateway("", &dir);
    let pid = server.0.id().to_string();
    let out = bench(&["hold", "--target", &ws, "--connections", "200", "--server-pid", &pid]);
    assert!(out.contains("connections: 200 (+64 warm-up) opened and joined"), "{out}");
    assert!(out.contains("bytes per connection"), "{out}");
}

/// A self-signed certificate for localhost in `dir`: the `[server.tls]`
/// table naming it, and the file the bench trusts (`--tls-ca`).
fn tls_files(dir: &tempfile::TempDir) -> (String, String) {
    let k = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, k.cert.pem()).unwrap();
    std::fs::write(&key, k.signing_key.serialize_pem()).unwrap();
    let table = format!(
        "[server.tls]\ncert = {:?}\nkey = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    (table, cert.display().to_string())
}

#[test]
fn hold_and_fanout_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (table, ca) = tls_files(&dir);
    let (server, line) = start_gateway(&table, 1, &dir);
    let pid = server.0.id().to_string();
    let ws = field(&line, "websocket");
    let out =
        bench(&["--tls-ca", &ca, "hold", "--target", &ws, "--connections", "100", "--server-pid", &pid]);
    assert!(out.contains("connections: 100 (+64 warm-up) opened and joined"), "{out}");
    let out_dir = dir.path().join("out");
    let rpc = field(&line, "rpc");
    let (out, step) = fanout_step(
        &[
            "--tls-ca",
            &ca,
            "fanout",
            "--target",
            &ws,
            "--publish-addr",
            &rpc,
            "--subscribers",
            "100",
            "--rate",
            "100",
            "--duration-secs",
            "1",
        ],
        &out_dir,
    );
    assert!(step["publications"].as_u64().unwrap() >= 90, "{out}");
    assert_eq!(step["deliveries_received"], step["deliveries_expected"], "{out}");
    // The same clients without the CA cannot be served: the bench really speaks TLS.
    let plain = Command::new(BENCH).args(["hold", "--target", &ws, "--connections", "1"]).output().unwrap();
    assert!(!plain.status.success(), "plain WebSocket on a TLS port must fail");
}

#[test]
fn json_micro_benchmark_runs() {
    let out = bench(&["json", "--iterations", "1000", "--rounds", "1"]);
    assert!(out.contains("join 20 topics"), "{out}");
}

#[test]
fn fanout_counts_every_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, line) = start_gateway("", 2, &dir);
    let out_dir = dir.path().join("out");
    let out = bench(&[
        "fanout",
        "--target",
        &field(&line, "websocket"),
        "--publish-addr",
        &field(&line, "rpc"),
        "--subscribers",
        "200",
        "--topics",
        "4",
        "--rate",
        "200",
        "--duration-secs",
        "2",
        "--drain-ms",
        "500",
        "--threads",
        "2",
        "--p99-bound-ms",
        "1000",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    // About 400 publications over 4 topics of 50 subscribers each: every
    // subscriber of a topic must get every publication to it.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("fanout.json")).unwrap()).unwrap();
    let step = &summary["steps"][0];
    let published = step["publications"].as_u64().unwrap();
    assert!((390..=400).contains(&published), "{out}");
    assert_eq!(step["deliveries_expected"].as_u64().unwrap(), published * 50, "{out}");
    assert_eq!(step["deliveries_received"], step["deliveries_expected"], "{out}");
    assert_eq!(step["lost"], 0);
    assert_eq!(step["out_of_order"], 0);
    assert!(out_dir.join("fanout-200.hlog").exists());
    assert!(std::fs::read_to_string(out_dir.join("fanout.svg")).unwrap().starts_with("<svg"));
    assert!(std::fs::read_to_string(out_dir.join("fanout-throughput.svg")).unwrap().contains("deliveries/s"));
    let series = summary["throughput_per_second"].as_array().unwrap();
    let peak = series.iter().map(|p| p[1].as_f64().unwrap()).fold(0.0, f64::max);
    assert!(peak > 1_000.0, "about 10,000 deliveries/s, seen at most {peak}: {out}");

    // The same through the HTTP API publisher (what peer servers also speak).
    let (ws, api) = (field(&line, "websocket"), field(&line, "api"));
    let (out, step) = fanout_step(
        &[
            "fanout",
            "--target",
            &ws,
            "--publish-via",
            "http",
            "--publish-addr",
            &api,
            "--subscribers",
            "100",
            "--rate",
            "50",
            "--duration-secs",
            "1",
        ],
        &out_dir,
    );
    assert!(step["publications"].as_u64().unwrap() >= 45, "{out}");
    assert_eq!(step["deliveries_received"], step["deliveries_expected"], "{out}");
    assert_eq!(step["passed"], true, "{out}");
    assert!(out.contains("load generator CPU"), "{out}");
}

/// The WebRocket dialect: subscribers authenticate and subscribe, the
/// publisher broadcasts as a client; every delivery counted.
#[test]
fn fanout_over_webrocket_counts_every_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let token = "bench-admin-token-0123456789";
    let config = format!(
        "[server]\nadmin_token = \"{token}\"\n[[vhost]]\npath = \"/world\"\ndialect = \"webrocket\"\n"
    );
    let (_server, line) = start_gateway(&config, 2, &dir);
    let api = format!("http://{}", field(&line, "api"));
    let ctl = Command::new(gateway_binary())
        .args(["ctl", "--api", &api, "--token", token, "user", "add", "/world", "bench"])
        .args(["--permissions", "READ,WRITE"])
        .output()
        .unwrap();
    assert!(ctl.status.success(), "{}", String::from_utf8_lossy(&ctl.stderr));
    let out_dir = dir.path().join("out");
    let out = bench(&[
        "fanout",
        "--protocol",
        "webrocket",
        "--target",
        &field(&line, "websocket"),
        "--subscribers",
        "200",
        "--topics",
        "4",
        "--rate",
        "200",
        "--duration-secs",
        "2",
        "--drain-ms",
        "500",
        "--p99-bound-ms",
        "1000",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("fanout.json")).unwrap()).unwrap();
    let step = &summary["steps"][0];
    let published = step["publications"].as_u64().unwrap();
    assert!((390..=400).contains(&published), "{out}");
    assert_eq!(step["deliveries_expected"].as_u64().unwrap(), published * 50, "{out}");
    assert_eq!(step["deliveries_received"], step["deliveries_expected"], "{out}");
    assert_eq!(step["out_of_order"], 0, "{out}");
}

#[test]
fn connect_ramp_reports_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, ws) = gateway("", &dir);
    let out_dir = dir.path().join("out");
    let out = bench(&[
        "connect",
        "--target",
        &ws,
        "--connections",
        "300",
        "--rate",
        "1000",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.contains("connected 300 failed 0"), "{out}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("connect.json")).unwrap()).unwrap();
    assert_eq!(summary["connected"], 300);
    assert!(out_dir.join("connect.hlog").exists() && out_dir.join("connect.svg").exists());
    // A gateway that is not there: every connection fails, and says why.
    let out = bench(&[
        "connect",
        "--target",
        "127.0.0.1:1",
        "--connections",
        "5",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.contains("connected 0 failed 5") && out.contains("first error: connect:"), "{out}");
}

#[test]
fn sendpath_measures_each_path_on_real_sockets() {
    let out = bench(&["sendpath", "--connections", "200", "--passes", "3", "--paths", "sendmsg,uring"]);
    let rows: Vec<&str> =
        out.lines().filter(|l| l.starts_with("| Sendmsg") || l.starts_with("| Uring")).collect();
    assert_eq!(rows.len(), 2, "{out}");
    for row in rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells[2], "600", "3 passes × 200 sends: {row}");
        // A number, not a measurement to judge: rusage is tick-granular on
        // some kernels, so 600 sends on a loaded machine can read 0.00.
        let cpu_per_send: f64 = cells[3].parse().unwrap();
        assert!(cpu_per_send.is_finite() && cpu_per_send >= 0.0, "{row}");
    }
    let uring = out.lines().find(|l| l.starts_with("| Uring")).unwrap();
    assert!(uring.ends_with("| 1.0 |"), "one io_uring_enter per pass of 200: {uring}");
}

/// The soak (docs/benchmarks.md) against a plain and a TLS gateway at once,
/// for two minutes (`RINGCAST_SOAK_MINUTES` to change): it fails if either
/// server's RSS grows after the warm-up, a descriptor is left over after the
/// churn, a steady subscriber is dropped, a publication to them is lost, or
/// no slow client was cut off.
#[test]
fn soak_plain_and_tls_gateways() {
    let minutes = std::env::var("RINGCAST_SOAK_MINUTES").unwrap_or_else(|_| "2".into());
    let (plain_dir, tls_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (table, ca) = tls_files(&tls_dir);
    // A small socket buffer, so a client that never reads meets its budget.
    let small = "[server]\nsend_buffer = 16384\n";
    let (plain, plain_line) = start_gateway(small, 1, &plain_dir);
    let (tls, tls_line) = start_gateway(&format!("{small}{table}"), 1, &tls_dir);
    let (json, svg) = (plain_dir.path().join("soak.json"), plain_dir.path().join("soak.svg"));
    let out = bench(&[
        "--tls-ca",
        &ca,
        "soak",
        "--target",
        &field(&plain_line, "websocket"),
        "--api",
        &field(&plain_line, "api"),
        "--tls-target",
        &field(&tls_line, "websocket"),
        "--tls-api",
        &field(&tls_line, "api"),
        "--server-pid",
        &plain.0.id().to_string(),
        "--server-pid",
        &tls.0.id().to_string(),
        "--minutes",
        &minutes,
        "--connections",
        "1000",
        "--churn-per-s",
        "20",
        "--publish-per-s",
        "100",
        "--slow-clients",
        "5",
        "--json",
        json.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    println!("{out}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["passed"], true, "{out}");
    assert!(report["churned"].as_u64().unwrap() > 0 && report["published"].as_u64().unwrap() > 0, "{out}");
    assert!(std::fs::read_to_string(&svg).unwrap().contains("RSS (MiB)"));
}
