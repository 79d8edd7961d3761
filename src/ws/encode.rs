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
    fn close_reason_is_cut_on_a_char_boundary() {
        let reason = "é".repeat(100);
        let f = close_frame(1001, &reason);
        assert!(f.len() <= 2 + 125);
        assert_eq!(&f[2..4], &1001u16.to_be_bytes());
        assert!(std::str::from_utf8(&f[4..]).is_ok());
    }
}
