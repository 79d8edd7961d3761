//! The WebRocket dialect over real sockets: every event and error id, rights,
//! presence, backend workers, the admin API and `ringcast ctl`, restarts.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tungstenite::Message;

const TOKEN: &str = "admin-token-for-tests-0123456789";

fn config(anonymous: &str) -> String {
    format!(
        "[server]\nadmin_token = \"{TOKEN}\"\n[[vhost]]\npath = \"/world\"\ndialect = \"webrocket\"\nanonymous = [{anonymous}]\n"
    )
}

/// An admin API call: (status, JSON answer).
fn admin(s: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    admin_with(s, method, path, body, TOKEN)
}

fn admin_with(s: &Server, method: &str, path: &str, body: Option<Value>, token: &str) -> (u16, Value) {
    admin_call(s, token, method, path, body)
}

fn add_user(s: &Server, name: &str, secret: Option<&str>, perms: &[&str]) {
    let mut body = json!({ "vhost": "/world", "name": name, "permissions": perms });
    if let Some(secret) = secret {
        body["secret"] = json!(secret);
    }
    let (status, answer) = admin(s, "POST", "/admin/users", Some(body));
    assert_eq!(status, 201, "{answer}");
}

/// Sends `message` and returns the next text reply.
fn ask(ws: &mut Ws, message: &str) -> String {
    send_text(ws, message);
    recv_text(ws)
}

fn err_id(reply: &str) -> String {
    let v: Value = serde_json::from_str(reply).unwrap_or_else(|_| panic!("not JSON: {reply}"));
    v["err"].as_str().unwrap_or_else(|| panic!("not an error: {reply}")).to_string()
}

