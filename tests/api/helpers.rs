//! The test harness: the real `app(state)` on a temporary database of this module's backend
//! (`super::BACKEND`), with one helper per endpoint.

use std::path::Path;
use std::sync::Once;

use serde_json::{Value, json};
use tempfile::TempDir;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;
use warp::test::RequestBuilder;
use warp_auth_api::config::Config;
use warp_auth_api::password::PasswordHasher;
use warp_auth_api::store::Store;
use warp_auth_api::{AppState, app};

use super::BACKEND;
use crate::Backend;

pub const SECRET: &str = "test-secret-0123456789abcdef0123456789abcdef0123456789abcdef";
pub const PASSWORD: &str = "MyStrongPass123";

static LOG: Once = Once::new();

/// Logs go to the test output only when `TEST_LOG` is set.
fn init_log() {
    LOG.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ =
                warp_auth_api::telemetry::init(warp_auth_api::config::LogFormat::Pretty, "debug");
        }
    });
}

pub struct TestApp {
    pub state: AppState,
    pub api: BoxedFilter<(Response,)>,
    pub dir: TempDir,
}

/// A response, kept whole for assertions.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a problem+json response of this status and returns its body.
    #[track_caller]
    pub fn problem(&self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let body = self.json();
        assert_eq!(body["type"], "about:blank");
        assert_eq!(body["status"], status);
        assert_eq!(
            body["title"],
            StatusCode::from_u16(status)
                .unwrap()
                .canonical_reason()
                .unwrap()
        );
        assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
        body
    }

    /// The fields named in a validation problem.
    pub fn error_fields(&self) -> Vec<String> {
        self.json()["errors"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        self
    }
}

/// The database of the tests in `dir`: `app.db` there on SQLite; on PostgreSQL a fresh database
/// of the shared test cluster, whose URL is kept in `dir`, so that a second app or server on the
/// same directory opens the same database (a restart).
pub fn database_url(dir: &Path) -> String {
    match BACKEND {
        Backend::Sqlite => dir.join("app.db").display().to_string(),
        Backend::Postgres => {
            let file = dir.join("postgres-url");
            if let Ok(url) = std::fs::read_to_string(&file) {
                return url;
            }
            let url = crate::pg::fresh_database_url()
                .expect("PostgreSQL for the postgres half of the suite (see tests/api/pg.rs)");
            std::fs::write(&file, &url).expect("keep the database URL");
            url
        }
    }
}

/// Whether this test checks what only SQLite has (its files, its locks): on PostgreSQL it is
/// skipped, and says so.
pub fn sqlite_only(what: &str) -> bool {
    if BACKEND == Backend::Sqlite {
        return false;
    }
    eprintln!("skipped on {BACKEND:?}: {what} is SQLite's alone");
    true
}

/// Whether this test checks what only PostgreSQL has (what a command says about it, say): on
/// SQLite it is skipped, and says so.
pub fn postgres_only(what: &str) -> bool {
    if BACKEND == Backend::Postgres {
        return false;
    }
    eprintln!("skipped on {BACKEND:?}: {what} is PostgreSQL's alone");
    true
}

/// The configuration tests use: a fixed secret, a cheap bcrypt cost, a database in `dir`.
pub fn test_config(dir: &TempDir, vars: &[(&str, &str)]) -> Config {
    let mut all: Vec<(String, String)> = vec![
        ("JWT_SECRET".into(), SECRET.into()),
        ("BCRYPT_COST".into(), "4".into()),
        ("DATABASE_URL".into(), database_url(dir.path())),
        // Many apps run at once against one test cluster.
        ("DATABASE_MAX_CONNECTIONS".into(), "4".into()),
    ];
    all.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Config::from_vars(all).expect("test configuration")
}

impl TestApp {
    pub async fn new() -> Self {
        Self::with(&[]).await
    }

    pub async fn with(vars: &[(&str, &str)]) -> Self {
        Self::in_dir(tempfile::tempdir().unwrap(), vars).await
    }

    /// An app on the database in `dir` (a second app on the same directory is a restart).
    pub async fn in_dir(dir: TempDir, vars: &[(&str, &str)]) -> Self {
        init_log();
        let config = test_config(&dir, vars);
        let state = AppState::new(config).await.expect("state");
        Self::from_state(state, dir)
    }

    /// A second replica: another app (its own state, throttle handle and pool) on this app's
    /// database. PostgreSQL only: SQLite serves one process (so its half never calls this).
    #[allow(dead_code)]
    pub async fn replica(&self, vars: &[(&str, &str)]) -> Self {
        assert_eq!(
            BACKEND,
            Backend::Postgres,
            "replicas share a PostgreSQL database"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            self.dir.path().join("postgres-url"),
            dir.path().join("postgres-url"),
        )
        .unwrap();
        Self::in_dir(dir, vars).await
    }

