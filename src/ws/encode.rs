//! Server-to-client frame encoding. Server frames are unmasked, so one encoded
//! frame (header and payload in one `Bytes`) can be shared by any number of sockets.

use bytes::Bytes;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Longest unmasked frame header: 2 bytes + 8 bytes of extended length.
const MAX_HEADER: usize = 10;

fn header(opcode: OpCode, len: usize, out: &mut Vec<u8>) {
    let header = FrameHeader { is_final: true, rsv1: false, rsv2: false, rsv3: false, opcode, mask: None };
    header.format(len as u64, out).expect("writing a frame header to a Vec cannot fail");
}

/// One complete frame carrying `payload`.
pub fn data_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(MAX_HEADER + payload.len());
    header(opcode, payload.len(), &mut out);
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// Why bytes are not one complete data frame as `data_frame` makes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotADataFrame(pub &'static str);

/// Checks that `frame` is exactly one complete, final, unmasked text or
/// binary frame with the shortest length encoding and (text) UTF-8 payload:
/// what `data_frame` makes. Frames from outside the process (another node,
/// through the broker) pass this before they reach a socket, so they cannot
/// splice a Close, a ping or half a frame into a client's stream.
pub fn check_data_frame(frame: &[u8]) -> Result<(), NotADataFrame> {
    let (&b0, rest) = frame.split_first().ok_or(NotADataFrame("empty"))?;
    let &b1 = rest.first().ok_or(NotADataFrame("no length"))?;
    if b0 & 0x80 == 0 {
        return Err(NotADataFrame("not final"));
    }
    if b0 & 0x70 != 0 {
        return Err(NotADataFrame("reserved bits set"));
    }
    let text = match b0 & 0x0f {
        1 => true,
        2 => false,
        _ => return Err(NotADataFrame("not a text or binary frame")),
    };
    if b1 & 0x80 != 0 {
        return Err(NotADataFrame("masked"));
    }
    let (len, head) = match b1 & 0x7f {
        126 => {
            let b = frame.get(2..4).ok_or(NotADataFrame("truncated length"))?;
            (u16::from_be_bytes([b[0], b[1]]) as u64, 4)
        }
        127 => {
            let b = frame.get(2..10).ok_or(NotADataFrame("truncated length"))?;
            (u64::from_be_bytes(b.try_into().expect("8 bytes")), 10)
        }
        n => (n as u64, 2),
    };
    let shortest = match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    };
    if head != shortest {
        return Err(NotADataFrame("length not in its shortest form"));
    }
    if len != (frame.len() - head) as u64 {
        return Err(NotADataFrame("length does not match the bytes"));
    }
    if text && std::str::from_utf8(&frame[head..]).is_err() {
        return Err(NotADataFrame("text that is not UTF-8"));
    }
    Ok(())
}

/// A Close frame; `reason` is cut to fit the 125-byte control frame limit.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    data_frame(OpCode::Control(Control::Close), &payload)
}

/// Builds a frame whose payload is written in place (e.g. serialized JSON),
/// without knowing its length up front and without copying it afterwards:
/// room for the longest header is reserved, and the finished frame is a
/// slice that starts where the real header does.
pub struct FrameBuilder {
    buf: Vec<u8>,
}

impl FrameBuilder {
    pub fn with_capacity(payload_capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(MAX_HEADER + payload_capacity);
        buf.resize(MAX_HEADER, 0);
        FrameBuilder { buf }
    }

    /// The payload being written.
    pub fn payload(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    pub fn finish_text(self) -> Bytes {
        self.finish(OpCode::Data(Data::Text))
    }

    pub fn finish(mut self, opcode: OpCode) -> Bytes {
        let len = self.buf.len() - MAX_HEADER;
        let mut head = Vec::with_capacity(MAX_HEADER);
        header(opcode, len, &mut head);
        let start = MAX_HEADER - head.len();
        self.buf[start..MAX_HEADER].copy_from_slice(&head);
        Bytes::from(self.buf).slice(start..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_frame() {
        let f = data_frame(OpCode::Data(Data::Text), b"hi");
        assert_eq!(&f[..], &[0x81, 2, b'h', b'i']);
    }

    #[test]
    fn builder_matches_direct_encoding_at_every_length_class() {
        for len in [0usize, 125, 126, 65535, 65536, 70000] {
            let payload = vec![b'x'; len];
            let mut b = FrameBuilder::with_capacity(len);
            b.payload().extend_from_slice(&payload);
            assert_eq!(b.finish_text(), data_frame(OpCode::Data(Data::Text), &payload), "len {len}");
        }
    }

    #[test]
    fn only_complete_data_frames_pass_the_check() {
        for len in [0usize, 125, 126, 65535, 65536] {
            check_data_frame(&data_frame(OpCode::Data(Data::Text), &vec![b'x'; len])).unwrap();
            check_data_frame(&data_frame(OpCode::Data(Data::Binary), &vec![0xff; len])).unwrap();
        }
        let text = data_frame(OpCode::Data(Data::Text), b"hello");
        let refused = |bytes: &[u8]| check_data_frame(bytes).unwrap_err().0;
        assert_eq!(refused(&close_frame(1008, "injected")), "not a text or binary frame");
        assert_eq!(refused(&text[..4]), "length does not match the bytes");
        let mut two = text.to_vec();
        two.extend_from_slice(&close_frame(1000, ""));
        assert_eq!(refused(&two), "length does not match the bytes");
        assert_eq!(refused(&[0x01, 0x00]), "not final");
        assert_eq!(refused(&[0xc1, 0x00]), "reserved bits set");
        assert_eq!(refused(&[0x81, 0x80, 0, 0, 0, 0]), "masked");
        assert_eq!(refused(&[0x81, 126, 0, 1, b'x']), "length not in its shortest form");
        assert_eq!(refused(&[0x81, 2, 0xc3, 0x28]), "text that is not UTF-8");
        assert_eq!(refused(&[]), "empty");
        assert_eq!(refused(&[0x82, 127, 0xff]), "truncated length");
    }

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let reason = "é".repeat(100);
        let f = close_frame(1001, &reason);
        assert!(f.len() <= 2 + 125);
        assert_eq!(&f[2..4], &1001u16.to_be_bytes());
        assert!(std::str::from_utf8(&f[4..]).is_ok());
    }
}
