//! Filling a database straight into the schema the server made (never through the API, whose
//! every registration would cost a bcrypt hash): `users` users, one session each, one
//! `login.succeeded` audit event each.
//!
//! * user 1 is `admin@bench.example`, an admin; user N (2..=users) is `userN@bench.example`, a
//!   member; all have the same password ([`crate::PASSWORD`]), hashed once at the server's
//!   cost and reused;
//! * each session has a random id and refresh hash (SHA-256 sized) and ends in 14 days;
//! * SQLite: one transaction of prepared statements, journal off and no syncing while it runs
//!   (the server is stopped), WAL mode again at the end, as the server leaves a database;
//! * PostgreSQL: `INSERT … SELECT` over `generate_series` through the fixture's psql, then
//!   `VACUUM ANALYZE`, as autovacuum would leave a database that size.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_rusqlite::rusqlite::{self, params};

/// The admin's email (user 1).
pub const ADMIN_EMAIL: &str = "admin@bench.example";

/// The email of user `id` (2 and up).
pub fn email(id: u64) -> String {
    format!("user{id}@bench.example")
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

const FOURTEEN_DAYS: i64 = 14 * 24 * 3600;

/// splitmix64: fill data needs no secrecy, only to differ.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        out
    }
}

/// Fills the SQLite database at `path` (the server stopped); how long it took.
pub fn sqlite(path: &Path, users: u64, hash: &str) -> Result<Duration, rusqlite::Error> {
    let started = Instant::now();
    let mut c = rusqlite::Connection::open(path)?;
    let mode: String = c.query_row("PRAGMA journal_mode = OFF", [], |r| r.get(0))?;
    assert_eq!(
        mode, "off",
        "the fill could not take the database out of WAL mode"
    );
    c.execute_batch(
        "PRAGMA synchronous = OFF; PRAGMA cache_size = -262144; PRAGMA temp_store = MEMORY;",
    )?;
    let existing: i64 = c.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?;
    assert_eq!(existing, 0, "the fill expects a database without users");
    let (now, expires) = (now(), now() + FOURTEEN_DAYS);
    let mut random = Random(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    );
    let tx = c.transaction()?;
    {
        let mut user = tx.prepare(
            "INSERT INTO users (id, email, full_name, password_hash, role) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut session = tx.prepare(
            "INSERT INTO sessions (id, user_id, refresh_hash, created_at, expires_at, last_used_at, user_agent, ip)
             VALUES (?1, ?2, ?3, ?4, ?5, ?4, 'bench-fill', '127.0.0.1')",
        )?;
        let mut event = tx.prepare(
            "INSERT INTO audit_events (at, type, user_id, ip, user_agent)
             VALUES (?1, 'login.succeeded', ?2, '127.0.0.1', 'bench-fill')",
        )?;
        for id in 1..=users {
            if id % 65536 == 0 {
                crate::check_interrupted();
            }
            let (email, role) = if id == 1 {
                (ADMIN_EMAIL.to_owned(), "admin")
            } else {
                (email(id), "member")
            };
            let id = id as i64;
            user.execute(params![id, email, format!("Bench User {id}"), hash, role])?;
            let session_id = format!("{:016x}{:016x}", random.next(), random.next());
            session.execute(params![session_id, id, &random.bytes32()[..], now, expires])?;
            event.execute(params![now, id])?;
        }
    }
    tx.commit()?;
    let mode: String = c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    assert_eq!(
        mode, "wal",
        "the fill could not put the database back in WAL mode"
    );
    drop(c);
    Ok(started.elapsed())
}

/// The SQL that fills a PostgreSQL database (one statement list: psql runs it in one
/// transaction).
pub fn postgres_sql(users: u64, hash: &str) -> String {
    assert!(!hash.contains('\''), "a bcrypt hash has no quote: {hash:?}");
    let (now, expires) = (now(), now() + FOURTEEN_DAYS);
    format!(
        "INSERT INTO users (email, full_name, password_hash, role)
         SELECT CASE WHEN g = 1 THEN '{ADMIN_EMAIL}' ELSE 'user' || g || '@bench.example' END,
                'Bench User ' || g, '{hash}', CASE WHEN g = 1 THEN 'admin' ELSE 'member' END
         FROM generate_series(1, {users}) AS g ORDER BY g;
         INSERT INTO sessions (id, user_id, refresh_hash, created_at, expires_at, last_used_at, user_agent, ip)
         SELECT md5(random()::text || id::text), id,
                sha256(convert_to(random()::text || id::text, 'UTF8')),
                {now}, {expires}, {now}, 'bench-fill', '127.0.0.1'
         FROM users;
         INSERT INTO audit_events (at, type, user_id, ip, user_agent)
         SELECT {now}, 'login.succeeded', id, '127.0.0.1', 'bench-fill' FROM users;"
    )
}
