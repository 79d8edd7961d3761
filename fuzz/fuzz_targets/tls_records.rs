//! Client bytes → a connection's TLS record layer (`tls::TlsSession`) →
//! the plaintext a RoadRunner session would get, in arbitrary chunks:
//! never a panic or a hang, an incomplete record is the only thing held,
//! and after a real handshake what the client sent as application data
//! comes out exactly, however the ciphertext was split. Four modes (first
//! byte): raw bytes from the first one (the ClientHello parser), raw
//! records after a completed handshake (records under the session's keys),
//! fuzz bytes sent by a real client as application data, and records of
//! any inner content type sealed under the client's keys (what a hostile
//! client could make TLS 1.3's record layer decrypt: alerts, handshake
//! messages, padding, unknown types).
#![no_main]

use std::io::Write;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use ringcast::tls::{server_config, TlsSession};

/// Bytes of one TLS record at most (16 KiB payload plus overhead).
const MAX_RECORD: usize = 16_384 + 2048;

struct Keys {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let k = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let server =
            server_config(k.cert.pem().as_bytes(), k.signing_key.serialize_pem().as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(k.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Keys { server, client: Arc::new(client) }
    })
}

/// A server session and a client that completed a handshake with it.
fn established() -> (TlsSession, rustls::ClientConnection) {
    let k = keys();
    let mut server = TlsSession::new(k.server.clone()).unwrap();
    let mut client =
        rustls::ClientConnection::new(k.client.clone(), "localhost".try_into().unwrap()).unwrap();
    for _ in 0..10 {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        let mut back = Vec::new();
        server.read(&mut wire, &mut Vec::new(), &mut back).unwrap();
        let mut rest = &back[..];
        while !rest.is_empty() {
            client.read_tls(&mut rest).unwrap();
            client.process_new_packets().unwrap();
        }
        if server.is_established() && !client.is_handshaking() {
            return (server, client);
        }
    }
    panic!("the handshake did not complete");
}

/// Feeds `wire` in `chunk`-byte reads; returns the plaintext, or None once
/// the session refused the input.
fn feed(server: &mut TlsSession, wire: &mut [u8], chunk: usize) -> Option<Vec<u8>> {
    let mut plaintext = Vec::new();
    for piece in wire.chunks_mut(chunk) {
        let mut out = Vec::new();
        if server.read(piece, &mut plaintext, &mut out).is_err() {
            return None;
        }
        assert!(server.held() <= MAX_RECORD, "held {} bytes", server.held());
    }
    Some(plaintext)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let chunk = 1 + data[1] as usize * 64;
    let body = &data[2..];
    match data[0] % 4 {
        0 => {
            let mut server = TlsSession::new(keys().server.clone()).unwrap();
            let _ = feed(&mut server, &mut body.to_vec(), chunk);
        }
        1 => {
            let (mut server, _client) = established();
            let _ = feed(&mut server, &mut body.to_vec(), chunk);
        }
        3 => {
            let (mut server, _client) = established();
            let Some(mut peer) = server.client_records() else { return };
            // (kind, length, bytes) triples, each sealed as one or more records.
            let mut wire = Vec::new();
            let mut rest = body;
            while let [kind, len, tail @ ..] = rest {
                let (content, next) = tail.split_at((*len as usize * 67).min(tail.len()));
                peer.seal_as(*kind % 25, content, &mut wire).expect("the peer's keys have room");
                rest = next;
            }
            if let Some(plaintext) = feed(&mut server, &mut wire, chunk) {
                assert!(plaintext.len() <= body.len(), "no more plaintext than was sealed");
            }
        }
        _ => {
            let (mut server, mut client) = established();
            client.writer().write_all(body).unwrap();
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            let plaintext = feed(&mut server, &mut wire, chunk).expect("a real client's records are taken");
            assert_eq!(plaintext, body, "application data comes out exactly");
            assert_eq!(server.held(), 0);
            // What a RoadRunner session would make of it: never a panic.
            let mut session = ringcast::session::Session::new(ringcast::session::Kind::RoadRunner, 1, 0);
            let mut json = simd_json::Buffers::default();
            let mut cx = ringcast::session::Context::new(512, 4096, &mut json);
            let mut bytes = plaintext;
            session.on_bytes(&mut bytes, &mut cx, &mut Vec::new());
        }
    }
});
