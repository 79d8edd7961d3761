//! goridge v3 frame codec, free of I/O. Every integer is little-endian.
//!
//! ```text
//! 0      version (high nibble, 1) | header length in 32-bit words (low nibble)
//! 1      flags
//! 2..6   payload length (options not counted)
//! 6..10  CRC32 (IEEE) of bytes 0..6
//! 10     stream flags, 11 reserved
//! 12..   options, u32 each (RPC: SEQ_ID, METHOD_LEN), then the payload
//! ```

pub const CONTROL: u8 = 0x01;
pub const CODEC_RAW: u8 = 0x04;
pub const CODEC_JSON: u8 = 0x08;
pub const CODEC_MSGPACK: u8 = 0x10;
pub const CODEC_GOB: u8 = 0x20;
pub const ERROR: u8 = 0x40;
pub const CODEC_PROTO: u8 = 0x80;

const VERSION: u8 = 1;
/// Fixed part of the header, before options.
pub const BASE_HEADER: usize = 12;

/// A decoded frame; `payload` borrows the input.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub flags: u8,
    pub options: Vec<u32>,
    pub payload: &'a [u8],
}

/// The stream cannot be trusted any more: close the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum FatalError {
    BadVersion(u8),
    BadHeaderLength(u8),
    BadCrc,
    TooLarge { claimed: usize, max: usize },
}

impl std::fmt::Display for FatalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FatalError::BadVersion(v) => write!(f, "unsupported goridge version {v} (expected 1)"),
            FatalError::BadHeaderLength(n) => {
                write!(f, "header length of {n} words is below the minimum of 3")
            }
            FatalError::BadCrc => f.write_str("header CRC mismatch"),
            FatalError::TooLarge { claimed, max } => {
                write!(f, "frame payload of {claimed} bytes exceeds rpc.max_frame_size ({max})")
            }
        }
    }
}

impl std::error::Error for FatalError {}

/// Decodes one frame from the start of `buf`. `Ok(None)`: more bytes needed.
/// Checks the CRC and the claimed length before waiting for the payload, so
/// a bogus header never makes the caller buffer what it claims.
pub fn decode(buf: &[u8], max_payload: usize) -> Result<Option<(Frame<'_>, usize)>, FatalError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let version = buf[0] >> 4;
    if version != VERSION {
        return Err(FatalError::BadVersion(version));
    }
    let words = buf[0] & 0x0f;
    if words < 3 {
        return Err(FatalError::BadHeaderLength(words));
    }
    if buf.len() < 10 {
        return Ok(None);
    }
    let crc = u32::from_le_bytes(buf[6..10].try_into().expect("4 bytes"));
    if crc32fast::hash(&buf[..6]) != crc {
        return Err(FatalError::BadCrc);
    }
    let payload_len = u32::from_le_bytes(buf[2..6].try_into().expect("4 bytes")) as usize;
    if payload_len > max_payload {
        return Err(FatalError::TooLarge { claimed: payload_len, max: max_payload });
    }
    let header_len = words as usize * 4;
    let total = header_len + payload_len;
    if buf.len() < total {
        return Ok(None);
    }
    let options = buf[BASE_HEADER..header_len]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    Ok(Some((Frame { flags: buf[1], options, payload: &buf[header_len..total] }, total)))
}

/// Appends a frame with `options` and a payload made of `parts`.
pub fn encode(out: &mut Vec<u8>, flags: u8, options: &[u32], parts: &[&[u8]]) {
    let payload_len: usize = parts.iter().map(|p| p.len()).sum();
    let words = 3 + options.len() as u8;
    let start = out.len();
    out.push((VERSION << 4) | words);
    out.push(flags);
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    let crc = crc32fast::hash(&out[start..start + 6]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    for o in options {
        out.extend_from_slice(&o.to_le_bytes());
    }
    for p in parts {
        out.extend_from_slice(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
    }

    /// The worked example of docs/protocols.md §3.
    fn example_request() -> Vec<u8> {
        let mut v = hex("15 80 1a 00 00 00 e2 35 9b 6c 00 00 01 00 00 00 11 00 00 00");
        v.extend_from_slice(b"broadcast.Publish");
        v.extend(hex("0a 07 12 01 74 1a 02 68 69"));
        v
    }

    #[test]
    fn decodes_the_worked_example() {
        let req = example_request();
        let (frame, used) = decode(&req, 1 << 20).unwrap().unwrap();
        assert_eq!(used, req.len());
        assert_eq!(frame.flags, CODEC_PROTO);
        assert_eq!(frame.options, [1, 17]);
        assert_eq!(&frame.payload[..17], b"broadcast.Publish");
    }

    #[test]
    fn encodes_the_worked_example_reply() {
        let mut out = Vec::new();
        encode(&mut out, CODEC_PROTO, &[1, 17], &[b"broadcast.Publish", &[0x08, 0x01]]);
        let mut expected = hex("15 80 13 00 00 00 68 7a 93 11 00 00 01 00 00 00 11 00 00 00");
        expected.extend_from_slice(b"broadcast.Publish");
        expected.extend([0x08, 0x01]);
        assert_eq!(out, expected);
        let mut req = Vec::new();
        encode(&mut req, CODEC_PROTO, &[1, 17], &[b"broadcast.Publish", &hex("0a 07 12 01 74 1a 02 68 69")]);
        assert_eq!(req, example_request());
    }

    #[test]
    fn incomplete_input_waits() {
        let req = example_request();
        for cut in 0..req.len() {
            assert_eq!(decode(&req[..cut], 1 << 20), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn fatal_errors() {
        let mut req = example_request();
        req[7] ^= 1;
        assert_eq!(decode(&req, 1 << 20), Err(FatalError::BadCrc));
        assert_eq!(decode(&example_request(), 10), Err(FatalError::TooLarge { claimed: 26, max: 10 }));
        assert_eq!(decode(&[0x25], 100), Err(FatalError::BadVersion(2)));
        assert_eq!(decode(&[0x12], 100), Err(FatalError::BadHeaderLength(2)));
    }
}
