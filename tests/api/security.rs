//! What a security review of version 1 got through, each through the real binary on loopback:
//! a guess spared by hanging up, a session outliving a password change, one client holding every
//! connection, an admin demoted mid-request, loose database files, HTML without its policy, a
//! damaged database that looked ready.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_rusqlite::rusqlite;

use super::BACKEND;
use super::binary::{Server, create_admin};
use super::helpers::{PASSWORD, database_url, sqlite_only};
use crate::Backend;

fn bearer(token: &Value) -> String {
    format!("Bearer {}", token["access_token"].as_str().unwrap())
}

fn db(dir: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(dir.join("app.db")).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c
}

/// Runs async test code (a database client) from these synchronous tests.
fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn exec(dir: &Path, sql: &str) {
    block_on(super::helpers::exec(dir, sql));
}

fn query_i64(dir: &Path, sql: &str) -> i64 {
    block_on(super::helpers::query_i64(dir, sql))
}

/// Sends a request and resets the connection (RST, as a client that gives up does) after `wait`,
/// without reading the answer.
fn send_and_reset(addr: SocketAddr, request: &[u8], wait: Duration) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(request).unwrap();
    std::thread::sleep(wait);
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a pointer to a live `linger` of the right size.
    let set = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "{}", std::io::Error::last_os_error());
    drop(stream);
}

fn login_request(addr: SocketAddr, email: &str, password: &str) -> Vec<u8> {
    let body = serde_json::to_vec(&json!({"email": email, "password": password})).unwrap();
    let mut raw = format!(
        "POST /api/v1/users/login HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    raw
}

#[test]
fn hanging_up_on_a_wrong_password_still_counts_the_guess() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("LOGIN_MAX_FAILURES", "3")]);
    server.register("victim@example.com");
    // A user whose hash is of a higher cost logs in: from then on, a wrong password is answered
    // only once it has taken as long as that slow verify, the window the attacker hangs up in.
    server.register("slow@example.com");
    let slow = bcrypt::hash(PASSWORD, 11).unwrap();
    exec(
        dir.path(),
        &format!("UPDATE users SET password_hash = '{slow}' WHERE email = 'slow@example.com'"),
    );
    let started = Instant::now();
    server.login("slow@example.com", PASSWORD).expect(200);
    let slow_verify = started.elapsed();
    assert!(slow_verify > Duration::from_millis(150), "{slow_verify:?}");

    // Each wrong guess: sent, then the connection reset before the (padded) answer.
    let wait = slow_verify / 3;
    for i in 0..5 {
        let request = login_request(
            server.addr,
            "victim@example.com",
            &format!("Guess-{i}-wrong"),
        );
        send_and_reset(server.addr, &request, wait);
    }
    // Let the abandoned attempts finish on the server.
    std::thread::sleep(slow_verify * 2);
    let answer = server.login("victim@example.com", PASSWORD);
    answer.expect(429);
    assert!(answer.header("retry-after").is_some());

    // Every attempt left a log line, the abandoned ones too: three failures (the limit), then
    // refusals (the last two guesses and the right password).
    // (The lines reach us through a pipe read by another thread: give the last one a moment.)
    let deadline = Instant::now() + Duration::from_secs(5);
    let logs = loop {
        let logs = server.log_lines();
        let refused = logs
            .iter()
            .filter(|l| l.contains("login refused: too many attempts"))
            .count();
        if refused >= 3 || Instant::now() > deadline {
            break logs;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let count = |text: &str| logs.iter().filter(|l| l.contains(text)).count();
    assert_eq!(count("login failed"), 3, "{logs:#?}");
    assert_eq!(count("login refused: too many attempts"), 3, "{logs:#?}");
    assert!(count("request abandoned") >= 3, "{logs:#?}");
}

/// Runs `change` (SQL) in a transaction that `request`'s write has to wait for: `request` is sent
/// first and has done its reads (and its password check) by the time `change` commits. On SQLite
/// the transaction holds the write lock; on PostgreSQL it first runs `pg_lock`, which takes the
/// lock the request's write will need (a row lock, an advisory lock).
fn while_holding_the_write_lock<T: Send>(
    dir: &Path,
    pg_lock: &str,
    request: impl FnOnce() -> T + Send,
    change: &str,
) -> T {
    // The request's reads and bcrypt (cost 4) take milliseconds; its write then waits for this
    // transaction (SQLite's busy timeout is 2 s; PostgreSQL waits for the lock).
    let hold = Duration::from_millis(500);
    match BACKEND {
        Backend::Sqlite => {
            let mut conn = db(dir);
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .unwrap();
            std::thread::scope(|s| {
                let pending = s.spawn(request);
                std::thread::sleep(hold);
                tx.execute_batch(change).unwrap();
                tx.commit().unwrap();
                pending.join().unwrap()
            })
        }
        Backend::Postgres => {
            // The transaction runs on a thread of its own; it takes the lock, then waits for the
            // word to write and commit.
            let (url, pg_lock, change) = (database_url(dir), pg_lock.to_owned(), change.to_owned());
            let (locked, is_locked) = std::sync::mpsc::channel();
            let (go, wait_for_go) = std::sync::mpsc::channel::<()>();
            let holder = std::thread::spawn(move || {
                block_on(async move {
                    let (mut client, connection) =
                        tokio_postgres::connect(&url, tokio_postgres::NoTls)
                            .await
                            .unwrap();
                    tokio::spawn(connection);
                    let tx = client.transaction().await.unwrap();
                    tx.batch_execute(&pg_lock).await.unwrap();
                    locked.send(()).unwrap();
                    wait_for_go.recv().unwrap();
                    tx.batch_execute(&change).await.unwrap();
                    tx.commit().await.unwrap();
                })
            });
            is_locked.recv().unwrap();
            std::thread::scope(|s| {
                let pending = s.spawn(request);
                std::thread::sleep(hold);
                go.send(()).unwrap();
                holder.join().unwrap();
                pending.join().unwrap()
            })
        }
    }
}

#[test]
fn a_login_that_checked_the_old_password_gets_no_session_after_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let user = server.register("alice@example.com");
    let new_hash = bcrypt::hash("An0ther-Strong-Pass", 4).unwrap();
    let id = user["id"].as_i64().unwrap();
    let answer = while_holding_the_write_lock(
        dir.path(),
        // What PUT /me/password holds while it writes: the user's row.
        &format!("SELECT 1 FROM users WHERE id = {id} FOR UPDATE"),
        || server.login("alice@example.com", PASSWORD),
        // What it writes: the new hash, and no session left.
        &format!(
            "UPDATE users SET password_hash = '{new_hash}' WHERE id = {id}; DELETE FROM sessions;"
        ),
    );
    answer.expect(401);
    let sessions = query_i64(dir.path(), "SELECT count(*) FROM sessions");
    assert_eq!(sessions, 0, "a session outlived the password change");
    server
        .login("alice@example.com", "An0ther-Strong-Pass")
        .expect(200);
}

