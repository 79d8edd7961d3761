//! The handshake task's byte stream: the accepted socket itself, or TLS
//! over it. With TLS the TLS handshake happens inside the first reads
//! (so `limits.handshake_timeout_ms` covers it), and once the upgrade is
//! done the record state goes to the driver with the socket.

use std::io;

use futures_lite::{AsyncReadExt, AsyncWriteExt};

use crate::rt::TcpStream;
use crate::tls::{TlsError, TlsSession};

/// Ciphertext read per call while the handshake runs: one record at most
/// (16 KiB of data plus header and AEAD expansion).
const CIPHERTEXT_READ: usize = 16 * 1024 + 512;

pub(super) struct Wire {
    stream: TcpStream,
    tls: Option<Tls>,
}

struct Tls {
    session: TlsSession,
    /// Decrypted, not read yet.
    plaintext: Vec<u8>,
    /// The first bytes were an HTTP request, not a ClientHello: the
    /// answer goes back in plain text.
    plain_http: bool,
}

/// Why a read got no bytes.
pub(super) enum WireError {
    /// The peer left or the socket failed.
    Gone,
    /// The TLS handshake or a record failed; an alert went out.
    Tls(TlsError),
    /// Plain HTTP on a TLS listener.
    PlainHttp,
}

impl Wire {
    pub fn plain(stream: TcpStream) -> Wire {
        Wire { stream, tls: None }
    }

    pub fn tls(stream: TcpStream, session: TlsSession) -> Wire {
        let tls = Tls { session, plaintext: Vec::new(), plain_http: false };
        Wire { stream, tls: Some(tls) }
    }

    /// Reads what arrived (decrypted with TLS) into `buf`; Ok(0): the peer
    /// closed. `raw` counts the bytes taken off the socket.
    pub async fn read(&mut self, buf: &mut [u8], raw: &mut u64) -> Result<usize, WireError> {
        let Some(tls) = &mut self.tls else {
            let n = self.stream.read(buf).await.map_err(|_| WireError::Gone)?;
            *raw += n as u64;
            return Ok(n);
        };
        let mut ciphertext = Vec::new();
        loop {
            if !tls.plaintext.is_empty() {
                let n = buf.len().min(tls.plaintext.len());
                buf[..n].copy_from_slice(&tls.plaintext[..n]);
                tls.plaintext.drain(..n);
                return Ok(n);
            }
            if tls.session.peer_closed() {
                return Ok(0);
            }
            ciphertext.resize(CIPHERTEXT_READ, 0);
            let n = self.stream.read(&mut ciphertext).await.map_err(|_| WireError::Gone)?;
            *raw += n as u64;
            if n == 0 {
                return Ok(0);
            }
            if !tls.session.is_established() && tls.session.held() == 0 && ciphertext[0].is_ascii_uppercase()
            {
                // `GET /…`: a TLS record starts with 20..=23.
                tls.plain_http = true;
                return Err(WireError::PlainHttp);
            }
            let mut outgoing = Vec::new();
            let result = tls.session.read(&mut ciphertext[..n], &mut tls.plaintext, &mut outgoing);
            if !outgoing.is_empty() {
                // The handshake's flight, or the alert that ends it.
                self.stream.write_all(&outgoing).await.map_err(|_| WireError::Gone)?;
            }
            result.map_err(WireError::Tls)?;
        }
    }

    /// Writes all of `bytes` (encrypted with TLS).
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            None => self.stream.write_all(bytes).await,
            Some(tls) => {
                let mut records = Vec::new();
                tls.session.write(bytes, &mut records).map_err(io::Error::other)?;
                self.stream.write_all(&records).await
            }
        }
    }

    /// Writes a refusal the peer can read: over TLS once it is up, in
    /// plain text to a plain HTTP request, not at all to a TLS handshake
    /// that failed (its alert said why).
    pub async fn write_refusal(&mut self, response: &[u8]) -> io::Result<()> {
        match &self.tls {
            Some(tls) if tls.plain_http => self.stream.write_all(response).await,
            Some(tls) if !tls.session.is_established() => Ok(()),
            _ => self.write_all(response).await,
        }
    }

    /// The socket, its TLS state and what was decrypted but not read.
    pub fn into_parts(self) -> (TcpStream, Option<TlsSession>, Vec<u8>) {
        match self.tls {
            None => (self.stream, None, Vec::new()),
            Some(tls) => (self.stream, Some(tls.session), tls.plaintext),
        }
    }
}
