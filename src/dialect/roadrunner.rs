//! The RoadRunner websockets dialect (docs/protocols.md §2).
//!
//! Client → server: `{"command": C, "broker": B, "topics": [T...], "payload": P}`.
//! Server → client: `{"topic": "@join"|"#join"|..., "payload": [...]}` replies
//! and `{"topic": T, "payload": "<string>"}` deliveries.

use bytes::Bytes;
use serde::Deserialize;

use crate::ws::FrameBuilder;

/// A parsed client command; strings borrow from the message buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    Join {
        broker: Option<&'a str>,
        topics: Vec<&'a str>,
    },
    Leave {
        broker: Option<&'a str>,
        topics: Vec<&'a str>,
    },
    /// Accepted and ignored (RoadRunner's client sends it).
    Headers,
    /// Ours (`[vhost.auth]`): a new token for the connection before its
    /// current one expires.
    Refresh {
        token: &'a str,
    },
}

#[derive(Deserialize)]
struct RawCommand<'a> {
    #[serde(borrow, default)]
    command: Option<&'a str>,
    #[serde(borrow, default)]
    broker: Option<&'a str>,
    #[serde(borrow, default)]
    topics: Option<Vec<&'a str>>,
    #[serde(borrow, default)]
    token: Option<&'a str>,
}

/// Why a client message was not a command; sent back in `#error`.
#[derive(Debug, PartialEq, Eq)]
pub enum BadCommand {
    /// Not JSON of a command's shape (the parser's reason).
    Json(String),
    Unknown(String),
    Missing,
}

impl std::fmt::Display for BadCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadCommand::Json(e) => write!(f, "invalid command JSON: {e}"),
            BadCommand::Unknown(c) => write!(f, "unknown command: {c:?}"),
            BadCommand::Missing => f.write_str("missing \"command\""),
        }
    }
}

impl std::error::Error for BadCommand {}

/// Parses a text message in place with simd-json (the message buffer is
/// scratch space: simd-json unescapes strings into it).
pub fn parse_command<'a>(
    message: &'a mut [u8],
    buffers: &mut simd_json::Buffers,
) -> Result<Command<'a>, BadCommand> {
    let raw: RawCommand<'a> = simd_json::serde::from_slice_with_buffers(message, buffers)
        .map_err(|e| BadCommand::Json(e.to_string()))?;
    let broker = raw.broker.filter(|b| !b.is_empty());
    match raw.command {
        Some("join") => Ok(Command::Join { broker, topics: raw.topics.unwrap_or_default() }),
        Some("leave") => Ok(Command::Leave { broker, topics: raw.topics.unwrap_or_default() }),
        Some("headers") => Ok(Command::Headers),
        Some("refresh") => Ok(Command::Refresh { token: raw.token.unwrap_or_default() }),
        Some(other) => Err(BadCommand::Unknown(other.to_string())),
        None => Err(BadCommand::Missing),
    }
}

/// Topic names: non-empty, at most `max_len` bytes (`limits.max_topic_length`),
/// no control characters.
pub fn topic_is_valid(topic: &str, max_len: usize) -> bool {
    !topic.is_empty() && topic.len() <= max_len && !topic.chars().any(char::is_control)
}

/// `{"topic":"@refresh"}`: the new token is the connection's now.
pub fn refreshed_frame() -> Bytes {
    let mut b = FrameBuilder::with_capacity(24);
    b.payload().extend_from_slice(br#"{"topic":"@refresh"}"#);
    b.finish_text()
}

/// `{"topic":"#refresh","payload":["<reason>"]}`: the old token stays.
pub fn refresh_failed_frame(reason: &str) -> Bytes {
    frame_of("#refresh", [reason], reason.len())
}

/// The reply kinds of §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Joined,
    JoinFailed,
    Left,
    LeaveFailed,
}

impl Reply {
    fn topic(self) -> &'static str {
        match self {
            Reply::Joined => "@join",
            Reply::JoinFailed => "#join",
            Reply::Left => "@leave",
            Reply::LeaveFailed => "#leave",
        }
    }
}

#[derive(serde::Serialize)]
struct Envelope<'a, P: serde::Serialize> {
    topic: &'a str,
    payload: P,
}

fn frame_of<P: serde::Serialize>(topic: &str, payload: P, size_hint: usize) -> Bytes {
    let mut b = FrameBuilder::with_capacity(size_hint + topic.len() + 24);
    serde_json::to_writer(b.payload(), &Envelope { topic, payload })
        .expect("serializing strings to a Vec cannot fail");
    b.finish_text()
}