#[test]
fn an_admin_demoted_while_its_request_waits_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let out = create_admin(
        dir.path(),
        "root@example.com",
        Some("Head-Password-42"),
        None,
    );
    assert!(out.status.success());
    let out = create_admin(dir.path(), "ops@example.com", Some("Ops-Password-42"), None);
    assert!(out.status.success());
    let root = server
        .login("root@example.com", "Head-Password-42")
        .expect(200);
    let member = server.register("bob@example.com");
    let path = format!("/api/v1/admin/users/{}", member["id"]);
    let auth = bearer(&root);
    let answer = while_holding_the_write_lock(
        dir.path(),
        // The lock every role change takes on PostgreSQL (store::postgres::ADMIN_LOCK).
        "SELECT pg_advisory_xact_lock(8602282590251349097)",
        || {
            server.json(
                "PATCH",
                &path,
                &json!({"role": "admin"}),
                &[("Authorization", &auth)],
            )
        },
        "UPDATE users SET role = 'member' WHERE email = 'root@example.com'",
    );
    answer.expect(403);
    let admins = query_i64(
        dir.path(),
        "SELECT count(*) FROM users WHERE email = 'bob@example.com' AND role = 'admin'",
    );
    assert_eq!(admins, 0, "a demoted admin's change went through");
}

/// A connection from `source` (any 127.0.0.0/8 address is this machine) to `addr`.
fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let stream = socket.connect(addr).await.unwrap().into_std().unwrap();
        stream.set_nonblocking(false).unwrap();
        stream
    })
}

/// Whether the server closed `stream` (EOF or reset) within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn one_client_cannot_take_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    // 300 idle connections from one address: it keeps 128 of them.
    let mut idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    let closed = idle
        .iter_mut()
        .filter_map(|s| closed_within(s, Duration::from_millis(50)).then_some(()))
        .count();
    assert_eq!(closed, 300 - 128, "connections closed by the server");
    // Another client is served at once.
    let mut other = connect_from("127.0.0.2", server.addr);
    other
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = String::new();
    let _ = other.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    // Once the first client lets go, it is served again.
    drop(idle);
    std::thread::sleep(Duration::from_millis(200));
    server.request("GET", "/health", &[], None).expect(200);
}

#[test]
fn loose_database_files_are_made_owner_only_at_start() {
    use std::os::unix::fs::PermissionsExt;
    if sqlite_only("the database file's mode") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    server.register("alice@example.com");
    // Killed (the Drop's SIGKILL), so the -wal and -shm files stay.
    drop(server);
    let files = ["app.db", "app.db-wal", "app.db-shm"].map(|f| dir.path().join(f));
    for file in &files {
        assert!(file.exists(), "{}", file.display());
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let server = Server::start(dir.path(), &[]);
    for file in &files {
        let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    let logs = server.log_lines();
    assert!(
        logs.iter()
            .any(|l| l.contains("0600") && l.contains("app.db")),
        "{logs:#?}"
    );
    server.login("alice@example.com", PASSWORD).expect(200);
}

#[test]
fn every_html_response_carries_the_page_policy() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    for path in [
        "/docs",
        "/docs/index.html",
        "/docs/oauth2-redirect.html",
        "/redoc",
    ] {
        let r = server.request("GET", path, &[], None);
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.header("content-type")
                .is_some_and(|t| t.starts_with("text/html")),
            "{path}"
        );
        let policy = r.header("content-security-policy").unwrap_or_default();
        assert!(policy.contains("default-src 'none'"), "{path}: {policy:?}");
        assert!(
            policy.contains("frame-ancestors 'none'"),
            "{path}: {policy:?}"
        );
    }
}

