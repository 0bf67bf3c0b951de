//! Sessions this process checked lately, on SQLite: the answer of the session check (a user, for
//! a live session) kept while the database has not changed since it was read.
//!
//! The check reads the session and its user on every authenticated request; a read transaction
//! costs two `fcntl` lock calls on the WAL index besides the lookups, about a fifth of a `/me`.
//! Whether anything changed since a read is what SQLite itself asks at the start of every read
//! transaction, before it trusts its page cache: it looks at the header of the WAL index (the
//! `-shm` file, shared memory of every process that has the database open), which every commit
//! rewrites, by any connection of any process (the file format is documented at
//! <https://www.sqlite.org/walformat.html>). [`WalIndex`] reads that header the same way, through
//! SQLite's own mapping of it: two copies, equal when no commit is halfway through writing them.
//! An answer is kept with the header as it was before the read, and reused only while the header
//! is still the same: a logout, a password change, a role change, disabling or deleting (through
//! this service, the command line or an operator's SQL) makes every kept answer stale at once,
//! and revocation holds for the next request. Only live sessions are kept, never a refusal, and
//! none for longer than [`KEPT_FOR`].

use std::collections::HashMap;
use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_rusqlite::rusqlite::{self, ffi};

use crate::store::User;

/// How long an answer is kept at most, changes or not: a bound that does not rely on the header.
pub const KEPT_FOR: Duration = Duration::from_secs(1);
/// Sessions kept at most; a full cache starts over.
const CAPACITY: usize = 16_384;

/// The WAL-index header: two copies of 48 bytes at the start of the `-shm` file.
const HEADER: usize = 48;
/// The size SQLite maps the `-shm` file in (`WALINDEX_PGSZ`); every mapping of a file uses one.
const REGION: i32 = 32_768;
/// The offset of `isInit` in a header copy: 0 until the index is built.
const IS_INIT: usize = 12;

/// One copy of the WAL-index header, as read: equal copies mean the database did not change.
pub type Header = [u8; HEADER];

/// SQLite's mapping of the WAL index of one connection's database.
///
/// Valid while that connection is open and in WAL mode: it is kept next to the connection (see
/// `Inline` in the parent module) and read only by whoever holds that connection.
#[derive(Debug)]
pub struct WalIndex(NonNull<u8>);

// SAFETY: the pointer is to shared memory mapped for as long as its connection is open; it is
// moved between threads with that connection and read only by the thread holding it.
unsafe impl Send for WalIndex {}

impl WalIndex {
    /// The WAL index of `conn`'s main database, through SQLite's own `xShmMap`; `None` when it
    /// has none (an in-memory database, a VFS without shared memory). `conn` should have read
    /// the database in WAL mode already (as `configure` does), so that its log is open and it
    /// gives its shared memory back when it closes.
    ///
    /// # Safety
    ///
    /// The mapping lives as long as the database's connections in this process: the caller
    /// keeps the result with `conn` and calls [`WalIndex::header`] only while `conn` is open.
    pub unsafe fn of(conn: &rusqlite::Connection) -> Option<Self> {
        // SAFETY: `handle` is the open connection's; SQLITE_FCNTL_FILE_POINTER writes the main
        // database's `sqlite3_file` (owned by the connection) into `file`. `xShmMap` with
        // `bExtend = 0` returns the mapping SQLite itself uses for region 0 (mapping it, as
        // SQLite would at its next read, if not yet done), of the region size SQLite uses.
        unsafe {
            let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
            let rc = ffi::sqlite3_file_control(
                conn.handle(),
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_FILE_POINTER,
                (&raw mut file).cast::<c_void>(),
            );
            if rc != ffi::SQLITE_OK || file.is_null() || (*file).pMethods.is_null() {
                return None;
            }
            let methods = &*(*file).pMethods;
            let map = methods.xShmMap.filter(|_| methods.iVersion >= 2)?;
            let mut region: *mut c_void = std::ptr::null_mut();
            if map(file, 0, REGION, 0, &raw mut region) != ffi::SQLITE_OK {
                return None;
            }
            NonNull::new(region.cast::<u8>()).map(Self)
        }
    }

