//! TLS for the public listener, without I/O: loading the certificate
//! (`config`) and one connection's record layer over rustls's unbuffered
//! API (`session`). The shard's engine feeds it the ciphertext it reads and
//! sends what it produces; nothing here owns a socket, a task or a thread.

pub mod config;
mod error;
pub mod session;

pub use config::server_config;
pub use error::TlsError;
pub use session::TlsSession;
