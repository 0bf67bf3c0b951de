//! Password rules and bcrypt, run on a small pool of dedicated threads.
//!
//! bcrypt at cost 12 takes a quarter of a second of CPU. Run on the async workers, a handful of
//! logins would stall every other request, so hashing and verifying go to a fixed pool (one thread
//! per CPU) fed by a bounded queue. A full queue answers 503 at once rather than letting waits
//! grow without limit.
//!
//! The pool's threads run at a lower scheduling priority (nice 10) than the request threads: when
//! a burst of logins saturates the CPU, the kernel still gives requests that need no hashing
//! (`/me`, `/health`) most of it, and the logins take what is left, which is all of it when
//! nothing else runs.

use std::collections::HashSet;
use std::sync::LazyLock;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use tokio::sync::oneshot;

use crate::error::ApiError;

/// bcrypt reads at most 72 bytes; a longer password would be silently truncated, so it is refused.
pub const MAX_PASSWORD_BYTES: usize = 72;

/// What is said of a password over [`MAX_PASSWORD_BYTES`].
pub const TOO_LONG: &str =
    "must be at most 72 bytes (bcrypt's limit); multi-byte characters count more than once";

/// Whether bcrypt would have to truncate this password.
pub fn too_long(password: &str) -> bool {
    password.len() > MAX_PASSWORD_BYTES
}

static COMMON_PASSWORDS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../assets/common-passwords.txt")
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
});

/// Checks a new password against the registration rules; the message never contains the password.
pub fn check_new_password(password: &str, min_chars: usize) -> Result<(), String> {
    if too_long(password) {
        return Err(TOO_LONG.to_owned());
    }
    if password.chars().count() < min_chars {
        return Err(format!("must be at least {min_chars} characters"));
    }
    if COMMON_PASSWORDS.contains(password.to_lowercase().as_str()) {
        return Err("is one of the most common passwords; choose another".into());
    }
    Ok(())
}

/// The rules that need the account: a password that contains its email, the email's local part
/// (4 characters or more) or the service's name, ignoring case, is refused. The message never
/// quotes the password.
pub fn check_personal(password: &str, email: &str) -> Result<(), String> {
    let password = password.to_lowercase();
    let email = email.trim().to_lowercase();
    if !email.is_empty() && password.contains(&email) {
        return Err("must not contain the email address".into());
    }
    let local = email.split('@').next().unwrap_or_default();
    if local.chars().count() >= 4 && password.contains(local) {
        return Err("must not contain the name part of the email address".into());
    }
    if ["warp-auth-api", "warpauthapi", "warp_auth_api"]
        .iter()
        .any(|name| password.contains(name))
    {
        return Err("must not contain the service's name".into());
    }
    Ok(())
}

enum Job {
    Hash {
        password: String,
        reply: oneshot::Sender<Result<String, bcrypt::BcryptError>>,
    },
    Verify {
        password: String,
        hash: String,
        /// The verdict, and how long bcrypt took.
        reply: oneshot::Sender<(Result<bool, bcrypt::BcryptError>, Duration)>,
    },
}

/// Hashes and verifies passwords on the pool. Cheap to clone; the threads end with the last clone.
#[derive(Clone)]
pub struct PasswordHasher {
    jobs: Sender<Job>,
    cost: u32,
    /// Verified against when the email is unknown, so that a login takes as long either way.
    dummy_hash: std::sync::Arc<str>,
    /// How long the recent verifies took.
    recent: std::sync::Arc<RecentTimes>,
    /// Every hash's and verify's time, for the metrics.
    times: crate::metrics::HashTimes,
}

/// The durations of the last few verifies, to pad failed ones to the slowest.
#[derive(Default)]
struct RecentTimes {
    times: Mutex<([Duration; 32], usize)>,
}

