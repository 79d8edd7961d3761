//! End to end: the example chat page (examples/webrocket/index.html) in
//! headless Chromium, a real ringcast and the example Python worker. The
//! browser is driven over the DevTools protocol (a WebSocket, spoken here
//! with tungstenite). scripts/test.sh installs chromium and Python's
//! `websockets` when missing.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tungstenite::Message;

const TOKEN: &str = "admin-token-for-browser-test-0123";

/// Kills a child process when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromium() -> PathBuf {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let out = Command::new("sh").args(["-c", &format!("command -v {name}")]).output().ok()?;
            let path = String::from_utf8(out.stdout).ok()?.trim().to_string();
            (!path.is_empty()).then(|| PathBuf::from(path))
        })
        .expect("chromium is not installed: run scripts/test.sh (it installs Debian's chromium)")
}

fn admin(s: &Server, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, answer) = admin_call(s, TOKEN, method, path, body);
    assert!((200..300).contains(&status), "{method} {path}: {status} {answer}");
    answer
}

/// A DevTools session on one page, recording console errors and exceptions.
struct Page {
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    session: String,
    next_id: u64,
    errors: Vec<String>,
}

impl Page {
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string())).unwrap();
        loop {
            let Message::Text(text) = self.ws.read().expect("devtools answers") else { continue };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
            self.record(&v);
        }
    }

    fn record(&mut self, v: &Value) {
        match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => self.errors.push(v["params"]["exceptionDetails"].to_string()),
            Some("Runtime.consoleAPICalled") if v["params"]["type"] == "error" => {
                self.errors.push(v["params"]["args"].to_string())
            }
            Some("Log.entryAdded") if v["params"]["entry"]["level"] == "error" => {
                self.errors.push(v["params"]["entry"]["text"].to_string())
            }
            _ => {}
        }
    }

    fn eval(&mut self, expression: &str) -> Value {
        let session = self.session.clone();
        let r = self.call(
            Some(&session),
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    /// The chat log's text once it contains `want` (within 10 s).
    fn wait_for(&mut self, want: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Before the page has loaded there is no log yet.
            let log = self
                .eval("(document.getElementById('log') || {}).innerText || ''")
                .as_str()
                .unwrap_or("")
                .to_string();
            if log.contains(want) {
                return log;
            }
            assert!(Instant::now() < deadline, "the page never showed {want:?}; it shows:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn open_page(dir: &Path, url: &str) -> (Killed, Page) {
    let mut child = Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--remote-debugging-port=0"])
        .arg(format!("--user-data-dir={}", dir.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("ws://") {
                let _ = tx.send(line[at..].trim().to_string());
            }
        }
    });
    let child = Killed(child);
    let endpoint = rx.recv_timeout(Duration::from_secs(30)).expect("chromium prints its DevTools endpoint");
    let (ws, _) = tungstenite::connect(&endpoint).expect("connect to DevTools");
    let mut page = Page { ws, session: String::new(), next_id: 0, errors: Vec::new() };
    let target = page.call(None, "Target.createTarget", json!({ "url": "about:blank" }));
    let attached =
        page.call(None, "Target.attachToTarget", json!({ "targetId": target["targetId"], "flatten": true }));
    page.session = attached["sessionId"].as_str().unwrap().to_string();
    let session = page.session.clone();
    page.call(Some(&session), "Runtime.enable", json!({}));
    page.call(Some(&session), "Log.enable", json!({}));
    page.call(Some(&session), "Page.enable", json!({}));
    page.call(Some(&session), "Page.navigate", json!({ "url": url }));
    (child, page)
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

    page.wait_for("joined #chat");
    page.eval(
        "document.getElementById('user').value = 'joe'; document.getElementById('secret').value = 'pw'; \
         document.getElementById('login').requestSubmit(); true",
    );
    page.wait_for("logged in as joe");
    // A broadcast comes back to the page (it is subscribed) and to a
    // second client on the channel.
    let mut other = s.connect("/world");
    send_text(&mut other, r#"{"subscribe":{"channel":"chat"}}"#);
    assert_eq!(recv_text(&mut other), r#"{"subscribed":"chat"}"#);
    page.eval(
        "document.getElementById('text').value = 'hello from chromium'; \
         document.getElementById('say').requestSubmit(); true",
    );
    page.wait_for("joe: hello from chromium");
    assert_eq!(
        recv_text(&mut other),
        r#"{"message":{"channel":"chat","data":{"from":"joe","text":"hello from chromium"}}}"#
    );
    // The worker answers the trigger to this session and tells the channel.
    page.eval("document.getElementById('text').value = 'quiet please'; document.getElementById('ask').click(); true");
    page.wait_for("worker: QUIET PLEASE");
    let log = page.wait_for("worker: joe shouted QUIET PLEASE");
    assert_eq!(
        recv_text(&mut other),
        r#"{"message":{"channel":"chat","data":{"from":"worker","text":"joe shouted QUIET PLEASE"}}}"#
    );
    assert!(!log.contains("error"), "{log}");
    // Whatever is still queued from the page, then its console.
    page.eval("true");
    assert!(page.errors.is_empty(), "console errors: {:?}", page.errors);
}
