//! The WebRocket dialect's gateway side (docs/webrocket.md): the session
//! state machine, the shared directory of vhosts/users/channels, its
//! persisted store, secret hashing and backend workers. The wire format is
//! `crate::dialect::webrocket`.

pub mod directory;
pub mod secrets;
pub mod session;
pub mod store;
pub mod workers;

use std::sync::Arc;

pub use directory::{Directory, Vhost};

/// What shards and the API share for the dialect.
pub struct WebRocket {
    pub directory: Directory,
    pub workers: workers::Workers,
    pub secrets: secrets::Checker,
    /// Serializes admin changes (store and directory in the same order).
    pub admin_lock: tokio::sync::Mutex<()>,
}

impl WebRocket {
    pub fn new(directory: Directory, runtime: tokio::runtime::Handle) -> Arc<WebRocket> {
        Arc::new(WebRocket {
            directory,
            workers: workers::Workers::default(),
            secrets: secrets::Checker::new(runtime),
            admin_lock: tokio::sync::Mutex::new(()),
        })
    }
}
