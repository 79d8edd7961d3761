//! docs/protocols.md §4 and §5: the proxy dialect and backend hooks, against a
//! real HTTP backend on loopback.

mod common;

use std::time::{Duration, Instant};

use common::backend::{Answer, Backend};
use common::*;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

fn proxy_config(backend: &str, extra: &str) -> String {
    format!("[[vhost]]\npath = \"/\"\ndialect = \"proxy\"\nbackend = \"{backend}\"\n{extra}\n")
}

/// Allows every connect, echoes messages as "echo: <body>", empty reply for "quiet".
fn echo_backend() -> Backend {
    Backend::start(|s| match (s.method.as_str(), s.body.as_str()) {
        ("GET", _) => Answer::new(200, "ok"),
        ("POST", "quiet") => Answer::new(200, ""),
        ("POST", body) => Answer::new(200, &format!("echo: {body}")),
        _ => Answer::new(200, ""),
    })
}

fn http_error(result: Result<Ws, tungstenite::Error>) -> (u16, String) {
    match result {
        Err(tungstenite::Error::Http(r)) => (
            r.status().as_u16(),
            String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).to_string(),
        ),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, got an upgrade"),
    }
}

fn wait_close(ws: &mut Ws) -> (CloseCode, String) {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return (f.code, f.reason.to_string()),
            Ok(Message::Close(None)) => panic!("close without a code"),
            Ok(_) => continue,
            Err(e) => panic!("expected a Close frame, got {e}"),
        }
    }
}

#[test]
fn connect_is_authorized_by_the_backend_with_forwarded_headers() {
    let backend = Backend::start(|s| match s.path.as_str() {
        "/alice" => Answer::new(200, "ok"),
        "/bob" => Answer::new(403, "bob is banned"),
        _ => Answer::new(200, "ok, but not exactly"),
    });
    let s = Server::start(&proxy_config(&backend.url(), ""), 1);
    let _alice = s.connect_with("/alice", &[("Cookie", "session=42"), ("Origin", "https://app.test")]);
    let get = &backend.requests("GET", "/alice")[0];
    assert_eq!(get.header("cookie"), Some("session=42"));
    assert_eq!(get.header("origin"), Some("https://app.test"));
    assert_eq!(get.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(http_error(try_connect(s.ws, "/bob", &[])), (403, "bob is banned".into()));
    // 2xx with any body but exactly "ok" is not an allow; the answer is passed on.
    assert_eq!(http_error(try_connect(s.ws, "/carol", &[])), (200, "ok, but not exactly".into()));
    assert_eq!(http_error(try_connect(s.ws, "/a/b", &[])).0, 400);
}

#[test]
fn backend_down_is_502_and_others_keep_working() {
    let up = echo_backend();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = format!(
        "[[vhost]]\npath = \"/down/\"\ndialect = \"proxy\"\nbackend = \"http://{dead}\"\n[vhost.hooks]\nretries = 1\n\
         [[vhost]]\npath = \"/up/\"\ndialect = \"proxy\"\nbackend = \"{}\"\n",
        up.url()
    );
    let s = Server::start(&config, 2);
    assert_eq!(http_error(try_connect(s.ws, "/down/x", &[])), (502, "backend unreachable\n".into()));
    let mut ws = s.connect("/up/y");
    send_text(&mut ws, "still here");
    assert_eq!(recv_text(&mut ws), "echo: still here");
    assert!(s.metric("ringcast_hook_requests_total{hook=\"connect\",outcome=\"unreachable\"}") >= 1);
}

#[test]
fn messages_round_trip_with_and_without_a_reply_body() {
    let backend = echo_backend();
    let s = Server::start(&proxy_config(&backend.url(), ""), 2);
    let mut ws = s.connect("/alice");
    send_text(&mut ws, "hello");
    assert_eq!(recv_text(&mut ws), "echo: hello");
    let post = &backend.requests("POST", "/alice")[0];
    assert_eq!(post.body, "hello");
    assert_eq!(post.header("content-type"), Some("text/plain; charset=utf-8"));
    send_text(&mut ws, "quiet");
    assert_silent(&mut ws, Duration::from_millis(300));
    ws.send(Message::binary(vec![0xffu8, 0, 1])).unwrap();
    assert!(eventually(Duration::from_secs(3), || backend.requests("POST", "/alice").len() == 3));
    let bin = &backend.requests("POST", "/alice")[2];
    assert_eq!(bin.header("content-type"), Some("application/octet-stream"));
}

#[test]
fn a_thousand_messages_keep_their_order() {
    let backend = echo_backend();
    let s = Server::start(&proxy_config(&backend.url(), ""), 2);
    let mut ws = s.connect("/ordered");
    for i in 0..1000 {
        ws.write(Message::text(format!("m{i}"))).unwrap();
    }
    ws.flush().unwrap();
    for i in 0..1000 {
        assert_eq!(recv_text(&mut ws), format!("echo: m{i}"));
    }
    let bodies: Vec<String> = backend.requests("POST", "/ordered").into_iter().map(|s| s.body).collect();
    let expected: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies, expected);
}

