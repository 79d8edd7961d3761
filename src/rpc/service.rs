//! RPC methods: turns a decoded goridge frame into a call (or an error
//! reply) and encodes replies. No I/O here; `server` does the sockets.

use base64::Engine;
use bytes::Bytes;
use prost::Message as _;
use serde::Deserialize;

use super::frame::{self, Frame};
use super::proto;
use crate::publish::{self, Message, PublishError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Proto,
    Json,
}

/// What a frame asks for, with what is needed to answer it.
#[derive(Debug)]
pub struct Call {
    seq: u32,
    method: String,
    /// The request's codec flag, used again in the reply.
    codec_flag: u8,
    pub action: Action,
    /// The method name was over `MAX_METHOD_LEN` (counted by the server).
    pub method_too_long: bool,
}

#[derive(Debug, PartialEq)]
pub enum Action {
    /// Answer with this error; nothing else to do.
    Fail(CallError),
    /// Publish, replying when done (`wait`) or at once (`PublishAsync`).
    Publish { messages: Vec<Message>, wait: bool },
}

/// Why a call is answered with an error (the reply's text names it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// Not the two options (SEQ_ID, METHOD_LEN) goridge sends.
    Options(usize),
    MethodLen {
        method_len: usize,
        payload: usize,
    },
    /// A method name over `MAX_METHOD_LEN` (not echoed back).
    MethodTooLong(usize),
    MethodNotUtf8,
    UnknownMethod(String),
    Codec(u8),
    Proto(String),
    Json(String),
    Base64 {
        message: usize,
        reason: String,
    },
    Publish(PublishError),
}

