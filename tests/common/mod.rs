//! Test harness: runs the real `ringcast` binary on random loopback ports and
//! talks to it with real clients (tungstenite, HTTP, raw goridge bytes).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub mod backend;
pub mod browser;
pub mod tls;

pub type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// Kills a child process when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Server {
    child: Child,
    pub ws: SocketAddr,
    pub api: SocketAddr,
    pub rpc: SocketAddr,
    pub log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts ringcast with `config` (TOML) and `shards` shards.
    pub fn start(config: &str, shards: usize) -> Server {
        Server::start_with(config, shards, &std::env::var("TEST_LOG").unwrap_or("info".into()), false)
    }

    /// Starts ringcast with log filter `log`; with `stall_log`, its stderr is
    /// no longer read once it listens (a log pipe that has stopped draining).
    pub fn start_with(config: &str, shards: usize, log: &str, stall_log: bool) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        Server::launch(config, shards, log, stall_log, &data, dir)
    }

    /// Starts ringcast with extra environment variables.
    pub fn start_env(config: &str, shards: usize, env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let log = std::env::var("TEST_LOG").unwrap_or("info".into());
        Server::launch_env(config, shards, &log, false, &data, dir, env)
    }

    /// Starts ringcast keeping its state store in `data` (to restart on it).
    pub fn start_on(config: &str, shards: usize, data: &std::path::Path) -> Server {
        let log = std::env::var("TEST_LOG").unwrap_or("info".into());
        Server::launch(config, shards, &log, false, data, tempfile::tempdir().unwrap())
    }

    fn launch(
        config: &str,
        shards: usize,
        log: &str,
        stall_log: bool,
        data: &std::path::Path,
        dir: tempfile::TempDir,
    ) -> Server {
        Server::launch_env(config, shards, log, stall_log, data, dir, &[])
    }

    fn launch_env(
        config: &str,
        shards: usize,
        log: &str,
        stall_log: bool,
        data: &std::path::Path,
        dir: tempfile::TempDir,
        env: &[(&str, &str)],
    ) -> Server {
        let path = dir.path().join("ringcast.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .arg("--config")
            .arg(&path)
            .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0", "--rpc-listen", "127.0.0.1:0"])
            .args(["--shards", &shards.to_string()])
            .arg("--data-dir")
            .arg(data)
            .env("RUST_LOG", log)
            .env_remove("RINGCAST_ADMIN_TOKEN")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ringcast");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("ringcast listening:") {
                    let _ = tx.send(line.clone());
                    if stall_log {
                        // Keep the pipe open, never read it again.
                        loop {
                            std::thread::park();
                        }
                    }
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("ringcast did not start; log:\n{}", log.lock().unwrap());
            }
        };
        let field = |name: &str| -> SocketAddr {
            let start = line.find(&format!("{name}=")).unwrap() + name.len() + 1;
            line[start..].split_whitespace().next().unwrap().parse().unwrap()
        };
        Server { ws: field("websocket"), api: field("api"), rpc: field("rpc"), child, log, _dir: dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (TERM, INT) through kill(1).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status().unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit; None if it is still running at the deadline.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn connect(&self, path: &str) -> Ws {
        self.connect_with(path, &[])
    }

    pub fn connect_with(&self, path: &str, headers: &[(&'static str, &str)]) -> Ws {
        try_connect(self.ws, path, headers).unwrap_or_else(|e| panic!("connect {path}: {e}"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.api, path)
    }

    /// `POST /publish` with JSON; returns (status, body).
    pub fn publish_json(&self, body: &str) -> (u16, String) {
        http_post(&self.url("/publish"), "application/json", body.as_bytes())
    }

    pub fn metric(&self, name: &str) -> u64 {
        let text = http_get(&self.url("/metrics")).1;
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var("TEST_LOG").is_ok() {
            eprintln!("--- server log ---\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn try_connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&'static str, &str)],
) -> Result<Ws, tungstenite::Error> {
    connect_over(TcpStream::connect(addr)?, addr, path, headers)
}

/// A TCP connection to `addr` from the loopback address `source`
/// (127.0.0.x): another client address for the per-address limits.
pub fn tcp_from(source: std::net::Ipv4Addr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect(&addr.into())?;
    Ok(socket.into())
}

/// `try_connect` from the loopback address `source`.
pub fn try_connect_from(
    source: std::net::Ipv4Addr,
    addr: SocketAddr,
    path: &str,
    headers: &[(&'static str, &str)],
) -> Result<Ws, tungstenite::Error> {
    connect_over(tcp_from(source, addr)?, addr, path, headers)
}

/// The status and body of a refused upgrade; panics if it was accepted.
pub fn refusal_of(attempt: Result<Ws, tungstenite::Error>) -> (u16, String) {
    match attempt {
        Ok(_) => panic!("upgraded, a refusal expected"),
        Err(tungstenite::Error::Http(r)) => {
            let body = r.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            (r.status().as_u16(), body)
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
    }
}

/// Waits for the Close frame; returns its code and reason (0 and "" for a
/// Close without a code).
pub fn close_of<S: Read + Write>(ws: &mut WebSocket<S>) -> (u16, String) {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string()),
            Ok(Message::Close(None)) => return (0, String::new()),
            Ok(_) => continue,
            Err(e) => panic!("expected a Close frame, got {e}"),
        }
    }
}

fn connect_over(
    stream: TcpStream,
    addr: SocketAddr,
    path: &str,
    headers: &[(&'static str, &str)],
) -> Result<Ws, tungstenite::Error> {
    let mut req = format!("ws://{addr}{path}").into_client_request()?;
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().unwrap());
    }
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    match tungstenite::client(req, MaybeTlsStream::Plain(stream)) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
        Err(tungstenite::HandshakeError::Interrupted(_)) => panic!("blocking handshake interrupted"),
    }
}

/// The next text message (answering pings on the way); panics on timeout.
pub fn recv_text<S: Read + Write>(ws: &mut WebSocket<S>) -> String {
    loop {
        match ws.read().expect("read a message") {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// Asserts nothing arrives within `wait`.
pub fn assert_silent(ws: &mut Ws, wait: Duration) {
    set_timeout(ws, wait);
    match ws.read() {
        Err(tungstenite::Error::Io(e))
            if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
        other => panic!("expected silence, got {other:?}"),
    }
    set_timeout(ws, Duration::from_secs(5));
}

pub fn set_timeout(ws: &mut Ws, t: Duration) {
    if let MaybeTlsStream::Plain(s) = ws.get_mut() {
        s.set_read_timeout(Some(t)).unwrap();
    }
}

pub fn send_text<S: Read + Write>(ws: &mut WebSocket<S>, text: &str) {
    ws.send(Message::text(text)).unwrap();
}

/// Joins `topics` and asserts the `@join` reply.
pub fn join<S: Read + Write>(ws: &mut WebSocket<S>, topics: &[&str]) {
    let cmd = serde_json::json!({"command": "join", "topics": topics}).to_string();
    send_text(ws, &cmd);
    let reply = recv_text(ws);
    let list = serde_json::to_string(topics).unwrap();
    assert_eq!(reply, format!(r#"{{"topic":"@join","payload":{list}}}"#));
}

pub fn http_get(url: &str) -> (u16, String) {
    match ureq::get(url).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

pub fn http_post(url: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    match ureq::post(url).set("Content-Type", content_type).send_bytes(body) {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("POST {url}: {e}"),
    }
}

/// An admin API call (`/admin/…`) with `token` as the bearer: (status, the
/// JSON answer, or the text as a JSON string when it is not JSON).
pub fn admin_call(
    s: &Server,
    token: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let req = ureq::request(method, &s.url(path)).set("Authorization", &format!("Bearer {token}"));
    let result = match body {
        Some(b) => req.send_string(&b.to_string()),
        None => req.call(),
    };
    let (status, text) = match result {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("{method} {path}: {e}"),
    };
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

/// Sends raw bytes and returns everything the server sends until it closes
/// or `wait` passes.
pub fn raw_exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// `n` raw TCP clients that have sent an upgrade request for `path` and
/// never read: the server answers into their buffers.
pub fn raw_upgrades(addr: SocketAddr, path: &str, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(upgrade_request(path).as_bytes()).unwrap();
            c
        })
        .collect()
}

/// A minimal valid upgrade request for `path`.
pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// A `/proc/PID/status` field in KiB (VmData, VmHWM, RssAnon, ...).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.split(':').next() == Some(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Connects until every one of `shards` shards holds a connection (the
/// kernel spreads connections by hash, so a fixed count could land on one);
/// `connect(i)` opens the i-th. At most 200.
pub fn connect_until_spread<T>(s: &Server, shards: usize, mut connect: impl FnMut(usize) -> T) -> Vec<T> {
    let mut held = Vec::new();
    for i in 0..200 {
        held.push(connect(i));
        let text = http_get(&s.url("/metrics")).1;
        let busy =
            text.lines().filter(|l| l.starts_with("ringcast_connections{") && !l.ends_with(" 0")).count();
        if busy == shards {
            return held;
        }
    }
    panic!("200 connections did not reach all {shards} shards");
}

/// Polls `f` until it returns true or `within` passes.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Config with one roadrunner vhost at /ws plus `extra` TOML.
pub fn roadrunner_config(extra: &str) -> String {
    format!("{extra}\n[[vhost]]\npath = \"/ws\"\ndialect = \"roadrunner\"\n")
}

/// Sends `head` then one byte of `tail` every 100 ms until the server closes
/// the connection; returns how long after the first byte it closed and what
/// it answered. Panics if the server is still there after 10 s.
pub fn slowloris(addr: std::net::SocketAddr, head: &[u8], tail: &[u8]) -> (std::time::Duration, String) {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let started = Instant::now();
    c.write_all(head).unwrap();
    let mut answer = Vec::new();
    let mut drip = tail.iter().cycle();
    while started.elapsed() < Duration::from_secs(10) {
        let mut buf = [0u8; 1024];
        match c.read(&mut buf) {
            Ok(0) => return (started.elapsed(), String::from_utf8_lossy(&answer).into()),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return (started.elapsed(), String::from_utf8_lossy(&answer).into()),
        }
        if c.write_all(&[*drip.next().unwrap()]).is_err() {
            return (started.elapsed(), String::from_utf8_lossy(&answer).into());
        }
    }
    panic!("still connected after 10 s; answer so far: {}", String::from_utf8_lossy(&answer));
}

/// Handshakes and joins on a raw socket, then never reads again.
pub fn stalled_subscriber(s: &Server, topic: &str) -> TcpStream {
    let mut c = TcpStream::connect(s.ws).unwrap();
    // Keep the client's receive buffer small so the server feels it.
    let sock = socket2::SockRef::from(&c);
    sock.set_recv_buffer_size(4096).unwrap();
    c.write_all(upgrade_request("/ws").as_bytes()).unwrap();
    let mut head = [0u8; 129];
    c.read_exact(&mut head).unwrap();
    assert!(head.starts_with(b"HTTP/1.1 101"));
    let cmd = format!(r#"{{"command":"join","topics":["{topic}"]}}"#);
    c.write_all(&masked_text(cmd.as_bytes())).unwrap();
    c
}

pub fn masked_text(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}
