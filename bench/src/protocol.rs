//! How a subscriber joins a topic and recognises deliveries on each server
//! the benchmarks drive, free of I/O so it can be unit-tested:
//!
//! - `roadrunner` (ringcast, and the peers in `bench/peers/` that speak it):
//!   upgrade on one path, send `{"command":"join","topics":[T]}`, wait for
//!   `{"topic":"@join",...}`; deliveries are `{"topic":T,"payload":P}`.
//! - `nchan`: upgrade on `<path>/<T>`; subscribed once upgraded; deliveries
//!   are the raw payloads.
//! - `nats`: upgrade on the websocket listener, then the NATS client protocol
//!   in binary frames (`CONNECT`, `SUB T 1`, `PING` → `PONG`); deliveries are
//!   `MSG T 1 <n>\r\n<payload>\r\n`, which may span frames.
//! - `webrocket` (ringcast's WebRocket dialect): upgrade on the vhost path,
//!   `{"authenticate":{"user":"bench"}}` then `{"subscribe":{"channel":T}}`,
//!   subscribed at `{"subscribed":T}`; deliveries are
//!   `{"<event>":{"channel":T,"data":P}}`. The vhost needs a user `bench`
//!   with READ (and WRITE for the publisher); no secret.

use crate::wire::masked_frame;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Roadrunner,
    Nchan,
    Nats,
    Webrocket,
}

/// The user the WebRocket subscribers and publisher authenticate as.
pub const WEBROCKET_USER: &str = "bench";

