//! What one idle TLS session costs ringcast in heap bytes, by allocation
//! size: N handshakes of `ringcast::tls::TlsSession` against rustls
//! clients in memory, the clients dropped, the live bytes counted by a
//! counting allocator. `tls-memory [12|13] [N]` (default TLS 1.3, 1,000).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::sync::Arc;

struct Counting;

const SIZES: usize = 4096;
static LIVE: AtomicIsize = AtomicIsize::new(0);
static BY_SIZE: [AtomicIsize; SIZES] = [const { AtomicIsize::new(0) }; SIZES];

// SAFETY: forwards every call to the system allocator unchanged; the
// counters are atomics and allocate nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Relaxed);
        BY_SIZE[l.size().min(SIZES - 1)].fetch_add(1, Relaxed);
        // SAFETY: the caller's layout, passed on as it came.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Relaxed);
        BY_SIZE[l.size().min(SIZES - 1)].fetch_sub(1, Relaxed);
        // SAFETY: `p` came from `alloc` above with this layout.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let version = match args.next().as_deref() {
        Some("12") => &rustls::version::TLS12,
        None | Some("13") => &rustls::version::TLS13,
        Some(other) => return Err(format!("version {other}: 12 or 13")),
    };
    let n: usize = args.next().map(|a| a.parse().map_err(|e| format!("N: {e}"))).transpose()?.unwrap_or(1000);
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).map_err(|e| e.to_string())?;
    let server =
        ringcast::tls::server_config(key.cert.pem().as_bytes(), key.signing_key.serialize_pem().as_bytes())
            .map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(key.cert.der().clone()).map_err(|e| e.to_string())?;
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[version])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let base: Vec<isize> = BY_SIZE.iter().map(|a| a.load(Relaxed)).collect();
    let before = LIVE.load(Relaxed);
    let (mut sessions, mut clients) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
        let mut c = rustls::ClientConnection::new(client.clone(), name).map_err(|e| e.to_string())?;
        let mut s = ringcast::tls::TlsSession::new(server.clone()).map_err(|e| e.to_string())?;
        for _ in 0..10 {
            let mut to_server = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut to_server).map_err(|e| e.to_string())?;
            }
            let (mut plaintext, mut to_client) = (Vec::new(), Vec::new());
            if !to_server.is_empty() {
                s.read(&mut to_server, &mut plaintext, &mut to_client).map_err(|e| e.to_string())?;
            }
            let mut rest = &to_client[..];
            while !rest.is_empty() {
                c.read_tls(&mut rest).map_err(|e| e.to_string())?;
                c.process_new_packets().map_err(|e| e.to_string())?;
            }
            if s.is_established() && !c.is_handshaking() && !c.wants_write() {
                break;
            }
        }
        if !s.is_established() {
            return Err("the handshake did not finish".into());
        }
        clients.push(c);
        sessions.push(Box::new(s));
    }
    drop(clients);
    let per = (LIVE.load(Relaxed) - before) as f64 / n as f64 - (std::mem::size_of::<usize>() as f64);
    println!(
        "{version:?}: {per:.0} heap bytes per idle session ({n} sessions, each boxed; the engine boxes it with its unsent-ciphertext Vec)"
    );
    for (size, a) in BY_SIZE.iter().enumerate() {
        let count = a.load(Relaxed) - base[size];
        if count >= n as isize / 2 {
            println!("  {size:>5} B x {:.2}", count as f64 / n as f64);
        }
    }
    drop(sessions);
    Ok(())
}
