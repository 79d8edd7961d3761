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
    },
    UnknownBroker(String),
    /// The gateway is shutting down.
    Unavailable,
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::NoMessages => f.write_str("request has no messages"),
            PublishError::NoTopics { message } => write!(f, "message {message} has no topics"),
            PublishError::InvalidTopic { message, topic } => {
                write!(f, "message {message}: invalid topic {topic:?} (1-255 bytes, no control characters)")
            }
            PublishError::UnknownBroker(b) => write!(f, "unknown broker {b:?}"),
            PublishError::Unavailable => f.write_str("gateway is shutting down"),
        }
    }
}

impl std::error::Error for PublishError {}

/// Checks a whole request before anything of it is published.
pub fn validate(messages: &[Message]) -> Result<(), PublishError> {
    if messages.is_empty() {
        return Err(PublishError::NoMessages);
    }
    for (i, m) in messages.iter().enumerate() {
        if m.topics.is_empty() {
            return Err(PublishError::NoTopics { message: i });
        }
        if let Some(t) = m.topics.iter().find(|t| !topic_is_valid(t)) {
            return Err(PublishError::InvalidTopic { message: i, topic: t.clone() });
        }
    }
    Ok(())
}

/// A frame ready for every subscriber of `topic`, encoded once.
#[derive(Debug)]
pub struct Delivery {
    pub topic: Box<str>,
    pub frame: Bytes,
}

/// What shards receive: deliveries shared by reference across shards.
pub type Batch = Arc<[Delivery]>;

/// Encodes each (message, topic) pair into one complete WebSocket frame.
pub fn encode(messages: &[Message]) -> Batch {
    messages
        .iter()
        .flat_map(|m| {
            m.topics
                .iter()
                .map(move |t| Delivery { topic: t.as_str().into(), frame: delivery_frame(t, &m.payload) })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topics: &[&str]) -> Message {
        Message { topics: topics.iter().map(|t| t.to_string()).collect(), payload: Bytes::from_static(b"x") }
    }

    #[test]
    fn validation_refuses_the_whole_request() {
        assert_eq!(validate(&[]), Err(PublishError::NoMessages));
        assert_eq!(validate(&[msg(&["a"]), msg(&[])]), Err(PublishError::NoTopics { message: 1 }));
        assert!(matches!(validate(&[msg(&["a", ""])]), Err(PublishError::InvalidTopic { message: 0, .. })));
        assert_eq!(validate(&[msg(&["a", "b"])]), Ok(()));
    }

    #[test]
    fn one_frame_per_topic() {
        let batch = encode(&[msg(&["a", "b"]), msg(&["c"])]);
        let topics: Vec<&str> = batch.iter().map(|d| &*d.topic).collect();
        assert_eq!(topics, ["a", "b", "c"]);
        assert_eq!(&batch[1].frame[2..], br#"{"topic":"b","payload":"x"}"#);
    }
}
