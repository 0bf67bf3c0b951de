//! Sessions this process checked lately, on SQLite: the answer of the session check (a user, for
//! a live session) kept until the next write to the database.
//!
//! The check reads the session and its user on every authenticated request; a read transaction
//! costs two `fcntl` lock calls on the WAL index besides the lookups, about a fifth of a `/me`.
//! SQLite serves one process, and every write of this process goes through its one writer
//! ([`super::SqliteStore::write`]), which moves [`Seen::written`]'s generation on when the write
//! is done, before the request that made it is answered. An answer is reused only at the
//! generation it was read at, so any write (a logout, a password change, a role change,
//! disabling, deletion; anything at all) makes every kept answer stale at once: revocation still
//! holds for the next request. A change made by another process (the command line, an operator's
//! SQL) is seen within [`KEPT_FOR`]. Only live sessions are kept, never a refusal.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::store::User;

/// How long an answer is kept at most (for changes made outside this process).
pub const KEPT_FOR: Duration = Duration::from_secs(1);
/// Sessions kept at most; a full cache starts over.
const CAPACITY: usize = 16_384;

#[derive(Debug, Default)]
pub struct Seen {
    generation: AtomicU64,
    entries: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    generation: u64,
    at: Instant,
    user_id: i64,
    expires_at: i64,
    user: User,
}

impl Seen {
    /// The generation now: take it before reading, and keep the answer with it.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A write is done: every answer kept so far is stale.
    pub fn written(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The user of a live session, if an answer read at the current generation, within
    /// [`KEPT_FOR`], says so.
    pub fn get(&self, session_id: &str, user_id: i64, now: i64) -> Option<User> {
        let generation = self.generation();
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.get(session_id)?;
        (entry.generation == generation
            && entry.user_id == user_id
            && entry.expires_at > now
            && entry.at.elapsed() < KEPT_FOR)
            .then(|| entry.user.clone())
    }

    /// Keeps the answer read at `generation`: the session is live until `expires_at`.
    pub fn keep(&self, session_id: &str, generation: u64, expires_at: i64, user: &User) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CAPACITY && !entries.contains_key(session_id) {
            entries.clear();
        }
        entries.insert(
            session_id.to_owned(),
            Entry {
                generation,
                at: Instant::now(),
                user_id: user.id,
                expires_at,
                user: user.clone(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Role;

    fn user(id: i64) -> User {
        User {
            id,
            email: "a@example.com".into(),
            full_name: None,
            role: Role::Member,
            created_at: "2026-01-01T00:00:00Z".into(),
            email_verified: false,
            disabled: false,
            mfa_enabled: false,
        }
    }

    #[test]
    fn an_answer_is_reused_until_any_write() {
        let seen = Seen::default();
        let g = seen.generation();
        seen.keep("s1", g, 100, &user(7));
        assert_eq!(seen.get("s1", 7, 50), Some(user(7)));
        // Another user's id in the token, an expired session, another session: no.
        assert_eq!(seen.get("s1", 8, 50), None);
        assert_eq!(seen.get("s1", 7, 100), None);
        assert_eq!(seen.get("s2", 7, 50), None);
        seen.written();
        assert_eq!(seen.get("s1", 7, 50), None, "stale after a write");
    }

    #[test]
    fn an_answer_read_before_a_write_is_never_reused() {
        let seen = Seen::default();
        // The read started before the write and finished after it.
        let g = seen.generation();
        seen.written();
        seen.keep("s1", g, 100, &user(7));
        assert_eq!(seen.get("s1", 7, 50), None);
    }

    #[test]
    fn an_answer_lives_at_most_a_second() {
        let seen = Seen::default();
        seen.keep("s1", seen.generation(), i64::MAX, &user(7));
        assert!(seen.get("s1", 7, 0).is_some());
        std::thread::sleep(KEPT_FOR + Duration::from_millis(50));
        assert_eq!(seen.get("s1", 7, 0), None);
    }

    #[test]
    fn a_full_cache_starts_over() {
        let seen = Seen::default();
        let g = seen.generation();
        for i in 0..=CAPACITY {
            seen.keep(&format!("s{i}"), g, 100, &user(7));
        }
        assert!(seen.entries.lock().unwrap().len() <= CAPACITY);
        assert!(seen.get(&format!("s{CAPACITY}"), 7, 50).is_some());
    }
}
