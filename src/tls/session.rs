//! One connection's TLS record layer: ciphertext in → plaintext out (and
//! the records the handshake must send), plaintext in → ciphertext out.
//! rustls's unbuffered API runs the handshake; once a TLS 1.3 handshake
//! is done the connection keeps only its keys and sequence numbers
//! (`records.rs`) and rustls's state is freed. TLS 1.2, and a TLS 1.3
//! cipher `Records` does not implement, stay with rustls throughout.
//! Between records nothing is buffered: only the tail of a record still
//! arriving is kept, and that allocation is freed once the record is
//! complete.

use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use rustls::{CipherSuite, ProtocolVersion, ServerConfig, SupportedCipherSuite};

use super::error::TlsError;
use super::records::{Records, MAX_FRAGMENT};

/// Record-processing steps one `read` may take before it gives up on the
/// input (each step consumes a record or produces output, so honest input
/// needs a handful; the bound keeps a bug from becoming a hang).
const MAX_STEPS: usize = 10_000;
/// First guess at the room one encoded record needs beyond its payload.
const RECORD_OVERHEAD: usize = 64;

pub struct TlsSession {
    state: State,
    /// The start of a record not complete yet; empty and unallocated between records.
    incoming: Vec<u8>,
    peer_closed: bool,
}

enum State {
    /// The handshake; after it, TLS 1.2 (and ciphers `Records` lacks).
    Rustls { conn: Box<UnbufferedServerConnection>, established: bool },
    /// An established TLS 1.3 connection: its keys alone.
    Records(Records),
    /// Handing over to `Records` failed; the connection is over.
    Broken,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Rustls { established: false, .. } => "handshake",
            State::Rustls { established: true, .. } => "rustls",
            State::Records(_) => "records",
            State::Broken => "broken",
        };
        f.debug_struct("TlsSession")
            .field("state", &state)
            .field("peer_closed", &self.peer_closed)
            .field("held", &self.incoming.len())
            .finish()
    }
}

/// What a `read` changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The handshake completed during this read.
    pub established: bool,
    /// The peer sent close_notify: no more application data will come.
    pub peer_closed: bool,
}

impl TlsSession {
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsSession, TlsError> {
        let conn = Box::new(UnbufferedServerConnection::new(config).map_err(TlsError::Config)?);
        Ok(TlsSession {
            state: State::Rustls { conn, established: false },
            incoming: Vec::new(),
            peer_closed: false,
        })
    }

