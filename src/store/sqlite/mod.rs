//! SQLite: the default backend, for one process.
//!
//! WAL mode with foreign keys on, a busy timeout and `synchronous = FULL` (a commit that has been
//! answered survives a power cut); one connection for writes and two for reads, each on a thread
//! of its own (tokio-rusqlite), so reads never wait behind a write that waits for a lock. The
//! migrations under `migrations/sqlite/` are applied at start; the version is kept in
//! `PRAGMA user_version` and checked, so an older binary refuses a newer database.

mod audit;
mod backup;
mod keys;
mod mail;
mod mfa;
mod seen;
mod sessions;
mod users;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_rusqlite::Connection;
use tokio_rusqlite::rusqlite::{self, ErrorCode, Row, TransactionBehavior};

pub use backup::{BackupError, BackupSummary, backup};

use super::{OpenError, Role, StoreError, User};
use crate::config::DatabaseLocation;

/// The migrations, in order: version N is the N-th. `PRAGMA user_version` holds the version a
/// database is at; each start applies the ones after it, in one transaction.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/sqlite/0001_initial.sql"),
    include_str!("../../../migrations/sqlite/0002_signing_keys.sql"),
    include_str!("../../../migrations/sqlite/0003_mail.sql"),
    include_str!("../../../migrations/sqlite/0004_sessions_and_accounts.sql"),
    include_str!("../../../migrations/sqlite/0005_mfa.sql"),
    include_str!("../../../migrations/sqlite/0006_audit.sql"),
    include_str!("../../../migrations/sqlite/0007_counters.sql"),
];
/// The schema version this program makes and reads.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;
/// How long a statement waits for another connection's lock before the request gets 503. Short:
/// writes queue behind each other on the writer's thread, and each would wait this long.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// The columns of a user, in the order [`user_from_row`] reads them, as a literal for
/// `concat!` (every query's SQL stays a constant). Unqualified, so that `RETURNING` can use it.
macro_rules! user_columns {
    () => {
        "id, email, full_name, role, created_at, email_verified_at IS NOT NULL, disabled_at IS NOT NULL, \
         mfa_enabled_at IS NOT NULL"
    };
}
pub(super) use user_columns;

/// A user from the columns of [`user_columns`].
fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: row.get(0)?,
        email: row.get(1)?,
        full_name: row.get(2)?,
        role: role_from_db(&row.get::<_, String>(3)?)?,
        created_at: row.get(4)?,
        email_verified: row.get(5)?,
        disabled: row.get(6)?,
        mfa_enabled: row.get(7)?,
    })
}

pub(super) fn role_from_db(s: &str) -> rusqlite::Result<Role> {
    Role::parse(s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("unknown role {s:?}").into(),
        )
    })
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        match err.sqlite_error_code() {
            Some(
                ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::ReadOnly
                | ErrorCode::CannotOpen
                | ErrorCode::OutOfMemory,
            ) => StoreError::Unavailable(err.to_string()),
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
                StoreError::Corrupt(err.to_string())
            }
            _ => StoreError::Internal(err.to_string()),
        }
    }
}

impl From<tokio_rusqlite::Error<StoreError>> for StoreError {
    fn from(err: tokio_rusqlite::Error<StoreError>) -> Self {
        match err {
            tokio_rusqlite::Error::Error(e) => e,
            other => StoreError::Internal(format!("connection thread: {other}")),
        }
    }
}

