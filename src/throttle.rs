//! Login throttling: per account and per client address, with growing back-off and bounded memory.
//!
//! Each key (an email, or a client address) counts its failed attempts; the count is forgotten
//! after 15 minutes without a failure. At the limit the key is blocked for 30 seconds, and every
//! further failure once the block has passed doubles that, up to 15 minutes: slow enough to stop
//! guessing, never a permanent lockout. A successful login clears the account's count.
//! Attempts still being checked count as failures until they end, so a burst sent in parallel
//! gets no more guesses than the same attempts sent one by one.
//!
//! With several replicas on PostgreSQL the counts live in the database instead ([`Throttle::Shared`],
//! `store::postgres::throttle`), with the same rules: attempts are counted up front there, by one
//! atomic upsert per key, and refunded when the password was right, so N replicas give an
//! attacker no more attempts than one.
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
pub const BASE_BLOCK: Duration = Duration::from_secs(30);
/// Entries per table (accounts, addresses) before the table sheds.
pub const DEFAULT_CAPACITY: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    /// Attempts admitted and not yet ended.
    in_flight: u32,
    last_failure: Instant,
    blocked_until: Option<Instant>,
}

impl Entry {
    /// Nothing to remember: no attempt under way, no recent failure, no block.
    fn idle(&self, now: Instant) -> bool {
        self.in_flight == 0
            && (self.failures == 0 || now.saturating_duration_since(self.last_failure) > WINDOW)
            && self.blocked_until.is_none_or(|until| until <= now)
    }
}

