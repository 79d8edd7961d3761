//! Abuse limits (`[limits]`, `server.trusted_proxies`) through the real
//! binary: each limit triggered over a real socket, answered with its
//! status or close code and counted in `ringcast_limited_total`, while a
//! client from another loopback address is not touched by it.

mod common;

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::time::Duration;

use common::*;

const OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const THIRD: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

fn limited(s: &Server, limit: &str) -> u64 {
    let text = http_get(&s.url("/metrics")).1;
    text.lines()
        .filter(|l| l.starts_with("ringcast_limited_total{") && l.contains(&format!("limit=\"{limit}\"")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// A subscriber to `topic` from `source` that must see `payload`.
fn assert_delivered(s: &Server, ws: &mut Ws, topic: &str, payload: &str) {
    let body = format!(r#"{{"topics":["{topic}"],"payload":"{payload}"}}"#);
    assert_eq!(s.publish_json(&body).0, 200);
    assert_eq!(recv_text(ws), format!(r#"{{"topic":"{topic}","payload":"{payload}"}}"#));
}

#[test]
fn connections_per_address_are_capped_with_429_across_shards() {
    let s = Server::start(&roadrunner_config("[limits]\nmax_connections_per_ip = 3\n"), 2);
    let mut held: Vec<Ws> = (0..3).map(|_| s.connect("/ws")).collect();
    let (status, body) = refusal_of(try_connect(s.ws, "/ws", &[]));
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("limits.max_connections_per_ip = 3"), "{body}");
    // The answer says when to come back.
    let raw = raw_exchange(s.ws, upgrade_request("/ws").as_bytes(), Duration::from_secs(2));
    let head = String::from_utf8_lossy(&raw);
    assert!(head.starts_with("HTTP/1.1 429") && head.contains("Retry-After: 1\r\n"), "{head}");

    // Another address is not touched by it.
    let mut other = try_connect_from(OTHER, s.ws, "/ws", &[]).expect("another address connects");
    join(&mut other, &["t"]);
    assert_delivered(&s, &mut other, "t", "still served");
    assert_eq!(limited(&s, "connections_per_ip"), 2);

    // A closed connection gives its place back.
    held.pop().unwrap().close(None).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || try_connect(s.ws, "/ws", &[]).map(|ws| held.push(ws)).is_ok()),
        "the freed place is taken again"
    );
    assert_eq!(refusal_of(try_connect(s.ws, "/ws", &[])).0, 429);
}

#[test]
fn handshakes_per_address_per_second_are_capped_with_429() {
    let s = Server::start(&roadrunner_config("[limits]\nhandshakes_per_ip_per_s = 5\n"), 1);
    let mut admitted = 0;
    let mut refused = Vec::new();
    for _ in 0..30 {
        match try_connect(s.ws, "/ws", &[]) {
            Ok(_) => admitted += 1,
            Err(e) => refused.push(refusal_of(Err(e))),
        }
    }
    // Five at once, then one per 200 ms: a quick loop gets few more.
    assert!((5..=15).contains(&admitted), "{admitted} of 30 admitted");
    assert!(refused.iter().all(|(status, _)| *status == 429), "{refused:?}");
    assert!(refused[0].1.contains("limits.handshakes_per_ip_per_s = 5"), "{}", refused[0].1);
    assert_eq!(limited(&s, "handshakes_per_ip"), refused.len() as u64);
    // Not another address's, and the bucket refills.
    assert!(try_connect_from(OTHER, s.ws, "/ws", &[]).is_ok());
    std::thread::sleep(Duration::from_millis(1200));
    assert!(try_connect(s.ws, "/ws", &[]).is_ok(), "a second later the address may connect again");
}

#[test]
fn a_flooding_client_is_closed_1008_while_its_neighbours_are_served() {
    let config = roadrunner_config("[limits]\nmessages_per_s = 20\nmessages_burst = 10\n");
    let s = Server::start(&config, 1);
    let mut calm = s.connect("/ws");
    join(&mut calm, &["t"]);
    let mut flood = s.connect("/ws");
    // Ten at once is the burst: all answered.
    for _ in 0..10 {
        send_text(&mut flood, r#"{"command":"bogus"}"#);
    }
    for _ in 0..10 {
        assert!(recv_text(&mut flood).starts_with(r##"{"topic":"#error""##));
    }
    // A client that keeps to the rate stays.
    for i in 0..6 {
        std::thread::sleep(Duration::from_millis(100));
        send_text(&mut calm, &format!(r#"{{"command":"join","topics":["t{i}"]}}"#));
        assert_eq!(recv_text(&mut calm), format!(r#"{{"topic":"@join","payload":["t{i}"]}}"#));
    }
    // Past the bucket: Close 1008 "rate limit".
    for _ in 0..200 {
        if flood.send(tungstenite::Message::text(r#"{"command":"bogus"}"#)).is_err() {
            break;
        }
    }
    set_timeout(&mut flood, Duration::from_secs(5));
    assert_eq!(close_of(&mut flood), (1008, "rate limit".to_string()));
    assert!(eventually(Duration::from_secs(5), || limited(&s, "messages_per_s") == 1));
    assert_delivered(&s, &mut calm, "t", "after the flood");
}

#[test]
fn topic_length_is_limited_for_joins_and_publishes() {
    let s = Server::start(&roadrunner_config("[limits]\nmax_topic_length = 8\n"), 1);
    let mut ws = s.connect("/ws");
    send_text(&mut ws, r#"{"command":"join","topics":["123456789"]}"#);
    assert_eq!(recv_text(&mut ws), r##"{"topic":"#join","payload":["123456789"]}"##);
    assert_eq!(limited(&s, "topic_length"), 1);
    join(&mut ws, &["12345678"]);
    let (status, body) = s.publish_json(r#"{"topics":["123456789"],"payload":"x"}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("1 to 8 bytes (limits.max_topic_length)"), "{body}");
    assert_delivered(&s, &mut ws, "12345678", "fits");
}

#[test]
fn forwarded_for_counts_only_from_a_trusted_proxy() {
    let config = roadrunner_config(
        "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[limits]\nmax_connections_per_ip = 1\n",
    );
    let s = Server::start(&config, 1);
    // 127.0.0.1 is the proxy: the client is the last X-Forwarded-For entry.
    let via = |client: &'static str| [("X-Forwarded-For", client)];
    let _a = try_connect(s.ws, "/ws", &via("198.51.100.9, 203.0.113.7")).expect("first client via the proxy");
    let (status, _) = refusal_of(try_connect(s.ws, "/ws", &via("203.0.113.7")));
    assert_eq!(status, 429, "the same forwarded client is counted");
    let _b = try_connect(s.ws, "/ws", &via("203.0.113.8")).expect("another forwarded client");
    let _c =
        try_connect(s.ws, "/ws", &[("X-Real-IP", "203.0.113.9")]).expect("X-Real-IP without X-Forwarded-For");

    // 127.0.0.2 is not a proxy: its headers name nobody, its own address counts.
    let _d = try_connect_from(OTHER, s.ws, "/ws", &via("203.0.113.50")).expect("first from 127.0.0.2");
    let (status, _) = refusal_of(try_connect_from(OTHER, s.ws, "/ws", &via("203.0.113.51")));
    assert_eq!(status, 429, "a forged X-Forwarded-For does not buy another place");
    let _e = try_connect_from(THIRD, s.ws, "/ws", &[]).expect("127.0.0.3 is its own address");
}

/// Reads until the end of an HTTP response head; returns its status line.
fn status_line(stream: &mut std::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_string()
}

#[test]
fn with_no_limits_set_one_address_gets_1200_connections_and_a_burst_of_300() {
    let s = Server::start(&roadrunner_config(""), 2);
    let mut held = raw_upgrades(s.ws, "/ws", 1200);
    for (i, c) in held.iter_mut().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        assert_eq!(status_line(c), "HTTP/1.1 101 Switching Protocols", "connection {i}");
    }
    // 300 upgrade requests written before any answer is read.
    let mut burst: Vec<_> = (0..300).map(|_| std::net::TcpStream::connect(s.ws).unwrap()).collect();
    for c in &mut burst {
        c.write_all(upgrade_request("/ws").as_bytes()).unwrap();
    }
    for (i, c) in burst.iter_mut().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        assert_eq!(status_line(c), "HTTP/1.1 101 Switching Protocols", "burst {i}");
    }
    assert!(eventually(Duration::from_secs(10), || s.metric("ringcast_connections") == 1500));
    assert_eq!(limited(&s, "connections_per_ip") + limited(&s, "handshakes_per_ip"), 0);
}
