//! The real binary on a loopback port, driven over raw HTTP/1.1: what only a real socket shows
//! (chunked bodies, header limits, signals, restarts, logs, the exit on a bad variable).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::helpers::{PASSWORD, SECRET, database_url};

const BIN: &str = env!("CARGO_BIN_EXE_warp-auth-api");

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts the binary on a free port with a database in `dir`.
    pub fn start(dir: &Path, vars: &[(&str, &str)]) -> Server {
        Server::launch(dir, vars, &[])
    }

    /// Like `start`, with the variables in `unset` removed from its environment.
    pub fn launch(dir: &Path, vars: &[(&str, &str)], unset: &[&str]) -> Server {
        let mut command = Command::new(BIN);
        command
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .env("DATABASE_URL", database_url(dir))
            .env("DATABASE_MAX_CONNECTIONS", "4")
            .env("JWT_SECRET", SECRET)
            .env("BCRYPT_COST", "4")
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in vars {
            command.env(k, v);
        }
        for k in unset {
            command.env_remove(k);
        }
        let mut child = command.spawn().expect("start the binary");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest
                        .split([' ', '"', '\\'])
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send(addr);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr.parse().expect("address"),
            Err(_) => {
                let _ = child.kill();
                panic!("the server did not start: {:?}", logs.lock().unwrap());
            }
        };
        Server { child, addr, logs }
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        let mut raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        for (k, v) in headers {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(body) = body {
            raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        raw.push_str("\r\n");
        let mut bytes = raw.into_bytes();
        if let Some(body) = body {
            bytes.extend_from_slice(body);
        }
        self.raw(&bytes)
    }

    pub fn json(
        &self,
        method: &str,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Response {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        self.request(method, path, &all, Some(&serde_json::to_vec(body).unwrap()))
    }

    /// Registers `email` with the tests' password: the new user (201 expected).
    pub fn register(&self, email: &str) -> Value {
        self.json(
            "POST",
            "/api/v1/users/register",
            &json!({"email": email, "password": PASSWORD}),
            &[],
        )
        .expect(201)
    }

    /// A JSON login, answered as it is.
    pub fn login(&self, email: &str, password: &str) -> Response {
        self.json(
            "POST",
            "/api/v1/users/login",
            &json!({"email": email, "password": password}),
            &[],
        )
    }

    /// Sends raw bytes and reads the answer until the server closes the connection.
    pub fn raw(&self, bytes: &[u8]) -> Response {
        let mut stream = TcpStream::connect(self.addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        // The server may answer (and close) before it has read everything: ignore write errors.
        let _ = stream.write_all(bytes);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        Response::parse(&answer)
    }

    /// SIGTERM, then the exit status and how long the exit took.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        let started = Instant::now();
        // The signal straight from libc: a minimal machine has no `kill` program (procps).
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) only sends a signal to our own child process; no memory is shared.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "kill: {}", std::io::Error::last_os_error());
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(15) {
                let _ = self.child.kill();
                panic!("the server did not stop within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    fn parse(answer: &[u8]) -> Response {
        let Some(split) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
            // The connection was closed without an answer.
            return Response {
                status: 0,
                headers: vec![],
                body: vec![],
            };
        };
        let head = String::from_utf8_lossy(&answer[..split]).to_string();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut body = answer[split + 4..].to_vec();
        if headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
        {
            body = dechunk(&body);
        }
        Response {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    #[track_caller]
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        if status >= 400 {
            assert_eq!(
                self.header("content-type"),
                Some("application/problem+json")
            );
        }
        if self.body.is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&body[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&body[end + 2..end + 2 + size]);
        body = &body[end + 2 + size + 2..];
    }
    out
}

fn chunked_request(server: &Server, path: &str, body: &[u8], chunk: usize) -> Response {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        server.addr
    )
    .into_bytes();
    for piece in body.chunks(chunk) {
        raw.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        raw.extend_from_slice(piece);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    server.raw(&raw)
}

#[test]
fn the_tutorial_session_works_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let user = server
        .json(
            "POST",
            "/api/v1/users/register",
            &json!({"email": "alice@example.com", "password": PASSWORD, "full_name": "Alice"}),
            &[],
        )
        .expect(201);
    assert_eq!(user["email"], "alice@example.com");
    let token = server.login("alice@example.com", PASSWORD).expect(200);
    let access = token["access_token"].as_str().unwrap();
    let me = server.request(
        "GET",
        "/api/v1/users/me",
        &[("Authorization", &format!("Bearer {access}"))],
        None,
    );
    assert_eq!(me.expect(200)["id"], user["id"]);
    assert!(me.header("x-request-id").is_some());
    assert_eq!(me.header("x-content-type-options"), Some("nosniff"));
    server.request("GET", "/nowhere", &[], None).expect(404);
}

