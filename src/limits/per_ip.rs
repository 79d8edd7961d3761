//! Open connections and upgrade requests per client address, shared by
//! every shard (`limits.max_connections_per_ip`,
//! `limits.handshakes_per_ip_per_s`). IPv6 addresses count per /64: one
//! host usually holds a whole /64. Memory stays bounded: an address is
//! kept while it has a connection or its handshake bucket is refilling
//! (about a second), so the table holds at most the open connections plus
//! a second's worth of handshakes.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::bucket::{Bucket, Rate};

/// Why an address may not open one more connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// At `max_connections_per_ip`.
    Connections(u32),
    /// Over `handshakes_per_ip_per_s`.
    Handshakes(u32),
}

impl std::fmt::Display for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Admission::Connections(n) => {
                write!(f, "too many connections from your address (limits.max_connections_per_ip = {n})")
            }
            Admission::Handshakes(n) => {
                write!(
                    f,
                    "too many connection attempts from your address (limits.handshakes_per_ip_per_s = {n})"
                )
            }
        }
    }
}

#[derive(Default)]
struct Entry {
    open: u32,
    handshakes: Bucket,
}

struct Table {
    entries: HashMap<IpAddr, Entry>,
    /// The size at which idle entries are swept next.
    sweep_at: usize,
    /// When they were last swept (ms since `started`): at most once a
    /// second besides that.
    swept_ms: u64,
}

pub struct PerIp {
    max_open: u32,
    rate: Option<Rate>,
    started: Instant,
    table: Mutex<Table>,
}

/// An open connection's place in its address's count; dropping it frees it.
pub struct IpSlot {
    limits: Arc<PerIp>,
    key: IpAddr,
}

impl std::fmt::Debug for IpSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IpSlot({})", self.key)
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut t = self.limits.lock();
        if let Some(e) = t.entries.get_mut(&self.key) {
            e.open = e.open.saturating_sub(1);
        }
    }
}

const MIN_SWEEP: usize = 1024;

/// The address a count is kept under.
fn key_of(ip: IpAddr) -> IpAddr {
    match super::address::canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

impl PerIp {
    /// None when neither limit is set.
    pub fn new(max_connections_per_ip: u32, handshakes_per_ip_per_s: u32) -> Option<Arc<PerIp>> {
        let rate = Rate::new(handshakes_per_ip_per_s, handshakes_per_ip_per_s);
        (max_connections_per_ip > 0 || rate.is_some()).then(|| {
            Arc::new(PerIp {
                max_open: max_connections_per_ip,
                rate,
                started: Instant::now(),
                table: Mutex::new(Table { entries: HashMap::new(), sweep_at: MIN_SWEEP, swept_ms: 0 }),
            })
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic elsewhere while holding the lock leaves counts, not broken state.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An upgrade request from `ip`: counted against the handshake rate,
    /// then given a connection slot if the address has room.
    pub fn admit(self: &Arc<PerIp>, ip: IpAddr) -> Result<IpSlot, Admission> {
        let key = key_of(ip);
        let now_ms = self.started.elapsed().as_millis() as u64;
        let mut t = self.lock();
        let len = t.entries.len();
        if len >= t.sweep_at || (len >= MIN_SWEEP && now_ms.saturating_sub(t.swept_ms) >= 1000) {
            self.sweep(&mut t, now_ms);
        }
        let e = t.entries.entry(key).or_default();
        if let Some(rate) = self.rate {
            if !e.handshakes.take(rate, now_ms) {
                return Err(Admission::Handshakes(rate.per_s as u32));
            }
        }
        if self.max_open > 0 && e.open >= self.max_open {
            return Err(Admission::Connections(self.max_open));
        }
        e.open += 1;
        Ok(IpSlot { limits: self.clone(), key })
    }

    /// Drops addresses with no connection whose bucket is full again.
    fn sweep(&self, t: &mut Table, now_ms: u64) {
        let rate = self.rate;
        t.entries.retain(|_, e| {
            e.open > 0
                || rate.is_some_and(|r| {
                    // A probe on a copy: can it take a whole burst now?
                    let mut probe = e.handshakes;
                    (0..r.burst as u32).any(|_| !probe.take(r, now_ms))
                })
        });
        t.sweep_at = (t.entries.len() * 2).max(MIN_SWEEP);
        t.swept_ms = now_ms;
    }

    /// Addresses tracked now (for tests and the sweep's bound).
    pub fn tracked(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn connections_per_address_are_counted_until_dropped() {
        let p = PerIp::new(2, 0).unwrap();
        let a = p.admit(ip("192.0.2.1")).unwrap();
        let _b = p.admit(ip("::ffff:192.0.2.1")).unwrap();
        assert_eq!(p.admit(ip("192.0.2.1")).unwrap_err(), Admission::Connections(2));
        assert!(p.admit(ip("192.0.2.2")).is_ok(), "another address is not hit");
        drop(a);
        assert!(p.admit(ip("192.0.2.1")).is_ok());
        assert!(PerIp::new(0, 0).is_none());
    }

    #[test]
    fn ipv6_counts_per_64() {
        let p = PerIp::new(1, 0).unwrap();
        let _a = p.admit(ip("2001:db8:1:2::1")).unwrap();
        assert!(p.admit(ip("2001:db8:1:2:ffff::9")).is_err(), "same /64");
        assert!(p.admit(ip("2001:db8:1:3::1")).is_ok(), "next /64");
    }

    #[test]
    fn handshake_rate_and_a_bounded_table() {
        let p = PerIp::new(0, 3).unwrap();
        let slots: Vec<_> = (0..3).map(|_| p.admit(ip("198.51.100.7")).unwrap()).collect();
        assert_eq!(p.admit(ip("198.51.100.7")).unwrap_err(), Admission::Handshakes(3));
        drop(slots);
        // Many addresses, once each: idle entries are swept, not kept.
        for i in 0..20_000u32 {
            drop(p.admit(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))));
        }
        assert!(p.tracked() <= 20_001);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        for i in 0..MIN_SWEEP as u32 * 2 {
            drop(p.admit(IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i))));
        }
        assert!(p.tracked() < 20_000, "entries whose bucket refilled were swept: {}", p.tracked());
    }
}
