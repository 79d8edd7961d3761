//! The runtime seam: every glommio call of the data plane is in this module,
//! so a move to another io_uring runtime (glommio 0.9 is its last release)
//! touches one file.

use std::future::Future;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};
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
    pub fn join(self) -> Result<(), String> {
        match self.0.join() {
            Ok(()) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
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

/// Runs `fut` on the current shard, detached, in its main task queue.
/// glommio may poll it before this returns: hold no `RefCell` borrow that
/// `fut` takes across this call.
pub fn spawn<F: Future<Output = ()> + 'static>(fut: F) {
    let task = match MAIN_QUEUE.with(|q| q.get()) {
        Some(queue) => glommio::spawn_local_into(fut, queue).expect("the main task queue exists"),
        None => glommio::spawn_local(fut),
    };
    task.detach();
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

/// Waits until every task ready now in the shard's main queue has run
/// once: a task spawned there runs after them (a queue runs its tasks in
/// order). For a task in a `run_prompt` queue, where `yield_now` would
/// only run itself again.
pub async fn after_ready_tasks() {
    match MAIN_QUEUE.with(|q| q.get()) {
        Some(queue) => glommio::spawn_local_into(async {}, queue).expect("the main task queue exists").await,
        None => yield_now().await,
    }
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

pub fn poll_read(stream: &mut TcpStream, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
    Pin::new(stream).poll_read(cx, buf)
}

/// Waits for writability (glommio tries a plain send first, then polls).
pub fn poll_write(stream: &mut TcpStream, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
    Pin::new(stream).poll_write(cx, buf)
}

/// Writes several frames with one `sendmsg`, never blocking: glommio's
/// stream writes only the first slice of a vectored write.
pub fn send_vectored(stream: &TcpStream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: the descriptor belongs to `stream`, which outlives this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    socket2::SockRef::from(&fd).send_vectored_with_flags(slices, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

/// Sends FIN: the peer sees the end of our stream while we still read.
pub fn shutdown_write(stream: &TcpStream) {
    // SAFETY: as in `send_vectored`.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let _ = socket2::SockRef::from(&fd).shutdown(std::net::Shutdown::Write);
}

pub fn set_nodelay(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
}

/// SO_SNDBUF (the kernel doubles it for its bookkeeping).
pub fn set_send_buffer(stream: &TcpStream, bytes: usize) {
    // SAFETY: as in `send_vectored`.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let _ = socket2::SockRef::from(&fd).set_send_buffer_size(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn send_vectored_writes_all_slices_in_order() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let ex = spawn_executor("rt-test", None, 256 * 1024, move || async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            let n = send_vectored(&stream, &[IoSlice::new(b"ab"), IoSlice::new(b""), IoSlice::new(b"cde")])
                .unwrap();
            assert_eq!(n, 5);
            shutdown_write(&stream);
        })
        .unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).unwrap();
        ex.join().unwrap();
        assert_eq!(got, b"abcde");
    }
}
