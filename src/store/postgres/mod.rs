//! PostgreSQL: the backend for several replicas on one database.
//!
//! A pool of `DATABASE_MAX_CONNECTIONS` connections (deadpool-postgres over tokio-postgres, TLS
//! by rustls when the URL asks for it). Everything that must hold across replicas is decided by
//! the database: the unique index on `lower(email)` decides racing registrations, row locks
//! serialise racing refreshes and a login racing a password change, a transaction-level advisory
//! lock serialises role changes (so two admins on two replicas cannot demote each other at once),
//! and the login throttle is a table updated by one atomic upsert per key.
//!
//! The migrations under `migrations/postgres/` are applied at start, in one transaction, under
//! an advisory lock taken before the version is read, so replicas starting at the same moment
//! apply each one once. A database PostgreSQL cannot reach, or one restarting, is a 503
//! (`StoreError::Unavailable`); the pool drops dead connections and makes new ones once the
//! server is back.

mod audit;
mod keys;
mod mail;
mod mfa;
mod sessions;
mod throttle;
mod users;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Row, Transaction};

use super::{OpenError, Role, StoreError, User};
use crate::config::PostgresLocation;

/// The migrations, in order: version N is the N-th.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/postgres/0001_initial.sql"),
    include_str!("../../../migrations/postgres/0002_signing_keys.sql"),
    include_str!("../../../migrations/postgres/0003_mail.sql"),
    include_str!("../../../migrations/postgres/0004_sessions_and_accounts.sql"),
    include_str!("../../../migrations/postgres/0005_mfa.sql"),
    include_str!("../../../migrations/postgres/0006_audit.sql"),
    include_str!("../../../migrations/postgres/0007_counters.sql"),
];
/// The schema version this program makes and reads.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// The advisory lock key of migrations (any constant the service owns: "warpauth" in ASCII).
const MIGRATION_LOCK: i64 = 0x7761_7270_6175_7468;
/// The advisory lock key of role changes and deletions (the last-admin rule).
const ADMIN_LOCK: i64 = MIGRATION_LOCK + 1;
/// The advisory lock key of signing-key changes (one first key; one rotation at a time).
const KEYS_LOCK: i64 = MIGRATION_LOCK + 2;

/// How long a request waits for a pooled connection, or for a new one to connect, before 503.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// How long a statement may run before it is cancelled (a stuck lock must not hold a request).
const STATEMENT_TIMEOUT: &str = "10s";
/// How long the start waits for the database to come up (a container started alongside).
const START_WAIT: Duration = Duration::from_secs(30);

/// The PostgreSQL store. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.pool.status();
        f.debug_struct("PostgresStore")
            .field("size", &status.size)
            .field("available", &status.available)
            .finish()
    }
}

impl PostgresStore {
    /// Connects (retrying for a while if the server is not up yet) and applies the migrations.
    pub async fn open(
        location: &PostgresLocation,
        max_connections: usize,
    ) -> Result<Self, OpenError> {
        let mut pg = location.config().clone();
        pg.application_name("warp-auth-api");
        pg.options(format!("-c statement_timeout={STATEMENT_TIMEOUT}"));
        pg.connect_timeout(POOL_WAIT);
        let manager = Manager::from_config(
            pg,
            tls_connector(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .recycle_timeout(Some(POOL_WAIT))
            .build()
            .map_err(|e| OpenError::new(format!("database at {location}"), e))?;
        let store = Self { pool };
        let started = std::time::Instant::now();
        loop {
            match store.migrate().await {
                Ok(()) => return Ok(store),
                Err(StoreError::Unavailable(cause)) if started.elapsed() < START_WAIT => {
                    tracing::warn!(database = %location, cause = %cause, "the database does not answer yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(OpenError::new(format!("database at {location}"), e)),
            }
        }
    }

    /// Applies the migrations the database lacks, in one transaction, under the migration lock.
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Before the version is read: a second replica waits here, then finds it applied.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    integer     PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
        let version: i32 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM schema_migrations",
                &[],
            )
            .await?
            .get(0);
        if version > SCHEMA_VERSION {
            return Err(StoreError::Internal(format!(
                "its schema version is {version}, newer than this program's {SCHEMA_VERSION}; run a newer warp-auth-api"
            )));
        }
        if version == 0 {
            let foreign: i64 = tx
                .query_one(
                    "SELECT count(*) FROM information_schema.tables
                     WHERE table_schema = current_schema() AND table_name IN ('users', 'sessions')",
                    &[],
                )
                .await?
                .get(0);
            if foreign > 0 {
                return Err(StoreError::Internal(
                    "it holds tables that warp-auth-api did not create (a database of another \
                     program?); point DATABASE_URL at a new database"
                        .into(),
                ));
            }
        }
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let number = i32::try_from(i + 1).unwrap_or(i32::MAX);
            tx.batch_execute(migration)
                .await
                .map_err(|e| StoreError::Internal(format!("migration {number}: {e}")))?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[&number],
            )
            .await?;
            tracing::info!(version = number, "database migrated");
        }
        tx.commit().await?;
        Ok(())
    }

