//! All SQL lives here, behind typed functions: handlers never see a connection.
//!
//! SQLite runs in WAL mode with foreign keys on, a busy timeout and `synchronous = FULL` (a
//! commit that has been answered survives a power cut). The schema (`schema.sql`) is applied at
//! every start; its version is kept in `PRAGMA user_version` and checked, so that a later release
//! can migrate and an older binary refuses a newer database instead of corrupting it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio_rusqlite::Connection;
use tokio_rusqlite::rusqlite::{self, OptionalExtension, Row, TransactionBehavior, params};
use utoipa::ToSchema;

use crate::config::DatabaseLocation;
use crate::error::ApiError;

const SCHEMA: &str = include_str!("../schema.sql");
pub const SCHEMA_VERSION: i64 = 1;
/// How long a statement waits for another connection's lock before the request gets 503. Short:
/// writes queue behind each other on the writer's thread, and each would wait this long.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// A user's role; read on every request, so a change applies to live tokens at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Member,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }

    fn from_db(s: &str) -> rusqlite::Result<Self> {
        match s {
            "member" => Ok(Role::Member),
            "admin" => Ok(Role::Admin),
            other => Err(rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Text,
                format!("unknown role {other:?}").into(),
            )),
        }
    }
}

/// A user as the API shows it (never with its password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(as = UserOut, example = json!({"id": 1, "email": "alice@example.com", "full_name": "Alice", "role": "member", "created_at": "2026-01-01T12:00:00Z"}))]
pub struct User {
    #[schema(example = 1)]
    pub id: i64,
    #[schema(example = "alice@example.com")]
    pub email: String,
    /// Null when not given.
    #[schema(example = "Alice", required = true)]
    pub full_name: Option<String>,
    pub role: Role,
    /// RFC 3339, UTC.
    #[schema(example = "2026-01-01T12:00:00Z")]
    pub created_at: String,
}

/// A user from the columns `u.id, u.email, u.full_name, u.role, u.created_at`, in this order.
/// (Each query writes them out, so its SQL is a constant, not formatted on every call.)
fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: row.get(0)?,
        email: row.get(1)?,
        full_name: row.get(2)?,
        role: Role::from_db(&row.get::<_, String>(3)?)?,
        created_at: row.get(4)?,
    })
}

/// What login needs to check a password.
#[derive(Debug)]
pub struct Credentials {
    pub user_id: i64,
    pub password_hash: String,
}

/// A new session: its id, its user, the hash of its first refresh token and its end.
#[derive(Debug)]
pub struct NewSession<'a> {
    pub id: &'a str,
    pub user_id: i64,
    pub refresh_hash: &'a [u8; 32],
    /// The password hash the login verified: the session is made only while it is still the
    /// user's.
    pub password_hash: String,
    pub now: u64,
    pub expires_at: u64,
}

