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

const API_TOKEN: &str = "api-token-0123456789abcdef";

/// (status, body) of a request with an optional bearer token.
fn call(method: &str, url: &str, token: Option<&str>, body: Option<&[u8]>) -> (u16, String) {
    let mut req = ureq::request(method, url).set("Content-Type", "application/json");
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let result = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    match result {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("{method} {url}: {e}"),
    }
}

#[test]
fn with_an_api_token_publish_push_and_metrics_need_it() {
    let s = Server::start(&roadrunner_config(&format!("[server]\napi_token = \"{API_TOKEN}\"\n")), 1);
    let mut ws = s.connect("/ws");
    join(&mut ws, &["t"]);
    let body = br#"{"topics":["t"],"payload":"x"}"#;
    for token in [None, Some("wrong"), Some("api-token-0123456789abcdeX"), Some("")] {
        let (status, reply) = call("POST", &s.url("/publish"), token, Some(body));
        assert_eq!(status, 401, "{token:?}: {reply}");
        assert!(reply.contains("server.api_token"), "{reply}");
        assert_eq!(call("POST", &s.url("/some-client"), token, Some(b"hi")).0, 401);
        assert_eq!(call("GET", &s.url("/metrics"), token, None).0, 401);
    }
    assert_silent(&mut ws, std::time::Duration::from_millis(200));
    assert_eq!(call("POST", &s.url("/publish"), Some(API_TOKEN), Some(body)).0, 200);
    assert_eq!(recv_text(&mut ws), r#"{"topic":"t","payload":"x"}"#);
    assert_eq!(call("POST", &s.url("/some-client"), Some(API_TOKEN), Some(b"hi")).0, 404);
    let (status, metrics) = call("GET", &s.url("/metrics"), Some(API_TOKEN), None);
    assert_eq!(status, 200);
    assert!(metrics.contains("ringcast_denied_total{reason=\"api_unauthorized\"} 12"), "{metrics}");
    // Health stays open for load balancers; the live views take the token too.
    assert_eq!(http_get(&s.url("/health")).0, 200);
    assert_eq!(call("GET", &s.url("/stats"), None, None).0, 401);
    assert_eq!(call("GET", &s.url("/stats"), Some(API_TOKEN), None).0, 200);
}

#[test]
fn a_push_larger_than_a_clients_budget_is_413() {
    let s = Server::start(&roadrunner_config("[limits]\nmax_backpressure = 4096\n"), 1);
    let (status, reply) = http_post(&s.url("/some-client"), "application/octet-stream", &[b'x'; 4097]);
    assert_eq!(status, 413, "{reply}");
    assert!(reply.contains("limits.max_backpressure"), "{reply}");
    let (status, _) = http_post(&s.url("/some-client"), "application/octet-stream", &[b'x'; 4096]);
    assert_eq!(status, 404, "within the budget: looked up (not connected)");
    assert!(http_get(&s.url("/metrics")).1.contains("ringcast_denied_total{reason=\"push_too_large\"} 1"));
}

#[test]
fn api_and_rpc_refuse_a_public_address_without_authentication() {
    let run = |config: &str, args: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, config).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .arg("--config")
            .arg(&path)
            .args(args)
            .arg("--check-config")
            .env_remove("RINGCAST_API_TOKEN")
            .output()
            .unwrap()
    };
    let out = run("", &["--api-listen", "0.0.0.0:0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.api_token") && err.contains("0.0.0.0:0"), "{err}");
    let out = run(&format!("[server]\napi_token = \"{API_TOKEN}\"\n"), &["--api-listen", "0.0.0.0:0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(!shown.contains(API_TOKEN) && shown.contains("<redacted>"), "{shown}");
    let out = run(&format!("[server]\napi_token = \"{API_TOKEN}\"\n"), &["--rpc-listen", "0.0.0.0:0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("goridge RPC"), "{err}");
    let out = run("[server]\nallow_unauthenticated_remote = true\n", &["--rpc-listen", "0.0.0.0:0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
