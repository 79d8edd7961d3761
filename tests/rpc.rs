//! docs/protocols.md §3: goridge v3 RPC, byte for byte, against the real binary.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
}

fn rpc_conn(s: &Server) -> TcpStream {
    let c = TcpStream::connect(s.rpc).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c
}

/// A goridge frame, written out independently of the server's encoder.
fn frame(flags: u8, options: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x10 | (3 + options.len() as u8), flags];
    h.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h.extend_from_slice(&[0, 0]);
    for o in options {
        h.extend_from_slice(&o.to_le_bytes());
    }
    h.extend_from_slice(payload);
    h
}

/// Reads one reply frame: (flags, options, payload).
fn read_frame(c: &mut TcpStream) -> (u8, Vec<u32>, Vec<u8>) {
    let mut head = [0u8; 12];
    c.read_exact(&mut head).unwrap();
    assert_eq!(head[0] >> 4, 1, "version");
    assert_eq!(crc32fast::hash(&head[..6]).to_le_bytes(), head[6..10], "reply CRC");
    let words = (head[0] & 0x0f) as usize;
    let mut opts = vec![0u8; words * 4 - 12];
    c.read_exact(&mut opts).unwrap();
    let len = u32::from_le_bytes(head[2..6].try_into().unwrap()) as usize;
    let mut payload = vec![0u8; len];
    c.read_exact(&mut payload).unwrap();
    let options = opts.chunks(4).map(|o| u32::from_le_bytes(o.try_into().unwrap())).collect();
    (head[1], options, payload)
}

fn call(c: &mut TcpStream, flags: u8, seq: u32, method: &str, body: &[u8]) -> (u8, Vec<u32>, Vec<u8>) {
    let mut payload = method.as_bytes().to_vec();
    payload.extend_from_slice(body);
    c.write_all(&frame(flags, &[seq, method.len() as u32], &payload)).unwrap();
    read_frame(c)
}

fn subscriber(s: &Server, topics: &[&str]) -> Ws {
    let mut ws = s.connect("/ws");
    join(&mut ws, topics);
    ws
}

