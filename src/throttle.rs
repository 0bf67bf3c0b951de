//! Login throttling: per account and per client address, with growing back-off and bounded memory.
//!
//! Each key (an email, or a client address) counts its failed attempts; the count is forgotten
//! after 15 minutes without a failure. At the limit the key is blocked for 30 seconds, and every
//! further failure once the block has passed doubles that, up to 15 minutes: slow enough to stop
//! guessing, never a permanent lockout. A successful login clears the account's count.
//!
//! `governor` was considered: its GCRA quota can neither grow the wait with each failure nor be
//! cleared by a success, which the contract asks for. This structure is small and tested instead.
//! Memory is bounded: idle entries are evicted, and a table at its capacity sheds its least
//! failed entries first, so a flood of distinct emails or addresses cannot grow it without limit.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::ApiError;

/// Failures are forgotten after this long without one.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// The first block; each further failure doubles it, up to `WINDOW`.
const BASE_BLOCK: Duration = Duration::from_secs(30);
/// Entries per table (accounts, addresses) before the table sheds.
pub const DEFAULT_CAPACITY: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    blocked_until: Option<Instant>,
}

impl Entry {
    fn idle(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_failure) > WINDOW
            && self.blocked_until.is_none_or(|until| until <= now)
    }
}

/// One table of keys with their failures.
#[derive(Debug)]
pub struct Limiter<K> {
    max_failures: u32,
    capacity: usize,
    entries: HashMap<K, Entry>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn new(max_failures: u32, capacity: usize) -> Self {
        Self {
            max_failures,
            capacity: capacity.max(1),
            entries: HashMap::new(),
        }
    }

    /// How long `key` must still wait, if it is blocked.
    pub fn blocked_for(&self, key: &K, now: Instant) -> Option<Duration> {
        let entry = self.entries.get(key)?;
        entry
            .blocked_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    /// Counts a failure; blocks the key once it reaches the limit.
    pub fn fail(&mut self, key: K, now: Instant) {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            self.shed(now);
        }
        let entry = self.entries.entry(key).or_insert(Entry {
            failures: 0,
            last_failure: now,
            blocked_until: None,
        });
        if entry.idle(now) {
            entry.failures = 0;
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure = now;
        if entry.failures >= self.max_failures {
            let doublings = (entry.failures - self.max_failures).min(16);
            let block = BASE_BLOCK.saturating_mul(1 << doublings).min(WINDOW);
            entry.blocked_until = Some(now + block);
        }
    }

    pub fn clear(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// Drops every idle entry.
    pub fn purge(&mut self, now: Instant) {
        self.entries.retain(|_, e| !e.idle(now));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Makes room at capacity: idle entries go first; if that is not enough, the tenth of the
    /// table with the fewest failures (blocked keys are the last to go).
    fn shed(&mut self, now: Instant) {
        self.purge(now);
        if self.entries.len() < self.capacity {
            return;
        }
        let mut ranked: Vec<(u32, bool, K)> = self
            .entries
            .iter()
            .map(|(k, e)| {
                (
                    e.failures,
                    e.blocked_until.is_some_and(|u| u > now),
                    k.clone(),
                )
            })
            .collect();
        let drop = (self.capacity / 10).max(1);
        ranked.select_nth_unstable_by_key(drop - 1, |(failures, blocked, _)| (*blocked, *failures));
        for (_, _, key) in ranked.into_iter().take(drop) {
            self.entries.remove(&key);
        }
    }
}

/// The address a client is throttled by: IPv4 as is, IPv6 by its /64 (one host usually holds a
/// whole /64, so per-address limits would otherwise be trivial to dodge).
fn address_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

/// The login throttle of one server.
#[derive(Debug)]
pub struct LoginThrottle {
    enabled: bool,
    accounts: Mutex<Limiter<String>>,
    addresses: Mutex<Limiter<IpAddr>>,
}

impl LoginThrottle {
    /// `max_failures` per account (ten times that per address); 0 turns throttling off.
    pub fn new(max_failures: u32, capacity: usize) -> Self {
        Self {
            enabled: max_failures > 0,
            accounts: Mutex::new(Limiter::new(max_failures, capacity)),
            addresses: Mutex::new(Limiter::new(max_failures.saturating_mul(10), capacity)),
        }
    }

    /// 429 with `Retry-After` while the account or the address is blocked.
    pub fn check(&self, account: &str, addr: Option<IpAddr>) -> Result<(), ApiError> {
        if !self.enabled {
            return Ok(());
        }
        let now = Instant::now();
        let account_wait = lock(&self.accounts).blocked_for(&account.to_owned(), now);
        let address_wait =
            addr.and_then(|a| lock(&self.addresses).blocked_for(&address_key(a), now));
        match account_wait.max(address_wait) {
            Some(wait) => Err(ApiError::TooManyAttempts {
                retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            }),
            None => Ok(()),
        }
    }

    pub fn failure(&self, account: &str, addr: Option<IpAddr>) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        lock(&self.accounts).fail(account.to_owned(), now);
        if let Some(addr) = addr {
            lock(&self.addresses).fail(address_key(addr), now);
        }
    }

    /// A good login clears the account's count (not the address's).
    pub fn success(&self, account: &str) {
        if self.enabled {
            lock(&self.accounts).clear(&account.to_owned());
        }
    }

    /// Drops idle entries (run periodically).
    pub fn purge(&self) {
        let now = Instant::now();
        lock(&self.accounts).purge(now);
        lock(&self.addresses).purge(now);
    }

    /// Entries held: (accounts, addresses).
    pub fn len(&self) -> (usize, usize) {
        (lock(&self.accounts).len(), lock(&self.addresses).len())
    }
}

/// The tables hold no invariant a panic could break halfway, so a poisoned lock is still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_at_the_limit_with_growing_back_off_and_forgets() {
        let mut l = Limiter::new(3, 100);
        let t0 = Instant::now();
        let key = "a".to_owned();
        l.fail(key.clone(), t0);
        l.fail(key.clone(), t0);
        assert_eq!(l.blocked_for(&key, t0), None);
        l.fail(key.clone(), t0);
        assert_eq!(l.blocked_for(&key, t0), Some(Duration::from_secs(30)));
        // After the block, one more failure doubles it.
        let t1 = t0 + Duration::from_secs(31);
        assert_eq!(l.blocked_for(&key, t1), None);
        l.fail(key.clone(), t1);
        assert_eq!(l.blocked_for(&key, t1), Some(Duration::from_secs(60)));
        let t2 = t1 + Duration::from_secs(61);
        l.fail(key.clone(), t2);
        assert_eq!(l.blocked_for(&key, t2), Some(Duration::from_secs(120)));
        // However many failures, a block never exceeds 15 minutes.
        let mut t = t2 + Duration::from_secs(120);
        let mut longest = Duration::ZERO;
        for _ in 0..8 {
            l.fail(key.clone(), t);
            let block = l.blocked_for(&key, t).unwrap();
            longest = longest.max(block);
            t += block;
        }
        assert_eq!(longest, WINDOW);
        // 15 quiet minutes after the last failure and the block's end: all forgotten.
        let quiet = t + WINDOW + Duration::from_secs(1);
        l.fail(key.clone(), quiet);
        assert_eq!(l.blocked_for(&key, quiet), None);
    }

