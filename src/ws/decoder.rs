//! Client frame decoder: bytes in, events out (RFC 6455 §5, docs/protocols.md §1).
//!
//! Complete frames are unmasked and handed out in place from the caller's
//! buffer; only an incomplete frame's bytes and a fragmented message are kept
//! per connection. Once used, a buffer of up to 4 KiB is kept for reuse
//! (an idle connection may hold that much) and a larger one is freed.

use std::io::Cursor;

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// A complete message or control frame from the client.
#[derive(Debug)]
pub enum Event<'a> {
    /// A complete text message; its bytes are valid UTF-8.
    Text(&'a mut [u8]),
    Binary(&'a mut [u8]),
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// The client's Close: its status code (if any) and reason.
    Close(Option<u16>, &'a str),
}

/// What the event handler wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Stop decoding for now and keep the rest; `feed(&mut [])` resumes.
    Pause,
    /// Stop decoding; the connection is closing.
    Stop,
}

/// A protocol violation: the connection must be closed with this code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

const PROTOCOL_ERROR: u16 = 1002;
const INVALID_DATA: u16 = 1007;
const TOO_BIG: u16 = 1009;

fn violation(code: u16, reason: &'static str) -> Violation {
    Violation { code, reason }
}

/// Buffers larger than this are freed, not kept, once their message is done.
const KEEP_CAPACITY: usize = 4096;

/// Makes room for `extra` more bytes of an incomplete frame of `frame_size`
/// bytes (0: header not complete yet). Grows with what arrives, doubling up
/// to the frame size, never to the size a header merely claims: a peer that
/// sends headers only must not make the gateway commit memory for them.
fn grow(buf: &mut Vec<u8>, extra: usize, frame_size: usize) {
    let needed = buf.len() + extra;
    if needed > buf.capacity() {
        let target = needed.max((buf.capacity() * 2).min(frame_size));
        buf.reserve_exact(target - buf.len());
    }
}

#[derive(Debug, Default)]
pub struct Decoder {
    /// Bytes of a frame that has not fully arrived.
    partial: Vec<u8>,
    /// Payload of a fragmented message so far.
    message: Vec<u8>,
    /// Set while a fragmented message is in progress.
    message_is_text: Option<bool>,
    /// Prefix of `message` already known to be valid UTF-8.
    utf8_valid: usize,
    /// Full size of the incomplete frame in `partial`, once its header is known.
    frame_size: usize,
    stopped: bool,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held for incomplete input (for memory accounting and tests).
    pub fn buffered(&self) -> usize {
        self.partial.len() + self.message.len()
    }

    /// Holds nothing, not even spare buffers: a new decoder would do the
    /// same (an idle connection keeps none).
    pub fn is_blank(&self) -> bool {
        self.partial.capacity() == 0
            && self.message.capacity() == 0
            && self.message_is_text.is_none()
            && self.utf8_valid == 0
            && self.frame_size == 0
            && !self.stopped
    }

    /// Decodes every complete frame in `input` (which may be modified: frames
    /// are unmasked in place) and keeps the rest for the next call.
    pub fn feed(
        &mut self,
        input: &mut [u8],
        max_message_size: usize,
        on_event: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<Flow, Violation> {
        if self.stopped {
            return Ok(Flow::Stop);
        }
        if self.partial.is_empty() {
            let (used, flow) = self.decode(input, max_message_size, on_event)?;
            if flow != Flow::Stop && used < input.len() {
                grow(&mut self.partial, input.len() - used, self.frame_size);
                self.partial.extend_from_slice(&input[used..]);
            }
            return Ok(flow);
        }
        let mut partial = std::mem::take(&mut self.partial);
        grow(&mut partial, input.len(), self.frame_size);
        partial.extend_from_slice(input);
        let result = self.decode(&mut partial, max_message_size, on_event);
        if let Ok((used, Flow::Continue | Flow::Pause)) = result {
            if used == partial.len() {
                if partial.capacity() <= KEEP_CAPACITY {
                    partial.clear();
                    self.partial = partial;
                }
            } else {
                partial.drain(..used);
                self.partial = partial;
            }
        }
        result.map(|(_, flow)| flow)
    }

    /// Returns how many bytes of `buf` were consumed.
    fn decode(
        &mut self,
        buf: &mut [u8],
        max_message_size: usize,
        on_event: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<(usize, Flow), Violation> {
        let mut pos = 0;
        self.frame_size = 0;
        loop {
            let mut cursor = Cursor::new(&buf[pos..]);
            let (header, len) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return Ok((pos, Flow::Continue)),
                Err(_) => return Err(self.stop(violation(PROTOCOL_ERROR, "malformed frame header"))),
            };
            let header_len = cursor.position() as usize;
            self.check_header(&header, len, max_message_size)?;
            let len = len as usize;
            let start = pos + header_len;
            if buf.len() - start < len {
                self.frame_size = header_len + len;
                return Ok((pos, Flow::Continue));
            }
            let payload = &mut buf[start..start + len];
            if let Some(mask) = header.mask {
                unmask(payload, mask);
            }
            pos = start + len;
            match self.frame(header.opcode, header.is_final, payload, max_message_size, on_event)? {
                Flow::Continue => {}
                Flow::Pause => return Ok((pos, Flow::Pause)),
                Flow::Stop => {
                    self.stopped = true;
                    return Ok((pos, Flow::Stop));
                }
            }
        }
    }

    fn stop(&mut self, v: Violation) -> Violation {
        self.stopped = true;
        self.partial = Vec::new();
        self.message = Vec::new();
        v
    }

    fn check_header(&mut self, h: &FrameHeader, len: u64, max: usize) -> Result<(), Violation> {
        if h.rsv1 || h.rsv2 || h.rsv3 {
            return Err(self.stop(violation(PROTOCOL_ERROR, "reserved bits set without an extension")));
        }
        if h.mask.is_none() {
            return Err(self.stop(violation(PROTOCOL_ERROR, "client frames must be masked")));
        }
        match h.opcode {
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                Err(self.stop(violation(PROTOCOL_ERROR, "reserved opcode")))
            }
            OpCode::Control(_) if !h.is_final => {
                Err(self.stop(violation(PROTOCOL_ERROR, "fragmented control frame")))
            }
            OpCode::Control(_) if len > 125 => {
                Err(self.stop(violation(PROTOCOL_ERROR, "control frame over 125 bytes")))
            }
            OpCode::Data(_) if len.saturating_add(self.message.len() as u64) > max as u64 => {
                Err(self.stop(violation(TOO_BIG, "message too big")))
            }
            _ => Ok(()),
        }
    }

    fn frame(
        &mut self,
        opcode: OpCode,
        fin: bool,
        payload: &mut [u8],
        max: usize,
        on_event: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<Flow, Violation> {
        match opcode {
            OpCode::Data(Data::Continue) => {
                let Some(is_text) = self.message_is_text else {
                    return Err(self.stop(violation(PROTOCOL_ERROR, "continuation without a message")));
                };
                if self.message.len() + payload.len() > max {
                    return Err(self.stop(violation(TOO_BIG, "message too big")));
                }
                self.message.extend_from_slice(payload);
                if is_text {
                    self.check_utf8(fin)?;
                }
                if !fin {
                    return Ok(Flow::Continue);
                }
                self.message_is_text = None;
                self.utf8_valid = 0;
                let mut message = std::mem::take(&mut self.message);
                let flow = if is_text {
                    on_event(Event::Text(&mut message))
                } else {
                    on_event(Event::Binary(&mut message))
                };
                if message.capacity() <= KEEP_CAPACITY {
                    message.clear();
                    self.message = message;
                }
                Ok(flow)
            }
            OpCode::Data(data) => {
                if self.message_is_text.is_some() {
                    return Err(self.stop(violation(PROTOCOL_ERROR, "new message inside a fragmented one")));
                }
                let is_text = data == Data::Text;
                if fin {
                    if is_text && std::str::from_utf8(payload).is_err() {
                        return Err(self.stop(violation(INVALID_DATA, "invalid UTF-8 in text message")));
                    }
                    return Ok(if is_text {
                        on_event(Event::Text(payload))
                    } else {
                        on_event(Event::Binary(payload))
                    });
                }
                self.message_is_text = Some(is_text);
                self.message.extend_from_slice(payload);
                if is_text {
                    self.check_utf8(false)?;
                }
                Ok(Flow::Continue)
            }
            OpCode::Control(Control::Ping) => Ok(on_event(Event::Ping(payload))),
            OpCode::Control(Control::Pong) => Ok(on_event(Event::Pong(payload))),
            OpCode::Control(Control::Close) => {
                let (code, reason) = parse_close(payload).map_err(|v| self.stop(v))?;
                on_event(Event::Close(code, reason));
                Ok(Flow::Stop)
            }
            OpCode::Control(Control::Reserved(_)) => unreachable!("rejected in check_header"),
        }
    }

    /// Validates the new part of a fragmented text message, failing as soon as
    /// a byte sequence can no longer become valid UTF-8.
    fn check_utf8(&mut self, fin: bool) -> Result<(), Violation> {
        match std::str::from_utf8(&self.message[self.utf8_valid..]) {
            Ok(_) => self.utf8_valid = self.message.len(),
            Err(e) if e.error_len().is_none() && !fin => self.utf8_valid += e.valid_up_to(),
            Err(_) => return Err(self.stop(violation(INVALID_DATA, "invalid UTF-8 in text message"))),
        }
        Ok(())
    }
}

fn parse_close(payload: &[u8]) -> Result<(Option<u16>, &str), Violation> {
    match payload.len() {
        0 => Ok((None, "")),
        1 => Err(violation(PROTOCOL_ERROR, "close frame with a 1-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !close_code_allowed(code) {
                return Err(violation(PROTOCOL_ERROR, "invalid close code"));
            }
            let reason = std::str::from_utf8(&payload[2..])
                .map_err(|_| violation(INVALID_DATA, "invalid UTF-8 in close reason"))?;
            Ok((Some(code), reason))
        }
    }
}

/// Close codes a peer may send (RFC 6455 §7.4 and the IANA registry).
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// XORs the payload with the frame mask, eight bytes at a time.
pub fn unmask(buf: &mut [u8], mask: [u8; 4]) {
    let mask8 = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let v = u64::from_ne_bytes(chunk.try_into().expect("chunk of 8")) ^ mask8;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes a masked client frame.
    pub(crate) fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[derive(Debug, PartialEq)]
    enum Seen {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<u16>, String),
    }

    fn run(dec: &mut Decoder, mut input: Vec<u8>, max: usize) -> (Result<Flow, Violation>, Vec<Seen>) {
        let mut seen = Vec::new();
        let r = dec.feed(&mut input, max, &mut |e| {
            seen.push(match e {
                Event::Text(t) => Seen::Text(String::from_utf8(t.to_vec()).unwrap()),
                Event::Binary(b) => Seen::Binary(b.to_vec()),
                Event::Ping(p) => Seen::Ping(p.to_vec()),
                Event::Pong(p) => Seen::Pong(p.to_vec()),
                Event::Close(c, r) => Seen::Close(c, r.to_string()),
            });
            Flow::Continue
        });
        (r, seen)
    }

    #[test]
    fn unmask_matches_bytewise_xor_at_all_lengths() {
        let mask = [1, 2, 3, 4];
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).collect();
            let mut fast = data.clone();
            unmask(&mut fast, mask);
            let slow: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            assert_eq!(fast, slow);
        }
    }

    #[test]
    fn decodes_text_split_across_reads_byte_by_byte() {
        let frame = client_frame(0x81, b"hello world, this is a longer text");
        let mut dec = Decoder::new();
        let mut seen = Vec::new();
        for b in frame {
            let (r, s) = run(&mut dec, vec![b], 1024);
            assert_eq!(r, Ok(Flow::Continue));
            seen.extend(s);
        }
        assert_eq!(seen, vec![Seen::Text("hello world, this is a longer text".into())]);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn reassembles_fragments_with_interleaved_ping() {
        let mut input = client_frame(0x01, b"hel");
        input.extend(client_frame(0x89, b"p"));
        input.extend(client_frame(0x80, b"lo"));
        let (r, seen) = run(&mut Decoder::new(), input, 1024);
        assert_eq!(r, Ok(Flow::Continue));
        assert_eq!(seen, vec![Seen::Ping(b"p".to_vec()), Seen::Text("hello".into())]);
    }

    #[test]
    fn unmasked_frame_is_a_protocol_error() {
        let (r, _) = run(&mut Decoder::new(), vec![0x81, 0x01, b'x'], 1024);
        assert_eq!(r.unwrap_err().code, 1002);
    }

    #[test]
    fn invalid_utf8_is_1007_even_split_in_fragments() {
        let (r, _) = run(&mut Decoder::new(), client_frame(0x81, &[0xff]), 1024);
        assert_eq!(r.unwrap_err().code, 1007);
        // A code point split across fragments is fine...
        let mut ok = client_frame(0x01, &[0xc3]);
        ok.extend(client_frame(0x80, &[0xa9]));
        let (r, seen) = run(&mut Decoder::new(), ok, 1024);
        assert_eq!(r, Ok(Flow::Continue));
        assert_eq!(seen, vec![Seen::Text("é".into())]);
        // ...but an impossible sequence fails on the first fragment.
        let (r, _) = run(&mut Decoder::new(), client_frame(0x01, &[b'a', 0xff]), 1024);
        assert_eq!(r.unwrap_err().code, 1007);
        // And a truncated sequence fails at the final fragment.
        let mut cut = client_frame(0x01, &[0xc3]);
        cut.extend(client_frame(0x80, b""));
        let (r, _) = run(&mut Decoder::new(), cut, 1024);
        assert_eq!(r.unwrap_err().code, 1007);
    }

    #[test]
    fn over_max_message_size_is_1009_before_buffering() {
        let mut dec = Decoder::new();
        // Only the header of a 1 MiB frame arrives.
        let frame = client_frame(0x82, &vec![0; 1 << 20]);
        let (r, _) = run(&mut dec, frame[..14].to_vec(), 1000);
        assert_eq!(r.unwrap_err().code, 1009);
        assert_eq!(dec.buffered(), 0);
        // Fragments adding up past the limit too.
        let mut input = client_frame(0x02, &[0; 600]);
        input.extend(client_frame(0x80, &[0; 600]));
        let (r, _) = run(&mut Decoder::new(), input, 1000);
        assert_eq!(r.unwrap_err().code, 1009);
    }

    #[test]
    fn control_frame_rules() {
        let (r, _) = run(&mut Decoder::new(), client_frame(0x09, b"x"), 1024);
        assert_eq!(r.unwrap_err().code, 1002, "fragmented ping");
        let (r, _) = run(&mut Decoder::new(), client_frame(0x89, &[0; 126]), 1024);
        assert_eq!(r.unwrap_err().code, 1002, "ping over 125 bytes");
        let (r, _) = run(&mut Decoder::new(), client_frame(0x83, b""), 1024);
        assert_eq!(r.unwrap_err().code, 1002, "reserved opcode");
        let (r, _) = run(&mut Decoder::new(), client_frame(0xc1, b"x"), 1024);
        assert_eq!(r.unwrap_err().code, 1002, "rsv1 without extension");
        let (r, _) = run(&mut Decoder::new(), client_frame(0x80, b"x"), 1024);
        assert_eq!(r.unwrap_err().code, 1002, "continuation without start");
        let mut two = client_frame(0x01, b"a");
        two.extend(client_frame(0x81, b"b"));
        let (r, _) = run(&mut Decoder::new(), two, 1024);
        assert_eq!(r.unwrap_err().code, 1002, "new message inside fragmented one");
    }

    #[test]
    fn close_frames() {
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        let mut input = client_frame(0x88, &payload);
        input.extend(client_frame(0x81, b"after close"));
        let (r, seen) = run(&mut Decoder::new(), input, 1024);
        assert_eq!(r, Ok(Flow::Stop));
        assert_eq!(seen, vec![Seen::Close(Some(1000), "bye".into())], "nothing after close");

        let (r, seen) = run(&mut Decoder::new(), client_frame(0x88, b""), 1024);
        assert_eq!((r, seen), (Ok(Flow::Stop), vec![Seen::Close(None, String::new())]));
        let (r, _) = run(&mut Decoder::new(), client_frame(0x88, &[3]), 1024);
        assert_eq!(r.unwrap_err().code, 1002);
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            let (r, _) = run(&mut Decoder::new(), client_frame(0x88, &bad.to_be_bytes()), 1024);
            assert_eq!(r.unwrap_err().code, 1002, "code {bad}");
        }
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.push(0xff);
        let (r, _) = run(&mut Decoder::new(), client_frame(0x88, &bad_reason), 1024);
        assert_eq!(r.unwrap_err().code, 1007);
    }

    #[test]
    fn binary_and_pong_and_large_lengths() {
        let big = vec![7u8; 70_000];
        let mut input = client_frame(0x82, &big);
        input.extend(client_frame(0x8a, b"pp"));
        let (r, seen) = run(&mut Decoder::new(), input, 100_000);
        assert_eq!(r, Ok(Flow::Continue));
        assert_eq!(seen, vec![Seen::Binary(big), Seen::Pong(b"pp".to_vec())]);
    }

    #[test]
    fn pause_keeps_the_rest_for_resume() {
        let mut input = client_frame(0x81, b"one");
        input.extend(client_frame(0x81, b"two"));
        input.extend(client_frame(0x81, b"thr"));
        let mut dec = Decoder::new();
        let mut seen = Vec::new();
        let mut pause = |e: Event<'_>| {
            if let Event::Text(t) = e {
                seen.push(String::from_utf8(t.to_vec()).unwrap());
            }
            Flow::Pause
        };
        assert_eq!(dec.feed(&mut input, 1024, &mut pause), Ok(Flow::Pause));
        assert_eq!(dec.feed(&mut [], 1024, &mut pause), Ok(Flow::Pause));
        assert_eq!(dec.feed(&mut [], 1024, &mut pause), Ok(Flow::Pause));
        assert_eq!(dec.feed(&mut [], 1024, &mut pause), Ok(Flow::Continue));
        assert_eq!(seen, ["one", "two", "thr"]);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn idle_decoder_keeps_no_large_buffers() {
        let mut dec = Decoder::new();
        let frame = client_frame(0x82, &vec![1u8; 50_000]);
        let (a, b) = frame.split_at(100);
        assert_eq!(run(&mut dec, a.to_vec(), 100_000).0, Ok(Flow::Continue));
        let (r, seen) = run(&mut dec, b.to_vec(), 100_000);
        assert_eq!((r, seen.len()), (Ok(Flow::Continue), 1));
        assert_eq!(dec.partial.capacity(), 0);
        assert_eq!(dec.message.capacity(), 0);
    }

    #[test]
    fn a_header_alone_reserves_only_what_arrived() {
        let frame = client_frame(0x82, &vec![7u8; 1_000_000]);
        let mut dec = Decoder::new();
        assert_eq!(run(&mut dec, frame[..20].to_vec(), 2_000_000).0, Ok(Flow::Continue));
        assert!(dec.partial.capacity() < 64, "capacity {}", dec.partial.capacity());
        // Growth follows the bytes, doubling but never past the frame.
        let mut fed = 20;
        while fed < frame.len() - 65_536 {
            assert_eq!(run(&mut dec, frame[fed..fed + 65_536].to_vec(), 2_000_000).0, Ok(Flow::Continue));
            fed += 65_536;
            assert!(dec.partial.capacity() <= frame.len());
            assert!(dec.partial.capacity() < 2 * fed + 64, "{} for {fed}", dec.partial.capacity());
        }
        let (r, seen) = run(&mut dec, frame[fed..].to_vec(), 2_000_000);
        assert_eq!((r, seen.len()), (Ok(Flow::Continue), 1));
    }
}
