//! A client connection's protocol as a state machine, free of I/O: bytes
//! and keepalive ticks go in; frames to send (its send queue) and effects
//! for the gateway (joins, backend requests, a close to time) come out, and
//! the gateway's answers come back through the `*_answered` calls. No
//! awaits, no runtime types: the shard's driver (`shard::conn`, `driver`)
//! carries the effects out, and the tests below drive sessions directly.
//!
//! A session holds its input while it waits for answers (`in_flight`
//! reaches `pause_at`): the decoder stops at the next message and
//! `resume` continues once an answer came. A RoadRunner join or leave and a
//! WebRocket message always wait (their replies keep the commands' order);
//! proxy messages wait only past `max_in_flight_per_client`.

pub mod send_queue;

use std::rc::Rc;

use bytes::Bytes;

use crate::dialect::roadrunner::{self, Command, Reply};
use crate::limits::{Bucket, Rate};
use crate::ws::{close_frame, data_frame, Control, Data, Decoder, Event, Flow, OpCode};
use send_queue::{Frame, OverBudget, SendQueue};

/// The dialect spoken on the connection, with its per-connection state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum Kind {
    #[default]
    Echo,
    RoadRunner,
    /// A ClientId's connection: its messages go to the backend.
    Proxy(Rc<str>),
    /// Messages go to the WebRocket session machine (`webrocket::session`),
    /// which the shard keeps beside this one.
    WebRocket,
}

/// What the session needs from the gateway's configuration and scratch.
pub struct Context<'a> {
    pub max_message_size: usize,
    /// `max_backpressure`: the send queue's budget in bytes.
    pub budget: usize,
    /// Reused parse buffers for RoadRunner commands.
    pub json: &'a mut simd_json::Buffers,
    /// `limits.messages_per_s` and `messages_burst`; None: no limit.
    pub rate: Option<Rate>,
    /// The shard's clock (ms), for the rate.
    pub now_ms: u64,
}

impl<'a> Context<'a> {
    /// No message rate limit (tests, fuzzing).
    pub fn new(max_message_size: usize, budget: usize, json: &'a mut simd_json::Buffers) -> Context<'a> {
        Context { max_message_size, budget, json, rate: None, now_ms: 0 }
    }
}

/// Work for the gateway, in the order it arose.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// A RoadRunner `join`: subscribe (or ask the join hook), then call
    /// `join_answered`. Input waits meanwhile.
    Join { broker: Option<String>, topics: Vec<String> },
    /// A RoadRunner `leave`: unsubscribe, then call `leave_answered`.
    Leave { broker: Option<String>, topics: Vec<String> },
    /// A proxy client's message for the backend; `forward_answered` follows.
    Forward { body: Bytes, text: bool },
    /// A RoadRunner `refresh` (ours): check the token, then call
    /// `refresh_answered`. Input waits meanwhile.
    Refresh { token: String },
    /// The client sent past `limits.messages_per_s`: a Close 1008 is
    /// queued (a `Closing` follows).
    RateLimited,
    /// A WebRocket client's text message (None: a binary one) for the
    /// WebRocket session; `answered` follows once the shard has handed it
    /// over. Input waits meanwhile.
    WebRocket(Option<Vec<u8>>),
    /// A Close is queued: drop the connection if the peer has not closed
    /// within the linger time.
    Closing,
    /// The send queue was over budget: its unsent frames were discarded and
    /// a Close 1013 queued (a `Closing` follows).
    SlowConsumer,
    /// The client broke the protocol; a Close with the violation's code is
    /// queued (a `Closing` follows).
    ProtocolError,
}

/// The backend's answer to a forwarded message.
#[derive(Debug)]
pub enum Answer {
    /// 2xx: its body (if not empty) goes to the client.
    Reply(Bytes),
    /// Failed or refused; `close`: the vhost closes the connection on backend errors.
    Failed { close: bool },
}

/// What a keepalive tick did.
#[derive(Debug, PartialEq, Eq)]
pub enum Tick {
    Quiet,
    /// A ping was queued.
    Pinged,
    /// Silent for too long: a Close 1001 was queued.
    IdleTimeout,
    /// The ping did not fit the queue's budget (`Effect::SlowConsumer`'s case).
    SlowConsumer,
}

