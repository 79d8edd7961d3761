//! wss:// and https:// through the real binary: a test CA made at test
//! time, real rustls clients, the attacks a TLS port meets.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::tls::{https_request, presented, tls_connect, wss_connect, TestCa};
use common::*;

/// A roadrunner vhost at /ws served over TLS with a leaf of `ca`.
fn tls_server(ca: &TestCa, dir: &std::path::Path, extra: &str) -> Server {
    let files = ca.leaf().write(dir);
    Server::start(&roadrunner_config(&format!("{extra}\n[server.tls]\n{files}")), 1)
}

#[test]
fn wss_join_and_delivery_small_and_large() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let leaf = ca.leaf();
    let files = leaf.write(dir.path());
    let s = Server::start(&roadrunner_config(&format!("[server.tls]\n{files}")), 1);
    let config = ca.client_config();
    assert_eq!(presented(&tls_connect(s.ws, &config).unwrap()), leaf.der, "the configured certificate");

    let mut ws = wss_connect(s.ws, "/ws", &config).expect("wss handshake");
    join(&mut ws, &["t"]);
    assert_eq!(s.publish_json(r#"{"topics":["t"],"payload":"hello"}"#).0, 200);
    assert_eq!(recv_text(&mut ws), r#"{"topic":"t","payload":"hello"}"#);
    // Frames over one TLS record (16 KiB), several queued at once: the
    // socket takes them in pieces, nothing is lost or reordered.
    for i in 0..4 {
        let payload = format!("{i}{}", "x".repeat(200_000));
        let body = serde_json::json!({"topics": ["t"], "payload": payload}).to_string();
        assert_eq!(s.publish_json(&body).0, 200);
    }
    for i in 0..4 {
        let m: serde_json::Value = serde_json::from_str(&recv_text(&mut ws)).unwrap();
        let payload = m["payload"].as_str().unwrap();
        assert_eq!((payload.len(), &payload[..1]), (200_001, i.to_string().as_str()));
    }
    // Commands round-trip over TLS too (leave is answered).
    send_text(&mut ws, r#"{"command":"leave","topics":["t"]}"#);
    assert_eq!(recv_text(&mut ws), r#"{"topic":"@leave","payload":["t"]}"#);
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("a clean close expected: {e}"),
        }
    }
}

#[test]
fn plain_http_on_the_tls_port_is_told_to_use_tls() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let s = tls_server(&ca, dir.path(), "");
    let out = raw_exchange(s.ws, upgrade_request("/ws").as_bytes(), Duration::from_secs(5));
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(text.contains("wss://"), "{text}");
    assert!(matches!(try_connect(s.ws, "/ws", &[]), Err(tungstenite::Error::Http(_))));
}

/// A real ClientHello, cut short.
fn half_a_client_hello(ca: &TestCa) -> Vec<u8> {
    let mut conn =
        rustls::ClientConnection::new(ca.client_config(), "localhost".try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello.truncate(hello.len() / 2);
    hello
}

/// Sends `bytes` and waits for the server to close; how long it took.
fn closed_after(addr: std::net::SocketAddr, bytes: &[u8]) -> Duration {
    let started = Instant::now();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(bytes).unwrap();
    let mut sink = Vec::new();
    // The end: EOF after an alert, or a reset.
    let _ = c.read_to_end(&mut sink);
    started.elapsed()
}

#[test]
fn garbage_or_a_stalled_handshake_is_closed_within_the_handshake_timeout() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let s = tls_server(&ca, dir.path(), "[limits]\nhandshake_timeout_ms = 500");
    let refused = |reason: &str| {
        let text = http_get(&s.url("/metrics")).1;
        let series = format!("ringcast_handshakes_refused_total{{shard=\"0\",reason=\"{reason}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&series)).unwrap().parse::<u64>().unwrap()
    };
    // A record header of a handshake record, then junk: an alert and the end, at once.
    let mut garbage = vec![22, 3, 1, 0, 200];
    garbage.extend((0..200).map(|i| (i * 7) as u8));
    assert!(closed_after(s.ws, &garbage) < Duration::from_millis(450), "garbage is refused at once");
    assert!(eventually(Duration::from_secs(5), || refused("tls") == 1));

    // Half a ClientHello and silence: closed at the handshake timeout.
    let took = closed_after(s.ws, &half_a_client_hello(&ca));
    assert!(took >= Duration::from_millis(450) && took < Duration::from_secs(3), "{took:?}");
    // A handshake done and no upgrade request: the same deadline.
    let started = Instant::now();
    let mut idle = tls_connect(s.ws, &ca.client_config()).unwrap();
    let mut b = [0u8; 16];
    let _ = idle.read(&mut b);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(450) && took < Duration::from_secs(3), "{took:?}");
    assert!(eventually(Duration::from_secs(5), || refused("timeout") == 2));

    // They cost nothing after: no connection counted, and a good client is served.
    assert!(eventually(Duration::from_secs(5), || s.metric("ringcast_connections") == 0));
    let mut ws = wss_connect(s.ws, "/ws", &ca.client_config()).unwrap();
    join(&mut ws, &["after"]);
}

#[test]
fn sighup_reloads_the_certificate_for_new_handshakes_and_open_connections_keep_receiving() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let first = ca.leaf();
    let files = first.write(dir.path());
    let mut s = Server::start(&roadrunner_config(&format!("[server.tls]\n{files}")), 2);
    let config = ca.client_config();
    let mut old = wss_connect(s.ws, "/ws", &config).unwrap();
    assert_eq!(presented(old.get_ref()), first.der);
    join(&mut old, &["t"]);

    // A broken file and SIGHUP: logged, the certificate in use stays.
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    s.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || s.log().contains("TLS reload failed")), "{}", s.log());
    assert_eq!(presented(&tls_connect(s.ws, &config).unwrap()), first.der);

    let second = ca.leaf();
    second.write(dir.path());
    s.signal("HUP");
    assert!(
        eventually(Duration::from_secs(5), || presented(&tls_connect(s.ws, &config).unwrap()) == second.der),
        "new handshakes get the new certificate"
    );
    assert_eq!(s.publish_json(r#"{"topics":["t"],"payload":"still here"}"#).0, 200);
    assert_eq!(recv_text(&mut old), r#"{"topic":"t","payload":"still here"}"#);
    let mut new = wss_connect(s.ws, "/ws", &config).unwrap();
    join(&mut new, &["t"]);
    assert!(s.wait_exit(Duration::from_millis(100)).is_none(), "SIGHUP does not stop the server");
}

#[test]
fn tls12_and_tls13_clients_are_served_and_a_key_update_ends_only_its_connection() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let s = tls_server(&ca, dir.path(), "");
    let mut tls12 = wss_connect(s.ws, "/ws", &ca.client_config_of(&[&rustls::version::TLS12])).unwrap();
    let mut tls13 = wss_connect(s.ws, "/ws", &ca.client_config_of(&[&rustls::version::TLS13])).unwrap();
    let mut updating = wss_connect(s.ws, "/ws", &ca.client_config_of(&[&rustls::version::TLS13])).unwrap();
    for ws in [&mut tls12, &mut tls13, &mut updating] {
        join(ws, &["t"]);
    }
    assert_eq!(tls12.get_ref().conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(s.publish_json(r#"{"topics":["t"],"payload":"one"}"#).0, 200);
    for ws in [&mut tls12, &mut tls13, &mut updating] {
        assert_eq!(recv_text(ws), r#"{"topic":"t","payload":"one"}"#);
    }

    // A TLS 1.3 key update: the server does not keep the key schedule to
    // follow it, so it closes that connection cleanly (close_notify).
    updating.get_mut().conn.refresh_traffic_keys().unwrap();
    send_text(&mut updating, r#"{"command":"join","topics":["u"]}"#);
    let ended = loop {
        match updating.read() {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert!(
        !matches!(ended, tungstenite::Error::Io(ref e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "closed, not timed out: {ended}"
    );
    assert!(eventually(Duration::from_secs(5), || s.log().contains("key update")), "{}", s.log());

    assert_eq!(s.publish_json(r#"{"topics":["t"],"payload":"two"}"#).0, 200);
    for ws in [&mut tls12, &mut tls13] {
        assert_eq!(recv_text(ws), r#"{"topic":"t","payload":"two"}"#);
    }
}

#[test]
fn the_api_over_https() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let files = ca.leaf().write(dir.path());
    let s = Server::start(&roadrunner_config(&format!("[server.api_tls]\n{files}")), 1);
    let config = ca.client_config();
    assert_eq!(https_request(s.api, &config, "GET", "/health", ""), (200, r#"{"status":"ok"}"#.into()));
    let mut ws = s.connect("/ws");
    join(&mut ws, &["t"]);
    let (status, _) = https_request(s.api, &config, "POST", "/publish", r#"{"topics":["t"],"payload":"x"}"#);
    assert_eq!(status, 200);
    assert_eq!(recv_text(&mut ws), r#"{"topic":"t","payload":"x"}"#);
    // Plain HTTP to the https port gets no API.
    let out = raw_exchange(s.api, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_secs(3));
    assert!(!String::from_utf8_lossy(&out).contains("status"), "{out:?}");
}

#[test]
fn an_unusable_certificate_stops_the_start_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = start_error(
        dir.path(),
        "[server.tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n",
    );
    assert!(err.contains("server.tls") && err.contains("/nonexistent/cert.pem"), "{err}");
}

/// Starts ringcast with `config`, which must stop the start; returns what it said.
fn start_error(dir: &std::path::Path, config: &str) -> String {
    let path = dir.join("ringcast.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .arg("--config")
        .arg(&path)
        .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0", "--rpc-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the start must fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The status of a refused upgrade.
fn refused_status(result: Result<Ws, tungstenite::Error>) -> u16 {
    match result {
        Err(tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, got an upgrade"),
    }
}

#[test]
fn https_hooks_and_proxy_backends_are_verified_against_the_ca_file() {
    use common::backend::{Answer, Backend};
    let ca = TestCa::new();
    let stranger = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(dir.path());
    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger_file = stranger.write(stranger_dir.path());
    let leaf = ca.leaf();
    let tls = ringcast::tls::server_config(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap();
    let backend = Backend::start_tls(tls, |s| match (s.method.as_str(), s.body.as_str()) {
        ("GET", _) => Answer::new(200, "ok"),
        ("POST", body) => Answer::new(200, &format!("echo: {body}")),
        _ => Answer::new(200, ""),
    });
    let url = backend.url();
    assert!(url.starts_with("https://localhost:"), "{url}");
    let config = format!(
        "[[vhost]]\npath = \"/ws\"\ndialect = \"roadrunner\"\n\
         [vhost.hooks]\nconnect = \"{url}/connect\"\nca_file = {ca:?}\n\
         [[vhost]]\npath = \"/p/\"\ndialect = \"proxy\"\nbackend = \"{url}\"\n\
         [vhost.hooks]\nca_file = {ca:?}\n\
         [[vhost]]\npath = \"/wrong-ca\"\ndialect = \"roadrunner\"\n\
         [vhost.hooks]\nconnect = \"{url}/wrong\"\nca_file = {stranger:?}\nretries = 0\n\
         [[vhost]]\npath = \"/system-roots\"\ndialect = \"roadrunner\"\n\
         [vhost.hooks]\nconnect = \"{url}/system\"\nretries = 0\n",
        ca = ca_file.display().to_string(),
        stranger = stranger_file.display().to_string(),
    );
    let s = Server::start(&config, 1);

    // The hook over https, verified against the private CA.
    let _rr = s.connect("/ws");
    assert_eq!(backend.requests("GET", "/connect").len(), 1);
    // The proxy backend: connect and a message round trip over https.
    let mut joe = s.connect("/p/joe");
    assert_eq!(backend.requests("GET", "/joe").len(), 1);
    send_text(&mut joe, "hi");
    assert_eq!(recv_text(&mut joe), "echo: hi");

    // A certificate from another CA, or none the system trusts: no request
    // reaches the backend, the client sees 502.
    assert_eq!(refused_status(try_connect(s.ws, "/wrong-ca", &[])), 502);
    assert_eq!(refused_status(try_connect(s.ws, "/system-roots", &[])), 502);
    let paths: Vec<String> = backend.seen().into_iter().map(|r| r.path).collect();
    assert!(!paths.iter().any(|p| p == "/wrong" || p == "/system"), "{paths:?}");
    assert!(s.log().contains("certificate") || s.log().contains("Unknown"), "{}", s.log());
}

#[test]
fn an_unreadable_ca_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let err = start_error(
        dir.path(),
        "[[vhost]]\npath = \"/ws\"\ndialect = \"roadrunner\"\n[vhost.hooks]\nconnect = \"https://localhost:1/c\"\n\
         ca_file = \"/nonexistent/ca.pem\"\n",
    );
    assert!(err.contains("ca_file") && err.contains("/nonexistent/ca.pem"), "{err}");
}
