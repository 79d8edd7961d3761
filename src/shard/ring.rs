//! The shard's own io_uring, for socket readiness: one multishot poll per
//! connection for input (armed once, it reports every time data arrives),
//! a one-shot poll for output space when a socket's send buffer is full.
//! Reads and writes themselves are plain non-blocking syscalls: io_uring
//! batched sends cost the same per send here (docs/benchmarks-history.md, "send
//! path"), and a readiness poll costs no user-space memory while it waits.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

/// Which readiness a completion reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    Input,
    Output,
}

/// A connection's poll, named by its slab key and generation (the low 31
/// bits of its id) so a completion for a connection that is gone, or for an
/// earlier occupant of its slot, is recognised and ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    pub key: usize,
    pub generation: u32,
}

/// User data of operations whose completions mean nothing (removals, nudges).
const IGNORED: u64 = u64::MAX;

impl Token {
    pub fn new(key: usize, id: u64) -> Self {
        Token { key, generation: (id as u32) & 0x7fff_ffff }
    }

    fn user_data(self, readiness: Readiness) -> u64 {
        let kind = u64::from(readiness == Readiness::Output);
        ((self.key as u64) << 32) | (u64::from(self.generation) << 1) | kind
    }

    fn from_user_data(data: u64) -> (Token, Readiness) {
        let token = Token { key: (data >> 32) as usize, generation: ((data >> 1) as u32) & 0x7fff_ffff };
        (token, if data & 1 == 1 { Readiness::Output } else { Readiness::Input })
    }
}

/// One completion, decoded.
#[derive(Debug)]
pub struct Completion {
    pub token: Token,
    pub readiness: Readiness,
    /// The input poll is still armed (false: it ended and must be re-armed
    /// if the connection is still there).
    pub armed: bool,
    /// The poll ended with this error (`-errno`), e.g. cancelled.
    pub error: Option<i32>,
}

pub struct Ring {
    ring: IoUring,
    /// Operations queued since the last `submit`.
    queued: usize,
}

impl Ring {
    /// A ring for `entries` operations per submission, with room for eight
    /// times as many completions (one per readable connection per turn).
    pub fn new(entries: u32) -> io::Result<Self> {
        let ring = IoUring::builder().setup_cqsize(entries * 8).build(entries)?;
        let mut ring = Ring { ring, queued: 0 };
        ring.check_multishot_poll()?;
        Ok(ring)
    }

    /// Multishot polls came with Linux 5.13; an older kernel fails the
    /// poll, and every connection would go unheard: say so at start instead.
    fn check_multishot_poll(&mut self) -> io::Result<()> {
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        // No connection has this key (slab keys stay far below).
        let token = Token::new(u32::MAX as usize, 0);
        self.watch_input(b.as_raw_fd(), token);
        self.submit()?;
        (&a).write_all(b"x")?;
        self.ring.submit_and_wait(1)?;
        let mut armed = false;
        let mut failed = None;
        self.reap(8, |c| {
            armed |= c.armed;
            failed = failed.or(c.error);
        });
        self.forget(token, false);
        self.ring.submit_and_wait(1)?;
        self.reap(8, |_| {});
        match (armed, failed) {
            (true, None) => Ok(()),
            (_, errno) => Err(io::Error::other(format!(
                "io_uring multishot poll unsupported (errno {errno:?}): ringcast needs Linux 5.13 or later"
            ))),
        }
    }

    /// The ring's descriptor: readable while completions wait.
    pub fn fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// Arms the input poll of `fd` (readable, peer hang-up or error).
    pub fn watch_input(&mut self, fd: RawFd, token: Token) {
        let mask = (libc::POLLIN | libc::POLLRDHUP) as u32;
        let op = opcode::PollAdd::new(types::Fd(fd), mask).multi(true).build();
        self.push(op.user_data(token.user_data(Readiness::Input)));
    }

    /// Arms a one-shot poll for output space on `fd`.
    pub fn watch_output(&mut self, fd: RawFd, token: Token) {
        let op = opcode::PollAdd::new(types::Fd(fd), libc::POLLOUT as u32).build();
        self.push(op.user_data(token.user_data(Readiness::Output)));
    }