impl RecentTimes {
    /// Records one duration; the slowest of the recent ones, this one included.
    fn record(&self, took: Duration) -> Duration {
        let mut guard = self.times.lock().unwrap_or_else(|p| p.into_inner());
        let (times, next) = &mut *guard;
        times[*next % times.len()] = took;
        *next = next.wrapping_add(1);
        times.iter().copied().max().unwrap_or(took)
    }
}

/// What [`PasswordHasher::verify`] found. A failure must be answered only after [`Verdict::pad`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Verdict {
    /// Whether the password matched the stored hash.
    pub valid: bool,
    padding: Duration,
}

impl Verdict {
    /// Waits until a failed verify has lasted as long as the slowest recent one (a success
    /// returns at once).
    pub async fn pad(self) {
        if !self.padding.is_zero() {
            tokio::time::sleep(self.padding).await;
        }
    }
}

impl PasswordHasher {
    /// Starts `workers` threads with a queue of `queue` waiting jobs.
    pub fn new(cost: u32, workers: usize, queue: usize) -> Result<Self, ApiError> {
        let workers = workers.max(1);
        let (jobs, inbox) = crossbeam_channel::bounded::<Job>(queue);
        let times = crate::metrics::HashTimes::new();
        for i in 0..workers {
            let inbox = inbox.clone();
            let times = times.clone();
            thread::Builder::new()
                .name(format!("bcrypt-{i}"))
                .spawn(move || {
                    lower_priority();
                    // Ends when every sender is gone.
                    for job in inbox {
                        run(job, cost, &times);
                    }
                })
                .map_err(|e| ApiError::Internal(format!("cannot start a hashing thread: {e}")))?;
        }
        let dummy_hash = bcrypt::hash("warp-auth-api dummy password", cost)
            .map_err(|e| ApiError::Internal(format!("bcrypt: {e}")))?
            .into();
        Ok(Self {
            jobs,
            cost,
            dummy_hash,
            recent: Default::default(),
            times,
        })
    }

    /// One thread per CPU and a queue that a burst of logins fits in.
    pub fn with_cpu_count(cost: u32) -> Result<Self, ApiError> {
        let workers = thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(cost, workers, (16 * workers).max(32))
    }

    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Hash { password, reply })?;
        let result = answer
            .await
            .map_err(|_| ApiError::Internal("hashing thread ended".into()))?;
        result.map_err(|e| ApiError::Internal(format!("bcrypt: {e}")))
    }

    /// Verifies `password` against `hash`, or against a dummy hash when there is none, so that an
    /// unknown email costs the same time as a wrong password. A malformed stored hash is an error.
    ///
    /// A failed verify must also last at least as long as the slowest of the recent verifies:
    /// after a change of `BCRYPT_COST`, hashes of the old cost stay until their users log in
    /// again, and without this an unknown email (checked at the new cost) would answer faster or
    /// slower than a known one. The verdict comes at once; [`Verdict::pad`] waits out the rest, so
    /// a caller can count a failure before that wait, which a client could cut short by hanging up.
    pub async fn verify(
        &self,
        password: String,
        hash: Option<String>,
    ) -> Result<Verdict, ApiError> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.to_string());
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Verify {
            password,
            hash,
            reply,
        })?;
        let (result, took) = answer
            .await
            .map_err(|_| ApiError::Internal("hashing thread ended".into()))?;
        let slowest = self.recent.record(took);
        let valid = match result {
            Ok(ok) => ok && known,
            // A password over 72 bytes: no stored hash can match it.
            Err(bcrypt::BcryptError::Truncation(_)) => false,
            Err(e) => return Err(ApiError::Internal(format!("bcrypt: {e}"))),
        };
        let padding = if valid {
            Duration::ZERO
        } else {
            slowest.saturating_sub(took)
        };
        Ok(Verdict { valid, padding })
    }

    /// Whether a stored hash was made with another cost than the configured one.
    pub fn needs_rehash(&self, hash: &str) -> bool {
        hash.parse::<bcrypt::HashParts>()
            .map(|parts| parts.get_cost() != self.cost)
            .unwrap_or(true)
    }

    /// Jobs waiting for a thread (for the metrics).
    pub fn queue_len(&self) -> usize {
        self.jobs.len()
    }

    /// The timings of the pool's work (for the metrics).
    pub fn hash_times(&self) -> &crate::metrics::HashTimes {
        &self.times
    }

    fn submit(&self, job: Job) -> Result<(), ApiError> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => ApiError::Overloaded,
            TrySendError::Disconnected(_) => ApiError::Internal("hashing pool stopped".into()),
        })
    }
}

