//! A shard's calls to backend hooks: the per-vhost limit on calls in
//! flight, and the close backlog, which keeps close notifications the full
//! hook queue could not take yet (in order) instead of dropping them.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::hooks::{HookOutcome, HookRequest, HookSender};
use crate::metrics::{self, ShardMetrics};
use crate::rt;

/// Close notifications a shard keeps while the hook queue is full; past
/// this they are dropped and counted (a backend down through a mass
/// disconnect of more clients than this).
pub const CLOSE_BACKLOG_MAX: usize = 100_000;
/// Close notifications handed to the hook queue per retry pass.
const CLOSE_RETRY_BATCH: usize = 1024;

pub struct HookCalls {
    sender: HookSender,
    metrics: Arc<ShardMetrics>,
    max_in_flight: usize,
    /// Hook requests outstanding per vhost path.
    in_flight: RefCell<HashMap<Arc<str>, usize>>,
    backlog: Rc<CloseBacklog>,
}

/// Close notifications waiting for room in the hook queue, oldest first;
/// one retry task works through them (`retrying`).
struct CloseBacklog {
    waiting: RefCell<VecDeque<HookRequest>>,
    retrying: Cell<bool>,
    max: usize,
}

/// What became of a close notification.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// In the hook queue.
    Sent,
    /// In the backlog, behind others or because the queue was full.
    Queued,
    /// The backlog was full: dropped and counted.
    Dropped,
}

impl HookCalls {
    pub fn new(
        sender: HookSender,
        metrics: Arc<ShardMetrics>,
        max_in_flight: usize,
        backlog_max: usize,
    ) -> HookCalls {
        let backlog =
            CloseBacklog { waiting: RefCell::default(), retrying: Cell::new(false), max: backlog_max };
        HookCalls { sender, metrics, max_in_flight, in_flight: RefCell::default(), backlog: Rc::new(backlog) }
    }

    /// Runs a backend hook request within the vhost's in-flight limit: one
    /// vhost's hanging backend cannot take the room of another's.
    pub async fn call(&self, request: HookRequest) -> HookOutcome {
        let vhost = request.vhost.clone();
        {
            let mut in_flight = self.in_flight.borrow_mut();
            let n = in_flight.entry(vhost.clone()).or_default();
            if *n >= self.max_in_flight {
                self.sender.metrics().record(request.kind, &HookOutcome::Busy, Duration::ZERO);
                return HookOutcome::Busy;
            }
            *n += 1;
        }
        // Released when the call ends or is abandoned (a handshake that
        // reached its deadline drops this future mid-wait).
        let _slot = HookSlot { in_flight: &self.in_flight, vhost };
        let outcome = self.sender.submit(request).await;
        outcome.unwrap_or(HookOutcome::Unreachable("gateway shutting down".into()))
    }

    /// Sends a close notification, never dropping it for a full hook queue
    /// while the backlog has room: it waits there, in order.
    pub fn notify_closed(&self, request: HookRequest) -> Closed {
        let mut waiting = self.backlog.waiting.borrow_mut();
        let request = if waiting.is_empty() {
            match self.sender.try_submit(request) {
                Ok(_) => return Closed::Sent,
                Err(back) => *back,
            }
        } else {
            request
        };
        if waiting.len() >= self.backlog.max {
            metrics::inc(&self.metrics.close_hooks_dropped);
            return Closed::Dropped;
        }
        waiting.push_back(request);
        metrics::inc(&self.metrics.close_backlog);
        Closed::Queued
    }

    /// The task that works the backlog off, when there is one to start:
    /// the backlog has entries and no task runs yet.
    pub fn retry_needed(&self) -> Option<impl Future<Output = ()> + 'static> {
        if self.backlog.waiting.borrow().is_empty() || self.backlog.retrying.replace(true) {
            return None;
        }
        let (backlog, sender, metrics) = (self.backlog.clone(), self.sender.clone(), self.metrics.clone());
        Some(retry(backlog, sender, metrics))
    }

    /// Close notifications waiting in the backlog.
    pub fn backlog_len(&self) -> usize {
        self.backlog.waiting.borrow().len()
    }

    /// Gives up on the backlog (shutdown deadline): returns how many were
    /// dropped, counted as such.
    pub fn drop_backlog(&self) -> usize {
        let unsent = std::mem::take(&mut *self.backlog.waiting.borrow_mut()).len();
        metrics::add(&self.metrics.close_hooks_dropped, unsent as u64);
        metrics::sub(&self.metrics.close_backlog, unsent as u64);
        unsent
    }
}

impl CloseBacklog {
    /// Hands entries to the hook queue while it takes them (at most a
    /// batch); true if any went.
    fn submit(&self, sender: &HookSender, metrics: &ShardMetrics) -> bool {
        let mut waiting = self.waiting.borrow_mut();
        let mut sent = 0;
        while sent < CLOSE_RETRY_BATCH {
            let Some(request) = waiting.pop_front() else { break };
            if let Err(back) = sender.try_submit(request) {
                waiting.push_front(*back);
                break;
            }
            sent += 1;
        }
        metrics::sub(&metrics.close_backlog, sent as u64);
        sent > 0
    }
}

