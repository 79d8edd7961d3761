//! Real clients over wss://: Python's `websockets` trusting the test CA,
//! and headless Chromium trusting the test certificate by its key
//! (`--ignore-certificate-errors-spki-list`). Both must receive a
//! publication. scripts/test.sh installs websockets and chromium.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::browser::open_page_with;
use common::tls::TestCa;
use common::*;

/// Joins `t`, prints every message it gets, one per line.
const PYTHON_CLIENT: &str = r#"
import ssl, sys
from websockets.sync.client import connect
ctx = ssl.create_default_context(cafile=sys.argv[2])
with connect(sys.argv[1], ssl=ctx, open_timeout=20) as ws:
    ws.send('{"command":"join","topics":["t"]}')
    for message in ws:
        print(message, flush=True)
"#;

#[test]
fn python_websockets_over_wss_with_the_test_ca_receives_publications() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let files = ca.leaf().write(dir.path());
    let ca_file = ca.write(dir.path());
    let s = Server::start(&roadrunner_config(&format!("[server.tls]\n{files}")), 2);
    let url = format!("wss://localhost:{}/ws", s.ws.port());
    let mut child = Command::new("python3")
        .args(["-c", PYTHON_CLIENT, &url])
        .arg(&ca_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let _client = Killed(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let errors = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let first = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| {
        panic!(
            "the Python client got no join answer (is websockets installed? scripts/test.sh installs it): {}",
            if errors.is_finished() { errors.join().unwrap() } else { String::new() }
        )
    });
    assert_eq!(first, r#"{"topic":"@join","payload":["t"]}"#);
    for i in 0..3 {
        assert_eq!(s.publish_json(&format!(r#"{{"topics":["t"],"payload":"py {i}"}}"#)).0, 200);
        let got = rx.recv_timeout(Duration::from_secs(10)).expect("a publication");
        assert_eq!(got, format!(r#"{{"topic":"t","payload":"py {i}"}}"#));
    }
}

#[test]
fn python_websockets_refuses_a_certificate_it_does_not_trust() {
    // The same client with another CA: the handshake must fail, so the
    // test above cannot pass with verification off.
    let (ca, other) = (TestCa::new(), TestCa::new());
    let dir = tempfile::tempdir().unwrap();
    let files = ca.leaf().write(dir.path());
    let other_dir = tempfile::tempdir().unwrap();
    let other_file = other.write(other_dir.path());
    let s = Server::start(&roadrunner_config(&format!("[server.tls]\n{files}")), 1);
    let out = Command::new("python3")
        .args(["-c", PYTHON_CLIENT, &format!("wss://localhost:{}/ws", s.ws.port())])
        .arg(&other_file)
        .output()
        .expect("python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("CERTIFICATE_VERIFY_FAILED"), "{stderr}");
}

/// Opens `https://localhost:<port>/ws` (ringcast's own answer to a plain
/// GET, over TLS), then a WebSocket from that page. Chromium honours the
/// pinned key for a navigation; a WebSocket from `about:blank` in a fresh
/// profile failed with the same switch (Chromium 156), so the page comes first.
fn chromium_socket(s: &Server, switches: &[String]) -> (tempfile::TempDir, Killed, common::browser::Page) {
    let profile = tempfile::tempdir().unwrap();
    let url = format!("https://localhost:{}/ws", s.ws.port());
    let (chromium, mut page) = open_page_with(profile.path(), &url, switches);
    let script = format!(
        "window.got = []; window.state = 'connecting'; \
         const ws = new WebSocket('wss://localhost:{}/ws'); \
         ws.onopen = () => {{ window.state = 'open'; ws.send(JSON.stringify({{command: 'join', topics: ['t']}})); }}; \
         ws.onerror = () => {{ window.state = 'error'; }}; \
         ws.onmessage = (e) => window.got.push(e.data); true",
        s.ws.port()
    );
    assert!(
        page.wait_until(
            "location.protocol === 'https:' && document.readyState === 'complete'",
            Duration::from_secs(30)
        ),
        "the page did not load"
    );
    page.eval(&script);
    (profile, chromium, page)
}

#[test]
fn chromium_over_wss_receives_publications() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let leaf = ca.leaf();
    let files = leaf.write(dir.path());
    let s = Server::start(&roadrunner_config(&format!("[server.tls]\n{files}")), 2);
    let switches = [format!("--ignore-certificate-errors-spki-list={}", leaf.spki_sha256)];
    // Dropped in reverse: the page, Chromium, then its profile directory.
    let (_profile, _chromium, mut page) = chromium_socket(&s, &switches);
    assert!(
        page.wait_until(
            "window.got.includes('{\"topic\":\"@join\",\"payload\":[\"t\"]}')",
            Duration::from_secs(30)
        ),
        "no join answer over wss; state {:?}",
        page.try_eval("window.state")
    );
    assert_eq!(s.publish_json(r#"{"topics":["t"],"payload":"to chromium"}"#).0, 200);
    assert!(
        page.wait_until(
            "window.got.includes('{\"topic\":\"t\",\"payload\":\"to chromium\"}')",
            Duration::from_secs(10)
        ),
        "no publication: {:?}",
        page.try_eval("window.got")
    );
    page.eval("true");
    // The page itself is ringcast's 426 to a plain GET (and its favicon).
    let errors: Vec<_> = page.errors.iter().filter(|e| !e.contains("426")).collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");
}

#[test]
fn chromium_without_the_key_pinned_refuses_the_certificate() {
    // Without the switch the test certificate is not trusted: no page, no
    // socket, so the test above proves the TLS path, not a bypass.
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let files = ca.leaf().write(dir.path());
    let s = Server::start(&roadrunner_config(&format!("[server.tls]\n{files}")), 1);
    let profile = tempfile::tempdir().unwrap();
    let url = format!("https://localhost:{}/ws", s.ws.port());
    let (_chromium, mut page) = open_page_with(profile.path(), &url, &[]);
    // Chromium shows its certificate interstitial instead of ringcast's answer.
    std::thread::sleep(Duration::from_secs(3));
    let text = page.try_eval("document.body ? document.body.innerText : ''");
    assert!(
        !text.as_ref().is_some_and(|t| t.as_str().is_some_and(|t| t.contains("speaks WebSocket only"))),
        "an untrusted certificate was accepted: {text:?}"
    );
    let script = format!(
        "window.state = 'connecting'; const ws = new WebSocket('wss://localhost:{}/ws'); \
         ws.onopen = () => {{ window.state = 'open'; }}; ws.onerror = () => {{ window.state = 'error'; }}; true",
        s.ws.port()
    );
    assert!(page.wait_until(&script, Duration::from_secs(30)), "no page to run a script in");
    assert!(
        page.wait_until("window.state === 'error'", Duration::from_secs(20)),
        "{:?}",
        page.try_eval("window.state")
    );
}