#[test]
fn chunked_bodies_are_limited_as_they_stream() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let small =
        serde_json::to_vec(&json!({"email": "chunk@example.com", "password": PASSWORD})).unwrap();
    chunked_request(&server, "/api/v1/users/register", &small, 7).expect(201);
    let big = serde_json::to_vec(
        &json!({"email": "big@example.com", "password": PASSWORD, "full_name": "x".repeat(20_000)}),
    )
    .unwrap();
    chunked_request(&server, "/api/v1/users/register", &big, 1024).expect(413);
    // The server is still fine afterwards.
    server.request("GET", "/health", &[], None).expect(200);
}

#[test]
fn oversized_request_heads_get_a_431_problem() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let many: Vec<(String, String)> = (0..101)
        .map(|i| (format!("X-Filler-{i}"), "1".to_owned()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = server.request("GET", "/health", &many, None);
    r.expect(431);
    assert!(r.header("x-request-id").is_some());
    let long = "y".repeat(17 * 1024);
    let r = server.request("GET", "/health", &[("X-Long", &long)], None);
    r.expect(431);
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    // 99 headers and 8 KiB are fine.
    let some: Vec<(&str, &str)> = many.iter().take(95).copied().collect();
    server.request("GET", "/health", &some, None).expect(200);
    server
        .request("GET", "/health", &[("X-Long", &long[..8 * 1024])], None)
        .expect(200);
}

#[test]
fn sigterm_stops_it_cleanly_and_users_and_tokens_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    server.register("alice@example.com");
    let token = server.login("alice@example.com", PASSWORD).expect(200);
    let access = token["access_token"].as_str().unwrap().to_owned();
    let (status, took) = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");

    let again = Server::start(dir.path(), &[]);
    again
        .request(
            "GET",
            "/api/v1/users/me",
            &[("Authorization", &format!("Bearer {access}"))],
            None,
        )
        .expect(200);
    again.login("alice@example.com", PASSWORD).expect(200);
}

#[test]
fn a_bad_variable_stops_the_start_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value) in [
        ("PORT", "eighty"),
        ("JWT_SECRET", "too-short"),
        ("JWT_SECRET", "replace_me_with_a_long_random_value"),
        ("DATABASE_URL", "postgres://app:pw@localhost"),
        ("DATABASE_MAX_CONNECTIONS", "0"),
        ("ACCESS_TOKEN_EXPIRE_MINUTES", "0"),
        ("LOG_FORMAT", "yaml"),
        ("JWT_ALGORITHM", "PS256"),
        ("RUST_LOG", "foo=bar=baz"),
        ("DATABASE_URL", "postgresql:app"),
    ] {
        let out = Command::new(BIN)
            .current_dir(dir.path())
            .env(var, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(var), "{var}={value}: {stderr}");
    }
}

#[test]
fn bad_numbers_and_log_filters_are_refused_in_plain_words() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value, expected) in [
        (
            "PORT",
            "abc",
            r#"PORT must be a number from 1 to 65535, not "abc""#,
        ),
        (
            "BCRYPT_COST",
            "x",
            r#"BCRYPT_COST must be a number from 4 to 31, not "x""#,
        ),
        (
            "RUST_LOG",
            "foo=bar=baz",
            r#"RUST_LOG is not a valid log filter (e.g. info, or warp_auth_api=debug,info): "foo=bar=baz""#,
        ),
    ] {
        let out = Command::new(BIN)
            .current_dir(dir.path())
            .env(var, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{var}={value}: {stderr}");
        assert!(!stderr.contains("invalid digit"), "{stderr}");
    }
}

