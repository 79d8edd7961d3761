//! Report math, free of I/O: percentiles, rates, exact loss counting.

use hdrhistogram::Histogram;

/// The percentiles every report prints.
pub const QUANTILES: [(&str, f64); 5] =
    [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999), ("p99.99", 0.9999)];

/// A latency histogram in microseconds, 1 µs to 60 s, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Percentiles and max in milliseconds, in `QUANTILES` order then max.
pub fn percentiles_ms(h: &Histogram<u64>) -> Vec<(&'static str, f64)> {
    let mut out: Vec<(&str, f64)> =
        QUANTILES.iter().map(|(name, q)| (*name, h.value_at_quantile(*q) as f64 / 1000.0)).collect();
    out.push(("max", h.max() as f64 / 1000.0));
    out
}

pub fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        0.0
    } else {
        count as f64 / seconds
    }
}

/// Deliveries expected and seen: every subscriber of a topic should get
/// every message published to it after it joined.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Delivery {
    pub expected: u64,
    pub received: u64,
}

impl Delivery {
    /// `published[t]` messages went to topic `t`, which has `subscribers[t]`.
    pub fn expected_from(published: &[u64], subscribers: &[u64]) -> u64 {
        published.iter().zip(subscribers).map(|(p, s)| p * s).sum()
    }

    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.received)
    }

    /// Deliveries beyond what was published (duplicates, or old messages
    /// replayed to new subscribers): as wrong as losses.
    pub fn extra(&self) -> u64 {
        self.received.saturating_sub(self.expected)
    }

    /// Share delivered, 1.0 when nothing was expected.
    pub fn ratio(&self) -> f64 {
        if self.expected == 0 {
            1.0
        } else {
            self.received as f64 / self.expected as f64
        }
    }
}

/// Writes `h` (microseconds) as a one-interval HdrHistogram log, readable
/// by HdrHistogram's standard tools (values shown in milliseconds).
pub fn write_hlog(
    path: &std::path::Path,
    h: &Histogram<u64>,
    seconds: f64,
    what: &str,
) -> Result<(), String> {
    use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
    use hdrhistogram::serialization::V2Serializer;
    let mut file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut serializer = V2Serializer::new();
    let mut writer = IntervalLogWriterBuilder::new()
        .add_comment(&format!("ringcast-bench: {what} latency in microseconds"))
        .with_max_value_divisor(1000.0)
        .begin_log_with(&mut file, &mut serializer)
        .map_err(|e| e.to_string())?;
    writer
        .write_histogram(h, std::time::Duration::ZERO, std::time::Duration::from_secs_f64(seconds), None)
        .map_err(|e| format!("{}: {e:?}", path.display()))
}

/// Parses the publisher's `<seq>:<nanos>:` stamp: at the start of a raw
/// delivery (nchan, NATS), or after `"payload":"` in a roadrunner frame.
pub fn parse_stamp(frame_payload: &[u8]) -> Option<(u64, u64)> {
    // roadrunner `"payload":"…"`, webrocket `"data":"…"`, else raw.
    const KEYS: [&[u8]; 2] = [b"\"payload\":\"", b"\"data\":\""];
    let start = if frame_payload.first().is_some_and(u8::is_ascii_digit) {
        0
    } else {
        KEYS.iter().find_map(|k| Some(frame_payload.windows(k.len()).position(|w| w == *k)? + k.len()))?
    };
    let mut fields = frame_payload[start..].splitn(3, |b| *b == b':');
    let num = |f: &[u8]| std::str::from_utf8(f).ok()?.parse::<u64>().ok();
    Some((num(fields.next()?)?, num(fields.next()?)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = latency_histogram();
        for us in 1..=10_000u64 {
            h.record(us).unwrap();
        }
        let p: std::collections::HashMap<_, _> = percentiles_ms(&h).into_iter().collect();
        assert!((p["p50"] - 5.0).abs() < 0.01, "{p:?}");
        assert!((p["p99"] - 9.9).abs() < 0.01, "{p:?}");
        assert!((p["max"] - 10.0).abs() < 0.01, "{p:?}");
    }

    #[test]
    fn rates() {
        assert_eq!(per_second(500, 2.0), 250.0);
        assert_eq!(per_second(5, 0.0), 0.0);
    }

    #[test]
    fn losses_are_exact() {
        let expected = Delivery::expected_from(&[10, 20], &[3, 0]);
        assert_eq!(expected, 30);
        let d = Delivery { expected, received: 27 };
        assert_eq!(d.lost(), 3);
        assert!((d.ratio() - 0.9).abs() < 1e-9);
        assert_eq!(Delivery { expected: 0, received: 0 }.ratio(), 1.0);
        assert_eq!(Delivery { expected: 1, received: 2 }.lost(), 0);
        assert_eq!(Delivery { expected: 1, received: 2 }.extra(), 1);
        assert_eq!(d.extra(), 0);
    }

    #[test]
    fn stamps() {
        assert_eq!(parse_stamp(br#"{"topic":"t0","payload":"42:123456:xxxx"}"#), Some((42, 123456)));
        assert_eq!(parse_stamp(br#"{"topic":"t0","payload":"oops"}"#), None);
        assert_eq!(parse_stamp(b"garbage"), None);
        assert_eq!(parse_stamp(b"7:99:xxxx"), Some((7, 99)));
        assert_eq!(parse_stamp(b"7:"), None);
    }
}
