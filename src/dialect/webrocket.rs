//! The WebRocket dialect's wire format (docs/protocols.md §7): parsing client
//! messages into commands and encoding replies, errors and broadcasts. Pure:
//! no I/O, no state (the session machine is `crate::webrocket::session`).
//!
//! Client → server: a JSON object with exactly one key, the event name, e.g.
//! `{"subscribe":{"channel":"room"}}`. Server → client: `{"subscribed":"room"}`,
//! `{"err":"ID","additional_info":"…"}`, `{"<event>":{"channel","data"}}`.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::ws::FrameBuilder;

/// A set of rights: READ (subscribe, unsubscribe), WRITE (broadcast,
/// trigger), MANAGE (presence).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Perms(u8);

/// A permission name that is not READ, WRITE or MANAGE.
#[derive(Debug, PartialEq, Eq)]
pub struct UnknownPermission(pub String);

impl std::fmt::Display for UnknownPermission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown permission {:?}: use READ, WRITE and MANAGE", self.0)
    }
}

impl std::error::Error for UnknownPermission {}

impl Perms {
    pub const NONE: Perms = Perms(0);
    pub const READ: Perms = Perms(1);
    pub const WRITE: Perms = Perms(2);
    pub const MANAGE: Perms = Perms(4);
    pub const ALL: Perms = Perms(7);

    pub fn has(self, right: Perms) -> bool {
        self.0 & right.0 == right.0
    }

    pub fn bits(self) -> u8 {
        self.0
    }

    pub fn from_bits(bits: u8) -> Perms {
        Perms(bits & 7)
    }

    /// Parses `READ,WRITE` (any case, commas or a list); an empty text is none.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Perms, UnknownPermission> {
        let mut p = Perms::NONE;
        for name in names {
            let name = name.trim();
            p.0 |= match name.to_ascii_uppercase().as_str() {
                "" => 0,
                "READ" => 1,
                "WRITE" => 2,
                "MANAGE" => 4,
                _ => return Err(UnknownPermission(name.to_string())),
            };
        }
        Ok(p)
    }

    pub fn names(self) -> Vec<&'static str> {
        [(Perms::READ, "READ"), (Perms::WRITE, "WRITE"), (Perms::MANAGE, "MANAGE")]
            .into_iter()
            .filter(|(p, _)| self.has(*p))
            .map(|(_, n)| n)
            .collect()
    }
}

impl fmt::Display for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

fn name_is_valid(name: &str, max: usize, extra: &[u8]) -> bool {
    let b = name.as_bytes();
    let ok = |c: u8, first: bool| c.is_ascii_alphanumeric() || c == b'_' || (!first && extra.contains(&c));
    !b.is_empty() && b.len() <= max && ok(b[0], true) && b[1..].iter().all(|&c| ok(c, false))
}

/// `^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$`
pub fn channel_name_is_valid(name: &str) -> bool {
    name_is_valid(name, 128, b".:-")
}

/// `^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$`
pub fn event_name_is_valid(name: &str) -> bool {
    name_is_valid(name, 64, b".:-")
}

/// `^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}$`
pub fn user_name_is_valid(name: &str) -> bool {
    name_is_valid(name, 64, b".@-")
}

/// The error ids of the dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorId {
    InvalidPayload,
    UndefinedEvent,
    InvalidUserName,
    InvalidChannelName,
    InvalidEventName,
    AccessDenied,
    UserNotFound,
    ChannelNotFound,
    AssignationFailed,
    InvalidCredentials,
    SessionNotFound,
    /// Ours: a session at `limits.max_topics_per_connection`.
    TooManyChannels,
}

impl ErrorId {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorId::InvalidPayload => "INVALID_PAYLOAD",
            ErrorId::UndefinedEvent => "UNDEFINED_EVENT",
            ErrorId::InvalidUserName => "INVALID_USER_NAME",
            ErrorId::InvalidChannelName => "INVALID_CHANNEL_NAME",
            ErrorId::InvalidEventName => "INVALID_EVENT_NAME",
            ErrorId::AccessDenied => "ACCESS_DENIED",
            ErrorId::UserNotFound => "USER_NOT_FOUND",
            ErrorId::ChannelNotFound => "CHANNEL_NOT_FOUND",
            ErrorId::AssignationFailed => "ASSIGNATION_FAILED",
            ErrorId::InvalidCredentials => "INVALID_CREDENTIALS",
            ErrorId::SessionNotFound => "SESSION_NOT_FOUND",
            ErrorId::TooManyChannels => "TOO_MANY_CHANNELS",
        }
    }
}

/// An error to send back: its id and a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrError {
    pub id: ErrorId,
    pub info: String,
}

impl WrError {
    pub fn new(id: ErrorId, info: impl Into<String>) -> Self {
        WrError { id, info: info.into() }
    }

