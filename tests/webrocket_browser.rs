//! End to end: the example chat page (examples/webrocket/index.html) in
//! headless Chromium, a real ringcast and the example Python worker. The
//! browser is driven over the DevTools protocol (a WebSocket, spoken here
//! with tungstenite). scripts/test.sh installs chromium and Python's
//! `websockets` when missing.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::browser::{open_page, Page};
use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "admin-token-for-browser-test-0123";

fn admin(s: &Server, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, answer) = admin_call(s, TOKEN, method, path, body);
    assert!((200..300).contains(&status), "{method} {path}: {status} {answer}");
    answer
}

/// The chat log's text once it contains `want` (within 10 s).
fn wait_for(page: &mut Page, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Before the page has loaded there is no log yet.
        let log = page
            .try_eval("(document.getElementById('log') || {}).innerText || ''")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        if log.contains(want) {
            return log;
        }
        assert!(Instant::now() < deadline, "the page never showed {want:?}; it shows:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_chat_page_talks_to_ringcast_and_the_worker_answers() {
    let config = format!(
        "[server]\nadmin_token = \"{TOKEN}\"\n[[vhost]]\npath = \"/world\"\ndialect = \"webrocket\"\nanonymous = [\"READ\"]\n"
    );
    let s = Server::start(&config, 2);
    admin(
        &s,
        "POST",
        "/admin/users",
        Some(json!({ "vhost": "/world", "name": "joe", "secret": "pw", "permissions": ["READ", "WRITE"] })),
    );
    let token = admin(&s, "GET", "/admin/token?vhost=/world", None)["token"].as_str().unwrap().to_string();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let worker = Command::new("python3")
        .arg(root.join("examples/webrocket/worker.py"))
        .args(["--api", &format!("ws://{}", s.api), "--token", &token])
        .stdout(Stdio::null())
        .spawn()
        .expect("run the example worker (python3)");
    let _worker = Killed(worker);
    assert!(
        eventually(Duration::from_secs(20), || admin(&s, "GET", "/admin/vhosts", None)[0]["workers"] == 1),
        "the worker did not connect (is Python's websockets installed? scripts/test.sh installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let url =
        format!("file://{}?ws=ws://{}/world", root.join("examples/webrocket/index.html").display(), s.ws);
    let (_chromium, mut page) = open_page(dir.path(), &url);

    wait_for(&mut page, "joined #chat");
    page.eval(
        "document.getElementById('user').value = 'joe'; document.getElementById('secret').value = 'pw'; \
         document.getElementById('login').requestSubmit(); true",
    );
    wait_for(&mut page, "logged in as joe");
    // A broadcast comes back to the page (it is subscribed) and to a
    // second client on the channel.
    let mut other = s.connect("/world");
    send_text(&mut other, r#"{"subscribe":{"channel":"chat"}}"#);
    assert_eq!(recv_text(&mut other), r#"{"subscribed":"chat"}"#);
    page.eval(
        "document.getElementById('text').value = 'hello from chromium'; \
         document.getElementById('say').requestSubmit(); true",
    );
    wait_for(&mut page, "joe: hello from chromium");
    assert_eq!(
        recv_text(&mut other),
        r#"{"message":{"channel":"chat","data":{"from":"joe","text":"hello from chromium"}}}"#
    );
    // The worker answers the trigger to this session and tells the channel.
    page.eval("document.getElementById('text').value = 'quiet please'; document.getElementById('ask').click(); true");
    wait_for(&mut page, "worker: QUIET PLEASE");
    let log = wait_for(&mut page, "worker: joe shouted QUIET PLEASE");
    assert_eq!(
        recv_text(&mut other),
        r#"{"message":{"channel":"chat","data":{"from":"worker","text":"joe shouted QUIET PLEASE"}}}"#
    );
    assert!(!log.contains("error"), "{log}");
    // Whatever is still queued from the page, then its console.
    page.eval("true");
    assert!(page.errors.is_empty(), "console errors: {:?}", page.errors);
}