#[test]
fn a_bad_dotenv_line_stops_the_start_naming_its_number() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "PASSWORD_MIN_LENGTH=20\nJWT_SECRET=hunter2 hunter2\n# a comment\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .env_remove("JWT_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(".env line 2: a value with spaces must be in quotes"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "the line was quoted: {stderr}");
}

#[test]
fn a_dotenv_file_is_read_and_the_environment_wins() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "PASSWORD_MIN_LENGTH=20\nLOG_FORMAT=yaml\n",
    )
    .unwrap();
    // LOG_FORMAT from .env is bad, but the environment's value wins.
    let server = Server::start(dir.path(), &[("LOG_FORMAT", "json")]);
    let r = server.json(
        "POST",
        "/api/v1/users/register",
        &json!({"email": "a@example.com", "password": PASSWORD}),
        &[],
    );
    r.expect(400);
    drop(server);
    // Without the override, the bad value in .env stops the start, named.
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .env_remove("LOG_FORMAT")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("LOG_FORMAT"));
}

#[test]
fn without_a_secret_it_starts_and_warns_loudly() {
    let dir = tempfile::tempdir().unwrap();
    // An empty JWT_SECRET is a mistake and refused; an unset one starts with a warning.
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .env("JWT_SECRET", "")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("JWT_SECRET"));
    let server = Server::launch(dir.path(), &[], &["JWT_SECRET"]);
    server.request("GET", "/health", &[], None).expect(200);
    let logs = server.log_lines().join("\n");
    assert!(logs.contains("JWT_SECRET is not set"), "{logs}");
}

#[test]
fn json_logs_are_one_object_per_line_and_never_hold_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[("LOG_FORMAT", "json")]);
    server.register("alice@example.com");
    let token = server.login("alice@example.com", PASSWORD).expect(200);
    let access = token["access_token"].as_str().unwrap().to_owned();
    let refresh = token["refresh_token"].as_str().unwrap().to_owned();
    server
        .request(
            "GET",
            "/api/v1/users/me",
            &[
                ("Authorization", &format!("Bearer {access}")),
                ("X-Request-Id", "trace-me-1"),
            ],
            None,
        )
        .expect(200);
    server
        .json(
            "POST",
            "/api/v1/users/login",
            &json!({"email": "alice@example.com", "password": "Wrong-password-9"}),
            &[],
        )
        .expect(401);
    let (status, _) = server.terminate();
    assert!(status.success());
    // The reader threads see the last lines just after the exit.
    std::thread::sleep(Duration::from_millis(200));
    let lines = server.log_lines();
    assert!(!lines.is_empty());
    let mut saw_request = false;
    for line in &lines {
        let value: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for secret in [
            PASSWORD,
            "Wrong-password-9",
            access.as_str(),
            refresh.as_str(),
            "$2b$",
            SECRET,
            // The database URL's password (PostgreSQL).
            crate::pg::PASSWORD,
        ] {
            assert!(!line.contains(secret), "a secret reached the log: {line}");
        }
        if value["fields"]["message"] == "request finished"
            || value["message"] == "request finished"
        {
            let span = &value["span"];
            if span["request_id"] == "trace-me-1" {
                saw_request = true;
                assert_eq!(span["method"], "GET");
                assert_eq!(span["path"], "/api/v1/users/me");
                assert_eq!(value["status"], 200);
                assert!(value["latency_ms"].as_f64().is_some());
            }
        }
    }
    assert!(saw_request, "no access-log line for the request: {lines:?}");
}

#[test]
fn healthcheck_exits_0_while_the_server_is_ready_and_1_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let port = server.addr.port();
    let check = || {
        Command::new(BIN)
            .arg("healthcheck")
            .current_dir(dir.path())
            .env("HOST", "0.0.0.0")
            .env("PORT", port.to_string())
            .output()
            .unwrap()
    };
    let out = check();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.terminate();
    let out = check();
    assert_eq!(out.status.code(), Some(1));
    assert!(!out.stderr.is_empty());
}

pub fn create_admin(
    dir: &Path,
    email: &str,
    env_password: Option<&str>,
    stdin: Option<&str>,
) -> std::process::Output {
    create_admin_with(dir, &["--email", email], env_password, stdin)
}

