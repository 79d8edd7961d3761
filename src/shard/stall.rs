//! The stall detector (docs/metrics.md, "Stalls"): how long a shard's work
//! waited to run once it could. Two places are watched: the inbox (a
//! publication taken by this node until this shard starts queueing it) and
//! the driver (made runnable by a mark, a ready socket or its own yield
//! until its turn starts). Waits go into the shard's `Recorder` when
//! `stats.enabled` (off: not even the clock is read); one over
//! `stats.stall_log_ms` is logged with what the shard started last.

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::stats::{Recorder, StallSite};

pub struct StallWatch {
    enabled: bool,
    /// Zero: no log line.
    log_over: Duration,
    /// What the shard started last, and when.
    doing: Cell<(&'static str, Option<Instant>)>,
    last_log: Cell<Option<Instant>>,
}

impl StallWatch {
    pub fn new(enabled: bool, log_over: Duration) -> StallWatch {
        StallWatch { enabled, log_over, doing: Cell::new(("nothing yet", None)), last_log: Cell::new(None) }
    }

    #[inline]
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The clock, if waits are recorded.
    #[inline]
    pub fn now(&self) -> Option<Instant> {
        self.enabled.then(Instant::now)
    }

    /// The shard starts `what` (named in a stall's log line).
    #[inline]
    pub fn doing(&self, what: &'static str) {
        if self.enabled && !self.log_over.is_zero() {
            self.doing.set((what, Some(Instant::now())));
        }
    }

    /// Work at `site` could run from `since` (made runnable by `how`) and runs now.
    pub fn waited(
        &self,
        shard: usize,
        recorder: &mut Recorder,
        site: StallSite,
        how: &'static str,
        since: Instant,
    ) {
        if !self.enabled {
            return;
        }
        let waited = since.elapsed();
        recorder.stall(site, waited);
        if self.log_over.is_zero() || waited < self.log_over {
            return;
        }
        let now = Instant::now();
        if self.last_log.get().is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            return;
        }
        self.last_log.set(Some(now));
        let (what, started) = self.doing.get();
        let meanwhile = match started {
            Some(at) if at >= since => {
                format!("the shard started {what} {} ms into the wait", at.duration_since(since).as_millis())
            }
            Some(at) => format!(
                "nothing was started on the shard meanwhile (the last: {what}, {} ms before the wait)",
                since.duration_since(at).as_millis()
            ),
            None => "nothing was started on the shard yet".to_string(),
        };
        tracing::warn!(
            shard,
            site = site.name(),
            how,
            waited_ms = waited.as_millis() as u64,
            "shard stall: work waited {} ms to run; {meanwhile}",
            waited.as_millis()
        );
    }
}
