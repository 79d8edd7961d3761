//! JWT connection tokens (`[vhost.auth]`) through the real binary: tokens
//! minted here with the keys the server was given, real WebSocket clients
//! over ws and wss, real backend hooks.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::backend::{Answer, Backend};
use common::tls::{wss_connect, TestCa};
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "test-secret-of-at-least-32-bytes!!";

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn hs256(claims: Value) -> String {
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap())
        .unwrap()
}

fn roadrunner_auth(auth: &str, extra: &str) -> String {
    format!(
        "{extra}\n[[vhost]]\npath = \"/ws\"\ndialect = \"roadrunner\"\n[vhost.auth]\njwt_hmac_secret = \"{SECRET}\"\n{auth}\n"
    )
}

/// The status and body of a refused upgrade.
fn refused(s: &Server, path: &str, headers: &[(&'static str, &str)]) -> (u16, String) {
    refusal_of(try_connect(s.ws, path, headers))
}

/// Tokens every vhost with `[vhost.auth]` refuses, each with a word of
/// the reason its 401 must give.
fn bad_tokens() -> Vec<(Option<String>, &'static str)> {
    vec![
        (None, "no token"),
        (Some(hs256(json!({"exp": now_s() - 5}))), "token expired"),
        (Some(hs256(json!({"nbf": now_s() + 600}))), "not valid yet"),
        (
            Some(
                encode(
                    &Header::new(Algorithm::HS256),
                    &json!({"sub": "mallory"}),
                    &EncodingKey::from_secret(b"some-other-secret-of-32-bytes-or-more").unwrap(),
                )
                .unwrap(),
            ),
            "bad token signature",
        ),
        // {"alg":"none"} with the claims {"sub":"mallory"} and no signature.
        (Some("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJtYWxsb3J5In0.".into()), "algorithm"),
        (Some("not-a-jwt".into()), "malformed token"),
    ]
}

#[test]
fn roadrunner_tokens_valid_expired_early_forged_and_missing() {
    let s = Server::start(&roadrunner_auth("", ""), 1);
    let good = hs256(json!({"sub": "alice", "exp": now_s() + 600, "topics": ["news.*", "chat"]}));
    let mut ws = s.connect(&format!("/ws?token={good}"));
    join(&mut ws, &["news.eu", "chat"]);
    send_text(&mut ws, r#"{"command":"join","topics":["news.eu","private"]}"#);
    assert_eq!(
        recv_text(&mut ws),
        r##"{"topic":"#join","payload":["news.eu","private"]}"##,
        "a join naming a topic the token does not grant is refused whole"
    );
    assert_eq!(s.publish_json(r#"{"topics":["news.eu"],"payload":"hi"}"#).0, 200);
    assert_eq!(recv_text(&mut ws), r#"{"topic":"news.eu","payload":"hi"}"#);
    // The bearer header works as well as the query.
    let bearer = format!("Bearer {good}");
    let mut by_header = s.connect_with("/ws", &[("Authorization", &bearer)]);
    join(&mut by_header, &["chat"]);

    let cases = bad_tokens();
    for (token, why) in &cases {
        let path = token.as_ref().map_or("/ws".to_string(), |t| format!("/ws?token={t}"));
        let (status, body) = refused(&s, &path, &[]);
        assert_eq!(status, 401, "{why}: {body}");
        assert!(body.starts_with("invalid token: ") && body.contains(why), "{why}: {body}");
    }
    assert!(eventually(Duration::from_secs(5), || s
        .metric("ringcast_handshakes_refused_total{shard=\"0\",reason=\"token\"}")
        >= cases.len() as u64));
}

#[test]
fn optional_tokens_let_tokenless_clients_in_but_not_bad_tokens() {
    let s = Server::start(&roadrunner_auth("required = false", ""), 1);
    let mut anonymous = s.connect("/ws");
    join(&mut anonymous, &["anything"]);
    let (status, body) = refused(&s, "/ws?token=garbage", &[]);
    assert_eq!(status, 401, "a token that is sent must be valid: {body}");
    let mut limited = s.connect(&format!("/ws?token={}", hs256(json!({"topics": ["a"]}))));
    send_text(&mut limited, r#"{"command":"join","topics":["b"]}"#);
    assert_eq!(recv_text(&mut limited), r##"{"topic":"#join","payload":["b"]}"##);
}

#[test]
fn audience_and_issuer_are_enforced_when_configured() {
    let s = Server::start(&roadrunner_auth("aud = \"ringcast\"\niss = \"https://auth.test\"", ""), 1);
    let ok = hs256(json!({"aud": "ringcast", "iss": "https://auth.test"}));
    let _ws = s.connect(&format!("/ws?token={ok}"));
    for (claims, why) in [
        (json!({"iss": "https://auth.test"}), "audience"),
        (json!({"aud": "other", "iss": "https://auth.test"}), "audience"),
        (json!({"aud": "ringcast"}), "issuer"),
    ] {
        let (status, body) = refused(&s, &format!("/ws?token={}", hs256(claims)), &[]);
        assert_eq!(status, 401);
        assert!(body.contains(why), "{body}");
    }
}

#[test]
fn a_token_expiring_while_connected_closes_4001_unless_refreshed() {
    let s = Server::start(&roadrunner_auth("", ""), 1);
    let short = hs256(json!({"sub": "alice", "exp": now_s() + 3}));
    let mut expiring = s.connect(&format!("/ws?token={short}"));
    let mut refreshed = s.connect(&format!("/ws?token={short}"));
    send_text(
        &mut refreshed,
        &json!({"command": "refresh", "token": hs256(json!({"sub": "alice", "exp": now_s() + 600}))})
            .to_string(),
    );
    assert_eq!(recv_text(&mut refreshed), r#"{"topic":"@refresh"}"#);
    // A refresh for another user, or a bad one, is refused and changes nothing.
    send_text(
        &mut refreshed,
        &json!({"command": "refresh", "token": hs256(json!({"sub": "bob"}))}).to_string(),
    );
    assert_eq!(
        recv_text(&mut refreshed),
        r##"{"topic":"#refresh","payload":["the new token is for another user"]}"##
    );
    send_text(&mut refreshed, r#"{"command":"refresh","token":"x"}"#);
    assert!(recv_text(&mut refreshed).starts_with(r##"{"topic":"#refresh","payload":["malformed token"##));

    set_timeout(&mut expiring, Duration::from_secs(10));
    let started = Instant::now();
    assert_eq!(close_of(&mut expiring), (4001, "token expired".to_string()));
    assert!(started.elapsed() < Duration::from_secs(7), "closed within a keepalive pass of exp");
    // The refreshed one is still served.
    join(&mut refreshed, &["t"]);
    assert_eq!(s.publish_json(r#"{"topics":["t"],"payload":"still here"}"#).0, 200);
    assert_eq!(recv_text(&mut refreshed), r#"{"topic":"t","payload":"still here"}"#);
    assert!(eventually(Duration::from_secs(5), || s.metric("ringcast_token_expired_closes_total") == 1));
}

#[test]
fn leeway_keeps_a_just_expired_token_valid_and_delays_the_close() {
    let s = Server::start(&roadrunner_auth("leeway_ms = 3000", ""), 1);
    let mut ws = s.connect(&format!("/ws?token={}", hs256(json!({"exp": now_s() - 1}))));
    set_timeout(&mut ws, Duration::from_secs(8));
    join(&mut ws, &["t"]);
    assert_eq!(close_of(&mut ws).0, 4001, "closed once exp + leeway passed");
}

#[test]
fn hooks_see_the_token_user_and_the_connect_hook_sees_the_client_address() {
    let backend = Backend::start(|_| Answer::new(200, ""));
    let url = backend.url();
    let config = format!(
        "[[vhost]]\npath = \"/ws\"\ndialect = \"roadrunner\"\n[vhost.hooks]\nconnect = \"{url}/connect\"\njoin = \"{url}/join\"\n\
         [vhost.auth]\njwt_hmac_secret = \"{SECRET}\"\n"
    );
    let s = Server::start(&config, 1);
    // A forged X-Forwarded-For from an untrusted peer is not passed on.
    let path = format!("/ws?token={}", hs256(json!({"sub": "alice@example.com"})));
    let mut ws = s.connect_with(&path, &[("X-Forwarded-For", "6.6.6.6")]);
    join(&mut ws, &["t"]);
    let connect = &backend.requests("GET", "/connect")[0];
    assert_eq!(connect.header("x-ringcast-user"), Some("alice@example.com"));
    assert_eq!(connect.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(connect.header("x-real-ip"), Some("127.0.0.1"));
    let joined = &backend.requests("POST", "/join")[0];
    assert_eq!(joined.header("x-ringcast-user"), Some("alice@example.com"));

    // Behind a trusted proxy the client is the address it named.
    let proxied = Server::start(&format!("[server]\ntrusted_proxies = [\"127.0.0.1\"]\n{config}"), 1);
    let _ws = proxied.connect_with(&path, &[("X-Forwarded-For", "203.0.113.7")]);
    let connect = &backend.requests("GET", "/connect")[1];
    assert_eq!(connect.header("x-forwarded-for"), Some("203.0.113.7, 127.0.0.1"));
    assert_eq!(connect.header("x-real-ip"), Some("203.0.113.7"));
}

#[test]
fn proxy_clients_carry_their_user_to_the_backend() {
    let backend = Backend::start(|_| Answer::new(200, "ok"));
    let config = format!(
        "[[vhost]]\npath = \"/p/\"\ndialect = \"proxy\"\nbackend = \"{}\"\n[vhost.auth]\njwt_hmac_secret = \"{SECRET}\"\n",
        backend.url()
    );
    let s = Server::start(&config, 1);
    assert_eq!(refused(&s, "/p/c1", &[]).0, 401);
    let mut ws = s.connect(&format!("/p/c1?token={}", hs256(json!({"sub": "bob"}))));
    send_text(&mut ws, "hello");
    assert!(eventually(Duration::from_secs(5), || !backend.requests("POST", "/c1").is_empty()));
    assert_eq!(backend.requests("GET", "/c1")[0].header("x-ringcast-user"), Some("bob"));
    assert_eq!(backend.requests("POST", "/c1")[0].header("x-ringcast-user"), Some("bob"));
}

const ADMIN: &str = "admin-token-for-tests-0123456789";

fn webrocket_auth(extra: &str) -> String {
    format!(
        "[server]\nadmin_token = \"{ADMIN}\"\n{extra}\n[[vhost]]\npath = \"/world\"\ndialect = \"webrocket\"\n\
         [vhost.auth]\njwt_hmac_secret = \"{SECRET}\"\n"
    )
}

fn add_user(s: &Server, name: &str, perms: &[&str]) {
    let body = json!({ "vhost": "/world", "name": name, "permissions": perms });
    let (status, answer) = admin_call(s, ADMIN, "POST", "/admin/users", Some(body));
    assert_eq!(status, 201, "{answer}");
}

fn ask<S: std::io::Read + std::io::Write>(ws: &mut tungstenite::WebSocket<S>, message: Value) -> String {
    send_text(ws, &message.to_string());
    recv_text(ws)
}

#[test]
fn webrocket_sub_logs_in_and_channels_limit_subscribe() {
    let s = Server::start(&webrocket_auth(""), 1);
    add_user(&s, "alice", &["READ", "WRITE"]);
    let token = hs256(json!({"sub": "alice", "channels": ["room.*"]}));
    let mut ws = s.connect(&format!("/world?token={token}"));
    // No anonymous rights on this vhost: READ comes from the token's user.
    assert_eq!(ask(&mut ws, json!({"subscribe": {"channel": "room.1"}})), r#"{"subscribed":"room.1"}"#);
    let denied: Value =
        serde_json::from_str(&ask(&mut ws, json!({"subscribe": {"channel": "lobby"}}))).unwrap();
    assert_eq!(denied["err"], "ACCESS_DENIED", "{denied}");
    assert!(denied["additional_info"].as_str().unwrap().contains("does not grant channel"));
    // A token for a user the vhost does not have: anonymous (no rights here).
    let mut stranger = s.connect(&format!("/world?token={}", hs256(json!({"sub": "ghost"}))));
    let reply: Value =
        serde_json::from_str(&ask(&mut stranger, json!({"subscribe": {"channel": "room.1"}}))).unwrap();
    assert_eq!(reply["err"], "ACCESS_DENIED");
    assert_eq!(refused(&s, "/world", &[]).0, 401);
}

#[test]
fn webrocket_token_expiry_closes_4001() {
    let s = Server::start(&webrocket_auth(""), 1);
    let mut ws = s.connect(&format!("/world?token={}", hs256(json!({"exp": now_s() + 3}))));
    set_timeout(&mut ws, Duration::from_secs(10));
    assert_eq!(close_of(&mut ws), (4001, "token expired".to_string()));
}

#[test]
fn tokens_over_wss_for_roadrunner_and_webrocket() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let files = ca.leaf().write(dir.path());
    let config = format!(
        "{}\n[[vhost]]\npath = \"/ws\"\ndialect = \"roadrunner\"\n[vhost.auth]\njwt_hmac_secret = \"{SECRET}\"\n",
        webrocket_auth(&format!("[server.tls]\n{files}"))
    );
    let s = Server::start(&config, 1);
    add_user(&s, "alice", &["READ"]);
    let client = ca.client_config();
    let token = hs256(json!({"sub": "alice", "exp": now_s() + 600, "topics": ["t"], "channels": ["c"]}));
    let mut rr = wss_connect(s.ws, &format!("/ws?token={token}"), &client).expect("wss with a token");
    join(&mut rr, &["t"]);
    assert_eq!(s.publish_json(r#"{"topics":["t"],"payload":"secure"}"#).0, 200);
    assert_eq!(recv_text(&mut rr), r#"{"topic":"t","payload":"secure"}"#);
    let mut wr = wss_connect(s.ws, &format!("/world?token={token}"), &client).unwrap();
    assert_eq!(ask(&mut wr, json!({"subscribe": {"channel": "c"}})), r#"{"subscribed":"c"}"#);
    match wss_connect(s.ws, "/ws", &client) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("a wss upgrade without a token must get 401: {:?}", other.map(|_| ())),
    }
    let short = hs256(json!({"exp": now_s() + 3}));
    let mut expiring = wss_connect(s.ws, &format!("/ws?token={short}"), &client).unwrap();
    expiring.get_mut().sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(close_of(&mut expiring).0, 4001);
}

#[test]
fn public_keys_rs256_es256_eddsa() {
    let dir = tempfile::tempdir().unwrap();
    // RS256 from openssl (rcgen cannot make RSA keys with ring), ES256 and
    // EdDSA from rcgen.
    let rsa = dir.path().join("rsa.pem");
    // `output`, not `status`: openssl's progress dots stay out of the test log.
    let made = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&rsa)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let rsa_pub = dir.path().join("rsa.pub.pem");
    assert!(std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&rsa)
        .arg("-out")
        .arg(&rsa_pub)
        .status()
        .unwrap()
        .success());
    let mut keys =
        vec![(Algorithm::RS256, rsa_pub, EncodingKey::from_rsa_pem(&std::fs::read(&rsa).unwrap()).unwrap())];
    for (alg, sig) in
        [(Algorithm::ES256, &rcgen::PKCS_ECDSA_P256_SHA256), (Algorithm::EdDSA, &rcgen::PKCS_ED25519)]
    {
        let pair = rcgen::KeyPair::generate_for(sig).unwrap();
        let public = dir.path().join(format!("{alg:?}.pub.pem"));
        std::fs::write(&public, pair.public_key_pem()).unwrap();
        let private = pair.serialize_pem();
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(private.as_bytes()).unwrap(),
            _ => EncodingKey::from_ed_pem(private.as_bytes()).unwrap(),
        };
        keys.push((alg, public, key));
    }
    for (alg, public, key) in keys {
        let config =
            format!("[[vhost]]\npath = \"/ws\"\ndialect = \"roadrunner\"\n[vhost.auth]\njwt_public_key = {public:?}\n");
        let s = Server::start(&config, 1);
        let token = encode(&Header::new(alg), &json!({"sub": "k", "topics": ["t"]}), &key).unwrap();
        let mut ws = s.connect(&format!("/ws?token={token}"));
        join(&mut ws, &["t"]);
        // HS256 signed with the public key's PEM: the algorithm confusion attack.
        let pem = std::fs::read(&public).unwrap();
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "k"}),
            &EncodingKey::from_secret(&pem).unwrap(),
        )
        .unwrap();
        let (status, body) = refused(&s, &format!("/ws?token={forged}"), &[]);
        assert_eq!(status, 401, "{alg:?}");
        assert!(body.contains("algorithm"), "{alg:?}: {body}");
    }
}

#[test]
fn an_unusable_key_stops_the_start_naming_it() {
    let config = "[[vhost]]\npath = \"/ws\"\ndialect = \"roadrunner\"\n[vhost.auth]\njwt_public_key = \"/nonexistent/key.pem\"\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["--config"])
        .arg(&path)
        .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0", "--rpc-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[vhost.auth] of /ws: jwt_public_key: cannot read /nonexistent/key.pem"),
        "{stderr}"
    );
}

/// The fenced block of `lang` in docs/security.md's token section.
fn doc_snippet(lang: &str) -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/security.md")).unwrap();
    let start =
        doc.find(&format!("```{lang}\n")).unwrap_or_else(|| panic!("no {lang} block")) + lang.len() + 4;
    doc[start..][..doc[start..].find("```").unwrap()].to_string()
}

/// Runs `program` on a script file; its trimmed stdout.
fn run_script(program: &str, script: &str, ext: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("mint.{ext}"));
    std::fs::write(&path, script).unwrap();
    let out =
        std::process::Command::new(program).arg(&path).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// docs/security.md's PHP and Python minting snippets, run as written:
/// their tokens connect, and their `topics` claim is enforced.
#[test]
fn the_documented_minting_snippets_make_tokens_the_gateway_takes() {
    let s = Server::start(&roadrunner_auth("", ""), 1);
    let php = format!(
        "<?php\n{}\necho ringcast_token('{SECRET}', 'alice', ['news.*'], 600);\n",
        doc_snippet("php")
    );
    let python = format!("user = 'alice'\nSECRET = '{SECRET}'\n{}\nprint(token)\n", doc_snippet("python"));
    for (program, token) in
        [("php", run_script("php", &php, "php")), ("python3", run_script("python3", &python, "py"))]
    {
        let mut ws = s.connect(&format!("/ws?token={token}"));
        join(&mut ws, &["news.eu"]);
        send_text(&mut ws, r#"{"command":"join","topics":["sport"]}"#);
        assert_eq!(recv_text(&mut ws), r##"{"topic":"#join","payload":["sport"]}"##, "{program}");
        assert_eq!(s.publish_json(r#"{"topics":["news.eu"],"payload":"minted"}"#).0, 200);
        assert_eq!(recv_text(&mut ws), r#"{"topic":"news.eu","payload":"minted"}"#, "{program}");
    }
}

/// Every refused kind of token, and a good one, on a roadrunner and a
/// webrocket vhost, over ws and over wss.
#[test]
fn every_kind_of_token_on_both_dialects_over_ws_and_wss() {
    let auth = format!("[vhost.auth]\njwt_hmac_secret = \"{SECRET}\"\n");
    let vhosts = format!(
        "[[vhost]]\npath = \"/ws\"\ndialect = \"roadrunner\"\n{auth}[[vhost]]\npath = \"/world\"\ndialect = \"webrocket\"\nanonymous = [\"READ\"]\n{auth}"
    );
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let files = ca.leaf().write(dir.path());
    let plain = Server::start(&vhosts, 1);
    let tls = Server::start(&format!("[server.tls]\n{files}\n{vhosts}"), 1);
    let client = ca.client_config();
    let good = hs256(json!({"sub": "alice", "exp": now_s() + 600}));
    for path in ["/ws", "/world"] {
        for (token, why) in bad_tokens() {
            let target = token.as_ref().map_or(path.to_string(), |t| format!("{path}?token={t}"));
            let (status, body) = refused(&plain, &target, &[]);
            assert!(status == 401 && body.contains(why), "ws {path}, {why}: {status} {body}");
            match wss_connect(tls.ws, &target, &client) {
                Err(tungstenite::Error::Http(r)) => {
                    let body = String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned();
                    assert!(
                        r.status() == 401 && body.contains(why),
                        "wss {path}, {why}: {} {body}",
                        r.status()
                    );
                }
                other => panic!("wss {path}, {why}: a 401 expected, got {:?}", other.map(|_| ())),
            }
        }
        let with_token = format!("{path}?token={good}");
        plain.connect(&with_token);
        wss_connect(tls.ws, &with_token, &client)
            .unwrap_or_else(|e| panic!("wss {path} with a good token: {e}"));
    }
}