/// `create-admin` with these arguments, beside the database in `dir`.
pub fn create_admin_with(
    dir: &Path,
    args: &[&str],
    env_password: Option<&str>,
    stdin: Option<&str>,
) -> std::process::Output {
    let mut command = Command::new(BIN);
    command
        .arg("create-admin")
        .args(args)
        .current_dir(dir)
        .env("DATABASE_URL", database_url(dir))
        .env("BCRYPT_COST", "4")
        .env_remove("ADMIN_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(p) = env_password {
        command.env("ADMIN_PASSWORD", p);
    }
    let mut child = command.spawn().unwrap();
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

pub fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn create_admin_works_beside_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let admin_password = "Head-Password-42";
    // From the environment.
    let out = create_admin(dir.path(), " Root@Example.com ", Some(admin_password), None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("created admin root@example.com"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains(admin_password));
    let token = server.login("root@example.com", admin_password).expect(200);
    let bearer = format!("Bearer {}", token["access_token"].as_str().unwrap());
    let page = server
        .request(
            "GET",
            "/api/v1/admin/users",
            &[("Authorization", &bearer)],
            None,
        )
        .expect(200);
    assert_eq!(page["items"][0]["role"], "admin");

    // From standard input.
    let out = create_admin(
        dir.path(),
        "ops@example.com",
        None,
        Some("Stdin-Password-7\n"),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("Stdin-Password-7"));
    server
        .json(
            "POST",
            "/api/v1/users/login",
            &json!({"email": "ops@example.com", "password": "Stdin-Password-7"}),
            &[],
        )
        .expect(200);

    // An existing member (a squatter, maybe) is refused: exit 1, nothing changes.
    server.register("bob@example.com");
    let out = create_admin(
        dir.path(),
        "bob@example.com",
        Some("Operator-Password-1"),
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("already has an account"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("--promote-existing"), "{}", text(&out));
    for password in ["Operator-Password-1", PASSWORD] {
        let token = server.login("bob@example.com", password).json();
        if let Some(access) = token["access_token"].as_str() {
            let me = server
                .request(
                    "GET",
                    "/api/v1/users/me",
                    &[("Authorization", &format!("Bearer {access}"))],
                    None,
                )
                .expect(200);
            assert_eq!(me["role"], "member", "a refused create-admin promoted");
        } else {
            assert_eq!(password, "Operator-Password-1", "{token}");
        }
    }
    // An admin's email is refused the same way.
    let out = create_admin(dir.path(), "root@example.com", Some(admin_password), None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // --promote-existing promotes it, reads no password and keeps the user's own.
    let out = create_admin_with(
        dir.path(),
        &["--email", "bob@example.com", "--promote-existing"],
        Some("Ignored-Password-1"),
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("now an admin"), "{}", text(&out));
    server
        .json(
            "POST",
            "/api/v1/users/login",
            &json!({"email": "bob@example.com", "password": "Ignored-Password-1"}),
            &[],
        )
        .expect(401);
    let bob = server.login("bob@example.com", PASSWORD).expect(200);
    let bearer = format!("Bearer {}", bob["access_token"].as_str().unwrap());
    let me = server
        .request(
            "GET",
            "/api/v1/users/me",
            &[("Authorization", &bearer)],
            None,
        )
        .expect(200);
    assert_eq!(me["role"], "admin");
    // Again: nothing to do, still success.
    let args = ["--email", "bob@example.com", "--promote-existing"];
    let out = create_admin_with(dir.path(), &args, None, None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("already an admin"));
    // Nothing to promote: refused, nothing created.
    let args = ["--email", "nobody@example.com", "--promote-existing"];
    let out = create_admin_with(dir.path(), &args, Some("Some-Password-9"), None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no account"), "{}", text(&out));
}

#[test]
fn create_admin_refuses_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("not-an-email", Some("Good-Password-1"), None, "email"),
        ("a@example.com", Some("short"), None, "password"),
        ("a@example.com", Some("password123"), None, "password"),
        ("a@example.com", Some(&*"€".repeat(25)), None, "72 bytes"),
        ("a@example.com", None, Some(""), "password"),
    ];
    for (email, env, stdin, expected) in cases {
        let out = create_admin(dir.path(), email, env, stdin);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{email} {env:?}: {}",
            text(&out)
        );
        let said = text(&out);
        assert!(said.contains(expected), "{said}");
        if let Some(p) = env {
            assert!(!said.contains(p), "the password was echoed: {said}");
        }
    }
    // No argument takes a password.
    let out = Command::new(BIN)
        .args([
            "create-admin",
            "--email",
            "a@example.com",
            "--password",
            "x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// A small tmpfs to fill up; unmounted when dropped. Needs root (CI runs as root).
struct TinyDisk(tempfile::TempDir);

impl TinyDisk {
    fn mount(kib: u32) -> Option<TinyDisk> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(TinyDisk(dir))
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_disk_answers_503_loses_no_answered_write_and_recovers() {
    if super::helpers::sqlite_only("a SQLite file on a full disk") {
        return;
    }
    let Some(disk) = TinyDisk::mount(1024) else {
        eprintln!("skipped: cannot mount a tmpfs here (this test needs root)");
        return;
    };
    let dir = disk.0.path();
    let mut server = Server::start(dir, &[]);
    let register = |email: &str| {
        server.json(
            "POST",
            "/api/v1/users/register",
            &json!({"email": email, "password": PASSWORD}),
            &[],
        )
    };
    register("first@example.com").expect(201);
    let token = server.login("first@example.com", PASSWORD).expect(200);
    let bearer = format!("Bearer {}", token["access_token"].as_str().unwrap());

    // Fill the disk, keeping room to give back later that the writes after it surely fit in
    // (the log grows with each write until a checkpoint lets it start over).
    let spare = dir.join("spare");
    std::fs::write(&spare, vec![0u8; 512 * 1024]).unwrap();
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    while file.write_all(&[0u8; 4096]).is_ok() {}
    drop(file);

    // Every registration answered 201 must be there later; the others must be 503s.
    let mut created = Vec::new();
    let mut refused = 0;
    for i in 0..40 {
        let email = format!("user{i}@example.com");
        let r = register(&email);
        match r.status {
            201 => created.push(email),
            503 => {
                r.expect(503);
                assert!(r.header("retry-after").is_some());
                refused += 1;
            }
            other => panic!("{other}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    assert!(refused > 0, "the disk never filled up");
    // Reads that need no write go on.
    server
        .request(
            "GET",
            "/api/v1/users/me",
            &[("Authorization", &bearer)],
            None,
        )
        .expect(200);
    server
        .request("GET", "/health/ready", &[], None)
        .expect(200);

    // Room again: the server recovers by itself.
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(&spare).unwrap();
    register("after@example.com").expect(201);
    for email in created.iter().chain([&"after@example.com".to_owned()]) {
        server.login(email, PASSWORD).expect(200);
    }
    let (status, _) = server.terminate();
    assert!(status.success());
}

#[test]
fn a_body_that_does_not_arrive_gets_408_and_the_connection_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let started = Instant::now();
    // Headers announce 100 bytes; only one ever comes.
    let r = server.raw(
        b"POST /api/v1/users/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    );
    r.expect(408);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(14),
        "{took:?}"
    );
}

#[test]
fn an_idle_connection_is_closed_after_the_header_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    // Nothing sent: the server must not keep the connection forever.
    let mut buf = [0u8; 512];
    let n = stream.read(&mut buf).unwrap_or(0);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "still open after {took:?}");
    let _ = n;
}

/// What another process does to the database (an operator's SQL here) shows at the server's next
/// request, though the server answers repeated checks of one session without reading it again.
#[tokio::test]
async fn another_process_changing_the_database_is_seen_at_the_next_request() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let body = json!({"email": "alice@example.com", "password": PASSWORD});
    server
        .json("POST", "/api/v1/users/register", &body, &[])
        .expect(201);
    let token = server
        .json("POST", "/api/v1/users/login", &body, &[])
        .expect(200);
    let bearer = format!("Bearer {}", token["access_token"].as_str().unwrap());
    let me = || {
        server.request(
            "GET",
            "/api/v1/users/me",
            &[("Authorization", &bearer)],
            None,
        )
    };
    for _ in 0..3 {
        assert_eq!(me().expect(200)["role"], "member");
    }
    super::helpers::exec(dir.path(), "UPDATE users SET role = 'admin'").await;
    assert_eq!(me().expect(200)["role"], "admin");
    assert_eq!(me().expect(200)["role"], "admin");
    super::helpers::exec(dir.path(), "DELETE FROM users").await;
    assert_eq!(me().status, 401);
}
