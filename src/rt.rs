//! The runtime seam: every glommio call of the data plane is in this module,
//! so a move to another io_uring runtime (glommio 0.9 is its last release)
//! touches one file.

use std::future::Future;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

pub use glommio::net::{TcpListener, TcpStream};

/// io_uring submission queue depth per ring. Linux sizes a ring's table of
/// pending polls from its completion queue (at most 256 buckets, reached at
/// 8192 CQ entries); with glommio's default of 128 it has 8 buckets, and every
/// cancellation (glommio re-arms its preemption timers each loop) walks a
/// bucket holding 1/8 of all idle connections' polls. Measured with 15,000
/// connections: 21 % of the shard's CPU in `io_poll_find` at depth 128.
const RING_DEPTH: usize = 4096;

/// A running shard executor thread.
pub struct Executor(glommio::ExecutorJoinHandle<()>);

impl Executor {
    /// Waits for the executor's thread; the error says why it could not run.
    pub fn join(self) -> Result<(), glommio::GlommioError<()>> {
        self.0.join()
    }
}

/// Starts an executor thread pinned to `cpu`, with `io_memory` bytes of
/// io_uring buffer memory (counted against RLIMIT_MEMLOCK).
pub fn spawn_executor<G, F>(name: &str, cpu: Option<usize>, io_memory: usize, run: G) -> io::Result<Executor>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = ()> + 'static,
{
    let placement = cpu.map_or(Placement::Unbound, Placement::Fixed);
    LocalExecutorBuilder::new(placement)
        .name(name)
        .io_memory(io_memory)
        .ring_depth(RING_DEPTH)
        .spawn(run)
        .map(Executor)
        .map_err(|e| io::Error::other(e.to_string()))
}

thread_local! {
    /// The shard's main task queue, once `run_prompt` made another: tasks
    /// spawned from the prompt queue still go here (glommio would put them in
    /// the spawner's queue, ahead of every connection).
    static MAIN_QUEUE: std::cell::Cell<Option<glommio::TaskQueueHandle>> = const { std::cell::Cell::new(None) };
}

/// Runs `fut` on the current shard, detached, in its main task queue; a
/// panic in it ends that task only (`panics`). glommio may poll it before
/// this returns: hold no `RefCell` borrow that `fut` takes across this call.
pub fn spawn<F: Future<Output = ()> + 'static>(fut: F) {
    spawn_in_main_queue(crate::panics::contained(crate::panics::Where::ShardTask, fut)).detach();
}

fn spawn_in_main_queue<T: 'static>(fut: impl Future<Output = T> + 'static) -> glommio::Task<T> {
    match MAIN_QUEUE.with(|q| q.get()) {
        Some(queue) => glommio::spawn_local_into(fut, queue).expect("the main task queue exists"),
        None => glommio::spawn_local(fut),
    }
}

/// Runs `fut` on the current shard in a task queue of its own that the
/// scheduler turns to within `latency` of it becoming ready, even in the
/// middle of a long run of other tasks; awaits its end.
pub async fn run_prompt<T: 'static>(
    fut: impl Future<Output = T> + 'static,
    latency: Duration,
    name: &str,
) -> T {
    let ex = glommio::executor();
    MAIN_QUEUE.with(|q| {
        if q.get().is_none() {
            q.set(Some(ex.current_task_queue()));
        }
    });
    let queue = ex.create_task_queue(glommio::Shares::default(), glommio::Latency::Matters(latency), name);
    match glommio::spawn_local_into(fut, queue) {
        Ok(task) => task.await,
        Err(e) => panic!("cannot spawn into task queue {name}: {e}"),
    }
}

/// Lets every other ready task of this shard run before continuing.
pub async fn yield_now() {
    futures_lite::future::yield_now().await
}

/// Runs `fut` on the current shard in its main task queue; the returned
/// future resolves to its output.
pub fn spawn_joinable<T: 'static>(fut: impl Future<Output = T> + 'static) -> impl Future<Output = T> {
    spawn_in_main_queue(fut)
}

/// Resolves once `fd` is readable, waiting on the shard's blocking thread
/// (glommio cannot poll a descriptor that is not a socket or file): the
/// bridge from the shard's own io_uring into glommio's loop. The caller
/// keeps `fd` open until this resolved. Resolves to when `fd` was found
/// readable (the stall detector measures the hand-back from there).
pub fn readable(fd: RawFd) -> impl Future<Output = std::time::Instant> {
    glommio::executor().spawn_blocking(move || {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        loop {
            // SAFETY: one valid pollfd, alive for the call.
            let n = unsafe { libc::poll(&mut p, 1, -1) };
            if n >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return std::time::Instant::now();
            }
        }
    })
}

pub async fn sleep(d: Duration) {
    glommio::timer::sleep(d).await
}

/// Adopts a listening socket bound elsewhere (all shards share one port
/// through SO_REUSEPORT). Must be called on the shard that will accept.
pub fn adopt_listener(listener: std::net::TcpListener) -> TcpListener {
    let fd = listener.into_raw_fd();
    // SAFETY: `into_raw_fd` hands over sole ownership of a valid, bound and
    // listening TCP socket; the glommio listener becomes its only owner.
    unsafe { TcpListener::from_raw_fd(fd) }
}

/// A descriptor of its own for an accepted connection's socket, non-blocking,
/// so the glommio stream (and its poll source) can be dropped once the
/// handshake is done and the shard's driver takes the socket over.
pub fn take_socket(stream: &TcpStream) -> io::Result<OwnedFd> {
    // SAFETY: the descriptor belongs to `stream`, which outlives this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }.try_clone_to_owned()?;
    socket2::SockRef::from(&fd).set_nonblocking(true)?;
    Ok(fd)
}

/// One non-blocking read.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes of writes during the call.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Writes one frame with a non-blocking `send` (cheaper in the kernel than
/// a `sendmsg` of one slice: no message header or iovec to copy in).
pub fn send(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    socket2::SockRef::from(&fd).send_with_flags(bytes, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

/// Writes several frames with one non-blocking `sendmsg`.
pub fn send_vectored(fd: BorrowedFd<'_>, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    socket2::SockRef::from(&fd).send_vectored_with_flags(slices, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

/// Sends FIN: the peer sees the end of our stream while we still read.
pub fn shutdown_write(fd: BorrowedFd<'_>) {
    let _ = socket2::SockRef::from(&fd).shutdown(std::net::Shutdown::Write);
}

pub fn peer_addr(fd: BorrowedFd<'_>) -> Option<std::net::SocketAddr> {
    socket2::SockRef::from(&fd).peer_addr().ok()?.as_socket()
}

pub fn set_nodelay(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
}

/// SO_SNDBUF (the kernel doubles it for its bookkeeping).
pub fn set_send_buffer(stream: &TcpStream, bytes: usize) {
    // SAFETY: as in `take_socket`.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let _ = socket2::SockRef::from(&fd).set_send_buffer_size(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;

    #[test]
    fn send_vectored_writes_all_slices_in_order() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let ex = spawn_executor("rt-test", None, 256 * 1024, move || async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            let fd = take_socket(&stream).unwrap();
            drop(stream);
            let slices = [IoSlice::new(b"ab"), IoSlice::new(b""), IoSlice::new(b"cde")];
            assert_eq!(send_vectored(fd.as_fd(), &slices).unwrap(), 5);
            shutdown_write(fd.as_fd());
            let mut buf = [0u8; 4];
            let err = recv(fd.as_fd(), &mut buf).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "the taken socket is non-blocking");
        })
        .unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).unwrap();
        ex.join().unwrap();
        assert_eq!(got, b"abcde");
    }
}
