//! Load benchmark: `cargo bench --bench load`.
//!
//! Starts the release binary on a free loopback port with a temporary database and the
//! production bcrypt cost, registers users, then drives it with keep-alive HTTP/1.1 connections
//! (a small hyper client) and prints, from one run, for each backend asked for:
//!
//! * `/health` and `/me` throughput and p50/p99 latency at 64 connections;
//! * login throughput and p50/p99 at 16 connections, and the time of one bcrypt verify at the
//!   same cost, measured here in the same run;
//! * `/me` p50/p99 at 64 connections while a login storm (32 connections) runs;
//! * the server's peak RSS;
//! * register throughput and p50/p99 at 16 connections: at the production cost one bcrypt hash
//!   per registration bounds it, as verify bounds login, so it says little about the database;
//! * after each phase, where the CPU went (cores used by the client, the server, PostgreSQL,
//!   nginx, and the rest of the machine), from /proc;
//!
//! and the contract's targets as ratios of figures from this run. With both backends it then
//! prints each PostgreSQL figure as a ratio of SQLite's (same build, same run). With PostgreSQL
//! it then runs the replicas phase: two servers on the PostgreSQL database, nginx on loopback in
//! front of them (round robin, keepalive upstream connections), and `/me` at 64 connections
//! through nginx to one replica and to both, and to each replica directly, with the ratios.
//!
//! The client runs on the same machine as the servers (and PostgreSQL and nginx), so absolute
//! figures say as much about the machine as about the server.
//!
//! Settings (environment):
//!
//! * `BENCH_SECONDS` (per phase, default 10), `BENCH_BCRYPT_COST` (default 12), `BENCH_BIN`
//!   (another server binary to measure, e.g. a variant);
//! * `BENCH_BACKENDS`: `sqlite`, `postgres`, or both comma-separated. With both, both servers
//!   run from the start and each phase runs on one backend then the other, so drift on a shared
//!   machine falls on both. The default is `sqlite` alone: the bench as it was, with nothing
//!   more to install, whatever the machine has. PostgreSQL runs in a throwaway cluster of the bench's own (the test
//!   suite's fixture, `tests/api/pg.rs`: initdb in a temporary directory, `PG_BIN` picks the
//!   binaries, `fsync` and `synchronous_commit` off, where SQLite commits with
//!   `synchronous = FULL`); without PostgreSQL installed, asking for it fails with what to
//!   install;
//! * `BENCH_REPLICAS=0` skips the replicas phase; `BENCH_NGINX`: the nginx binary (default
//!   `nginx` on PATH, else /usr/sbin/nginx; without one the phase is skipped, saying so);
//! * `DATABASE_MAX_CONNECTIONS` passes through to the servers (PostgreSQL's pool, default 16).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hyper::Method;

// What this bench shares with `benches/perf`: the client connection, the CPU meter, nginx.
#[allow(dead_code)]
mod common;

use common::{
    Backend, Conn, Group, Meter, env_or, nginx_binary, nginx_version, peak_rss_kib, postmaster_pid,
    start_nginx, terminate,
};

// The test suite's PostgreSQL fixture; the bench uses `Cluster::start`, `create_database` and
// `psql`, the rest serves the tests.
#[allow(dead_code)]
#[path = "../tests/api/pg.rs"]
mod pg;

const PASSWORD: &str = "Bench-Password-42";
const USERS: usize = 16;

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// The server on a free loopback port, its working directory `dir`, on `database_url`.
fn start_server(dir: &Path, database_url: &OsStr, cost: u32) -> Server {
    let bin = std::env::var("BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_warp-auth-api").to_owned());
    let mut child = Command::new(bin)
        .current_dir(dir)
        .env("DATABASE_URL", database_url)
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
    // Made before the wait: if the server does not start, the panic drops (stops) it.
    let mut server = Server {
        child,
        addr: String::new(),
    };
    server.addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the server did not start");
    server
}

#[derive(Clone, Copy)]
enum Load {
    Health,
    Me,
    Login,
    /// A new account per request.
    Register,
}

impl Load {
    fn expected_status(self) -> u16 {
        match self {
            Load::Register => 201,
            _ => 200,
        }
    }
}