    /// The handshake has completed: application data flows both ways.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Rustls { established: true, .. } | State::Records(_))
    }

    /// Only keys and sequence numbers are kept (TLS 1.3 after the handshake).
    pub fn is_compact(&self) -> bool {
        matches!(self.state, State::Records(_))
    }

    /// The client's side of the records (its keys): for tests and fuzzing,
    /// which play the client. None until a TLS 1.3 handshake is done.
    pub fn client_records(&self) -> Option<Records> {
        match &self.state {
            State::Records(records) => Some(records.peer()),
            _ => None,
        }
    }

    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Bytes of an incomplete record held (0 between records).
    pub fn held(&self) -> usize {
        self.incoming.len()
    }

    /// Takes `ciphertext` as read from the socket: decrypted application
    /// data is appended to `plaintext`, records the peer must get
    /// (handshake, alerts) to `outgoing`. `ciphertext` is scratch space
    /// (decrypted in place). An error ends the connection (after sending
    /// what `outgoing` holds: an alert may be queued).
    pub fn read(
        &mut self,
        ciphertext: &mut [u8],
        plaintext: &mut Vec<u8>,
        outgoing: &mut Vec<u8>,
    ) -> Result<Progress, TlsError> {
        let was_established = self.is_established();
        if self.incoming.is_empty() {
            // The usual case: whole records in the read buffer, decrypted there.
            let used = self.process(ciphertext, plaintext, outgoing)?;
            self.incoming.extend_from_slice(&ciphertext[used..]);
        } else {
            let mut held = std::mem::take(&mut self.incoming);
            held.extend_from_slice(ciphertext);
            let used = self.process(&mut held, plaintext, outgoing);
            held.drain(..used.as_ref().copied().unwrap_or(0));
            self.incoming = if held.is_empty() { Vec::new() } else { held };
            used?;
        }
        if self.peer_closed {
            // Nothing after a close_notify is read.
            self.incoming = Vec::new();
        }
        Ok(Progress { established: self.is_established() && !was_established, peer_closed: self.peer_closed })
    }

    /// Encrypts `data` into application records appended to `outgoing`.
    pub fn write(&mut self, data: &[u8], outgoing: &mut Vec<u8>) -> Result<(), TlsError> {
        if let State::Records(records) = &mut self.state {
            return records.seal(data, outgoing).map_err(TlsError::Record);
        }
        self.with_write_traffic(outgoing, |traffic, outgoing| {
            let records = data.len() / MAX_FRAGMENT + 1;
            append(outgoing, data.len() + records * RECORD_OVERHEAD, |out| {
                traffic.encrypt(data, out).map_err(encrypt_error)
            })
        })
    }

    /// Appends a close_notify alert to `outgoing`.
    pub fn close(&mut self, outgoing: &mut Vec<u8>) -> Result<(), TlsError> {
        if let State::Records(records) = &mut self.state {
            return records.alert(0, outgoing).map_err(TlsError::Record);
        }
        self.with_write_traffic(outgoing, |traffic, outgoing| {
            append(outgoing, RECORD_OVERHEAD, |out| traffic.queue_close_notify(out).map_err(encrypt_error))
        })
    }

    /// Runs `f` once the connection can encrypt, first encoding whatever
    /// records rustls wants sent (a key update, session tickets).
    fn with_write_traffic(
        &mut self,
        outgoing: &mut Vec<u8>,
        f: impl FnOnce(
            &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
            &mut Vec<u8>,
        ) -> Result<(), TlsError>,
    ) -> Result<(), TlsError> {
        let State::Rustls { conn, established: true } = &mut self.state else {
            return Err(TlsError::NotReady);
        };
        // The held tail, not an empty buffer: rustls may track a partial
        // record's position in it. `read` left no complete record there.
        let mut f = Some(f);
        for _ in 0..MAX_STEPS {
            let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut self.incoming);
            if discard > 0 {
                // Records `read` did not take (it stopped at the peer's
                // close): the peer is done, so is writing to it.
                return Err(TlsError::NotReady);
            }
            match state.map_err(TlsError::Protocol)? {
                ConnectionState::WriteTraffic(mut traffic) => {
                    let f = f.take().expect("called once: the loop returns right after");
                    return f(&mut traffic, outgoing);
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    append(outgoing, 1024, |out| encode.encode(out).map_err(encode_error))?
                }
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                _ => return Err(TlsError::NotReady),
            }
        }
        Err(TlsError::Runaway)
    }

    /// Processes the records in `buf`; returns how many bytes were used
    /// (the rest is the start of a record still arriving).
    fn process(
        &mut self,
        buf: &mut [u8],
        plaintext: &mut Vec<u8>,
        outgoing: &mut Vec<u8>,
    ) -> Result<usize, TlsError> {
        let mut used = 0;
        if let State::Rustls { .. } = self.state {
            used = self.process_rustls(buf, plaintext, outgoing)?;
            self.shed_rustls()?;
        }
        if let State::Records(records) = &mut self.state {
            if self.peer_closed {
                return Ok(buf.len());
            }
            match records.open(&mut buf[used..], plaintext) {
                Ok(opened) => {
                    used += opened.used;
                    self.peer_closed = opened.peer_closed;
                }
                Err(e) => {
                    if let Some(code) = e.alert() {
                        // Best effort: the connection ends either way.
                        let _ = records.alert(code, outgoing);
                    }
                    return Err(TlsError::Record(e));
                }
            }
        }
        Ok(used)
    }

    /// Once a TLS 1.3 handshake is over, keeps the keys and frees rustls's
    /// connection (its state machine, key schedule and expanded keys).
    fn shed_rustls(&mut self) -> Result<(), TlsError> {
        let State::Rustls { conn, established: true } = &self.state else { return Ok(()) };
        let limit = match conn.negotiated_cipher_suite() {
            Some(SupportedCipherSuite::Tls13(suite)) if compact_cipher(suite.common.suite) => {
                suite.common.confidentiality_limit
            }
            _ => return Ok(()),
        };
        if conn.is_handshaking() || conn.protocol_version() != Some(ProtocolVersion::TLSv1_3) {
            return Ok(());
        }
        let State::Rustls { conn, .. } = std::mem::replace(&mut self.state, State::Broken) else {
            unreachable!("matched above")
        };
        let (secrets, _key_schedule) = conn.dangerous_into_kernel_connection().map_err(TlsError::Protocol)?;
        let records = Records::new(secrets, limit)
            .ok_or_else(|| TlsError::Encode("rustls gave keys of an unexpected kind".into()))?;
        self.state = State::Records(records);
        Ok(())
    }

    /// Runs rustls over the records in `buf` (the handshake, or a TLS 1.2
    /// connection); returns how many bytes were used.
    fn process_rustls(
        &mut self,
        buf: &mut [u8],
        plaintext: &mut Vec<u8>,
        outgoing: &mut Vec<u8>,
    ) -> Result<usize, TlsError> {
        let State::Rustls { conn, established } = &mut self.state else { return Ok(0) };
        let mut used = 0;
        for _ in 0..MAX_STEPS {
            let UnbufferedStatus { mut discard, state } = conn.process_tls_records(&mut buf[used..]);
            let more = match state.map_err(TlsError::Protocol)? {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(TlsError::Protocol)?;
                        discard += record.discard;
                        plaintext.extend_from_slice(record.payload);
                    }
                    true
                }
                ConnectionState::ReadEarlyData(mut early) => {
                    // 0-RTT is off (rustls's default): nothing to take.
                    while let Some(record) = early.next_record() {
                        discard += record.map_err(TlsError::Protocol)?.discard;
                    }
                    true
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    append(outgoing, 4096, |out| encode.encode(out).map_err(encode_error))?;
                    true
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    // The caller sends `outgoing` once this read returns.
                    transmit.done();
                    true
                }
                ConnectionState::BlockedHandshake => false,
                ConnectionState::WriteTraffic(_) => {
                    *established = true;
                    false
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    self.peer_closed = true;
                    false
                }
                _ => false,
            };
            used += discard;
            if !more {
                return Ok(used);
            }
        }
        Err(TlsError::Runaway)
    }
}

