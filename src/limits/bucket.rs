//! A token bucket in 8 bytes: `limits.messages_per_s` with
//! `limits.messages_burst`, one per connection.

/// The refill rate and the bucket's size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_s: f32,
    pub burst: f32,
}

impl Rate {
    /// None when `per_s` is 0 (no limit); a burst of 0 is one second's worth.
    pub fn new(per_s: u32, burst: u32) -> Option<Rate> {
        let burst = if burst == 0 { per_s } else { burst };
        (per_s > 0).then_some(Rate { per_s: per_s as f32, burst: burst as f32 })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Bucket {
    /// Tokens spent below a full bucket (0: full), so a new bucket is full.
    spent: f32,
    /// When `spent` was last brought up to date (ms, wrapping).
    at_ms: u32,
}

impl Bucket {
    /// Takes one token at `now_ms`; false if the bucket is empty.
    pub fn take(&mut self, rate: Rate, now_ms: u64) -> bool {
        let now = now_ms as u32;
        let elapsed = now.wrapping_sub(self.at_ms) as f32 / 1000.0;
        self.at_ms = now;
        self.spent = (self.spent - elapsed * rate.per_s).max(0.0);
        if self.spent + 1.0 > rate.burst {
            return false;
        }
        self.spent += 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let rate = Rate::new(10, 5).unwrap();
        let mut b = Bucket::default();
        let t0 = 1_000_000;
        assert!((0..5).all(|_| b.take(rate, t0)), "a full bucket gives the burst");
        assert!(!b.take(rate, t0), "then it is empty");
        assert!(!b.take(rate, t0 + 50), "half a token after 50 ms");
        assert!(b.take(rate, t0 + 100), "one token per 100 ms");
        assert!(!b.take(rate, t0 + 100));
        assert!((0..5).all(|_| b.take(rate, t0 + 10_000)), "refills to the burst, not past it");
        assert!(!b.take(rate, t0 + 10_000));
        assert_eq!(Rate::new(0, 5), None);
        assert_eq!(Rate::new(3, 0).unwrap().burst, 3.0);
        assert_eq!(std::mem::size_of::<Bucket>(), 8);
    }
}