struct Stats {
    requests: usize,
    errors: usize,
    seconds: f64,
    latencies_us: Vec<u64>,
    /// Requests per CPU-second that the measured processes and irq used (`Meter::report`):
    /// what the load costs, whatever else the machine was doing. NaN until measured.
    per_cpu_second: f64,
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
                    Load::Register => {
                        // `i` is unique to this connection and request: one new account each.
                        let body = format!(
                            r#"{{"email":"register{i}@example.com","password":"{PASSWORD}"}}"#
                        );
                        conn.send(
                            Method::POST,
                            "/api/v1/users/register",
                            None,
                            Some(body.as_bytes()),
                        )
                        .await
                    }
                };
                latencies.push(t.elapsed().as_micros() as u64);
                requests += 1;
                if status != load.expected_status() {
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
        per_cpu_second: f64::NAN,
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

/// One phase: drives the load, prints its line and where the CPU went.
async fn phase(
    meter: &Meter,
    name: &str,
    addr: &str,
    load: Load,
    connections: usize,
    duration: Duration,
    tokens: &Arc<Vec<String>>,
) -> Stats {
    let before = Meter::sample();
    let mut stats = drive(addr, load, connections, duration, tokens.clone()).await;
    let after = Meter::sample();
    println!("{}", stats.line(name));
    let (cpu, per_cpu_second) = meter.report(&before, &after, stats.requests);
    stats.per_cpu_second = per_cpu_second;
    println!("{cpu}");
    stats
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

/// One backend under test: its server, its tokens, where its CPU goes.
struct Subject {
    backend: Backend,
    /// "sqlite   ": a prefix to each line when more than one backend runs, else empty.
    tag: String,
    server: Server,
    meter: Meter,
    tokens: Arc<Vec<String>>,
    database_url: String,
    _dir: tempfile::TempDir,
}

/// One backend's figures.
struct Figures {
    health: Stats,
    me: Stats,
    login: Stats,
    me_storm: Stats,
    storm: Stats,
    rss_mib: f64,
    register: Stats,
}

struct Settings {
    duration: Duration,
    cost: u32,
    cpus: usize,
    /// One bcrypt verify at `cost`, in seconds.
    verify: f64,
}

fn backends() -> Vec<Backend> {
    let list = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite".to_owned());
    let mut backends: Vec<Backend> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let backend = match name.to_ascii_lowercase().as_str() {
            "sqlite" => Backend::Sqlite,
            "postgres" | "postgresql" => Backend::Postgres,
            _ => panic!("BENCH_BACKENDS: {name:?} is neither sqlite nor postgres"),
        };
        if !backends.contains(&backend) {
            backends.push(backend);
        }
    }
    assert!(
        !backends.is_empty(),
        "BENCH_BACKENDS is empty: sqlite, postgres or both"
    );
    backends
}

async fn run() {
    let seconds: u64 = env_or("BENCH_SECONDS", 10);
    let cost: u32 = env_or("BENCH_BCRYPT_COST", 12);
    let backends = backends();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());

    // One bcrypt verify at the servers' cost, timed here before any server runs (median of 5).
    let hash = bcrypt::hash(PASSWORD, cost).expect("hash");
    let mut verify_times: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            assert!(bcrypt::verify(PASSWORD, &hash).expect("verify"));
            t.elapsed().as_secs_f64()
        })
        .collect();
    verify_times.sort_by(f64::total_cmp);
    let settings = Settings {
        duration: Duration::from_secs(seconds),
        cost,
        cpus,
        verify: verify_times[2],
    };

    // Declared before the subjects, so dropped after them: the servers stop before their
    // database does.
    let cluster = backends.contains(&Backend::Postgres).then(|| {
        pg::Cluster::start().unwrap_or_else(|why| {
            panic!("BENCH_BACKENDS asks for postgres, which is not available: {why}")
        })
    });

    let several = backends.len() > 1;
    let mut subjects = Vec::new();
    for &backend in &backends {
        let dir = tempfile::tempdir().expect("temp dir");
        let (database_url, label, postmaster) = match (backend, &cluster) {
            (Backend::Postgres, Some(cluster)) => {
                let url = cluster.create_database();
                let version = cluster
                    .psql(&url, "show server_version")
                    .unwrap_or_else(|e| e);
                (
                    url,
                    format!("PostgreSQL {version}, fsync off"),
                    postmaster_pid(cluster.port()),
                )
            }
            _ => (
                dir.path().join("bench.db").to_string_lossy().into_owned(),
                "SQLite, synchronous = FULL".to_owned(),
                None,
            ),
        };
        let server = start_server(dir.path(), OsStr::new(&database_url), cost);
        println!(
            "warp-auth-api load benchmark: {cpus} CPUs, bcrypt cost {cost}, {seconds} s per phase, {} ({label}), server at {}",
            backend.name(),
            server.addr
        );
        let mut groups = vec![
            Group::process("client", std::process::id()),
            Group::process("server", server.child.id()),
        ];
        groups.extend(postmaster.map(|pid| Group::tree("postgres", pid)));
        let tokens = Arc::new(setup_users(&server.addr).await);
        subjects.push(Subject {
            backend,
            tag: if several {
                format!("{:<9}", backend.name())
            } else {
                String::new()
            },
            server,
            meter: Meter::new(groups),
            tokens,
            database_url,
            _dir: dir,
        });
    }
    if several {
        println!(
            "(each phase runs on each backend in turn, so drift on the machine falls on both)"
        );
    }

    let figures = measure(&subjects, &settings).await;
    for (subject, figures) in subjects.iter().zip(&figures) {
        println!();
        targets(subject, figures, &settings);
    }

    let find = |backend| subjects.iter().position(|s| s.backend == backend);
    if let (Some(s), Some(p)) = (find(Backend::Sqlite), find(Backend::Postgres)) {
        println!();
        compare(&figures[s], &figures[p], settings.cost);
    }

    if let (Some(p), Some(cluster)) = (find(Backend::Postgres), &cluster) {
        println!();
        if std::env::var("BENCH_REPLICAS").is_ok_and(|v| v.trim() == "0") {
            println!("replicas phase skipped (BENCH_REPLICAS=0)");
        } else {
            // The PostgreSQL subject's server stays up, idle: the replicas are two new ones.
            replicas(&subjects[p], cluster.port(), &settings).await;
        }
    }
}