/// The TLS 1.3 ciphers `Records` implements (all that rustls's ring provider offers).
fn compact_cipher(suite: CipherSuite) -> bool {
    matches!(
        suite,
        CipherSuite::TLS13_AES_128_GCM_SHA256
            | CipherSuite::TLS13_AES_256_GCM_SHA384
            | CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
    )
}

/// Room a record needed that the buffer did not have.
enum Encoded {
    Short(usize),
    Failed(TlsError),
}

fn encode_error(e: EncodeError) -> Encoded {
    match e {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Encoded::Short(required_size)
        }
        other => Encoded::Failed(TlsError::Encode(other.to_string())),
    }
}

fn encrypt_error(e: EncryptError) -> Encoded {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Encoded::Short(required_size)
        }
        other => Encoded::Failed(TlsError::Encode(other.to_string())),
    }
}

/// Runs `encode` into fresh room at the end of `out` (`guess` bytes,
/// or as many as it says it needs), keeping only what it wrote.
fn append(
    out: &mut Vec<u8>,
    guess: usize,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, Encoded>,
) -> Result<(), TlsError> {
    let start = out.len();
    let mut room = guess;
    for _ in 0..2 {
        out.resize(start + room, 0);
        match encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Encoded::Short(needed)) => room = needed,
            Err(Encoded::Failed(e)) => {
                out.truncate(start);
                return Err(e);
            }
        }
    }
    out.truncate(start);
    Err(TlsError::Encode("the record outgrew the room it asked for".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    struct Pair {
        server: TlsSession,
        client: rustls::ClientConnection,
        /// Plaintext the server decrypted.
        got: Vec<u8>,
        /// Plaintext the client decrypted.
        client_got: Vec<u8>,
    }

    fn pair(version: &'static rustls::SupportedProtocolVersion) -> Pair {
        pair_with(version, rustls::crypto::ring::default_provider())
    }

    fn pair_with(
        version: &'static rustls::SupportedProtocolVersion,
        provider: rustls::crypto::CryptoProvider,
    ) -> Pair {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let config =
            super::super::server_config(cert.pem().as_bytes(), signing_key.serialize_pem().as_bytes())
                .expect("server config");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client =
            rustls::ClientConnection::new(Arc::new(client_config), "localhost".try_into().unwrap()).unwrap();
        Pair { server: TlsSession::new(config).unwrap(), client, got: Vec::new(), client_got: Vec::new() }
    }

    impl Pair {
        /// Client → server in `chunk`-byte reads, server → client, until quiet.
        fn shuttle(&mut self, chunk: usize) -> Result<(), TlsError> {
            for _ in 0..20 {
                let mut wire = Vec::new();
                while self.client.wants_write() {
                    self.client.write_tls(&mut wire).unwrap();
                }
                let mut back = Vec::new();
                for piece in wire.chunks_mut(chunk) {
                    self.server.read(piece, &mut self.got, &mut back)?;
                }
                if wire.is_empty() && back.is_empty() {
                    return Ok(());
                }
                self.deliver(&back);
            }
            panic!("no quiet after 20 rounds");
        }

        fn deliver(&mut self, to_client: &[u8]) {
            let mut rest = to_client;
            while !rest.is_empty() {
                self.client.read_tls(&mut rest).unwrap();
                self.client.process_new_packets().expect("client accepts the server's records");
                // As it comes: the client's plaintext buffer is bounded.
                let _ = self.client.reader().read_to_end(&mut self.client_got);
            }
        }
    }

    #[test]
    fn a_handshake_and_data_both_ways_over_tls13_and_tls12() {
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let mut p = pair(version);
            assert!(!p.server.is_established());
            assert!(matches!(p.server.write(b"early", &mut Vec::new()), Err(TlsError::NotReady)));
            p.shuttle(usize::MAX).unwrap();
            assert!(p.server.is_established() && !p.client.is_handshaking(), "{version:?}");
            // TLS 1.3 keeps the keys alone; TLS 1.2 stays with rustls.
            assert_eq!(p.server.is_compact(), version.version == rustls::ProtocolVersion::TLSv1_3);
            assert_eq!(p.client.alpn_protocol(), None, "the client offered no ALPN");

            p.client.writer().write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
            p.shuttle(usize::MAX).unwrap();
            assert_eq!(p.got, b"GET / HTTP/1.1\r\n\r\n");
            assert_eq!(p.server.held(), 0);

            let mut out = Vec::new();
            p.server.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", &mut out).unwrap();
            p.server.write(&[7u8; 70_000], &mut out).unwrap();
            p.deliver(&out);
            assert!(p.client_got.starts_with(b"HTTP/1.1 101"), "{version:?}");
            assert_eq!(p.client_got.len(), 36 + 70_000);
        }
    }

    #[test]
    fn records_split_across_reads_are_put_together_and_then_released() {
        let mut p = pair(&rustls::version::TLS13);
        p.shuttle(7).unwrap();
        assert!(p.server.is_established());
        let message = vec![b'x'; 20_000];
        p.client.writer().write_all(&message).unwrap();
        let mut wire = Vec::new();
        while p.client.wants_write() {
            p.client.write_tls(&mut wire).unwrap();
        }
        let (first, rest) = wire.split_at_mut(100);
        p.server.read(first, &mut p.got, &mut Vec::new()).unwrap();
        assert_eq!(p.server.held(), 100, "an incomplete record is held");
        assert!(p.got.is_empty());
        p.server.read(rest, &mut p.got, &mut Vec::new()).unwrap();
        assert_eq!(p.got, message);
        assert_eq!((p.server.held(), p.server.incoming.capacity()), (0, 0), "nothing held between records");
    }

    #[test]
    fn garbage_instead_of_a_client_hello_is_an_error_not_a_hang() {
        let config = {
            let k = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
            super::super::server_config(k.cert.pem().as_bytes(), k.signing_key.serialize_pem().as_bytes())
                .unwrap()
        };
        let mut server = TlsSession::new(config.clone()).unwrap();
        let mut garbage = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let mut out = Vec::new();
        assert!(matches!(server.read(&mut garbage, &mut Vec::new(), &mut out), Err(TlsError::Protocol(_))));
        // A handshake record of the maximum length that never completes is held, bounded by one record.
        let mut server = TlsSession::new(config).unwrap();
        let mut header = vec![22, 3, 1, 0x40, 0x00];
        server.read(&mut header, &mut Vec::new(), &mut Vec::new()).unwrap();
        assert_eq!(server.held(), 5);
    }

    #[test]
    fn close_notify_goes_both_ways() {
        let mut p = pair(&rustls::version::TLS13);
        p.shuttle(usize::MAX).unwrap();
        let mut out = Vec::new();
        p.server.close(&mut out).unwrap();
        p.deliver(&out);
        let mut buf = [0u8; 1];
        assert_eq!(p.client.reader().read(&mut buf).unwrap(), 0, "the client sees a clean end");
        p.client.send_close_notify();
        p.shuttle(usize::MAX).unwrap();
        assert!(p.server.peer_closed());
    }

    #[test]
    fn every_tls13_cipher_keeps_only_its_keys_and_carries_data_both_ways() {
        use rustls::crypto::ring::cipher_suite as suites;
        for suite in [
            suites::TLS13_AES_128_GCM_SHA256,
            suites::TLS13_AES_256_GCM_SHA384,
            suites::TLS13_CHACHA20_POLY1305_SHA256,
        ] {
            let provider = rustls::crypto::CryptoProvider {
                cipher_suites: vec![suite],
                ..rustls::crypto::ring::default_provider()
            };
            let mut p = pair_with(&rustls::version::TLS13, provider);
            // The request rides with the client's Finished, as browsers send it.
            p.client.writer().write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
            p.shuttle(usize::MAX).unwrap();
            assert!(p.server.is_compact(), "{suite:?}");
            assert_eq!(p.got, b"GET / HTTP/1.1\r\n\r\n", "{suite:?}");
            let mut out = Vec::new();
            p.server.write(&[9u8; 40_000], &mut out).unwrap();
            p.deliver(&out);
            assert_eq!(p.client_got, [9u8; 40_000], "{suite:?}");
            p.client.writer().write_all(b"more").unwrap();
            p.shuttle(3).unwrap();
            assert_eq!(p.got.len(), 18 + 4, "{suite:?}");
        }
    }

    #[test]
    fn a_key_update_from_the_client_ends_the_connection_with_close_notify() {
        let mut p = pair(&rustls::version::TLS13);
        p.shuttle(usize::MAX).unwrap();
        p.client.refresh_traffic_keys().unwrap();
        p.client.writer().write_all(b"after the update").unwrap();
        let mut wire = Vec::new();
        while p.client.wants_write() {
            p.client.write_tls(&mut wire).unwrap();
        }
        let mut out = Vec::new();
        let e = p.server.read(&mut wire, &mut p.got, &mut out).unwrap_err();
        assert!(e.to_string().contains("key update"), "{e}");
        assert!(p.got.is_empty());
        p.deliver(&out);
        let mut buf = [0u8; 1];
        assert_eq!(p.client.reader().read(&mut buf).unwrap(), 0, "the client sees a clean end");
    }

    #[test]
    fn a_tampered_record_gets_a_bad_record_mac_alert() {
        let mut p = pair(&rustls::version::TLS13);
        p.shuttle(usize::MAX).unwrap();
        p.client.writer().write_all(b"hello").unwrap();
        let mut wire = Vec::new();
        while p.client.wants_write() {
            p.client.write_tls(&mut wire).unwrap();
        }
        wire[7] ^= 0x80;
        let mut out = Vec::new();
        assert!(matches!(p.server.read(&mut wire, &mut p.got, &mut out), Err(TlsError::Record(_))));
        let mut rest = &out[..];
        p.client.read_tls(&mut rest).unwrap();
        let e = p.client.process_new_packets().unwrap_err();
        assert!(e.to_string().contains("BadRecordMac"), "{e}");
    }
}
