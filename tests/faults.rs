//! Faults inside the gateway: a panic at each containment site (injected
//! through `RINGCAST_INJECT_PANIC`, read by test builds only) is logged,
//! counted in `ringcast_panics_total{where}`, and costs only what was being
//! done — the same shard keeps serving its other connections.

mod common;

use std::time::Duration;

use common::backend::{Answer, Backend};
use common::*;

fn panics(s: &Server, site: &str) -> u64 {
    s.metric(&format!("ringcast_panics_total{{where=\"{site}\"}}"))
}

/// A subscriber of `t` on `s` that must still get a fresh publication.
fn still_served(s: &Server, calm: &mut Ws, payload: &str) {
    assert_eq!(s.publish_json(&format!(r#"{{"topics":["t"],"payload":"{payload}"}}"#)).0, 200);
    assert_eq!(recv_text(calm), format!(r#"{{"topic":"t","payload":"{payload}"}}"#));
}

#[test]
fn panics_in_a_connection_a_shard_task_and_the_inbox_are_contained() {
    let backend = Backend::start(|_| Answer::new(200, "ok"));
    let config = format!(
        "[[vhost]]\npath = \"/ws\"\ndialect = \"roadrunner\"\n\
         [[vhost]]\npath = \"/joined\"\ndialect = \"roadrunner\"\n[vhost.hooks]\njoin = \"{url}/join\"\n\
         [[vhost]]\npath = \"/p/\"\ndialect = \"proxy\"\nbackend = \"{url}\"\n",
        url = backend.url()
    );
    let s = Server::start_env(&config, 1, &[("RINGCAST_INJECT_PANIC", "connection,shard_task,inbox")]);
    let mut calm = s.connect("/ws");
    join(&mut calm, &["t"]);

    // A connection whose handling panics (a leave, here) is closed; only it.
    let mut victim = s.connect("/ws");
    join(&mut victim, &["t"]);
    send_text(&mut victim, r#"{"command":"leave","topics":["t"]}"#);
    set_timeout(&mut victim, Duration::from_secs(5));
    loop {
        match victim.read() {
            Ok(tungstenite::Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        }
    }
    assert!(eventually(Duration::from_secs(5), || panics(&s, "connection") == 1));
    still_served(&s, &mut calm, "after a connection panicked");

    // A shard task (a join waiting for its hook) that panics: that join is
    // never answered, everything else goes on.
    let mut joiner = s.connect("/joined");
    send_text(&mut joiner, r#"{"command":"join","topics":["j"]}"#);
    assert!(eventually(Duration::from_secs(5), || panics(&s, "shard_task") == 1));
    still_served(&s, &mut calm, "after a shard task panicked");

    // A push whose handling in the shard's inbox panics: the API answers
    // instead of hanging (a dropped reply reads as 404 "not connected", as
    // for a shard that is gone), and the inbox takes the next message.
    let _proxied = s.connect("/p/c1");
    assert!(eventually(Duration::from_secs(5), || {
        let (status, body) = http_post(&s.url("/c1"), "text/plain", b"hello");
        assert_ne!(status, 200, "{body}");
        panics(&s, "inbox") > 0
    }));
    still_served(&s, &mut calm, "after the inbox panicked");
    assert!(s.log().contains("a panic was contained; serving on"), "{}", s.log());
}

#[test]
fn a_panicking_hook_call_on_the_integration_thread_is_contained() {
    let backend = Backend::start(|_| Answer::new(200, "ok"));
    let config = format!(
        "[[vhost]]\npath = \"/ws\"\ndialect = \"roadrunner\"\n\
         [[vhost]]\npath = \"/hooked\"\ndialect = \"roadrunner\"\n[vhost.hooks]\nconnect = \"{}/connect\"\n",
        backend.url()
    );
    let s = Server::start_env(&config, 1, &[("RINGCAST_INJECT_PANIC", "integration")]);
    let mut calm = s.connect("/ws");
    join(&mut calm, &["t"]);
    for round in 1..=3 {
        let (status, body) = refusal_of(try_connect(s.ws, "/hooked", &[]));
        assert!((500..600).contains(&status), "round {round}: {status} {body}");
        assert_eq!(panics(&s, "integration"), round);
    }
    assert!(backend.seen().is_empty(), "no hook call got through");
    // The API, the shard and the integration thread's other work go on.
    still_served(&s, &mut calm, "after three hook tasks panicked");
}

/// A hook URL whose server takes each connection and resets it at once.
fn resetting_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        }
    });
    format!("http://{addr}/reset")
}

/// docs/security.md's limits against the abuse each one is for, all at
/// once on one shard: hooks that hang, fail or reset, a slowloris client,
/// a client that never reads, one that floods, 2,000 connections that send
/// nothing. Each is cut off by its limit, and 1,000 subscribers on the same
/// shard get every publication, in order.
#[test]
fn abusers_are_cut_off_while_1000_subscribers_get_every_publication_in_order() {
    let backend = Backend::start(|seen| match seen.path.as_str() {
        "/hang" => Answer::new(200, "ok").after(Duration::from_secs(20)),
        _ => Answer::new(500, "backend failure"),
    });
    let url = backend.url();
    let config = format!(
        "[server]\nsend_buffer = 8192\n[limits]\nhandshake_timeout_ms = 2000\nmax_backpressure = 65536\nmessages_per_s = 50\n\
         [[vhost]]\npath = \"/ws\"\ndialect = \"roadrunner\"\n\
         [[vhost]]\npath = \"/hang\"\ndialect = \"roadrunner\"\n[vhost.hooks]\nconnect = \"{url}/hang\"\ntimeout_ms = 1000\n\
         [[vhost]]\npath = \"/fail\"\ndialect = \"roadrunner\"\n[vhost.hooks]\nconnect = \"{url}/fail\"\n\
         [[vhost]]\npath = \"/reset\"\ndialect = \"roadrunner\"\n[vhost.hooks]\nconnect = \"{}\"\nretries = 0\n",
        resetting_server()
    );
    let s = Server::start(&config, 1);
    let mut subscribers: Vec<Ws> = (0..1000)
        .map(|_| {
            let mut ws = s.connect("/ws");
            join(&mut ws, &["t"]);
            ws
        })
        .collect();

    // The abusers, all at once.
    let silent: Vec<std::net::TcpStream> =
        (0..2000).map(|_| std::net::TcpStream::connect(s.ws).unwrap()).collect();
    let ws_addr = s.ws;
    let slowloris =
        std::thread::spawn(move || slowloris(ws_addr, b"GET /ws HTTP/1.1\r\n", b"X-Slow: aaaaaaaa\r\n"));
    let _never_reads = stalled_subscriber(&s, "big");
    let mut flood = s.connect("/ws");
    let flooder = std::thread::spawn(move || {
        for _ in 0..1000 {
            if flood.send(tungstenite::Message::text(r#"{"command":"headers"}"#)).is_err() {
                break;
            }
        }
        set_timeout(&mut flood, Duration::from_secs(10));
        close_of(&mut flood)
    });
    let hooks: Vec<_> = ["/hang", "/fail", "/reset"]
        .into_iter()
        .map(|path| std::thread::spawn(move || (path, refusal_of(try_connect(ws_addr, path, &[])))))
        .collect();

    // Publications meanwhile: small ones for the subscribers, large ones
    // for the client that never reads.
    let big = "x".repeat(32 * 1024);
    for i in 0..100 {
        assert_eq!(s.publish_json(&format!(r#"{{"topics":["t"],"payload":"m{i}"}}"#)).0, 200);
        if i % 2 == 0 {
            assert_eq!(s.publish_json(&format!(r#"{{"topics":["big"],"payload":"{big}"}}"#)).0, 200);
        }
    }

    for (n, ws) in subscribers.iter_mut().enumerate() {
        for i in 0..100 {
            assert_eq!(recv_text(ws), format!(r#"{{"topic":"t","payload":"m{i}"}}"#), "subscriber {n}");
        }
    }
    let (took, answer) = slowloris.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "slowloris got {answer:?} after {took:?}");
    assert!(took < Duration::from_secs(5), "slowloris held on for {took:?}");
    assert_eq!(flooder.join().unwrap(), (1008, "rate limit".to_string()));
    for hook in hooks {
        let (path, (status, body)) = hook.join().unwrap();
        let want = match path {
            "/hang" => 504,
            "/fail" => 500,
            _ => 502,
        };
        assert_eq!(status, want, "{path}: {body}");
    }
    assert!(eventually(Duration::from_secs(10), || s.metric("ringcast_slow_consumer_closes_total") == 1));
    // The silent 2,000 (and the slowloris) are closed at the handshake deadline.
    assert!(
        eventually(Duration::from_secs(10), || {
            s.metric("ringcast_handshakes_refused_total{shard=\"0\",reason=\"timeout\"}") >= 2001
        }),
        "{}",
        http_get(&s.url("/metrics"))
            .1
            .lines()
            .filter(|l| l.contains("refused"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(silent);
    assert!(eventually(Duration::from_secs(10), || s.metric("ringcast_connections") == 1000));
}