    #[test]
    fn clear_forgets_a_key() {
        let mut l = Limiter::new(1, 100);
        let now = Instant::now();
        l.fail("a".to_owned(), now);
        assert!(l.blocked_for(&"a".to_owned(), now).is_some());
        l.clear(&"a".to_owned());
        assert!(l.blocked_for(&"a".to_owned(), now).is_none());
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_within_capacity_and_keeps_blocked_keys() {
        let mut l = Limiter::new(2, 1_000);
        let now = Instant::now();
        l.fail("victim".to_owned(), now);
        l.fail("victim".to_owned(), now);
        for i in 0..50_000 {
            l.fail(format!("flood-{i}@example.com"), now);
            assert!(l.len() <= 1_000);
        }
        assert!(
            l.blocked_for(&"victim".to_owned(), now).is_some(),
            "flooding must not lift a block"
        );
        // Idle entries are purged.
        l.purge(now + WINDOW + WINDOW + Duration::from_secs(1));
        assert!(l.is_empty());
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(address_key(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn zero_turns_it_off() {
        let t = LoginThrottle::new(0, 10);
        for _ in 0..100 {
            t.failure("a@example.com", None);
        }
        assert!(t.check("a@example.com", None).is_ok());
        assert_eq!(t.len(), (0, 0));
    }

    #[test]
    fn the_address_limit_is_ten_times_the_account_limit() {
        let t = LoginThrottle::new(2, 1_000);
        let addr: IpAddr = "192.0.2.7".parse().unwrap();
        for i in 0..19 {
            t.failure(&format!("user{i}@example.com"), Some(addr));
        }
        assert!(t.check("fresh@example.com", Some(addr)).is_ok());
        t.failure("user19@example.com", Some(addr));
        let err = t.check("fresh@example.com", Some(addr)).unwrap_err();
        assert!(matches!(err, ApiError::TooManyAttempts { retry_after: 30 }));
        assert!(t.check("fresh@example.com", None).is_ok());
    }
}
