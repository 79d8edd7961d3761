//! The certificate a listener serves, reloadable: each new handshake takes
//! the settings current when it starts, so a reload (SIGHUP) changes what
//! new connections see and leaves open ones as they are.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;

use super::error::TlsError;

pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

impl CertStore {
    /// Reads the chain and key; an error names the file and what is wrong.
    pub fn load(cert: PathBuf, key: PathBuf) -> Result<Arc<CertStore>, TlsError> {
        let config = super::config::load(&cert, &key)?;
        Ok(Arc::new(CertStore { cert, key, current: RwLock::new(config) }))
    }

    /// The settings for a handshake starting now.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the files again; on an error the settings in use stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = super::config::load(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    /// The certificate file, for log lines.
    pub fn cert_file(&self) -> &std::path::Path {
        &self.cert
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &std::path::Path) {
        let k = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.join("cert.pem"), k.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), k.signing_key.serialize_pem()).unwrap();
    }

    #[test]
    fn a_reload_swaps_the_settings_and_a_bad_file_keeps_the_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path());
        let store = CertStore::load(dir.path().join("cert.pem"), dir.path().join("key.pem")).unwrap();
        let first = store.current();
        assert!(Arc::ptr_eq(&first, &store.current()), "no reload, same settings");
        write_pair(dir.path());
        store.reload().unwrap();
        assert!(!Arc::ptr_eq(&first, &store.current()), "reloaded");
        let second = store.current();
        std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
        let e = store.reload().unwrap_err();
        assert!(e.to_string().contains("key file"), "{e}");
        assert!(Arc::ptr_eq(&second, &store.current()), "a failed reload keeps what was served");
    }
}