pub(super) fn is_unique_violation(err: &rusqlite::Error) -> bool {
    matches!(
        err,
        rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

/// The database handle: one connection for writes and a few for reads, each on a thread of its
/// own. In WAL mode reads never wait for a write, so `/me` and readiness keep answering while a
/// write waits on a lock (another process's, say). Cheap to clone.
///
/// The one read every authenticated request makes (its session and user, by primary key) runs
/// instead on the request's own thread, on one of [`SqliteStore::inline`]'s connections: a point
/// read of cached pages costs a few microseconds, less than the two thread switches of handing it
/// to a reader thread and back. Nothing that scans, and no write, runs there.
#[derive(Clone)]
pub struct SqliteStore {
    writer: Connection,
    readers: Arc<[Connection]>,
    next_reader: Arc<AtomicUsize>,
    /// Connections for the point reads of every request, each used by one thread at a time
    /// (empty for an in-memory database, whose one connection is the writer's; `None` once
    /// closed).
    inline: Arc<[Mutex<Option<Inline>>]>,
    /// Session checks answered lately, while the database stays unchanged ([`seen`]).
    seen: Arc<seen::Seen>,
    /// The connection [`SqliteStore::checkpoint`] copies the log into the database file on (a
    /// file database's; `None` in memory).
    checkpointer: Option<Connection>,
}

/// What a checkpoint found: pages in the log, and how many of them are in the database file.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub logged: i64,
    pub copied: i64,
}

/// A connection for point reads, with its WAL index (which lives as long as it).
struct Inline {
    conn: rusqlite::Connection,
    wal_index: Option<seen::WalIndex>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("readers", &self.readers.len())
            .field("inline", &self.inline.len())
            .finish_non_exhaustive()
    }
}

/// Read connections of a file database.
const READERS: usize = 2;
/// The log's length (pages) at which the writer checkpoints it itself (SQLite's default: 1000).
const WRITER_CHECKPOINT_PAGES: i64 = 8192;