#[test]
fn pushes_reach_clients_on_every_shard_and_unknown_ids_get_404() {
    let backend = echo_backend();
    let s = Server::start(&proxy_config(&backend.url(), ""), 2);
    let mut clients: Vec<(String, Ws)> =
        connect_until_spread(&s, 2, |i| (format!("c{i}"), s.connect(&format!("/c{i}"))));
    for (id, ws) in clients.iter_mut() {
        assert_eq!(
            http_post(&s.url(&format!("/{id}")), "text/plain", format!("to {id}").as_bytes()),
            (200, "ok".into())
        );
        assert_eq!(recv_text(ws), format!("to {id}"));
    }
    assert_eq!(http_post(&s.url("/nobody"), "text/plain", b"x"), (404, "not connected".into()));
    // Counted before the clients leave: the probe pushes below may still
    // reach c0 (and be queued) until the server has seen it go.
    assert_eq!(s.metric("ringcast_push_requests_total{outcome=\"queued\"}"), clients.len() as u64);
    drop(clients);
    assert!(eventually(Duration::from_secs(3), || http_post(&s.url("/c0"), "text/plain", b"x").0 == 404));
}

#[test]
fn close_sends_delete_with_the_reason() {
    let backend = echo_backend();
    let s = Server::start(&proxy_config(&backend.url(), ""), 1);
    let mut ws = s.connect("/polite");
    ws.close(Some(tungstenite::protocol::CloseFrame { code: CloseCode::Normal, reason: "bye now".into() }))
        .unwrap();
    let _ = wait_close(&mut ws);
    assert!(eventually(Duration::from_secs(3), || backend.requests("DELETE", "/polite").len() == 1));
    assert_eq!(backend.requests("DELETE", "/polite")[0].body, "bye now");

    let ws = s.connect("/rude");
    drop(ws); // TCP closed without a Close frame
    assert!(eventually(Duration::from_secs(3), || backend.requests("DELETE", "/rude").len() == 1));
    assert_eq!(backend.requests("DELETE", "/rude")[0].body, "abnormal closure");
}

#[test]
fn duplicate_client_ids_replace_or_reject() {
    let backend = echo_backend();
    let s = Server::start(&proxy_config(&backend.url(), ""), 2);
    let mut first = s.connect("/twin");
    let mut second = s.connect("/twin");
    assert_eq!(wait_close(&mut first), (CloseCode::Policy, "replaced by a new connection".into()));
    assert_eq!(http_post(&s.url("/twin"), "text/plain", b"for the new one").0, 200);
    assert_eq!(recv_text(&mut second), "for the new one");
    // The old connection's end (its DELETE reached the backend) does not
    // unregister the new one.
    drop(first);
    assert!(eventually(Duration::from_secs(5), || backend.requests("DELETE", "/twin").len() == 1));
    assert_eq!(http_post(&s.url("/twin"), "text/plain", b"again").0, 200);

    let r = Server::start(&proxy_config(&backend.url(), "duplicate_client = \"reject\""), 2);
    let _one = r.connect("/solo");
    assert_eq!(http_error(try_connect(r.ws, "/solo", &[])).0, 409);
}

