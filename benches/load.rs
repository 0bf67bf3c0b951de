//! Load benchmark: `cargo bench --bench load`.
//!
//! Starts the release binary on a free loopback port with a temporary database and the
//! production bcrypt cost, registers users, then drives it with keep-alive HTTP/1.1 connections
//! (a small hyper client) and prints, from one run:
//!
//! * `/health` and `/me` throughput and p50/p99 latency at 64 connections;
//! * login throughput and p50/p99 at 16 connections, and the time of one bcrypt verify at the
//!   same cost, measured here in the same run;
//! * `/me` p50/p99 at 64 connections while a login storm (32 connections) runs;
//! * the server's peak RSS;
//!
//! and the contract's targets as ratios of figures from this run. The client runs on the same
//! machine as the server, so absolute figures say as much about the machine as about the server.
//!
//! Settings (environment): `BENCH_SECONDS` (per phase, default 10), `BENCH_BCRYPT_COST`
//! (default 12), `BENCH_BIN` (another server binary to measure, e.g. a variant).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

const PASSWORD: &str = "Bench-Password-42";
const USERS: usize = 16;

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM (a graceful stop) through libc: a minimal machine has no `kill` program. The
        // pid is our child's and is not reaped before the wait below, so it names no other process.
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) takes plain integers and touches no memory of ours.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.child.wait();
    }
}

fn start_server(dir: &std::path::Path, cost: u32) -> Server {
    let bin = std::env::var("BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_warp-auth-api").to_owned());
    let mut child = Command::new(bin)
        .current_dir(dir)
        .env("DATABASE_URL", dir.join("bench.db"))
        .env(
            "JWT_SECRET",
            "bench-secret-0123456789abcdef0123456789abcdef",
        )
        .env("BCRYPT_COST", cost.to_string())
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("LOGIN_MAX_FAILURES", "0")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the server");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Read the address, then keep draining the log (a full pipe would stall the server).
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.split(' ').next().unwrap_or_default().to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the server did not start");
    Server { child, addr }
}

/// One keep-alive connection.
struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    async fn open(addr: &str) -> Conn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        Conn {
            sender,
            host: addr.to_owned(),
        }
    }

    /// Sends a request; the status and the body.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> (u16, Bytes) {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default())))
            .expect("request");
        self.sender.ready().await.expect("connection ready");
        let response = self.sender.send_request(request).await.expect("response");
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, body)
    }
}

#[derive(Clone, Copy)]
enum Load {
    Health,
    Me,
    Login,
}

struct Stats {
    requests: usize,
    errors: usize,
    seconds: f64,
    latencies_us: Vec<u64>,
}

impl Stats {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 * p).ceil() as usize)
            .clamp(1, self.latencies_us.len())
            - 1;
        self.latencies_us[i] as f64 / 1000.0
    }

    fn line(&self, name: &str) -> String {
        format!(
            "{name:<34} {:>10.1} req/s   p50 {:>8.2} ms   p99 {:>8.2} ms   ({} requests, {} errors)",
            self.rps(),
            self.percentile(0.50),
            self.percentile(0.99),
            self.requests,
            self.errors
        )
    }
}

