//! The dashboard (`GET /dashboard`) in headless Chromium against a real
//! gateway: it loads with no console errors, its numbers change once
//! clients connect and publications flow, and a screenshot is saved as
//! `target/dashboard.png`. scripts/test.sh installs chromium when missing.

mod common;

use std::time::Duration;

use base64::Engine;
use common::browser::open_page;
use common::*;
use serde_json::json;

const TOKEN: &str = "dashboard-admin-token-0123456789";
/// One every 50 ms: traffic still flows when the screenshot is taken.
const PUBLICATIONS: usize = 160;

fn text_of(page: &mut common::browser::Page, id: &str) -> String {
    // Before the page has loaded there is nothing to read yet.
    page.try_eval(&format!("(document.getElementById('{id}') || {{}}).textContent || ''"))
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn the_dashboard_shows_live_numbers_in_chromium() {
    let config = roadrunner_config(&format!("[server]\nadmin_token = \"{TOKEN}\"\n"));
    let s = Server::start(&config, 2);
    let dir = tempfile::tempdir().unwrap();
    // The token as Basic auth's password, given in the URL for the test;
    // a person gets the browser's login prompt (401 with Basic).
    let url = format!("http://ops:{TOKEN}@{}/dashboard", s.api);
    let (_chromium, mut page) = open_page(dir.path(), &url);
    let session = page.session.clone();
    page.call(
        Some(&session),
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": false }),
    );
    assert!(
        page.wait_until(
            "(document.getElementById('health') || {}).textContent === 'healthy'",
            Duration::from_secs(20)
        ),
        "the page never got a snapshot; errors: {:?}",
        page.errors
    );
    assert_eq!(text_of(&mut page, "c-connections"), "0");

    // Clients connect, subscribe, publications flow.
    let mut clients: Vec<Ws> = (0..5).map(|_| s.connect("/ws")).collect();
    for ws in &mut clients {
        join(ws, &["scores"]);
    }
    let publisher = {
        let url = s.url("/publish");
        std::thread::spawn(move || {
            for i in 0..PUBLICATIONS {
                let body = format!(r#"{{"topics":["scores"],"payload":"goal {i}"}}"#);
                http_post(&url, "application/json", body.as_bytes());
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let reader = std::thread::spawn(move || {
        for ws in &mut clients {
            for _ in 0..PUBLICATIONS {
                recv_text(ws);
            }
        }
        clients
    });
    assert!(
        page.wait_until(
            "document.getElementById('c-connections').textContent === '5'",
            Duration::from_secs(10)
        ),
        "connections stayed at {}",
        text_of(&mut page, "c-connections")
    );
    assert!(
        page.wait_until(
            "parseFloat(document.getElementById('c-out').textContent) > 0 && \
             document.getElementById('c-p99').textContent.endsWith('ms') && \
             document.getElementById('top-subscribers').textContent.includes('scores') && \
             document.getElementById('top-rate').textContent.includes('scores')",
            Duration::from_secs(10)
        ),
        "out/s {:?}, p99 {:?}, top {:?} {:?}",
        text_of(&mut page, "c-out"),
        text_of(&mut page, "c-p99"),
        text_of(&mut page, "top-subscribers"),
        text_of(&mut page, "top-rate")
    );
    // The rate chart has a few points to draw, then the picture.
    assert!(page.wait_until("series.out.length >= 4", Duration::from_secs(10)));
    let shot = page.call(
        Some(&session),
        "Page.captureScreenshot",
        json!({ "format": "png", "captureBeyondViewport": true }),
    );
    let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard.png");
    std::fs::write(&path, &png).unwrap();
    publisher.join().unwrap();
    let _clients = reader.join().unwrap();
    assert!(text_of(&mut page, "vhosts").contains("/wsroadrunner5"), "{}", text_of(&mut page, "vhosts"));
    // A phone: nothing wider than the screen.
    page.call(
        Some(&session),
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true }),
    );
    assert!(
        page.wait_until("document.documentElement.scrollWidth <= window.innerWidth", Duration::from_secs(5)),
        "the page is wider than a phone: {} > {}",
        page.eval("document.documentElement.scrollWidth"),
        page.eval("window.innerWidth")
    );
    page.eval("true");
    assert!(page.errors.is_empty(), "console errors: {:?}", page.errors);
}

/// A wait started while the page is still loading, on an expression that
/// throws until then, waits instead of failing (a brand-new machine loads
/// the first page slowly).
#[test]
fn browser_waits_tolerate_a_page_that_is_still_loading() {
    let dir = tempfile::tempdir().unwrap();
    let html = "<body><script>setTimeout(() => { document.body.innerHTML = '<p id=late>ready</p>' }, 1500)</script></body>";
    let url = format!("data:text/html,{}", html.replace(' ', "%20").replace('#', "%23"));
    let (_chromium, mut page) = open_page(dir.path(), &url);
    assert_eq!(page.try_eval("document.getElementById('late').textContent"), None, "throws before it exists");
    assert!(
        page.wait_until("document.getElementById('late').textContent === 'ready'", Duration::from_secs(20))
    );
    assert_eq!(page.eval("document.getElementById('late').textContent"), json!("ready"));
}