#[test]
fn worked_example_byte_for_byte() {
    let s = Server::start("", 2);
    let mut ws = subscriber(&s, &["t"]);
    let mut c = rpc_conn(&s);
    let mut req = hex("15 80 1a 00 00 00 e2 35 9b 6c 00 00 01 00 00 00 11 00 00 00");
    req.extend_from_slice(b"broadcast.Publish");
    req.extend(hex("0a 07 12 01 74 1a 02 68 69"));
    c.write_all(&req).unwrap();
    let mut want = hex("15 80 13 00 00 00 68 7a 93 11 00 00 01 00 00 00 11 00 00 00");
    want.extend_from_slice(b"broadcast.Publish");
    want.extend([0x08, 0x01]);
    let mut got = vec![0u8; want.len()];
    c.read_exact(&mut got).unwrap();
    assert_eq!(got, want);
    assert_eq!(recv_text(&mut ws), r#"{"topic":"t","payload":"hi"}"#);
}

#[test]
fn all_four_methods_and_both_codecs() {
    use prost::Message as _;
    use ringcast::rpc::proto::{broadcast, websockets};
    let s = Server::start("", 2);
    let mut ws = subscriber(&s, &["a", "b"]);
    let mut c = rpc_conn(&s);

    let ws_req = websockets::Request {
        messages: vec![websockets::Message {
            command: "publish".into(),
            broker: "memory".into(),
            topics: vec!["a".into()],
            payload: b"w1".to_vec(),
        }],
    }
    .encode_to_vec();
    let bc_req = broadcast::Request {
        messages: vec![broadcast::Message {
            command: String::new(),
            topics: vec!["b".into()],
            payload: b"b1".to_vec(),
        }],
    }
    .encode_to_vec();
    for (seq, method, body, topic, text) in [
        (10, "websockets.Publish", &ws_req, "a", "w1"),
        (11, "websockets.PublishAsync", &ws_req, "a", "w1"),
        (12, "broadcast.Publish", &bc_req, "b", "b1"),
        (13, "broadcast.PublishAsync", &bc_req, "b", "b1"),
    ] {
        let (flags, options, payload) = call(&mut c, 0x80, seq, method, body);
        assert_eq!(flags, 0x80, "{method}");
        assert_eq!(options, [seq, method.len() as u32]);
        assert_eq!(&payload[..method.len()], method.as_bytes());
        assert!(broadcast::Response::decode(&payload[method.len()..]).unwrap().ok);
        assert_eq!(recv_text(&mut ws), format!(r#"{{"topic":"{topic}","payload":"{text}"}}"#), "{method}");
    }

    // JSON codec (0x08): payload is base64, reply {"ok":true}.
    let (flags, _, payload) =
        call(&mut c, 0x08, 14, "broadcast.Publish", br#"{"messages":[{"topics":["a"],"payload":"aGk="}]}"#);
    assert_eq!(flags, 0x08);
    assert_eq!(payload, br#"broadcast.Publish{"ok":true}"#);
    assert_eq!(recv_text(&mut ws), r#"{"topic":"a","payload":"hi"}"#);
}

#[test]
fn publish_has_reached_the_shards_when_it_replies() {
    // After a Publish reply, a subscriber's next read finds the message
    // without any delay on the publisher's side; repeated to catch races.
    let s = Server::start("", 2);
    let mut ws = subscriber(&s, &["t"]);
    let mut c = rpc_conn(&s);
    for i in 0..200u32 {
        let body =
            format!(r#"{{"messages":[{{"topics":["t"],"payload":"{}"}}]}}"#, base64_of(&i.to_string()));
        let (flags, _, _) = call(&mut c, 0x08, i, "broadcast.Publish", body.as_bytes());
        assert_eq!(flags, 0x08);
        assert_eq!(recv_text(&mut ws), format!(r#"{{"topic":"t","payload":"{i}"}}"#));
    }
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn error_frames_keep_the_connection_usable() {
    let s = Server::start("", 1);
    let mut ws = subscriber(&s, &["t"]);
    let mut c = rpc_conn(&s);
    let expect_error = |c: &mut TcpStream, flags: u8, seq: u32, method: &str, body: &[u8], needle: &str| {
        let (rflags, options, payload) = call(c, flags, seq, method, body);
        assert_eq!(rflags, flags | 0x40, "{method}: error flag with the request's codec");
        assert_eq!(options, [seq, method.len() as u32]);
        assert_eq!(&payload[..method.len()], method.as_bytes());
        let text = String::from_utf8_lossy(&payload[method.len()..]).to_string();
        assert!(text.contains(needle), "{method}: {text:?} should mention {needle:?}");
    };
    expect_error(&mut c, 0x80, 1, "broadcast.Nope", b"", "unknown method");
    expect_error(&mut c, 0x10, 2, "broadcast.Publish", b"", "unsupported codec");
    expect_error(&mut c, 0x80, 3, "broadcast.Publish", &[0xff, 0xff, 0xff], "protobuf");
    expect_error(&mut c, 0x08, 4, "broadcast.Publish", b"{", "JSON");
    expect_error(&mut c, 0x08, 5, "broadcast.Publish", br#"{"messages":[]}"#, "no messages");
    // Validation before any reply, also for PublishAsync; nothing published.
    expect_error(
        &mut c,
        0x08,
        6,
        "broadcast.PublishAsync",
        br#"{"messages":[{"topics":["t"],"payload":"eA=="},{"topics":[]}]}"#,
        "no topics",
    );
    expect_error(
        &mut c,
        0x08,
        7,
        "websockets.Publish",
        br#"{"messages":[{"broker":"kafka","topics":["t"]}]}"#,
        "unknown broker",
    );
    // Wrong option count: error reply, connection stays.
    c.write_all(&frame(0x80, &[9], b"x")).unwrap();
    let (flags, options, payload) = read_frame(&mut c);
    assert_eq!((flags, options[0]), (0xc0, 9));
    assert!(String::from_utf8_lossy(&payload).contains("expected 2 options"));
    assert_silent(&mut ws, Duration::from_millis(200));
    let (flags, _, _) =
        call(&mut c, 0x08, 8, "broadcast.Publish", br#"{"messages":[{"topics":["t"],"payload":"b2s="}]}"#);
    assert_eq!(flags, 0x08);
    assert_eq!(recv_text(&mut ws), r#"{"topic":"t","payload":"ok"}"#);
    assert_eq!(s.metric("ringcast_rpc_errors_total"), 8);
}

#[test]
fn corrupt_or_oversized_headers_close_without_allocating() {
    let s = Server::start("[rpc]\nmax_frame_size = 1024\n", 1);
    let vm_data = || proc_status_kib(s.pid(), "VmData") * 1024;
    let before = vm_data();
    let mut bad_crc = frame(0x80, &[1, 17], b"broadcast.Publish");
    bad_crc[6] ^= 0xff;
    let out = raw_exchange(s.rpc, &bad_crc, Duration::from_secs(3));
    assert!(out.is_empty(), "no reply to a corrupt header, just a close");
    // Claims 1 GiB: closed at once, no waiting for (or buffering) the payload.
    let mut huge = vec![0x15, 0x80];
    huge.extend_from_slice(&(1u32 << 30).to_le_bytes());
    let crc = crc32fast::hash(&huge);
    huge.extend_from_slice(&crc.to_le_bytes());
    huge.extend_from_slice(&[0; 10]);
    let started = std::time::Instant::now();
    let out = raw_exchange(s.rpc, &huge, Duration::from_secs(3));
    assert!(out.is_empty());
    assert!(started.elapsed() < Duration::from_secs(2), "closed promptly");
    // Not even address space was reserved for the claim (VmData counts it
    // whether or not the pages are touched).
    let grown = vm_data().saturating_sub(before);
    assert!(grown < 64 << 20, "VmData grew {grown} bytes after a 1 GiB claim");
    // The server is fine.
    let mut c = rpc_conn(&s);
    let (flags, _, _) = call(&mut c, 0x08, 1, "broadcast.Publish", br#"{"messages":[{"topics":["t"]}]}"#);
    assert_eq!(flags, 0x08);
}

/// A publisher flooding as fast as it can write must be slowed by the shard
/// (its inbox full, the publisher parked), never the subscribers who read
/// normally: the shard keeps writing to them between batches of work.
#[test]
fn a_publisher_flood_slows_the_publisher_not_the_readers() {
    use prost::Message as _;
    use ringcast::rpc::proto::broadcast;
    const SUBSCRIBERS: usize = 1000;
    const REQUESTS: usize = 40;
    const PER_REQUEST: usize = 50;
    let s = Server::start("[server]\nshard_inbox = 4\n[limits]\nmax_backpressure = 65536\n", 1);
    let readers: Vec<_> = (0..SUBSCRIBERS)
        .map(|_| {
            let mut ws = subscriber(&s, &["flood"]);
            set_timeout(&mut ws, Duration::from_secs(60));
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    for i in 0..REQUESTS * PER_REQUEST {
                        let want = format!(r#"{{"topic":"flood","payload":"{i:0128}"}}"#);
                        match ws.read() {
                            Ok(tungstenite::Message::Text(t)) if *t == *want => {}
                            other => return Err(format!("message {i}: {other:?}")),
                        }
                    }
                    Ok(())
                })
                .unwrap()
        })
        .collect();
    let mut c = rpc_conn(&s);
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut replies = c.try_clone().unwrap();
    let reply_reader = std::thread::spawn(move || {
        for _ in 0..REQUESTS {
            let (flags, _, _) = read_frame(&mut replies);
            assert_eq!(flags & 0x40, 0, "publish refused");
        }
    });
    // Every request written at once, without waiting for replies.
    for r in 0..REQUESTS {
        let req = broadcast::Request {
            messages: (0..PER_REQUEST)
                .map(|m| broadcast::Message {
                    command: String::new(),
                    topics: vec!["flood".into()],
                    payload: format!("{:0128}", r * PER_REQUEST + m).into_bytes(),
                })
                .collect(),
        }
        .encode_to_vec();
        let mut payload = b"broadcast.Publish".to_vec();
        payload.extend_from_slice(&req);
        c.write_all(&frame(0x80, &[r as u32, 17], &payload)).unwrap();
    }
    reply_reader.join().unwrap();
    let failed: Vec<String> = readers.into_iter().filter_map(|r| r.join().unwrap().err()).collect();
    assert_eq!(
        s.metric("ringcast_slow_consumer_closes_total"),
        0,
        "first failures: {:?}",
        &failed[..failed.len().min(3)]
    );
    assert!(failed.is_empty(), "{} readers failed, e.g. {}", failed.len(), failed[0]);
    assert!(s.metric("ringcast_publish_waits_total") > 0, "the publisher was slowed by the full inbox");
}

/// A frame that stalls or dribbles is cut off at `rpc.frame_timeout_ms`;
/// a connection idle between calls is not.
#[test]
fn a_dribbled_frame_is_cut_off_at_the_frame_timeout() {
    let s = Server::start("[rpc]\nframe_timeout_ms = 1000\n", 1);
    let idle = rpc_conn(&s);
    let whole = frame(0x08, &[1, 17], &[b'x'; 1000]);
    let mut c = rpc_conn(&s);
    c.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let started = std::time::Instant::now();
    c.write_all(&whole[..20]).unwrap();
    let mut closed = false;
    for byte in &whole[20..] {
        let mut buf = [0u8; 64];
        match c.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => panic!("no answer expected for an incomplete frame"),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        if c.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
    }
    let took = started.elapsed();
    assert!(closed, "still open after {took:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "closed after {took:?}"
    );
    // The idle connection (no partial frame) still works.
    let mut idle = idle;
    let (flags, _, _) =
        call(&mut idle, 0x08, 2, "broadcast.Publish", br#"{"messages":[{"topics":["a"],"payload":"aGk="}]}"#);
    assert_eq!(flags & 0x40, 0);
}

/// A client sends a 16 MiB method name: the answer is a short error that
/// does not echo it, and the connection's memory is given back.
#[test]
fn a_huge_method_name_gets_a_short_error_and_no_memory_is_held() {
    let s = Server::start("", 1);
    let rss_before = proc_status_kib(s.pid(), "RssAnon");
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = rpc_conn(&s);
        let name = vec![b'x'; 16 * 1024 * 1024 - 64];
        c.write_all(&frame(0x80, &[9, name.len() as u32], &name)).unwrap();
        let (flags, options, payload) = read_frame(&mut c);
        assert_eq!(flags & 0x40, 0x40, "an error frame");
        assert_eq!(options, [9, 0], "the name is not echoed in METHOD_LEN");
        let text = String::from_utf8_lossy(&payload);
        assert!(payload.len() < 400 && text.contains("at most 256"), "{} bytes: {text:.200}", payload.len());
        // The connection stays usable.
        let (flags, _, _) = call(&mut c, 0x80, 10, "nope.Call", b"");
        assert_eq!(flags & 0x40, 0x40);
        held.push(c);
    }
    let grown = proc_status_kib(s.pid(), "RssAnon").saturating_sub(rss_before);
    assert!(grown < 32 * 1024, "RSS grew {grown} KiB for 4 idle connections after 16 MiB frames");
    assert!(http_get(&s.url("/metrics")).1.contains("ringcast_denied_total{reason=\"rpc_method_name\"} 4"));
}

/// A client that sends calls and never reads its replies is dropped after
/// rpc.write_timeout_ms instead of holding them in memory.
#[test]
fn a_client_that_never_reads_is_dropped_at_the_write_timeout() {
    let s = Server::start(&roadrunner_config("[rpc]\nwrite_timeout_ms = 500\n"), 1);
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&s.rpc.into()).unwrap();
    let mut c: TcpStream = sock.into();
    c.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    // Each 21-byte call is answered by a ~170-byte error: the replies fill
    // every buffer long before the requests do.
    let one = frame(0x80, &[1, 9], b"nope.Call");
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 10_000).collect();
    let started = std::time::Instant::now();
    let mut sent = 0usize;
    let ended = loop {
        match c.write_all(&batch) {
            Ok(()) => sent += batch.len(),
            Err(e) => break e,
        }
        assert!(started.elapsed() < Duration::from_secs(30), "still connected after {sent} bytes");
    };
    assert!(
        matches!(ended.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset),
        "{ended}"
    );
    assert!(eventually(Duration::from_secs(5), || http_get(&s.url("/metrics"))
        .1
        .contains("ringcast_denied_total{reason=\"rpc_write_timeout\"} 1")));
}

/// A client streaming calls back to back, always with part of the next one
/// in flight, is never cut off: the frame timeout runs per frame.
#[test]
fn a_continuous_stream_of_calls_is_not_cut_at_the_frame_timeout() {
    let s = Server::start(&roadrunner_config("[rpc]\nframe_timeout_ms = 300\n"), 1);
    let mut c = rpc_conn(&s);
    let one = frame(0x80, &[1, 9], b"nope.Call");
    let half = one.len() / 2;
    c.write_all(&one[..half]).unwrap();
    let started = std::time::Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        // The rest of one frame and the first half of the next.
        c.write_all(&one[half..]).unwrap();
        c.write_all(&one[..half]).unwrap();
        let (flags, _, _) = read_frame(&mut c);
        assert_eq!(flags & 0x40, 0x40);
        answered += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(answered >= 10, "{answered}");
}

#[test]
fn rpc_and_api_connections_are_capped() {
    let s = Server::start(
        &roadrunner_config("[server]\napi_max_connections = 2\n[rpc]\nmax_connections = 2\n"),
        1,
    );
    for addr in [s.rpc, s.api] {
        let held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let mut third = TcpStream::connect(addr).unwrap();
        third.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        assert!(matches!(third.read(&mut b), Ok(0) | Err(_)), "the third connection to {addr} is closed");
        drop(held);
        // Room again once they are gone.
        assert!(eventually(Duration::from_secs(5), || {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
            if addr == s.rpc {
                c.write_all(&frame(0x80, &[1, 9], b"nope.Call")).unwrap();
            } else {
                c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            }
            matches!(c.read(&mut b), Ok(1))
        }));
    }
    // At least the third of each (a retry while the held ones were still
    // closing may count too).
    let text = http_get(&s.url("/metrics")).1;
    let denied = |reason: &str| -> u64 {
        let key = format!("ringcast_denied_total{{reason=\"{reason}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(key.as_str())).unwrap().parse().unwrap()
    };
    assert!(denied("rpc_connections") >= 1 && denied("api_connections") >= 1, "{text}");
}
