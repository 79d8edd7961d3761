//! PROTOCOLS.md §7: the HTTP API listener.

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
