//! TLS without I/O: what backends are trusted by (`client`); for the
//! listeners, loading a certificate (`config`),
//! the certificate in use with its reload (`store`), and one connection's
//! record layer: rustls's unbuffered API for the handshake (`session`),
//! then, for TLS 1.3, the keys alone (`records`). The shard's
//! engine feeds it the ciphertext it reads and sends what it produces;
//! nothing here owns a socket, a task or a thread.

pub mod client;
pub mod config;
mod error;
pub mod records;
pub mod session;
mod store;

pub use client::client_config;
pub use config::server_config;
pub use error::TlsError;
pub use session::{Progress, TlsSession};
pub use store::CertStore;