fn login(ws: &mut Ws, user: &str) {
    let reply = ask(ws, &json!({ "authenticate": { "user": user } }).to_string());
    assert_eq!(reply, format!(r#"{{"authenticated":"{user}"}}"#));
}

/// `ringcast ctl` with the test API and token: (exit code, stdout, stderr).
fn ctl(s: &Server, args: &[&str]) -> (i32, String, String) {
    let api = format!("http://{}", s.api);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["ctl", "--api", &api, "--token", TOKEN])
        .args(args)
        .env_remove("RINGCAST_ADMIN_TOKEN")
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

fn worker(s: &Server, vhost: &str, token: &str) -> Result<Ws, u16> {
    let bearer = format!("Bearer {token}");
    try_connect(s.api, &format!("/workers{vhost}"), &[("Authorization", &bearer)]).map_err(status)
}

/// The HTTP status of a refused upgrade.
fn status(e: tungstenite::Error) -> u16 {
    match e {
        tungstenite::Error::Http(r) => r.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

fn token(s: &Server) -> String {
    let (status, answer) = admin(s, "GET", "/admin/token?vhost=/world", None);
    assert_eq!(status, 200);
    answer["token"].as_str().unwrap().to_string()
}

#[test]
fn every_event_with_its_reply_and_errors_in_the_documented_order() {
    let s = Server::start(&config(""), 1);
    add_user(&s, "joe", None, &["READ", "WRITE", "MANAGE"]);
    add_user(&s, "kim", Some("s3cret"), &["READ"]);
    let mut ws = s.connect("/world");
    // Shape first: not JSON, not one key, binary, payload not an object.
    for bad in ["nope", "{}", r#"{"a":1,"b":2}"#, r#"{"subscribe":"room"}"#, r#"{"logout":false}"#] {
        assert_eq!(err_id(&ask(&mut ws, bad)), "INVALID_PAYLOAD", "{bad}");
    }
    ws.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(err_id(&recv_text(&mut ws)), "INVALID_PAYLOAD");
    let undefined = ask(&mut ws, r#"{"dance":{}}"#);
    assert_eq!(undefined, r#"{"err":"UNDEFINED_EVENT","additional_info":"dance"}"#);
    // Names before permission: anonymous has no rights here.
    assert_eq!(err_id(&ask(&mut ws, r#"{"subscribe":{}}"#)), "INVALID_CHANNEL_NAME");
    assert_eq!(err_id(&ask(&mut ws, r#"{"subscribe":{"channel":""}}"#)), "INVALID_CHANNEL_NAME");
    assert_eq!(err_id(&ask(&mut ws, r#"{"broadcast":{"channel":"x"}}"#)), "INVALID_EVENT_NAME");
    assert_eq!(err_id(&ask(&mut ws, r#"{"authenticate":{"user":"no way"}}"#)), "INVALID_USER_NAME");
    assert_eq!(err_id(&ask(&mut ws, r#"{"subscribe":{"channel":"room"}}"#)), "ACCESS_DENIED");
    // Permission before existence.
    assert_eq!(err_id(&ask(&mut ws, r#"{"broadcast":{"event":"e","channel":"nowhere"}}"#)), "ACCESS_DENIED");
    assert_eq!(err_id(&ask(&mut ws, r#"{"logout":true}"#)), "ACCESS_DENIED");
    // Existence before credentials.
    assert_eq!(err_id(&ask(&mut ws, r#"{"authenticate":{"user":"nobody","secret":"x"}}"#)), "USER_NOT_FOUND");
    assert_eq!(err_id(&ask(&mut ws, r#"{"authenticate":{"user":"kim"}}"#)), "INVALID_CREDENTIALS");
    assert_eq!(
        err_id(&ask(&mut ws, r#"{"authenticate":{"user":"kim","secret":"wrong"}}"#)),
        "INVALID_CREDENTIALS"
    );
    assert_eq!(
        ask(&mut ws, r#"{"authenticate":{"user":"kim","secret":"s3cret"}}"#),
        r#"{"authenticated":"kim"}"#
    );
    login(&mut ws, "joe");
    assert_eq!(
        err_id(&ask(&mut ws, r#"{"broadcast":{"event":"e","channel":"nowhere"}}"#)),
        "CHANNEL_NOT_FOUND"
    );
    assert_eq!(err_id(&ask(&mut ws, r#"{"unsubscribe":{"channel":"room"}}"#)), "CHANNEL_NOT_FOUND");
    assert_eq!(err_id(&ask(&mut ws, r#"{"presence":{"channel":"nowhere"}}"#)), "CHANNEL_NOT_FOUND");
    assert_eq!(err_id(&ask(&mut ws, r#"{"trigger":{"event":"go"}}"#)), "ASSIGNATION_FAILED");
    // Every success reply.
    assert_eq!(ask(&mut ws, r#"{"subscribe":{"channel":"room"}}"#), r#"{"subscribed":"room"}"#);
    send_text(&mut ws, r#"{"broadcast":{"event":"hi","channel":"room"}}"#);
    let mut got = [recv_text(&mut ws), recv_text(&mut ws)];
    got.sort();
    assert_eq!(got, [r#"{"broadcasted":"room"}"#, r#"{"hi":{"channel":"room","data":null}}"#]);
    assert_eq!(
        ask(&mut ws, r#"{"presence":{"channel":"room"}}"#),
        r#"{"presence":{"channel":"room","count":1,"users":["joe"]}}"#
    );
    assert_eq!(ask(&mut ws, r#"{"unsubscribe":{"channel":"room"}}"#), r#"{"unsubscribed":"room"}"#);
    assert_eq!(ask(&mut ws, r#"{"logout":true}"#), r#"{"loggedOut":true}"#);
    // disconnect: Close 1000, no reply.
    send_text(&mut ws, r#"{"disconnect":true}"#);
    match ws.read() {
        Ok(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1000),
        other => panic!("expected Close 1000, got {other:?}"),
    }
}

#[test]
fn rights_per_permission_and_anonymous_access() {
    let s = Server::start(&config("\"READ\""), 1);
    add_user(&s, "reader", None, &["READ"]);
    add_user(&s, "writer", None, &["WRITE"]);
    add_user(&s, "manager", None, &["MANAGE"]);
    let mut anon = s.connect("/world");
    assert_eq!(ask(&mut anon, r#"{"subscribe":{"channel":"c"}}"#), r#"{"subscribed":"c"}"#);
    assert_eq!(err_id(&ask(&mut anon, r#"{"broadcast":{"event":"e","channel":"c"}}"#)), "ACCESS_DENIED");
    let mut w = s.connect("/world");
    login(&mut w, "writer");
    assert_eq!(err_id(&ask(&mut w, r#"{"subscribe":{"channel":"c"}}"#)), "ACCESS_DENIED");
    assert_eq!(
        ask(&mut w, r#"{"broadcast":{"event":"e","channel":"c","data":1}}"#),
        r#"{"broadcasted":"c"}"#
    );
    assert_eq!(err_id(&ask(&mut w, r#"{"presence":{"channel":"c"}}"#)), "ACCESS_DENIED");
    assert_eq!(recv_text(&mut anon), r#"{"e":{"channel":"c","data":1}}"#);
    let mut m = s.connect("/world");
    login(&mut m, "manager");
    assert_eq!(err_id(&ask(&mut m, r#"{"unsubscribe":{"channel":"c"}}"#)), "ACCESS_DENIED");
    assert_eq!(err_id(&ask(&mut m, r#"{"trigger":{"event":"e"}}"#)), "ACCESS_DENIED");
    let mut r = s.connect("/world");
    login(&mut r, "reader");
    assert_eq!(ask(&mut r, r#"{"subscribe":{"channel":"c"}}"#), r#"{"subscribed":"c"}"#);
    assert_eq!(
        ask(&mut m, r#"{"presence":{"channel":"c"}}"#),
        r#"{"presence":{"channel":"c","count":2,"users":["reader"]}}"#,
        "anonymous subscribers count but have no name"
    );
    // Logging in as someone else logs the reader out first: its
    // subscription is gone, so the next broadcast does not reach it.
    login(&mut r, "writer");
    assert_eq!(
        ask(&mut w, r#"{"broadcast":{"event":"e","channel":"c","data":2}}"#),
        r#"{"broadcasted":"c"}"#
    );
    assert_eq!(recv_text(&mut anon), r#"{"e":{"channel":"c","data":2}}"#);
    assert_silent(&mut r, Duration::from_millis(200));
    assert_eq!(
        ask(&mut m, r#"{"presence":{"channel":"c"}}"#),
        r#"{"presence":{"channel":"c","count":1,"users":[]}}"#
    );
}

#[test]
fn broadcasts_reach_every_shard_verbatim_and_in_order() {
    let s = Server::start(&config("\"READ\", \"WRITE\""), 2);
    let mut subs = connect_until_spread(&s, 2, |_| {
        let mut ws = s.connect("/world");
        assert_eq!(ask(&mut ws, r#"{"subscribe":{"channel":"news"}}"#), r#"{"subscribed":"news"}"#);
        ws
    });
    let mut publisher = s.connect("/world");
    let data = r#"{"z":1,"a":[true,null],"big":123456789012345678901234567890,"s":"\u00e9\n"}"#;
    for i in 0..50 {
        let msg = format!(r#"{{"broadcast":{{"event":"ev{i}","channel":"news","data":{data}}}}}"#);
        assert_eq!(ask(&mut publisher, &msg), r#"{"broadcasted":"news"}"#);
    }
    for ws in subs.iter_mut() {
        for i in 0..50 {
            assert_eq!(recv_text(ws), format!(r#"{{"ev{i}":{{"channel":"news","data":{data}}}}}"#));
        }
    }
}

#[test]
fn workers_get_triggers_round_robin_and_reply_and_broadcast() {
    let s = Server::start(&config("\"READ\", \"WRITE\""), 2);
    // Without the right token: 401 before any upgrade.
    assert_eq!(worker(&s, "/world", "wrong").unwrap_err(), 401);
    assert_eq!(worker(&s, "/world", "").unwrap_err(), 401);
    let t = token(&s);
    assert!(t.len() >= 32, "at least 128 bits: {t}");
    let mut w1 = worker(&s, "/world", &t).unwrap();
    let mut w2 = worker(&s, "/world", &t).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || admin(&s, "GET", "/admin/vhosts", None).1[0]["workers"] == 2)
    );
    let mut client = s.connect("/world");
    let mut seen = Vec::new();
    for i in 0..4 {
        let reply = ask(&mut client, &format!(r#"{{"trigger":{{"event":"job","data":{{"n":{i}}}}}}}"#));
        assert_eq!(reply, r#"{"triggered":"job"}"#);
    }
    for w in [&mut w1, &mut w2] {
        for _ in 0..2 {
            let v: Value = serde_json::from_str(&recv_text(w)).unwrap();
            assert_eq!(v["trigger"]["event"], "job");
            assert_eq!(v["trigger"]["user"], Value::Null);
            seen.push((
                v["trigger"]["data"]["n"].as_u64().unwrap(),
                v["trigger"]["sid"].as_str().unwrap().to_string(),
            ));
        }
    }
    seen.sort();
    assert_eq!(seen.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [0, 1, 2, 3], "each trigger to one worker");
    let sid = seen[0].1.clone();
    // A reply reaches that session, on whatever shard it lives.
    send_text(
        &mut w1,
        &json!({ "reply": { "sid": sid, "event": "done", "data": {"ok": true} } }).to_string(),
    );
    assert_eq!(recv_text(&mut client), r#"{"done":{"ok":true}}"#);
    send_text(&mut w1, r#"{"reply":{"sid":"ffff-1","event":"done"}}"#);
    assert_eq!(recv_text(&mut w1), r#"{"err":"SESSION_NOT_FOUND","additional_info":"ffff-1"}"#);
    // A worker broadcast: like a client's.
    send_text(&mut w2, r#"{"broadcast":{"channel":"news","event":"flash","data":[1]}}"#);
    assert_eq!(err_id(&recv_text(&mut w2)), "CHANNEL_NOT_FOUND");
    assert_eq!(ask(&mut client, r#"{"subscribe":{"channel":"news"}}"#), r#"{"subscribed":"news"}"#);
    send_text(&mut w2, r#"{"broadcast":{"channel":"news","event":"flash","data":[1]}}"#);
    assert_eq!(recv_text(&mut client), r#"{"flash":{"channel":"news","data":[1]}}"#);
    // A worker gone is no longer chosen; none left → ASSIGNATION_FAILED.
    drop(w1);
    drop(w2);
    assert!(
        eventually(Duration::from_secs(5), || admin(&s, "GET", "/admin/vhosts", None).1[0]["workers"] == 0)
    );
    assert_eq!(err_id(&ask(&mut client, r#"{"trigger":{"event":"job"}}"#)), "ASSIGNATION_FAILED");
}

#[test]
fn a_worker_that_stops_answering_pings_is_dropped() {
    let cfg = format!("[limits]\nping_interval_ms = 100\nidle_timeout_ms = 400\n{}", config("\"WRITE\""));
    let s = Server::start(&cfg, 1);
    let t = token(&s);
    // Upgraded, then never read: the server's pings go unanswered.
    let mut raw = std::net::TcpStream::connect(s.api).unwrap();
    let request = upgrade_request("/workers/world")
        .replace("\r\n\r\n", &format!("\r\nAuthorization: Bearer {t}\r\n\r\n"));
    std::io::Write::write_all(&mut raw, request.as_bytes()).unwrap();
    let workers = || admin(&s, "GET", "/admin/vhosts", None).1[0]["workers"].as_u64().unwrap();
    assert!(eventually(Duration::from_secs(5), || workers() == 1));
    assert!(eventually(Duration::from_secs(5), || workers() == 0), "a silent worker is dropped");
    let mut client = s.connect("/world");
    assert_eq!(err_id(&ask(&mut client, r#"{"trigger":{"event":"job"}}"#)), "ASSIGNATION_FAILED");
}

#[test]
fn the_admin_token_can_come_from_the_environment() {
    let cfg = "[[vhost]]\npath = \"/world\"\ndialect = \"webrocket\"\n";
    let s = Server::start_env(cfg, 1, &[("RINGCAST_ADMIN_TOKEN", TOKEN)]);
    assert_eq!(admin(&s, "GET", "/admin/vhosts", None).0, 200);
    assert_eq!(admin_with(&s, "GET", "/admin/vhosts", None, "another-token-0123456789").0, 401);
}

#[test]
fn rotating_the_token_disconnects_workers_holding_the_old_one() {
    let s = Server::start(&config("\"WRITE\""), 1);
    let old = token(&s);
    let mut w = worker(&s, "/world", &old).unwrap();
    let (code, new, err) = ctl(&s, &["vhost", "token", "/world", "--rotate"]);
    assert_eq!(code, 0, "{err}");
    let new = new.trim();
    assert_ne!(new, old);
    assert_eq!(ctl(&s, &["vhost", "token", "/world"]).1.trim(), new, "stable until rotated");
    set_timeout(&mut w, Duration::from_secs(5));
    loop {
        match w.read() {
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        }
    }
    assert_eq!(worker(&s, "/world", &old).unwrap_err(), 401);
    assert!(worker(&s, "/world", new).is_ok());
}

#[test]
fn admin_changes_apply_to_live_sessions() {
    let s = Server::start(&config(""), 2);
    add_user(&s, "joe", None, &["READ", "WRITE"]);
    // Kept by the admin: it stays when its subscribers go.
    assert_eq!(ctl(&s, &["channel", "add", "/world", "a"]).0, 0);
    let mut joe = s.connect("/world");
    login(&mut joe, "joe");
    assert_eq!(ask(&mut joe, r#"{"subscribe":{"channel":"a"}}"#), r#"{"subscribed":"a"}"#);
    // Losing READ drops the subscriptions.
    let (code, _, err) = ctl(&s, &["user", "set", "/world", "joe", "--permissions", "WRITE"]);
    assert_eq!(code, 0, "{err}");
    assert!(eventually(Duration::from_secs(5), || s.metric("ringcast_subscriptions") == 0));
    assert_eq!(ask(&mut joe, r#"{"broadcast":{"event":"e","channel":"a"}}"#), r#"{"broadcasted":"a"}"#);
    assert_silent(&mut joe, Duration::from_millis(200));
    // Deleted: logged out, connection kept, unauthenticated.
    let (code, _, err) = ctl(&s, &["user", "delete", "/world", "joe"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(recv_text(&mut joe), r#"{"loggedOut":true}"#);
    assert_eq!(err_id(&ask(&mut joe, r#"{"broadcast":{"event":"e","channel":"a"}}"#)), "ACCESS_DENIED");
    assert_eq!(err_id(&ask(&mut joe, r#"{"authenticate":{"user":"joe"}}"#)), "USER_NOT_FOUND");
}

#[test]
fn the_admin_api_and_ctl_refuse_without_the_token_and_say_why() {
    let s = Server::start(&config(""), 1);
    assert_eq!(admin_with(&s, "GET", "/admin/vhosts", None, "wrong").0, 401);
    assert_eq!(http_get(&s.url("/admin/vhosts")).0, 401);
    let api = format!("http://{}", s.api);
    let bin = env!("CARGO_BIN_EXE_ringcast");
    let out = std::process::Command::new(bin)
        .args(["ctl", "--api", &api, "--token", "wrong-token", "vhost", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("401") && stderr.lines().count() == 1, "{stderr}");
    // Unreachable, unknown vhost or user, invalid names: exit 1, one line.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let out = std::process::Command::new(bin)
        .args(["ctl", "--api", &format!("http://{dead}"), "--token", TOKEN, "vhost", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin API"));
    for args in [
        &["user", "list", "/nowhere"][..],
        &["user", "delete", "/world", "ghost"],
        &["user", "add", "/world", "bad name"],
        &["channel", "add", "/world", "bad/name"],
        &["vhost", "delete", "/world"],
    ] {
        let (code, _, err) = ctl(&s, args);
        assert_eq!(code, 1, "{args:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("ringcast ctl: "), "{err}");
    }
    // Without an admin token configured there is no admin API at all.
    let plain = Server::start("[[vhost]]\npath = \"/world\"\ndialect = \"webrocket\"\n", 1);
    assert_eq!(admin(&plain, "GET", "/admin/vhosts", None).0, 404);
}

#[test]
fn ctl_manages_vhosts_users_and_channels_and_a_new_vhost_serves_at_once() {
    let s = Server::start(&config(""), 2);
    assert_eq!(ctl(&s, &["vhost", "add", "/lobby", "--anonymous", "READ,WRITE"]).0, 0);
    let (code, out, _) = ctl(&s, &["vhost", "list", "--json"]);
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&out).unwrap();
    let paths: Vec<&str> = list.as_array().unwrap().iter().map(|v| v["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/lobby", "/world"]);
    // Serves on every shard without a restart.
    let mut clients = connect_until_spread(&s, 2, |_| {
        let mut ws = s.connect("/lobby");
        assert_eq!(ask(&mut ws, r#"{"subscribe":{"channel":"hall"}}"#), r#"{"subscribed":"hall"}"#);
        ws
    });
    assert_eq!(
        ctl(&s, &["user", "add", "/lobby", "ann", "--secret", "pw", "--permissions", "READ,MANAGE"]).0,
        0
    );
    let (_, users, _) = ctl(&s, &["user", "list", "/lobby", "--json"]);
    assert_eq!(users.trim(), r#"[{"name":"ann","permissions":["READ","MANAGE"],"secret":true}]"#);
    assert!(!users.contains("pw"), "secrets are never returned");
    let (_, table, _) = ctl(&s, &["user", "list", "/lobby"]);
    assert!(table.contains("ann") && table.contains("READ,MANAGE"), "{table}");
    assert_eq!(ctl(&s, &["channel", "add", "/lobby", "quiet"]).0, 0);
    let (_, channels, _) = ctl(&s, &["channel", "list", "/lobby", "--json"]);
    let n = clients.len();
    assert_eq!(
        channels.trim(),
        format!(r#"[{{"name":"hall","subscribers":{n}}},{{"name":"quiet","subscribers":0}}]"#)
    );
    // Deleting a channel drops its subscribers from it.
    assert_eq!(ctl(&s, &["channel", "delete", "/lobby", "hall"]).0, 0);
    assert!(eventually(Duration::from_secs(5), || s.metric("ringcast_subscriptions") == 0));
    // Deleting the vhost closes its sessions with 1001, and its workers.
    let (_, lobby_token, _) = ctl(&s, &["vhost", "token", "/lobby"]);
    let mut w = worker(&s, "/lobby", lobby_token.trim()).unwrap();
    assert_eq!(ctl(&s, &["vhost", "delete", "/lobby"]).0, 0);
    set_timeout(&mut w, Duration::from_secs(5));
    match w.read() {
        Ok(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1008),
        other => panic!("expected the worker closed: {other:?}"),
    }
    for ws in clients.iter_mut() {
        loop {
            match ws.read() {
                Ok(Message::Close(Some(f))) => {
                    assert_eq!(u16::from(f.code), 1001);
                    break;
                }
                Ok(_) => continue,
                Err(e) => panic!("expected Close 1001: {e}"),
            }
        }
    }
    assert_eq!(status(try_connect(s.ws, "/lobby", &[]).unwrap_err()), 404);
}

#[test]
fn state_survives_a_graceful_restart_and_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let cfg = config("");
    let mut s = Server::start_on(&cfg, 1, data.path());
    assert_eq!(ctl(&s, &["vhost", "add", "/kept"]).0, 0);
    assert_eq!(ctl(&s, &["user", "add", "/world", "joe", "--secret", "pw", "--permissions", "READ"]).0, 0);
    let mut ws = s.connect("/world");
    assert_eq!(
        ask(&mut ws, r#"{"authenticate":{"user":"joe","secret":"pw"}}"#),
        r#"{"authenticated":"joe"}"#
    );
    assert_eq!(
        ask(&mut ws, r#"{"subscribe":{"channel":"made-by-subscribe"}}"#),
        r#"{"subscribed":"made-by-subscribe"}"#
    );
    let tok = token(&s);
    drop(ws);
    s.signal("TERM");
    assert!(s.wait_exit(Duration::from_secs(10)).expect("exits").success());

    let mut s = Server::start_on(&cfg, 1, data.path());
    assert_eq!(token(&s), tok, "the token is stable across restarts");
    let (_, channels, _) = ctl(&s, &["channel", "list", "/world", "--json"]);
    assert_eq!(channels.trim(), "[]", "a channel made by a subscribe lives in memory only");
    let mut ws = s.connect("/world");
    assert_eq!(
        ask(&mut ws, r#"{"authenticate":{"user":"joe","secret":"pw"}}"#),
        r#"{"authenticated":"joe"}"#
    );
    // kill -9 right after ctl returns loses nothing.
    assert_eq!(ctl(&s, &["user", "add", "/kept", "late", "--permissions", "WRITE"]).0, 0);
    assert_eq!(ctl(&s, &["channel", "add", "/kept", "room"]).0, 0);
    let (_, rotated, _) = ctl(&s, &["vhost", "token", "/kept", "--rotate"]);
    s.signal("KILL");
    s.wait_exit(Duration::from_secs(10)).expect("killed");

    let s = Server::start_on(&cfg, 1, data.path());
    let (_, users, _) = ctl(&s, &["user", "list", "/kept", "--json"]);
    assert_eq!(users.trim(), r#"[{"name":"late","permissions":["WRITE"],"secret":false}]"#);
    let (_, channels, _) = ctl(&s, &["channel", "list", "/kept", "--json"]);
    assert_eq!(channels.trim(), r#"[{"name":"room","subscribers":0}]"#);
    assert_eq!(ctl(&s, &["vhost", "token", "/kept"]).1, rotated);
    s.connect("/kept");
}

#[test]
fn a_damaged_store_stops_the_start_naming_the_file() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("ringcast.redb"), b"not a database at all, no").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, config("")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(data.path())
        .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0", "--rpc-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&data.path().join("ringcast.redb").display().to_string()), "{stderr}");
}

/// Anonymous password guessing: a connection gets 5 attempts per 10 s, then
/// Close 1008; the hashing runs on a fixed pool behind a bounded queue
/// (a full queue answers INVALID_CREDENTIALS "retry later" at once), so
/// 5,000 wrong guesses from 200 connections at once leave RSS within 64 MiB
/// and a real login works right after.
#[test]
fn password_guessing_is_rate_limited_and_bounded_in_memory() {
    let s = Server::start(&config("\"READ\""), 1);
    add_user(&s, "joe", Some("right-secret"), &["READ"]);
    // One attempt too many closes the connection.
    let mut ws = s.connect("/world");
    for _ in 0..5 {
        let reply = ask(&mut ws, r#"{"authenticate":{"user":"joe","secret":"wrong"}}"#);
        assert_eq!(err_id(&reply), "INVALID_CREDENTIALS", "{reply}");
    }
    send_text(&mut ws, r#"{"authenticate":{"user":"joe","secret":"wrong"}}"#);
    match ws.read() {
        Ok(Message::Close(Some(f))) => {
            assert_eq!(u16::from(f.code), 1008);
            assert!(f.reason.contains("too many authenticate attempts"), "{}", f.reason);
        }
        other => panic!("expected Close 1008, got {other:?}"),
    }
    drop(ws);
    let rss_before = proc_status_kib(s.pid(), "RssAnon");
    let guesses = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = std::time::Instant::now();
    let attackers: Vec<_> = (0..200)
        .map(|_| {
            let (addr, guesses, busy) = (s.ws, guesses.clone(), busy.clone());
            std::thread::spawn(move || {
                while guesses.load(std::sync::atomic::Ordering::Relaxed) < 5_000 {
                    let Ok(mut ws) = try_connect(addr, "/world", &[]) else { continue };
                    for _ in 0..5 {
                        send_text(&mut ws, r#"{"authenticate":{"user":"joe","secret":"guess"}}"#);
                        let reply = recv_text(&mut ws);
                        assert_eq!(err_id(&reply), "INVALID_CREDENTIALS", "{reply}");
                        if reply.contains("retry later") {
                            busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        guesses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for a in attackers {
        a.join().unwrap();
    }
    let took = started.elapsed();
    let rss_after = proc_status_kib(s.pid(), "RssAnon");
    let grown_mib = rss_after.saturating_sub(rss_before) / 1024;
    eprintln!(
        "{} wrong guesses in {took:?} ({} answered busy): RssAnon {rss_before} -> {rss_after} KiB",
        guesses.load(std::sync::atomic::Ordering::Relaxed),
        busy.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(grown_mib < 64, "RSS grew {grown_mib} MiB");
    // The right secret still logs in, promptly.
    let mut ws = s.connect("/world");
    let t = std::time::Instant::now();
    let reply = ask(&mut ws, r#"{"authenticate":{"user":"joe","secret":"right-secret"}}"#);
    assert_eq!(reply, r#"{"authenticated":"joe"}"#);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

/// Anonymous subscribes cannot grow a vhost's channels without bound or
/// for good: channels they make are bounded, live in memory only and go with
/// their last subscriber, and their churn cannot delay an admin write.
#[test]
fn channels_made_by_subscribes_are_bounded_and_vanish_with_their_subscribers() {
    let data = tempfile::tempdir().unwrap();
    let cfg = format!("[webrocket]\nmax_channels_per_vhost = 3001\n{}", config("\"READ\""));
    let s = Server::start_on(&cfg, 2, data.path());
    let store = data.path().join("ringcast.redb");
    let store_before = std::fs::metadata(&store).unwrap().len();
    // 12 connections make 250 new channels each and hold them.
    let (made_tx, made_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Arc::new(Mutex::new(release_rx));
    let churn: Vec<_> = (0..12)
        .map(|c| {
            let (addr, made, release) = (s.ws, made_tx.clone(), release_rx.clone());
            std::thread::spawn(move || {
                let mut ws = try_connect(addr, "/world", &[]).unwrap();
                for i in 0..250 {
                    let channel = format!("c{c}-{i}");
                    let reply = ask(&mut ws, &json!({ "subscribe": { "channel": channel } }).to_string());
                    assert_eq!(reply, format!(r#"{{"subscribed":"{channel}"}}"#));
                }
                made.send(()).unwrap();
                let _ = release.lock().unwrap().recv();
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let (status, answer) =
        admin(&s, "POST", "/admin/channels", Some(json!({ "vhost": "/world", "name": "news" })));
    let took = started.elapsed();
    assert_eq!(status, 201, "{answer}");
    eprintln!("admin write during a churn of 3,000 new channels answered in {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    for _ in 0..12 {
        made_rx.recv_timeout(Duration::from_secs(60)).expect("every connection made its channels");
    }
    // 3,001 channels now (news + 3,000), the cap: the next new one is refused.
    let mut ws = s.connect("/world");
    let reply = ask(&mut ws, r#"{"subscribe":{"channel":"one-too-many"}}"#);
    assert_eq!(err_id(&reply), "TOO_MANY_CHANNELS", "{reply}");
    assert!(reply.contains("3001 channels (webrocket.max_channels_per_vhost)"), "{reply}");
    // Existing channels still take subscribers.
    assert_eq!(ask(&mut ws, r#"{"subscribe":{"channel":"news"}}"#), r#"{"subscribed":"news"}"#);
    assert_eq!(admin(&s, "GET", "/admin/channels?vhost=/world", None).1.as_array().unwrap().len(), 3001);
    // Their subscribers gone, the channels are gone: only the admin's is left.
    for _ in 0..12 {
        release_tx.send(()).unwrap();
    }
    for c in churn {
        c.join().unwrap();
    }
    assert!(eventually(Duration::from_secs(10), || {
        admin(&s, "GET", "/admin/channels?vhost=/world", None).1
            == json!([{ "name": "news", "subscribers": 1 }])
    }));
    assert_eq!(ask(&mut ws, r#"{"subscribe":{"channel":"fresh"}}"#), r#"{"subscribed":"fresh"}"#);
    let store_after = std::fs::metadata(&store).unwrap().len();
    eprintln!("state store {store_before} -> {store_after} bytes after 3,000 channels made by subscribes");
    // Nothing of them was written: after a restart only the admin's channel exists.
    drop(ws);
    drop(s);
    let s = Server::start_on(&cfg, 2, data.path());
    assert_eq!(
        admin(&s, "GET", "/admin/channels?vhost=/world", None).1,
        json!([{ "name": "news", "subscribers": 0 }])
    );
}