/// Works through the close backlog: retries as soon as the hook queue took
/// something, backing off (5 ms doubling to 500 ms) while it takes nothing.
async fn retry(backlog: Rc<CloseBacklog>, sender: HookSender, metrics: Arc<ShardMetrics>) {
    let mut delay = Duration::from_millis(5);
    loop {
        rt::sleep(delay).await;
        let progressed = backlog.submit(&sender, &metrics);
        if backlog.waiting.borrow().is_empty() {
            backlog.retrying.set(false);
            return;
        }
        delay =
            if progressed { Duration::from_millis(5) } else { (delay * 2).min(Duration::from_millis(500)) };
    }
}

/// One vhost's hook call counted in the shard's in-flight limit.
struct HookSlot<'a> {
    in_flight: &'a RefCell<HashMap<Arc<str>, usize>>,
    vhost: Arc<str>,
}

impl Drop for HookSlot<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.in_flight.borrow_mut();
        if let Some(n) = in_flight.get_mut(&self.vhost) {
            *n -= 1;
            if *n == 0 {
                in_flight.remove(&self.vhost);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::{self, HookKind, HookMetrics, HookReceiver};
    use std::sync::atomic::Ordering::Relaxed;

    fn close_of(n: u64) -> HookRequest {
        HookRequest {
            kind: HookKind::Close,
            method: hyper::Method::POST,
            url: format!("http://127.0.0.1:9/closed/{n}"),
            headers: Vec::new(),
            body: bytes::Bytes::new(),
            timeout: Duration::from_secs(1),
            retries: 0,
            retry_sent: false,
            max_response: 4096,
            vhost: "/".into(),
            queued_at: std::time::Instant::now(),
            ca_file: None,
        }
    }

    /// Hook queues of `capacity`, a backlog of `backlog_max`.
    fn calls(capacity: usize, backlog_max: usize) -> (HookCalls, HookReceiver, Arc<ShardMetrics>) {
        let (sender, receiver) = hooks::channel(capacity, Arc::new(HookMetrics::default()));
        let metrics = Arc::new(ShardMetrics::default());
        (HookCalls::new(sender, metrics.clone(), 4, backlog_max), receiver, metrics)
    }

    fn taken(receiver: &mut HookReceiver) -> Vec<String> {
        std::iter::from_fn(|| receiver.try_take_close())
            .map(|r| r.url.rsplit('/').next().unwrap().to_string())
            .collect()
    }

    #[test]
    fn a_full_hook_queue_keeps_close_notifications_in_order() {
        let (calls, mut receiver, metrics) = calls(2, 100);
        let outcomes: Vec<Closed> = (1..=5).map(|n| calls.notify_closed(close_of(n))).collect();
        assert_eq!(outcomes, [Closed::Sent, Closed::Sent, Closed::Queued, Closed::Queued, Closed::Queued]);
        assert_eq!(metrics.close_backlog.load(Relaxed), 3);
        assert!(calls.retry_needed().is_some(), "a retry task starts");
        assert!(calls.retry_needed().is_none(), "one at a time");

        assert_eq!(taken(&mut receiver), ["1", "2"]);
        // Room again, but the backlog goes first: a later close does not
        // overtake earlier ones.
        assert_eq!(calls.notify_closed(close_of(6)), Closed::Queued);
        assert!(calls.backlog.submit(&calls.sender, &metrics));
        assert_eq!(taken(&mut receiver), ["3", "4"]);
        assert!(calls.backlog.submit(&calls.sender, &metrics));
        assert_eq!(taken(&mut receiver), ["5", "6"]);
        assert!(!calls.backlog.submit(&calls.sender, &metrics), "nothing left to hand over");
        assert_eq!(calls.backlog_len(), 0);
        assert_eq!(metrics.close_backlog.load(Relaxed), 0);
        assert_eq!(metrics.close_hooks_dropped.load(Relaxed), 0);
    }

    #[test]
    fn past_the_backlog_limit_notifications_are_dropped_and_counted() {
        let (calls, _receiver, metrics) = calls(1, 2);
        let outcomes: Vec<Closed> = (1..=5).map(|n| calls.notify_closed(close_of(n))).collect();
        assert_eq!(
            outcomes,
            [Closed::Sent, Closed::Queued, Closed::Queued, Closed::Dropped, Closed::Dropped]
        );
        assert_eq!(metrics.close_hooks_dropped.load(Relaxed), 2);
        assert_eq!(calls.drop_backlog(), 2, "shutdown gives up on the rest");
        assert_eq!(metrics.close_hooks_dropped.load(Relaxed), 4);
        assert_eq!(metrics.close_backlog.load(Relaxed), 0);
    }
}
