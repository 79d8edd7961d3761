//! The generator's Nchan and NATS adapters against the real servers (Debian
//! `nginx-light` + `libnginx-mod-nchan`, `nats-server`; `scripts/test.sh`
//! installs them): every delivery counted, with each publisher they take.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BENCH: &str = env!("CARGO_BIN_EXE_ringcast-bench");

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // nginx's master stops its worker on SIGTERM; SIGKILL would orphan it.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn peer_config(name: &str, dir: &Path, ports: &[(&str, u16)]) -> PathBuf {
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers").join(name);
    let mut text = std::fs::read_to_string(&template).unwrap();
    text = text.replace("@DIR@", dir.to_str().unwrap());
    for (key, port) in ports {
        text = text.replace(key, &port.to_string());
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn require(binary: &str, package: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(binary);
        if p.exists() {
            return p;
        }
    }
    panic!("{binary} is missing: apt-get install {package} (scripts/test.sh does)");
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a short fanout and returns its first step from fanout.json.
fn fanout(args: &[&str], out: &Path) -> serde_json::Value {
    let mut all = vec![
        "fanout",
        "--subscribers",
        "200",
        "--topics",
        "2",
        "--rate",
        "100",
        "--duration-secs",
        "2",
        "--drain-ms",
        "500",
        "--p99-bound-ms",
        "1000",
        "--threads",
        "2",
        "--out",
        out.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let run = Command::new(BENCH).args(&all).output().unwrap();
    let text = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(run.status.success(), "{all:?}: {text}\n{}", String::from_utf8_lossy(&run.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("fanout.json")).unwrap()).unwrap();
    let step = summary["steps"][0].clone();
    // 2 s at 100/s over 2 topics of 100 subscribers each.
    let published = step["publications"].as_u64().unwrap();
    assert!((195..=200).contains(&published), "{text}");
    assert_eq!(step["deliveries_expected"].as_u64().unwrap(), published * 100, "{text}");
    assert_eq!(step["deliveries_received"], step["deliveries_expected"], "{text}");
    assert_eq!(step["out_of_order"], 0, "{text}");
    assert_eq!(step["passed"], true, "{text}");
    step
}

#[test]
fn nchan_subscribers_get_every_message_over_http_and_websocket_publishers() {
    let nginx = require("nginx", "nginx-light libnginx-mod-nchan");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = peer_config("nchan.conf", dir.path(), &[("@PORT@", port)]);
    let server = Killed(
        Command::new(nginx)
            .args(["-c", conf.to_str().unwrap(), "-p", dir.path().to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(port);
    let target = format!("127.0.0.1:{port}");
    let out = dir.path().join("out");
    fanout(&["--protocol", "nchan", "--target", &target], &out);
    fanout(&["--protocol", "nchan", "--target", &target, "--publish-via", "ws"], &out);
    // hold reads the nginx worker's memory.
    let pgrep = Command::new("pgrep").args(["-P", &server.0.id().to_string()]).output().unwrap();
    let worker = String::from_utf8_lossy(&pgrep.stdout)
        .split_whitespace()
        .next()
        .expect("an nginx worker")
        .to_string();
    let run = Command::new(BENCH)
        .args(["hold", "--protocol", "nchan", "--target", &target, "--connections", "100"])
        .args(["--server-pid", &worker])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success() && text.contains("bytes per connection"), "{text}");
}

#[test]
fn nats_websocket_subscribers_get_every_message_over_tcp_and_websocket_publishers() {
    let nats = require("nats-server", "nats-server");
    let dir = tempfile::tempdir().unwrap();
    let (port, ws_port) = (free_port(), free_port());
    let conf = peer_config("nats.conf", dir.path(), &[("@WS_PORT@", ws_port), ("@PORT@", port)]);
    let _server = Killed(
        Command::new(nats)
            .args(["-c", conf.to_str().unwrap()])
            .env("GOMAXPROCS", "1")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(port);
    wait_for_port(ws_port);
    let target = format!("127.0.0.1:{ws_port}");
    let tcp = format!("127.0.0.1:{port}");
    let out = dir.path().join("out");
    fanout(&["--protocol", "nats", "--target", &target, "--publish-addr", &tcp], &out);
    fanout(&["--protocol", "nats", "--target", &target, "--publish-via", "ws"], &out);
    // A publisher the protocol does not have is refused with the reason.
    let run = Command::new(BENCH)
        .args(["fanout", "--protocol", "nats", "--target", &target, "--publish-via", "rpc"])
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("cannot be published to via rpc"));
}
