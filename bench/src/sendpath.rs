//! What one delivery costs the kernel, by send path (issue 11's deciding
//! number): N loopback TCP connections, one small frame (or several) to each
//! per pass, written
//!
//! - `sendmsg`: one non-blocking `send` syscall per socket (today's engine);
//! - `uring`: one io_uring `Send` SQE per socket, all of a pass submitted in
//!   batches of the ring's size (one `io_uring_enter` each);
//! - `uring-sqpoll`: the same with a kernel SQ polling thread (no enter at all
//!   while it is awake; it burns a core of its own, reported apart).
//!
//! The sending thread is pinned to core 0; its CPU (user + system, from
//! `getrusage(RUSAGE_THREAD)`) per send is the figure. Receivers never read:
//! a pass's bytes fit in the loopback receive buffers. On loopback the
//! receive side's TCP work runs in the sender's context, as it does for the
//! gateway in the fanout benchmark.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use clap::{Args as ClapArgs, ValueEnum};
use io_uring::{opcode, types, IoUring};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Path {
    Sendmsg,
    Uring,
    UringSqpoll,
}

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Send paths to measure, comma-separated, each in turn on the same sockets.
    #[arg(long, value_delimiter = ',', default_values = ["sendmsg", "uring", "sendmsg", "uring"])]
    paths: Vec<Path>,
    /// Connections (each costs two descriptors here).
    #[arg(long, default_value_t = 9000)]
    connections: usize,
    /// Bytes per frame (a 128 B payload delivery frame is ~170 B).
    #[arg(long, default_value_t = 170)]
    frame_bytes: usize,
    /// Frames per socket per pass, written by one send (gathered).
    #[arg(long, default_value_t = 1)]
    frames: usize,
    /// Passes per path (each is one "publication" to every connection).
    #[arg(long, default_value_t = 20)]
    passes: usize,
    /// io_uring submission queue entries.
    #[arg(long, default_value_t = 4096)]
    ring: u32,
}

fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

struct Pair {
    server: TcpStream,
    _client: TcpStream,
}

fn connect_all(n: usize) -> Result<Vec<Pair>, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut pairs = Vec::with_capacity(n);
    for i in 0..n {
        // Spread over 127.0.0.x sources: one source has ~28k ephemeral ports.
        let src = std::net::SocketAddr::from(([127, 0, 0, 1 + (i % 8) as u8], 0));
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .map_err(|e| e.to_string())?;
        s.bind(&src.into()).map_err(|e| format!("bind {src}: {e}"))?;
        s.connect(&addr.into()).map_err(|e| format!("connection {i}: {e} (raise ulimit -n)"))?;
        let (server, _) = listener.accept().map_err(|e| e.to_string())?;
        server.set_nodelay(true).map_err(|e| e.to_string())?;
        server.set_nonblocking(true).map_err(|e| e.to_string())?;
        pairs.push(Pair { server, _client: s.into() });
    }
    Ok(pairs)
}

struct Measured {
    cpu: Duration,
    wall: Duration,
    enters: u64,
}

/// A message of the frames `iov` points to (no address, no control data).
fn message(iov: &[libc::iovec]) -> libc::msghdr {
    libc::msghdr {
        msg_name: std::ptr::null_mut(),
        msg_namelen: 0,
        msg_iov: iov.as_ptr() as *mut libc::iovec,
        msg_iovlen: iov.len(),
        msg_control: std::ptr::null_mut(),
        msg_controllen: 0,
        msg_flags: 0,
    }
}

fn sendmsg_pass(pairs: &[Pair], msg: &libc::msghdr) -> Result<u64, String> {
    for p in pairs {
        // SAFETY: `msg` and the iovecs and frame it points to outlive the call.
        let n = unsafe { libc::sendmsg(p.server.as_raw_fd(), msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n < 0 {
            return Err(format!("sendmsg: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(pairs.len() as u64)
}

fn uring_pass(ring: &mut IoUring, pairs: &[Pair], msg: &libc::msghdr, batch: usize) -> Result<u64, String> {
    let mut enters = 0;
    for chunk in pairs.chunks(batch) {
        {
            let mut sq = ring.submission();
            for p in chunk {
                let sqe = opcode::SendMsg::new(types::Fd(p.server.as_raw_fd()), msg as *const libc::msghdr)
                    .flags(libc::MSG_DONTWAIT as u32 | libc::MSG_NOSIGNAL as u32)
                    .build();
                // SAFETY: `msg` and the buffers it points to outlive the
                // completions, which are all reaped below before returning.
                unsafe { sq.push(&sqe).map_err(|_| "submission queue full".to_string())? };
            }
        }
        ring.submit_and_wait(chunk.len()).map_err(|e| format!("io_uring_enter: {e}"))?;
        enters += 1;
        let mut seen = 0;
        while seen < chunk.len() {
            for cqe in ring.completion() {
                if cqe.result() < 0 {
                    return Err(format!("send: {}", std::io::Error::from_raw_os_error(-cqe.result())));
                }
                seen += 1;
            }
            if seen < chunk.len() {
                ring.submit_and_wait(chunk.len() - seen).map_err(|e| format!("io_uring_enter: {e}"))?;
                enters += 1;
            }
        }
    }
    Ok(enters)
}

pub fn run(a: Args) -> Result<(), String> {
    if let Some(core) = core_affinity::get_core_ids().and_then(|c| c.into_iter().next()) {
        core_affinity::set_for_current(core);
    }
    eprintln!("opening {} loopback connections …", a.connections);
    let pairs = connect_all(a.connections)?;
    let frame = vec![0x81u8; a.frame_bytes];
    let iov: Vec<libc::iovec> = (0..a.frames)
        .map(|_| libc::iovec { iov_base: frame.as_ptr() as *mut libc::c_void, iov_len: frame.len() })
        .collect();
    let msg = message(&iov);
    let budget = 100_000 / (a.frame_bytes * a.frames).max(1);
    if a.passes * a.paths.len() > budget {
        return Err(format!(
            "{} passes × {} paths would overflow the receivers' buffers (never read); at most {budget} in all",
            a.passes,
            a.paths.len()
        ));
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "| path | sends | CPU µs per send | wall ms per pass | io_uring_enter per pass |\n|---|---|---|---|---|"
    );
    for path in &a.paths {
        let mut ring = match path {
            Path::Sendmsg => None,
            Path::Uring => Some(IoUring::new(a.ring).map_err(|e| format!("io_uring: {e}"))?),
            Path::UringSqpoll => Some(
                IoUring::builder()
                    .setup_sqpoll(1000)
                    .build(a.ring)
                    .map_err(|e| format!("io_uring with SQPOLL: {e}"))?,
            ),
        };
        let (cpu0, wall0) = (thread_cpu(), Instant::now());
        let mut m = Measured { cpu: Duration::ZERO, wall: Duration::ZERO, enters: 0 };
        for _ in 0..a.passes {
            m.enters += match &mut ring {
                None => {
                    sendmsg_pass(&pairs, &msg)?;
                    0
                }
                Some(r) => uring_pass(r, &pairs, &msg, a.ring as usize)?,
            };
        }
        m.cpu = thread_cpu() - cpu0;
        m.wall = wall0.elapsed();
        let sends = (a.passes * pairs.len()) as f64;
        let _ = writeln!(
            out,
            "| {path:?} | {sends} | {:.2} | {:.1} | {:.1} |",
            m.cpu.as_secs_f64() * 1e6 / sends,
            m.wall.as_secs_f64() * 1e3 / a.passes as f64,
            m.enters as f64 / a.passes as f64
        );
    }
    Ok(())
}
