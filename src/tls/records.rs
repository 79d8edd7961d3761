//! TLS 1.3 application records on the keys rustls negotiated, after the
//! handshake (RFC 8446 §5.2): what an established connection keeps is the
//! two directions' key, IV and sequence number (~120 bytes) instead of
//! rustls's whole connection (~3 KiB: its state machine, the key schedule
//! and the expanded AEAD keys). The AEAD itself is ring's, the same code
//! rustls runs; a direction's key is expanded for the records of one call
//! and dropped after it, so an idle connection holds no expanded key.
//!
//! Left to rustls: the handshake and everything TLS 1.2. Not kept: the key
//! schedule, so a KeyUpdate from the peer cannot be followed and ends the
//! connection (`KeyUpdate`), and the connection ends before its own
//! records reach the cipher's confidentiality limit (`KeysExhausted`)
//! rather than rekeying. docs/security.md says so.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets};

/// Largest plaintext of one record (2^14).
pub const MAX_FRAGMENT: usize = 16 * 1024;
/// Largest ciphertext a TLS 1.3 peer may send in one record (2^14 + 256).
const MAX_CIPHERTEXT: usize = MAX_FRAGMENT + 256;
const HEADER: usize = 5;
const TAG: usize = 16;

/// Outer and inner content types (RFC 8446 §5.1).
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
/// Handshake message type of a KeyUpdate.
const KEY_UPDATE: u8 = 24;
/// Alert descriptions we send or act on.
const CLOSE_NOTIFY: u8 = 0;
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;
const USER_CANCELED: u8 = 90;

/// Why a record could not be taken or made. Each is the end of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// A record that did not decrypt (tampered, or not under our keys).
    Decrypt,
    /// A record longer than TLS 1.3 allows.
    Overflow,
    /// A record or message TLS 1.3 does not allow here.
    Unexpected(&'static str),
    /// The peer asked to change keys, which these records cannot follow.
    KeyUpdate,
    /// The peer sent a fatal alert (its description code).
    PeerAlert(u8),
    /// Our records reached the cipher's confidentiality limit.
    KeysExhausted,
}

impl RecordError {
    /// The alert to send the peer before closing, if one applies.
    pub fn alert(self) -> Option<u8> {
        match self {
            RecordError::Decrypt => Some(BAD_RECORD_MAC),
            RecordError::Overflow => Some(RECORD_OVERFLOW),
            RecordError::Unexpected(_) => Some(UNEXPECTED_MESSAGE),
            // A clean close: the peer did nothing wrong.
            RecordError::KeyUpdate => Some(CLOSE_NOTIFY),
            RecordError::PeerAlert(_) | RecordError::KeysExhausted => None,
        }
    }
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Decrypt => f.write_str("a record failed to decrypt"),
            RecordError::Overflow => f.write_str("a record longer than TLS 1.3 allows"),
            RecordError::Unexpected(what) => write!(f, "unexpected {what}"),
            RecordError::KeyUpdate => {
                f.write_str("the client asked for a key update, which ringcast does not follow; closed")
            }
            RecordError::PeerAlert(code) => write!(f, "the peer sent fatal alert {code}"),
            RecordError::KeysExhausted => {
                f.write_str("the connection's keys reached their confidentiality limit; closed")
            }
        }
    }
}

/// One direction's key material and the sequence number of its next record.
#[derive(Clone)]
struct Direction {
    algorithm: &'static aead::Algorithm,
    key: [u8; 32],
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
}

impl Direction {
    fn new(seq: u64, secrets: ConnectionTrafficSecrets) -> Option<Direction> {
        let (algorithm, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&aead::CHACHA20_POLY1305, key, iv),
            _ => return None,
        };
        let (key, iv) = (key.as_ref(), iv.as_ref());
        if key.len() != algorithm.key_len() || iv.len() != aead::NONCE_LEN {
            return None;
        }
        let mut d = Direction { algorithm, key: [0; 32], iv: [0; aead::NONCE_LEN], seq };
        d.key[..key.len()].copy_from_slice(key);
        d.iv.copy_from_slice(iv);
        Some(d)
    }

    /// The expanded key, for one call's records.
    fn expand(&self) -> LessSafeKey {
        let key = UnboundKey::new(self.algorithm, &self.key[..self.algorithm.key_len()])
            .expect("the length was checked in Direction::new");
        LessSafeKey::new(key)
    }

    /// The per-record nonce: the IV XOR the sequence number (§5.3).
    fn nonce(&self) -> Nonce {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        Nonce::assume_unique_for_key(nonce)
    }
}

