//! The shard's connection driver: one task per shard does all socket I/O
//! of its connections (no task, waker or poll source per connection).
//!
//! A turn: take the ring's readiness reports; read from connections with
//! input waiting (a bounded number per turn); then a **flush pass**: every
//! connection marked dirty since the last pass (a frame queued, a close
//! begun, input released) writes its whole queue with one `sendmsg` (a
//! `send` for a single frame). A publication that arrives during a pass is
//! queued to the connections the pass has not reached yet and leaves with
//! their write; the others are marked again for the next pass. When there
//! is nothing to do the driver waits for a mark or for the ring.

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Instant;

use super::conn::{ConnRef, ConnState};
use super::effects;
use super::ring::{Completion, Readiness, Token};
use super::state::Shard;
use super::tls_io;
use super::work;
use crate::handle::Owner;
use crate::metrics;
use crate::rt;
use crate::stats::StallSite;

/// Reads per connection per turn before others get theirs (each up to the
/// shard's 64 KiB read buffer).
const READS_PER_TURN: usize = 16;
/// Connections read from per turn before a flush pass runs.
const READERS_PER_TURN: usize = 256;
/// Connections read from at each yield point of a pass.
const READERS_PER_YIELD: usize = 16;
/// Readiness reports taken per turn.
const COMPLETIONS_PER_TURN: usize = 4096;
/// Frames gathered into one `sendmsg`.
const MAX_IOV: usize = 64;
/// Sends per connection per pass: what a connection has queued beyond
/// them waits for the next pass, behind the others.
const SENDS_PER_PASS: usize = 4;
/// Connections written before the pass lets the shard's other tasks run
/// (accepts, timers, hook answers; the inbox, if it is due).
const WRITES_BETWEEN_YIELDS: usize = 64;

/// Hands an upgraded connection's socket (already in `st.fd`) to the
/// driver: its input poll is armed and it is marked for a pass.
pub(super) fn adopt(shard: &Shard, st: &mut ConnState) {
    if let Some(fd) = &st.fd {
        shard.ring.borrow_mut().watch_input(fd.as_raw_fd(), Token::new(st.owner.key, st.owner.id));
    }
    st.wake();
}

