//! The error of TLS setup and of one connection's TLS.

/// Why TLS setup or a connection's TLS failed.
#[derive(Debug)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    Read { path: std::path::PathBuf, source: std::io::Error },
    /// A PEM file without what it should hold (`what`), or unreadable PEM.
    Pem { what: &'static str, reason: String },
    /// rustls refused the certificate, the key or the settings.
    Config(rustls::Error),
    /// The peer broke the protocol (a bad record, a failed handshake).
    Protocol(rustls::Error),
    /// Application data before the handshake finished, or after a close.
    NotReady,
    /// A record could not be encoded or encrypted.
    Encode(String),
    /// The peer's input did not settle within the bound on record steps.
    Runaway,
    /// An established TLS 1.3 connection's record failed, or its keys ran out.
    Record(super::records::RecordError),
}

impl TlsError {
    /// The connection asked for, or needed, new keys: an end the client did
    /// not cause (a KeyUpdate, or our records' confidentiality limit).
    pub fn is_rekey(&self) -> bool {
        use super::records::RecordError;
        matches!(self, TlsError::Record(RecordError::KeyUpdate | RecordError::KeysExhausted))
    }
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Read { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            TlsError::Pem { what, reason } => write!(f, "{what}: {reason}"),
            TlsError::Config(e) => write!(f, "TLS settings refused: {e}"),
            TlsError::Protocol(e) => write!(f, "TLS: {e}"),
            TlsError::NotReady => f.write_str("TLS: application data outside an established session"),
            TlsError::Encode(e) => write!(f, "TLS: cannot encode a record: {e}"),
            TlsError::Runaway => f.write_str("TLS: input did not settle"),
            TlsError::Record(e) => write!(f, "TLS: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}