impl Drop for Direction {
    fn drop(&mut self) {
        // Not left in freed memory.
        self.key.fill(0);
        self.iv.fill(0);
    }
}

/// An established TLS 1.3 connection's record protection, both ways.
#[derive(Clone)]
pub struct Records {
    tx: Direction,
    rx: Direction,
    /// Records we may send under one key (the suite's confidentiality limit).
    tx_limit: u64,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("Records").field("tx_seq", &self.tx.seq).field("rx_seq", &self.rx.seq).finish()
    }
}

/// What `open` found beyond application data.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// Bytes of `buf` taken: whole records; the rest is a record still arriving.
    pub used: usize,
    /// The peer's close_notify arrived (nothing after it was read).
    pub peer_closed: bool,
}

impl Records {
    /// The records of a TLS 1.3 connection from what rustls extracted;
    /// None for a cipher these records do not implement (the caller keeps
    /// rustls's connection then).
    pub fn new(secrets: ExtractedSecrets, tx_limit: u64) -> Option<Records> {
        let ExtractedSecrets { tx: (tx_seq, tx), rx: (rx_seq, rx) } = secrets;
        Some(Records { tx: Direction::new(tx_seq, tx)?, rx: Direction::new(rx_seq, rx)?, tx_limit })
    }

    /// The records with the directions swapped: the peer's side of the
    /// same connection (for tests and fuzzing, which play the client).
    pub fn peer(&self) -> Records {
        Records { tx: self.rx.clone(), rx: self.tx.clone(), tx_limit: self.tx_limit }
    }

    /// Decrypts the whole records at the start of `buf` in place,
    /// appending their application data to `plaintext`; stops after a
    /// close_notify. An error ends the connection (`RecordError::alert`
    /// says what to tell the peer).
    pub fn open(&mut self, buf: &mut [u8], plaintext: &mut Vec<u8>) -> Result<Opened, RecordError> {
        let mut key = None;
        let mut opened = Opened::default();
        while buf.len() - opened.used >= HEADER {
            let record = &mut buf[opened.used..];
            let header: [u8; HEADER] = record[..HEADER].try_into().expect("checked length");
            let len = u16::from_be_bytes([header[3], header[4]]) as usize;
            if header[0] != APPLICATION_DATA {
                // After the handshake every TLS 1.3 record is application data outside.
                return Err(RecordError::Unexpected("a record that is not application data"));
            }
            if len > MAX_CIPHERTEXT {
                return Err(RecordError::Overflow);
            }
            if record.len() < HEADER + len {
                break;
            }
            if len < TAG + 1 {
                return Err(RecordError::Decrypt);
            }
            let key = key.get_or_insert_with(|| self.rx.expand());
            let inner = key
                .open_in_place(self.rx.nonce(), Aad::from(header), &mut record[HEADER..HEADER + len])
                .map_err(|_| RecordError::Decrypt)?;
            self.rx.seq += 1;
            opened.used += HEADER + len;
            // The content type is the last byte that is not zero padding.
            let Some(end) = inner.iter().rposition(|&b| b != 0) else {
                return Err(RecordError::Unexpected("a record of padding only"));
            };
            let (content, kind) = (&inner[..end], inner[end]);
            if content.len() > MAX_FRAGMENT {
                return Err(RecordError::Overflow);
            }
            match kind {
                APPLICATION_DATA => plaintext.extend_from_slice(content),
                ALERT => match content {
                    [_, CLOSE_NOTIFY] => {
                        opened.peer_closed = true;
                        return Ok(opened);
                    }
                    [_, USER_CANCELED] => {}
                    [_, code] => return Err(RecordError::PeerAlert(*code)),
                    _ => return Err(RecordError::Unexpected("a malformed alert")),
                },
                HANDSHAKE if content.first() == Some(&KEY_UPDATE) => return Err(RecordError::KeyUpdate),
                HANDSHAKE => return Err(RecordError::Unexpected("a handshake message after the handshake")),
                _ => return Err(RecordError::Unexpected("a record of an unknown content type")),
            }
        }
        Ok(opened)
    }