    fn payload(info: impl Into<String>) -> Self {
        WrError::new(ErrorId::InvalidPayload, info)
    }

    /// `{"err":"ID","additional_info":"…"}`, keys in that order.
    pub fn json(&self) -> String {
        let info = serde_json::to_string(&self.info).unwrap_or_else(|_| "\"\"".into());
        format!("{{\"err\":\"{}\",\"additional_info\":{info}}}", self.id.as_str())
    }

    pub fn frame(&self) -> Bytes {
        text_frame(self.json().as_bytes())
    }
}

/// A client command; names are validated, strings borrow from the message.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    Authenticate {
        user: Cow<'a, str>,
        secret: Option<Cow<'a, str>>,
    },
    Subscribe {
        channel: Cow<'a, str>,
    },
    Unsubscribe {
        channel: Cow<'a, str>,
    },
    /// `data` is the value's JSON text as sent (`null` when absent).
    Broadcast {
        event: Cow<'a, str>,
        channel: Cow<'a, str>,
        data: &'a str,
    },
    Trigger {
        event: Cow<'a, str>,
        data: &'a str,
    },
    Presence {
        channel: Cow<'a, str>,
    },
    Logout,
    Disconnect,
}

/// The message's entries in order, duplicates kept (so `{"a":1,"a":2}` has two).
struct Entries<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Entries<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Entries<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Entries<'a>, M::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = m.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    if entries.len() == 2 {
                        // Two already make it invalid; stop reading.
                        return Ok(Entries(entries));
                    }
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// The fields any payload may carry; unknown fields are ignored.
#[derive(Deserialize, Default)]
struct Payload<'a> {
    #[serde(borrow, default)]
    sid: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    secret: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    event: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

const EVENTS: &[&str] =
    &["authenticate", "subscribe", "unsubscribe", "broadcast", "trigger", "presence", "logout", "disconnect"];

/// Parses a text message. The checks of shape and names happen here; rights
/// and existence are the session's.
pub fn parse(message: &[u8]) -> Result<Command<'_>, WrError> {
    let text = std::str::from_utf8(message).map_err(|_| WrError::payload("the message is not UTF-8"))?;
    let (event, payload) = one_key(text)?;
    let event: &str = &event;
    if !EVENTS.contains(&event) {
        return Err(WrError::new(ErrorId::UndefinedEvent, event));
    }
    if event == "logout" || event == "disconnect" {
        if payload.get() != "true" {
            return Err(WrError::payload(format!("the payload of {event} must be true")));
        }
        return Ok(if event == "logout" { Command::Logout } else { Command::Disconnect });
    }
    let p = object(event, payload)?;
    let data = p.data.map_or("null", RawValue::get);
    let channel = || named(p.channel.clone(), channel_name_is_valid, ErrorId::InvalidChannelName, "channel");
    let ev = || named(p.event.clone(), event_name_is_valid, ErrorId::InvalidEventName, "event");
    Ok(match event {
        "authenticate" => Command::Authenticate {
            user: named(p.user.clone(), user_name_is_valid, ErrorId::InvalidUserName, "user")?,
            secret: p.secret.clone(),
        },
        "subscribe" => Command::Subscribe { channel: channel()? },
        "unsubscribe" => Command::Unsubscribe { channel: channel()? },
        "presence" => Command::Presence { channel: channel()? },
        "broadcast" => {
            let event = ev()?;
            Command::Broadcast { event, channel: channel()?, data }
        }
        "trigger" => Command::Trigger { event: ev()?, data },
        _ => unreachable!("EVENTS lists every event handled"),
    })
}

/// The one key of a message object and its value's JSON text.
fn one_key(text: &str) -> Result<(Cow<'_, str>, &RawValue), WrError> {
    let Entries(entries) = serde_json::from_str(text)
        .map_err(|e| WrError::payload(format!("expected a JSON object with one key: {e}")))?;
    let mut entries = entries.into_iter();
    match (entries.next(), entries.next()) {
        (Some(entry), None) => Ok(entry),
        _ => Err(WrError::payload("expected a JSON object with exactly one key")),
    }
}

/// A payload that must be an object.
fn object<'a>(key: &str, raw: &'a RawValue) -> Result<Payload<'a>, WrError> {
    if !raw.get().starts_with('{') {
        return Err(WrError::payload(format!("the payload of {key} must be an object")));
    }
    serde_json::from_str(raw.get()).map_err(|e| WrError::payload(format!("invalid payload of {key}: {e}")))
}

