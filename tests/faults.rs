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
