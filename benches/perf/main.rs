//! Performance benchmark of issue #17: `cargo bench --bench perf`.
//!
//! One command, one run, every figure the issue asks for, each target as a ratio of figures
//! from this run, printed at the end as "met" or "not met". Not part of `cargo test`.
//!
//! The load generator is wrk (Debian's package; `BENCH_WRK` for another), one thread by
//! default (`BENCH_WRK_THREADS`), so that it takes at most one of the machine's CPUs and leaves
//! the rest to the server; each phase is one wrk process with a Lua script of the bench's
//! (`benches/perf/lua/`): an access token per request taken in turn from a list, login bodies
//! for random users, refresh tokens carried from each answer to a later request, a new email
//! per registration. Without wrk the bench stops at once, saying what to install.
//!
//! The servers are the release binary (`BENCH_BIN` to measure another build) on free loopback
//! ports, each with a temporary directory and database, `LOG_FORMAT=json` and `RUST_LOG=info`,
//! their log (the access log: a line per request) written to a file, and `LOGIN_MAX_FAILURES=0`
//! (every login comes from 127.0.0.1). Each database is filled straight into the schema the
//! server made, never through the API (`fill.rs`): N users (user 1 an admin), one session and
//! one audit event each, one bcrypt hash at the server's cost reused for all. A server is
//! started once to make its schema, stopped, its database filled, and started again: that
//! start is the one timed (from spawn to its "listening on" line, and to the first 200 of
//! `/health/ready`). Tokens come from real logins of users spread over the whole id range.
//!
//! Sections (`BENCH_ONLY=ceiling,scale,...` runs some of them; all by default), in this order:
//!
//! * `ceiling` (target 1): a bare warp 0.4 route inside the bench process (its own tokio
//!   runtime, two workers like the server's on two CPUs), answering GET with the very JSON the
//!   server's `/me` answered, measured with the same wrk settings (64 connections) right before
//!   and after `/health` and `/me` on SQLite with 10^3 users; `/me` over the mean of the two.
//! * `eddsa` (target 4): `/me` on a server with `JWT_ALGORITHM=EdDSA` (no `JWT_SECRET`) right
//!   after `/me` on the HS256 one, same data size.
//! * `scale` (target 2): the same server and figures at 10^3 and at `BENCH_LARGE_USERS`
//!   (default 10^6) users and sessions, on SQLite and on PostgreSQL (`BENCH_SCALE_POSTGRES=0`
//!   leaves PostgreSQL out), each phase run on every database in turn: `/me` (64
//!   connections), login at `BCRYPT_COST=4` (so that the database shows), refresh and register
//!   (16 connections each: the hashing queue holds 32), the first admin page
//!   (`?limit=50`) and a deep one (`?after_id=<max id - 60>&limit=50`) as latency of
//!   `BENCH_ADMIN_REQUESTS` (200) sequential requests and as throughput at 16 connections, and,
//!   without a target, a page by `offset` near the end. Each figure's cost at the large size
//!   over the small one (throughput: small / large; latency: large / small) against 1.2; fill
//!   time; start-up against 1 s.
//! * `postgres` (target 3, and 6's login on both): servers at bcrypt cost 12 on SQLite and on
//!   PostgreSQL (a throwaway cluster, the test suite's fixture `tests/api/pg.rs`: fsync off),
//!   `/me` on each back to back, login (16 connections) on each against the bcrypt bound (CPUs
//!   / one verify at cost 12, timed in this process before any server ran); then two more
//!   servers on the PostgreSQL database with nginx in front (`BENCH_NGINX`, else on PATH or in
//!   /usr/sbin), `/me` straight to one, through nginx to one, through nginx to both.
//! * `storm` (target 6): on the SQLite cost-12 server, `/me` idle, then `/me` while 32
//!   connections log in without pause (a second wrk); p99 over p99.
//! * `sizing` (target 5): logins per second per core at `BCRYPT_COST` 10, 11 and 12 (SQLite,
//!   16 connections): login throughput over the cores the server used, from /proc.
//! * `connections` (target 6): `/me` at 64, 256, 1024 and 4096 connections: no answer other
//!   than 200, no socket error, no answer slower than 4 s (wrk's timeout: a stall). The server
//!   caps connections at 128 per client address unless they come from a trusted proxy
//!   (`src/server.rs`), and every wrk connection comes from 127.0.0.1; this server runs with
//!   `TRUSTED_PROXIES=127.0.0.1`, as behind a proxy that carries many clients' connections.
//!
//! and, at the end, the peak RSS (VmHWM) of every SQLite server, each read before it stopped,
//! against 64 MiB (the connection sweep's server aside: printed, no target, since 4096
//! connections' buffers are what it measures), and the targets block.
//!
//! Without PostgreSQL installed its parts are skipped, saying so, and their targets print as
//! "not measured"; likewise the replicas without nginx.
//!
//! Before each phase the bench waits until the server (and PostgreSQL) is idle: a login phase
//! leaves logins queued for the hashing threads when wrk hangs up, and the next phase must not
//! pay for them. After each phase a `cpu` line says how many cores each process used (wrk, the
//! server, PostgreSQL, nginx, the bench itself for the bare route), irq, and the rest of the
//! machine: on a shared machine the figures of a phase where the rest was busy say less.
//!
//! Settings (environment): `BENCH_SECONDS` (per phase, default 10), `BENCH_LARGE_USERS`
//! (default 1000000), `BENCH_SMALL_USERS` (default 1000), `BENCH_ADMIN_REQUESTS` (200),
//! `BENCH_WRK_THREADS` (1), `BENCH_ONLY`, `BENCH_SCALE_POSTGRES`, `BENCH_BIN`, `BENCH_WRK`,
//! `BENCH_NGINX`, `PG_BIN` (the fixture's), `DATABASE_MAX_CONNECTIONS` (passed through to the
//! servers: PostgreSQL's pool, default 16). A quick run while developing:
//! `BENCH_SECONDS=2 BENCH_LARGE_USERS=10000 cargo bench --bench perf`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::Method;

#[allow(dead_code)]
#[path = "../common/mod.rs"]
mod common;
// The test suite's PostgreSQL fixture; the bench uses `Cluster::start`, `create_database`,
// `psql` and `port`, the rest serves the tests.
#[allow(dead_code)]
#[path = "../../tests/api/pg.rs"]
mod pg;