#[test]
fn hung_backend_times_out_without_affecting_other_clients() {
    let backend = Backend::start(|s| match (s.method.as_str(), s.path.as_str()) {
        ("GET", _) => Answer::new(200, "ok"),
        ("POST", "/stuck") => Answer::new(200, "late").after(Duration::from_secs(3)),
        ("POST", _) => Answer::new(200, &format!("echo: {}", s.body)),
        _ => Answer::new(200, ""),
    });
    let config =
        proxy_config(&backend.url(), "on_backend_error = \"close\"\n[vhost.hooks]\ntimeout_ms = 300");
    let s = Server::start(&config, 1);
    let mut stuck = s.connect("/stuck");
    let mut fine = s.connect("/fine");
    send_text(&mut stuck, "anyone?");
    let started = Instant::now();
    for i in 0..20 {
        send_text(&mut fine, &format!("{i}"));
        assert_eq!(recv_text(&mut fine), format!("echo: {i}"));
    }
    assert!(started.elapsed() < Duration::from_millis(1500), "the other client was not held up");
    assert_eq!(wait_close(&mut stuck).0, CloseCode::Error, "1011 after the timeout");
    assert_eq!(s.metric("ringcast_backend_errors_total"), 1);
    assert_eq!(s.metric("ringcast_hook_requests_total{hook=\"message\",outcome=\"timeout\"}"), 1);
}

#[test]
fn dropped_backend_errors_keep_the_connection() {
    let backend = Backend::start(|s| match (s.method.as_str(), s.body.as_str()) {
        ("GET", _) => Answer::new(200, "ok"),
        ("POST", "fail") => Answer::new(500, "oops"),
        ("POST", body) => Answer::new(200, body),
        _ => Answer::new(200, ""),
    });
    let s = Server::start(&proxy_config(&backend.url(), ""), 1);
    let mut ws = s.connect("/x");
    send_text(&mut ws, "fail");
    send_text(&mut ws, "after");
    assert_eq!(recv_text(&mut ws), "after");
    assert_eq!(s.metric("ringcast_backend_errors_total"), 1);
}

#[test]
fn connect_timeout_is_504() {
    let backend = Backend::start(|_| Answer::new(200, "ok").after(Duration::from_secs(3)));
    let s = Server::start(&proxy_config(&backend.url(), "[vhost.hooks]\ntimeout_ms = 200\nretries = 0"), 1);
    assert_eq!(http_error(try_connect(s.ws, "/slow", &[])), (504, "backend timeout\n".into()));
}

