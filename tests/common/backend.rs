//! A real HTTP backend for hook tests (hyper on a loopback port): it
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
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    https: bool,
}

impl Backend {
    /// A hyper HTTP/1.1 server on its own thread; each request's handler
    /// runs on a blocking thread of its own, so a handler may wait.
    pub fn start(handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Backend {
        Backend::launch(None, handler)
    }

    /// The same over https, serving `tls`'s certificate.
    pub fn start_tls(
        tls: Arc<rustls::ServerConfig>,
        handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static,
    ) -> Backend {
        Backend::launch(Some(tls), handler)
    }

    fn launch(
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static,
    ) -> Backend {
        // A deep backlog: the gateway may open hundreds of connections at once.
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
        socket.listen(4096).unwrap();
        socket.set_nonblocking(true).unwrap();
        let listener: std::net::TcpListener = socket.into();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let log = seen.clone();
        let https = tls.is_some();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let accept = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else { continue };
                        let (handler, log, acceptor) = (handler.clone(), log.clone(), acceptor.clone());
                        tokio::spawn(async move {
                            match acceptor {
                                None => serve(stream, handler, log).await,
                                // A client that refuses our certificate ends here.
                                Some(a) => {
                                    if let Ok(stream) = a.accept(stream).await {
                                        serve(stream, handler, log).await
                                    }
                                }
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
            });
        });
        Backend { addr, seen, stop: Some(stop), https }
    }

    pub fn url(&self) -> String {
        match self.https {
            true => format!("https://localhost:{}", self.addr.port()),
            false => format!("http://{}", self.addr),
        }
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
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One connection: every request recorded, answered by `handler`.
async fn serve<IO>(io: IO, handler: Arc<Handler>, log: Arc<Mutex<Vec<Seen>>>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::{BodyExt, Full};
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let (handler, log) = (handler.clone(), log.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let s = Seen {
                method: parts.method.to_string(),
                path: parts.uri.to_string(),
                headers: parts
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect(),
                body: String::from_utf8_lossy(&body).into_owned(),
            };
            log.lock().unwrap().push(s.clone());
            let a = tokio::task::spawn_blocking(move || {
                let a = handler(&s);
                if let Some(d) = a.delay {
                    std::thread::sleep(d);
                }
                a
            })
            .await
            .unwrap();
            let mut resp = hyper::Response::new(Full::new(bytes::Bytes::from(a.body)));
            *resp.status_mut() = hyper::StatusCode::from_u16(a.status).unwrap();
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let io = hyper_util::rt::TokioIo::new(io);
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
}