#[derive(Debug, Default)]
pub struct Session {
    pub queue: SendQueue,
    /// Only while it holds something (a partial frame, a fragmented
    /// message, spare buffers, a stop): most connections are idle.
    decoder: Option<Box<Decoder>>,
    kind: Kind,
    /// Input is held while this many answers are awaited.
    pause_at: usize,
    in_flight: usize,
    /// The decoder stopped at a message because input is held; it has
    /// buffered frames to resume from.
    input_held: bool,
    /// A Close is queued: nothing more is sent, input is ignored.
    closing: bool,
    /// The reason of the first Close sent or received.
    close_reason: Option<Box<str>>,
    last_rx_ms: u64,
    ping_outstanding: bool,
    /// `limits.messages_per_s`: the connection's message budget.
    bucket: Bucket,
}

impl Session {
    /// A session opened at `now_ms` that holds input while `pause_at`
    /// answers are awaited (at least 1).
    pub fn new(kind: Kind, pause_at: usize, now_ms: u64) -> Session {
        Session { kind, pause_at: pause_at.max(1), last_rx_ms: now_ms, ..Default::default() }
    }

    pub fn kind(&self) -> &Kind {
        &self.kind
    }

    /// The proxy dialect's ClientId.
    pub fn client(&self) -> Option<&Rc<str>> {
        match &self.kind {
            Kind::Proxy(id) => Some(id),
            _ => None,
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Answers awaited now.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Input waits for answers.
    pub fn is_held(&self) -> bool {
        self.in_flight >= self.pause_at
    }

    /// The decoder stopped at a message that `resume` can take up now.
    pub fn can_resume(&self) -> bool {
        self.input_held && !self.closing && !self.is_held()
    }

    /// Takes the first Close's reason (for the close hook).
    pub fn take_close_reason(&mut self) -> Option<Box<str>> {
        self.close_reason.take()
    }

    /// Counts an answer the gateway will give outside the effects (a
    /// WebRocket hash check, a presence count); `answered` ends it.
    pub fn await_answer(&mut self) {
        self.in_flight += 1;
    }

    pub fn answered(&mut self) {
        debug_assert!(self.in_flight > 0, "an answer nobody waited for");
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Queues a frame within `budget` bytes; frames for a closing session
    /// are dropped silently.
    pub fn push(&mut self, frame: impl Into<Frame>, budget: usize) -> Result<(), OverBudget> {
        if self.closing {
            return Ok(());
        }
        self.queue.push(frame, budget)
    }

    /// Queues the answer to a ping (see `SendQueue::push_pong`).
    pub fn push_pong(&mut self, pong: Bytes, budget: usize) -> Result<(), OverBudget> {
        if self.closing {
            return Ok(());
        }
        self.queue.push_pong(pong, budget)
    }

    /// Queues a Close (`code` and `reason`; none: an empty Close) as the last
    /// frame and remembers the reason for the close hook. False if already closing.
    pub fn begin_close(&mut self, code: Option<u16>, reason: &str) -> bool {
        if self.closing {
            return false;
        }
        let frame = match code {
            Some(code) => close_frame(code, reason),
            None => data_frame(OpCode::Control(Control::Close), b""),
        };
        self.close_reason.get_or_insert_with(|| reason.into());
        self.queue.push_unbounded(frame);
        self.closing = true;
        true
    }

    /// The queue went over budget: drops its unsent frames and queues a
    /// Close 1013. False if it was closing already.
    pub fn close_slow_consumer(&mut self) -> bool {
        self.queue.discard_unsent();
        self.begin_close(Some(1013), "slow consumer")
    }

    /// Something arrived from the peer at `now_ms` (even for a closing session).
    pub fn heard(&mut self, now_ms: u64) {
        self.last_rx_ms = now_ms;
        self.ping_outstanding = false;
    }

    /// The keepalive: a ping once silent for `ping_after_ms` (one at a
    /// time; the caller spreads it per connection, `ping_after_for`), a
    /// Close 1001 once silent for `close_after_ms`.
    pub fn tick(
        &mut self,
        now_ms: u64,
        ping_after_ms: u64,
        close_after_ms: u64,
        ping: &Bytes,
        budget: usize,
    ) -> Tick {
        if self.closing {
            return Tick::Quiet;
        }
        let silent = now_ms.saturating_sub(self.last_rx_ms);
        if silent >= close_after_ms {
            self.begin_close(Some(1001), "idle timeout");
            Tick::IdleTimeout
        } else if silent >= ping_after_ms && !self.ping_outstanding {
            self.ping_outstanding = true;
            if self.queue.push(ping.clone(), budget).is_err() {
                self.close_slow_consumer();
                return Tick::SlowConsumer;
            }
            Tick::Pinged
        } else {
            Tick::Quiet
        }
    }

    /// Decodes what arrived and handles each message, until input is held
    /// for an answer (the rest is kept for `resume`). Returns the number of
    /// data messages taken.
    pub fn on_bytes(&mut self, input: &mut [u8], cx: &mut Context<'_>, out: &mut Vec<Effect>) -> u64 {
        if self.closing {
            return 0;
        }
        self.input_held = false;
        let mut decoder = self.decoder.take().map(|d| *d).unwrap_or_default();
        let mut messages = 0;
        let result = decoder.feed(input, cx.max_message_size, &mut |event| {
            if matches!(event, Event::Text(_) | Event::Binary(_)) {
                messages += 1;
                if let Some(rate) = cx.rate {
                    if !self.bucket.take(rate, cx.now_ms) {
                        out.push(Effect::RateLimited);
                        self.close(Some(1008), "rate limit", out);
                        return Flow::Stop;
                    }
                }
            }
            let flow = self.on_event(event, cx, out);
            if flow == Flow::Continue && self.is_held() {
                Flow::Pause
            } else {
                flow
            }
        });
        self.decoder = (!decoder.is_blank()).then(|| Box::new(decoder));
        match result {
            Ok(Flow::Pause) => self.input_held = true,
            Ok(_) => {}
            Err(v) => {
                out.push(Effect::ProtocolError);
                self.close(Some(v.code), v.reason, out);
            }
        }
        messages
    }

    /// Takes up held input once answers came (`can_resume`).
    pub fn resume(&mut self, cx: &mut Context<'_>, out: &mut Vec<Effect>) -> u64 {
        if !self.can_resume() {
            return 0;
        }
        self.on_bytes(&mut [], cx, out)
    }

    /// The answer to `Effect::Join`: subscribed (`joined`) or refused.
    pub fn join_answered(&mut self, joined: bool, topics: &[&str], budget: usize, out: &mut Vec<Effect>) {
        self.answered();
        let reply = if joined { Reply::Joined } else { Reply::JoinFailed };
        self.reply(roadrunner::reply_frame(reply, topics), budget, out);
    }

    /// The answer to `Effect::Leave`.
    pub fn leave_answered(&mut self, left: bool, topics: &[&str], budget: usize, out: &mut Vec<Effect>) {
        self.answered();
        let reply = if left { Reply::Left } else { Reply::LeaveFailed };
        self.reply(roadrunner::reply_frame(reply, topics), budget, out);
    }

    /// The answer to `Effect::Refresh`: None took the token, else why not.
    pub fn refresh_answered(&mut self, refused: Option<&str>, budget: usize, out: &mut Vec<Effect>) {
        self.answered();
        let frame = match refused {
            None => roadrunner::refreshed_frame(),
            Some(why) => roadrunner::refresh_failed_frame(why),
        };
        self.reply(frame, budget, out);
    }

    /// The backend's answer to `Effect::Forward`.
    pub fn forward_answered(&mut self, answer: Answer, budget: usize, out: &mut Vec<Effect>) {
        self.answered();
        match answer {
            Answer::Reply(body) if !body.is_empty() => self.reply(message_frame(&body), budget, out),
            Answer::Reply(_) | Answer::Failed { close: false } => {}
            Answer::Failed { close: true } => self.close(Some(1011), "backend error", out),
        }
    }

    /// Queues a frame; over budget, closes as a slow consumer.
    pub fn reply(&mut self, frame: Bytes, budget: usize, out: &mut Vec<Effect>) {
        if self.push(frame, budget).is_err() {
            self.slow_consumer(out);
        }
    }

    /// `close_slow_consumer`, reported.
    pub fn slow_consumer(&mut self, out: &mut Vec<Effect>) {
        if self.close_slow_consumer() {
            out.push(Effect::SlowConsumer);
            out.push(Effect::Closing);
        }
    }

    /// `begin_close`, reported.
    pub fn close(&mut self, code: Option<u16>, reason: &str, out: &mut Vec<Effect>) {
        if self.begin_close(code, reason) {
            out.push(Effect::Closing);
        }
    }

    fn on_event(&mut self, event: Event<'_>, cx: &mut Context<'_>, out: &mut Vec<Effect>) -> Flow {
        match event {
            Event::Text(text) => self.on_message(text, true, cx, out),
            Event::Binary(bin) => self.on_message(bin, false, cx, out),
            Event::Ping(payload) => {
                let pong = data_frame(OpCode::Control(Control::Pong), payload);
                if self.push_pong(pong, cx.budget).is_err() {
                    self.slow_consumer(out);
                }
            }
            Event::Pong(_) => {}
            Event::Close(code, reason) => {
                // Echo the status code, as RFC 6455 §5.5.1 suggests; the
                // close hook gets the client's reason.
                self.close_reason.get_or_insert_with(|| reason.into());
                self.close(code, "", out);
            }
        }
        if self.closing {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }

    fn on_message(&mut self, message: &mut [u8], text: bool, cx: &mut Context<'_>, out: &mut Vec<Effect>) {
        match (&self.kind, text) {
            (Kind::Echo, _) => {
                let opcode = if text { Data::Text } else { Data::Binary };
                self.reply(data_frame(OpCode::Data(opcode), message), cx.budget, out);
            }
            (Kind::RoadRunner, false) => {
                self.reply(roadrunner::error_frame("binary frames are not supported"), cx.budget, out)
            }
            (Kind::RoadRunner, true) => match roadrunner::parse_command(message, cx.json) {
                Ok(Command::Headers) => {}
                Ok(Command::Join { broker, topics }) => {
                    self.in_flight += 1;
                    out.push(Effect::Join { broker: broker.map(str::to_string), topics: owned(&topics) });
                }
                Ok(Command::Leave { broker, topics }) => {
                    self.in_flight += 1;
                    out.push(Effect::Leave { broker: broker.map(str::to_string), topics: owned(&topics) });
                }
                Ok(Command::Refresh { token }) => {
                    self.in_flight += 1;
                    out.push(Effect::Refresh { token: token.to_string() });
                }
                Err(bad) => self.reply(roadrunner::error_frame(&bad.to_string()), cx.budget, out),
            },
            (Kind::Proxy(_), _) => {
                self.in_flight += 1;
                out.push(Effect::Forward { body: Bytes::copy_from_slice(message), text });
            }
            (Kind::WebRocket, _) => {
                self.in_flight += 1;
                out.push(Effect::WebRocket(text.then(|| message.to_vec())));
            }
        }
    }
}

fn owned(topics: &[&str]) -> Vec<String> {
    topics.iter().map(|t| t.to_string()).collect()
}

/// A backend's message to a client: text if it is UTF-8, else binary.
pub fn message_frame(body: &[u8]) -> Bytes {
    let opcode = if std::str::from_utf8(body).is_ok() { Data::Text } else { Data::Binary };
    data_frame(OpCode::Data(opcode), body)
}

/// When connection `id` is pinged: after between half and all of
/// `ping_interval_ms` of silence, the same share for a connection every
/// time, so connections that arrived together (a reconnect storm, a load
/// test) are pinged over half an interval rather than in one keepalive tick.
pub fn ping_after_for(ping_interval_ms: u64, id: u64) -> u64 {
    let spread = ping_interval_ms / 2;
    if spread == 0 {
        return ping_interval_ms;
    }
    // A multiplicative hash: consecutive ids land far apart.
    let h = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    ping_interval_ms - h % spread
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: usize = 64 * 1024;

    #[test]
    fn pings_of_connections_that_came_together_are_spread() {
        // 10,000 consecutive ids (one shard's counter) over a 25 s
        // interval: each pinged after at least half of it, and no second
        // with much more than its even share (800).
        let mut per_second = [0u32; 26];
        for n in 1..=10_000u64 {
            let after = ping_after_for(25_000, (3 << 48) | n);
            assert!((12_501..=25_000).contains(&after), "{after}");
            per_second[(after / 1000) as usize] += 1;
        }
        assert!(per_second.iter().all(|n| *n <= 1000), "{per_second:?}");
        assert_eq!(ping_after_for(1, 7), 1);
    }

    /// A masked client frame (mask 0: the payload as is).
    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() < 126);
        let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    }

    fn text(payload: &str) -> Vec<u8> {
        frame(1, payload.as_bytes())
    }

    /// Drives one session: feeds bytes, collects effects and the frames it queued.
    struct Harness {
        session: Session,
        json: simd_json::Buffers,
        effects: Vec<Effect>,
    }

    impl Harness {
        fn new(kind: Kind, pause_at: usize) -> Harness {
            Harness {
                session: Session::new(kind, pause_at, 0),
                json: Default::default(),
                effects: Vec::new(),
            }
        }

        fn feed(&mut self, mut bytes: Vec<u8>) -> u64 {
            let mut cx = Context::new(1024, BUDGET, &mut self.json);
            self.session.on_bytes(&mut bytes, &mut cx, &mut self.effects)
        }

        fn resume(&mut self) -> u64 {
            let mut cx = Context::new(1024, BUDGET, &mut self.json);
            self.session.resume(&mut cx, &mut self.effects)
        }

        fn effects(&mut self) -> Vec<Effect> {
            std::mem::take(&mut self.effects)
        }

        /// The payloads of the frames queued so far (server frames are unmasked).
        fn sent(&mut self) -> Vec<(u8, Vec<u8>)> {
            let mut frames = Vec::new();
            let mut slices = [std::io::IoSlice::new(&[]); 64];
            let n = self.session.queue.slices(&mut slices);
            let mut bytes: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).collect();
            self.session.queue.advance(bytes.len());
            while !bytes.is_empty() {
                let (opcode, len) = (bytes[0] & 0x0f, bytes[1] as usize);
                assert!(len < 126);
                frames.push((opcode, bytes[2..2 + len].to_vec()));
                bytes.drain(..2 + len);
            }
            frames
        }
    }

    fn texts(frames: &[(u8, Vec<u8>)]) -> Vec<String> {
        frames.iter().map(|(_, p)| String::from_utf8_lossy(p).into_owned()).collect()
    }

    #[test]
    fn past_the_message_rate_the_connection_is_closed_with_1008() {
        let mut h = Harness::new(Kind::Echo, 1);
        let rate = Rate::new(10, 2);
        let feed = |h: &mut Harness, now_ms: u64, bytes: Vec<u8>| {
            let mut bytes = bytes;
            let mut cx = Context { rate, now_ms, ..Context::new(1024, BUDGET, &mut h.json) };
            h.session.on_bytes(&mut bytes, &mut cx, &mut h.effects)
        };
        let mut two = text("a");
        two.extend(text("b"));
        feed(&mut h, 1_000, two);
        assert!(h.effects().is_empty(), "the burst passes");
        feed(&mut h, 1_100, text("c"));
        assert!(h.effects().is_empty(), "a token came back after 100 ms");
        let mut burst = text("d");
        burst.extend(text("e"));
        feed(&mut h, 1_100, burst);
        assert_eq!(h.effects(), [Effect::RateLimited, Effect::Closing]);
        let sent = h.sent();
        assert_eq!(texts(&sent[..3]), ["a", "b", "c"], "nothing past the limit was handled");
        assert_eq!(sent[3].0, 0x8);
        assert_eq!(&sent[3].1[..2], &1008u16.to_be_bytes());
        assert_eq!(&sent[3].1[2..], b"rate limit");
        assert_eq!(sent.len(), 4);
    }

    #[test]
    fn echo_answers_each_message_and_ping_in_order() {
        let mut h = Harness::new(Kind::Echo, 1);
        let mut input = text("a");
        input.extend(frame(9, b"p"));
        input.extend(frame(2, b"\x00\xff"));
        assert_eq!(h.feed(input), 2);
        assert_eq!(h.sent(), vec![(1, b"a".to_vec()), (10, b"p".to_vec()), (2, vec![0, 0xff])]);
        assert!(h.effects().is_empty());
    }

    #[test]
    fn a_frame_split_anywhere_is_answered_once_whole() {
        let mut h = Harness::new(Kind::Echo, 1);
        let whole = text("hello");
        for byte in whole {
            h.feed(vec![byte]);
        }
        assert_eq!(h.sent(), vec![(1, b"hello".to_vec())]);
    }

    #[test]
    fn roadrunner_commands_wait_for_their_answers_and_keep_their_order() {
        let mut h = Harness::new(Kind::RoadRunner, 1);
        let mut input = text(r#"{"command":"join","topics":["a","b"]}"#);
        input.extend(text(r#"{"command":"leave","topics":["a"]}"#));
        input.extend(text(r#"{"command":"headers"}"#));
        assert_eq!(h.feed(input), 1, "the leave waits behind the join");
        assert_eq!(h.effects(), vec![Effect::Join { broker: None, topics: vec!["a".into(), "b".into()] }]);
        assert!(h.session.is_held() && !h.session.can_resume());
        assert_eq!(h.resume(), 0, "nothing moves before the answer");
        let mut out = Vec::new();
        h.session.join_answered(true, &["a", "b"], BUDGET, &mut out);
        assert!(out.is_empty() && h.session.can_resume());
        assert_eq!(h.resume(), 1);
        assert_eq!(h.effects(), vec![Effect::Leave { broker: None, topics: vec!["a".into()] }]);
        h.session.leave_answered(false, &["a"], BUDGET, &mut out);
        assert_eq!(h.resume(), 1, "headers is taken and ignored");
        assert!(h.effects().is_empty() && !h.session.is_held());
        assert_eq!(
            texts(&h.sent()),
            vec![r#"{"topic":"@join","payload":["a","b"]}"#, r##"{"topic":"#leave","payload":["a"]}"##]
        );
    }

    #[test]
    fn roadrunner_errors_are_answered_in_band() {
        let mut h = Harness::new(Kind::RoadRunner, 1);
        let mut input = text("{not json");
        input.extend(frame(2, b"x"));
        input.extend(text(r#"{"command":"dance"}"#));
        assert_eq!(h.feed(input), 3);
        let sent = texts(&h.sent());
        assert_eq!(sent.len(), 3);
        assert!(sent[0].contains("invalid command JSON"), "{}", sent[0]);
        assert!(sent[1].contains("binary frames are not supported"), "{}", sent[1]);
        assert!(sent[2].contains("unknown command"), "{}", sent[2]);
        assert!(h.effects().is_empty());
    }

    #[test]
    fn proxy_messages_are_forwarded_up_to_the_in_flight_limit() {
        let mut h = Harness::new(Kind::Proxy("joe".into()), 2);
        let mut input = text("one");
        input.extend(frame(2, b"two"));
        input.extend(text("three"));
        assert_eq!(h.feed(input), 2);
        assert_eq!(
            h.effects(),
            vec![
                Effect::Forward { body: Bytes::from_static(b"one"), text: true },
                Effect::Forward { body: Bytes::from_static(b"two"), text: false },
            ]
        );
        let mut out = Vec::new();
        h.session.forward_answered(Answer::Reply(Bytes::from_static(b"hi")), BUDGET, &mut out);
        h.session.forward_answered(Answer::Reply(Bytes::new()), BUDGET, &mut out);
        assert_eq!(h.resume(), 1);
        assert_eq!(h.effects(), vec![Effect::Forward { body: Bytes::from_static(b"three"), text: true }]);
        h.session.forward_answered(Answer::Failed { close: true }, BUDGET, &mut out);
        assert_eq!(out, vec![Effect::Closing]);
        let sent = h.sent();
        assert_eq!(sent[0], (1, b"hi".to_vec()), "an empty answer sends nothing");
        assert_eq!(sent[1].0, 8);
        assert_eq!(&sent[1].1[..2], &1011u16.to_be_bytes());
        assert_eq!(h.session.take_close_reason().as_deref(), Some("backend error"));
    }

    #[test]
    fn webrocket_messages_go_to_its_session_one_at_a_time() {
        let mut h = Harness::new(Kind::WebRocket, 1);
        let mut input = text(r#"{"subscribe":{"channel":"a"}}"#);
        input.extend(frame(2, b"b"));
        assert_eq!(h.feed(input), 1);
        assert_eq!(h.effects(), vec![Effect::WebRocket(Some(br#"{"subscribe":{"channel":"a"}}"#.to_vec()))]);
        h.session.answered();
        assert_eq!(h.resume(), 1);
        assert_eq!(h.effects(), vec![Effect::WebRocket(None)]);
    }

    #[test]
    fn the_clients_close_is_echoed_and_input_after_it_ignored() {
        let mut h = Harness::new(Kind::Echo, 1);
        let mut input = frame(8, b"\x03\xe8bye");
        input.extend(text("late"));
        h.feed(input);
        assert_eq!(h.effects(), vec![Effect::Closing]);
        assert_eq!(h.sent(), vec![(8, b"\x03\xe8".to_vec())]);
        assert_eq!(h.session.take_close_reason().as_deref(), Some("bye"));
        assert_eq!(h.feed(text("later")), 0);
        assert!(h.sent().is_empty());
    }

    #[test]
    fn a_protocol_violation_closes_with_its_code() {
        let mut h = Harness::new(Kind::Echo, 1);
        // An unmasked client frame.
        h.feed(vec![0x81, 0x01, b'x']);
        assert_eq!(h.effects(), vec![Effect::ProtocolError, Effect::Closing]);
        let sent = h.sent();
        assert_eq!(sent[0].0, 8);
        assert_eq!(&sent[0].1[..2], &1002u16.to_be_bytes());
    }

    #[test]
    fn a_reply_over_budget_closes_the_slow_consumer() {
        let mut h = Harness::new(Kind::Echo, 1);
        let mut out = Vec::new();
        h.session.reply(Bytes::from(vec![0; 100]), 50, &mut out);
        assert_eq!(out, vec![Effect::SlowConsumer, Effect::Closing]);
        let sent = h.sent();
        assert_eq!(sent.len(), 1, "only the Close: the unsent reply was dropped");
        assert_eq!(&sent[0].1[..2], &1013u16.to_be_bytes());
    }

    #[test]
    fn keepalive_pings_once_then_closes_a_silent_client() {
        let ping = data_frame(OpCode::Control(Control::Ping), b"");
        let mut h = Harness::new(Kind::Echo, 1);
        assert_eq!(h.session.tick(999, 1000, 3000, &ping, BUDGET), Tick::Quiet);
        assert_eq!(h.session.tick(1000, 1000, 3000, &ping, BUDGET), Tick::Pinged);
        assert_eq!(h.session.tick(2000, 1000, 3000, &ping, BUDGET), Tick::Quiet, "one ping at a time");
        h.session.heard(2500);
        assert_eq!(h.session.tick(3500, 1000, 3000, &ping, BUDGET), Tick::Pinged);
        assert_eq!(h.session.tick(5500, 1000, 3000, &ping, BUDGET), Tick::IdleTimeout);
        assert_eq!(h.session.tick(9000, 1000, 3000, &ping, BUDGET), Tick::Quiet, "closing already");
        let opcodes: Vec<u8> = h.sent().iter().map(|f| f.0).collect();
        assert_eq!(opcodes, vec![9, 9, 8]);
    }
}
