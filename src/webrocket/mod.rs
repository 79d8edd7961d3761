//! The WebRocket dialect's gateway side (docs/webrocket.md): the session
//! state machine, the shared directory of vhosts/users/channels, its
//! persisted store, secret hashing and backend workers. The wire format is
//! `crate::dialect::webrocket`.

pub mod directory;
pub mod replicate;
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
    /// This node's id (random per process; part of session ids, and the
    /// node's name in a cluster).
    pub node: String,
    /// The integration thread's runtime: shards run broker calls there.
    pub runtime: tokio::runtime::Handle,
}

/// A random node id (48 bits, 12 hex digits): per process, so a restarted
/// node's sequence numbers and session ids never look like old ones.
fn node_id() -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).expect("the OS random source works");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl WebRocket {
    pub fn new(directory: Directory, runtime: tokio::runtime::Handle) -> Arc<WebRocket> {
        Arc::new(WebRocket {
            directory,
            workers: workers::Workers::default(),
            secrets: secrets::Checker::for_this_machine(),
            admin_lock: tokio::sync::Mutex::new(()),
            node: node_id(),
            runtime,
        })
    }
}