/// Registers the users and logs each in once, concurrently (the hashing threads take them two
/// at a time): one access token per user.
async fn setup_users(addr: &str) -> Vec<String> {
    let tasks: Vec<_> = (0..USERS)
        .map(|u| {
            let addr = addr.to_owned();
            tokio::spawn(async move {
                let mut conn = Conn::open(&addr).await;
                let body = format!(r#"{{"email":"bench{u}@example.com","password":"{PASSWORD}"}}"#);
                let (status, _) = conn
                    .send(
                        Method::POST,
                        "/api/v1/users/register",
                        None,
                        Some(body.as_bytes()),
                    )
                    .await;
                assert_eq!(status, 201, "register");
                let (status, token) = conn
                    .send(
                        Method::POST,
                        "/api/v1/users/login",
                        None,
                        Some(body.as_bytes()),
                    )
                    .await;
                assert_eq!(status, 200, "login");
                let token: serde_json::Value = serde_json::from_slice(&token).expect("token");
                token["access_token"]
                    .as_str()
                    .expect("access token")
                    .to_owned()
            })
        })
        .collect();
    let mut tokens = Vec::new();
    for task in tasks {
        tokens.push(task.await.expect("setup task"));
    }
    tokens
}

/// `phase` on each subject in turn.
async fn each(
    subjects: &[Subject],
    name: &str,
    load: Load,
    connections: usize,
    duration: Duration,
) -> Vec<Stats> {
    let mut all = Vec::new();
    for s in subjects {
        let name = format!("{}{name:<34}", s.tag);
        let addr = &s.server.addr;
        all.push(
            phase(
                &s.meter,
                &name,
                addr,
                load,
                connections,
                duration,
                &s.tokens,
            )
            .await,
        );
    }
    all
}

/// The existing phases, then the register phase, each on every subject in turn.
async fn measure(subjects: &[Subject], settings: &Settings) -> Vec<Figures> {
    let Settings {
        duration,
        cost,
        verify,
        ..
    } = *settings;
    let health = each(
        subjects,
        "GET /health, 64 connections",
        Load::Health,
        64,
        duration,
    )
    .await;
    let me = each(subjects, "GET /me, 64 connections", Load::Me, 64, duration).await;
    println!(
        "{:<34} {:>10.1} ms (median of 5, cost {cost}, timed before the servers started)",
        "one bcrypt verify",
        verify * 1000.0
    );
    let login = each(
        subjects,
        "POST /login, 16 connections",
        Load::Login,
        16,
        duration,
    )
    .await;

    // The storm: 32 connections logging in without pause; /me measured while it runs.
    let mut storms = Vec::new();
    for s in subjects {
        let storm_addr = s.server.addr.clone();
        let storm_tokens = s.tokens.clone();
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
        let before = Meter::sample();
        let mut me_storm = drive(&s.server.addr, Load::Me, 64, duration, s.tokens.clone()).await;
        let after = Meter::sample();
        let storm = storm.await.expect("storm");
        println!(
            "{}",
            me_storm.line(&format!("{}{:<34}", s.tag, "GET /me during a login storm"))
        );
        // Its requests per CPU-second count the storm's logins' CPU too.
        let (cpu, per_cpu_second) = s.meter.report(&before, &after, me_storm.requests);
        me_storm.per_cpu_second = per_cpu_second;
        println!("{cpu}");
        println!(
            "{}",
            storm.line(&format!("{}  (the storm: POST /login, 32 conns)", s.tag))
        );
        storms.push((me_storm, storm));
    }

    let mut rss = Vec::new();
    for s in subjects {
        let rss_mib = peak_rss_kib(s.server.child.id()) as f64 / 1024.0;
        println!(
            "{:<34} {:>10.1} MiB",
            format!("{}{:<34}", s.tag, "server peak RSS"),
            rss_mib
        );
        rss.push(rss_mib);
    }

    // After the RSS figure, which stays comparable with runs from before this phase existed.
    let register = each(
        subjects,
        "POST /register, 16 connections",
        Load::Register,
        16,
        duration,
    )
    .await;

    health
        .into_iter()
        .zip(me)
        .zip(login)
        .zip(storms)
        .zip(rss)
        .zip(register)
        .map(
            |(((((health, me), login), (me_storm, storm)), rss_mib), register)| Figures {
                health,
                me,
                login,
                me_storm,
                storm,
                rss_mib,
                register,
            },
        )
        .collect()
}

/// The contract's targets, as ratios of one backend's figures from this run.
fn targets(subject: &Subject, f: &Figures, settings: &Settings) {
    let Settings { cpus, verify, .. } = *settings;
    let expected_login = cpus as f64 / verify;
    println!(
        "targets, {} (ratios of this run's figures):",
        subject.backend.name()
    );
    let rows = [
        (
            "/me throughput >= 50% of /health's",
            f.me.rps() / f.health.rps(),
            0.50,
            true,
        ),
        (
            "login throughput >= 95% of workers / verify",
            f.login.rps() / expected_login,
            0.95,
            true,
        ),
        (
            "/me p99 in the storm <= 3x idle p99",
            f.me_storm.percentile(0.99) / f.me.percentile(0.99),
            3.0,
            false,
        ),
        ("peak RSS <= 64 MiB", f.rss_mib / 64.0, 1.0, false),
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
    println!(
        "  (no target: registrations / the login bound {:.2}; each is one bcrypt hash)",
        f.register.rps() / expected_login
    );
    let errors = [
        &f.health,
        &f.me,
        &f.login,
        &f.me_storm,
        &f.storm,
        &f.register,
    ]
    .iter()
    .map(|s| s.errors)
    .sum::<usize>();
    if errors > 0 {
        println!("note: some requests did not answer as expected (see the error counts)");
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

/// Each PostgreSQL figure as a ratio of SQLite's.
fn compare(sqlite: &Figures, postgres: &Figures, cost: u32) {
    println!("PostgreSQL / SQLite (same build, this run):");
    println!(
        "  {:<32} {:>12} {:>12} {:>7}   {:>9} {:>9} {:>13}",
        "", "sqlite req/s", "pg req/s", "ratio", "p50 ratio", "p99 ratio", "per CPU-s"
    );
    let rows = [
        (
            "GET /health, 64 connections",
            &sqlite.health,
            &postgres.health,
        ),
        ("GET /me, 64 connections", &sqlite.me, &postgres.me),
        (
            "POST /login, 16 connections",
            &sqlite.login,
            &postgres.login,
        ),
        (
            "POST /register, 16 connections",
            &sqlite.register,
            &postgres.register,
        ),
        (
            "GET /me during a login storm",
            &sqlite.me_storm,
            &postgres.me_storm,
        ),
    ];
    for (name, s, p) in rows {
        println!(
            "  {name:<32} {:>12.1} {:>12.1} {:>7.2}   {:>9.2} {:>9.2} {:>13.2}",
            s.rps(),
            p.rps(),
            p.rps() / s.rps(),
            p.percentile(0.50) / s.percentile(0.50),
            p.percentile(0.99) / s.percentile(0.99),
            p.per_cpu_second / s.per_cpu_second
        );
    }
    println!(
        "  (per CPU-s: requests per CPU-second of the client, server, PostgreSQL and irq, a ratio \
         that the rest of the machine's load moves less; login and register at cost {cost}: \
         one bcrypt each, bound by the hashing threads on both backends)"
    );
}

/// One replica against two behind nginx, on the PostgreSQL database of `postgres`'s run.
async fn replicas(postgres: &Subject, postgres_port: u16, settings: &Settings) {
    let Some(bin) = nginx_binary() else {
        println!(
            "replicas phase skipped: no nginx (BENCH_NGINX, PATH, /usr/sbin; apt-get install nginx)"
        );
        return;
    };
    let version = nginx_version(&bin);
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("temp dir"),
        tempfile::tempdir().expect("temp dir"),
    );
    let url = OsStr::new(&postgres.database_url);
    let a = start_server(dir_a.path(), url, settings.cost);
    let b = start_server(dir_b.path(), url, settings.cost);
    let nginx = start_nginx(&bin, &a.addr, &b.addr);
    println!(
        "replicas: two servers on one PostgreSQL database (A at {}, B at {}), {version} in front \
         on loopback ({}, round robin, keepalive upstream connections)",
        a.addr, b.addr, nginx.workers
    );
    let mut groups = vec![
        Group::process("client", std::process::id()),
        Group::process("A", a.child.id()),
        Group::process("B", b.child.id()),
        Group::tree("nginx", nginx.child.id()),
    ];
    groups.extend(postmaster_pid(postgres_port).map(|pid| Group::tree("postgres", pid)));
    let meter = Meter::new(groups);
    let tokens = &postgres.tokens;
    let duration = settings.duration;
    let direct_a = phase(
        &meter,
        "GET /me direct to A, 64 conns",
        &a.addr,
        Load::Me,
        64,
        duration,
        tokens,
    )
    .await;
    let one = phase(
        &meter,
        "GET /me via nginx, A alone",
        &nginx.one,
        Load::Me,
        64,
        duration,
        tokens,
    )
    .await;
    let two = phase(
        &meter,
        "GET /me via nginx, A and B",
        &nginx.two,
        Load::Me,
        64,
        duration,
        tokens,
    )
    .await;
    let direct_b = phase(
        &meter,
        "GET /me direct to B, 64 conns",
        &b.addr,
        Load::Me,
        64,
        duration,
        tokens,
    )
    .await;
    println!();
    println!("replicas (ratios of this run's figures):");
    println!(
        "  {:<42} {:>7} {:>7} {:>10}",
        "", "req/s", "p99", "per CPU-s"
    );
    let rows = [
        ("two replicas / one, through nginx", &two, &one),
        ("through nginx / direct, one replica (A)", &one, &direct_a),
        ("two through nginx / one direct (A)", &two, &direct_a),
        ("B / A, direct", &direct_b, &direct_a),
    ];
    for (name, x, y) in rows {
        println!(
            "  {name:<42} {:>7.2} {:>7.2} {:>10.2}",
            x.rps() / y.rps(),
            x.percentile(0.99) / y.percentile(0.99),
            x.per_cpu_second / y.per_cpu_second
        );
    }
    let cpus = settings.cpus as f64;
    println!(
        "  (per CPU-s: requests per CPU-second of the client, the servers, nginx, PostgreSQL and \
         irq; {cpus} CPUs at that cost: direct {:.0}, through nginx to one {:.0}, to two {:.0} \
         req/s, with the client on them too)",
        cpus * direct_a.per_cpu_second,
        cpus * one.per_cpu_second,
        cpus * two.per_cpu_second
    );
    if direct_a.errors + one.errors + two.errors + direct_b.errors > 0 {
        println!("note: some requests did not answer 200 (see the error counts)");
    }
}