fn is_unique_violation(err: &rusqlite::Error) -> bool {
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
#[derive(Clone, Debug)]
pub struct Store {
    writer: Connection,
    readers: Arc<[Connection]>,
    next_reader: Arc<AtomicUsize>,
}

/// Why the database could not be opened at start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OpenError(String);

/// Read connections of a file database.
const READERS: usize = 2;

impl Store {
    /// Opens (creating if needed) the database, sets it up and applies the schema.
    pub async fn open(location: &DatabaseLocation) -> Result<Self, OpenError> {
        let location_text = location.to_string();
        let failed = |e: tokio_rusqlite::Error<String>| match e {
            tokio_rusqlite::Error::Error(msg) => {
                OpenError(format!("database at {location_text}: {msg}"))
            }
            other => OpenError(format!("database at {location_text}: {other}")),
        };
        let cannot_open =
            |e: rusqlite::Error| OpenError(format!("cannot open the database at {location}: {e}"));
        let (writer, readers) = match location {
            DatabaseLocation::Memory => {
                // One in-memory database is one connection: it reads and writes.
                let conn = Connection::open_in_memory().await.map_err(cannot_open)?;
                conn.call(|c| configure(c).and_then(|()| migrate(c)))
                    .await
                    .map_err(failed)?;
                (conn.clone(), vec![conn])
            }
            DatabaseLocation::File(path) => {
                create_private(path).map_err(|e| {
                    OpenError(format!("cannot create the database at {location}: {e}"))
                })?;
                make_private(path).map_err(|e| {
                    OpenError(format!(
                        "cannot make the database at {location} private to its owner: {e}"
                    ))
                })?;
                let writer = Connection::open(path).await.map_err(cannot_open)?;
                writer
                    .call(|c| configure(c).and_then(|()| migrate(c)))
                    .await
                    .map_err(failed)?;
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
                (writer, readers)
            }
        };
        Ok(Self {
            writer,
            readers: readers.into(),
            next_reader: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Runs a write on the writer's thread; rusqlite errors become `ApiError`s (locked → 503 …).
    async fn write<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut rusqlite::Connection) -> Result<T, ApiError> + Send + 'static,
    {
        Ok(self.writer.call(f).await?)
    }

    /// Runs a read on one of the readers' threads, in turn.
    async fn read<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut rusqlite::Connection) -> Result<T, ApiError> + Send + 'static,
    {
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        Ok(self.readers[i].call(f).await?)
    }

    /// Closes every connection (at shutdown: the WAL is checkpointed). Later calls fail.
    pub async fn close(&self) -> Result<(), ApiError> {
        for reader in self.readers.iter() {
            // A memory database's reader is the writer, closed below.
            let _ = reader.clone().close().await;
        }
        self.writer
            .clone()
            .close()
            .await
            .map_err(|e| ApiError::Internal(format!("closing the database: {e}")))
    }

    /// Answers when the database does (readiness): a read of each table's first rows, through
    /// the index the login uses, so that a damaged file fails here as it fails for requests
    /// (reading only the schema would not notice). Cheap: a few pages, whatever the size.
    pub async fn ping(&self) -> Result<(), ApiError> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT (SELECT max(id) FROM users),
                        (SELECT email FROM users ORDER BY email LIMIT 1),
                        (SELECT max(expires_at) FROM sessions),
                        (SELECT count(*) FROM (SELECT 1 FROM sessions LIMIT 1)),
                        (SELECT count(*) FROM (SELECT 1 FROM spent_refresh_tokens LIMIT 1))",
            )?
            .query_row([], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    pub async fn email_exists(&self, email: String) -> Result<bool, ApiError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached("SELECT 1 FROM users WHERE email = ?1")?;
            Ok(stmt.exists(params![email])?)
        })
        .await
    }

    /// Inserts a user; an email already present (in any case) is `EmailTaken`, also when two
    /// registrations race: the database's unique index decides.
    pub async fn create_user(
        &self,
        email: String,
        full_name: Option<String>,
        password_hash: String,
        role: Role,
    ) -> Result<User, ApiError> {
        self.write(move |c| {
            // An explicit transaction: its commit reports a failure (a full disk) that a
            // statement's own autocommit would hide once its RETURNING row has been read.
            let tx = c.transaction()?;
            let user = tx
                .prepare_cached(
                    "INSERT INTO users (email, full_name, password_hash, role) VALUES (?1, ?2, ?3, ?4)
                     RETURNING id, email, full_name, role, created_at",
                )?
                .query_row(
                    params![email, full_name, password_hash, role.as_str()],
                    user_from_row,
                )
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        ApiError::EmailTaken
                    } else {
                        e.into()
                    }
                })?;
            tx.commit()?;
            Ok(user)
        })
        .await
    }

    pub async fn credentials(&self, email: String) -> Result<Option<Credentials>, ApiError> {
        self.read(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT id, password_hash FROM users WHERE email = ?1")?;
            Ok(stmt
                .query_row(params![email], |row| {
                    Ok(Credentials {
                        user_id: row.get(0)?,
                        password_hash: row.get(1)?,
                    })
                })
                .optional()?)
        })
        .await
    }

    /// Replaces a hash made with another cost (after a good login), leaving sessions alone.
    /// `false` when the stored hash is no longer `old` (the password changed meanwhile).
    pub async fn rehash_password(
        &self,
        user_id: i64,
        old: String,
        new: String,
    ) -> Result<bool, ApiError> {
        self.write(move |c| {
            let changed = c
                .prepare_cached(
                    "UPDATE users SET password_hash = ?1 WHERE id = ?2 AND password_hash = ?3",
                )?
                .execute(params![new, user_id, old])?;
            Ok(changed == 1)
        })
        .await
    }

    /// Creates a session for a user that still exists and still has the password hash the login
    /// verified, in one statement: a password change (or the user's deletion) that committed
    /// after the check and before this leaves the login without a session.
    pub async fn create_session(&self, s: NewSession<'_>) -> Result<(), ApiError> {
        let (id, user_id, hash, password_hash, now, expires_at) = (
            s.id.to_owned(),
            s.user_id,
            s.refresh_hash.to_vec(),
            s.password_hash,
            to_i64(s.now),
            to_i64(s.expires_at),
        );
        self.write(move |c| {
            let inserted = c
                .prepare_cached(
                    "INSERT INTO sessions (id, user_id, refresh_hash, created_at, expires_at)
                     SELECT ?1, id, ?3, ?4, ?5 FROM users WHERE id = ?2 AND password_hash = ?6",
                )?
                .execute(params![id, user_id, hash, now, expires_at, password_hash])?;
            if inserted == 0 {
                // The user was deleted, or its password changed, since the check.
                return Err(ApiError::InvalidCredentials);
            }
            Ok(())
        })
        .await
    }

    /// The user of a live session: the check behind every authenticated request.
    pub async fn session_user(
        &self,
        session_id: String,
        user_id: i64,
        now: u64,
    ) -> Result<Option<User>, ApiError> {
        let now = to_i64(now);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT u.id, u.email, u.full_name, u.role, u.created_at FROM sessions s JOIN users u ON u.id = s.user_id
                 WHERE s.id = ?1 AND s.user_id = ?2 AND s.expires_at > ?3",
            )?;
            Ok(stmt
                .query_row(params![session_id, user_id, now], user_from_row)
                .optional()?)
        })
        .await
    }
}

