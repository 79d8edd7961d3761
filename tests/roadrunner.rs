//! docs/protocols.md §2 (the roadrunner dialect) against the real binary.

mod common;

use std::time::Duration;

use common::*;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

fn server() -> Server {
    Server::start(&roadrunner_config("[limits]\nmax_topics_per_connection = 3\nmax_message_size = 2048"), 2)
}

#[test]
fn join_then_delivery_in_the_documented_format() {
    let s = server();
    let mut ws = s.connect("/ws");
    send_text(&mut ws, r#"{"command":"join","broker":"memory","topics":["foo","foo2"],"payload":""}"#);
    assert_eq!(recv_text(&mut ws), r#"{"topic":"@join","payload":["foo","foo2"]}"#);
    assert_eq!(
        s.publish_json(r#"{"topics":["foo"],"payload":"say \"hi\""}"#),
        (200, r#"{"ok":true}"#.into())
    );
    assert_eq!(recv_text(&mut ws), r#"{"topic":"foo","payload":"say \"hi\""}"#);
}

#[test]
fn one_frame_per_topic_and_only_joined_topics() {
    let s = server();
    let mut ws = s.connect("/ws");
    join(&mut ws, &["a", "b"]);
    assert_eq!(s.publish_json(r#"{"topics":["a","zzz","b"],"payload":"x"}"#).0, 200);
    assert_eq!(recv_text(&mut ws), r#"{"topic":"a","payload":"x"}"#);
    assert_eq!(recv_text(&mut ws), r#"{"topic":"b","payload":"x"}"#);
    assert_silent(&mut ws, Duration::from_millis(200));
}

#[test]
fn join_reply_comes_after_the_subscription() {
    // A publication sent the moment @join is seen must arrive, every time.
    let s = server();
    for i in 0..50 {
        let mut ws = s.connect("/ws");
        let topic = format!("t{i}");
        join(&mut ws, &[&topic]);
        assert_eq!(s.publish_json(&format!(r#"{{"topics":["{topic}"],"payload":"{i}"}}"#)).0, 200);
        assert_eq!(recv_text(&mut ws), format!(r#"{{"topic":"{topic}","payload":"{i}"}}"#));
    }
}

#[test]
fn leave_stops_delivery() {
    let s = server();
    let mut ws = s.connect("/ws");
    join(&mut ws, &["a", "b"]);
    send_text(&mut ws, r#"{"command":"leave","topics":["a"]}"#);
    assert_eq!(recv_text(&mut ws), r#"{"topic":"@leave","payload":["a"]}"#);
    s.publish_json(r#"{"topics":["a"],"payload":"gone"}"#);
    s.publish_json(r#"{"topics":["b"],"payload":"kept"}"#);
    assert_eq!(recv_text(&mut ws), r#"{"topic":"b","payload":"kept"}"#);
    assert_silent(&mut ws, Duration::from_millis(200));
}

#[test]
fn refused_joins_reply_hash_join() {
    let s = server();
    let mut ws = s.connect("/ws");
    let long = "x".repeat(257);
    let cases = [
        (r#"{"command":"join","topics":[]}"#.to_string(), r##"{"topic":"#join","payload":[]}"##.to_string()),
        (
            r#"{"command":"join","topics":["ok",""]}"#.into(),
            r##"{"topic":"#join","payload":["ok",""]}"##.into(),
        ),
        (
            format!(r#"{{"command":"join","topics":["{long}"]}}"#),
            format!(r##"{{"topic":"#join","payload":["{long}"]}}"##),
        ),
        (
            r#"{"command":"join","topics":["a\u0007b"]}"#.into(),
            r##"{"topic":"#join","payload":["a\u0007b"]}"##.into(),
        ),
        (
            r#"{"command":"join","broker":"redis","topics":["a"]}"#.into(),
            r##"{"topic":"#join","payload":["a"]}"##.into(),
        ),
        // Topic limit is 3 in this server.
        (
            r#"{"command":"join","topics":["1","2","3","4"]}"#.into(),
            r##"{"topic":"#join","payload":["1","2","3","4"]}"##.into(),
        ),
    ];
    for (cmd, want) in cases {
        send_text(&mut ws, &cmd);
        assert_eq!(recv_text(&mut ws), want, "for {cmd}");
    }
    // Nothing of a refused join was subscribed.
    s.publish_json(r#"{"topics":["ok","1","a"],"payload":"x"}"#);
    assert_silent(&mut ws, Duration::from_millis(200));
    // The limit counts topics already held; re-joining one does not count twice.
    join(&mut ws, &["1", "2"]);
    join(&mut ws, &["2", "3"]);
    send_text(&mut ws, r#"{"command":"join","topics":["4"]}"#);
    assert_eq!(recv_text(&mut ws), r##"{"topic":"#join","payload":["4"]}"##);
}

#[test]
fn bad_input_gets_hash_error_and_the_connection_stays() {
    let s = server();
    let mut ws = s.connect("/ws");
    ws.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    assert_eq!(recv_text(&mut ws), r##"{"topic":"#error","payload":["binary frames are not supported"]}"##);
    send_text(&mut ws, "{not json");
    let reply: serde_json::Value = serde_json::from_str(&recv_text(&mut ws)).unwrap();
    assert_eq!(reply["topic"], "#error");
    assert!(reply["payload"][0].as_str().unwrap().contains("invalid command JSON"), "{reply}");
    send_text(&mut ws, r#"{"command":"dance"}"#);
    assert_eq!(recv_text(&mut ws), r##"{"topic":"#error","payload":["unknown command: \"dance\""]}"##);
    // headers: accepted, no reply.
    send_text(&mut ws, r#"{"command":"headers","payload":{"a":"b"}}"#);
    join(&mut ws, &["still-works"]);
}

#[test]
fn invalid_utf8_payload_becomes_replacement_character() {
    let s = server();
    let mut ws = s.connect("/ws");
    join(&mut ws, &["t"]);
    // 0x61 0xff 0x62 = "a", invalid byte, "b"
    assert_eq!(s.publish_json(r#"{"topics":["t"],"payload_base64":"Yf9i"}"#).0, 200);
    assert_eq!(recv_text(&mut ws), "{\"topic\":\"t\",\"payload\":\"a\u{fffd}b\"}");
}

#[test]
fn oversized_message_is_closed_with_1009() {
    let s = server();
    let mut ws = s.connect("/ws");
    send_text(&mut ws, &"x".repeat(4000));
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => {
                assert_eq!(f.code, CloseCode::Size);
                break;
            }
            Ok(Message::Close(None)) => panic!("close without code"),
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame, got {e}"),
        }
    }
    assert_eq!(s.metric("ringcast_protocol_errors_total"), 1);
}

#[test]
fn origin_policy_and_http_errors() {
    let s = Server::start(
        "[[vhost]]\npath = \"/ws\"\ndialect = \"roadrunner\"\n\
         allowed_origin = \"https://*.example.com, http://localhost:3000\"\n",
        1,
    );
    s.connect_with("/ws", &[("Origin", "https://app.example.com")]);
    s.connect_with("/ws", &[("Origin", "http://localhost:3000")]);
    for evil in ["https://evil.test", "https://app.example.com.evil.io", "http://app.example.com", "null"] {
        match try_connect(s.ws, "/ws", &[("Origin", evil)]) {
            Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403, "{evil}"),
            other => panic!("{evil}: expected 403, got {:?}", other.map(|_| ())),
        }
    }
    match try_connect(s.ws, "/nope", &[]) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 404),
        other => panic!("expected 404, got {:?}", other.map(|_| ())),
    }
    let plain = raw_exchange(s.ws, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_secs(3));
    let plain = String::from_utf8_lossy(&plain);
    assert!(plain.starts_with("HTTP/1.1 426 "), "{plain}");
    let garbage = raw_exchange(s.ws, b"\x16\x03\x01\x02\x00garbage\r\n\r\n", Duration::from_secs(3));
    assert!(String::from_utf8_lossy(&garbage).starts_with("HTTP/1.1 400 "));
    assert!(s.metric("ringcast_handshake_failures_total") >= 4);
}