    /// A connection from the pool (503 when none comes within [`POOL_WAIT`]).
    pub(super) async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => StoreError::from(e),
            PoolError::Timeout(_) => StoreError::Unavailable(format!(
                "no database connection within {} s",
                POOL_WAIT.as_secs()
            )),
            other => StoreError::Unavailable(other.to_string()),
        })
    }

    /// Closes the pool (at shutdown).
    pub async fn close(&self) -> Result<(), StoreError> {
        self.pool.close();
        Ok(())
    }

    /// A read of each table's first rows (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT (SELECT max(id) FROM users),
                        (SELECT max(expires_at) FROM sessions),
                        (SELECT count(*) FROM (SELECT 1 FROM spent_refresh_tokens LIMIT 1) s),
                        (SELECT count(*) FROM (SELECT 1 FROM login_throttle LIMIT 1) t),
                        (SELECT max(id) FROM mail_outbox)",
            )
            .await?;
        client.query_one(&stmt, &[]).await?;
        Ok(())
    }
}

/// TLS for `sslmode=prefer` / `require`: rustls with the system's certificate authorities (the
/// server's certificate is verified; add a private CA to the system store). `sslmode=disable`
/// never uses it.
fn tls_connector() -> tokio_postgres_rustls::MakeRustlsConnect {
    // rustls needs one process-wide crypto provider; another part may have installed it already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match tokio_postgres_rustls::MakeRustlsConnect::with_native_certs() {
        Ok((connector, _partial_errors)) => connector,
        Err(errors) => {
            tracing::warn!(
                errors = errors.len(),
                "no system certificate authorities could be read: a TLS connection to the \
                 database will fail to verify its certificate"
            );
            tokio_postgres_rustls::MakeRustlsConnect::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )
        }
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(err: tokio_postgres::Error) -> Self {
        // The server's own words (its message names no parameter value), else the driver's.
        let text = match err.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => err.to_string(),
        };
        let Some(code) = err.code() else {
            // No SQLSTATE: the connection failed or closed (a server restarting, a network cut),
            // or the driver refused what it read (a type, a row count): that is a bug, not an
            // outage.
            let connection = err.is_closed()
                || std::error::Error::source(&err).is_some_and(|s| s.is::<std::io::Error>())
                || text.contains("connect")
                || text.contains("TLS")
                || text.contains("timed out");
            return if connection {
                StoreError::Unavailable(text)
            } else {
                StoreError::Internal(text)
            };
        };
        let class = &code.code()[..2];
        if *code == SqlState::DATA_CORRUPTED || *code == SqlState::INDEX_CORRUPTED {
            StoreError::Corrupt(text)
        } else if matches!(class, "08" | "53" | "57" | "58" | "40")
            || *code == SqlState::LOCK_NOT_AVAILABLE
        {
            // Connection exceptions, insufficient resources (a full disk), operator intervention
            // (shutdown, a cancelled statement), system errors, and transaction rollbacks
            // (serialization failures, deadlocks): all pass; the client may retry.
            StoreError::Unavailable(text)
        } else {
            StoreError::Internal(text)
        }
    }
}

/// Whether an error is a unique-constraint violation (SQLSTATE 23505).
pub(super) fn is_unique_violation(err: &tokio_postgres::Error) -> bool {
    err.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// The columns of a user (of `users u`), in the order [`user_from_row`] reads them, as a literal
/// for `concat!`: every query's SQL stays a constant.
macro_rules! user_columns {
    () => {
        "u.id, u.email, u.full_name, u.role, \
         floor(extract(epoch FROM u.created_at))::bigint, \
         u.email_verified_at IS NOT NULL, u.disabled_at IS NOT NULL, u.mfa_enabled_at IS NOT NULL"
    };
}
pub(super) use user_columns;

pub(super) fn user_from_row(row: &Row) -> Result<User, StoreError> {
    Ok(User {
        id: row.try_get(0)?,
        email: row.try_get(1)?,
        full_name: row.try_get(2)?,
        role: role_from_db(row.try_get(3)?)?,
        // Unix seconds, written as RFC 3339 here: cheaper than PostgreSQL's to_char on the
        // query every authenticated request makes.
        created_at: crate::tokens::rfc3339(row.try_get(4)?),
        email_verified: row.try_get(5)?,
        disabled: row.try_get(6)?,
        mfa_enabled: row.try_get(7)?,
    })
}

/// A role column as a [`Role`] (the CHECK constraint allows no other value).
pub(super) fn role_from_db(role: &str) -> Result<Role, StoreError> {
    Role::parse(role).ok_or_else(|| StoreError::Internal(format!("unknown role {role:?}")))
}

/// Takes the lock every role change and deletion holds until its transaction ends, so the
/// last-admin count and the actor's role are read with no other such change under way.
pub(super) async fn lock_admins(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ADMIN_LOCK])
        .await?;
    Ok(())
}

pub(super) fn to_i64(seconds: u64) -> i64 {
    i64::try_from(seconds).unwrap_or(i64::MAX)
}