/// What presenting a refresh token led to.
#[derive(Debug, PartialEq, Eq)]
pub enum Refresh {
    /// The live token of a session: it is now spent and the new one is live.
    Rotated { user_id: i64, session_id: String },
    /// The token spent last, again within the grace window: the live token, sealed under it.
    Grace {
        user_id: i64,
        session_id: String,
        sealed_successor: Vec<u8>,
    },
    /// A spent token outside the grace window: its session has been revoked.
    Reused { user_id: i64, session_id: String },
    /// Unknown, or its session has ended.
    Invalid,
}

/// The session whose previous refresh token was presented.
struct Rotated {
    session_id: String,
    user_id: i64,
    sealed_successor: Option<Vec<u8>>,
    rotated_at: Option<i64>,
    expires_at: i64,
}

/// Spent refresh tokens remembered per session (reuse of an older one is refused, not detected).
const SPENT_KEPT: i64 = 64;

/// A rotation to attempt: the presented token's hash, its successor's, and the sealed successor.
#[derive(Debug)]
pub struct Rotation {
    pub presented: [u8; 32],
    pub successor: [u8; 32],
    pub sealed_successor: [u8; 32],
    pub now: u64,
    pub grace_seconds: u64,
}

impl Store {
    /// Exchanges a refresh token, in one transaction, so that two racing exchanges of one token
    /// are serialised: the first rotates, the second finds a just-spent token (grace) and never
    /// starts a second chain. Reuse after the grace window deletes the session (and so every
    /// access and refresh token of it).
    pub async fn refresh(&self, r: Rotation) -> Result<Refresh, ApiError> {
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = to_i64(r.now);
            let presented = &r.presented[..];
            let live: Option<(String, i64)> = tx
                .prepare_cached(
                    "SELECT id, user_id FROM sessions WHERE refresh_hash = ?1 AND expires_at > ?2",
                )?
                .query_row(params![presented, now], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            if let Some((session_id, user_id)) = live {
                tx.prepare_cached(
                    "UPDATE sessions SET refresh_hash = ?1, prev_hash = ?2, prev_successor = ?3, rotated_at = ?4
                     WHERE id = ?5",
                )?
                .execute(params![&r.successor[..], presented, &r.sealed_successor[..], now, session_id])?;
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO spent_refresh_tokens (hash, session_id, spent_at) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![presented, session_id, now])?;
                tx.prepare_cached(
                    "DELETE FROM spent_refresh_tokens WHERE session_id = ?1 AND hash NOT IN
                     (SELECT hash FROM spent_refresh_tokens WHERE session_id = ?1
                      ORDER BY spent_at DESC LIMIT ?2)",
                )?
                .execute(params![session_id, SPENT_KEPT])?;
                tx.commit()?;
                return Ok(Refresh::Rotated { user_id, session_id });
            }

            let previous = tx
                .prepare_cached(
                    "SELECT id, user_id, prev_successor, rotated_at, expires_at FROM sessions WHERE prev_hash = ?1",
                )?
                .query_row(params![presented], |row| {
                    Ok(Rotated {
                        session_id: row.get(0)?,
                        user_id: row.get(1)?,
                        sealed_successor: row.get(2)?,
                        rotated_at: row.get(3)?,
                        expires_at: row.get(4)?,
                    })
                })
                .optional()?;
            let in_grace = |p: &Rotated| {
                p.rotated_at.is_some_and(|at| now - at <= to_i64(r.grace_seconds))
                    && p.expires_at > now
                    && p.sealed_successor.is_some()
            };
            let spent_by = match previous {
                Some(p) if in_grace(&p) => {
                    return Ok(Refresh::Grace {
                        user_id: p.user_id,
                        session_id: p.session_id,
                        sealed_successor: p.sealed_successor.unwrap_or_default(),
                    });
                }
                Some(p) => Some((p.session_id, p.user_id)),
                None => tx
                    .prepare_cached(
                        "SELECT s.id, s.user_id FROM spent_refresh_tokens t JOIN sessions s ON s.id = t.session_id
                         WHERE t.hash = ?1",
                    )?
                    .query_row(params![presented], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()?,
            };
            match spent_by {
                Some((session_id, user_id)) => {
                    tx.prepare_cached("DELETE FROM sessions WHERE id = ?1")?
                        .execute(params![session_id])?;
                    tx.commit()?;
                    Ok(Refresh::Reused { user_id, session_id })
                }
                None => Ok(Refresh::Invalid),
            }
        })
        .await
    }

    /// Ends one session (logout): its access and refresh tokens stop working at once.
    pub async fn delete_session(&self, session_id: String) -> Result<(), ApiError> {
        self.write(move |c| {
            c.prepare_cached("DELETE FROM sessions WHERE id = ?1")?
                .execute(params![session_id])?;
            Ok(())
        })
        .await
    }

    pub async fn password_hash(&self, user_id: i64) -> Result<Option<String>, ApiError> {
        self.read(move |c| {
            Ok(
                c.prepare_cached("SELECT password_hash FROM users WHERE id = ?1")?
                    .query_row(params![user_id], |r| r.get(0))
                    .optional()?,
            )
        })
        .await
    }

    /// Sets a new password and ends every session of the user, in one transaction. `false` when
    /// the stored hash is no longer `old` (a concurrent change won).
    pub async fn change_password(
        &self,
        user_id: i64,
        old: String,
        new: String,
    ) -> Result<bool, ApiError> {
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let changed = tx
                .prepare_cached(
                    "UPDATE users SET password_hash = ?1 WHERE id = ?2 AND password_hash = ?3",
                )?
                .execute(params![new, user_id, old])?;
            if changed == 0 {
                return Ok(false);
            }
            tx.prepare_cached("DELETE FROM sessions WHERE user_id = ?1")?
                .execute(params![user_id])?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    /// Sets (or clears, with `None`) the user's full name; the user as stored afterwards.
    pub async fn set_full_name(
        &self,
        user_id: i64,
        full_name: Option<String>,
    ) -> Result<Option<User>, ApiError> {
        self.write(move |c| {
            // An explicit transaction, so that a failed commit is reported (see `create_user`).
            let tx = c.transaction()?;
            let user = tx
                .prepare_cached(
                    "UPDATE users SET full_name = ?1 WHERE id = ?2 RETURNING id, email, full_name, role, created_at",
                )?
                .query_row(params![full_name, user_id], user_from_row)
                .optional()?;
            tx.commit()?;
            Ok(user)
        })
        .await
    }

    /// Housekeeping (run every minute): deletes sessions past their end, and forgets sealed
    /// successors whose grace window is over. How many sessions went.
    pub async fn purge_expired_sessions(
        &self,
        now: u64,
        grace_seconds: u64,
    ) -> Result<usize, ApiError> {
        let (now, grace) = (to_i64(now), to_i64(grace_seconds));
        self.write(move |c| {
            let tx = c.transaction()?;
            let expired = tx
                .prepare_cached("DELETE FROM sessions WHERE expires_at <= ?1")?
                .execute(params![now])?;
            tx.prepare_cached(
                "UPDATE sessions SET prev_successor = NULL
                 WHERE prev_successor IS NOT NULL AND rotated_at < ?1",
            )?
            .execute(params![now - grace])?;
            tx.commit()?;
            Ok(expired)
        })
        .await
    }
}

