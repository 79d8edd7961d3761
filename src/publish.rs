//! Publications: validation shared by every publishing interface (RPC, HTTP),
//! and the encode-once step that turns a message into shareable frames.

use std::sync::Arc;

use bytes::Bytes;

use crate::dialect::roadrunner::{delivery_frame, topic_is_valid};

/// One message to publish to one or more topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topics: Vec<String>,
    pub payload: Bytes,
}

/// A publication refused or not completed; the text is sent to the publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    NoMessages,
    NoTopics {
        message: usize,
    },
    InvalidTopic {
        message: usize,
        topic: String,
        max_len: usize,
    },
    UnknownBroker(String),
    /// More (message, topic) pairs than `limits.max_publish_topics`.
    TooManyTopics {
        topics: usize,
        limit: usize,
    },
    /// The frames to encode would pass `limits.max_publish_bytes`.
    TooLarge {
        bytes: usize,
        limit: usize,
    },
    /// The gateway is shutting down.
    Unavailable,
    /// The network broker did not take it (unreachable, too slow, or its
    /// outgoing queue is full); it may still be delivered later, once.
    Broker(String),
}

impl PublishError {
    /// The HTTP status that answers it.
    pub fn http_status(&self) -> u16 {
        match self {
            PublishError::TooLarge { .. } => 413,
            PublishError::Unavailable | PublishError::Broker(_) => 503,
            _ => 400,
        }
    }
}

/// Bounds on what one publish request may make the gateway build: each
/// (message, topic) pair is encoded as its own frame (the topic is inside
/// the frame), so a large payload to many topics multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_topics: usize,
    pub max_bytes: usize,
    /// `limits.max_topic_length`.
    pub max_topic_length: usize,
}

/// Envelope bytes of a delivery frame besides topic and payload (header,
/// `{"topic":…,"payload":…}`), rounded up.
const ENVELOPE: usize = 40;

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::NoMessages => f.write_str("request has no messages"),
            PublishError::NoTopics { message } => write!(f, "message {message} has no topics"),
            PublishError::InvalidTopic { message, topic, max_len } => {
                // A long topic is shown by its start: the answer stays small.
                let shown: String = topic.chars().take(64).collect();
                let more = if shown.len() < topic.len() { "…" } else { "" };
                write!(
                    f,
                    "message {message}: invalid topic {shown:?}{more} (1 to {max_len} bytes \
                     (limits.max_topic_length), no control characters)"
                )
            }
            PublishError::UnknownBroker(b) => write!(f, "unknown broker {b:?}"),
            PublishError::TooManyTopics { topics, limit } => write!(
                f,
                "request names {topics} (message, topic) pairs; at most {limit} per request \
                 (limits.max_publish_topics): split it"
            ),
            PublishError::TooLarge { bytes, limit } => write!(
                f,
                "request would encode {bytes} bytes of frames (payload size × topics); at most {limit} \
                 per request (limits.max_publish_bytes): split it or use fewer topics"
            ),
            PublishError::Unavailable => f.write_str("gateway is shutting down"),
            PublishError::Broker(why) => write!(f, "broker: {why}"),
        }
    }
}

impl std::error::Error for PublishError {}

/// Checks a whole request before anything of it is published.
pub fn validate(messages: &[Message], limits: &Limits) -> Result<(), PublishError> {
    if messages.is_empty() {
        return Err(PublishError::NoMessages);
    }
    let topics: usize = messages.iter().map(|m| m.topics.len()).sum();
    if topics > limits.max_topics {
        return Err(PublishError::TooManyTopics { topics, limit: limits.max_topics });
    }
    let bytes: usize =
        messages.iter().flat_map(|m| m.topics.iter().map(|t| m.payload.len() + t.len() + ENVELOPE)).sum();
    if bytes > limits.max_bytes {
        return Err(PublishError::TooLarge { bytes, limit: limits.max_bytes });
    }
    for (i, m) in messages.iter().enumerate() {
        if m.topics.is_empty() {
            return Err(PublishError::NoTopics { message: i });
        }
        if let Some(t) = m.topics.iter().find(|t| !topic_is_valid(t, limits.max_topic_length)) {
            let max_len = limits.max_topic_length;
            return Err(PublishError::InvalidTopic { message: i, topic: t.clone(), max_len });
        }
    }
    Ok(())
}

/// A frame ready for every subscriber of `topic`, encoded once.
#[derive(Debug)]
pub struct Delivery {
    pub topic: Box<str>,
    pub frame: Bytes,
    /// When this node got the publication (publish → socket latency).
    pub received: std::time::Instant,
}

impl Delivery {
    pub fn new(topic: &str, frame: Bytes) -> Self {
        Delivery { topic: topic.into(), frame, received: std::time::Instant::now() }
    }
}

/// What shards receive: deliveries shared by reference across shards.
pub type Batch = Arc<[Delivery]>;

/// Encodes each (message, topic) pair into one complete WebSocket frame.
pub fn encode(messages: &[Message]) -> Batch {
    let received = std::time::Instant::now();
    messages
        .iter()
        .flat_map(|m| {
            m.topics.iter().map(move |t| Delivery {
                topic: t.as_str().into(),
                frame: delivery_frame(t, &m.payload),
                received,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topics: &[&str]) -> Message {
        Message { topics: topics.iter().map(|t| t.to_string()).collect(), payload: Bytes::from_static(b"x") }
    }

    const LIMITS: Limits = Limits { max_topics: 100, max_bytes: 1 << 20, max_topic_length: 256 };

    #[test]
    fn validation_refuses_the_whole_request() {
        assert_eq!(validate(&[], &LIMITS), Err(PublishError::NoMessages));
        assert_eq!(validate(&[msg(&["a"]), msg(&[])], &LIMITS), Err(PublishError::NoTopics { message: 1 }));
        assert!(matches!(
            validate(&[msg(&["a", ""])], &LIMITS),
            Err(PublishError::InvalidTopic { message: 0, .. })
        ));
        assert_eq!(validate(&[msg(&["a", "b"])], &LIMITS), Ok(()));
    }

    #[test]
    fn amplification_is_bounded_before_anything_is_encoded() {
        let many: Vec<String> = (0..101).map(|i| format!("t{i}")).collect();
        let m = Message { topics: many, payload: Bytes::from_static(b"x") };
        assert_eq!(validate(&[m], &LIMITS), Err(PublishError::TooManyTopics { topics: 101, limit: 100 }));
        let big = Message { topics: vec!["a".into(), "b".into()], payload: Bytes::from(vec![b'x'; 600_000]) };
        let err = validate(&[big], &LIMITS).unwrap_err();
        assert!(matches!(err, PublishError::TooLarge { bytes, .. } if bytes > 1_200_000), "{err:?}");
        assert_eq!(err.http_status(), 413);
        assert!(err.to_string().contains("limits.max_publish_bytes"));
    }

    #[test]
    fn one_frame_per_topic() {
        let batch = encode(&[msg(&["a", "b"]), msg(&["c"])]);
        let topics: Vec<&str> = batch.iter().map(|d| &*d.topic).collect();
        assert_eq!(topics, ["a", "b", "c"]);
        assert_eq!(&batch[1].frame[2..], br#"{"topic":"b","payload":"x"}"#);
    }
}