#[test]
fn roadrunner_hooks_connect_join_close() {
    let backend = Backend::start(|s| match (s.method.as_str(), s.path.as_str()) {
        ("GET", "/connect") if s.header("authorization") == Some("Bearer good") => Answer::new(204, ""),
        ("GET", "/connect") => Answer::new(401, "{\"error\":\"who are you\"}"),
        ("POST", "/join") if s.body.contains("secret") => Answer::new(403, "no"),
        ("POST", "/join") => Answer::new(200, ""),
        _ => Answer::new(200, ""),
    });
    let config = format!(
        "[[vhost]]\npath = \"/ws\"\ndialect = \"roadrunner\"\n[vhost.hooks]\nconnect = \"{0}/connect\"\njoin = \"{0}/join\"\nclose = \"{0}/close\"\n",
        backend.url()
    );
    let s = Server::start(&config, 2);
    assert_eq!(http_error(try_connect(s.ws, "/ws", &[])), (401, "{\"error\":\"who are you\"}".into()));
    let mut ws = s.connect_with("/ws", &[("Authorization", "Bearer good")]);
    join(&mut ws, &["open"]);
    send_text(&mut ws, r#"{"command":"join","topics":["secret"]}"#);
    assert_eq!(recv_text(&mut ws), r##"{"topic":"#join","payload":["secret"]}"##);
    // Commands after a pending join keep their order.
    send_text(&mut ws, r#"{"command":"join","topics":["a"]}"#);
    send_text(&mut ws, r#"{"command":"leave","topics":["a"]}"#);
    assert_eq!(recv_text(&mut ws), r#"{"topic":"@join","payload":["a"]}"#);
    assert_eq!(recv_text(&mut ws), r#"{"topic":"@leave","payload":["a"]}"#);
    s.publish_json(r#"{"topics":["open","secret","a"],"payload":"x"}"#);
    assert_eq!(recv_text(&mut ws), r#"{"topic":"open","payload":"x"}"#);
    assert_silent(&mut ws, Duration::from_millis(200));
    let join_body: serde_json::Value =
        serde_json::from_str(&backend.requests("POST", "/join")[0].body).unwrap();
    assert_eq!(join_body["topics"], serde_json::json!(["open"]));
    ws.close(None).unwrap();
    let _ = ws.read();
    assert!(eventually(Duration::from_secs(3), || backend.requests("POST", "/close").len() == 1));
    let close_body: serde_json::Value =
        serde_json::from_str(&backend.requests("POST", "/close")[0].body).unwrap();
    assert_eq!(close_body["connection"], join_body["connection"]);
}

#[test]
fn hook_requests_past_the_shard_limit_are_refused_at_once() {
    let backend = Backend::start(|s| match s.path.as_str() {
        "/hang" => Answer::new(200, "ok").after(Duration::from_secs(2)),
        _ => Answer::new(200, "ok"),
    });
    let config = format!("[limits]\nmax_hooks_in_flight = 1\n{}", proxy_config(&backend.url(), ""));
    let s = Server::start(&config, 1);
    let waiting = std::thread::spawn({
        let addr = s.ws;
        move || try_connect(addr, "/hang", &[]).is_ok()
    });
    assert!(eventually(Duration::from_secs(2), || !backend.requests("GET", "/hang").is_empty()));
    let started = Instant::now();
    assert_eq!(
        http_error(try_connect(s.ws, "/other", &[])),
        (503, "too many backend requests in flight\n".into())
    );
    assert!(started.elapsed() < Duration::from_millis(500), "refused at once, not queued");
    assert!(waiting.join().unwrap(), "the first connect still completes");
    assert_eq!(s.metric("ringcast_hook_requests_total{hook=\"connect\",outcome=\"busy\"}"), 1);
    // The first client is gone too (dropped above): its close notification
    // shares the hook queue, one request deep here, and can take the only
    // slot for a moment. Once the backend has it, the queue is free again.
    assert!(eventually(Duration::from_secs(3), || !backend.requests("DELETE", "/hang").is_empty()));
    s.connect("/later");
}

#[test]
fn graceful_shutdown_tells_the_backend_about_every_client() {
    let backend = echo_backend();
    let config = format!("[server]\nshutdown_timeout_ms = 2000\n{}", proxy_config(&backend.url(), ""));
    let mut s = Server::start(&config, 2);
    let clients: Vec<Ws> = (0..20).map(|i| s.connect(&format!("/leaving{i}"))).collect();
    s.signal("TERM");
    let status = s.wait_exit(Duration::from_secs(8)).expect("exits");
    assert!(status.success());
    drop(clients);
    let deletes = backend.seen().into_iter().filter(|r| r.method == "DELETE").collect::<Vec<_>>();
    assert_eq!(deletes.len(), 20, "a DELETE for every client before the exit");
    assert!(deletes.iter().all(|d| d.body == "server shutting down"), "{deletes:?}");
}

/// A join hook that answers after its connection is gone must not subscribe
/// whichever client got the connection's slot since.
#[test]
fn a_late_join_answer_never_subscribes_the_slots_next_client() {
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let gate = std::sync::Mutex::new(gate);
    let backend = Backend::start(move |s| {
        if s.body.contains("secret") {
            let _ = gate.lock().unwrap().recv_timeout(Duration::from_secs(30));
        }
        Answer::new(200, "")
    });
    let config = format!(
        "[limits]\nmax_backpressure = 65536\n[[vhost]]\npath = \"/ws\"\ndialect = \"roadrunner\"\n\
         [vhost.hooks]\njoin = \"{}/join\"\ntimeout_ms = 60000\n",
        backend.url()
    );
    let s = Server::start(&config, 1);
    let mut a = s.connect("/ws");
    join(&mut a, &["firehose"]);
    send_text(&mut a, r#"{"command":"join","topics":["secret"]}"#);
    assert!(eventually(Duration::from_secs(5), || backend.seen().iter().any(|r| r.body.contains("secret"))));
    // A stops reading: the firehose makes it a slow consumer, closed while its
    // join hook is still out.
    let big = format!(r#"{{"topics":["firehose"],"payload":"{}"}}"#, "x".repeat(60_000));
    for _ in 0..2_000 {
        if s.metric("ringcast_slow_consumer_closes_total") > 0 {
            break;
        }
        s.publish_json(&big);
    }
    assert_eq!(s.metric("ringcast_slow_consumer_closes_total"), 1);
    assert!(eventually(Duration::from_secs(5), || s.metric("ringcast_connections") == 0), "A is gone");
    drop(a);
    // B takes the freed slot (one shard; the slab reuses the key).
    let mut b = s.connect("/ws");
    release.send(()).unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        s.metric("ringcast_hook_requests_total{hook=\"join\",outcome=\"2xx\"}") == 2
    }));
    // B's own join goes through the hook after A's answer was handled.
    join(&mut b, &["probe"]);
    s.publish_json(r#"{"topics":["secret"],"payload":"not for B"}"#);
    s.publish_json(r#"{"topics":["probe"],"payload":"for B"}"#);
    assert_eq!(recv_text(&mut b), r#"{"topic":"probe","payload":"for B"}"#);
    assert_eq!(s.metric("ringcast_subscriptions"), 1, "only B's probe");
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// A mass disconnect while the backend is stuck: close notifications wait
/// in one per-shard backlog (no timer per connection, no spinning), and
/// every one of them reaches the backend once it answers again.
#[test]
fn close_notifications_wait_in_a_backlog_while_the_backend_is_stuck() {
    const CLIENTS: usize = 1500;
    // Close notifications hang until the gate opens.
    let gate = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let backend = Backend::start({
        let gate = gate.clone();
        move |s| {
            if s.path == "/close" {
                let (open, changed) = &*gate;
                let guard = open.lock().unwrap();
                drop(changed.wait_timeout_while(guard, Duration::from_secs(60), |open| !*open).unwrap());
            }
            Answer::new(200, "")
        }
    });
    let config = format!(
        "[limits]\nmax_hooks_in_flight = 4\n[[vhost]]\npath = \"/ws\"\ndialect = \"roadrunner\"\n\
         [vhost.hooks]\nclose = \"{}/close\"\ntimeout_ms = 120000\n",
        backend.url()
    );
    let s = Server::start(&config, 1);
    let clients = raw_upgrades(s.ws, "/ws", CLIENTS);
    assert!(eventually(Duration::from_secs(20), || s.metric("ringcast_connections") == CLIENTS as u64));
    drop(clients);
    assert!(eventually(Duration::from_secs(20), || s.metric("ringcast_connections") == 0));
    let backlog = s.metric("ringcast_close_hook_backlog");
    assert!(backlog > 1000, "backlog {backlog}: the hook queue took the rest");
    // While nothing can be sent the shard goes quiet: no per-connection
    // timers, no retry loop. The closes themselves take a moment (a debug
    // build on a slow VM spent 0.3 of a core for a second), so: two quiet
    // seconds in a row within ten.
    let busy_second = || {
        let before = cpu_seconds(s.pid());
        let window = Instant::now();
        while window.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_millis(100));
        }
        (cpu_seconds(s.pid()) - before) / window.elapsed().as_secs_f64()
    };
    let mut seconds: Vec<f64> = Vec::new();
    while !(seconds.len() >= 2 && seconds[seconds.len() - 2..].iter().all(|busy| *busy < 0.2)) {
        assert!(seconds.len() < 10, "the stuck backlog kept the shard busy, cores per second: {seconds:.2?}");
        seconds.push(busy_second());
    }
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    assert!(
        eventually(Duration::from_secs(60), || backend.requests("POST", "/close").len() == CLIENTS),
        "{} of {CLIENTS} close notifications arrived; metrics:\n{}",
        backend.requests("POST", "/close").len(),
        http_get(&s.url("/metrics"))
            .1
            .lines()
            .filter(|l| l.contains("hook=\"close\"") || l.contains("close_hook"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(s.metric("ringcast_close_hook_backlog"), 0);
    assert_eq!(s.metric("ringcast_close_hooks_dropped_total"), 0);
}

/// Shutdown keeps to one deadline: clients that never answer the Close and a
/// backend that never answers the close notifications together get
/// `shutdown_timeout_ms`, not that twice over.
#[test]
fn shutdown_keeps_to_one_deadline_with_stuck_clients_and_backend() {
    let backend = Backend::start(|s| {
        if s.path == "/close" {
            return Answer::new(200, "").after(Duration::from_secs(30));
        }
        Answer::new(200, "")
    });
    let config = format!(
        "[server]\nshutdown_timeout_ms = 1000\n[[vhost]]\npath = \"/ws\"\ndialect = \"roadrunner\"\n\
         [vhost.hooks]\nclose = \"{}/close\"\ntimeout_ms = 60000\n",
        backend.url()
    );
    let mut s = Server::start(&config, 2);
    // Raw clients that never read, so never answer the server's Close.
    let _clients = raw_upgrades(s.ws, "/ws", 10);
    assert!(eventually(Duration::from_secs(5), || s.metric("ringcast_connections") == 10));
    let signalled = Instant::now();
    s.signal("TERM");
    let status = s.wait_exit(Duration::from_secs(5)).expect("exits");
    let took = signalled.elapsed();
    assert!(status.success());
    assert!(took < Duration::from_millis(1700), "shutdown took {took:?} for a 1 s timeout");
    assert!(s.log().contains("exiting with backend hook requests unfinished"), "{}", s.log());
}

/// One vhost's hanging backend does not slow another vhost's connects:
/// each vhost has its own limit of hook requests, the queue time counts
/// against a hook's deadline, and the handshake timeout covers the wait.
#[test]
fn a_hanging_backend_does_not_delay_another_vhosts_connects() {
    let slow = Backend::start(|_| Answer::new(200, "ok").after(Duration::from_secs(30)));
    let fast = Backend::start(|_| Answer::new(200, "ok"));
    let config = format!(
        "[limits]\nhandshake_timeout_ms = 3000\n\
         [[vhost]]\npath = \"/slow\"\ndialect = \"roadrunner\"\n[vhost.hooks]\nconnect = \"{}/auth\"\ntimeout_ms = 20000\n\
         [[vhost]]\npath = \"/fast\"\ndialect = \"roadrunner\"\n[vhost.hooks]\nconnect = \"{}/auth\"\n",
        slow.url(),
        fast.url()
    );
    let s = Server::start(&config, 1);
    let flood = raw_upgrades(s.ws, "/slow", 700);
    assert!(
        eventually(Duration::from_secs(10), || slow.seen().len() >= 256),
        "the flood reached the backend"
    );
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let ws = try_connect(s.ws, "/fast", &[]).expect("a connect to the fast vhost");
        worst = worst.max(started.elapsed());
        drop(ws);
    }
    eprintln!("fast vhost connects during a 700-handshake flood of the slow one: worst {worst:?}");
    assert!(worst < Duration::from_millis(200), "worst connect {worst:?}");
    // The flooded handshakes end at the handshake deadline (3 s), not the
    // hook's 20 s: 504 for each.
    let mut c = flood.into_iter().next().unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut head = [0u8; 12];
    std::io::Read::read_exact(&mut c, &mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 504");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}