    /// Queues the removal of a connection's polls (an armed poll holds the
    /// socket open even after `close`). Removal goes by token, not by
    /// descriptor, so the caller may close at once and the removals go with
    /// the turn's one `submit`: a mass disconnect costs no syscall per close.
    pub fn forget(&mut self, token: Token, output_armed: bool) {
        self.push(opcode::PollRemove::new(token.user_data(Readiness::Input)).build().user_data(IGNORED));
        if output_armed {
            let op = opcode::PollRemove::new(token.user_data(Readiness::Output)).build();
            self.push(op.user_data(IGNORED));
        }
    }

    /// Posts a completion that means nothing: wakes whoever waits on `fd()`.
    pub fn nudge(&mut self) {
        self.push(opcode::Nop::new().build().user_data(IGNORED));
        let _ = self.submit();
    }

    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: the entries pushed here name no user memory (polls,
            // removals and no-ops take only a descriptor and numbers).
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                self.queued += 1;
                return;
            }
            // Full: hand what is queued to the kernel and retry.
            let _ = self.submit();
        }
    }

    /// Hands queued operations to the kernel (also flushes completions the
    /// kernel held back while the completion queue was full).
    pub fn submit(&mut self) -> io::Result<()> {
        let overflow = self.ring.submission().cq_overflow();
        if self.queued == 0 && !overflow {
            return Ok(());
        }
        self.queued = 0;
        loop {
            match self.ring.submit() {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // EBUSY: the completion queue is full; the caller reaps and
                // submits again next turn.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                other => return other.map(drop),
            }
        }
    }

    /// Takes up to `max` completions; false if none waited.
    pub fn reap(&mut self, max: usize, mut each: impl FnMut(Completion)) -> usize {
        let mut taken = 0;
        for cqe in self.ring.completion().take(max) {
            taken += 1;
            if cqe.user_data() == IGNORED {
                continue;
            }
            let (token, readiness) = Token::from_user_data(cqe.user_data());
            let result = cqe.result();
            each(Completion {
                token,
                readiness,
                armed: cqueue::more(cqe.flags()),
                error: (result < 0).then_some(-result),
            });
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    #[test]
    fn tokens_round_trip_through_user_data() {
        let t = Token::new(123_456, (3u64 << 48) | 0x1_8000_0005);
        assert_eq!(t.generation, 5);
        for r in [Readiness::Input, Readiness::Output] {
            assert_eq!(Token::from_user_data(t.user_data(r)), (t, r));
        }
        assert_ne!(t.user_data(Readiness::Input), IGNORED);
    }

    fn completions(ring: &mut Ring) -> Vec<Completion> {
        let mut got = Vec::new();
        ring.reap(64, |c| got.push(c));
        got
    }

    fn wait(ring: &Ring) {
        let mut p = libc::pollfd { fd: ring.fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        assert_eq!(unsafe { libc::poll(&mut p, 1, 5000) }, 1, "no completion within 5 s");
    }

    #[test]
    fn the_input_poll_reports_each_arrival_and_stays_armed_until_removed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut ring = Ring::new(8).unwrap();
        let token = Token::new(7, 42);
        ring.watch_input(server.as_raw_fd(), token);
        ring.submit().unwrap();
        assert!(completions(&mut ring).is_empty(), "nothing arrived yet");
        for round in 0..2 {
            client.write_all(b"x").unwrap();
            wait(&ring);
            let got = completions(&mut ring);
            assert_eq!(got.len(), 1, "round {round}: {got:?}");
            assert_eq!((got[0].token, got[0].readiness, got[0].armed), (token, Readiness::Input, true));
            let mut b = [0u8; 8];
            assert_eq!((&server).read(&mut b).unwrap(), 1);
        }
        ring.forget(token, false);
        ring.submit().unwrap();
        wait(&ring);
        let got = completions(&mut ring);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(!got[0].armed && got[0].error == Some(libc::ECANCELED), "{got:?}");
    }

    #[test]
    fn a_nudge_makes_the_ring_readable_and_reports_nothing() {
        let mut ring = Ring::new(4).unwrap();
        ring.nudge();
        wait(&ring);
        assert!(completions(&mut ring).is_empty());
    }
}
