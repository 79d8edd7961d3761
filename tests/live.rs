//! The live view (docs/metrics.md): measurements moving with real traffic,
//! `/stats`, the `/stats/stream` events, `ctl monitor`, the operator routes'
//! auth and the CPU profile.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::*;
use serde_json::Value;

const TOKEN: &str = "live-view-admin-token-0123456789";

/// The value of one series (name with its labels, as written) in `/metrics`.
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Sums a metric over all its label sets.
fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn metrics(s: &Server) -> String {
    http_get(&s.url("/metrics")).1
}

fn stats(s: &Server) -> Value {
    let (status, body) = http_get(&s.url("/stats"));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn measurements_move_with_a_real_subscriber_and_publications() {
    let s = Server::start(&roadrunner_config(""), 2);
    // Refused upgrades by reason: a path no vhost serves.
    let refused = raw_exchange(s.ws, upgrade_request("/nowhere").as_bytes(), Duration::from_secs(2));
    assert!(String::from_utf8_lossy(&refused).starts_with("HTTP/1.1 404"));
    let mut ws = s.connect("/ws");
    join(&mut ws, &["news"]);
    // One at a time, each read before the next: every publication is
    // followed to its socket (one probe in flight per shard).
    for i in 0..3 {
        let (status, body) = s.publish_json(&format!(r#"{{"topics":["news"],"payload":"m{i}"}}"#));
        assert_eq!(status, 200, "{body}");
        assert_eq!(recv_text(&mut ws), format!(r#"{{"topic":"news","payload":"m{i}"}}"#));
    }
    // Shards publish their measurements once a second.
    let mut text = String::new();
    assert!(
        eventually(Duration::from_secs(5), || {
            text = metrics(&s);
            sum(&text, "ringcast_publish_to_socket_seconds_count") == 3.0
                && series(&text, "ringcast_top_topic_subscribers{topic=\"news\"}") == Some(1.0)
        }),
        "{text}"
    );
    // Loopback, an idle gateway: well under the first buckets' bounds.
    assert_eq!(
        sum(&text, "ringcast_publish_to_socket_seconds_bucket{shard=\"0\",le=\"0.25\"}")
            + sum(&text, "ringcast_publish_to_socket_seconds_bucket{shard=\"1\",le=\"0.25\"}"),
        3.0
    );
    let latency_sum = sum(&text, "ringcast_publish_to_socket_seconds_sum");
    assert!(latency_sum > 0.0 && latency_sum < 0.75, "{latency_sum}");
    // The stall detector: every shard took the three publications from its
    // inbox (each shard gets every publication), promptly on an idle gateway.
    for shard in 0..2 {
        let inbox = format!("ringcast_shard_stall_seconds_count{{shard=\"{shard}\",where=\"inbox\"}}");
        assert_eq!(series(&text, &inbox), Some(3.0), "{text}");
        let le =
            format!("ringcast_shard_stall_seconds_bucket{{shard=\"{shard}\",where=\"inbox\",le=\"0.25\"}}");
        assert_eq!(series(&text, &le), Some(3.0), "{text}");
    }
    let view = stats(&s);
    assert_eq!(view["shards"][0]["stall_ms"]["inbox"]["count"], 3, "{view}");
    let driver_waits: u64 =
        (0..2).map(|i| view["shards"][i]["stall_ms"]["driver"]["count"].as_u64().unwrap()).sum();
    assert!(driver_waits >= 1, "the subscriber's shard woke its driver to write: {view}");
    // The join reply and three deliveries each started a write.
    assert!(sum(&text, "ringcast_send_queue_depth_bytes_count") >= 4.0, "{text}");
    assert_eq!(sum(&text, "ringcast_vhost_connections"), 1.0);
    let shard = (0..2).find(|i| {
        series(
            &text,
            &format!("ringcast_vhost_connections{{shard=\"{i}\",vhost=\"/ws\",dialect=\"roadrunner\"}}"),
        ) == Some(1.0)
    });
    assert!(shard.is_some(), "{text}");
    assert_eq!(sum(&text, "ringcast_topics"), 1.0);
    assert_eq!(sum(&text, "ringcast_handshakes_refused_total"), 1.0);
    assert_eq!(
        sum(&text, "ringcast_handshakes_refused_total{shard=\"0\",reason=\"not_found\"}")
            + sum(&text, "ringcast_handshakes_refused_total{shard=\"1\",reason=\"not_found\"}"),
        1.0
    );
    let snapshot = stats(&s);
    assert_eq!(snapshot["totals"]["connections"], 1);
    assert_eq!(snapshot["publish_to_socket_ms"]["count"], 3);
    assert!(snapshot["publish_to_socket_last_second_ms"]["count"].as_u64().unwrap() <= 3);
    assert!(snapshot["publish_to_socket_ms"]["p99"].as_f64().unwrap() > 0.0);
    assert_eq!(snapshot["refused"]["not_found"], 1);
    assert_eq!(snapshot["vhosts"][0]["path"], "/ws");
    assert_eq!(snapshot["vhosts"][0]["connections"], 1);
    assert_eq!(snapshot["top_topics_by_subscribers"][0]["topic"], "news");

    // Gone: the per-vhost gauge and the topic follow.
    drop(ws);
    assert!(eventually(Duration::from_secs(5), || {
        text = metrics(&s);
        sum(&text, "ringcast_vhost_connections") == 0.0 && sum(&text, "ringcast_topics") == 0.0
    }));
}

#[test]
fn topics_are_ranked_by_subscribers_and_by_message_rate() {
    let s = Server::start(&roadrunner_config(""), 1);
    let mut crowd: Vec<Ws> = (0..3).map(|_| s.connect("/ws")).collect();
    for ws in &mut crowd {
        join(ws, &["crowded"]);
    }
    let mut busy = s.connect("/ws");
    join(&mut busy, &["busy"]);
    stats(&s); // someone looks: shards rank their topics from now on
    for i in 0..20 {
        s.publish_json(&format!(r#"{{"topics":["busy"],"payload":"{i}"}}"#));
        recv_text(&mut busy);
    }
    let mut snapshot = Value::Null;
    assert!(
        eventually(Duration::from_secs(5), || {
            snapshot = stats(&s);
            snapshot["top_topics_by_rate"][0]["topic"] == "busy"
        }),
        "{snapshot}"
    );
    let by_subscribers = &snapshot["top_topics_by_subscribers"];
    assert_eq!(by_subscribers[0]["topic"], "crowded");
    assert_eq!(by_subscribers[0]["subscribers"], 3);
    assert_eq!(by_subscribers[1]["topic"], "busy");
    assert!(snapshot["top_topics_by_rate"][0]["messages_per_second"].as_f64().unwrap() > 0.0);
}

#[test]
fn the_event_stream_yields_a_snapshot_a_second_with_rates() {
    let s = Server::start(&roadrunner_config(""), 2);
    let mut ws = s.connect("/ws");
    join(&mut ws, &["t"]);
    let response = ureq::get(&s.url("/stats/stream")).call().unwrap();
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    let mut lines = BufReader::new(response.into_reader()).lines();
    let mut events = Vec::new();
    let mut event_name = String::new();
    while events.len() < 3 {
        let line = lines.next().expect("the stream goes on").unwrap();
        if let Some(name) = line.strip_prefix("event: ") {
            event_name = name.to_string();
        } else if let Some(data) = line.strip_prefix("data: ") {
            assert_eq!(event_name, "snapshot");
            events.push(serde_json::from_str::<Value>(data).expect("each event is one JSON object"));
            if events.len() == 1 {
                s.publish_json(r#"{"topics":["t"],"payload":"x"}"#);
                recv_text(&mut ws);
            }
        } else {
            assert_eq!(line, "", "only event, data and blank lines");
        }
    }
    assert!(events[0].get("rates").is_none(), "the first has nothing to compare with");
    for e in &events {
        assert_eq!(e["totals"]["connections"], 1);
        assert_eq!(e["shards"].as_array().unwrap().len(), 2);
        assert_eq!(e["health"]["status"], "ok");
    }
    let (t1, t2) = (events[1]["unix_ms"].as_u64().unwrap(), events[2]["unix_ms"].as_u64().unwrap());
    assert!((900..=3000).contains(&(t2 - t1)), "a snapshot a second: {t1} → {t2}");
    let out: f64 = events[1..].iter().map(|e| e["rates"]["messages_out"].as_f64().unwrap()).sum();
    assert!(out > 0.0, "the delivery shows in a rate: {:?}", &events[1..]);
    assert_eq!(events[2]["totals"]["published"], 1);
}

#[test]
fn ctl_monitor_once_json_matches_metrics() {
    let s = Server::start(&roadrunner_config(""), 2);
    let mut clients: Vec<Ws> = connect_until_spread(&s, 2, |_| s.connect("/ws"));
    for ws in &mut clients {
        join(ws, &["m"]);
    }
    s.publish_json(r#"{"topics":["m"],"payload":"x"}"#);
    for ws in &mut clients {
        recv_text(ws);
    }
    // Quiet from here; wait until the shards' measurements include it.
    assert!(eventually(Duration::from_secs(5), || stats(&s)["publish_to_socket_ms"]["count"] == 2));
    let out = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["ctl", "--api", &format!("http://{}", s.api), "monitor", "--once", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let text = metrics(&s);
    for shard in m["shards"].as_array().unwrap() {
        let i = shard["shard"].as_u64().unwrap();
        for (json_key, metric) in [
            ("connections", "ringcast_connections"),
            ("subscriptions", "ringcast_subscriptions"),
            ("messages_in", "ringcast_messages_in_total"),
            ("messages_out", "ringcast_messages_out_total"),
            ("bytes_out", "ringcast_bytes_out_total"),
            ("topics", "ringcast_topics"),
        ] {
            let want = series(&text, &format!("{metric}{{shard=\"{i}\"}}")).unwrap();
            assert_eq!(shard[json_key].as_f64().unwrap(), want, "shard {i} {json_key}");
        }
    }
    assert_eq!(m["totals"]["connections"].as_f64().unwrap(), sum(&text, "ringcast_connections"));
    assert_eq!(m["totals"]["published"].as_f64().unwrap(), sum(&text, "ringcast_published_messages_total"));
    assert_eq!(
        m["publish_to_socket_ms"]["count"].as_f64().unwrap(),
        sum(&text, "ringcast_publish_to_socket_seconds_count")
    );
    assert_eq!(m["totals"]["refused"].as_f64().unwrap(), sum(&text, "ringcast_handshakes_refused_total"));
    // The text form names the same numbers.
    let out = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["ctl", "--api", &format!("http://{}", s.api), "monitor", "--once"])
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    let n = clients.len();
    assert!(screen.contains(&format!("connections {n} ")), "{screen}");
    assert!(screen.contains(&format!("{:<32} {:<11} {n:>12}", "/ws", "roadrunner")), "{screen}");
}

#[test]
fn operator_routes_take_the_admin_token_as_bearer_or_basic_auth() {
    let config = roadrunner_config(&format!("[server]\nadmin_token = \"{TOKEN}\"\n"));
    let s = Server::start(&config, 1);
    for path in ["/stats", "/dashboard", "/stats/stream", "/debug/pprof/profile?seconds=1"] {
        match ureq::get(&s.url(path)).call() {
            Err(ureq::Error::Status(401, r)) => {
                assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"ringcast\", charset=\"UTF-8\""))
            }
            other => panic!("{path} without the token: {:?}", other.map(|r| r.status())),
        }
    }
    let wrong = base64::engine::general_purpose::STANDARD.encode("ops:wrong");
    let err = ureq::get(&s.url("/stats")).set("Authorization", &format!("Basic {wrong}")).call();
    assert!(matches!(err, Err(ureq::Error::Status(401, _))));
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("ops:{TOKEN}"));
    let page =
        ureq::get(&s.url("/dashboard")).set("Authorization", &format!("Basic {basic}")).call().unwrap();
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    let html = page.into_string().unwrap();
    assert!(html.contains("stats/stream") && !html.contains("http://") && !html.contains("https://"));
    let r = ureq::get(&s.url("/stats")).set("Authorization", &format!("Bearer {TOKEN}")).call().unwrap();
    assert_eq!(r.status(), 200);
    // ctl monitor carries the token.
    let out = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["ctl", "--api", &format!("http://{}", s.api), "--token", TOKEN, "monitor", "--once", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["ctl", "--api", &format!("http://{}", s.api), "monitor", "--once"])
        .env_remove("RINGCAST_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 401"));

    // Without an admin token the views are open, the profiler is off.
    let open = Server::start(&roadrunner_config(""), 1);
    assert_eq!(http_get(&open.url("/dashboard")).0, 200);
    let (status, body) = http_get(&open.url("/debug/pprof/profile?seconds=1"));
    assert_eq!(status, 404);
    assert!(body.contains("server.admin_token"), "{body}");
}

#[test]
fn the_profile_is_a_flamegraph_naming_ringcast_functions() {
    let config = roadrunner_config(&format!("[server]\nadmin_token = \"{TOKEN}\"\n"));
    let s = Server::start(&config, 2);
    let bad = ureq::get(&s.url("/debug/pprof/profile?seconds=0"))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .call();
    assert!(matches!(bad, Err(ureq::Error::Status(400, _))));
    // Traffic while it samples, so the shards have work to be seen doing.
    let mut ws = s.connect("/ws");
    join(&mut ws, &["p"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, url) = (stop.clone(), s.url("/publish"));
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                http_post(&url, "application/json", br#"{"topics":["p"],"payload":"load"}"#);
                n += 1;
            }
            n
        })
    };
    let reader = std::thread::spawn(move || {
        set_timeout(&mut ws, Duration::from_secs(1));
        while ws.read().is_ok() {}
    });
    let profile = ureq::get(&s.url("/debug/pprof/profile?seconds=2"))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .timeout(Duration::from_secs(60))
        .call()
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(load.join().unwrap() > 0);
    let _ = reader.join();
    assert_eq!(profile.header("content-type"), Some("image/svg+xml"));
    let svg = profile.into_string().unwrap();
    assert!(svg.starts_with("<?xml") && svg.contains("<svg"), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.contains("ringcast::"), "the flamegraph names no ringcast function");
}

#[test]
fn hook_calls_carry_request_ids_and_connections_are_logged_at_debug() {
    let backend = common::backend::Backend::start(|seen| match seen.method.as_str() {
        "GET" => common::backend::Answer::new(200, "ok"),
        _ => common::backend::Answer::new(200, ""),
    });
    let config = format!("[[vhost]]\npath = \"/c/\"\ndialect = \"proxy\"\nbackend = \"{}\"\n", backend.url());
    let s = Server::start_with(&config, 1, "ringcast=debug", false);
    let mut ws = s.connect("/c/alice");
    send_text(&mut ws, "hello");
    drop(ws);
    // connect, message, close: three calls, three different ids.
    assert!(eventually(Duration::from_secs(5), || backend.seen().len() == 3), "{:?}", backend.seen());
    let ids: Vec<String> = backend
        .seen()
        .iter()
        .map(|r| r.header("x-request-id").expect("every call has an id").to_string())
        .collect();
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2], "{ids:?}");
    let log = || s.log();
    assert!(
        eventually(Duration::from_secs(5), || ids.iter().all(|id| log().contains(id.as_str()))),
        "each id is logged with its call:\n{}",
        log()
    );
    let text = log();
    let open = text.lines().find(|l| l.contains("connection open")).expect("open logged");
    assert!(
        open.contains("vhost=/c/") && open.contains("shard=0") && open.contains("peer=Some(127.0.0.1:"),
        "{open}"
    );
    assert!(open.contains("client=\"alice\""), "{open}");
    assert!(text.lines().any(|l| l.contains("connection closed") && l.contains("vhost=/c/")), "{text}");
}
