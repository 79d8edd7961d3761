//! A real HTTP backend for hook tests (tiny_http on a loopback port): it
//! records every request and answers with what the test's handler says.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// What to answer: status, body, and an optional delay before answering.
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub delay: Option<Duration>,
}

impl Answer {
    pub fn new(status: u16, body: &str) -> Answer {
        Answer { status, body: body.into(), delay: None }
    }

    pub fn after(mut self, d: Duration) -> Answer {
        self.delay = Some(d);
        self
    }
}

type Handler = dyn Fn(&Seen) -> Answer + Send + Sync;

pub struct Backend {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    server: Arc<tiny_http::Server>,
}

impl Backend {
    pub fn start(handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Backend {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let addr = server.server_addr().to_ip().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let (srv, log) = (server.clone(), seen.clone());
        std::thread::spawn(move || {
            for mut req in srv.incoming_requests() {
                let mut body = String::new();
                let _ = req.as_reader().read_to_string(&mut body);
                let s = Seen {
                    method: req.method().to_string(),
                    path: req.url().to_string(),
                    headers: req
                        .headers()
                        .iter()
                        .map(|h| (h.field.to_string(), h.value.to_string()))
                        .collect(),
                    body,
                };
                log.lock().unwrap().push(s.clone());
                let handler = handler.clone();
                std::thread::spawn(move || {
                    let a = handler(&s);
                    if let Some(d) = a.delay {
                        std::thread::sleep(d);
                    }
                    let _ = req.respond(tiny_http::Response::from_string(a.body).with_status_code(a.status));
                });
            }
        });
        Backend { addr, seen, server }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests matching `method` and `path`, in arrival order.
    pub fn requests(&self, method: &str, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.method == method && s.path == path).collect()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.server.unblock();
    }
}