    /// Encrypts `data` as application records (2^14 bytes of it each) appended to `out`.
    pub fn seal(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        self.seal_as(APPLICATION_DATA, data, out)
    }

    /// Appends an alert record (close_notify is a warning, every other one fatal).
    pub fn alert(&mut self, code: u8, out: &mut Vec<u8>) -> Result<(), RecordError> {
        let level = if code == CLOSE_NOTIFY { 1 } else { 2 };
        self.seal_as(ALERT, &[level, code], out)
    }

    /// Encrypts `data` as records of inner content type `kind` (what a
    /// peer could send: tests and fuzzing play the client with it).
    pub fn seal_as(&mut self, kind: u8, data: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        let records = data.len().div_ceil(MAX_FRAGMENT).max(1) as u64;
        // The last record under the keys is kept for our close_notify.
        let kept_for_close = u64::from(kind != ALERT);
        if self.tx.seq.saturating_add(records + kept_for_close) > self.tx_limit {
            return Err(RecordError::KeysExhausted);
        }
        let key = self.tx.expand();
        out.reserve(data.len() + records as usize * (HEADER + 1 + TAG));
        let mut chunks = data.chunks(MAX_FRAGMENT);
        let mut next = chunks.next().or(Some(&[]));
        while let Some(chunk) = next {
            let len = (chunk.len() + 1 + TAG) as u16;
            let [hi, lo] = len.to_be_bytes();
            let header = [APPLICATION_DATA, 3, 3, hi, lo];
            out.extend_from_slice(&header);
            let start = out.len();
            out.extend_from_slice(chunk);
            out.push(kind);
            let tag = key
                .seal_in_place_separate_tag(self.tx.nonce(), Aad::from(header), &mut out[start..])
                .map_err(|_| RecordError::Overflow)?;
            out.extend_from_slice(tag.as_ref());
            self.tx.seq += 1;
            next = chunks.next();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};

    /// A server's records and the client's (the same keys, swapped).
    fn pair(tx_limit: u64) -> (Records, Records) {
        let secrets = |byte: u8| ConnectionTrafficSecrets::Aes256Gcm {
            key: AeadKey::from([byte; 32]),
            iv: Iv::from([byte; aead::NONCE_LEN]),
        };
        let server =
            Records::new(ExtractedSecrets { tx: (0, secrets(1)), rx: (0, secrets(2)) }, tx_limit).unwrap();
        let client = server.peer();
        (server, client)
    }

    #[test]
    fn data_goes_both_ways_in_records_of_at_most_2_to_the_14_bytes() {
        let (mut server, mut client) = pair(u64::MAX);
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = Vec::new();
        client.seal(&data, &mut wire).unwrap();
        assert_eq!(wire.len(), data.len() + 3 * (HEADER + 1 + TAG), "three records");
        let mut got = Vec::new();
        // Whole records only: the last one's tail stays for the next read.
        let opened = server.open(&mut wire[..40_000], &mut got).unwrap();
        assert_eq!((opened.used, got.len()), (2 * (HEADER + MAX_FRAGMENT + 1 + TAG), 2 * MAX_FRAGMENT));
        let opened = server.open(&mut wire[opened.used..], &mut got).unwrap();
        assert!(!opened.peer_closed);
        assert_eq!(got, data);

        let mut back = Vec::new();
        server.seal(b"pong", &mut back).unwrap();
        let mut echoed = Vec::new();
        client.open(&mut back, &mut echoed).unwrap();
        assert_eq!(echoed, b"pong");
    }

    #[test]
    fn close_notify_ends_reading_and_fatal_alerts_and_key_updates_end_the_connection() {
        let (mut server, mut client) = pair(u64::MAX);
        let mut wire = Vec::new();
        client.seal(b"last words", &mut wire).unwrap();
        client.alert(CLOSE_NOTIFY, &mut wire).unwrap();
        client.seal(b"never read", &mut wire).unwrap();
        let mut got = Vec::new();
        let opened = server.open(&mut wire, &mut got).unwrap();
        assert!(opened.peer_closed);
        assert_eq!(got, b"last words");

        let (mut server, mut client) = pair(u64::MAX);
        let mut wire = Vec::new();
        client.alert(USER_CANCELED, &mut wire).unwrap();
        client.alert(40, &mut wire).unwrap();
        assert_eq!(server.open(&mut wire, &mut got), Err(RecordError::PeerAlert(40)));

        let (mut server, mut client) = pair(u64::MAX);
        let mut wire = Vec::new();
        client.seal_as(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], &mut wire).unwrap();
        let e = server.open(&mut wire, &mut got).unwrap_err();
        assert_eq!((e, e.alert()), (RecordError::KeyUpdate, Some(CLOSE_NOTIFY)));

        let (mut server, mut client) = pair(u64::MAX);
        let mut wire = Vec::new();
        client.seal_as(HANDSHAKE, &[1, 0, 0, 0], &mut wire).unwrap();
        assert!(matches!(server.open(&mut wire, &mut got), Err(RecordError::Unexpected(_))));
    }