/// `{"topic":"@join","payload":["a","b"]}` and the like, as a text frame.
pub fn reply_frame(reply: Reply, topics: &[&str]) -> Bytes {
    let hint = topics.iter().map(|t| t.len() + 3).sum();
    frame_of(reply.topic(), topics, hint)
}

/// `{"topic":"#error","payload":["<reason>"]}` as a text frame.
pub fn error_frame(reason: &str) -> Bytes {
    frame_of("#error", [reason], reason.len())
}

/// A publication as subscribers of `topic` receive it, encoded once:
/// `{"topic":"T","payload":"<payload as a JSON string>"}`. Invalid UTF-8 in the
/// payload becomes U+FFFD, as RoadRunner did.
pub fn delivery_frame(topic: &str, payload: &[u8]) -> Bytes {
    let text = String::from_utf8_lossy(payload);
    frame_of(topic, &*text, payload.len() + payload.len() / 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<String, BadCommand> {
        let mut buf = s.as_bytes().to_vec();
        parse_command(&mut buf, &mut simd_json::Buffers::default()).map(|c| format!("{c:?}"))
    }

    fn payload_of(frame: &Bytes) -> &str {
        // Frames in these tests are short: a 2-byte header.
        std::str::from_utf8(&frame[2..]).unwrap()
    }

    #[test]
    fn parses_roadrunners_documented_samples() {
        assert_eq!(
            parse(r#"{"command":"join","broker":"memory","topics":["foo","foo2"],"payload":""}"#).unwrap(),
            r#"Join { broker: Some("memory"), topics: ["foo", "foo2"] }"#
        );
        assert_eq!(
            parse(r#"{"command":"leave","topics":["a\"b"]}"#).unwrap(),
            r#"Leave { broker: None, topics: ["a\"b"] }"#
        );
        assert_eq!(parse(r#"{"command":"headers","payload":{"x":1},"zzz":[]}"#).unwrap(), "Headers");
        assert_eq!(parse(r#"{"command":"join"}"#).unwrap(), "Join { broker: None, topics: [] }");
        assert_eq!(
            parse(r#"{"command":"refresh","token":"a.b.c"}"#).unwrap(),
            r#"Refresh { token: "a.b.c" }"#
        );
    }

    #[test]
    fn bad_commands_say_why() {
        assert!(parse("{").unwrap_err().to_string().starts_with("invalid command JSON"));
        assert!(parse("[1]").unwrap_err().to_string().starts_with("invalid command JSON"));
        assert_eq!(parse(r#"{"command":"dance"}"#).unwrap_err().to_string(), r#"unknown command: "dance""#);
        assert_eq!(parse(r#"{"topics":[]}"#).unwrap_err().to_string(), r#"missing "command""#);
        assert!(parse(r#"{"command":"join","topics":[1]}"#).is_err());
    }

    #[test]
    fn topic_rules() {
        assert!(topic_is_valid("chat.room-1/é", 256));
        assert!(!topic_is_valid("", 256));
        assert!(!topic_is_valid(&"a".repeat(257), 256));
        assert!(topic_is_valid(&"a".repeat(256), 256));
        assert!(!topic_is_valid("abc", 2));
        assert!(!topic_is_valid("a\nb", 256));
    }

    #[test]
    fn frames() {
        assert_eq!(
            payload_of(&reply_frame(Reply::Joined, &["foo", "foo2"])),
            r#"{"topic":"@join","payload":["foo","foo2"]}"#
        );
        assert_eq!(payload_of(&reply_frame(Reply::JoinFailed, &[])), r##"{"topic":"#join","payload":[]}"##);
        assert_eq!(payload_of(&refreshed_frame()), r#"{"topic":"@refresh"}"#);
        assert_eq!(
            payload_of(&refresh_failed_frame("token expired")),
            r##"{"topic":"#refresh","payload":["token expired"]}"##
        );
        assert_eq!(
            payload_of(&error_frame("binary frames are not supported")),
            r##"{"topic":"#error","payload":["binary frames are not supported"]}"##
        );
        assert_eq!(
            payload_of(&delivery_frame("t", b"say \"hi\"\n")),
            r#"{"topic":"t","payload":"say \"hi\"\n"}"#
        );
        assert_eq!(
            payload_of(&delivery_frame("t", b"a\xffb")),
            "{\"topic\":\"t\",\"payload\":\"a\u{fffd}b\"}"
        );
    }
}