/// One page of users, ordered by id.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<User>,
    pub total: i64,
}

/// What an admin operation is not allowed to do.
const LAST_ADMIN: &str = "This is the last admin; promote another user first";

fn admins_other_than(tx: &rusqlite::Transaction<'_>, user_id: i64) -> rusqlite::Result<i64> {
    tx.prepare_cached("SELECT count(*) FROM users WHERE role = 'admin' AND id != ?1")?
        .query_row(params![user_id], |r| r.get(0))
}

fn role_of(tx: &rusqlite::Transaction<'_>, user_id: i64) -> Result<Role, ApiError> {
    let role: Option<String> = tx
        .prepare_cached("SELECT role FROM users WHERE id = ?1")?
        .query_row(params![user_id], |r| r.get(0))
        .optional()?;
    match role {
        Some(role) => Ok(Role::from_db(&role)?),
        None => Err(ApiError::NotFound("No user with this id")),
    }
}

impl Store {
    pub async fn list_users(&self, limit: i64, offset: i64) -> Result<Page, ApiError> {
        self.read(move |c| {
            let tx = c.transaction()?;
            let total = tx
                .prepare_cached("SELECT count(*) FROM users")?
                .query_row([], |r| r.get(0))?;
            let items = tx.prepare_cached(
                    "SELECT u.id, u.email, u.full_name, u.role, u.created_at FROM users u ORDER BY u.id LIMIT ?1 OFFSET ?2",
                )?
                .query_map(params![limit, offset], user_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Page { items, total })
        })
        .await
    }