impl SqliteStore {
    /// Opens (creating if needed) the database, sets it up and applies the migrations.
    pub async fn open(location: &DatabaseLocation) -> Result<Self, OpenError> {
        let location_text = location.to_string();
        let failed = |e: tokio_rusqlite::Error<String>| match e {
            tokio_rusqlite::Error::Error(msg) => {
                OpenError::new(format!("database at {location_text}"), msg)
            }
            other => OpenError::new(format!("database at {location_text}"), other),
        };
        let cannot_open = |e: rusqlite::Error| {
            OpenError::new(format!("cannot open the database at {location}"), e)
        };
        let (writer, readers, inline, checkpointer) = match location {
            DatabaseLocation::Memory => {
                // One in-memory database is one connection: it reads and writes.
                let conn = Connection::open_in_memory().await.map_err(cannot_open)?;
                conn.call(|c| configure(c).and_then(|()| migrate(c)))
                    .await
                    .map_err(failed)?;
                (conn.clone(), vec![conn], Vec::new(), None)
            }
            DatabaseLocation::Postgres(pg) => {
                return Err(OpenError::new(
                    format!("database at {pg}"),
                    "a PostgreSQL URL is not a SQLite database",
                ));
            }
            DatabaseLocation::File(path) => {
                create_private(path).map_err(|e| {
                    OpenError::new(format!("cannot create the database at {location}"), e)
                })?;
                make_private(path).map_err(|e| {
                    OpenError::new(
                        format!("cannot make the database at {location} private to its owner"),
                        e,
                    )
                })?;
                let writer = Connection::open(path).await.map_err(cannot_open)?;
                writer
                    .call(|c| {
                        configure(c)?;
                        migrate(c)?;
                        // Commits only append to the log: the checkpoints run on a connection of
                        // their own ([`SqliteStore::checkpoint`]). The writer makes one itself only
                        // when the log has grown this long anyway (they fell behind, or none run).
                        c.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)
                            .map_err(|e| e.to_string())
                    })
                    .await
                    .map_err(failed)?;
                let checkpointer = Connection::open(path).await.map_err(cannot_open)?;
                checkpointer.call(configure).await.map_err(failed)?;
                let mut readers = Vec::with_capacity(READERS);
                for _ in 0..READERS {
                    let reader = Connection::open(path).await.map_err(cannot_open)?;
                    reader
                        .call(|c| {
                            configure(c)?;
                            c.pragma_update(None, "query_only", true)
                                .map_err(|e| e.to_string())
                        })
                        .await
                        .map_err(failed)?;
                    readers.push(reader);
                }
                // One per thread that may serve requests at once (tokio's workers: the cores).
                let threads =
                    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 16));
                let mut inline = Vec::with_capacity(threads);
                for _ in 0..threads {
                    let mut c = rusqlite::Connection::open(path).map_err(cannot_open)?;
                    configure(&mut c)
                        .and_then(|()| {
                            // Never wait on the request's thread: a read that would wait for a
                            // lock (rare for a WAL reader: a recovery, another process's exclusive
                            // lock) goes to a reader thread instead.
                            c.busy_timeout(Duration::ZERO)
                                .and_then(|()| c.pragma_update(None, "query_only", true))
                                .map_err(|e| e.to_string())
                        })
                        .map_err(|e| OpenError::new(format!("database at {location_text}"), e))?;
                    // SAFETY: kept in `Inline` beside `c`, read only through it, while `c` is
                    // open (`close` takes both out together); `configure` has read in WAL mode.
                    let wal_index = unsafe { seen::WalIndex::of(&c) };
                    inline.push(Mutex::new(Some(Inline { conn: c, wal_index })));
                }
                (writer, readers, inline, Some(checkpointer))
            }
        };
        Ok(Self {
            writer,
            readers: readers.into(),
            next_reader: Arc::new(AtomicUsize::new(0)),
            inline: inline.into(),
            seen: Arc::default(),
            checkpointer,
        })
    }

    /// Runs a short point read on the calling thread (see [`SqliteStore`]), on a free inline
    /// connection. `None` when it did not run there (an in-memory database, every inline
    /// connection taken, or the database busy): the caller then reads through a reader thread,
    /// which may wait; the request's thread never does.
    /// `f` is also given the header of the database's WAL index as it is before the read
    /// ([`seen`]), when there is a whole one.
    pub(super) fn read_inline<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection, Option<seen::Header>) -> Result<T, StoreError>,
    ) -> Option<Result<T, StoreError>> {
        let slot = self.inline.iter().find_map(|c| c.try_lock().ok())?;
        let inline = slot.as_ref()?;
        let header = inline.wal_index.as_ref().and_then(seen::WalIndex::header);
        match f(&inline.conn, header) {
            Err(StoreError::Unavailable(_)) => None,
            done => Some(done),
        }
    }

    /// Runs a write on the writer's thread.
    pub(super) async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    {
        Ok(self.writer.call(f).await?)
    }

    /// Runs a read on one of the readers' threads, in turn.
    pub(super) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        Ok(self.readers[i].call(f).await?)
    }

    /// Copies what the log (the `-wal` file) holds into the database file, as far as no reader
    /// still needs it: a passive checkpoint, which neither waits for nor holds up a write or a
    /// read. Answers the pages in the log and how many of them are in the file now (none for an
    /// in-memory database).
    pub async fn checkpoint(&self) -> Result<Checkpoint, StoreError> {
        let Some(checkpointer) = &self.checkpointer else {
            return Ok(Checkpoint::default());
        };
        Ok(checkpointer
            .call(|c| {
                c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok(Checkpoint {
                        logged: r.get(1)?,
                        copied: r.get(2)?,
                    })
                })
                .map_err(StoreError::from)
            })
            .await?)
    }

    /// Closes every connection (at shutdown: the WAL is checkpointed). Later calls fail.
    pub async fn close(&self) -> Result<(), StoreError> {
        if let Some(checkpointer) = &self.checkpointer {
            let _ = checkpointer.clone().close().await;
        }
        for slot in self.inline.iter() {
            let inline = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            // Its WAL index is SQLite's mapping, which goes with the connection.
            if let Some(Inline { conn, .. }) = inline {
                let _ = conn.close();
            }
        }
        for reader in self.readers.iter() {
            // A memory database's reader is the writer, closed below.
            let _ = reader.clone().close().await;
        }
        self.writer
            .clone()
            .close()
            .await
            .map_err(|e| StoreError::Internal(format!("closing the database: {e}")))
    }

    /// Answers when the database does (readiness): a read of each table's first rows, through
    /// the index the login uses, so that a damaged file fails here as it fails for requests
    /// (reading only the schema would not notice). Cheap: a few pages, whatever the size.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT (SELECT max(id) FROM users),
                        (SELECT email FROM users ORDER BY email LIMIT 1),
                        (SELECT max(expires_at) FROM sessions),
                        (SELECT count(*) FROM (SELECT 1 FROM sessions LIMIT 1)),
                        (SELECT count(*) FROM (SELECT 1 FROM spent_refresh_tokens LIMIT 1)),
                        (SELECT max(id) FROM mail_outbox)",
            )?
            .query_row([], |_| Ok(()))?;
            Ok(())
        })
        .await
    }
}

