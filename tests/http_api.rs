//! docs/protocols.md §6: the HTTP API listener.

mod common;

use common::*;
use prost::Message as _;
use ringcast::rpc::proto::broadcast;

#[test]
fn publish_json_text_base64_and_protobuf() {
    let s = Server::start("", 2);
    let mut ws = s.connect("/ws");
    join(&mut ws, &["t"]);
    assert_eq!(s.publish_json(r#"{"topics":["t"],"payload":"plain ✓"}"#), (200, r#"{"ok":true}"#.into()));
    assert_eq!(recv_text(&mut ws), r#"{"topic":"t","payload":"plain ✓"}"#);
    assert_eq!(s.publish_json(r#"{"topics":["t"],"payload_base64":"aGk="}"#).0, 200);
    assert_eq!(recv_text(&mut ws), r#"{"topic":"t","payload":"hi"}"#);
    let body = broadcast::Request {
        messages: vec![broadcast::Message {
            command: String::new(),
            topics: vec!["t".into()],
            payload: b"pb".to_vec(),
        }],
    }
    .encode_to_vec();
    let (status, reply) = http_post(&s.url("/publish"), "application/x-protobuf", &body);
    assert_eq!((status, reply.as_str()), (200, r#"{"ok":true}"#));
    assert_eq!(recv_text(&mut ws), r#"{"topic":"t","payload":"pb"}"#);
    assert_eq!(s.metric("ringcast_published_messages_total"), 3);
}

#[test]
fn bad_requests_name_the_problem() {
    let s = Server::start("[rpc]\nmax_frame_size = 1000\n", 1);
    let cases: [(&str, &str); 6] = [
        ("{", "invalid JSON body"),
        (r#"{"topics":[],"payload":"x"}"#, "no topics"),
        (r#"{"topics":["t"]}"#, "missing \\\"payload\\\""),
        (r#"{"topics":["t"],"payload":"x","payload_base64":"eA=="}"#, "not both"),
        (r#"{"topics":["t"],"payload_base64":"!!"}"#, "not base64"),
        (r#"{"topics":["t"],"payload":"x","colour":1}"#, "colour"),
    ];
    for (body, needle) in cases {
        let (status, reply) = s.publish_json(body);
        assert_eq!(status, 400, "{body}");
        assert!(reply.contains(needle), "{body}: {reply}");
        assert!(reply.starts_with(r#"{"error":"#), "{reply}");
    }
    let (status, reply) = http_post(&s.url("/publish"), "application/x-protobuf", &[0xff, 0xff]);
    assert_eq!(status, 400);
    assert!(reply.contains("broadcast.v1.Request"), "{reply}");
    let (status, _) = s.publish_json(&format!(r#"{{"topics":["t"],"payload":"{}"}}"#, "x".repeat(2000)));
    assert_eq!(status, 413);
    assert_eq!(http_get(&s.url("/publish")).0, 405);
    assert_eq!(http_get(&s.url("/nope")).0, 404);
    assert_eq!(s.metric("ringcast_http_publish_errors_total"), 8);
}

#[test]
fn health_and_metrics() {
    let s = Server::start("", 2);
    assert_eq!(http_get(&s.url("/health")), (200, r#"{"status":"ok"}"#.into()));
    let _a = s.connect("/ws");
    let (status, text) = http_get(&s.url("/metrics"));
    assert_eq!(status, 200);
    for series in [
        "ringcast_connections{shard=\"0\"}",
        "ringcast_connections{shard=\"1\"}",
        "ringcast_messages_in_total{shard=\"0\"}",
        "ringcast_messages_out_total{shard=\"1\"}",
        "ringcast_bytes_out_total{shard=\"0\"}",
        "ringcast_slow_consumer_closes_total{shard=\"1\"}",
    ] {
        assert!(text.contains(series), "missing {series}");
    }
    assert_eq!(s.metric("ringcast_connections"), 1);
}

/// One large payload to many topics would be encoded once per topic: the
/// request is refused whole, with the limit named, before anything is built.
#[test]
fn publish_amplification_is_refused_with_the_limit_named() {
    let s = Server::start("[limits]\nmax_publish_topics = 5\nmax_publish_bytes = 1048576\n", 1);
    let mut ws = s.connect("/ws");
    join(&mut ws, &["t0"]);
    let topics: Vec<String> = (0..4).map(|i| format!("t{i}")).collect();
    let big = serde_json::json!({"topics": topics, "payload": "x".repeat(300_000)}).to_string();
    let (status, body) = s.publish_json(&big);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("limits.max_publish_bytes"), "{body}");
    let six = serde_json::json!({"topics": ["a", "b", "c", "d", "e", "f"], "payload": "x"}).to_string();
    let (status, body) = s.publish_json(&six);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("limits.max_publish_topics"), "{body}");
    // Within the limits it goes through, and nothing of the refused ones did.
    assert_eq!(s.publish_json(r#"{"topics":["t0"],"payload":"ok"}"#).0, 200);
    assert_eq!(recv_text(&mut ws), r#"{"topic":"t0","payload":"ok"}"#);
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

#[test]
fn slow_request_heads_and_bodies_are_cut_off_at_the_request_timeout() {
    use std::time::Duration;
    let s = Server::start("[server]\napi_request_timeout_ms = 1000\n", 1);
    let (took, _) =
        slowloris(s.api, b"POST /publish HTTP/1.1\r\nHost: x\r\n", b"X-Slow: aaaaaaaaaaaaaaaa\r\n");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "head: closed after {took:?}"
    );
    let (took, answer) = slowloris(
        s.api,
        b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n",
        b"{",
    );
    assert!(took < Duration::from_millis(2500), "body: closed after {took:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("server.api_request_timeout_ms"), "{answer}");
    // The API still serves.
    assert_eq!(http_get(&s.url("/health")).0, 200);
}
