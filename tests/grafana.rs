//! The Grafana dashboard (docs/grafana/ringcast.json) against a real
//! Prometheus scraping a real gateway under traffic: every panel's query
//! parses and runs, and the panels an operator looks at first have data.
//! scripts/test.sh installs Debian's prometheus when missing.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn query(prometheus: &str, expr: &str) -> Value {
    let url = format!(
        "{prometheus}/api/v1/query?{}",
        form_urlencoded::Serializer::new(String::new()).append_pair("query", expr).finish()
    );
    let text = match ureq::get(&url).call() {
        Ok(r) => r.into_string().unwrap(),
        Err(ureq::Error::Status(_, r)) => r.into_string().unwrap(),
        Err(e) => panic!("{url}: {e}"),
    };
    serde_json::from_str(&text).unwrap()
}

#[test]
fn every_grafana_panel_query_runs_and_the_main_ones_have_data() {
    let s = Server::start(&roadrunner_config(""), 2);
    let mut ws = s.connect("/ws");
    join(&mut ws, &["scores"]);
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (stop, url) = (stop.clone(), s.url("/publish"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                http_post(&url, "application/json", br#"{"topics":["scores"],"payload":"goal"}"#);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // Now and then an upgrade to a path nobody serves (refused, not_found).
    let refused = {
        let (stop, ws_addr) = (stop.clone(), s.ws);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = raw_exchange(ws_addr, upgrade_request("/nowhere").as_bytes(), Duration::from_secs(2));
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let reader = std::thread::spawn(move || {
        set_timeout(&mut ws, Duration::from_secs(2));
        while ws.read().is_ok() {}
    });

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: ringcast\n    \
             static_configs:\n      - targets: ['{}']\n",
            s.api
        ),
    )
    .unwrap();
    let port = free_port();
    let prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is not installed: run scripts/test.sh (it installs Debian's prometheus)");
    let _prometheus = Killed(prometheus);
    let base = format!("http://127.0.0.1:{port}");
    assert!(
        eventually(Duration::from_secs(30), || ureq::get(&format!("{base}/-/ready")).call().is_ok()),
        "prometheus never became ready"
    );

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana/ringcast.json")).unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let queries: Vec<(String, String)> = panels
        .iter()
        .flat_map(|p| {
            p["targets"].as_array().unwrap().iter().map(move |t| {
                let expr = t["expr"].as_str().unwrap().replace("$instance", ".*");
                (p["title"].as_str().unwrap().to_string(), expr)
            })
        })
        .collect();
    assert!(queries.len() >= 15, "{} queries", queries.len());

    // Rates and quantiles over [1m] need a few scrapes of moving counters.
    let has_data = |expr: &str| {
        let v = query(&base, expr);
        v["status"] == "success" && !v["data"]["result"].as_array().is_none_or(|r| r.is_empty())
    };
    let main = [
        "Connections by shard",
        "Connections by vhost",
        "Messages per second",
        "Publish → socket latency",
        "Send queue depth p99",
        "Refused upgrades per minute, by reason",
        "Hottest topics by subscribers",
        "Busiest topics (messages/s)",
    ];
    let mut missing = Vec::new();
    let ready = eventually(Duration::from_secs(60), || {
        missing = queries
            .iter()
            .filter(|(title, expr)| main.contains(&title.as_str()) && !has_data(expr))
            .map(|(title, expr)| format!("{title}: {expr}"))
            .collect();
        missing.is_empty()
    });
    let published = query(&base, "sum(rate(ringcast_published_messages_total[5s]))");
    let rate: f64 =
        published["data"]["result"][0]["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let rate_ok = ready && rate > 5.0;
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    refused.join().unwrap();
    let _ = reader.join();
    assert!(ready, "panels without data after 60 s:\n{}", missing.join("\n"));
    assert!(rate_ok, "about 20 publications a second, Prometheus says {rate}");
    for (title, expr) in &queries {
        let v = query(&base, expr);
        assert_eq!(v["status"], "success", "{title}: {expr}: {v}");
    }
    // The node picker's query.
    assert!(has_data("ringcast_build_info"));
}
