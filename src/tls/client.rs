//! What TLS to a backend trusts: the system's root certificates, or only a
//! private CA (`ca_file`). Server names are always verified.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use super::error::TlsError;

/// Client settings trusting `ca_file`'s certificates, or the system's roots
/// without one (an empty store, and so no https backend, if the system has
/// none: the request's error then says the issuer is unknown).
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| TlsError::Read { path: path.into(), source })?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| TlsError::Pem { what: "CA file", reason: e.to_string() })?;
            if certs.is_empty() {
                let reason = format!("no `BEGIN CERTIFICATE` block in {}", path.display());
                return Err(TlsError::Pem { what: "CA file", reason });
            }
            for cert in certs {
                roots.add(cert).map_err(TlsError::Config)?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "reading the system's root certificates");
            }
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    ignored,
                    "no system root certificates: https backends without `ca_file` will not verify"
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_is_read_and_a_bad_one_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.cert.pem()).unwrap();
        client_config(Some(&good)).expect("a PEM certificate loads");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here").unwrap();
        let e = client_config(Some(&empty)).unwrap_err().to_string();
        assert!(e.contains("CA file") && e.contains("empty.pem"), "{e}");
        let e = client_config(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