/// Runs until the shard has drained (`Shard::driver_stopping`, with a
/// nudge of the ring so the idle wait ends).
pub(super) async fn run(shard: Rc<Shard>) {
    let ring_fd = shard.ring.borrow().fd();
    let mut readers: std::collections::VecDeque<Owner> = Default::default();
    let mut batch = Vec::new();
    let mut waiting: Option<Pin<Box<dyn Future<Output = Instant>>>> = None;
    work::set_timed(shard.stalls.enabled());
    loop {
        if shard.driver_stopping.get() {
            break;
        }
        shard.stalls.doing("a driver turn");
        take_completions(&shard, &mut readers);
        read_some(&shard, &mut readers, READERS_PER_TURN, None);
        pass(&shard, &mut batch, &mut readers).await;
        if let Err(e) = shard.ring.borrow_mut().submit() {
            tracing::error!(shard = shard.id, error = %e, "io_uring submit failed");
        }
        if !readers.is_empty() || work::has_marks() {
            // More to do: let accepts, timers and hooks run first.
            let yielded = shard.stalls.now();
            rt::yield_now().await;
            if let Some(since) = yielded {
                let r = &mut shard.recorder.borrow_mut();
                shard.stalls.waited(shard.id, r, StallSite::Driver, "its own yield", since);
            }
            continue;
        }
        // Idle: wait for a mark or for the ring to report readiness; then
        // the stall detector learns since when the driver could have run
        // (the ring may have been ready while the driver was busy: the wait
        // counts from the idle wait's start at the earliest).
        let idle_from = shard.stalls.now();
        let runnable = poll_fn(|cx| {
            let marked = work::poll_marked(cx).map(|at| at.map(|at| (at, "a mark")));
            if let Some(since) = marked {
                return Poll::Ready(since);
            }
            let ring = waiting.get_or_insert_with(|| Box::pin(rt::readable(ring_fd)));
            match ring.as_mut().poll(cx) {
                Poll::Ready(at) => {
                    waiting = None;
                    work::woken_by_ring();
                    Poll::Ready(Some((at, "its ring's readiness")))
                }
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        if let (Some((since, how)), Some(idle_from)) = (runnable, idle_from) {
            let since = since.max(idle_from);
            shard.stalls.waited(shard.id, &mut shard.recorder.borrow_mut(), StallSite::Driver, how, since);
        }
    }
    // The ring was nudged: the blocking wait ends before the ring is closed.
    if let Some(ring) = waiting {
        let _ = ring.await;
    }
}

/// Reads from up to `max` of the connections with input waiting; within a
/// pass (`out`), writes what that queued (a reply, a pong) right away.
fn read_some(
    shard: &Rc<Shard>,
    readers: &mut std::collections::VecDeque<Owner>,
    max: usize,
    mut out: Option<&mut Written>,
) {
    for _ in 0..readers.len().min(max) {
        let Some(owner) = readers.pop_front() else { break };
        if let Some(conn) = shard.conn(owner) {
            guarded(shard, &conn, |shard, conn| {
                read(shard, conn, readers);
                // `write` passes over a connection the read ended (no socket).
                if let Some(out) = out.as_deref_mut().filter(|_| conn.borrow().scheduled) {
                    write(shard, conn, readers, out);
                }
            });
        }
    }
}

/// Readiness reports: input marks a connection readable, output space marks
/// it dirty; an input poll that ended is armed again.
fn take_completions(shard: &Rc<Shard>, readers: &mut std::collections::VecDeque<Owner>) {
    let mut rearm = Vec::new();
    shard.ring.borrow_mut().reap(COMPLETIONS_PER_TURN, |c: Completion| {
        let Some(conn) = shard.conn_by_token(c.token) else { return };
        let mut st = conn.borrow_mut();
        match c.readiness {
            Readiness::Input => {
                match c.error {
                    // Ended without an error (the kernel may end a multishot
                    // poll, e.g. when it could not post a completion): again.
                    None if !c.armed => {
                        if let Some(fd) = &st.fd {
                            rearm.push((fd.as_raw_fd(), c.token));
                        }
                    }
                    None | Some(libc::ECANCELED) => {}
                    Some(errno) => {
                        // Not seen in practice; the read below meets the
                        // socket's own state, the keepalive ends a connection
                        // that is never heard from again.
                        if shard.log_allowed() {
                            tracing::warn!(
                                shard = shard.id,
                                errno,
                                "input poll failed; connection no longer watched"
                            );
                        }
                    }
                }
                st.readable = true;
                if !st.read_listed {
                    st.read_listed = true;
                    readers.push_back(st.owner);
                }
            }
            Readiness::Output => {
                st.output_armed = false;
                st.wake();
            }
        }
    });
    let mut ring = shard.ring.borrow_mut();
    for (fd, token) in rearm {
        ring.watch_input(fd, token);
    }
}

/// Runs `f` for one connection; a bug that panics there ends that
/// connection, not the shard and its other connections.
fn guarded(shard: &Rc<Shard>, conn: &ConnRef, f: impl FnOnce(&Rc<Shard>, &ConnRef)) {
    if crate::panics::contain(crate::panics::Where::Connection, || f(shard, conn)).is_none() {
        tracing::error!(shard = shard.id, "a connection's handling panicked; closing that connection");
        if shard.conn(conn.borrow().owner).is_some() {
            finish(shard, conn);
        }
    }
}

/// One flush pass over the connections marked so far.
async fn pass(shard: &Rc<Shard>, batch: &mut Vec<Owner>, readers: &mut std::collections::VecDeque<Owner>) {
    work::begin_pass(batch);
    let mut out = Written::default();
    for (i, &owner) in batch.iter().enumerate() {
        if i > 0 && i % WRITES_BETWEEN_YIELDS == 0 {
            out.count(shard);
            // The inbox may run here: what it queues to connections further
            // down this batch leaves with their write below.
            rt::yield_now().await;
            // Input that arrived meanwhile (a command, a ping, a Close) is
            // not held for the rest of a long pass, nor are its replies.
            take_completions(shard, readers);
            read_some(shard, readers, READERS_PER_YIELD, Some(&mut out));
        }
        if let Some(conn) = shard.conn(owner) {
            guarded(shard, &conn, |shard, conn| write(shard, conn, readers, &mut out));
        }
    }
    out.count(shard);
    batch.clear();
    work::end_pass();
}

/// What a stretch of a pass wrote, counted into the shared metrics once
/// per stretch rather than per connection.
#[derive(Default)]
struct Written {
    bytes: u64,
    frames: u64,
}

impl Written {
    fn count(&mut self, shard: &Shard) {
        metrics::add(&shard.metrics.bytes_out, std::mem::take(&mut self.bytes));
        metrics::add(&shard.metrics.messages_out, std::mem::take(&mut self.frames));
    }
}

/// A marked connection's turn in a pass: write, close, or list it for
/// reading (its held input may have been released).
fn write(
    shard: &Rc<Shard>,
    conn: &ConnRef,
    readers: &mut std::collections::VecDeque<Owner>,
    out: &mut Written,
) {
    let mut st = conn.borrow_mut();
    st.scheduled = false;
    let Some(fd) = st.fd.as_ref().map(|f| f.as_raw_fd()) else {
        // Still in its handshake: `adopt` marks it again.
        return;
    };
    // SAFETY: `fd` is the connection's own socket, open while `st.fd` holds it.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    if st.forced {
        drop(st);
        return finish(shard, conn);
    }
    if let Err(e) = flush(shard, &mut st, fd, out) {
        tracing::debug!(error = %e, "connection write failed");
        drop(st);
        return finish(shard, conn);
    }
    if st.session.is_closing() && st.session.queue.is_empty() && !st.write_shut {
        // Our Close is out: with TLS close_notify follows it.
        if tls_io::close_notify(&mut st) {
            if let Err(e) = flush(shard, &mut st, fd, out) {
                tracing::debug!(error = %e, "connection write failed");
                drop(st);
                return finish(shard, conn);
            }
        }
        if tls_io::unsent(&st) == 0 {
            // FIN, then wait for the peer's end.
            rt::shutdown_write(fd);
            st.write_shut = true;
        }
    }
    if (st.readable || st.session.can_resume()) && !st.read_listed {
        st.read_listed = true;
        readers.push_back(st.owner);
    }
}

/// Writes as much of the queue as the socket takes (a few `sendmsg`s at
/// most); arms an output poll when the socket is full. Err: it failed.
fn flush(shard: &Shard, st: &mut ConnState, fd: BorrowedFd<'_>, out: &mut Written) -> io::Result<()> {
    if st.tls.is_some() {
        return flush_tls(shard, st, fd, out);
    }
    if st.session.queue.is_empty() {
        return Ok(());
    }
    shard.recorder.borrow_mut().queue_depth(st.session.queue.queued_bytes());
    for _ in 0..SENDS_PER_PASS {
        if st.session.queue.is_empty() {
            return Ok(());
        }
        let result = {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            match st.session.queue.slices(&mut slices) {
                1 => rt::send(fd, &slices[0]),
                n => rt::send_vectored(fd, &slices[..n]),
            }
        };
        let written = match result {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                arm_output(shard, st, fd);
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
        };
        let frames = st.session.queue.advance(written);
        shard.frames_gone(st, frames);
        out.bytes += written as u64;
        out.frames += frames as u64;
    }
    if !st.session.queue.is_empty() {
        // More than a pass's share: the next pass continues.
        st.wake();
    }
    Ok(())
}

/// The socket is full: its output poll marks the connection again.
fn arm_output(shard: &Shard, st: &mut ConnState, fd: BorrowedFd<'_>) {
    if !st.output_armed {
        st.output_armed = true;
        shard.ring.borrow_mut().watch_output(fd.as_raw_fd(), Token::new(st.owner.key, st.owner.id));
    }
}

/// `flush` for a TLS connection: first the ciphertext the socket did not
/// take last time, then the queue's front encrypted into the shard's
/// scratch and sent from there; what the socket leaves is kept.
fn flush_tls(shard: &Shard, st: &mut ConnState, fd: BorrowedFd<'_>, out: &mut Written) -> io::Result<()> {
    if st.session.queue.is_empty() && tls_io::unsent(st) == 0 {
        return Ok(());
    }
    shard.recorder.borrow_mut().queue_depth(st.session.queue.queued_bytes());
    let mut scratch = shard.tls_scratch.borrow_mut();
    for _ in 0..SENDS_PER_PASS {
        let link = st.tls.as_mut().expect("a TLS connection");
        if !link.unsent.is_empty() {
            match send_all_or_would_block(fd, &link.unsent)? {
                Some(n) if n == link.unsent.len() => link.unsent = Vec::new(),
                Some(n) => {
                    link.unsent.drain(..n);
                    arm_output(shard, st, fd);
                    return Ok(());
                }
                None => {
                    arm_output(shard, st, fd);
                    return Ok(());
                }
            }
            continue;
        }
        if st.session.queue.is_empty() {
            return Ok(());
        }
        let sealed = match tls_io::seal(st, &mut scratch) {
            Ok(sealed) => sealed,
            Err(e) => {
                if e.is_rekey() {
                    // The record kept for it: close_notify, so the client sees a clean end.
                    tracing::info!(error = %e, "TLS connection closed");
                    if tls_io::close_notify(st) {
                        let link = st.tls.as_ref().expect("a TLS connection");
                        let _ = send_all_or_would_block(fd, &link.unsent);
                    }
                }
                return Err(io::Error::other(e));
            }
        };
        let frames = st.session.queue.advance(sealed);
        shard.frames_gone(st, frames);
        out.bytes += scratch.ciphertext.len() as u64;
        out.frames += frames as u64;
        let sent = send_all_or_would_block(fd, &scratch.ciphertext)?.unwrap_or(0);
        if sent < scratch.ciphertext.len() {
            let link = st.tls.as_mut().expect("a TLS connection");
            link.unsent = scratch.ciphertext[sent..].to_vec();
            arm_output(shard, st, fd);
            return Ok(());
        }
    }
    if !st.session.queue.is_empty() {
        st.wake();
    }
    Ok(())
}

/// One `send`: Some(bytes taken), None if the socket is full.
fn send_all_or_would_block(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<Option<usize>> {
    loop {
        return match rt::send(fd, bytes) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => Ok(Some(n)),
        };
    }
}

/// A readable connection's turn: reads until the socket is empty, input is
/// held for a backend, or its share of the turn is used (then it goes to
/// the back of the list).
fn read(shard: &Rc<Shard>, conn: &ConnRef, readers: &mut std::collections::VecDeque<Owner>) {
    conn.borrow_mut().read_listed = false;
    for _ in 0..READS_PER_TURN {
        let (fd, closing) = {
            let st = conn.borrow();
            if st.forced {
                drop(st);
                return finish(shard, conn);
            }
            if !st.session.is_closing() && st.session.is_held() {
                // Held: the backend's answer marks it, and a pass lists it again.
                return;
            }
            if st.session.can_resume() {
                drop(st);
                effects::resume(shard, conn);
                continue;
            }
            if !st.readable {
                return;
            }
            let Some(fd) = st.fd.as_ref().map(|f| f.as_raw_fd()) else { return };
            (fd, st.session.is_closing())
        };
        // SAFETY: the connection's own socket, open while it is registered
        // (this turn holds a reference to it and `finish` is the only closer).
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let mut buf = shard.read_buf.borrow_mut();
        match rt::recv(fd, &mut buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.borrow_mut().readable = false;
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(0) => {
                drop(buf);
                return finish(shard, conn);
            }
            Err(e) => {
                tracing::debug!(error = %e, "connection read failed");
                drop(buf);
                return finish(shard, conn);
            }
            Ok(n) => {
                metrics::add(&shard.metrics.bytes_in, n as u64);
                let tls = {
                    let mut st = conn.borrow_mut();
                    st.session.heard(shard.now_ms());
                    st.tls.is_some()
                };
                if tls {
                    let peer_closed = read_tls(shard, conn, &mut buf[..n], closing);
                    if peer_closed {
                        drop(buf);
                        return finish(shard, conn);
                    }
                } else if !closing {
                    effects::on_bytes(shard, conn, &mut buf[..n]);
                }
            }
        }
    }
    // Its share is used: the back of the list.
    let mut st = conn.borrow_mut();
    if !st.read_listed {
        st.read_listed = true;
        readers.push_back(st.owner);
    }
}

/// Decrypts what a TLS connection sent and feeds it to the session (unless
/// it is closing); true if the connection is over: the peer sent
/// close_notify, or broke TLS (its alert is sent first, once).
fn read_tls(shard: &Rc<Shard>, conn: &ConnRef, ciphertext: &mut [u8], closing: bool) -> bool {
    // Out of its cell while the session runs: nothing the session does can
    // reach the scratch then.
    let mut scratch = std::mem::take(&mut *shard.tls_scratch.borrow_mut());
    let opened = tls_io::open(&mut conn.borrow_mut(), ciphertext, &mut scratch);
    let over = match opened {
        Ok(progress) => {
            if !closing && !scratch.plaintext.is_empty() {
                effects::on_bytes(shard, conn, &mut scratch.plaintext);
            }
            progress.peer_closed
        }
        Err(e) if e.is_rekey() => {
            // Not the client's fault: the records keep no key schedule
            // (tls/records.rs), so a rekey ends the connection. Rare.
            tracing::info!(error = %e, "TLS connection closed");
            send_unsent(conn);
            true
        }
        Err(e) => {
            tracing::debug!(error = %e, "TLS connection failed");
            send_unsent(conn);
            true
        }
    };
    *shard.tls_scratch.borrow_mut() = scratch;
    over
}

/// Sends the TLS connection's last records (an alert, close_notify) once, best effort.
fn send_unsent(conn: &ConnRef) {
    let st = conn.borrow();
    if let (Some(fd), Some(link)) = (&st.fd, &st.tls) {
        let _ = rt::send(fd.as_fd(), &link.unsent);
    }
}

/// Closes the socket (its polls removed first), unregisters the connection
/// and tells the backend it is gone.
pub(super) fn finish(shard: &Rc<Shard>, conn: &ConnRef) {
    let (fd, token, output_armed) = {
        let mut st = conn.borrow_mut();
        (st.fd.take(), Token::new(st.owner.key, st.owner.id), st.output_armed)
    };
    // Only for the debug log: no getpeername per close otherwise.
    let peer = if tracing::enabled!(tracing::Level::DEBUG) {
        fd.as_ref().and_then(|fd| rt::peer_addr(fd.as_fd()))
    } else {
        None
    };
    if let Some(fd) = fd {
        shard.ring.borrow_mut().forget(token, output_armed);
        drop(fd);
        shard.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
    effects::finish(shard, conn, peer);
}