/// How much lower than the request threads the hashing threads run.
const NICE: i32 = 10;

/// Lowers the calling thread's priority (on Linux, nice values are per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority only changes the scheduling priority of the calling thread (tid 0);
        // it reads and writes no memory of ours.
        let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) };
        if result != 0 {
            tracing::warn!("could not lower the priority of a hashing thread");
        }
    }
}

fn run(job: Job, cost: u32, times: &crate::metrics::HashTimes) {
    // bcrypt uses the first 72 bytes; validation refuses longer passwords before they get here,
    // and this keeps it so should a caller forget. (bcrypt's "non-truncating" functions would also
    // refuse a password of exactly 72 bytes, which loses nothing, hence the check by hand.)
    match job {
        Job::Hash { password, reply } => {
            let started = Instant::now();
            let result = if too_long(&password) {
                Err(bcrypt::BcryptError::Truncation(password.len()))
            } else {
                bcrypt::hash(password, cost)
            };
            times.observe(started.elapsed());
            let _ = reply.send(result);
        }
        Job::Verify {
            password,
            hash,
            reply,
        } => {
            let started = Instant::now();
            let result = if too_long(&password) {
                Err(bcrypt::BcryptError::Truncation(password.len()))
            } else {
                bcrypt::verify(password, &hash)
            };
            let took = started.elapsed();
            times.observe(took);
            let _ = reply.send((result, took));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert_eq!(check_new_password("MyStrongPass123", 8), Ok(()));
        assert!(check_new_password("short", 8).is_err());
        assert!(
            check_new_password("Password", 8).is_err(),
            "common, case-insensitively"
        );
        assert!(check_new_password("MyStrongPass123", 16).is_err());
        // 24 three-byte characters: 24 characters but 72 bytes, allowed; one more is 75 bytes.
        let at_limit = "€".repeat(24);
        assert_eq!(check_new_password(&at_limit, 8), Ok(()));
        assert!(check_new_password(&"€".repeat(25), 8).is_err());
    }

    #[test]
    fn the_list_is_compiled_in() {
        assert!(COMMON_PASSWORDS.len() >= 4000);
        assert!(COMMON_PASSWORDS.contains("iloveyou"));
    }

    /// A verify with its padding waited out, as a login answers: whether it matched.
    async fn check(
        hasher: &PasswordHasher,
        password: impl Into<String>,
        hash: Option<String>,
    ) -> bool {
        let verdict = hasher.verify(password.into(), hash).await.unwrap();
        verdict.pad().await;
        verdict.valid
    }

    #[tokio::test]
    async fn hash_and_verify_on_the_pool() {
        let hasher = PasswordHasher::new(4, 2, 8).unwrap();
        let hash = hasher.hash("MyStrongPass123".into()).await.unwrap();
        assert!(hash.starts_with("$2b$04$"));
        assert!(check(&hasher, "MyStrongPass123", Some(hash.clone())).await);
        assert!(!check(&hasher, "wrong password", Some(hash.clone())).await);
        assert!(!check(&hasher, "MyStrongPass123", None).await);
        assert!(!hasher.needs_rehash(&hash));
        assert!(PasswordHasher::new(5, 1, 1).unwrap().needs_rehash(&hash));
        // 72 bytes are all used; 73 are refused rather than truncated.
        let at_limit = "€".repeat(24);
        let hash = hasher.hash(at_limit.clone()).await.unwrap();
        assert!(check(&hasher, at_limit.clone(), Some(hash.clone())).await);
        assert!(!check(&hasher, format!("{at_limit}x"), Some(hash)).await);
        assert!(hasher.hash(format!("{at_limit}x")).await.is_err());
    }

    #[tokio::test]
    async fn the_verdict_comes_before_the_padding() {
        let hasher = PasswordHasher::new(4, 1, 8).unwrap();
        let old = bcrypt::hash("MyStrongPass123", 9).unwrap();
        assert!(check(&hasher, "MyStrongPass123", Some(old)).await);
        // A failure is known at once; only its answer waits for the padding.
        let t = Instant::now();
        let verdict = hasher.verify("wrong".into(), None).await.unwrap();
        let known_after = t.elapsed();
        assert!(!verdict.valid);
        verdict.pad().await;
        assert!(
            known_after * 4 < t.elapsed(),
            "verdict after {known_after:?}, answer after {:?}",
            t.elapsed()
        );
    }

    /// The nice value in a /proc `stat` line: field 19, the 17th after the ")" closing the name.
    #[cfg(target_os = "linux")]
    fn nice_of(stat: &str) -> i32 {
        stat.rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(16))
            .and_then(|n| n.parse().ok())
            .unwrap_or(i32::MIN)
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_hashing_threads_run_at_a_lower_priority() {
        let hasher = PasswordHasher::new(4, 2, 4).unwrap();
        // The workers set their priority as they start; give them a moment.
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut niced = 0;
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let path = task.unwrap().path();
            let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            let nice = nice_of(&std::fs::read_to_string(path.join("stat")).unwrap_or_default());
            if name.trim().starts_with("bcrypt-") {
                assert_eq!(nice, NICE, "{name}");
                niced += 1;
            }
        }
        assert!(niced >= 2);
        // The calling thread keeps its priority.
        assert_eq!(
            nice_of(&std::fs::read_to_string("/proc/thread-self/stat").unwrap()),
            0
        );
        drop(hasher);
    }

    #[tokio::test]
    async fn a_failed_verify_lasts_as_long_as_the_slowest_recent_one() {
        let hasher = PasswordHasher::new(4, 1, 8).unwrap();
        // A user whose hash is of an older, higher cost logs in: that verify is slow.
        let old = bcrypt::hash("MyStrongPass123", 9).unwrap();
        let t = Instant::now();
        assert!(check(&hasher, "MyStrongPass123", Some(old)).await);
        let slow = t.elapsed();
        // An unknown email is checked against the dummy hash (cost 4), yet takes as long.
        let t = Instant::now();
        assert!(!check(&hasher, "MyStrongPass123", None).await);
        let unknown = t.elapsed();
        assert!(
            unknown * 10 >= slow * 9,
            "unknown email {unknown:?}, old-cost user {slow:?}"
        );
        // A success is not padded.
        let fast = hasher.hash("An0ther-Strong-Pass".into()).await.unwrap();
        let t = Instant::now();
        assert!(check(&hasher, "An0ther-Strong-Pass", Some(fast)).await);
        assert!(t.elapsed() * 2 < slow, "{:?} vs {slow:?}", t.elapsed());
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_at_once() {
        // One worker, a queue of one: flood it and at least one job must be refused with 503.
        let hasher = PasswordHasher::new(10, 1, 1).unwrap();
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let h = hasher.clone();
                tokio::spawn(async move { h.hash("MyStrongPass123".into()).await })
            })
            .collect();
        let mut overloaded = 0;
        for t in tasks {
            if let Err(ApiError::Overloaded) = t.await.unwrap() {
                overloaded += 1;
            }
        }
        assert!(overloaded >= 1);
    }
}