    /// The header now, when both copies agree and the index is built; `None` while a commit is
    /// writing it (then nothing kept can be trusted).
    pub fn header(&self) -> Option<Header> {
        let mut copies = [[0u8; HEADER]; 2];
        // SAFETY: region 0 is at least REGION bytes, mapped while the connection is open (see
        // the type); volatile, as another process writes it. Copy 0 is read first and copy 1
        // second, as SQLite does (a writer writes copy 1 first): equal copies are a whole header.
        unsafe {
            for (i, copy) in copies.iter_mut().enumerate() {
                let start = self.0.as_ptr().add(i * HEADER);
                for (j, byte) in copy.iter_mut().enumerate() {
                    *byte = start.add(j).read_volatile();
                }
                std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            }
        }
        (copies[0] == copies[1] && copies[0][IS_INIT] != 0).then_some(copies[0])
    }
}

#[derive(Debug, Default)]
pub struct Seen {
    entries: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    header: Header,
    at: Instant,
    user_id: i64,
    expires_at: i64,
    user: User,
}

impl Seen {
    /// The user of a live session, if an answer read while the WAL-index header was `header`
    /// (the header now), within [`KEPT_FOR`], says so.
    pub fn get(&self, session_id: &str, user_id: i64, now: i64, header: &Header) -> Option<User> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.get(session_id)?;
        (entry.header == *header
            && entry.user_id == user_id
            && entry.expires_at > now
            && entry.at.elapsed() < KEPT_FOR)
            .then(|| entry.user.clone())
    }

    /// Keeps the answer of a read that began with the WAL-index header `header`: the session is
    /// live until `expires_at`.
    pub fn keep(&self, session_id: &str, header: Header, expires_at: i64, user: &User) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CAPACITY && !entries.contains_key(session_id) {
            entries.clear();
        }
        entries.insert(
            session_id.to_owned(),
            Entry {
                header,
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

    const H1: Header = [1; HEADER];
    const H2: Header = [2; HEADER];

    #[test]
    fn an_answer_is_reused_while_the_header_stays() {
        let seen = Seen::default();
        seen.keep("s1", H1, 100, &user(7));
        assert_eq!(seen.get("s1", 7, 50, &H1), Some(user(7)));
        // Another user's id in the token, an expired session, another session: no.
        assert_eq!(seen.get("s1", 8, 50, &H1), None);
        assert_eq!(seen.get("s1", 7, 100, &H1), None);
        assert_eq!(seen.get("s2", 7, 50, &H1), None);
        assert_eq!(seen.get("s1", 7, 50, &H2), None, "stale after a commit");
    }

    #[test]
    fn an_answer_lives_at_most_a_second() {
        let seen = Seen::default();
        seen.keep("s1", H1, i64::MAX, &user(7));
        assert!(seen.get("s1", 7, 0, &H1).is_some());
        std::thread::sleep(KEPT_FOR + Duration::from_millis(50));
        assert_eq!(seen.get("s1", 7, 0, &H1), None);
    }

    #[test]
    fn a_full_cache_starts_over() {
        let seen = Seen::default();
        for i in 0..=CAPACITY {
            seen.keep(&format!("s{i}"), H1, 100, &user(7));
        }
        assert!(seen.entries.lock().unwrap().len() <= CAPACITY);
        assert!(seen.get(&format!("s{CAPACITY}"), 7, 50, &H1).is_some());
    }

    /// Every commit, by this connection's process or another connection, changes the header;
    /// reads do not.
    #[test]
    fn every_commit_of_any_connection_changes_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let open = || {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
                .unwrap();
            c
        };
        let (reader, other) = (open(), open());
        other.execute_batch("CREATE TABLE t (x)").unwrap();
        // SAFETY: `index` is used only while `reader` is open.
        let index = unsafe { WalIndex::of(&reader) }.expect("a WAL database has an index");
        let before = index.header().expect("a whole header");
        reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
            .unwrap();
        assert_eq!(index.header(), Some(before), "a read changes nothing");
        other.execute("INSERT INTO t VALUES (1)", []).unwrap();
        let after = index.header().expect("a whole header");
        assert_ne!(after, before, "another connection's commit shows");
        // A checkpoint that restarts the log, then a commit into the restarted log.
        other
            .query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
            .unwrap();
        other.execute("INSERT INTO t VALUES (2)", []).unwrap();
        let restarted = index.header().expect("a whole header");
        assert_ne!(restarted, after);
        assert_ne!(restarted, before);
        // A rolled-back transaction changes nothing.
        other
            .execute_batch("BEGIN; INSERT INTO t VALUES (3); ROLLBACK;")
            .unwrap();
        assert_eq!(index.header(), Some(restarted));
    }

    #[test]
    fn an_in_memory_database_has_no_index() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        // SAFETY: nothing is read through the result.
        assert!(unsafe { WalIndex::of(&c) }.is_none());
    }
}