/// The wait answered when the attempts already under way would reach the limit.
const BUSY_WAIT: Duration = Duration::from_secs(1);

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

    /// Admits one attempt for `key`, or says how long to wait: while the key is blocked, or
    /// while its recent failures and the attempts under way reach the limit.
    pub fn admit(&mut self, key: K, now: Instant) -> Result<(), Duration> {
        if let Some(wait) = self.blocked_for(&key, now) {
            return Err(wait);
        }
        let max = self.max_failures;
        let entry = self.entry(key, now);
        let recent =
            if entry.failures > 0 && now.saturating_duration_since(entry.last_failure) > WINDOW {
                0
            } else {
                entry.failures
            };
        if recent.saturating_add(entry.in_flight) >= max {
            return Err(BUSY_WAIT);
        }
        entry.in_flight += 1;
        Ok(())
    }

    /// Ends an admitted attempt; a failed one counts.
    pub fn settle(&mut self, key: K, now: Instant, failed: bool) {
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
        }
        if failed {
            self.fail(key, now);
        }
    }

    /// Counts a failure; blocks the key once it reaches the limit.
    pub fn fail(&mut self, key: K, now: Instant) {
        let max = self.max_failures;
        let entry = self.entry(key, now);
        if entry.failures > 0 && now.saturating_duration_since(entry.last_failure) > WINDOW {
            entry.failures = 0;
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure = now;
        if entry.failures >= max {
            let doublings = (entry.failures - max).min(16);
            let block = BASE_BLOCK.saturating_mul(1 << doublings).min(WINDOW);
            entry.blocked_until = Some(now + block);
        }
    }

    /// The key's entry, made (after shedding at capacity) if it has none.
    fn entry(&mut self, key: K, now: Instant) -> &mut Entry {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            self.shed(now);
        }
        self.entries.entry(key).or_insert(Entry {
            failures: 0,
            in_flight: 0,
            last_failure: now,
            blocked_until: None,
        })
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
                    e.in_flight > 0 || e.blocked_until.is_some_and(|u| u > now),
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
pub fn address_key(addr: IpAddr) -> IpAddr {
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

    /// Admits a login attempt (or a check of the current password) for `account` from `addr`,
    /// or answers 429 with `Retry-After`. End it with [`Attempt::failed`] or
    /// [`Attempt::succeeded`]; dropped unended (a server error), it counts for nothing.
    pub fn begin(&self, account: &str, addr: Option<IpAddr>) -> Result<Attempt<'_>, ApiError> {
        let account = account.to_owned();
        let addr = addr.map(address_key);
        if self.enabled {
            let now = Instant::now();
            lock(&self.accounts)
                .admit(account.clone(), now)
                .map_err(too_many)?;
            if let Some(Err(wait)) = addr.map(|a| lock(&self.addresses).admit(a, now)) {
                lock(&self.accounts).settle(account, now, false);
                return Err(too_many(wait));
            }
        }
        // Made only once admitted: dropping it releases what was reserved, nothing else.
        Ok(Attempt {
            throttle: self,
            account,
            addr,
            // With throttling off there is nothing to end.
            ended: !self.enabled,
        })
    }

    /// Counts one request against the address's limit (a forgot-password request), or answers
    /// 429 when the address is at it.
    pub fn count_address(&self, addr: IpAddr) -> Result<(), ApiError> {
        if !self.enabled {
            return Ok(());
        }
        let addr = address_key(addr);
        let now = Instant::now();
        let mut addresses = lock(&self.addresses);
        addresses.admit(addr, now).map_err(too_many)?;
        addresses.settle(addr, now, true);
        Ok(())
    }

    fn end(&self, account: &str, addr: Option<IpAddr>, failed: bool) {
        let now = Instant::now();
        lock(&self.accounts).settle(account.to_owned(), now, failed);
        if let Some(addr) = addr {
            lock(&self.addresses).settle(addr, now, failed);
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

/// An admitted attempt; see [`LoginThrottle::begin`].
#[derive(Debug)]
pub struct Attempt<'a> {
    throttle: &'a LoginThrottle,
    account: String,
    addr: Option<IpAddr>,
    ended: bool,
}

impl Attempt<'_> {
    /// The password was wrong: counts against the account and the address.
    pub fn failed(mut self) {
        if !self.ended {
            self.ended = true;
            self.throttle.end(&self.account, self.addr, true);
        }
    }

    /// The password was right: the account's count is cleared (not the address's).
    pub fn succeeded(mut self) {
        if !self.ended {
            self.ended = true;
            self.throttle.end(&self.account, self.addr, false);
            lock(&self.throttle.accounts).clear(&self.account);
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.throttle.end(&self.account, self.addr, false);
        }
    }
}

/// The login throttle the service uses: this process's memory (SQLite: one process), or the
/// database, shared by every replica (PostgreSQL).
pub enum Throttle {
    Local(LoginThrottle),
    Shared(SharedThrottle),
}

/// The throttle's counts in PostgreSQL.
pub struct SharedThrottle {
    store: crate::store::postgres::PostgresStore,
    max_failures: u32,
}

impl Throttle {
    /// The throttle for this store: shared on PostgreSQL, in memory otherwise. `max_failures`
    /// per account (ten times that per address); 0 turns throttling off.
    pub fn for_store(store: &crate::store::Store, max_failures: u32) -> Self {
        match store {
            crate::store::Store::Postgres(pg) if max_failures > 0 => {
                Throttle::Shared(SharedThrottle {
                    store: pg.clone(),
                    max_failures,
                })
            }
            _ => Throttle::Local(LoginThrottle::new(max_failures, DEFAULT_CAPACITY)),
        }
    }

    /// Admits a login attempt (or a check of the current password) for `account` from `addr`,
    /// or answers 429 with `Retry-After`. End it with [`Guard::failed`] or [`Guard::succeeded`].
    pub async fn begin(&self, account: &str, addr: Option<IpAddr>) -> Result<Guard<'_>, ApiError> {
        match self {
            Throttle::Local(local) => local.begin(account, addr).map(Guard::Local),
            Throttle::Shared(shared) => shared.begin(account, addr).await.map(Guard::Shared),
        }
    }

    /// Counts one request against the client address's limit, as a failed login counts (the
    /// forgot-password request), or answers 429 when the address is at it.
    pub async fn count_address(&self, addr: IpAddr) -> Result<(), ApiError> {
        match self {
            Throttle::Local(local) => local.count_address(addr),
            Throttle::Shared(shared) => {
                let key = crate::store::ThrottleKey {
                    key: format!("address:{}", address_key(addr)),
                    max_failures: shared.max_failures.saturating_mul(10),
                };
                // Counted up front, and never given back.
                match shared
                    .store
                    .throttle_admit(&[key], crate::tokens::now_seconds())
                    .await?
                {
                    Some(wait) => Err(ApiError::TooManyAttempts { retry_after: wait }),
                    None => Ok(()),
                }
            }
        }
    }

    /// Drops idle entries (housekeeping).
    pub async fn purge(&self) {
        match self {
            Throttle::Local(local) => local.purge(),
            Throttle::Shared(shared) => {
                if let Err(e) = shared
                    .store
                    .throttle_purge(crate::tokens::now_seconds())
                    .await
                {
                    tracing::warn!(error = %e, "could not purge the login throttle");
                }
            }
        }
    }
}

impl SharedThrottle {
    fn keys(&self, account: &str, addr: Option<IpAddr>) -> Vec<crate::store::ThrottleKey> {
        use sha2::{Digest, Sha256};
        // The account by a hash: a copy of the table does not list the emails that were tried.
        let digest = Sha256::digest(account.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let mut keys = vec![crate::store::ThrottleKey {
            key: format!("account:{hex}"),
            max_failures: self.max_failures,
        }];
        if let Some(addr) = addr {
            keys.push(crate::store::ThrottleKey {
                key: format!("address:{}", address_key(addr)),
                max_failures: self.max_failures.saturating_mul(10),
            });
        }
        keys
    }

    async fn begin(&self, account: &str, addr: Option<IpAddr>) -> Result<SharedAttempt, ApiError> {
        let keys = self.keys(account, addr);
        match self
            .store
            .throttle_admit(&keys, crate::tokens::now_seconds())
            .await?
        {
            Some(wait) => Err(ApiError::TooManyAttempts { retry_after: wait }),
            None => Ok(SharedAttempt {
                store: self.store.clone(),
                keys,
                ended: false,
            }),
        }
    }
}

/// An admitted attempt, of either throttle.
#[derive(Debug)]
pub enum Guard<'a> {
    Local(Attempt<'a>),
    Shared(SharedAttempt),
}

impl Guard<'_> {
    /// The password was wrong: it counts against the account and the address.
    pub async fn failed(self) {
        match self {
            Guard::Local(a) => a.failed(),
            Guard::Shared(mut a) => {
                // Counted when it was admitted.
                a.ended = true;
            }
        }
    }

