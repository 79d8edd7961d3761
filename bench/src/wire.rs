//! What every scenario's client needs on the wire, without allocation per
//! message: masked client frames, server frame boundaries, and the
//! generator's own CPU time.

/// Appends a masked text frame carrying `payload` (clients must mask).
pub fn masked_text(payload: &[u8], out: &mut Vec<u8>) {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    out.push(0x81);
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
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// (payload start, payload length) of a complete unmasked server frame at
/// the start of `buf`; None until it has fully arrived.
pub fn parse_frame(buf: &[u8]) -> Option<(usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (start, len) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
        127 if buf.len() >= 10 => (10, u64::from_be_bytes(buf[2..10].try_into().ok()?) as usize),
        126 | 127 => return None,
        n => (2, n as usize),
    };
    (buf.len() >= start + len).then_some((start, len))
}

/// This process's user + system CPU seconds (so a reader can tell whether
/// the generator was the bottleneck).
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    Some((fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_the_gateway_decoder() {
        for len in [0usize, 5, 125, 126, 70_000] {
            let payload = vec![b'a'; len];
            let mut frame = Vec::new();
            masked_text(&payload, &mut frame);
            let mut seen = None;
            ringcast::ws::Decoder::new()
                .feed(&mut frame, 1 << 20, &mut |e| {
                    if let ringcast::ws::Event::Text(t) = e {
                        seen = Some(t.len());
                    }
                    ringcast::ws::Flow::Continue
                })
                .unwrap();
            assert_eq!(seen, Some(len));
        }
    }

    #[test]
    fn server_frame_boundaries() {
        let text = ringcast::ws::OpCode::Data(ringcast::ws::Data::Text);
        let frame = ringcast::ws::data_frame(text, &[b'x'; 300]);
        assert_eq!(parse_frame(&frame), Some((4, 300)));
        assert_eq!(parse_frame(&frame[..100]), None);
        assert_eq!(parse_frame(&[0x81, 2, b'h', b'i']), Some((2, 2)));
    }
}