fn named<'a>(
    value: Option<Cow<'a, str>>,
    valid: fn(&str) -> bool,
    id: ErrorId,
    key: &str,
) -> Result<Cow<'a, str>, WrError> {
    match value {
        None => Err(WrError::new(id, format!("missing {key:?}"))),
        Some(v) if v.is_empty() => Err(WrError::new(id, format!("empty {key:?}"))),
        Some(v) if !valid(&v) => Err(WrError::new(id, format!("invalid {key} name {:?}", v.as_ref()))),
        Some(v) => Ok(v),
    }
}

fn text_frame(body: &[u8]) -> Bytes {
    crate::ws::data_frame(
        tungstenite::protocol::frame::coding::OpCode::Data(tungstenite::protocol::frame::coding::Data::Text),
        body,
    )
}

/// `{"<key>":"<name>"}` for the replies naming a channel, event or user
/// (names are validated: nothing to escape).
pub fn named_reply(key: &str, name: &str) -> Bytes {
    let mut f = FrameBuilder::with_capacity(key.len() + name.len() + 8);
    f.payload().extend_from_slice(b"{\"");
    f.payload().extend_from_slice(key.as_bytes());
    f.payload().extend_from_slice(b"\":\"");
    f.payload().extend_from_slice(name.as_bytes());
    f.payload().extend_from_slice(b"\"}");
    f.finish_text()
}

