//! The server's TLS settings from a PEM certificate chain and key: TLS 1.2
//! and 1.3 (ring provider), ALPN `http/1.1`, no client certificates.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use super::error::TlsError;

/// Reads `cert` (the chain, leaf first) and `key` (PKCS#8, PKCS#1 or SEC1).
pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let read =
        |path: &Path| std::fs::read(path).map_err(|source| TlsError::Read { path: path.into(), source });
    server_config(&read(cert)?, &read(key)?)
}

/// The settings for a chain and key given as PEM text.
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem { what: "certificate file", reason: e.to_string() })?;
    if certs.is_empty() {
        let reason = "no `BEGIN CERTIFICATE` block found".into();
        return Err(TlsError::Pem { what: "certificate file", reason });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| TlsError::Pem { what: "key file", reason: format!("no private key found ({e})") })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // After a TLS 1.3 handshake a connection keeps its keys, not rustls's
    // state (session.rs): rustls hands them over only when this is on.
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_and_key_load_and_mismatches_are_refused() {
        let a = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key) = (a.cert.pem(), a.signing_key.serialize_pem());
        let config = server_config(cert.as_bytes(), key.as_bytes()).expect("loads");
        assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);

        let other_key = b.signing_key.serialize_pem();
        let e = server_config(cert.as_bytes(), other_key.as_bytes()).unwrap_err();
        assert!(matches!(e, TlsError::Config(_)), "{e}");
        let e = server_config(key.as_bytes(), key.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("certificate file"), "{e}");
        let e = server_config(cert.as_bytes(), cert.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("key file"), "{e}");
        let e = load(Path::new("/nonexistent/cert.pem"), Path::new("/nonexistent/key.pem")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/cert.pem"), "{e}");
    }
}
