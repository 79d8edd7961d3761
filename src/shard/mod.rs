//! A shard: one executor pinned to one core, owning a disjoint set of
//! connections, its own topic index and its own scratch buffers. Nothing here
//! is shared with other threads except the inbox and relaxed counters.
//!
//! This file starts a shard and runs its inbox and accept loops; the
//! files below it, each with one job, import only files further down:
//! handshake → wire, driver → effects → webrocket, delivery, timers → state →
//! conn, subscriptions, hook_calls, work, topics, ring, stall.

pub mod conn;
mod delivery;
mod driver;
mod effects;
mod handshake;
mod hook_calls;
pub mod ring;
mod stall;
mod state;
mod subscriptions;
mod timers;
mod tls_io;
pub mod topics;
mod webrocket;
mod wire;
mod work;

use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::bus::{Inbox, ShardMsg};
use crate::metrics;
use crate::rt;
use crate::stats::StallSite;
use state::Shard;
pub use state::ShardSetup;

/// The longest the inbox loop works before it lets the driver
/// write what it queued (and accepts, timers, hooks run).
const TURN_MAX: Duration = Duration::from_millis(50);

/// The shard's own io_uring, made on the shard's thread before it reports
/// ready, so a kernel without what it needs stops the start with the reason.
pub fn ring() -> std::io::Result<ring::Ring> {
    ring::Ring::new(RING_ENTRIES)
}

/// Runs a shard until it has drained after a shutdown message.
pub async fn run(setup: ShardSetup, ring: ring::Ring) {
    let (shard, inbox, listener) = Shard::new(setup, ring);
    let listener = rt::adopt_listener(listener);
    let driver = rt::spawn_joinable(driver::run(shard.clone()));
    rt::spawn(accept_loop(shard.clone(), listener));
    rt::spawn(timers::keepalive_loop(shard.clone()));
    rt::spawn(timers::stats_loop(shard.clone()));
    // The inbox has a task queue of its own, turned to within a millisecond
    // of a message arriving even while the driver is writing: a
    // publication that arrives mid-sweep is queued to the connections the
    // sweep has not reached yet, and they write it with what they had, so
    // it waits about one sweep, not the rest of this one plus its own.
    let inbox = rt::run_prompt(inbox_loop(shard.clone(), inbox), INBOX_LATENCY, "inbox").await;
    // Publishers see the shard as gone from now on instead of waiting on it.
    drop(inbox);
    shard.drain().await;
    shard.driver_stopping.set(true);
    shard.ring.borrow_mut().nudge();
    driver.await;
}

/// Operations per submission of a shard's ring (polls armed per turn before
/// it submits early).
const RING_ENTRIES: u32 = 4096;

/// How soon the inbox's task queue runs once a message waits.
const INBOX_LATENCY: Duration = Duration::from_millis(1);

/// Takes the shard's messages until shutdown; hands the inbox back.
async fn inbox_loop(shard: Rc<Shard>, inbox: Inbox) -> Inbox {
    use crate::panics::{contain, Where::Inbox};
    // An inbox that stays full must not keep the connections from writing
    // (their queues would fill and they would be closed as slow consumers)
    // while the publisher is the one to slow down. So a turn of inbox work
    // ends once it may have queued a quarter of the send budget to one
    // connection, or after TURN_MAX; then it waits until every connection
    // pass has written what it was given, not merely for its own queue's
    // next turn, which comes within INBOX_LATENCY.
    // Short of that it takes everything waiting: a backlog split over
    // several sweeps would cost a sendmsg per connection per sweep (a 5 ms
    // turn made p99 swing to 744 ms at 630,000 deliveries/s).
    let budget_share = (shard.config.limits.max_backpressure / 4).max(1);
    let mut turn = Instant::now();
    let mut turn_bytes = 0;
    loop {
        let mut waited = false;
        let msg = poll_fn(|cx| {
            let r = inbox.poll_recv(cx);
            waited |= r.is_pending();
            r
        })
        .await;
        if waited {
            (turn, turn_bytes) = (Instant::now(), 0);
        }
        match msg {
            Some(ShardMsg::Deliver(batch)) => {
                shard.stalls.doing("the inbox's deliveries");
                for d in batch.iter() {
                    if shard.stalls.enabled() {
                        let mut recorder = shard.recorder.borrow_mut();
                        let how = "a publication";
                        shard.stalls.waited(shard.id, &mut recorder, StallSite::Inbox, how, d.received);
                    }
                    if turn_bytes >= budget_share || turn.elapsed() >= TURN_MAX {
                        work::after_pass().await;
                        (turn, turn_bytes) = (Instant::now(), 0);
                    }
                    turn_bytes += d.frame.len() + crate::session::send_queue::SLOT_COST;
                    contain(Inbox, || shard.deliver(d));
                }
            }
            // A panic drops the reply sender: the asker sees an error.
            Some(ShardMsg::Push { to, body, reply }) => {
                let pushed = contain(Inbox, || {
                    crate::panics::inject(Inbox);
                    shard.push_to(to, body)
                });
                let _ = pushed.map(|p| reply.send(p));
            }
            Some(ShardMsg::Replaced(owner)) => _ = contain(Inbox, || shard.close_replaced(owner)),
            Some(ShardMsg::Send { to, vhost, frame, reply }) => {
                let _ = contain(Inbox, || shard.send_to_session(to, &vhost, frame)).map(|s| reply.send(s));
            }
            Some(ShardMsg::Presence { topic, reply }) => {
                let _ = contain(Inbox, || shard.local_presence(&topic)).map(|p| reply.send(p));
            }
            Some(ShardMsg::ChannelCounts { vhost, reply }) => {
                let _ = contain(Inbox, || shard.local_channel_counts(&vhost)).map(|c| reply.send(c));
            }
            Some(ShardMsg::UserChanged { vhost, user }) => {
                _ = contain(Inbox, || shard.user_changed(&vhost, &user))
            }
            Some(ShardMsg::ChannelDeleted { topic }) => _ = contain(Inbox, || shard.channel_deleted(&topic)),
            Some(ShardMsg::VhostDeleted { vhost }) => _ = contain(Inbox, || shard.vhost_deleted(&vhost)),
            Some(ShardMsg::Shutdown) | None => break,
        }
    }
    inbox
}

async fn accept_loop(shard: Rc<Shard>, listener: rt::TcpListener) {
    let max = shard.config.server.max_connections;
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.draining().await;
            None
        })
        .await;
        match accepted {
            None => return,
            Some(Ok(stream)) => {
                shard.stalls.doing("an accept");
                if shard.open_connections.fetch_add(1, Ordering::Relaxed) >= max {
                    shard.open_connections.fetch_sub(1, Ordering::Relaxed);
                    metrics::inc(&shard.metrics.connections_refused);
                    shard.metrics.refuse(metrics::Refusal::MaxConnections);
                    rt::spawn(handshake::refuse(shard.clone(), stream));
                } else {
                    rt::spawn(handshake::serve(shard.clone(), stream));
                }
            }
            Some(Err(e)) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(shard = shard.id, error = %e, "accept failed; raise `ulimit -n` (see docs/tuning.md)");
                rt::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
