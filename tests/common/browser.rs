//! Headless Chromium driven over the DevTools protocol (a WebSocket, spoken
//! with tungstenite), for the tests of pages the gateway serves or talks to.
//! scripts/test.sh installs Debian's chromium when missing.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Killed;
use std::time::Duration;

use serde_json::{json, Value};
use tungstenite::Message;

pub fn chromium() -> PathBuf {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let out = Command::new("sh").args(["-c", &format!("command -v {name}")]).output().ok()?;
            let path = String::from_utf8(out.stdout).ok()?.trim().to_string();
            (!path.is_empty()).then(|| PathBuf::from(path))
        })
        .expect("chromium is not installed: run scripts/test.sh (it installs Debian's chromium)")
}

/// A DevTools session on one page, recording console errors and exceptions.
pub struct Page {
    pub ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    pub session: String,
    next_id: u64,
    pub errors: Vec<String>,
}

impl Page {
    pub fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.request(session, method, params).unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// A DevTools call: its result, or the error DevTools answered (e.g.
    /// no execution context yet while a page is still navigating).
    pub fn request(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value, Value> {
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
                return match v.get("error") {
                    Some(e) => Err(e.clone()),
                    None => Ok(v["result"].clone()),
                };
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

    /// Evaluates `expression` until it is true (within `within`). A page
    /// still loading — no context yet, or an element not there so the
    /// expression throws — is "not yet", never a failure.
    pub fn wait_until(&mut self, expression: &str, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if self.try_eval(expression) == Some(Value::Bool(true)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The value of `expression`, or None while it cannot be evaluated yet
    /// (the page is loading, or the expression throws).
    pub fn try_eval(&mut self, expression: &str) -> Option<Value> {
        let session = self.session.clone();
        let r = self
            .request(
                Some(&session),
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .ok()?;
        r.get("exceptionDetails").is_none().then(|| r["result"]["value"].clone())
    }

    /// The value of `expression` on a page that has loaded: an exception
    /// fails the test (for waits, use `wait_until` or `try_eval`).
    pub fn eval(&mut self, expression: &str) -> Value {
        let session = self.session.clone();
        let r = self.call(
            Some(&session),
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }
}

pub fn open_page(dir: &Path, url: &str) -> (Killed, Page) {
    open_page_with(dir, url, &[])
}

/// `open_page` with more command-line switches for Chromium.
pub fn open_page_with(dir: &Path, url: &str, switches: &[String]) -> (Killed, Page) {
    let mut child = Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--remote-debugging-port=0"])
        // Nothing to reach outside: no background connections to refuse.
        .args([
            "--disable-quic",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", dir.display()))
        .args(switches)
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