pub fn logged_out() -> Bytes {
    text_frame(br#"{"loggedOut":true}"#)
}

/// What subscribers of `channel` receive: `{"<event>":{"channel":"<ch>","data":<data>}}`,
/// `data` verbatim.
pub fn broadcast_frame(event: &str, channel: &str, data: &str) -> Bytes {
    let mut f = FrameBuilder::with_capacity(event.len() + channel.len() + data.len() + 26);
    f.payload().extend_from_slice(b"{\"");
    f.payload().extend_from_slice(event.as_bytes());
    f.payload().extend_from_slice(b"\":{\"channel\":\"");
    f.payload().extend_from_slice(channel.as_bytes());
    f.payload().extend_from_slice(b"\",\"data\":");
    f.payload().extend_from_slice(data.as_bytes());
    f.payload().extend_from_slice(b"}}");
    f.finish_text()
}

/// A worker's reply to a session: `{"<event>":<data>}`.
pub fn reply_frame(event: &str, data: &str) -> Bytes {
    let mut f = FrameBuilder::with_capacity(event.len() + data.len() + 5);
    f.payload().extend_from_slice(b"{\"");
    f.payload().extend_from_slice(event.as_bytes());
    f.payload().extend_from_slice(b"\":");
    f.payload().extend_from_slice(data.as_bytes());
    f.payload().extend_from_slice(b"}");
    f.finish_text()
}

/// `{"presence":{"channel","count","users"}}`
pub fn presence_frame(channel: &str, count: usize, users: &[&str]) -> Bytes {
    let body = serde_json::json!({ "presence": { "channel": channel, "count": count, "users": users } });
    text_frame(body.to_string().as_bytes())
}

/// What a worker receives for a trigger (a JSON text, not a frame: the
/// worker connection has its own WebSocket codec).
pub fn trigger_message(event: &str, data: &str, sid: &str, user: Option<&str>) -> String {
    let user = match user {
        Some(u) => format!("\"{u}\""),
        None => "null".into(),
    };
    format!("{{\"trigger\":{{\"event\":\"{event}\",\"data\":{data},\"sid\":\"{sid}\",\"user\":{user}}}}}")
}

/// A message from a backend worker.
#[derive(Debug, PartialEq, Eq)]
pub enum WorkerCommand<'a> {
    Reply { sid: Cow<'a, str>, event: Cow<'a, str>, data: &'a str },
    Broadcast { channel: Cow<'a, str>, event: Cow<'a, str>, data: &'a str },
}

/// Parses a worker's message: `{"reply":{"sid","event","data"}}` or
/// `{"broadcast":{"channel","event","data"}}`.
pub fn parse_worker(message: &str) -> Result<WorkerCommand<'_>, WrError> {
    let (kind, payload) = one_key(message)?;
    let kind: &str = &kind;
    if kind != "reply" && kind != "broadcast" {
        return Err(WrError::new(ErrorId::UndefinedEvent, kind));
    }
    let p = object(kind, payload)?;
    let data = p.data.map_or("null", RawValue::get);
    let event = named(p.event, event_name_is_valid, ErrorId::InvalidEventName, "event")?;
    if kind == "reply" {
        let sid = p.sid.filter(|s| !s.is_empty()).ok_or_else(|| WrError::payload("missing \"sid\""))?;
        Ok(WorkerCommand::Reply { sid, event, data })
    } else {
        let channel = named(p.channel, channel_name_is_valid, ErrorId::InvalidChannelName, "channel")?;
        Ok(WorkerCommand::Broadcast { channel, event, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(m: &str) -> ErrorId {
        parse(m.as_bytes()).unwrap_err().id
    }

    #[test]
    fn shapes_that_are_not_one_key_objects_are_invalid_payload() {
        for m in ["", "nope", "[]", "{}", r#"{"subscribe":{"channel":"a"},"x":1}"#, "1", "\"s\""] {
            assert_eq!(err(m), ErrorId::InvalidPayload, "{m}");
        }
        assert_eq!(
            err(r#"{"subscribe":{"channel":"a"},"subscribe":{"channel":"b"}}"#),
            ErrorId::InvalidPayload
        );
        assert_eq!(parse(b"\xff").unwrap_err().id, ErrorId::InvalidPayload);
    }

    #[test]
    fn unknown_events_name_themselves() {
        assert_eq!(parse(br#"{"dance":{}}"#).unwrap_err(), WrError::new(ErrorId::UndefinedEvent, "dance"));
    }

    #[test]
    fn payload_shape_comes_before_names() {
        assert_eq!(err(r#"{"subscribe":"room"}"#), ErrorId::InvalidPayload);
        assert_eq!(err(r#"{"subscribe":{"channel":5}}"#), ErrorId::InvalidPayload);
        assert_eq!(err(r#"{"logout":{}}"#), ErrorId::InvalidPayload);
        assert_eq!(err(r#"{"disconnect":false}"#), ErrorId::InvalidPayload);
        assert_eq!(err(r#"{"subscribe":{}}"#), ErrorId::InvalidChannelName);
        assert_eq!(err(r#"{"subscribe":{"channel":""}}"#), ErrorId::InvalidChannelName);
        assert_eq!(err(r#"{"subscribe":{"channel":"a b"}}"#), ErrorId::InvalidChannelName);
        assert_eq!(err(r#"{"authenticate":{"user":"-joe"}}"#), ErrorId::InvalidUserName);
        assert_eq!(err(r#"{"broadcast":{"channel":"a b"}}"#), ErrorId::InvalidEventName);
        assert_eq!(err(r#"{"broadcast":{"event":"e","channel":"a b"}}"#), ErrorId::InvalidChannelName);
        assert_eq!(err(r#"{"trigger":{"event":"e/x"}}"#), ErrorId::InvalidEventName);
    }

    #[test]
    fn data_is_kept_verbatim_and_defaults_to_null() {
        let m =
            br#"{"broadcast":{"event":"e","channel":"c","data":{"z":1,"a":123456789012345678901234567890}}}"#;
        let Command::Broadcast { data, .. } = parse(m).unwrap() else { panic!() };
        assert_eq!(data, r#"{"z":1,"a":123456789012345678901234567890}"#);
        let Command::Trigger { data, .. } = parse(br#"{"trigger":{"event":"e"}}"#).unwrap() else { panic!() };
        assert_eq!(data, "null");
        assert_eq!(&broadcast_frame("e", "c", "[1]")[2..], br#"{"e":{"channel":"c","data":[1]}}"#);
    }

    #[test]
    fn names_follow_their_patterns() {
        assert!(channel_name_is_valid("a.b:c-d_e"));
        assert!(!channel_name_is_valid(&"a".repeat(129)));
        assert!(channel_name_is_valid(&"a".repeat(128)));
        assert!(user_name_is_valid("joe@example.com"));
        assert!(!user_name_is_valid("joe:x"));
        assert!(!event_name_is_valid(&"e".repeat(65)));
    }

    #[test]
    fn escaped_names_are_unescaped_then_checked() {
        let Command::Subscribe { channel } = parse(br#"{"subscribe":{"channel":"\u0061b"}}"#).unwrap() else {
            panic!()
        };
        assert_eq!(channel, "ab");
    }

    #[test]
    fn worker_messages() {
        assert_eq!(
            parse_worker(r#"{"reply":{"sid":"1-2","event":"done","data":{"x":1}}}"#).unwrap(),
            WorkerCommand::Reply { sid: "1-2".into(), event: "done".into(), data: r#"{"x":1}"# }
        );
        assert_eq!(
            parse_worker(r#"{"broadcast":{"event":"e"}}"#).unwrap_err().id,
            ErrorId::InvalidChannelName
        );
        assert_eq!(parse_worker(r#"{"reply":{"event":"e"}}"#).unwrap_err().id, ErrorId::InvalidPayload);
        assert_eq!(
            trigger_message("ev", "null", "s", Some("joe")),
            r#"{"trigger":{"event":"ev","data":null,"sid":"s","user":"joe"}}"#
        );
    }

    #[test]
    fn perms_parse_and_print() {
        assert_eq!(Perms::parse("read, WRITE".split(',')).unwrap(), Perms::from_bits(3));
        assert!(Perms::parse(["ADMIN"]).is_err());
        assert_eq!(Perms::ALL.to_string(), "READ,WRITE,MANAGE");
    }
}