    /// Another app on this app's database (a second process on the SQLite file, a second
    /// replica on PostgreSQL).
    pub async fn sibling(&self, vars: &[(&str, &str)]) -> Self {
        match BACKEND {
            Backend::Postgres => self.replica(vars).await,
            Backend::Sqlite => {
                let db = self.db_path().display().to_string();
                let mut all = vars.to_vec();
                all.push(("DATABASE_URL", &db));
                Self::in_dir(tempfile::tempdir().unwrap(), &all).await
            }
        }
    }

    /// An app with a hashing pool of the given size.
    pub async fn with_hasher(workers: usize, queue: usize, cost: u32) -> Self {
        init_log();
        let dir = tempfile::tempdir().unwrap();
        let config = test_config(&dir, &[]);
        let store = Store::open(&config.database, config.database_max_connections)
            .await
            .unwrap();
        let hasher = PasswordHasher::new(cost, workers, queue).unwrap();
        let state = AppState::with_parts(config, store, hasher).await.unwrap();
        Self::from_state(state, dir)
    }

    fn from_state(state: AppState, dir: TempDir) -> Self {
        let api = app(state.clone());
        // With an SMTP server configured, the outbox is delivered as `main` delivers it: by the
        // worker task, for as long as the test's runtime lives.
        if state.config.mail.smtp.is_some() {
            tokio::spawn(state.clone().deliver_mail());
        }
        Self { state, api, dir }
    }

    pub fn db_path(&self) -> std::path::PathBuf {
        self.dir.path().join("app.db")
    }

    pub async fn send(&self, request: RequestBuilder) -> Reply {
        let response = request.reply(&self.api).await;
        Reply {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.body().to_vec(),
        }
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.send(warp::test::request().method("POST").path(path).json(body))
            .await
    }

    pub async fn register(&self, email: &str, password: &str) -> Reply {
        self.post_json(
            "/api/v1/users/register",
            &json!({"email": email, "password": password, "full_name": "Alice"}),
        )
        .await
    }

    pub async fn login(&self, email: &str, password: &str) -> Reply {
        self.post_json(
            "/api/v1/users/login",
            &json!({"email": email, "password": password}),
        )
        .await
    }

    pub async fn me(&self, token: &str) -> Reply {
        self.send(
            warp::test::request()
                .path("/api/v1/users/me")
                .header("authorization", format!("Bearer {token}")),
        )
        .await
    }

    /// Registers `email` and logs in: the token response's body.
    pub async fn user(&self, email: &str) -> Value {
        self.register(email, PASSWORD).await.assert_status(201);
        let login = self.login(email, PASSWORD).await;
        login.assert_status(200);
        login.json()
    }

    /// Registers `email` and logs in: the access token.
    pub async fn token(&self, email: &str) -> String {
        self.user(email).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// A direct connection to the SQLite file (tests of SQLite's own behaviour).
    pub fn sql(&self) -> tokio_rusqlite::rusqlite::Connection {
        assert_eq!(
            BACKEND,
            Backend::Sqlite,
            "sql() is SQLite's; use exec or query_*"
        );
        tokio_rusqlite::rusqlite::Connection::open(self.db_path()).unwrap()
    }

    /// Runs statements on the app's database directly, to set up what the API cannot.
    pub async fn exec(&self, sql: &str) {
        exec(self.dir.path(), sql).await;
    }

    /// The one integer a query answers (`SELECT count(*) …`).
    pub async fn query_i64(&self, sql: &str) -> i64 {
        query_i64(self.dir.path(), sql).await
    }

    /// The one text a query answers.
    pub async fn query_text(&self, sql: &str) -> String {
        match BACKEND {
            Backend::Sqlite => self.sql().query_row(sql, [], |r| r.get(0)).unwrap(),
            Backend::Postgres => postgres(self.dir.path())
                .await
                .query_one(sql, &[])
                .await
                .unwrap()
                .get(0),
        }
    }
}

impl TestApp {
    /// A client of this app's PostgreSQL database, to hold locks the way another replica would.
    #[allow(dead_code)]
    pub async fn postgres_client(&self) -> tokio_postgres::Client {
        postgres(self.dir.path()).await
    }
}

/// A client of the PostgreSQL database of `dir`.
async fn postgres(dir: &Path) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&database_url(dir), tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    client
}

/// Runs statements on the database of `dir` (either backend).
pub async fn exec(dir: &Path, sql: &str) {
    match BACKEND {
        Backend::Sqlite => {
            let c = tokio_rusqlite::rusqlite::Connection::open(dir.join("app.db")).unwrap();
            // Cascades, as the service's own connections have them.
            c.execute_batch("PRAGMA foreign_keys = ON").unwrap();
            c.execute_batch(sql).unwrap();
        }
        Backend::Postgres => postgres(dir).await.batch_execute(sql).await.unwrap(),
    }
}

/// The one integer a query on the database of `dir` answers.
pub async fn query_i64(dir: &Path, sql: &str) -> i64 {
    match BACKEND {
        Backend::Sqlite => tokio_rusqlite::rusqlite::Connection::open(dir.join("app.db"))
            .unwrap()
            .query_row(sql, [], |r| r.get(0))
            .unwrap(),
        Backend::Postgres => postgres(dir)
            .await
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0),
    }
}
