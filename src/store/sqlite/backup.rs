//! `warp-auth-api backup PATH`: a consistent copy of a database a server may be writing to, with
//! SQLite's online backup API.
//!
//! The copy reads one snapshot: a read transaction is held on the source for the whole copy, so
//! the pages copied in later steps are of the same moment as the first ones. In WAL mode (which
//! the server always sets) a reader blocks no writer, so the server goes on registering and
//! logging in while the copy runs; without the held snapshot SQLite would restart the copy at
//! every commit the server makes, and a busy server could keep it from ever finishing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_rusqlite::rusqlite::backup::{Backup, StepResult};
use tokio_rusqlite::rusqlite::{self, Connection, OpenFlags};

/// Pages copied per step (4 MiB at SQLite's default page size), and the pause between steps that
/// leaves the disk to the server for a moment.
const PAGES_PER_STEP: i32 = 1024;
const PAUSE_BETWEEN_STEPS: Duration = Duration::from_millis(10);
/// How long a step may keep finding the source locked before the backup gives up.
const LOCK_PATIENCE: Duration = Duration::from_secs(30);

/// What the copy holds, read back from the copy itself once written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupSummary {
    pub users: i64,
    pub schema_version: i64,
}

/// Why no backup was made. Whatever the cause, no partial copy is left behind.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The target exists: it is never overwritten (it may be the only good copy).
    #[error(
        "{} already exists; nothing was written. Give a new file name (or move the old file away first)",
        .0.display()
    )]
    TargetExists(PathBuf),
    /// There is no database to copy.
    #[error("there is no database at {} (DATABASE_URL) to back up", .0.display())]
    NoSource(PathBuf),
    /// The file is not one of ours: no schema version (a new, empty file, or another program's).
    #[error(
        "the database at {} holds no warp-auth-api data (schema version 0); check DATABASE_URL",
        .0.display()
    )]
    NotOurs(PathBuf),
    /// The target could not be created.
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The source stayed locked for [`LOCK_PATIENCE`].
    #[error("the database at {} stayed locked for {} s; try again", .0.display(), LOCK_PATIENCE.as_secs())]
    Locked(PathBuf),
    /// The copy failed its integrity check (the source is damaged, most likely).
    #[error(
        "the copy at {} fails SQLite's integrity check ({check}); the database itself may be damaged",
        path.display()
    )]
    Damaged { path: PathBuf, check: String },
    /// SQLite failed: `what` says at which step.
    #[error("{what}: {source}")]
    Sqlite {
        what: String,
        source: rusqlite::Error,
    },
}

/// Copies the SQLite database at `source` to a new file `target` (created readable by its owner
/// only), consistent as of one moment even while a server writes to `source`; then reads the copy
/// back (an integrity check, its schema version and its users). `target` must not exist.
/// Blocking: call it off the async runtime's threads.
pub fn backup(source: &Path, target: &Path) -> Result<BackupSummary, BackupError> {
    backup_in_steps(source, target, PAGES_PER_STEP)
}

fn backup_in_steps(
    source: &Path,
    target: &Path,
    pages_per_step: i32,
) -> Result<BackupSummary, BackupError> {
    let sqlite = |what: String| move |source| BackupError::Sqlite { what, source };
    if !source.is_file() {
        return Err(BackupError::NoSource(source.to_path_buf()));
    }
    // Read-write without create: a missing file is not made, and a WAL database's shared-memory
    // file can be used however it was made; `query_only` keeps this connection from writing.
    let src = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite(format!(
        "cannot open the database at {}",
        source.display()
    )))?;
    src.busy_timeout(Duration::from_secs(5))
        .and_then(|()| src.pragma_update(None, "query_only", true))
        .map_err(sqlite(format!("cannot set up {}", source.display())))?;

    // The snapshot: from this read on, the copy sees the database as it is now.
    src.execute_batch("BEGIN DEFERRED")
        .map_err(sqlite("cannot begin reading".to_owned()))?;
    let version: i64 = src
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sqlite(format!("cannot read {}", source.display())))?;
    if version == 0 {
        return Err(BackupError::NotOurs(source.to_path_buf()));
    }
    // A read of a table: the snapshot is surely taken, and the users are there to count later.
    src.query_row("SELECT count(*) FROM users", [], |r| r.get::<_, i64>(0))
        .map_err(sqlite(format!(
            "cannot read the users of {}",
            source.display()
        )))?;

    let target_file = Created::new(target)?;
    let mut dst = Connection::open_with_flags(
        target,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite(format!("cannot open {}", target.display())))?;
    copy(&src, &mut dst, source, pages_per_step)?;
    drop(dst);
    src.execute_batch("COMMIT")
        .map_err(sqlite("cannot end reading".to_owned()))?;
    drop(src);

    let summary = read_back(target)?;
    target_file.keep();
    Ok(summary)
}

/// Copies every page of `src` (inside its read transaction) to `dst`, `pages_per_step` at a time.
fn copy(
    src: &Connection,
    dst: &mut Connection,
    source: &Path,
    pages_per_step: i32,
) -> Result<(), BackupError> {
    let failed = |source| BackupError::Sqlite {
        what: "the copy failed".to_owned(),
        source,
    };
    let backup = Backup::new(src, dst).map_err(failed)?;
    let mut locked_since = None;
    loop {
        match backup.step(pages_per_step).map_err(failed)? {
            StepResult::Done => return Ok(()),
            StepResult::More => locked_since = None,
            // Busy, Locked, and whatever a later rusqlite adds: wait and step again.
            _ => {
                let since = *locked_since.get_or_insert_with(Instant::now);
                if since.elapsed() > LOCK_PATIENCE {
                    return Err(BackupError::Locked(source.to_path_buf()));
                }
            }
        }
        std::thread::sleep(PAUSE_BETWEEN_STEPS);
    }
}