mod fill;
mod server;
mod wrk;

use common::{
    Backend, Conn, Group, Meter, env_or, nginx_binary, nginx_version, postmaster_pid, start_nginx,
};
use server::{Bare, Server, Spec, Startup, http_status};
use wrk::{Outcome, Run, Script, Wrk};

/// Every filled user's password, and the bench's registrations'.
pub const PASSWORD: &str = "Bench-Password-42";

/// A phase of requests that take microseconds: an answer slower than this is a stall.
const FAST_TIMEOUT: Duration = Duration::from_secs(4);
/// Phases at bcrypt cost 10 to 12, where a login waits its turn for seconds.
const SLOW_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Section {
    Ceiling,
    Eddsa,
    Scale,
    Postgres,
    Storm,
    Sizing,
    Connections,
}

const SECTIONS: [(&str, Section); 7] = [
    ("ceiling", Section::Ceiling),
    ("eddsa", Section::Eddsa),
    ("scale", Section::Scale),
    ("postgres", Section::Postgres),
    ("storm", Section::Storm),
    ("sizing", Section::Sizing),
    ("connections", Section::Connections),
];

struct Settings {
    seconds: u64,
    small: u64,
    large: u64,
    admin_requests: usize,
    cpus: usize,
    sections: Vec<Section>,
    /// The scale section on PostgreSQL too (SQLite always).
    scale_postgres: bool,
}

impl Settings {
    fn from_env() -> Settings {
        let sections = match std::env::var("BENCH_ONLY") {
            Ok(list) if !list.trim().is_empty() => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|name| {
                    SECTIONS
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(name))
                        .map(|&(_, s)| s)
                        .unwrap_or_else(|| {
                            let names: Vec<&str> = SECTIONS.iter().map(|(n, _)| *n).collect();
                            panic!("BENCH_ONLY: {name:?} is none of {}", names.join(", "))
                        })
                })
                .collect(),
            _ => SECTIONS.iter().map(|&(_, s)| s).collect(),
        };
        let small = env_or("BENCH_SMALL_USERS", 1000u64).max(100);
        Settings {
            seconds: env_or("BENCH_SECONDS", 10u64).max(1),
            small,
            large: env_or("BENCH_LARGE_USERS", 1_000_000u64).max(small),
            admin_requests: env_or("BENCH_ADMIN_REQUESTS", 200usize).max(10),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            sections,
            scale_postgres: std::env::var("BENCH_SCALE_POSTGRES").map_or(true, |v| v.trim() != "0"),
        }
    }

    fn wants(&self, section: Section) -> bool {
        self.sections.contains(&section)
    }
}

/// "10^6" for a power of ten, else the number.
fn size(n: u64) -> String {
    let mut k = 0;
    let mut m = n;
    while m >= 10 && m.is_multiple_of(10) {
        m /= 10;
        k += 1;
    }
    if m == 1 && k > 0 {
        format!("10^{k}")
    } else {
        n.to_string()
    }
}

/// A server under test with its data and tokens.
struct Subject {
    label: String,
    backend: Backend,
    users: u64,
    max_id: i64,
    fill: Duration,
    /// Dropped (stopped) before the directory below goes.
    server: Server,
    /// Access tokens of users spread over the id range, one per line.
    tokens: PathBuf,
    /// Refresh tokens, each of a session of its own, one per line.
    refresh: PathBuf,
    admin: String,
    postmaster: Option<u32>,
    database_url: String,
    _dir: tempfile::TempDir,
}

impl Subject {
    fn groups(&self) -> Vec<Group> {
        let mut groups = vec![Group::process("server", self.server.pid())];
        groups.extend(self.postmaster.map(|pid| Group::tree("postgres", pid)));
        groups
    }

    fn addr(&self) -> &str {
        &self.server.addr
    }
}

/// Sequential requests' latency.
struct Latency {
    median_ms: f64,
    p99_ms: f64,
    errors: usize,
}

/// A target's row in the final block.
struct Target {
    /// Sorts the rows in the issue's order.
    key: u32,
    name: String,
    value: f64,
    bound: Bound,
}

enum Bound {
    AtLeast(f64),
    AtMost(f64),
    Above(f64),
    Below(f64),
}

impl Bound {
    fn met(&self, v: f64) -> bool {
        match *self {
            Bound::AtLeast(b) => v >= b,
            Bound::AtMost(b) => v <= b,
            Bound::Above(b) => v > b,
            Bound::Below(b) => v < b,
        }
    }

    fn text(&self) -> String {
        match *self {
            Bound::AtLeast(b) => format!(">= {b:.2}"),
            Bound::AtMost(b) => format!("<= {b:.2}"),
            Bound::Above(b) => format!(">  {b:.2}"),
            Bound::Below(b) => format!("<  {b:.2}"),
        }
    }
}

struct Bench {
    s: Settings,
    wrk: Wrk,
    /// The wrk scripts.
    _work: tempfile::TempDir,
    client: tokio::runtime::Runtime,
    /// Started on first use; `Err`: why there is none.
    cluster: Option<Result<pg::Cluster, String>>,
    hashes: HashMap<u32, String>,
    /// One bcrypt verify, seconds, per cost.
    verify: HashMap<u32, f64>,
    targets: Vec<Target>,
    /// (server, peak RSS MiB) of every SQLite server, read before it stopped, but the one of
    /// the connection sweep.
    rss: Vec<(String, f64)>,
    /// The connection sweep's server's peak RSS, MiB.
    sweep_rss: Option<f64>,
    /// Reported without a target (sizing): (cost, logins/s per core).
    sizing: Vec<(u32, f64)>,
}

/// Set by SIGINT, SIGTERM or SIGHUP; the bench stops at the next check, unwinding, so that
/// every server, wrk, nginx and PostgreSQL is stopped by its guard.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Panics (unwinds, stopping everything) once a signal asked the bench to stop.
pub fn check_interrupted() {
    assert!(
        !INTERRUPTED.load(Ordering::SeqCst),
        "interrupted: stopping the servers, wrk, nginx and PostgreSQL"
    );
}

fn catch_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
}

