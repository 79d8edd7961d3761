//! `--tls-ca FILE`: every scenario's WebSocket clients speak TLS (wss://)
//! and trust that CA only. Set once at start; without it they speak plain TCP.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;

static CLIENT: OnceLock<Arc<ClientConfig>> = OnceLock::new();

/// Trust the CA (or self-signed certificate) in `ca` for every connection.
pub fn init(ca: &Path) -> Result<(), String> {
    let pem = std::fs::read(ca).map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
        roots.add(cert).map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("--tls-ca {}: no certificate in it", ca.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let _ = CLIENT.set(Arc::new(config));
    Ok(())
}

/// The client settings when `--tls-ca` was given.
pub fn client() -> Option<Arc<ClientConfig>> {
    CLIENT.get().cloned()
}

/// The name every server's test certificate is made for.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from("localhost").expect("a valid name")
}