impl Protocol {
    /// The WebSocket path when `--path` is not given.
    pub fn default_path(self) -> &'static str {
        match self {
            Protocol::Roadrunner => "/ws",
            Protocol::Nchan => "/sub",
            Protocol::Nats => "/",
            Protocol::Webrocket => "/world",
        }
    }

    /// The path a subscriber to `topic` upgrades on.
    pub fn subscribe_path(self, base: &str, topic: &str) -> String {
        match self {
            Protocol::Nchan => format!("{}/{topic}", base.trim_end_matches('/')),
            Protocol::Roadrunner | Protocol::Nats | Protocol::Webrocket => base.to_string(),
        }
    }

    /// Frames a subscriber sends right after the upgrade.
    pub fn subscribe_frames(self, topic: &str, out: &mut Vec<u8>) {
        match self {
            Protocol::Roadrunner => {
                let join = format!(r#"{{"command":"join","topics":["{topic}"]}}"#);
                masked_frame(0x1, join.as_bytes(), out);
            }
            Protocol::Nchan => {}
            Protocol::Webrocket => {
                let auth = format!(r#"{{"authenticate":{{"user":"{WEBROCKET_USER}"}}}}"#);
                masked_frame(0x1, auth.as_bytes(), out);
                let sub = format!(r#"{{"subscribe":{{"channel":"{topic}"}}}}"#);
                masked_frame(0x1, sub.as_bytes(), out);
            }
            Protocol::Nats => {
                let cmds = format!("{NATS_CONNECT}SUB {topic} 1\r\nPING\r\n");
                masked_frame(0x2, cmds.as_bytes(), out);
            }
        }
    }

    /// A subscriber's state for this protocol.
    pub fn subscription(self) -> Subscription {
        Subscription { protocol: self, joined: self == Protocol::Nchan, nats: NatsReader::default() }
    }
}

/// What the NATS client says first: no `+OK` per command, no echo.
pub const NATS_CONNECT: &str =
    "CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false,\"protocol\":1,\"name\":\"ringcast-bench\"}\r\n";

/// One subscriber's progress through its protocol.
pub struct Subscription {
    protocol: Protocol,
    joined: bool,
    nats: NatsReader,
}

/// What a frame asked of the connection.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reaction {
    /// The subscription became active with this frame.
    pub joined_now: bool,
    /// The server asked for a reply (NATS `PING`): send `PONG`.
    pub pong: bool,
}

impl Subscription {
    pub fn joined(&self) -> bool {
        self.joined
    }

    /// Consumes one data frame's payload; `delivery` gets each delivered
    /// message (the publisher's payload, or for roadrunner the JSON frame).
    pub fn on_frame(&mut self, payload: &[u8], mut delivery: impl FnMut(&[u8])) -> Result<Reaction, String> {
        let mut r = Reaction::default();
        match self.protocol {
            Protocol::Roadrunner if !self.joined => {
                if !payload.starts_with(br#"{"topic":"@join""#) {
                    return Err(format!("join refused: {}", String::from_utf8_lossy(payload)));
                }
                self.joined = true;
                r.joined_now = true;
            }
            Protocol::Webrocket if !self.joined => {
                if payload.starts_with(br#"{"subscribed":"#) {
                    self.joined = true;
                    r.joined_now = true;
                } else if !payload.starts_with(br#"{"authenticated":"#) {
                    return Err(format!("subscribe refused: {}", String::from_utf8_lossy(payload)));
                }
            }
            Protocol::Roadrunner | Protocol::Nchan | Protocol::Webrocket => delivery(payload),
            Protocol::Nats => {
                let joined = &mut self.joined;
                self.nats.feed(payload, |event| {
                    match event {
                        NatsEvent::Msg(m) => delivery(m),
                        NatsEvent::Ping => r.pong = true,
                        NatsEvent::Pong if !*joined => {
                            *joined = true;
                            r.joined_now = true;
                        }
                        NatsEvent::Err(e) => return Err(format!("nats: -ERR {e}")),
                        NatsEvent::Pong | NatsEvent::Other => {}
                    }
                    Ok(())
                })?;
            }
        }
        Ok(r)
    }
}

/// A NATS server → client message, borrowed from the reader's buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum NatsEvent<'a> {
    Msg(&'a [u8]),
    Ping,
    Pong,
    Err(&'a str),
    /// INFO, +OK and anything else the benchmark has no use for.
    Other,
}

/// Reassembles the NATS byte stream (which frames may split anywhere) and
/// yields whole protocol messages. One buffer, reused.
#[derive(Default)]
pub struct NatsReader {
    buf: Vec<u8>,
}

/// A control line longer than this is not NATS (INFO is a few hundred bytes).
const MAX_NATS_LINE: usize = 64 * 1024;

impl NatsReader {
    pub fn feed(
        &mut self,
        data: &[u8],
        mut on: impl FnMut(NatsEvent<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        self.buf.extend_from_slice(data);
        let mut pos = 0;
        loop {
            let rest = &self.buf[pos..];
            let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                if rest.len() > MAX_NATS_LINE {
                    return Err("nats: control line without an end".into());
                }
                break;
            };
            let line = &rest[..eol];
            if let Some(args) = line.strip_prefix(b"MSG ") {
                // MSG <subject> <sid> [reply-to] <#bytes>
                let size = args
                    .rsplit(|b| *b == b' ')
                    .next()
                    .and_then(|s| std::str::from_utf8(s).ok())
                    .and_then(|s| s.parse::<usize>().ok())
                    .ok_or_else(|| format!("nats: bad MSG line {:?}", String::from_utf8_lossy(line)))?;
                let body = eol + 2;
                if rest.len() < body + size + 2 {
                    break; // the payload has not all arrived
                }
                on(NatsEvent::Msg(&rest[body..body + size]))?;
                pos += body + size + 2;
                continue;
            }
            let event = match line {
                b"PING" => NatsEvent::Ping,
                b"PONG" => NatsEvent::Pong,
                l if l.starts_with(b"-ERR") => {
                    NatsEvent::Err(std::str::from_utf8(&l[4..]).unwrap_or("?").trim())
                }
                _ => NatsEvent::Other,
            };
            on(event)?;
            pos += eol + 2;
        }
        self.buf.drain(..pos);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(r: &mut NatsReader, data: &[u8]) -> Vec<String> {
        let mut seen = Vec::new();
        r.feed(data, |e| {
            seen.push(match e {
                NatsEvent::Msg(m) => format!("msg:{}", String::from_utf8_lossy(m)),
                other => format!("{other:?}"),
            });
            Ok(())
        })
        .unwrap();
        seen
    }

    #[test]
    fn nats_messages_split_anywhere_are_reassembled() {
        let stream = b"INFO {\"server_id\":\"x\"}\r\nPONG\r\nMSG t0 1 5\r\nhe\r\nl\r\nMSG t0 1 reply 0\r\n\r\nPING\r\n";
        // Every split point gives the same events.
        for cut in 0..stream.len() {
            let mut r = NatsReader::default();
            let mut seen = collect(&mut r, &stream[..cut]);
            seen.extend(collect(&mut r, &stream[cut..]));
            assert_eq!(seen, ["Other", "Pong", "msg:he\r\nl", "msg:", "Ping"], "cut at {cut}");
        }
    }

    #[test]
    fn nats_errors_and_garbage_are_reported() {
        let mut r = NatsReader::default();
        assert!(r.feed(b"MSG t0 1 x\r\n", |_| Ok(())).unwrap_err().contains("bad MSG line"));
        let mut r = NatsReader::default();
        assert!(r.feed(&vec![b'a'; MAX_NATS_LINE + 1], |_| Ok(())).is_err());
        let mut sub = Protocol::Nats.subscription();
        let err = sub.on_frame(b"-ERR 'Authorization Violation'\r\n", |_| {}).unwrap_err();
        assert!(err.contains("Authorization Violation"), "{err}");
    }

    #[test]
    fn each_protocol_joins_and_delivers() {
        let mut got = Vec::new();
        let mut rr = Protocol::Roadrunner.subscription();
        assert!(!rr.joined());
        assert!(rr.on_frame(br#"{"topic":"@join","payload":["t0"]}"#, |_| {}).unwrap().joined_now);
        rr.on_frame(br#"{"topic":"t0","payload":"1:2:x"}"#, |m| got.push(m.to_vec())).unwrap();
        assert!(Protocol::Roadrunner.subscription().on_frame(b"{\"error\":1}", |_| {}).is_err());

        let mut nchan = Protocol::Nchan.subscription();
        assert!(nchan.joined());
        nchan.on_frame(b"3:4:x", |m| got.push(m.to_vec())).unwrap();

        let mut wr = Protocol::Webrocket.subscription();
        assert!(!wr.on_frame(br#"{"authenticated":"bench"}"#, |_| {}).unwrap().joined_now);
        assert!(wr.on_frame(br#"{"subscribed":"t0"}"#, |_| {}).unwrap().joined_now);
        assert!(Protocol::Webrocket.subscription().on_frame(br#"{"err":"ACCESS_DENIED"}"#, |_| {}).is_err());

        let mut nats = Protocol::Nats.subscription();
        assert_eq!(nats.on_frame(b"INFO {}\r\n", |_| {}).unwrap(), Reaction::default());
        assert!(nats.on_frame(b"PONG\r\n", |_| {}).unwrap().joined_now);
        let r = nats.on_frame(b"MSG t0 1 5\r\n5:6:x\r\nPING\r\n", |m| got.push(m.to_vec())).unwrap();
        assert!(r.pong && !r.joined_now);
        assert_eq!(
            got,
            [br#"{"topic":"t0","payload":"1:2:x"}"#.to_vec(), b"3:4:x".to_vec(), b"5:6:x".to_vec()]
        );
    }

    #[test]
    fn paths_and_subscribe_frames() {
        assert_eq!(Protocol::Nchan.subscribe_path("/sub/", "t3"), "/sub/t3");
        assert_eq!(Protocol::Roadrunner.subscribe_path("/ws", "t3"), "/ws");
        let mut out = Vec::new();
        Protocol::Nchan.subscribe_frames("t0", &mut out);
        assert!(out.is_empty());
        Protocol::Nats.subscribe_frames("t0", &mut out);
        assert_eq!(out[0], 0x82, "NATS speaks in binary frames");
    }
}