fn main() {
    catch_signals();
    raise_file_limit();
    let settings = Settings::from_env();
    let work = tempfile::tempdir().expect("temp dir");
    let threads = env_or("BENCH_WRK_THREADS", 1usize).max(1);
    let wrk = match Wrk::find(work.path(), threads) {
        Ok(wrk) => wrk,
        Err(why) => {
            eprintln!("perf bench: {why}");
            std::process::exit(2);
        }
    };
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the client's runtime");
    let mut bench = Bench {
        s: settings,
        wrk,
        _work: work,
        client,
        cluster: None,
        hashes: HashMap::new(),
        verify: HashMap::new(),
        targets: Vec::new(),
        rss: Vec::new(),
        sweep_rss: None,
        sizing: Vec::new(),
    };
    bench.run();
}

/// The soft limit on open files up to the hard one: 4096 connections need as many descriptors
/// in wrk and in the server, which inherit it.
fn raise_file_limit() {
    // SAFETY: getrlimit and setrlimit read and write the struct we pass, which outlives them.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Waits until the processes of `groups` use under 0.05 cores over 200 ms (at most 60 s): a
/// phase must not start while the server still works off the last one (logins queued for the
/// hashing threads when wrk hung up, autovacuum after a fill). Says so when it waited long.
fn settle(groups: Vec<Group>) {
    let started = Instant::now();
    let meter = Meter::new(groups);
    loop {
        check_interrupted();
        let before = Meter::sample();
        std::thread::sleep(Duration::from_millis(200));
        let busy: f64 = meter
            .shares(&before, &Meter::sample())
            .groups
            .iter()
            .map(|(_, cores)| cores)
            .sum();
        if busy < 0.05 {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            println!("    (the server still used {busy:.2} cores after 60 s: measured anyway)");
            return;
        }
    }
    if started.elapsed() > Duration::from_secs(1) {
        println!(
            "    (waited {:.1} s for the server to finish earlier work)",
            started.elapsed().as_secs_f64()
        );
    }
}

impl Bench {
    fn run(&mut self) {
        let s = &self.s;
        let names: Vec<&str> = SECTIONS
            .iter()
            .filter(|(_, sec)| s.wants(*sec))
            .map(|(n, _)| *n)
            .collect();
        println!(
            "warp-auth-api perf benchmark (issue #17): {} CPUs, {} s per phase, {} with {} \
             thread(s); databases of {} and {} users; sections: {}",
            s.cpus,
            s.seconds,
            self.wrk.version,
            self.wrk.threads,
            size(s.small),
            size(s.large),
            names.join(", ")
        );
        println!(
            "servers: the release binary, LOG_FORMAT=json RUST_LOG=info, the access log to a \
             file; figures are ratios within this run"
        );

        // One verify per cost, timed before any server runs (median of 5).
        let mut costs = Vec::new();
        if self.s.wants(Section::Postgres) || self.s.wants(Section::Storm) {
            costs.push(12);
        }
        if self.s.wants(Section::Sizing) {
            costs = vec![10, 11, 12];
        }
        for cost in costs {
            let v = self.verify_time(cost);
            println!(
                "{:<44} {:>9.1} ms (median of 5, cost {cost}, timed before the servers started)",
                format!("one bcrypt verify, cost {cost}"),
                v * 1000.0
            );
        }

        if self.s.wants(Section::Ceiling)
            || self.s.wants(Section::Eddsa)
            || self.s.wants(Section::Scale)
        {
            let small = self.subject(Backend::Sqlite, self.s.small, 4, &[], "", 256, 36);
            if self.s.wants(Section::Ceiling) {
                self.ceiling(&small);
            }
            if self.s.wants(Section::Eddsa) {
                let env = [("JWT_ALGORITHM", "EdDSA"), ("JWT_SECRET", "")];
                let eddsa = self.subject(Backend::Sqlite, self.s.small, 4, &env, "EdDSA", 256, 0);
                self.eddsa(&small, &eddsa);
                self.retire(eddsa);
            }
            if self.s.wants(Section::Scale) {
                self.scale(small);
            } else {
                self.retire(small);
            }
        }

        if self.s.wants(Section::Postgres)
            || self.s.wants(Section::Storm)
            || self.s.wants(Section::Sizing)
        {
            let s12 = self.subject(Backend::Sqlite, self.s.small, 12, &[], "cost 12", 16, 0);
            if self.s.wants(Section::Postgres) {
                self.postgres(&s12);
            }
            if self.s.wants(Section::Storm) {
                self.storm(&s12);
            }
            if self.s.wants(Section::Sizing) {
                self.sizing(&s12);
            }
            self.retire(s12);
        }

        if self.s.wants(Section::Connections) {
            self.connections();
        }

        self.report();
    }

    /// One bcrypt verify at `cost`, seconds (median of 5), once per cost.
    fn verify_time(&mut self, cost: u32) -> f64 {
        if let Some(&v) = self.verify.get(&cost) {
            return v;
        }
        let hash = self.hash(cost);
        let mut times: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                assert!(bcrypt::verify(PASSWORD, &hash).expect("verify"));
                t.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        self.verify.insert(cost, times[2]);
        times[2]
    }

    /// The password's hash at `cost`, made once.
    fn hash(&mut self, cost: u32) -> String {
        self.hashes
            .entry(cost)
            .or_insert_with(|| bcrypt::hash(PASSWORD, cost).expect("bcrypt hash"))
            .clone()
    }

    /// The PostgreSQL cluster, started on first use; `Err` says why there is none.
    fn cluster(&mut self) -> Result<&pg::Cluster, String> {
        self.cluster
            .get_or_insert_with(pg::Cluster::start)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// A server on a filled database, and its tokens: `tokens` access tokens of users spread
    /// over the ids, `refresh` refresh tokens (each of a session of its own).
    #[allow(clippy::too_many_arguments)]
    fn subject(
        &mut self,
        backend: Backend,
        users: u64,
        cost: u32,
        env: &[(&str, &str)],
        note: &str,
        tokens: usize,
        refresh: usize,
    ) -> Subject {
        let dir = tempfile::tempdir().expect("temp dir");
        let (database_url, postmaster) = match backend {
            Backend::Sqlite => (
                dir.path().join("bench.db").to_string_lossy().into_owned(),
                None,
            ),
            Backend::Postgres => {
                let cluster = self.cluster().expect("PostgreSQL, checked by the caller");
                (cluster.create_database(), postmaster_pid(cluster.port()))
            }
        };
        let pool = std::env::var("DATABASE_MAX_CONNECTIONS").unwrap_or_default();
        let mut env: Vec<(&str, &str)> = env.to_vec();
        if !pool.is_empty() {
            env.push(("DATABASE_MAX_CONNECTIONS", &pool));
        }
        let spec = Spec {
            dir: dir.path(),
            database_url: &database_url,
            cost,
            env: &env,
        };
        // The first start makes the schema (and an EdDSA server its key); then it stops.
        drop(Server::start(&spec));
        let hash = self.hash(cost);
        let fill = match backend {
            Backend::Sqlite => fill::sqlite(&dir.path().join("bench.db"), users, &hash)
                .unwrap_or_else(|e| panic!("filling the SQLite database: {e}")),
            Backend::Postgres => {
                let cluster = self.cluster().expect("PostgreSQL");
                let started = Instant::now();
                cluster
                    .psql(&database_url, &fill::postgres_sql(users, &hash))
                    .unwrap_or_else(|e| panic!("filling the PostgreSQL database: {e}"));
                cluster
                    .psql(&database_url, "VACUUM ANALYZE")
                    .unwrap_or_else(|e| panic!("VACUUM ANALYZE: {e}"));
                started.elapsed()
            }
        };
        let server = Server::start(&spec);
        let max_id = match backend {
            Backend::Sqlite => users as i64,
            Backend::Postgres => self
                .cluster()
                .expect("PostgreSQL")
                .psql(&database_url, "SELECT max(id) FROM users")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(users as i64),
        };
        let label = format!(
            "{} {}{}{}",
            backend.name(),
            size(users),
            if note.is_empty() { "" } else { ", " },
            note
        );

        // Users 2..=users; tokens of `tokens` of them spread evenly, refresh tokens of others.
        let spread = |count: usize, shift: u64| -> Vec<String> {
            let span = users.saturating_sub(2).max(1);
            (0..count as u64)
                .map(|i| fill::email(2 + (i * span / count as u64 + shift) % span))
                .collect()
        };
        let mut emails = vec![fill::ADMIN_EMAIL.to_owned()];
        emails.extend(spread(tokens, 0));
        emails.extend(spread(refresh, 1));
        let pairs = self.login_all(&server.addr, emails);
        let admin = pairs[0].0.clone();
        let access: Vec<&str> = pairs[1..=tokens].iter().map(|p| p.0.as_str()).collect();
        let refreshes: Vec<&str> = pairs[tokens + 1..].iter().map(|p| p.1.as_str()).collect();
        let tokens_file = dir.path().join("tokens.txt");
        let refresh_file = dir.path().join("refresh.txt");
        std::fs::write(&tokens_file, access.join("\n")).expect("write tokens");
        std::fs::write(&refresh_file, refreshes.join("\n")).expect("write refresh tokens");
        println!(
            "{label}: {} users, sessions and audit events filled in {:.2} s; start-up {:.3} s \
             to \"listening\", {:.3} s to ready; bcrypt cost {cost}; server at {}",
            size(users),
            fill.as_secs_f64(),
            server.startup.listening.as_secs_f64(),
            server.startup.ready.as_secs_f64(),
            server.addr
        );
        Subject {
            label,
            backend,
            users,
            max_id,
            fill,
            server,
            tokens: tokens_file,
            refresh: refresh_file,
            admin,
            postmaster,
            database_url,
            _dir: dir,
        }
    }

    /// Logs each in (8 at a time): (access token, refresh token) per email, in order.
    fn login_all(&self, addr: &str, emails: Vec<String>) -> Vec<(String, String)> {
        let emails = Arc::new(emails);
        let next = Arc::new(AtomicUsize::new(0));
        self.client.block_on(async {
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    let (addr, emails, next) = (addr.to_owned(), emails.clone(), next.clone());
                    tokio::spawn(async move {
                        let mut conn = Conn::open(&addr).await;
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(email) = emails.get(i) else { break };
                            let body = format!(r#"{{"email":"{email}","password":"{PASSWORD}"}}"#);
                            let (status, answer) = conn
                                .send(
                                    Method::POST,
                                    "/api/v1/users/login",
                                    None,
                                    Some(body.as_bytes()),
                                )
                                .await;
                            assert_eq!(
                                status,
                                200,
                                "login of {email}: {}",
                                String::from_utf8_lossy(&answer)
                            );
                            let v: serde_json::Value =
                                serde_json::from_slice(&answer).expect("token JSON");
                            let token = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                            done.push((i, (token("access_token"), token("refresh_token"))));
                        }
                        done
                    })
                })
                .collect();
            let mut all = Vec::new();
            for worker in workers {
                all.extend(worker.await.expect("login worker"));
            }
            all.sort_by_key(|(i, _)| *i);
            all.into_iter().map(|(_, pair)| pair).collect()
        })
    }

    /// A GET's status and body.
    fn get(&self, addr: &str, path: &str, token: &str) -> (u16, bytes::Bytes) {
        self.client.block_on(async {
            Conn::open(addr)
                .await
                .send(Method::GET, path, Some(token), None)
                .await
        })
    }

    /// `n` GETs one after the other on one connection (after 3 not counted).
    fn sequential(&self, addr: &str, path: &str, token: &str, n: usize) -> Latency {
        self.client.block_on(async {
            let mut conn = Conn::open(addr).await;
            for _ in 0..3 {
                conn.send(Method::GET, path, Some(token), None).await;
            }
            let mut times = Vec::with_capacity(n);
            let mut errors = 0;
            for _ in 0..n {
                let t = Instant::now();
                let (status, _) = conn.send(Method::GET, path, Some(token), None).await;
                times.push(t.elapsed().as_secs_f64() * 1000.0);
                errors += usize::from(status != 200);
            }
            times.sort_by(f64::total_cmp);
            let at = |p: f64| times[((times.len() as f64 * p).ceil() as usize).clamp(1, n) - 1];
            Latency {
                median_ms: at(0.5),
                p99_ms: at(0.99),
                errors,
            }
        })
    }

    /// Runs wrk on `s` once it is idle, and prints the phase's lines.
    fn phase(&self, s: &Subject, name: &str, run: &Run<'_>) -> Outcome {
        check_interrupted();
        settle(s.groups());
        self.phase_now(s, name, run)
    }

    /// [`Bench::phase`] without waiting for the server to be idle.
    fn phase_now(&self, s: &Subject, name: &str, run: &Run<'_>) -> Outcome {
        let outcome = self.wrk.run(run, s.groups());
        check_interrupted();
        println!("{}", outcome.lines(&format!("{}: {name}", s.label)));
        s.server.trim_log();
        outcome
    }

    fn me(&self, s: &Subject, connections: usize, timeout: Duration) -> Outcome {
        self.phase(
            s,
            &format!("GET /me, {connections} conns"),
            &Run {
                addr: s.addr(),
                path: "/api/v1/users/me",
                script: Script::Tokens { file: &s.tokens },
                connections,
                seconds: self.s.seconds,
                timeout,
            },
        )
    }

    fn login(&self, s: &Subject, connections: usize, seconds: u64, timeout: Duration) -> Outcome {
        self.phase(
            s,
            &format!("POST /login, {connections} conns"),
            &Run {
                addr: s.addr(),
                path: "/api/v1/users/login",
                script: Script::Login {
                    first: 2,
                    last: s.users.max(2),
                },
                connections,
                seconds,
                timeout,
            },
        )
    }

    /// Stops a server, first noting a SQLite server's peak RSS.
    fn retire(&mut self, s: Subject) {
        if s.backend == Backend::Sqlite {
            self.rss.push((s.label.clone(), s.server.peak_rss_mib()));
        }
        drop(s);
    }

    fn target(&mut self, key: u32, name: impl Into<String>, value: f64, bound: Bound) {
        self.targets.push(Target {
            key,
            name: name.into(),
            value,
            bound,
        });
    }

    /// Target 1: `/me` against a bare warp route's throughput.
    fn ceiling(&mut self, s: &Subject) {
        println!();
        let token = std::fs::read_to_string(&s.tokens)
            .ok()
            .and_then(|t| t.lines().next().map(str::to_owned))
            .expect("a token");
        let (status, body) = self.get(s.addr(), "/api/v1/users/me", &token);
        assert_eq!(status, 200, "GET /me: {}", String::from_utf8_lossy(&body));
        let json: serde_json::Value = serde_json::from_slice(&body).expect("/me's JSON");
        let bare = Bare::start(json);
        assert_eq!(
            http_status(&bare.addr, "/bare"),
            Some(200),
            "the bare route"
        );
        println!(
            "ceiling: a bare warp 0.4 route in the bench process (2 workers, no log) answering \
             /me's {}-byte JSON, at {}; then {}",
            body.len(),
            bare.addr,
            s.label
        );
        let bare_run = || Run {
            addr: &bare.addr,
            path: "/bare",
            script: Script::Get { header: None },
            connections: 64,
            seconds: self.s.seconds,
            timeout: FAST_TIMEOUT,
        };
        let bench = || vec![Group::process("bench", std::process::id())];
        let before = self.wrk.run(&bare_run(), bench());
        println!("{}", before.lines("bare warp route, 64 conns"));
        let health = self.phase(
            s,
            "GET /health, 64 conns",
            &Run {
                addr: s.addr(),
                path: "/health",
                script: Script::Get { header: None },
                connections: 64,
                seconds: self.s.seconds,
                timeout: FAST_TIMEOUT,
            },
        );
        let me = self.me(s, 64, FAST_TIMEOUT);
        let after = self.wrk.run(&bare_run(), bench());
        println!("{}", after.lines("bare warp route, 64 conns"));
        drop(bare);
        let ceiling = (before.rps() + after.rps()) / 2.0;
        let bare_per_cpu = (before.per_cpu_second() + after.per_cpu_second()) / 2.0;
        println!(
            "  /me / bare route {:.2}, /health / bare route {:.2} (bare route before {:.0}, after \
             {:.0} req/s: their mean is the ceiling); per CPU-second, which other load moves \
             less: /me {:.2}, /health {:.2}",
            me.rps() / ceiling,
            health.rps() / ceiling,
            before.rps(),
            after.rps(),
            me.per_cpu_second() / bare_per_cpu,
            health.per_cpu_second() / bare_per_cpu,
        );
        self.target(
            100,
            "/me / bare warp route (SQLite, access log on)",
            me.rps() / ceiling,
            Bound::AtLeast(0.70),
        );
    }

    /// Target 4: `/me` with EdDSA against HS256.
    fn eddsa(&mut self, hs256: &Subject, eddsa: &Subject) {
        println!();
        println!("EdDSA: /me on the HS256 server, then on the EdDSA one");
        let hs = self.me(hs256, 64, FAST_TIMEOUT);
        let ed = self.me(eddsa, 64, FAST_TIMEOUT);
        println!(
            "  EdDSA / HS256, /me: {:.2} (per CPU-second {:.2})",
            ed.rps() / hs.rps(),
            ed.per_cpu_second() / hs.per_cpu_second()
        );
        self.target(
            400,
            "/me, EdDSA / HS256",
            ed.rps() / hs.rps(),
            Bound::AtLeast(0.80),
        );
    }

    /// Target 2: the same figures at two sizes, on each backend asked for.
    fn scale(&mut self, small: Subject) {
        let mut subjects = vec![small];
        let large = self.s.large;
        subjects.push(self.subject(Backend::Sqlite, large, 4, &[], "", 256, 36));
        if !self.s.scale_postgres {
            println!("scale on PostgreSQL left out (BENCH_SCALE_POSTGRES=0)");
        } else if let Some(why) = self.cluster().err() {
            println!("scale on PostgreSQL skipped: {why}");
        } else {
            let small = self.s.small;
            subjects.push(self.subject(Backend::Postgres, small, 4, &[], "", 256, 36));
            subjects.push(self.subject(Backend::Postgres, large, 4, &[], "", 256, 36));
        }
        println!();
        println!(
            "scale: each phase on every database in turn ({})",
            subjects
                .iter()
                .map(|s| s.label.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let seconds = self.s.seconds;
        let n = self.s.admin_requests;
        let each = |f: &dyn Fn(&Subject) -> Outcome| subjects.iter().map(f).collect::<Vec<_>>();
        let me = each(&|s| self.me(s, 64, FAST_TIMEOUT));
        let first_path = "/api/v1/admin/users?limit=50".to_owned();
        let deep_path = |s: &Subject| {
            format!(
                "/api/v1/admin/users?after_id={}&limit=50",
                (s.max_id - 60).max(0)
            )
        };
        let offset_path = |s: &Subject| {
            format!(
                "/api/v1/admin/users?offset={}&limit=50",
                s.users.saturating_sub(60)
            )
        };
        let sequential = |name: &str, path: &dyn Fn(&Subject) -> String, n: usize| {
            subjects
                .iter()
                .map(|s| {
                    let l = self.sequential(s.addr(), &path(s), &s.admin, n);
                    println!(
                        "{:<44} median {:>8.2} ms   p99 {:>8.2} ms   ({n} sequential requests, {} errors)",
                        format!("{}: {name}", s.label),
                        l.median_ms,
                        l.p99_ms,
                        l.errors
                    );
                    l
                })
                .collect::<Vec<_>>()
        };
        let first_seq = sequential("admin first page", &|_| first_path.clone(), n);
        let deep_seq = sequential("admin deep page (after_id)", &deep_path, n);
        let offset_seq = sequential("admin deep page (offset)", &offset_path, (n / 4).max(10));
        let admin_run = |s: &Subject, name: &str, path: String| {
            self.phase(
                s,
                name,
                &Run {
                    addr: s.addr(),
                    path: &path,
                    script: Script::Get {
                        header: Some(format!("Authorization: Bearer {}", s.admin)),
                    },
                    connections: 16,
                    seconds,
                    timeout: FAST_TIMEOUT,
                },
            )
        };
        let first = each(&|s| admin_run(s, "admin first page, 16 conns", first_path.clone()));
        let deep = each(&|s| admin_run(s, "admin deep page, 16 conns", deep_path(s)));
        let login = each(&|s| self.login(s, 16, seconds, FAST_TIMEOUT));
        let refresh = each(&|s| {
            self.phase(
                s,
                "POST /refresh, 16 conns",
                &Run {
                    addr: s.addr(),
                    path: "/api/v1/users/refresh",
                    script: Script::Refresh { file: &s.refresh },
                    connections: 16,
                    seconds,
                    timeout: FAST_TIMEOUT,
                },
            )
        });
        let register = each(&|s| {
            self.phase(
                s,
                "POST /register, 16 conns",
                &Run {
                    addr: s.addr(),
                    path: "/api/v1/users/register",
                    script: Script::Register {
                        tag: &s.server.addr.replace([':', '.'], "-"),
                    },
                    connections: 16,
                    seconds,
                    timeout: FAST_TIMEOUT,
                },
            )
        });

        // Pairs (small, large) per backend.
        for (backend, key) in [(Backend::Sqlite, 200), (Backend::Postgres, 250)] {
            let Some(a) = subjects.iter().position(|s| s.backend == backend) else {
                continue;
            };
            let b = a + 1;
            if subjects.get(b).is_none_or(|s| s.backend != backend) {
                continue;
            }
            let (sa, sb) = (&subjects[a], &subjects[b]);
            let (za, zb) = (size(sa.users), size(sb.users));
            println!();
            println!(
                "scale, {} ({za} -> {zb} users and sessions; cost = {za}'s throughput / {zb}'s, or \
                 {zb}'s latency / {za}'s):",
                backend.name()
            );
            println!(
                "  {:<40} {:>16} {:>16} {:>7}   target",
                "figure", za, zb, "cost"
            );
            let mut rows: Vec<(String, String, String, f64, bool)> = Vec::new();
            let rps = |o: &[Outcome]| (o[a].rps(), o[b].rps());
            for (name, o) in [
                ("GET /me, 64 conns", &me),
                ("POST /login (cost 4), 16 conns", &login),
                ("POST /refresh, 16 conns", &refresh),
                ("POST /register (cost 4), 16 conns", &register),
            ] {
                let (x, y) = rps(o);
                rows.push((
                    name.to_owned(),
                    format!("{x:.1} req/s"),
                    format!("{y:.1} req/s"),
                    x / y,
                    true,
                ));
                rows.push((
                    "  its p99".to_owned(),
                    format!("{:.2} ms", o[a].p99_ms),
                    format!("{:.2} ms", o[b].p99_ms),
                    o[b].p99_ms / o[a].p99_ms,
                    false,
                ));
            }
            for (name, l) in [
                ("admin first page, median", &first_seq),
                ("admin deep page (after_id), median", &deep_seq),
            ] {
                rows.push((
                    name.to_owned(),
                    format!("{:.2} ms", l[a].median_ms),
                    format!("{:.2} ms", l[b].median_ms),
                    l[b].median_ms / l[a].median_ms,
                    true,
                ));
                rows.push((
                    "  its p99".to_owned(),
                    format!("{:.2} ms", l[a].p99_ms),
                    format!("{:.2} ms", l[b].p99_ms),
                    l[b].p99_ms / l[a].p99_ms,
                    false,
                ));
            }
            for (name, o) in [
                ("admin first page, 16 conns", &first),
                ("admin deep page (after_id), 16 conns", &deep),
            ] {
                let (x, y) = rps(o);
                rows.push((
                    name.to_owned(),
                    format!("{x:.1} req/s"),
                    format!("{y:.1} req/s"),
                    x / y,
                    false,
                ));
            }
            rows.push((
                "admin deep page (offset), median".to_owned(),
                format!("{:.2} ms", offset_seq[a].median_ms),
                format!("{:.2} ms", offset_seq[b].median_ms),
                offset_seq[b].median_ms / offset_seq[a].median_ms,
                false,
            ));
            for (i, (name, x, y, cost, target)) in rows.into_iter().enumerate() {
                let verdict = if target {
                    format!("<= 1.20  {}", if cost <= 1.2 { "met" } else { "not met" })
                } else {
                    "(no target)".to_owned()
                };
                println!("  {name:<40} {x:>16} {y:>16} {cost:>7.2}   {verdict}");
                if target {
                    self.target(
                        key + i as u32,
                        format!("{}: {name}, {zb} / {za}", backend.name()),
                        cost,
                        Bound::AtMost(1.2),
                    );
                }
            }
            println!(
                "  fill: {za} {:.2} s, {zb} {:.2} s; start-up to \"listening\" {:.3} s and {:.3} s, \
                 to ready {:.3} s and {:.3} s",
                sa.fill.as_secs_f64(),
                sb.fill.as_secs_f64(),
                sa.server.startup.listening.as_secs_f64(),
                sb.server.startup.listening.as_secs_f64(),
                sa.server.startup.ready.as_secs_f64(),
                sb.server.startup.ready.as_secs_f64(),
            );
            let startups: Vec<(String, Startup)> = [sa, sb]
                .iter()
                .map(|s| (s.label.clone(), s.server.startup))
                .collect();
            for (j, (label, startup)) in startups.into_iter().enumerate() {
                self.target(
                    key + 40 + j as u32,
                    format!("{label}: start-up to ready, s"),
                    startup.ready.as_secs_f64(),
                    Bound::Below(1.0),
                );
            }
        }
        for s in subjects {
            self.retire(s);
        }
    }

    /// Target 3, and 6's login at the bound on both backends.
    fn postgres(&mut self, sqlite: &Subject) {
        println!();
        let bound = self.s.cpus as f64 / self.verify_time(12);
        let seconds = self.s.seconds;
        let login = |b: &Bench, s: &Subject| b.login(s, 16, seconds, SLOW_TIMEOUT);
        if let Some(why) = self.cluster().err() {
            println!("postgres section: PostgreSQL is not available ({why}); SQLite's login only");
            let o = login(self, sqlite);
            self.target(
                610,
                "sqlite: login / bcrypt bound (cost 12)",
                o.rps() / bound,
                Bound::AtLeast(0.95),
            );
            return;
        }
        let pg = self.subject(Backend::Postgres, self.s.small, 12, &[], "cost 12", 16, 0);
        let version = self
            .cluster()
            .ok()
            .and_then(|c| c.psql(&pg.database_url, "show server_version").ok())
            .unwrap_or_default();
        println!(
            "postgres: PostgreSQL {version} (the test fixture's cluster: fsync off) against \
             SQLite (synchronous = FULL), same build, bcrypt cost 12; login bound = {} CPUs / one \
             verify = {bound:.2} logins/s",
            self.s.cpus
        );
        let me_sqlite = self.me(sqlite, 64, FAST_TIMEOUT);
        let me_pg = self.me(&pg, 64, FAST_TIMEOUT);
        let login_sqlite = login(self, sqlite);
        let login_pg = login(self, &pg);
        let verify = self.verify_time(12);
        let per_core = |o: &Outcome| o.rps() / o.cpu.cores("server") * verify;
        println!(
            "  PostgreSQL / SQLite, /me: {:.2} (per CPU-second {:.2}); login / bound: SQLite \
             {:.2}, PostgreSQL {:.2} (logins per server core / (1 / verify), which other load \
             on the machine moves less: SQLite {:.2}, PostgreSQL {:.2})",
            me_pg.rps() / me_sqlite.rps(),
            me_pg.per_cpu_second() / me_sqlite.per_cpu_second(),
            login_sqlite.rps() / bound,
            login_pg.rps() / bound,
            per_core(&login_sqlite),
            per_core(&login_pg),
        );
        self.target(
            300,
            "/me, PostgreSQL / SQLite",
            me_pg.rps() / me_sqlite.rps(),
            Bound::AtLeast(0.40),
        );
        self.target(
            301,
            "postgres: login / bcrypt bound (cost 12)",
            login_pg.rps() / bound,
            Bound::AtLeast(0.95),
        );
        self.target(
            610,
            "sqlite: login / bcrypt bound (cost 12; PostgreSQL's in 3)",
            login_sqlite.rps() / bound,
            Bound::AtLeast(0.95),
        );
        self.replicas(&pg);
    }

    /// Two replicas behind nginx against one.
    fn replicas(&mut self, pg: &Subject) {
        let Some(bin) = nginx_binary() else {
            println!(
                "replicas skipped: no nginx (BENCH_NGINX, PATH, /usr/sbin; apt-get install nginx)"
            );
            return;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
        for d in [&dir_a, &dir_b] {
            std::fs::create_dir(d).expect("replica directory");
        }
        fn spec<'a>(dir: &'a Path, database_url: &'a str) -> Spec<'a> {
            Spec {
                dir,
                database_url,
                cost: 12,
                env: &[],
            }
        }
        let a = Server::start(&spec(&dir_a, &pg.database_url));
        let b = Server::start(&spec(&dir_b, &pg.database_url));
        let nginx = start_nginx(&bin, &a.addr, &b.addr);
        println!(
            "replicas: two more servers on that PostgreSQL database (A {}, B {}), {} in front \
             ({}, round robin, keepalive upstream connections)",
            a.addr,
            b.addr,
            nginx_version(&bin),
            nginx.workers
        );
        let groups = || {
            let mut g = vec![
                Group::process("A", a.pid()),
                Group::process("B", b.pid()),
                Group::tree("nginx", nginx.child.id()),
            ];
            g.extend(pg.postmaster.map(|pid| Group::tree("postgres", pid)));
            g
        };
        let run = |addr: &str, name: &str| {
            settle(groups());
            let o = self.wrk.run(
                &Run {
                    addr,
                    path: "/api/v1/users/me",
                    script: Script::Tokens { file: &pg.tokens },
                    connections: 64,
                    seconds: self.s.seconds,
                    timeout: FAST_TIMEOUT,
                },
                groups(),
            );
            println!("{}", o.lines(name));
            a.trim_log();
            b.trim_log();
            o
        };
        let direct = run(&a.addr, "GET /me straight to A, 64 conns");
        let one = run(&nginx.one, "GET /me via nginx to A, 64 conns");
        let two = run(&nginx.two, "GET /me via nginx to A and B, 64 conns");
        println!(
            "  two replicas / one, through nginx: {:.2} (per CPU-second {:.2}); through nginx / \
             straight, one replica: {:.2}",
            two.rps() / one.rps(),
            two.per_cpu_second() / one.per_cpu_second(),
            one.rps() / direct.rps()
        );
        self.target(
            302,
            "/me, two replicas / one, behind nginx",
            two.rps() / one.rps(),
            Bound::Above(1.0),
        );
    }

    /// Target 6: `/me`'s p99 in a login storm against idle.
    fn storm(&mut self, s: &Subject) {
        println!();
        println!("storm: /me idle, then /me while 32 connections log in without pause (cost 12)");
        let idle = self.me(s, 64, FAST_TIMEOUT);
        let seconds = self.s.seconds;
        settle(s.groups());
        let storm = self.wrk.start(&Run {
            addr: s.addr(),
            path: "/api/v1/users/login",
            script: Script::Login {
                first: 2,
                last: s.users.max(2),
            },
            connections: 32,
            seconds: seconds + 2,
            timeout: SLOW_TIMEOUT,
        });
        std::thread::sleep(Duration::from_secs(1));
        let busy = self.phase_now(
            s,
            "GET /me during the storm, 64 conns",
            &Run {
                addr: s.addr(),
                path: "/api/v1/users/me",
                script: Script::Tokens { file: &s.tokens },
                connections: 64,
                seconds,
                timeout: FAST_TIMEOUT,
            },
        );
        let storm = storm.finish(s.groups());
        println!(
            "{}",
            storm.lines(&format!("{}: the storm, POST /login, 32 conns", s.label))
        );
        let ratio = busy.p99_ms / idle.p99_ms;
        println!("  /me p99 in the storm / idle: {ratio:.2}");
        if storm.errors() > 0 {
            println!(
                "  note: some of the storm's logins failed: it was not the storm it should be"
            );
        }
        self.target(
            620,
            "/me p99 in a login storm / idle p99",
            ratio,
            Bound::AtMost(3.0),
        );
    }

    /// Target 5: logins per second per core at costs 10, 11 and 12.
    fn sizing(&mut self, s12: &Subject) {
        println!();
        println!("sizing: POST /login at 16 connections on SQLite, per bcrypt cost");
        let mut rows = Vec::new();
        for cost in [10, 11, 12] {
            let own = (cost != 12).then(|| {
                let note = format!("cost {cost}");
                self.subject(Backend::Sqlite, self.s.small, cost, &[], &note, 0, 0)
            });
            let s = own.as_ref().unwrap_or(s12);
            let o = self.login(s, 16, self.s.seconds, SLOW_TIMEOUT);
            let cores = o.cpu.cores("server");
            rows.push((cost, self.verify_time(cost), o.rps(), cores));
            if let Some(own) = own {
                self.retire(own);
            }
        }
        println!(
            "  {:>4} {:>12} {:>10} {:>13} {:>18} {:>17} {:>7}",
            "cost",
            "one verify",
            "logins/s",
            "server cores",
            "logins/s per core",
            "1 / verify",
            "ratio"
        );
        for (cost, verify, rps, cores) in rows {
            let per_core = rps / cores;
            println!(
                "  {cost:>4} {:>9.1} ms {rps:>10.2} {cores:>13.2} {per_core:>18.2} {:>17.2} {:>7.2}",
                verify * 1000.0,
                1.0 / verify,
                per_core * verify
            );
            self.sizing.push((cost, per_core));
        }
        println!(
            "  (server cores: the server process's CPU from /proc during the phase; 1 / verify: \
             one core hashing without pause; ratio: the first over the second)"
        );
    }

    /// Target 6: `/me` at 64 to 4096 connections, no error and no stall.
    fn connections(&mut self) {
        println!();
        let env = [("TRUSTED_PROXIES", "127.0.0.1")];
        let s = self.subject(
            Backend::Sqlite,
            self.s.small,
            4,
            &env,
            "TRUSTED_PROXIES=127.0.0.1",
            256,
            0,
        );
        println!(
            "connections: /me at 64 to 4096 connections; every wrk connection comes from \
             127.0.0.1 and the server caps 128 per client address except from a trusted proxy, so \
             this server trusts 127.0.0.1 (as behind a proxy carrying many clients); an answer \
             slower than {} s counts as a stall",
            FAST_TIMEOUT.as_secs()
        );
        let mut failures = 0;
        let mut worst_p99: f64 = 0.0;
        for c in [64, 256, 1024, 4096] {
            let o = self.me(&s, c, FAST_TIMEOUT);
            println!("    max latency {:.1} ms", o.max_ms);
            failures += o.errors();
            worst_p99 = worst_p99.max(o.p99_ms);
        }
        println!(
            "  failed answers at 64 to 4096 connections: {failures} (worst p99 {worst_p99:.1} ms)"
        );
        self.target(
            630,
            "/me at 64-4096 conns: non-2xx + socket errors + stalls",
            failures as f64,
            Bound::AtMost(0.0),
        );
        let rss = s.server.peak_rss_mib();
        println!(
            "  the server's peak RSS after the sweep: {rss:.1} MiB (no target: its buffers for 4096 connections)"
        );
        self.sweep_rss = Some(rss);
    }

    fn report(&mut self) {
        println!();
        if !self.rss.is_empty() || self.sweep_rss.is_some() {
            let parts: Vec<String> = self
                .rss
                .iter()
                .map(|(label, mib)| format!("{label} {mib:.1}"))
                .collect();
            println!(
                "peak RSS (VmHWM, MiB) of each SQLite server after its phases: {}{}",
                parts.join(", "),
                self.sweep_rss
                    .map(|mib| format!("; the connection sweep's: {mib:.1}, no target"))
                    .unwrap_or_default()
            );
        }
        if !self.rss.is_empty() {
            let max = self.rss.iter().map(|r| r.1).fold(0.0, f64::max);
            self.target(
                640,
                "peak RSS on SQLite (largest server, the sweep's aside), MiB",
                max,
                Bound::AtMost(64.0),
            );
        }
        println!();
        println!("targets (issue #17; each a ratio or figure from this run):");
        self.targets.sort_by_key(|t| t.key);
        let headlines = [
            (1, "ceiling"),
            (2, "scale"),
            (3, "postgres"),
            (4, "eddsa"),
            (5, "sizing"),
            (6, "storm, connections, postgres"),
        ];
        let (mut met, mut missed) = (0, 0);
        for (n, section) in headlines {
            let rows: Vec<&Target> = self.targets.iter().filter(|t| t.key / 100 == n).collect();
            if n == 5 {
                if self.sizing.is_empty() {
                    println!("  5  sizing: not measured (BENCH_ONLY has no sizing)");
                } else {
                    let parts: Vec<String> = self
                        .sizing
                        .iter()
                        .map(|(cost, per_core)| format!("cost {cost} {per_core:.2}"))
                        .collect();
                    println!(
                        "  5  sizing, logins/s per core: {}   (reported, no bound)",
                        parts.join(", ")
                    );
                }
                continue;
            }
            if rows.is_empty() {
                println!("  {n}  not measured (section {section} not run)");
                continue;
            }
            for t in rows {
                let ok = t.bound.met(t.value);
                if ok {
                    met += 1;
                } else {
                    missed += 1;
                }
                println!(
                    "  {n}  {:<62} {:>8.2}  {:<8}  {}",
                    t.name,
                    t.value,
                    t.bound.text(),
                    if ok { "met" } else { "not met" }
                );
            }
        }
        println!("{met} met, {missed} not met");
    }
}