const KNOWN_METHODS: &str =
    "websockets.Publish, websockets.PublishAsync, broadcast.Publish, broadcast.PublishAsync";

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Options(n) => write!(f, "expected 2 options (SEQ_ID, METHOD_LEN), got {n}"),
            CallError::MethodLen { method_len, payload } => {
                write!(f, "METHOD_LEN {method_len} exceeds the payload of {payload} bytes")
            }
            CallError::MethodTooLong(n) => {
                write!(f, "method name of {n} bytes; at most {MAX_METHOD_LEN} (known: {KNOWN_METHODS})")
            }
            CallError::MethodNotUtf8 => f.write_str("method name is not UTF-8"),
            CallError::UnknownMethod(m) => write!(f, "unknown method {m:?}; known: {KNOWN_METHODS}"),
            CallError::Codec(flags) => {
                write!(f, "unsupported codec flags {flags:#04x}; use proto (0x80) or JSON (0x08)")
            }
            CallError::Proto(e) => write!(f, "cannot decode protobuf request: {e}"),
            CallError::Json(e) => write!(f, "cannot decode JSON request: {e}"),
            CallError::Base64 { message, reason } => {
                write!(f, "message {message}: payload is not base64: {reason}")
            }
            CallError::Publish(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CallError {}

enum Api {
    Websockets,
    Broadcast,
}

/// The longest method name taken (RoadRunner's are under 32 bytes).
pub const MAX_METHOD_LEN: usize = 256;

/// Interprets one frame. `broker` is the configured broker's name, which a
/// `websockets.v1beta` message's `broker` field must match when set.
pub fn interpret(f: &Frame<'_>, broker: &str, limits: &publish::Limits) -> Call {
    let codec_flag = f.flags & !(frame::ERROR | frame::CONTROL);
    let seq = f.options.first().copied().unwrap_or(0);
    let mut call = Call {
        seq,
        method: String::new(),
        codec_flag,
        action: Action::Fail(CallError::Options(0)),
        method_too_long: false,
    };
    if f.options.len() != 2 {
        call.action = Action::Fail(CallError::Options(f.options.len()));
        return call;
    }
    let method_len = f.options[1] as usize;
    if method_len > f.payload.len() {
        call.action = Action::Fail(CallError::MethodLen { method_len, payload: f.payload.len() });
        return call;
    }
    if method_len > MAX_METHOD_LEN {
        // Neither echoed in the text nor in the reply's method field: a
        // 16 MiB name must not come back (or be held) as a 16 MiB reply.
        call.method_too_long = true;
        call.action = Action::Fail(CallError::MethodTooLong(method_len));
        return call;
    }
    let (method, body) = f.payload.split_at(method_len);
    let Ok(method) = std::str::from_utf8(method) else {
        call.action = Action::Fail(CallError::MethodNotUtf8);
        return call;
    };
    call.method = method.to_string();
    call.action = match action(method, codec_flag, body, broker, limits) {
        Ok(a) => a,
        Err(e) => Action::Fail(e),
    };
    call
}

fn action(
    method: &str,
    codec_flag: u8,
    body: &[u8],
    broker: &str,
    limits: &publish::Limits,
) -> Result<Action, CallError> {
    let (api, wait) = match method {
        "websockets.Publish" => (Api::Websockets, true),
        "websockets.PublishAsync" => (Api::Websockets, false),
        "broadcast.Publish" => (Api::Broadcast, true),
        "broadcast.PublishAsync" => (Api::Broadcast, false),
        other => return Err(CallError::UnknownMethod(other.to_string())),
    };
    let codec = match codec_flag {
        frame::CODEC_PROTO => Codec::Proto,
        frame::CODEC_JSON => Codec::Json,
        other => return Err(CallError::Codec(other)),
    };
    let messages = match codec {
        Codec::Proto => decode_proto(&api, body, broker)?,
        Codec::Json => decode_json(body, broker)?,
    };
    publish::validate(&messages, limits).map_err(CallError::Publish)?;
    Ok(Action::Publish { messages, wait })
}

fn check_broker(requested: &str, configured: &str) -> Result<(), CallError> {
    if requested.is_empty() || requested == configured {
        Ok(())
    } else {
        Err(CallError::Publish(PublishError::UnknownBroker(requested.to_string())))
    }
}

fn decode_proto(api: &Api, body: &[u8], broker: &str) -> Result<Vec<Message>, CallError> {
    let bad = |e: prost::DecodeError| CallError::Proto(e.to_string());
    match api {
        Api::Websockets => proto::websockets::Request::decode(body)
            .map_err(bad)?
            .messages
            .into_iter()
            .map(|m| {
                check_broker(&m.broker, broker)?;
                Ok(Message { topics: m.topics, payload: Bytes::from(m.payload) })
            })
            .collect(),
        Api::Broadcast => Ok(proto::broadcast::Request::decode(body)
            .map_err(bad)?
            .messages
            .into_iter()
            .map(|m| Message { topics: m.topics, payload: Bytes::from(m.payload) })
            .collect()),
    }
}

/// The Request as Go's encoding/json writes it: bytes are base64.
#[derive(Deserialize)]
struct JsonRequest {
    #[serde(default)]
    messages: Option<Vec<JsonMessage>>,
}

#[derive(Deserialize)]
struct JsonMessage {
    #[serde(default)]
    broker: Option<String>,
    #[serde(default)]
    topics: Option<Vec<String>>,
    #[serde(default)]
    payload: Option<String>,
}

fn decode_json(body: &[u8], broker: &str) -> Result<Vec<Message>, CallError> {
    let req: JsonRequest = serde_json::from_slice(body).map_err(|e| CallError::Json(e.to_string()))?;
    req.messages
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            check_broker(m.broker.as_deref().unwrap_or(""), broker)?;
            let payload = base64::engine::general_purpose::STANDARD
                .decode(m.payload.unwrap_or_default())
                .map_err(|e| CallError::Base64 { message: i, reason: e.to_string() })?;
            Ok(Message { topics: m.topics.unwrap_or_default(), payload: Bytes::from(payload) })
        })
        .collect()
}

impl Call {
    /// The success reply: `Response{ok: true}` in the request's codec.
    pub fn ok_reply(&self, out: &mut Vec<u8>) {
        let body = if self.codec_flag == frame::CODEC_JSON {
            br#"{"ok":true}"#.to_vec()
        } else {
            proto::broadcast::Response { ok: true }.encode_to_vec()
        };
        self.reply(out, self.codec_flag, &body);
    }

    /// An error reply: flags codec|ERROR, payload = method name + text.
    pub fn error_reply(&self, out: &mut Vec<u8>, text: &str) {
        self.reply(out, self.codec_flag | frame::ERROR, text.as_bytes());
    }

