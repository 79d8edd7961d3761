//! TLS for the listeners, without I/O: loading a certificate (`config`),
//! the certificate in use with its reload (`store`), and one connection's
//! record layer over rustls's unbuffered API (`session`). The shard's
//! engine feeds it the ciphertext it reads and sends what it produces;
//! nothing here owns a socket, a task or a thread.

pub mod config;
mod error;
pub mod session;
mod store;

pub use config::server_config;
pub use error::TlsError;
pub use session::{Progress, TlsSession};
pub use store::CertStore;
