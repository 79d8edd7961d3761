//! The shard's periodic work: the keepalive (pings, idle timeouts, queue
//! memory given back) and the once-a-second stats fold.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::state::{Shard, CLOSE_LINGER};
use crate::metrics;
use crate::rt;
use crate::session::Tick;
use crate::stats::TopN;

/// Topics looked at per slice of a scan before the shard yields.
const SCAN_SLICE: usize = 4096;

/// Once a second: publishes the shard's measurements; while someone looks
/// (`ShardStats::wanted`), ranks its topics first, a slice per turn.
pub(super) async fn stats_loop(shard: Rc<Shard>) {
    let mut last_scan = Instant::now();
    loop {
        rt::sleep(Duration::from_secs(1)).await;
        if shard.draining.get() {
            return;
        }
        shard.stalls.doing("the stats fold");
        let top_n = shard.config.stats.top_topics;
        let top = if shard.config.stats.enabled && shard.stats.wanted() {
            let seconds = last_scan.elapsed().as_secs_f64();
            last_scan = Instant::now();
            let (mut by_subscribers, mut by_rate) = (TopN::new(top_n), TopN::new(top_n));
            let mut at = Some(0);
            while let Some(from) = at {
                at = shard.subscriptions.borrow_mut().index_mut().scan(
                    from,
                    SCAN_SLICE,
                    seconds,
                    &mut by_subscribers,
                    &mut by_rate,
                );
                if at.is_some() {
                    rt::yield_now().await;
                }
            }
            Some((by_subscribers.into_vec(), by_rate.into_vec()))
        } else {
            None
        };
        let topics = shard.subscriptions.borrow().index().topic_count() as u64;
        shard.stats.fold(&mut shard.recorder.borrow_mut(), topics, top);
    }
}

/// Slices a keepalive round is cut into (one slice per tick).
const KEEPALIVE_SLICES: usize = 10;

/// Pings connections silent for `ping_interval_ms` and closes those silent
/// for `idle_timeout_ms`; gives back queue memory left from bursts. One
/// round per second over the shard's connections, instead of a timer per
/// connection, in `KEEPALIVE_SLICES` slices of the connection slab a tick
/// apart, each connection pinged after its own share of the interval
/// (`session::ping_after_for`): connections that arrived together are not
/// all pinged in one go. 10,000 pings written and 10,000 pongs read at once
/// held a shard's publications back 100-200 ms every ping interval.
pub(super) async fn keepalive_loop(shard: Rc<Shard>) {
    let ping_interval = shard.config.limits.ping_interval_ms;
    let close_after = shard.config.limits.idle_timeout_ms;
    let tick = Duration::from_millis((ping_interval.min(1000) / KEEPALIVE_SLICES as u64).max(1));
    let ping = crate::ws::data_frame(
        tungstenite::protocol::frame::coding::OpCode::Control(
            tungstenite::protocol::frame::coding::Control::Ping,
        ),
        b"",
    );
    let mut slice = 0;
    while !shard.draining.get() {
        rt::sleep(tick).await;
        shard.stalls.doing("the keepalive scan");
        let now = shard.now_ms();
        let unix_now = crate::auth::unix_ms();
        let budget = shard.config.limits.max_backpressure;
        let conns = shard.conns.borrow();
        let per_slice = conns.capacity().div_ceil(KEEPALIVE_SLICES);
        let keys = slice * per_slice..((slice + 1) * per_slice).min(conns.capacity());
        slice = (slice + 1) % KEEPALIVE_SLICES;
        for conn in keys.filter_map(|key| conns.get(key)) {
            let mut st = conn.borrow_mut();
            st.session.queue.release_if_idle();
            let expired =
                st.ident.as_ref().and_then(|i| i.token.expires_at_ms).is_some_and(|at| unix_now >= at);
            if expired && st.session.begin_close(Some(4001), "token expired") {
                metrics::inc(&shard.metrics.token_expired_closes);
                st.wake();
                shard.closing(&mut st, CLOSE_LINGER);
                continue;
            }
            let ping_after = crate::session::ping_after_for(ping_interval, st.owner.id);
            match st.session.tick(now, ping_after, close_after, &ping, budget) {
                Tick::Quiet => {}
                Tick::Pinged => st.wake(),
                Tick::IdleTimeout => {
                    metrics::inc(&shard.metrics.idle_closes);
                    shard.closing(&mut st, CLOSE_LINGER);
                }
                Tick::SlowConsumer => {
                    shard.slow_consumer_closed(&mut st);
                    shard.closing(&mut st, CLOSE_LINGER);
                }
            }
        }
    }
}
