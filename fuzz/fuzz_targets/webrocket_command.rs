//! WebRocket client and worker messages: any bytes parse or give an error
//! id, never a panic; a session fed any sequence of messages (split on
//! newlines) stays consistent.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ringcast::dialect::webrocket::{self, Command, Perms};
use ringcast::webrocket::directory::{ConfigVhost, Directory};
use ringcast::webrocket::session::{Env, Session};
use ringcast::webrocket::store::{Loaded, Store, UserRecord};

#[derive(Default)]
struct Sink {
    topics: Vec<String>,
}

impl Env for Sink {
    fn is_subscribed(&self, topic: &str) -> bool {
        self.topics.iter().any(|t| t == topic)
    }
    fn subscription_count(&self) -> usize {
        self.topics.len()
    }
    fn max_subscriptions(&self) -> usize {
        4
    }
    fn subscribe(&mut self, topic: &str) {
        self.topics.push(topic.into());
    }
    fn unsubscribe(&mut self, topic: &str) {
        self.topics.retain(|t| t != topic);
    }
    fn unsubscribe_all(&mut self) {
        self.topics.clear();
    }
    fn send(&mut self, frame: Bytes) {
        assert!(frame.len() >= 2);
    }
    fn broadcast(&mut self, _topic: String, frame: Bytes) {
        assert!(frame.len() >= 2);
    }
    fn trigger(&mut self, message: String) -> bool {
        serde_json::from_str::<serde_json::Value>(&message).expect("a trigger is JSON");
        true
    }
    fn sid(&self) -> String {
        "1-1".into()
    }
    fn now(&self) -> std::time::Instant {
        std::time::Instant::now()
    }
    fn in_cluster(&self) -> bool {
        // Some messages then leave work pending: it must not be a panic.
        self.topics.len() % 2 == 1
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Command::Broadcast { event, channel, data: payload }) = webrocket::parse(data) {
        // What subscribers get is JSON whatever the input was.
        let frame = webrocket::broadcast_frame(&event, &channel, payload);
        let start = if frame[1] == 126 { 4 } else if frame[1] == 127 { 10 } else { 2 };
        serde_json::from_slice::<serde_json::Value>(&frame[start..]).expect("a broadcast frame is JSON");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = webrocket::parse_worker(text);
    }
    let configured = [ConfigVhost { path: "/f", anonymous: Perms::READ }];
    let (directory, _) = Directory::load(Store::disabled(), Loaded::default(), &configured);
    let vhost = directory.vhost("/f").expect("configured");
    vhost.set_user("joe", &UserRecord { perms: Perms::ALL.bits(), hash: None });
    let mut session = Session::new(vhost);
    let mut sink = Sink::default();
    for message in data.split(|&b| b == b'\n') {
        let _ = session.on_text(message, &mut sink);
        assert!(sink.topics.len() <= 4);
        assert!(session.user.is_some() || session.perms == Perms::READ);
    }
});