/// Drives `connections` keep-alive connections for `duration`, each sending requests back to back.
async fn drive(
    addr: &str,
    load: Load,
    connections: usize,
    duration: Duration,
    tokens: Arc<Vec<String>>,
) -> Stats {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let addr = addr.to_owned();
        let stop = stop.clone();
        let tokens = tokens.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr).await;
            let (mut requests, mut errors, mut latencies) = (0usize, 0usize, Vec::new());
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let (status, _) = match load {
                    Load::Health => conn.send(Method::GET, "/health", None, None).await,
                    Load::Me => {
                        let token = &tokens[i % tokens.len()];
                        conn.send(Method::GET, "/api/v1/users/me", Some(token), None)
                            .await
                    }
                    Load::Login => {
                        let body = format!(
                            r#"{{"email":"bench{}@example.com","password":"{PASSWORD}"}}"#,
                            i % USERS
                        );
                        conn.send(
                            Method::POST,
                            "/api/v1/users/login",
                            None,
                            Some(body.as_bytes()),
                        )
                        .await
                    }
                };
                latencies.push(t.elapsed().as_micros() as u64);
                requests += 1;
                if status != 200 {
                    errors += 1;
                }
                i += connections;
            }
            (requests, errors, latencies)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut stats = Stats {
        requests: 0,
        errors: 0,
        seconds: 0.0,
        latencies_us: Vec::new(),
    };
    for task in tasks {
        let (requests, errors, latencies) = task.await.expect("load task");
        stats.requests += requests;
        stats.errors += errors;
        stats.latencies_us.extend(latencies);
    }
    // Requests in flight when the clock stopped finish after it: count the time they took.
    stats.seconds = started.elapsed().as_secs_f64();
    stats.latencies_us.sort_unstable();
    stats
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let cost: u32 = std::env::var("BENCH_BCRYPT_COST")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let duration = Duration::from_secs(seconds);
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start_server(dir.path(), cost);
    let addr = server.addr.clone();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "warp-auth-api load benchmark: {cpus} CPUs, bcrypt cost {cost}, {seconds} s per phase, server at {addr}"
    );

    // Users, and one session per user for /me.
    let mut setup = Conn::open(&addr).await;
    let mut tokens = Vec::new();
    for u in 0..USERS {
        let body = format!(r#"{{"email":"bench{u}@example.com","password":"{PASSWORD}"}}"#);
        let (status, _) = setup
            .send(
                Method::POST,
                "/api/v1/users/register",
                None,
                Some(body.as_bytes()),
            )
            .await;
        assert_eq!(status, 201, "register");
        let (status, token) = setup
            .send(
                Method::POST,
                "/api/v1/users/login",
                None,
                Some(body.as_bytes()),
            )
            .await;
        assert_eq!(status, 200, "login");
        let token: serde_json::Value = serde_json::from_slice(&token).expect("token");
        tokens.push(
            token["access_token"]
                .as_str()
                .expect("access token")
                .to_owned(),
        );
    }
    let tokens = Arc::new(tokens);

    let health = drive(&addr, Load::Health, 64, duration, tokens.clone()).await;
    println!("{}", health.line("GET /health, 64 connections"));
    let me = drive(&addr, Load::Me, 64, duration, tokens.clone()).await;
    println!("{}", me.line("GET /me, 64 connections"));

    // One bcrypt verify at the server's cost, timed here (median of 5).
    let hash = bcrypt::hash(PASSWORD, cost).expect("hash");
    let mut verify_times: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            assert!(bcrypt::verify(PASSWORD, &hash).expect("verify"));
            t.elapsed().as_secs_f64()
        })
        .collect();
    verify_times.sort_by(f64::total_cmp);
    let verify = verify_times[2];
    println!(
        "{:<34} {:>10.1} ms (median of 5, cost {cost})",
        "one bcrypt verify",
        verify * 1000.0
    );

    let login = drive(&addr, Load::Login, 16, duration, tokens.clone()).await;
    println!("{}", login.line("POST /login, 16 connections"));

    // The storm: 32 connections logging in without pause; /me measured while it runs.
    let storm_addr = addr.clone();
    let storm_tokens = tokens.clone();
    let storm = tokio::spawn(async move {
        drive(
            &storm_addr,
            Load::Login,
            32,
            duration + Duration::from_secs(2),
            storm_tokens,
        )
        .await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let me_storm = drive(&addr, Load::Me, 64, duration, tokens.clone()).await;
    let storm = storm.await.expect("storm");
    println!("{}", me_storm.line("GET /me during a login storm"));
    println!("{}", storm.line("  (the storm: POST /login, 32 conns)"));

    let rss_mib = peak_rss_kib(server.child.id()) as f64 / 1024.0;
    println!("{:<34} {:>10.1} MiB", "server peak RSS", rss_mib);

    let expected_login = cpus as f64 / verify;
    println!();
    println!("targets (ratios of this run's figures):");
    let rows = [
        (
            "/me throughput >= 50% of /health's",
            me.rps() / health.rps(),
            0.50,
            true,
        ),
        (
            "login throughput >= 95% of workers / verify",
            login.rps() / expected_login,
            0.95,
            true,
        ),
        (
            "/me p99 in the storm <= 3x idle p99",
            me_storm.percentile(0.99) / me.percentile(0.99),
            3.0,
            false,
        ),
        ("peak RSS <= 64 MiB", rss_mib / 64.0, 1.0, false),
    ];
    let mut all = true;
    for (name, value, bound, at_least) in rows {
        let ok = if at_least {
            value >= bound
        } else {
            value <= bound
        };
        all &= ok;
        println!(
            "  {name:<46} {value:>7.2} (bound {bound:.2})  {}",
            if ok { "met" } else { "MISSED" }
        );
    }
    println!("  (workers = {cpus} hashing threads; login bound = {expected_login:.2} logins/s)");
    if health.errors + me.errors + login.errors + me_storm.errors + storm.errors > 0 {
        println!("note: some requests did not answer 200 (see the error counts)");
    }
    println!(
        "{}",
        if all {
            "all targets met"
        } else {
            "some targets missed"
        }
    );
}