    pub async fn find_user_by_email(&self, email: String) -> Result<Option<User>, ApiError> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT u.id, u.email, u.full_name, u.role, u.created_at FROM users u WHERE u.email = ?1",
            )?
            .query_row(params![email], user_from_row)
            .optional()?)
        })
        .await
    }

    /// Sets a user's role, as the admin `actor_id`; demoting the last admin is refused (409), in
    /// the same transaction as the count, so two admins demoting each other at once cannot leave
    /// none. The actor's own role is read in that transaction too: an admin demoted while this
    /// request was on its way is refused (403), not obeyed.
    pub async fn set_role(
        &self,
        actor_id: i64,
        user_id: i64,
        role: Role,
    ) -> Result<User, ApiError> {
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            require_admin(&tx, actor_id)?;
            let user = change_role(&tx, user_id, role)?;
            tx.commit()?;
            Ok(user)
        })
        .await
    }

    /// Makes a user an admin (the `create-admin` command: the operator needs no role).
    pub async fn promote(&self, user_id: i64) -> Result<User, ApiError> {
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let user = change_role(&tx, user_id, Role::Admin)?;
            tx.commit()?;
            Ok(user)
        })
        .await
    }

    /// Deletes a user and (foreign key cascade) its sessions: the user itself when `actor_id` is
    /// `None`, else as that admin, whose role is checked inside the transaction. Unknown is 404;
    /// the last admin is refused with 409, whether an admin deletes it or it deletes itself.
    pub async fn delete_user(&self, actor_id: Option<i64>, user_id: i64) -> Result<(), ApiError> {
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(actor_id) = actor_id {
                require_admin(&tx, actor_id)?;
            }
            if role_of(&tx, user_id)? == Role::Admin && admins_other_than(&tx, user_id)? == 0 {
                return Err(ApiError::Conflict(LAST_ADMIN));
            }
            tx.prepare_cached("DELETE FROM users WHERE id = ?1")?
                .execute(params![user_id])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }
}

/// The actor of an admin change must still be an admin when the change is written.
fn require_admin(tx: &rusqlite::Transaction<'_>, actor_id: i64) -> Result<(), ApiError> {
    match role_of(tx, actor_id) {
        Ok(Role::Admin) => Ok(()),
        Ok(Role::Member) => Err(ApiError::Forbidden("This needs the admin role")),
        // The admin's account was deleted meanwhile: its token is dead.
        Err(ApiError::NotFound(_)) => Err(ApiError::InvalidToken),
        Err(e) => Err(e),
    }
}

/// Sets a role inside a write transaction, refusing to demote the last admin.
fn change_role(tx: &rusqlite::Transaction<'_>, user_id: i64, role: Role) -> Result<User, ApiError> {
    let current = role_of(tx, user_id)?;
    if current == Role::Admin && role != Role::Admin && admins_other_than(tx, user_id)? == 0 {
        return Err(ApiError::Conflict(LAST_ADMIN));
    }
    Ok(tx
        .prepare_cached(
            "UPDATE users SET role = ?1 WHERE id = ?2 RETURNING id, email, full_name, role, created_at",
        )?
        .query_row(params![role.as_str(), user_id], user_from_row)?)
}

fn to_i64(seconds: u64) -> i64 {
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
    // Migrations from older versions go here, in order, before the idempotent schema.
    tx.execute_batch(SCHEMA).map_err(|e| e.to_string())?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())
}