    fn reply(&self, out: &mut Vec<u8>, flags: u8, body: &[u8]) {
        let method = self.method.as_bytes();
        frame::encode(out, flags, &[self.seq, method.len() as u32], &[method, body]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(flags: u8, options: &[u32], payload: &[u8]) -> Call {
        interpret(
            &Frame { flags, options: options.to_vec(), payload },
            "memory",
            &crate::config::Config::default().publish_limits(),
        )
    }

    fn with_method(method: &str, body: &[u8]) -> Vec<u8> {
        let mut p = method.as_bytes().to_vec();
        p.extend_from_slice(body);
        p
    }

    #[test]
    fn proto_publish_both_packages() {
        let bc = proto::broadcast::Request {
            messages: vec![proto::broadcast::Message {
                command: String::new(),
                topics: vec!["t".into()],
                payload: b"hi".to_vec(),
            }],
        };
        let c = call(frame::CODEC_PROTO, &[7, 17], &with_method("broadcast.Publish", &bc.encode_to_vec()));
        assert_eq!(
            c.action,
            Action::Publish {
                messages: vec![Message { topics: vec!["t".into()], payload: Bytes::from_static(b"hi") }],
                wait: true
            }
        );
        let ws = proto::websockets::Request {
            messages: vec![proto::websockets::Message {
                command: "publish".into(),
                broker: "memory".into(),
                topics: vec!["a".into(), "b".into()],
                payload: vec![1],
            }],
        };
        let c =
            call(frame::CODEC_PROTO, &[1, 23], &with_method("websockets.PublishAsync", &ws.encode_to_vec()));
        assert!(matches!(c.action, Action::Publish { wait: false, .. }));
    }

    #[test]
    fn json_publish_with_base64_payload() {
        let body = br#"{"messages":[{"topics":["t"],"payload":"aGk="}]}"#;
        let c = call(frame::CODEC_JSON, &[1, 17], &with_method("broadcast.Publish", body));
        assert_eq!(
            c.action,
            Action::Publish {
                messages: vec![Message { topics: vec!["t".into()], payload: Bytes::from_static(b"hi") }],
                wait: true
            }
        );
        let mut out = Vec::new();
        c.ok_reply(&mut out);
        assert_eq!(&out[20..], br#"broadcast.Publish{"ok":true}"#);
        assert_eq!(out[1], frame::CODEC_JSON);
    }

    #[test]
    fn errors_are_replies_naming_the_problem() {
        let fail = |c: Call| match c.action {
            Action::Fail(e) => e.to_string(),
            other => panic!("expected failure, got {other:?}"),
        };
        assert!(fail(call(frame::CODEC_PROTO, &[1], b"x")).contains("expected 2 options"));
        assert!(fail(call(frame::CODEC_PROTO, &[1, 99], b"x")).contains("METHOD_LEN"));
        assert!(fail(call(frame::CODEC_PROTO, &[1, 9], b"nope.Call")).contains("unknown method"));
        assert!(
            fail(call(frame::CODEC_MSGPACK, &[1, 17], b"broadcast.Publish")).contains("unsupported codec")
        );
        assert!(fail(call(frame::CODEC_PROTO, &[1, 17], &with_method("broadcast.Publish", &[0xff, 0xff])))
            .contains("protobuf"));
        assert!(fail(call(frame::CODEC_PROTO, &[1, 17], b"broadcast.Publish")).contains("no messages"));
        let no_topic = br#"{"messages":[{"topics":[],"payload":""}]}"#;
        assert!(fail(call(frame::CODEC_JSON, &[1, 17], &with_method("broadcast.Publish", no_topic)))
            .contains("no topics"));
        let bad_broker = br#"{"messages":[{"broker":"redis","topics":["t"]}]}"#;
        assert!(fail(call(frame::CODEC_JSON, &[1, 18], &with_method("websockets.Publish", bad_broker)))
            .contains("unknown broker"));

        let c = call(frame::CODEC_PROTO, &[5, 9], b"nope.Call");
        let mut out = Vec::new();
        c.error_reply(&mut out, "boom");
        let (f, _) = frame::decode(&out, 1 << 20).unwrap().unwrap();
        assert_eq!(f.flags, frame::CODEC_PROTO | frame::ERROR);
        assert_eq!(f.options, [5, 9]);
        assert_eq!(f.payload, b"nope.Callboom");
    }

    #[test]
    fn a_long_method_name_is_refused_without_being_echoed() {
        let name = vec![b'x'; 100_000];
        let c = call(frame::CODEC_PROTO, &[3, name.len() as u32], &name);
        assert!(c.method_too_long);
        let Action::Fail(e) = &c.action else { panic!() };
        let e = e.to_string();
        assert!(e.contains("at most 256") && e.len() < 300, "{e}");
        let mut out = Vec::new();
        c.error_reply(&mut out, &e);
        assert!(out.len() < 400, "reply of {} bytes", out.len());
        let ok = vec![b'y'; MAX_METHOD_LEN];
        assert!(!call(frame::CODEC_PROTO, &[3, ok.len() as u32], &ok).method_too_long);
    }
}
