//! Many nodes as one over real Redis and real NATS servers, started on
//! random loopback ports and stopped by PID (scripts/test.sh installs
//! redis-server and nats-server when missing).

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::backend::{Answer, Backend};
use common::*;
use prost::Message as _;
use ringcast::broker::envelope::{self, Body, Publication, Received, Replicate};
use ringcast::broker::seal::Sealer;

/// A free port below the ephemeral range: a client reconnecting in a loop
/// to a dead broker's ephemeral-range port can end up connected to itself
/// (TCP simultaneous open) and keep the restarted broker from binding it.
fn broker_port() -> u16 {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mut n =
        now ^ (std::process::id() as u64) << 32 ^ CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    loop {
        n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let port = 20_000 + (n >> 33) as u16 % 12_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn wait_port(port: u16) {
    assert!(
        eventually(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "nothing listens on {port}"
    );
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Redis,
    Nats,
}

/// A broker server on a fixed port (so it can be restarted on it).
struct BrokerServer {
    kind: Kind,
    port: u16,
    monitor: u16,
    proc: Option<Killed>,
}

impl BrokerServer {
    fn start(kind: Kind) -> BrokerServer {
        let mut b = BrokerServer { kind, port: broker_port(), monitor: broker_port(), proc: None };
        b.restart();
        b
    }

    fn restart(&mut self) {
        let port = self.port.to_string();
        let child = match self.kind {
            Kind::Redis => Command::new("redis-server")
                .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server (scripts/test.sh installs it)"),
            Kind::Nats => Command::new("nats-server")
                .args(["-a", "127.0.0.1", "-p", &port, "-m", &self.monitor.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server (scripts/test.sh installs it)"),
        };
        self.proc = Some(Killed(child));
        wait_port(self.port);
    }

    /// `kill -9`.
    fn kill(&mut self) {
        let p = self.proc.take().expect("running");
        let pid = p.0.id().to_string();
        assert!(Command::new("kill").args(["-9", &pid]).status().unwrap().success());
        drop(p);
    }

    fn config(&self) -> String {
        format!("{}[cluster]\nsecret = \"{SECRET}\"\n", self.config_without_secret())
    }

    fn config_without_secret(&self) -> String {
        match self.kind {
            Kind::Redis => {
                format!("broker = \"redis\"\n[redis]\nurl = \"redis://127.0.0.1:{}\"\n", self.port)
            }
            Kind::Nats => format!("broker = \"nats\"\n[nats]\nurl = \"nats://127.0.0.1:{}\"\n", self.port),
        }
    }

    /// The broker subject of a topic, as nodes name it.
    fn topic_subject(&self, topic: &str) -> String {
        use base64::Engine;
        match self.kind {
            Kind::Redis => format!("ringcast:{topic}"),
            Kind::Nats => {
                format!("ringcast.t.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(topic))
            }
        }
    }

    fn control_subject(&self) -> String {
        match self.kind {
            Kind::Redis => "ringcast:control".into(),
            Kind::Nats => "ringcast.control".into(),
        }
    }

    /// Publishes raw bytes on the broker, as anyone who can reach it can.
    fn inject(&self, subject: &str, payload: &[u8]) {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = Vec::new();
        match self.kind {
            Kind::Redis => {
                out.extend_from_slice(
                    format!("*3\r\n$7\r\nPUBLISH\r\n${}\r\n{subject}\r\n", subject.len()).as_bytes(),
                );
                out.extend_from_slice(format!("${}\r\n", payload.len()).as_bytes());
                out.extend_from_slice(payload);
                out.extend_from_slice(b"\r\n");
            }
            Kind::Nats => {
                out.extend_from_slice(b"CONNECT {\"verbose\":false}\r\n");
                out.extend_from_slice(format!("PUB {subject} {}\r\n", payload.len()).as_bytes());
                out.extend_from_slice(payload);
                out.extend_from_slice(b"\r\nPING\r\n");
            }
        }
        c.write_all(&out).unwrap();
        // Redis answers the PUBLISH, NATS the PING: the message was taken.
        let mut answer = [0u8; 256];
        let mut seen = Vec::new();
        while !seen.ends_with(b"\r\n")
            || (self.kind == Kind::Nats && !String::from_utf8_lossy(&seen).contains("PONG"))
        {
            let n = c.read(&mut answer).unwrap();
            assert!(n > 0, "the broker closed");
            seen.extend_from_slice(&answer[..n]);
        }
    }

    /// A raw subscriber to `subject`: what nodes send there, as an
    /// eavesdropper on the broker sees it.
    fn spy(&self, subject: &str) -> Spy {
        use std::io::Write;
        let mut c = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let request = match self.kind {
            Kind::Redis => format!("*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{subject}\r\n", subject.len()),
            Kind::Nats => format!("CONNECT {{\"verbose\":false}}\r\nSUB {subject} 1\r\nPING\r\n"),
        };
        c.write_all(request.as_bytes()).unwrap();
        let mut spy = Spy { kind: self.kind, reader: std::io::BufReader::new(c) };
        // The subscription is confirmed (Redis: the subscribe reply; NATS: PONG).
        match self.kind {
            Kind::Redis => {
                spy.resp();
            }
            Kind::Nats => while spy.line() != "PONG" {},
        }
        spy
    }

    /// Subscribers the broker has for this node-independent topic name
    /// (Redis: PUBSUB NUMSUB; NATS: its monitoring endpoint, all subjects).
    fn interest(&self, topic: &str) -> u64 {
        match self.kind {
            Kind::Redis => {
                let out = Command::new("redis-cli")
                    .args(["-p", &self.port.to_string(), "PUBSUB", "NUMSUB", &format!("ringcast:{topic}")])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                text.lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or(0)
            }
            Kind::Nats => {
                use base64::Engine;
                let subject =
                    format!("ringcast.t.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(topic));
                let url = format!("http://127.0.0.1:{}/subsz?subs=1", self.monitor);
                let text = http_get(&url).1;
                text.matches(&format!("\"subject\": \"{subject}\"")).count() as u64
            }
        }
    }
}

/// Shared by the test nodes (`[cluster] secret`).
const SECRET: &str = "test-cluster-secret-0123456789abcdef";

struct Spy {
    kind: Kind,
    reader: std::io::BufReader<std::net::TcpStream>,
}

/// A RESP value, as far as these tests read them.
enum Resp {
    Bulk(Vec<u8>),
    Int,
    Array(Vec<Resp>),
}

impl Spy {
    fn line(&mut self) -> String {
        use std::io::BufRead;
        let mut l = String::new();
        self.reader.read_line(&mut l).unwrap();
        assert!(!l.is_empty(), "the broker closed the spy");
        l.trim_end().to_string()
    }

    fn exact(&mut self, n: usize) -> Vec<u8> {
        use std::io::Read;
        let mut b = vec![0u8; n + 2];
        self.reader.read_exact(&mut b).unwrap();
        b.truncate(n);
        b
    }

    fn resp(&mut self) -> Resp {
        let l = self.line();
        match l.as_bytes()[0] {
            b'*' => Resp::Array((0..l[1..].parse::<usize>().unwrap()).map(|_| self.resp()).collect()),
            b'$' => Resp::Bulk(self.exact(l[1..].parse().unwrap())),
            b':' => Resp::Int,
            _ => panic!("unexpected RESP {l}"),
        }
    }

    /// The next message's payload, within `within` (None after it).
    fn next(&mut self, within: Duration) -> Option<Vec<u8>> {
        self.reader.get_ref().set_read_timeout(Some(within)).unwrap();
        loop {
            use std::io::BufRead;
            match self.reader.fill_buf() {
                Ok(b) if !b.is_empty() => {}
                _ => return None,
            }
            match self.kind {
                Kind::Redis => {
                    if let Resp::Array(mut parts) = self.resp() {
                        if let Some(Resp::Bulk(payload)) = parts.pop() {
                            return Some(payload);
                        }
                    }
                }
                Kind::Nats => {
                    let l = self.line();
                    if let Some(head) = l.strip_prefix("MSG ") {
                        let len = head.rsplit(' ').next().unwrap().parse().unwrap();
                        return Some(self.exact(len));
                    }
                }
            }
        }
    }

    /// The next envelope accepted by `pick`, opened with the test secret.
    fn envelope<T>(&mut self, mut pick: impl FnMut(&Received) -> Option<T>) -> (Vec<u8>, T) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let Some(raw) = self.next(Duration::from_secs(1)) else { continue };
            let (inner, _) = Sealer::new(Some(SECRET.as_bytes())).open(raw.clone().into()).expect("signed");
            let r = envelope::decode(inner).expect("an envelope");
            if let Some(t) = pick(&r) {
                return (raw, t);
            }
        }
        panic!("no such envelope within 10 s");
    }
}

fn node(broker: &BrokerServer, extra: &str) -> Server {
    Server::start(
        &format!("{}{extra}\n[[vhost]]\npath = \"/ws\"\ndialect = \"roadrunner\"\n", broker.config()),
        2,
    )
}

/// A node connects to its broker in the background after it starts.
fn connected(nodes: &[&Server]) {
    for n in nodes {
        assert!(
            eventually(Duration::from_secs(10), || http_get(&n.url("/health")).0 == 200),
            "never healthy"
        );
    }
}

fn publish(s: &Server, topic: &str, payload: &str) -> (u16, String) {
    s.publish_json(&serde_json::json!({ "topics": [topic], "payload": payload }).to_string())
}

/// `broadcast.Publish` over goridge RPC (RoadRunner's PHP path); true on
/// a success reply.
fn publish_rpc(s: &Server, topic: &str, payload: &str) -> bool {
    use prost::Message as _;
    use ringcast::rpc::{frame, proto::broadcast};
    use std::io::{Read, Write};
    let body = broadcast::Request {
        messages: vec![broadcast::Message {
            command: String::new(),
            topics: vec![topic.into()],
            payload: payload.into(),
        }],
    }
    .encode_to_vec();
    let method = b"broadcast.Publish";
    let mut out = Vec::new();
    frame::encode(&mut out, frame::CODEC_PROTO, &[1, method.len() as u32], &[method, &body]);
    let mut c = std::net::TcpStream::connect(s.rpc).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(&out).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Ok(Some((f, _))) = frame::decode(&buf, 1 << 20) {
            return f.flags & frame::ERROR == 0;
        }
        let n = c.read(&mut chunk).unwrap();
        assert!(n > 0, "the RPC connection closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn delivery(topic: &str, payload: &str) -> String {
    format!(r#"{{"topic":"{topic}","payload":"{payload}"}}"#)
}

fn three_nodes_each_publication_reaches_every_subscriber_once(kind: Kind) {
    let broker = BrokerServer::start(kind);
    let nodes: Vec<Server> = (0..3).map(|_| node(&broker, "")).collect();
    connected(&nodes.iter().collect::<Vec<_>>());
    // Two subscribers on each node (likely on both shards).
    let mut subs: Vec<Ws> = Vec::new();
    for n in &nodes {
        for _ in 0..2 {
            let mut ws = n.connect("/ws");
            join(&mut ws, &["news"]);
            subs.push(ws);
        }
    }
    assert!(eventually(Duration::from_secs(5), || broker.interest("news") == 3), "one subscription per node");
    for i in 0..100 {
        let (status, body) = publish(&nodes[i % 3], "news", &format!("m{i}"));
        assert_eq!(status, 200, "{body}");
    }
    // Every subscriber: all 100, once, in order per publisher (node).
    for ws in subs.iter_mut() {
        let mut got: Vec<String> = (0..100).map(|_| recv_text(ws)).collect();
        for origin in 0..3 {
            let from: Vec<&String> = got
                .iter()
                .filter(|m| (0..100).any(|i| i % 3 == origin && **m == delivery("news", &format!("m{i}"))))
                .collect();
            let want: Vec<String> =
                (0..100).filter(|i| i % 3 == origin).map(|i| delivery("news", &format!("m{i}"))).collect();
            assert_eq!(
                from.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                want,
                "in order from node {origin}"
            );
        }
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 100);
        assert_silent(ws, Duration::from_millis(200));
    }
    // goridge RPC publishes go through the broker too.
    assert!(publish_rpc(&nodes[1], "news", "by rpc"));
    for ws in subs.iter_mut() {
        assert_eq!(recv_text(ws), delivery("news", "by rpc"));
    }
    for n in &nodes {
        assert_eq!(n.metric("ringcast_broker_gaps_total"), 0);
    }
    // The last subscriber on a node leaving drops its broker subscription
    // within a second; the other nodes keep theirs.
    drop(subs.drain(0..2));
    assert!(eventually(Duration::from_secs(3), || broker.interest("news") == 2), "node 0 unsubscribed");
    let (status, _) = publish(&nodes[0], "news", "after");
    assert_eq!(status, 200);
    for ws in subs.iter_mut() {
        assert_eq!(recv_text(ws), delivery("news", "after"));
    }
}

#[test]
fn redis_three_nodes_each_publication_reaches_every_subscriber_once() {
    three_nodes_each_publication_reaches_every_subscriber_once(Kind::Redis);
}

#[test]
fn nats_three_nodes_each_publication_reaches_every_subscriber_once() {
    three_nodes_each_publication_reaches_every_subscriber_once(Kind::Nats);
}

fn pushes_reach_a_client_on_another_node(kind: Kind) {
    let broker = BrokerServer::start(kind);
    let backend =
        Backend::start(|s| if s.method == "GET" { Answer::new(200, "ok") } else { Answer::new(200, "") });
    let proxy = format!("[[vhost]]\npath = \"/c/\"\ndialect = \"proxy\"\nbackend = \"{}\"\n", backend.url());
    let a = Server::start(&format!("{}{proxy}", broker.config()), 2);
    let b = Server::start(&format!("{}{proxy}", broker.config()), 2);
    connected(&[&a, &b]);
    let mut client = b.connect("/c/alice");
    // Subscribed on the broker once the client registered on node B.
    let pushed =
        eventually(Duration::from_secs(5), || http_post(&a.url("/alice"), "text/plain", b"hi").0 == 200);
    assert!(pushed, "a push on node A reaches alice on node B");
    assert_eq!(recv_text(&mut client), "hi");
    let started = Instant::now();
    assert_eq!(http_post(&a.url("/nobody"), "text/plain", b"x").0, 404);
    assert!(started.elapsed() < Duration::from_secs(2), "404 at once when no node has it");
    drop(client);
    assert!(eventually(Duration::from_secs(5), || http_post(&a.url("/alice"), "text/plain", b"x").0 == 404));
}

#[test]
fn redis_pushes_reach_a_client_on_another_node() {
    pushes_reach_a_client_on_another_node(Kind::Redis);
}

#[test]
fn nats_pushes_reach_a_client_on_another_node() {
    pushes_reach_a_client_on_another_node(Kind::Nats);
}

fn a_broker_outage_is_an_error_to_publishers_and_recovers(kind: Kind) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let mut broker = BrokerServer::start(kind);
    let a = node(&broker, "");
    let b = node(&broker, "");
    connected(&[&a, &b]);
    let mut sub = b.connect("/ws");
    join(&mut sub, &["t"]);
    assert_eq!(publish(&a, "t", "before").0, 200);
    assert_eq!(recv_text(&mut sub), delivery("t", "before"));

    // A publisher streams on node A the whole time: the broker is killed
    // mid-stream and restarted on the same port.
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::<(usize, bool)>::new()));
    let api = a.url("/publish");
    let streamer = std::thread::spawn({
        let (stop, outcomes) = (stop.clone(), outcomes.clone());
        move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let body = format!(r#"{{"topics":["t"],"payload":"s{i}"}}"#);
                let started = Instant::now();
                let status = match ureq::post(&api).set("Content-Type", "application/json").send_string(&body)
                {
                    Ok(r) => r.status(),
                    Err(ureq::Error::Status(code, _)) => code,
                    Err(e) => panic!("publish: {e}"),
                };
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "a publish hung for {:?}",
                    started.elapsed()
                );
                assert!(status == 200 || status == 503, "status {status}");
                outcomes.lock().unwrap().push((i, status == 200));
                i += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });
    let oks = |o: &Mutex<Vec<(usize, bool)>>| o.lock().unwrap().iter().filter(|(_, ok)| *ok).count();
    assert!(eventually(Duration::from_secs(5), || oks(&outcomes) >= 50));
    broker.kill();
    // Errors, within a few seconds; /health says degraded; local
    // connections stay, and a join still succeeds locally.
    let failed = |o: &Mutex<Vec<(usize, bool)>>| o.lock().unwrap().iter().filter(|(_, ok)| !*ok).count();
    assert!(eventually(Duration::from_secs(10), || failed(&outcomes) >= 20), "publishers get errors");
    let (status, health) = http_get(&a.url("/health"));
    assert_eq!(status, 503, "{health}");
    assert!(
        health.contains("\"degraded\"") && health.contains(&format!("{kind:?}").to_lowercase()),
        "{health}"
    );
    let mut late = b.connect("/ws");
    join(&mut late, &["later"]);

    broker.restart();
    assert!(eventually(Duration::from_secs(15), || {
        http_get(&a.url("/health")).0 == 200 && http_get(&b.url("/health")).0 == 200
    }));
    let ok_at_recovery = oks(&outcomes);
    assert!(
        eventually(Duration::from_secs(10), || oks(&outcomes) >= ok_at_recovery + 50),
        "publishing resumed"
    );
    stop.store(true, Ordering::Relaxed);
    streamer.join().unwrap();
    assert_eq!(publish(&a, "t", "after").0, 200);

    // What the subscriber got: no duplicates; every publish answered 200
    // arrived, or its loss is counted as a gap; failed ones at most once.
    let mut got = Vec::new();
    loop {
        let m = recv_text(&mut sub);
        if m == delivery("t", "after") {
            break;
        }
        got.push(m);
    }
    let mut unique = got.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), got.len(), "no duplicates");
    let record = outcomes.lock().unwrap().clone();
    let missing_ok =
        record.iter().filter(|(i, ok)| *ok && !got.contains(&delivery("t", &format!("s{i}")))).count() as u64;
    let gaps = b.metric("ringcast_broker_gaps_total");
    assert!(missing_ok <= gaps, "{missing_ok} acknowledged publications missing, {gaps} gaps counted");
    // In order, as published.
    let order: Vec<usize> =
        got.iter().map(|m| m.split("\"s").nth(1).unwrap().trim_end_matches("\"}").parse().unwrap()).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in order");
    // The join made during the outage was subscribed on reconnect.
    assert!(eventually(Duration::from_secs(10), || {
        assert_eq!(publish(&a, "later", "probe").0, 200);
        set_timeout(&mut late, Duration::from_millis(300));
        matches!(late.read(), Ok(tungstenite::Message::Text(t)) if t.as_str() == delivery("later", "probe"))
    }));
    assert!(a.metric("ringcast_broker_reconnects_total") >= 1);
    assert!(a.metric("ringcast_broker_publish_errors_total") >= 20);
}

#[test]
fn redis_outage_is_an_error_to_publishers_and_recovers() {
    a_broker_outage_is_an_error_to_publishers_and_recovers(Kind::Redis);
}

#[test]
fn nats_outage_is_an_error_to_publishers_and_recovers() {
    a_broker_outage_is_an_error_to_publishers_and_recovers(Kind::Nats);
}

fn a_node_starts_before_its_broker(kind: Kind) {
    let mut broker = BrokerServer { kind, port: broker_port(), monitor: broker_port(), proc: None };
    let a = node(&broker, "");
    let (status, health) = http_get(&a.url("/health"));
    assert_eq!(status, 503);
    assert!(health.contains("degraded"), "{health}");
    let mut sub = a.connect("/ws");
    join(&mut sub, &["early"]);
    assert_eq!(publish(&a, "early", "x").0, 503);
    broker.restart();
    assert!(eventually(Duration::from_secs(15), || http_get(&a.url("/health")).0 == 200));
    assert!(eventually(Duration::from_secs(10), || broker.interest("early") == 1));
    assert_eq!(publish(&a, "early", "y").0, 200);
    assert_eq!(recv_text(&mut sub), delivery("early", "y"));
}

#[test]
fn redis_node_starts_before_its_broker() {
    a_node_starts_before_its_broker(Kind::Redis);
}

#[test]
fn nats_node_starts_before_its_broker() {
    a_node_starts_before_its_broker(Kind::Nats);
}

const TOKEN: &str = "cluster-admin-token-0123456789";

fn admin(s: &Server, method: &str, path: &str, body: Option<serde_json::Value>) -> (u16, serde_json::Value) {
    admin_call(s, TOKEN, method, path, body)
}

fn ask(ws: &mut Ws, message: &str) -> String {
    send_text(ws, message);
    recv_text(ws)
}

fn webrocket_flows_are_cluster_wide(kind: Kind) {
    let broker = BrokerServer::start(kind);
    let config = format!(
        "{}[server]\nadmin_token = \"{TOKEN}\"\n[[vhost]]\npath = \"/world\"\ndialect = \"webrocket\"\nanonymous = [\"READ\", \"WRITE\"]\n",
        broker.config()
    );
    let a = Server::start(&config, 2);
    let b = Server::start(&config, 2);
    connected(&[&a, &b]);
    // An admin change on A reaches B.
    let joe =
        serde_json::json!({ "vhost": "/world", "name": "joe", "permissions": ["READ", "WRITE", "MANAGE"] });
    assert_eq!(admin(&a, "POST", "/admin/users", Some(joe)).0, 201);
    assert!(eventually(Duration::from_secs(5), || admin(&b, "GET", "/admin/users?vhost=/world", None).1[0]
        ["name"]
        == "joe"));
    // A channel made by a subscribe on B exists on A; A's broadcast reaches B.
    let mut on_b = b.connect("/world");
    assert_eq!(ask(&mut on_b, r#"{"subscribe":{"channel":"room"}}"#), r#"{"subscribed":"room"}"#);
    let mut on_a = a.connect("/world");
    assert!(eventually(Duration::from_secs(5), || {
        ask(&mut on_a, r#"{"broadcast":{"event":"hi","channel":"room","data":[1]}}"#)
            == r#"{"broadcasted":"room"}"#
    }));
    assert_eq!(recv_text(&mut on_b), r#"{"hi":{"channel":"room","data":[1]}}"#);
    // Presence and channel counts on A see B's subscriber.
    assert_eq!(ask(&mut on_a, r#"{"authenticate":{"user":"joe"}}"#), r#"{"authenticated":"joe"}"#);
    assert!(eventually(Duration::from_secs(5), || {
        ask(&mut on_a, r#"{"presence":{"channel":"room"}}"#)
            == r#"{"presence":{"channel":"room","count":1,"users":[]}}"#
    }));
    let (_, channels) = admin(&a, "GET", "/admin/channels?vhost=/world", None);
    assert_eq!(channels, serde_json::json!([{ "name": "room", "subscribers": 1 }]));
    // A worker on B only: a trigger on A reaches it, its reply reaches A's session.
    let token = admin(&b, "GET", "/admin/token?vhost=/world", None).1["token"].as_str().unwrap().to_string();
    let bearer = format!("Bearer {token}");
    let mut worker =
        try_connect(b.api, "/workers/world", &[("Authorization", &bearer)]).expect("worker on B");
    assert!(eventually(Duration::from_secs(5), || {
        ask(&mut on_a, r#"{"trigger":{"event":"job","data":7}}"#) == r#"{"triggered":"job"}"#
    }));
    let trigger: serde_json::Value = serde_json::from_str(&recv_text(&mut worker)).unwrap();
    assert_eq!(trigger["trigger"]["user"], "joe");
    let sid = trigger["trigger"]["sid"].as_str().unwrap();
    send_text(
        &mut worker,
        &serde_json::json!({ "reply": { "sid": sid, "event": "done", "data": 8 } }).to_string(),
    );
    assert_eq!(recv_text(&mut on_a), r#"{"done":8}"#);
    drop(on_a);
    send_text(
        &mut worker,
        &serde_json::json!({ "reply": { "sid": sid, "event": "done", "data": 9 } }).to_string(),
    );
    let err: serde_json::Value = serde_json::from_str(&recv_text(&mut worker)).unwrap();
    assert_eq!(err["err"], "SESSION_NOT_FOUND");
    // B's worker broadcasts to a channel only A has (made by a subscribe there).
    let mut hall = a.connect("/world");
    assert_eq!(ask(&mut hall, r#"{"subscribe":{"channel":"hall"}}"#), r#"{"subscribed":"hall"}"#);
    send_text(&mut worker, r#"{"broadcast":{"channel":"hall","event":"news","data":3}}"#);
    assert_eq!(recv_text(&mut hall), r#"{"news":{"channel":"hall","data":3}}"#);
    drop(hall);
    // The channel lived with B's subscriber: once it left, no node has it.
    drop(on_b);
    let mut on_a = a.connect("/world");
    assert!(eventually(Duration::from_secs(5), || {
        ask(&mut on_a, r#"{"broadcast":{"event":"hi","channel":"room","data":[2]}}"#)
            .contains("CHANNEL_NOT_FOUND")
    }));
    assert_eq!(admin(&a, "GET", "/admin/channels?vhost=/world", None).1, serde_json::json!([]));
    assert_eq!(admin(&b, "GET", "/admin/channels?vhost=/world", None).1, serde_json::json!([]));
}

#[test]
fn redis_webrocket_flows_are_cluster_wide() {
    webrocket_flows_are_cluster_wide(Kind::Redis);
}

#[test]
fn nats_webrocket_flows_are_cluster_wide() {
    webrocket_flows_are_cluster_wide(Kind::Nats);
}

/// Stops nginx gracefully: SIGKILL to the master would leave its workers.
struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

/// The shipped nginx config (config/nginx-cluster.conf) in front of three
/// nodes: clients through nginx land on different nodes, and a publication
/// on any node's API reaches all of them.
#[test]
fn nginx_in_front_of_three_nodes() {
    let broker = BrokerServer::start(Kind::Redis);
    let nodes: Vec<Server> = (0..3).map(|_| node(&broker, "")).collect();
    connected(&nodes.iter().collect::<Vec<_>>());
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/nginx-cluster.conf")).unwrap();
    let listen = broker_port();
    let mut conf = shipped.replace("127.0.0.1:8000", &format!("127.0.0.1:{listen}"));
    for (default, n) in ["127.0.0.1:8080", "127.0.0.1:8090", "127.0.0.1:8100"].iter().zip(&nodes) {
        assert!(conf.contains(default), "the shipped config lists {default}");
        conf = conf.replace(default, &n.ws.to_string());
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let nginx = Command::new("nginx")
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir.path())
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (scripts/test.sh installs nginx-light)");
    let _nginx = Nginx(nginx);
    wait_port(listen);
    let front: std::net::SocketAddr = format!("127.0.0.1:{listen}").parse().unwrap();
    let mut clients: Vec<Ws> = (0..6)
        .map(|_| {
            let mut ws = try_connect(front, "/ws", &[]).expect("upgrade through nginx");
            join(&mut ws, &["lb"]);
            ws
        })
        .collect();
    let held: Vec<u64> = nodes.iter().map(|n| n.metric("ringcast_connections")).collect();
    assert!(held.iter().filter(|&&n| n > 0).count() >= 2, "spread over the nodes: {held:?}");
    assert_eq!(publish(&nodes[2], "lb", "through nginx").0, 200);
    for ws in clients.iter_mut() {
        assert_eq!(recv_text(ws), delivery("lb", "through nginx"));
    }
}

/// A signed (or, with `secret` None, a wrongly signed) envelope from `origin`.
fn forge(secret: Option<&str>, origin: &str, sent_at_ms: u64, body: Body) -> Vec<u8> {
    let e = envelope::envelope(origin, sent_at_ms, body);
    let key = secret.map_or(&b"not the cluster secret, but 32+ bytes long"[..], str::as_bytes);
    Sealer::new(Some(key)).seal(&e.encode_to_vec()).to_vec()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn rejected(s: &Server, reason: &str) -> u64 {
    let text = http_get(&s.url("/metrics")).1;
    text.lines()
        .find(|l| {
            l.starts_with("ringcast_broker_rejected_total{") && l.contains(&format!("reason=\"{reason}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |v| v.parse().unwrap())
}

/// The attacks of a broker reachable by strangers (docs/cluster.md,
/// "Trust"): forged, replayed and stale envelopes, a sequence number meant
/// to silence a node, a frame meant to close clients, admin changes meant
/// to open a vhost. None is applied; genuine traffic goes on.
fn forged_envelopes_are_refused(kind: Kind) {
    let broker = BrokerServer::start(kind);
    let config = format!(
        "{}[server]\nadmin_token = \"{TOKEN}\"\n[[vhost]]\npath = \"/ws\"\ndialect = \"roadrunner\"\n\
         [[vhost]]\npath = \"/world\"\ndialect = \"webrocket\"\nanonymous = [\"READ\"]\n",
        broker.config()
    );
    let a = Server::start(&config, 1);
    let b = Server::start(&config, 1);
    connected(&[&a, &b]);
    let mut sub = b.connect("/ws");
    join(&mut sub, &["news"]);
    assert!(eventually(Duration::from_secs(5), || broker.interest("news") >= 1));
    // Learn A's origin and sequence from its genuine traffic, as an
    // eavesdropper would.
    let mut spy = broker.spy(&broker.topic_subject("news"));
    assert_eq!(publish(&a, "news", "genuine-1").0, 200);
    assert_eq!(recv_text(&mut sub), delivery("news", "genuine-1"));
    let (_, (origin, seq, frame)) = spy.envelope(|r| match &r.body {
        Body::Publication(p) => Some((r.origin.clone(), p.seq, p.frame.clone())),
        _ => None,
    });
    let close = ringcast::ws::encode::close_frame(1008, "injected");
    let publication = |seq: u64, frame: &bytes::Bytes| {
        Body::Publication(Publication { topic: "news".into(), seq, frame: frame.clone() })
    };
    let news = broker.topic_subject("news");
    let mut genuine = 1;
    let mut still_delivered = |sub: &mut Ws| {
        genuine += 1;
        let text = format!("genuine-{genuine}");
        assert_eq!(publish(&a, "news", &text).0, 200);
        assert_eq!(recv_text(sub), delivery("news", &text), "genuine traffic after a forgery");
    };

    // Without the secret: a Close frame and a silencing sequence number.
    broker.inject(&news, &forge(None, &origin, now_ms(), publication(1 << 63, &close)));
    broker.inject(&news, b"not even an envelope");
    assert!(eventually(Duration::from_secs(5), || rejected(&b, "bad_signature") >= 1));
    assert!(
        eventually(Duration::from_secs(5), || rejected(&b, "bad_signature") + rejected(&b, "unsigned") >= 2)
    );
    still_delivered(&mut sub);

    // With the secret (a compromised or buggy node): a sequence jump
    // restarts the stream instead of blackholing A, and a non-data frame
    // never reaches a socket.
    broker.inject(&news, &forge(Some(SECRET), &origin, now_ms(), publication(1 << 63, &frame)));
    assert!(eventually(Duration::from_secs(5), || rejected(&b, "sequence_jump") == 1));
    still_delivered(&mut sub);
    still_delivered(&mut sub);
    broker.inject(&news, &forge(Some(SECRET), &origin, now_ms(), publication(seq + 100, &close)));
    let mut half = frame.to_vec();
    half.truncate(half.len() - 1);
    broker.inject(&news, &forge(Some(SECRET), &origin, now_ms(), publication(seq + 101, &half.into())));
    assert!(eventually(Duration::from_secs(5), || rejected(&b, "bad_frame") == 2));
    still_delivered(&mut sub);
    // Stale: sent two minutes ago.
    broker.inject(&news, &forge(Some(SECRET), &origin, now_ms() - 120_000, publication(seq + 3, &frame)));
    assert!(eventually(Duration::from_secs(5), || rejected(&b, "stale") == 1));
    still_delivered(&mut sub);
    // Its own origin: A ignores what claims to be itself.
    let mut on_a = a.connect("/ws");
    join(&mut on_a, &["own"]);
    assert!(eventually(Duration::from_secs(5), || broker.interest("own") >= 1));
    let forged = ringcast::ws::encode::data_frame(
        tungstenite::protocol::frame::coding::OpCode::Data(tungstenite::protocol::frame::coding::Data::Text),
        b"{\"topic\":\"own\",\"payload\":\"forged\"}",
    );
    let own = Body::Publication(Publication { topic: "own".into(), seq: 1, frame: forged });
    broker.inject(&broker.topic_subject("own"), &forge(Some(SECRET), &origin, now_ms(), own));
    assert_eq!(publish(&a, "own", "genuine").0, 200);
    assert_eq!(recv_text(&mut on_a), delivery("own", "genuine"), "its own origin's envelope is ignored");
    assert!(b.metric("ringcast_broker_gaps_total") < 10_000, "a jump counts as one gap, not 2^63");

    // Admin changes: an empty worker token and the RoadRunner vhost
    // re-declared as an open WebRocket one.
    let open_up = serde_json::json!([
        { "PutToken": { "vhost": "/world", "token": "" } },
        { "PutVhost": { "path": "/ws", "anonymous": 7 } },
    ]);
    let replicate =
        |json: &serde_json::Value| Body::Replicate(Replicate { writes_json: json.to_string().into() });
    let control = broker.control_subject();
    broker.inject(&control, &forge(None, &origin, now_ms(), replicate(&open_up)));
    broker.inject(&control, &forge(Some(SECRET), &origin, now_ms(), replicate(&open_up)));
    assert!(eventually(Duration::from_secs(5), || rejected(&b, "bad_change") == 1));
    let worker_without_token = try_connect(b.api, "/workers/world", &[]);
    assert!(
        matches!(&worker_without_token, Err(tungstenite::Error::Http(r)) if r.status() == 401),
        "{worker_without_token:?}"
    );
    let (_, vhosts) = admin(&b, "GET", "/admin/vhosts", None);
    assert_eq!(vhosts.as_array().unwrap().len(), 1, "{vhosts}");
    assert_eq!(join_reply(&b), r#"{"topic":"@join","payload":["x"]}"#, "/ws still speaks roadrunner");

    // A genuine change replayed after it was undone is not applied again.
    let mut control_spy = broker.spy(&control);
    let eve = serde_json::json!({ "vhost": "/world", "name": "eve", "permissions": ["READ"] });
    assert_eq!(admin(&a, "POST", "/admin/users", Some(eve)).0, 201);
    let (captured, ()) = control_spy.envelope(|r| matches!(r.body, Body::Replicate(_)).then_some(()));
    let users_on_b = || admin(&b, "GET", "/admin/users?vhost=/world", None).1.as_array().unwrap().len();
    assert!(eventually(Duration::from_secs(5), || users_on_b() == 1));
    assert_eq!(admin(&a, "DELETE", "/admin/users?vhost=/world&name=eve", None).0, 200);
    assert!(eventually(Duration::from_secs(5), || users_on_b() == 0));
    broker.inject(&control, &captured);
    assert!(eventually(Duration::from_secs(5), || rejected(&b, "replayed") == 1));
    assert_eq!(users_on_b(), 0, "a replayed change is not applied");
}

/// A roadrunner join on B's `/ws`: what it answers.
fn join_reply(s: &Server) -> String {
    let mut ws = s.connect("/ws");
    ask(&mut ws, r#"{"command":"join","topics":["x"]}"#)
}

#[test]
fn redis_forged_envelopes_are_refused() {
    forged_envelopes_are_refused(Kind::Redis);
}

#[test]
fn nats_forged_envelopes_are_refused() {
    forged_envelopes_are_refused(Kind::Nats);
}

#[test]
fn a_network_broker_needs_a_secret_or_an_explicit_insecure() {
    let broker = BrokerServer::start(Kind::Redis);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, broker.config_without_secret()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .arg("--config")
        .arg(&path)
        .env_remove("RINGCAST_CLUSTER_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster.secret") && err.contains("cluster.insecure"), "{err}");
    // The secret from the environment is enough.
    let s = Server::start_env(
        &roadrunner_config(&broker.config_without_secret()),
        1,
        &[("RINGCAST_CLUSTER_SECRET", SECRET)],
    );
    connected(&[&s]);
    assert!(!http_get(&s.url("/health")).1.contains("insecure"));
    // Insecure on purpose: it runs, and says so at start and in /health.
    let s = Server::start(
        &roadrunner_config(&format!("{}[cluster]\ninsecure = true\n", broker.config_without_secret())),
        1,
    );
    connected(&[&s]);
    let (status, health) = http_get(&s.url("/health"));
    assert_eq!(status, 200);
    assert!(health.contains("insecure"), "{health}");
    assert!(s.log().contains("insecure"), "{}", s.log());
}

/// `rediss://`: a real redis-server speaking TLS only, its certificate
/// signed by a CA made here. The node trusts the CA through
/// `SSL_CERT_FILE` (as rustls-native-certs programs do) and works; without
/// it the node does not connect and says why in /health.
#[test]
fn redis_over_tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "ringcast test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server = server_params.signed_by(&server_key, &issuer).unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(path("server.pem"), server.pem()).unwrap();
    std::fs::write(path("server.key"), server_key.serialize_pem()).unwrap();
    let port = broker_port();
    let _redis = Killed(
        Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--tls-cert-file", &path("server.pem"), "--tls-key-file", &path("server.key")])
            .args(["--tls-ca-cert-file", &path("ca.pem"), "--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test.sh installs it)"),
    );
    wait_port(port);
    let config = roadrunner_config(&format!(
        "broker = \"redis\"\n[redis]\nurl = \"rediss://localhost:{port}\"\n[cluster]\nsecret = \"{SECRET}\"\n"
    ));
    // Trusting the private CA: healthy, publications flow through Redis.
    let trusted = Server::start_env(&config, 1, &[("SSL_CERT_FILE", &path("ca.pem"))]);
    assert!(
        eventually(Duration::from_secs(15), || http_get(&trusted.url("/health")).0 == 200),
        "{}",
        http_get(&trusted.url("/health")).1
    );
    let other = Server::start_env(&config, 1, &[("SSL_CERT_FILE", &path("ca.pem"))]);
    connected(&[&other]);
    let mut sub = other.connect("/ws");
    join(&mut sub, &["secure"]);
    assert_eq!(publish(&trusted, "secure", "over tls").0, 200);
    assert_eq!(recv_text(&mut sub), delivery("secure", "over tls"));
    // Not trusting it: never connects, and says so.
    let empty = path("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let untrusted = Server::start_env(&config, 1, &[("SSL_CERT_FILE", &empty)]);
    assert!(
        eventually(Duration::from_secs(10), || {
            let (status, body) = http_get(&untrusted.url("/health"));
            status == 503 && body.to_lowercase().contains("certificate")
        }),
        "{}",
        http_get(&untrusted.url("/health")).1
    );
    assert!(untrusted.log().to_lowercase().contains("certificate"), "{}", untrusted.log());
}

/// A panic while a node handles a message from the broker (injected on
/// node B, test builds only) costs that message: B counts it, stays healthy
/// and keeps delivering its own publications.
#[test]
fn redis_a_panic_on_a_broker_message_costs_that_message_only() {
    let broker = BrokerServer::start(Kind::Redis);
    let a = node(&broker, "");
    let config = format!("{}\n[[vhost]]\npath = \"/ws\"\ndialect = \"roadrunner\"\n", broker.config());
    let b = Server::start_env(&config, 1, &[("RINGCAST_INJECT_PANIC", "broker")]);
    connected(&[&a, &b]);
    let mut ws = b.connect("/ws");
    join(&mut ws, &["t"]);
    let panics = |s: &Server| s.metric("ringcast_panics_total{where=\"broker\"}");
    assert!(eventually(Duration::from_secs(10), || {
        assert_eq!(publish(&a, "t", "from a").0, 200);
        panics(&b) > 0
    }));
    assert_eq!(panics(&a), 0);
    assert_eq!(http_get(&b.url("/health")).0, 200);
    assert_eq!(publish(&b, "t", "from b").0, 200);
    assert_eq!(
        recv_text(&mut ws),
        delivery("t", "from b"),
        "what came through the broker was lost, nothing else"
    );
}