/// Opens the finished copy on its own and reads what it holds. It is made a single file first:
/// the copy carries the source's WAL mode, which would give it `-wal` and `-shm` files beside it
/// whenever it is open.
fn read_back(target: &Path) -> Result<BackupSummary, BackupError> {
    let sqlite = |what: &str| {
        let what = format!("the copy at {}: {what}", target.display());
        move |source| BackupError::Sqlite { what, source }
    };
    let copy = Connection::open_with_flags(
        target,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite("cannot open it"))?;
    copy.query_row("PRAGMA journal_mode = DELETE", [], |r| {
        r.get::<_, String>(0)
    })
    .map_err(sqlite("cannot make it a single file"))?;
    let check: String = copy
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(sqlite("cannot check it"))?;
    if check != "ok" {
        return Err(BackupError::Damaged {
            path: target.to_path_buf(),
            check,
        });
    }
    let schema_version = copy
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sqlite("cannot read its schema version"))?;
    let users = copy
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .map_err(sqlite("cannot count its users"))?;
    copy.close()
        .map_err(|(_, e)| e)
        .map_err(sqlite("cannot close it"))?;
    Ok(BackupSummary {
        users,
        schema_version,
    })
}

/// The target file, created by us (never one that was there): removed again, with any journal
/// SQLite left beside it, unless [`Created::keep`] is called.
struct Created<'a> {
    path: &'a Path,
    keep: bool,
}

impl<'a> Created<'a> {
    /// Creates `path`, empty and readable by its owner only; an existing file (or a link, even a
    /// dangling one) is refused and left alone.
    fn new(path: &'a Path) -> Result<Self, BackupError> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(path) {
            Ok(_) => Ok(Self { path, keep: false }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(BackupError::TargetExists(path.to_path_buf()))
            }
            Err(source) => Err(BackupError::Create {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Created<'_> {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let _ = std::fs::remove_file(self.path);
        for suffix in ["-journal", "-wal", "-shm"] {
            let mut name = self.path.as_os_str().to_owned();
            name.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(dir: &Path, users: i64) -> PathBuf {
        let path = dir.join("app.db");
        let mut c = Connection::open(&path).unwrap();
        c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
            .unwrap();
        super::super::migrate(&mut c).unwrap();
        for i in 0..users {
            c.execute(
                "INSERT INTO users (email, password_hash, role, created_at) VALUES (?1, 'x', 'member', 0)",
                [format!("u{i}@example.com")],
            )
            .unwrap();
        }
        path
    }

    #[test]
    fn a_copy_holds_the_users_is_private_and_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let source = database(dir.path(), 3);
        let target = dir.path().join("copy.db");
        let summary = backup(&source, &target).unwrap();
        assert_eq!(
            summary,
            BackupSummary {
                users: 3,
                schema_version: super::super::SCHEMA_VERSION
            }
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&target).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        for suffix in ["-wal", "-shm", "-journal"] {
            assert!(!dir.path().join(format!("copy.db{suffix}")).exists());
        }
    }

    #[test]
    fn a_copy_in_small_steps_finishes_while_another_connection_writes() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};

        let dir = tempfile::tempdir().unwrap();
        let source = database(dir.path(), 200);
        let target = dir.path().join("copy.db");
        let stop = Arc::new(AtomicBool::new(false));
        let writer = std::thread::spawn({
            let (source, stop) = (source.clone(), stop.clone());
            move || {
                let c = Connection::open(&source).unwrap();
                c.busy_timeout(Duration::from_secs(5)).unwrap();
                let mut written = 0;
                while !stop.load(Ordering::Relaxed) {
                    c.execute(
                        "INSERT INTO users (email, password_hash) VALUES (?1, 'x')",
                        [format!("w{written}@example.com")],
                    )
                    .unwrap();
                    written += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
                written
            }
        });
        // A page per step: without the held snapshot each of the writer's commits would restart
        // the copy, which would then never finish.
        std::thread::sleep(Duration::from_millis(20));
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn({
            let (source, target) = (source.clone(), target.clone());
            move || done.send(backup_in_steps(&source, &target, 1))
        });
        let summary = finished
            .recv_timeout(Duration::from_secs(60))
            .expect("the copy did not finish within 60 s while the writer wrote")
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        stop.store(true, Ordering::Relaxed);
        let written = writer.join().unwrap();
        let pages: i64 = Connection::open(&target)
            .unwrap()
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        assert!(pages > 10, "{pages} pages: not a copy in many steps");
        // One moment's users: those made before it, not every later one.
        assert!(summary.users >= 200, "{summary:?}");
        assert!(
            summary.users < 200 + written,
            "{summary:?}, {written} written"
        );
    }

    #[test]
    fn an_existing_target_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let source = database(dir.path(), 1);
        let target = dir.path().join("old.db");
        std::fs::write(&target, b"keep me").unwrap();
        let err = backup(&source, &target).unwrap_err();
        assert!(matches!(err, BackupError::TargetExists(_)), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
        // The source itself is an existing file too.
        assert!(matches!(
            backup(&source, &source),
            Err(BackupError::TargetExists(_))
        ));
    }

    #[test]
    fn no_source_or_not_ours_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("copy.db");
        let missing = dir.path().join("missing.db");
        assert!(matches!(
            backup(&missing, &target),
            Err(BackupError::NoSource(_))
        ));
        assert!(!missing.exists());
        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(
            backup(&empty, &target),
            Err(BackupError::NotOurs(_))
        ));
        assert!(!target.exists());
    }
}