    /// The password was right but the login is not over (a second factor follows): the attempt
    /// counts for nothing, and the account's earlier failures stay, so that each password login
    /// does not give a guesser of codes a fresh count.
    pub async fn released(self) {
        match self {
            // Dropped unended: settled as not failed, nothing cleared.
            Guard::Local(a) => drop(a),
            Guard::Shared(mut a) => {
                a.ended = true;
                a.refund(false).await;
            }
        }
    }

    /// The password was right: the account's count is cleared (not the address's, which gets
    /// this attempt back).
    pub async fn succeeded(self) {
        match self {
            Guard::Local(a) => a.succeeded(),
            Guard::Shared(mut a) => {
                a.ended = true;
                a.refund(true).await;
            }
        }
    }
}

/// An attempt counted up front in the database; dropped unended (a server error), it is given
/// back by a task of its own.
#[derive(Debug)]
pub struct SharedAttempt {
    store: crate::store::postgres::PostgresStore,
    keys: Vec<crate::store::ThrottleKey>,
    ended: bool,
}

impl SharedAttempt {
    /// Gives the attempt back; `clear_account` forgets the account's count altogether.
    async fn refund(&self, clear_account: bool) {
        for (i, key) in self.keys.iter().enumerate() {
            if let Err(e) = self
                .store
                .throttle_refund(key, clear_account && i == 0)
                .await
            {
                tracing::warn!(error = %e, "could not give a login attempt back to the throttle");
            }
        }
    }
}

impl Drop for SharedAttempt {
    fn drop(&mut self) {
        if !self.ended {
            let attempt = SharedAttempt {
                store: self.store.clone(),
                keys: std::mem::take(&mut self.keys),
                ended: true,
            };
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { attempt.refund(false).await });
            }
        }
    }
}

fn too_many(wait: Duration) -> ApiError {
    ApiError::TooManyAttempts {
        retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
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
            t.begin("a@example.com", None).unwrap().failed();
        }
        assert!(t.begin("a@example.com", None).is_ok());
        assert_eq!(t.len(), (0, 0));
    }

    #[test]
    fn the_address_limit_is_ten_times_the_account_limit() {
        let t = LoginThrottle::new(2, 1_000);
        let addr: IpAddr = "192.0.2.7".parse().unwrap();
        for i in 0..19 {
            t.begin(&format!("user{i}@example.com"), Some(addr))
                .unwrap()
                .failed();
        }
        assert!(t.begin("fresh@example.com", Some(addr)).is_ok());
        t.begin("user19@example.com", Some(addr)).unwrap().failed();
        let err = t.begin("fresh@example.com", Some(addr)).unwrap_err();
        assert!(matches!(err, ApiError::TooManyAttempts { retry_after: 30 }));
        assert!(t.begin("fresh@example.com", None).is_ok());
    }

    #[test]
    fn attempts_under_way_count_until_they_end() {
        let t = LoginThrottle::new(3, 1_000);
        let burst: Vec<_> = (0..3)
            .map(|_| t.begin("a@example.com", None).unwrap())
            .collect();
        // Three guesses under way: a fourth must wait, whatever the address.
        let addr: IpAddr = "192.0.2.9".parse().unwrap();
        assert!(matches!(
            t.begin("a@example.com", Some(addr)),
            Err(ApiError::TooManyAttempts { retry_after: 1 })
        ));
        // The refused attempt reserved nothing at the address.
        assert_eq!(
            lock(&t.addresses)
                .entries
                .get(&addr)
                .map_or(0, |e| e.in_flight),
            0
        );
        for attempt in burst {
            attempt.failed();
        }
        // Now blocked for real.
        assert!(matches!(
            t.begin("a@example.com", None),
            Err(ApiError::TooManyAttempts { retry_after: 30 })
        ));
    }

    #[test]
    fn an_abandoned_attempt_counts_for_nothing_and_success_clears() {
        let t = LoginThrottle::new(2, 1_000);
        t.begin("a@example.com", None).unwrap().failed();
        drop(t.begin("a@example.com", None).unwrap());
        assert!(t.begin("a@example.com", None).is_ok());
        t.begin("a@example.com", None).unwrap().succeeded();
        t.begin("a@example.com", None).unwrap().failed();
        assert!(
            t.begin("a@example.com", None).is_ok(),
            "the success cleared the earlier failure"
        );
        t.purge();
    }
}
