//! A fast ws2api backend for the `roundtrip` scenario: a real HTTP server
//! (hyper) that allows every connect (`ok`), echoes every message body and
//! accepts every close. Single-threaded, so it can be pinned to one core.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Response};
use hyper_util::rt::TokioIo;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5000")]
    listen: SocketAddr,
}

pub fn run(args: Args) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(args.listen).await.map_err(|e| format!("{}: {e}", args.listen))?;
        eprintln!("stub backend listening on {}", listener.local_addr().map_err(|e| e.to_string())?);
        loop {
            let (stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                        let reply = match *req.method() {
                            Method::GET => Bytes::from_static(b"ok"),
                            Method::POST => {
                                req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default()
                            }
                            _ => Bytes::new(),
                        };
                        Ok::<_, Infallible>(Response::new(Full::new(reply)))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