pub(super) fn to_i64(seconds: u64) -> i64 {
    i64::try_from(seconds).unwrap_or(i64::MAX)
}

/// Creates the database file readable by its owner only (it holds password hashes); SQLite
/// gives its -wal and -shm files the same mode.
fn create_private(path: &std::path::Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes the database file and its `-wal` and `-shm` files, where they exist, readable and
/// writable by their owner only, when they were found looser (a file copied in, or made by an
/// older release); each change is logged.
fn make_private(path: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut files = vec![path.to_path_buf()];
        for suffix in ["-wal", "-shm"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            files.push(name.into());
        }
        for file in files {
            let mode = match std::fs::metadata(&file) {
                Ok(meta) => meta.permissions().mode() & 0o777,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if mode & 0o077 != 0 {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
                tracing::warn!(
                    file = %file.display(),
                    was = format!("{mode:04o}"),
                    "the database file was open to other users; it is now 0600 (owner only)"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn configure(c: &mut rusqlite::Connection) -> Result<(), String> {
    c.busy_timeout(BUSY_TIMEOUT).map_err(|e| e.to_string())?;
    // In memory the journal mode stays "memory"; on disk it must become WAL.
    let mode: String = c
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if mode != "wal" && mode != "memory" {
        return Err(format!("cannot switch to WAL journal mode (got {mode})"));
    }
    c.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;")
        .map_err(|e| e.to_string())
}

fn migrate(c: &mut rusqlite::Connection) -> Result<(), String> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| e.to_string())?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if version > SCHEMA_VERSION {
        return Err(format!(
            "its schema version is {version}, newer than this program's {SCHEMA_VERSION}; run a newer warp-auth-api"
        ));
    }
    if version == 0 {
        let tables: i64 = tx
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| e.to_string())?;
        if tables > 0 {
            return Err(
                "it holds tables that warp-auth-api did not create (a database of another \
                 program?); point DATABASE_URL at a new file"
                    .into(),
            );
        }
    }
    let start = usize::try_from(version).unwrap_or(0);
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(start) {
        tx.execute_batch(migration)
            .map_err(|e| format!("migration {}: {e}", i + 1))?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(c: &rusqlite::Connection) -> Vec<(String, String, Option<String>)> {
        let mut stmt = c
            .prepare("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn the_migrations_make_the_schema_that_schema_sql_shows() {
        let mut migrated = rusqlite::Connection::open_in_memory().unwrap();
        migrate(&mut migrated).unwrap();
        let described = rusqlite::Connection::open_in_memory().unwrap();
        described
            .execute_batch(include_str!("../../../schema.sql"))
            .unwrap();
        assert_eq!(objects(&migrated), objects(&described));
        let version: i64 = migrated
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        // Applying them again changes nothing.
        migrate(&mut migrated).unwrap();
    }

    /// Commits only append to the log; `checkpoint` copies it into the file, all of it when no
    /// reader needs an older page.
    #[tokio::test]
    async fn commits_leave_the_copying_to_the_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let location = DatabaseLocation::File(dir.path().join("app.db"));
        let store = SqliteStore::open(&location).await.unwrap();
        store.checkpoint().await.unwrap();
        store
            .write(|c| Ok(c.execute_batch("CREATE TABLE scratch (x INTEGER)")?))
            .await
            .unwrap();
        // More commits than SQLite's default auto-checkpoint (1000 pages) would let pass.
        for i in 0..1500 {
            store
                .write(move |c| {
                    Ok(c.execute("INSERT INTO scratch VALUES (?1)", [i])
                        .map(drop)?)
                })
                .await
                .unwrap();
        }
        let done = store.checkpoint().await.unwrap();
        assert!(
            done.logged > 1500,
            "the writer copied the log itself: {done:?}"
        );
        assert_eq!(done.copied, done.logged);
        store.close().await.unwrap();
        let memory = SqliteStore::open(&DatabaseLocation::Memory).await.unwrap();
        assert_eq!(memory.checkpoint().await.unwrap(), Checkpoint::default());
    }
}
