//! A client connection's state in its shard's slab: the protocol session
//! plus what the driver and the topic index keep. What the session asks of
//! the shard is carried out in `effects.rs`, socket I/O is the driver's
//! (`driver.rs`), the protocol is the session's (`crate::session`), the
//! handshake is `handshake.rs`'s.

use std::cell::RefCell;
use std::os::fd::OwnedFd;
use std::rc::Rc;

use crate::handle::Owner;
use crate::session::send_queue::{Frame, OverBudget};
use crate::session::Session;

pub type ConnRef = Rc<RefCell<ConnState>>;

/// A connection: fanout pushes frames, the keepalive pass ticks, shutdown
/// closes, hook tasks answer, the driver reads and writes.
#[derive(Debug, Default)]
pub struct ConnState {
    /// This connection's handle (`Shard::conn` resolves it), set at registration.
    pub owner: Owner,
    /// The protocol: decoder, dialect state, send queue, close, keepalive.
    pub session: Session,
    /// The socket, once the handshake handed it to the driver.
    pub(super) fd: Option<OwnedFd>,
    pub(super) vhost: usize,
    pub(super) write_shut: bool,
    /// Input may be waiting: reported by the ring, not yet read to EAGAIN.
    pub(super) readable: bool,
    /// In the driver's list of connections to read from.
    pub(super) read_listed: bool,
    /// Marked for the driver's next flush pass.
    pub(super) scheduled: bool,
    /// An output poll is armed (the socket was full).
    pub(super) output_armed: bool,
    /// Topics joined; names shared with the shard's topic index.
    pub topics: Vec<Rc<str>>,
    /// WebRocket dialect: that dialect's session machine.
    pub(crate) wr: Option<Box<crate::webrocket::session::Session>>,
    /// Drop the connection now.
    pub(super) forced: bool,
    /// The publication followed for latency this connection carries
    /// (`stats::ProbeMark`; 0: none).
    pub(crate) probe: crate::stats::ProbeMark,
    /// `[server.tls]`: the connection's record layer (`tls_io.rs` drives it).
    pub(super) tls: Option<Box<TlsLink>>,
    /// Who the client is, when a token or a limit needs it (most
    /// connections: None, no allocation).
    pub(crate) ident: Option<Box<ConnIdent>>,
}

/// A connection's client: its token's claims and its place in the
/// per-address count.
#[derive(Debug, Default)]
pub(crate) struct ConnIdent {
    pub token: crate::auth::Identity,
    /// Freed when the connection ends.
    pub _slot: Option<crate::limits::IpSlot>,
}

impl ConnState {
    /// The token's `sub`, for hooks (`X-Ringcast-User`).
    pub fn user(&self) -> Option<&std::sync::Arc<str>> {
        self.ident.as_ref()?.token.user.as_ref()
    }

    /// May the connection join `topic`? Only a token's claim restricts it.
    pub fn may_join(&self, topic: &str) -> bool {
        self.ident.as_ref().and_then(|i| i.token.grants.as_ref()).is_none_or(|g| g.allows(topic))
    }
}

/// A TLS connection's record state and the ciphertext its socket did not
/// take yet (empty and unallocated while the socket keeps up).
#[derive(Debug)]
pub(super) struct TlsLink {
    pub session: crate::tls::TlsSession,
    pub unsent: Vec<u8>,
    /// Our close_notify is queued.
    pub closed: bool,
}

impl ConnState {
    pub fn is_closing(&self) -> bool {
        self.session.is_closing()
    }

    /// Queues a frame within `budget` bytes and marks the connection for
    /// the driver's next pass; frames for a closing connection are dropped.
    pub fn push(&mut self, frame: impl Into<Frame>, budget: usize) -> Result<(), OverBudget> {
        let was_empty = self.session.queue.is_empty();
        self.session.push(frame, budget)?;
        if was_empty && !self.session.queue.is_empty() {
            self.wake();
        }
        Ok(())
    }

    /// Marks the frame just queued as the probe `id`'s; false if closing
    /// (the frame was not queued).
    pub fn carry_probe(&mut self, id: u32) -> bool {
        if self.is_closing() {
            return false;
        }
        self.probe = crate::stats::probe_mark(id, self.session.queue.frames());
        true
    }

    pub fn force_close(&mut self) {
        self.forced = true;
        self.wake();
    }

    /// Marks the connection for the driver's next flush pass (once).
    pub(crate) fn wake(&mut self) {
        if !self.scheduled {
            self.scheduled = true;
            super::work::schedule(self.owner);
        }
    }
}
