//! Free loopback port selection.
//!
//! Client ports are drawn from `10000..20000`, so the cluster bus port (`port + 10000`) lands in
//! `20000..30000`. Both ranges are disjoint from each other (a client port can never be another
//! node's bus port), never include 6379/16379, and stay below Linux's default ephemeral range
//! (`32768..60999`), so outgoing connections of other tests do not steal them.
//!
//! Choice is random per call (seeded per process and per call), a process-wide set avoids handing
//! the same port out twice inside one process, and every candidate is checked by binding
//! `127.0.0.1:port` and `127.0.0.1:port+10000`. That check is racy against *other* processes
//! (cargo nextest runs tests in parallel processes), so callers must still retry when the server
//! then fails with "Address already in use"; [`crate::RedisServer`] and [`crate::RedisCluster`] do.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Lowest client port handed out.
pub const PORT_LOW: u16 = 10_000;
/// One past the highest client port handed out.
pub const PORT_HIGH: u16 = 20_000;
/// Offset of the Redis Cluster bus port.
pub const BUS_OFFSET: u16 = 10_000;

static CALLS: AtomicU64 = AtomicU64::new(0);
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A fresh pseudo-random number: std's randomly keyed SipHash over pid, time and a call counter
/// (unique across parallel test processes without a `rand` dependency).
pub(crate) fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    h.write_u128(nanos);
    h.finish()
}

/// True when `127.0.0.1:port` can be bound right now.
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// `n` distinct client ports for which both the port and the bus port (`port + 10000`) were free
/// when checked. Never returns 6379. Panics only if no free ports can be found at all.
pub fn pick_ports(n: usize) -> Vec<u16> {
    let span = u64::from(PORT_HIGH - PORT_LOW);
    let mut out = Vec::with_capacity(n);
    let mut tries = 0u32;
    while out.len() < n {
        tries += 1;
        assert!(
            tries < 100_000,
            "larder-testkit: could not find {n} free loopback ports in {PORT_LOW}..{PORT_HIGH}"
        );
        let offset = u16::try_from(random_u64() % span).expect("offset < span fits in u16");
        let port = PORT_LOW + offset;
        if port == 6379 || out.contains(&port) {
            continue;
        }
        if !claim(port) {
            continue;
        }
        if port_is_free(port) && port_is_free(port + BUS_OFFSET) {
            out.push(port);
        }
    }
    out
}

/// Record `port` as handed out in this process; false if it already was.
fn claim(port: u16) -> bool {
    let mut guard = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let set = guard.get_or_insert_with(HashSet::new);
    // Long-running processes may exhaust the range; forget old ports (their servers are long gone
    // or still bound, in which case the bind check rejects them).
    if set.len() > usize::from(PORT_HIGH - PORT_LOW) * 3 / 4 {
        set.clear();
    }
    set.insert(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_distinct_ports_in_range() {
        let ports = pick_ports(50);
        let set: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(set.len(), 50);
        for p in ports {
            assert!((PORT_LOW..PORT_HIGH).contains(&p));
            assert_ne!(p, 6379);
        }
    }

    #[test]
    fn bound_port_is_not_free() {
        let l = TcpListener::bind(("127.0.0.1", 0)).expect("bind an ephemeral port");
        let port = l.local_addr().expect("local addr").port();
        assert!(!port_is_free(port));
        drop(l);
    }
}
