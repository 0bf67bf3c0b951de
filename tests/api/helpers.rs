//! The test harness: the real `app(state)` on a temporary database, with one helper per endpoint.

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

/// The configuration tests use: a fixed secret, a cheap bcrypt cost, a file in `dir`.
pub fn test_config(dir: &TempDir, vars: &[(&str, &str)]) -> Config {
    let db = dir.path().join("app.db").display().to_string();
    let mut all: Vec<(String, String)> = vec![
        ("JWT_SECRET".into(), SECRET.into()),
        ("BCRYPT_COST".into(), "4".into()),
        ("DATABASE_URL".into(), db),
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

    /// An app with a hashing pool of the given size.
    pub async fn with_hasher(workers: usize, queue: usize, cost: u32) -> Self {
        init_log();
        let dir = tempfile::tempdir().unwrap();
        let config = test_config(&dir, &[]);
        let store = Store::open(&config.database).await.unwrap();
        let hasher = PasswordHasher::new(cost, workers, queue).unwrap();
        let state = AppState::with_parts(config, store, hasher).unwrap();
        Self::from_state(state, dir)
    }

    fn from_state(state: AppState, dir: TempDir) -> Self {
        let api = app(state.clone());
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

    /// A direct connection to the database file, to set up what the API cannot.
    pub fn sql(&self) -> tokio_rusqlite::rusqlite::Connection {
        tokio_rusqlite::rusqlite::Connection::open(self.db_path()).unwrap()
    }
}
