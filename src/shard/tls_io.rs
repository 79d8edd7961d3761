//! A TLS connection's records between its socket and its session, without
//! I/O: what the driver read is decrypted into the shard's scratch (the
//! session reads it from there), and queued frames are encrypted into the
//! shard's scratch for the driver to send. A connection keeps ciphertext
//! of its own only while its socket is full.

use std::io::IoSlice;

use super::conn::ConnState;
use super::state::TlsScratch;
use crate::tls::{Progress, TlsError};

/// Plaintext encrypted per send: four full records, about what one
/// `sendmsg` of plain frames carries.
const SEAL_MAX: usize = 64 * 1024;
/// Frames gathered per send.
const MAX_IOV: usize = 64;

/// Decrypts `ciphertext` (read from the socket, decrypted in place) into
/// `scratch.plaintext`; records the peer must get (a key update's answer,
/// an alert) join the connection's unsent ciphertext.
pub(super) fn open(
    st: &mut ConnState,
    ciphertext: &mut [u8],
    scratch: &mut TlsScratch,
) -> Result<Progress, TlsError> {
    let link = st.tls.as_mut().expect("a TLS connection");
    scratch.plaintext.clear();
    let result = link.session.read(ciphertext, &mut scratch.plaintext, &mut link.unsent);
    if !link.unsent.is_empty() {
        st.wake();
    }
    result
}

/// Encrypts the front of the send queue (up to `SEAL_MAX` bytes) into
/// `scratch.ciphertext`; returns how many queued bytes it took, for the
/// caller to advance the queue by.
pub(super) fn seal(st: &mut ConnState, scratch: &mut TlsScratch) -> Result<usize, TlsError> {
    let link = st.tls.as_mut().expect("a TLS connection");
    scratch.ciphertext.clear();
    let mut slices = [IoSlice::new(&[]); MAX_IOV];
    let n = st.session.queue.slices(&mut slices);
    let first = slices[0].len();
    if n == 1 || first >= SEAL_MAX {
        // One frame (the usual fanout case): encrypted where it lies.
        let take = first.min(SEAL_MAX);
        link.session.write(&slices[0][..take], &mut scratch.ciphertext)?;
        return Ok(take);
    }
    // Several frames: gathered into one run of records, not a record each.
    scratch.plaintext.clear();
    for slice in &slices[..n] {
        let room = SEAL_MAX - scratch.plaintext.len();
        scratch.plaintext.extend_from_slice(&slice[..slice.len().min(room)]);
        if scratch.plaintext.len() == SEAL_MAX {
            break;
        }
    }
    link.session.write(&scratch.plaintext, &mut scratch.ciphertext)?;
    Ok(scratch.plaintext.len())
}

/// Queues our close_notify once, after the last frame; true if it was
/// queued now (the caller flushes it).
pub(super) fn close_notify(st: &mut ConnState) -> bool {
    let Some(link) = st.tls.as_mut().filter(|l| !l.closed) else { return false };
    link.closed = true;
    // A session that cannot write any more (the peer closed) sends nothing.
    link.session.close(&mut link.unsent).is_ok() && !link.unsent.is_empty()
}

/// Ciphertext the socket has not taken yet.
pub(super) fn unsent(st: &ConnState) -> usize {
    st.tls.as_ref().map_or(0, |l| l.unsent.len())
}