    #[test]
    fn records_that_are_tampered_oversized_or_not_application_data_are_refused() {
        let (mut server, mut client) = pair(u64::MAX);
        let mut wire = Vec::new();
        client.seal(b"hello", &mut wire).unwrap();
        let mut tampered = wire.clone();
        tampered[HEADER + 1] ^= 1;
        assert_eq!(server.clone().open(&mut tampered, &mut Vec::new()), Err(RecordError::Decrypt));
        let mut replayed = [wire.clone(), wire.clone()].concat();
        let mut got = Vec::new();
        assert_eq!(server.open(&mut replayed, &mut got), Err(RecordError::Decrypt), "a replay");
        assert_eq!(got, b"hello");

        let (mut server, _) = pair(u64::MAX);
        let mut header = [APPLICATION_DATA, 3, 3, 0x41, 0x01];
        assert_eq!(server.open(&mut header, &mut got), Err(RecordError::Overflow));
        let mut handshake = [HANDSHAKE, 3, 3, 0, 4, 1, 0, 0, 0];
        assert!(matches!(server.open(&mut handshake, &mut got), Err(RecordError::Unexpected(_))));
        let mut short = [APPLICATION_DATA, 3, 3, 0, 3, 0, 0, 0];
        assert_eq!(server.open(&mut short, &mut got), Err(RecordError::Decrypt));
        let mut incomplete = [APPLICATION_DATA, 3, 3, 0, 40, 0, 0];
        assert_eq!(server.open(&mut incomplete, &mut got), Ok(Opened { used: 0, peer_closed: false }));

        let (mut server, mut client) = pair(u64::MAX);
        let mut padding_only = Vec::new();
        client.seal_as(0, &[], &mut padding_only).unwrap();
        assert!(matches!(server.open(&mut padding_only, &mut got), Err(RecordError::Unexpected(_))));
    }

    #[test]
    fn the_keys_stop_before_their_confidentiality_limit_leaving_room_for_close_notify() {
        let (mut server, mut client) = pair(3);
        let mut wire = Vec::new();
        server.seal(b"one", &mut wire).unwrap();
        server.seal(b"two", &mut wire).unwrap();
        assert_eq!(server.seal(b"three", &mut wire), Err(RecordError::KeysExhausted));
        server.alert(CLOSE_NOTIFY, &mut wire).unwrap();
        assert_eq!(server.alert(CLOSE_NOTIFY, &mut wire), Err(RecordError::KeysExhausted));
        let mut got = Vec::new();
        assert!(client.open(&mut wire, &mut got).unwrap().peer_closed);
        assert_eq!(got, b"onetwo");
    }
}