#[test]
fn a_damaged_database_is_not_ready_and_answers_503() {
    if sqlite_only("a damaged database file") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    for name in ["a", "b", "c"] {
        server.register(&format!("{name}@example.com"));
    }
    let (status, _) = server.terminate();
    assert!(status.success());
    // Overwrite the users table's page; the schema (page 1) stays readable, so the server starts.
    let (root, page_size): (i64, i64) = {
        let c = db(dir.path());
        (
            c.query_row(
                "SELECT rootpage FROM sqlite_master WHERE name = 'users'",
                [],
                |r| r.get(0),
            )
            .unwrap(),
            c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap(),
        )
    };
    let mut bytes = std::fs::read(dir.path().join("app.db")).unwrap();
    let start = usize::try_from((root - 1) * page_size).unwrap();
    let end = start + usize::try_from(page_size).unwrap();
    bytes[start..end].fill(0xff);
    std::fs::write(dir.path().join("app.db"), bytes).unwrap();

    let server = Server::start(dir.path(), &[]);
    server.request("GET", "/health", &[], None).expect(200);
    let ready = server.request("GET", "/health/ready", &[], None);
    ready.expect(503);
    assert!(ready.header("retry-after").is_some());
    let answer = server.login("a@example.com", PASSWORD);
    answer.expect(503);
    assert!(answer.header("retry-after").is_some());
    let logs = server.log_lines();
    assert!(logs.iter().any(|l| l.contains("damaged")), "{logs:#?}");
}

#[test]
fn head_answers_like_get_without_a_body() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let get = server.request("GET", "/health", &[], None);
    let head = server.request("HEAD", "/health", &[], None);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(get.body.len().to_string().as_str())
    );
    assert_eq!(head.header("content-type"), get.header("content-type"));
    for path in ["/health/ready", "/openapi.json", "/docs", "/redoc"] {
        let r = server.request("HEAD", path, &[], None);
        assert_eq!(r.status, 200, "{path}");
        assert!(r.body.is_empty(), "{path}");
    }
    let me = server.request("HEAD", "/api/v1/users/me", &[], None);
    assert_eq!(me.status, 401);
    assert!(me.header("www-authenticate").is_some());
    let refused = server.request("PUT", "/health", &[], None);
    assert_eq!(refused.status, 405);
    assert_eq!(refused.header("allow"), Some("GET, HEAD"));
}

#[test]
fn behind_a_trusted_proxy_each_forwarded_client_counts_on_its_own() {
    let guess = |server: &Server, email: &str, forwarded: &str| {
        server
            .json(
                "POST",
                "/api/v1/users/login",
                &json!({"email": email, "password": "Wrong-password-1"}),
                &[("X-Forwarded-For", forwarded)],
            )
            .status
    };
    // LOGIN_MAX_FAILURES=1: ten failures per address.
    let dir = tempfile::tempdir().unwrap();
    let vars = [
        ("LOGIN_MAX_FAILURES", "1"),
        ("TRUSTED_PROXIES", "127.0.0.0/8"),
    ];
    let server = Server::start(dir.path(), &vars);
    for i in 0..10 {
        assert_eq!(
            guess(&server, &format!("u{i}@example.com"), "198.51.100.7"),
            401
        );
    }
    assert_eq!(guess(&server, "fresh@example.com", "198.51.100.7"), 429);
    // A forged left part does not help: the proxy appended the real address.
    assert_eq!(
        guess(&server, "fresh@example.com", "203.0.113.9, 198.51.100.7"),
        429
    );
    // Another client behind the same proxy is not throttled.
    assert_eq!(guess(&server, "fresh@example.com", "198.51.100.8"), 401);
    // The proxy's own connections are not capped per address.
    let mut held: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    let closed = held
        .iter_mut()
        .filter_map(|s| closed_within(s, Duration::from_millis(20)).then_some(()))
        .count();
    assert_eq!(closed, 0, "a trusted proxy's connections were closed");
    drop(held);

    // Without TRUSTED_PROXIES the header is not believed: every guess is the peer's.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("LOGIN_MAX_FAILURES", "1")]);
    for i in 0..10 {
        let forwarded = format!("198.51.100.{i}");
        assert_eq!(
            guess(&server, &format!("u{i}@example.com"), &forwarded),
            401
        );
    }
    assert_eq!(guess(&server, "fresh@example.com", "198.51.100.99"), 429);
}
