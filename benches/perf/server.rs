//! The servers under test, and the bare warp route the ceiling is measured on.
//!
//! A server is the release binary (`BENCH_BIN` to measure another build) on a free loopback
//! port, its working directory a temporary one, with `LOG_FORMAT=json` and `RUST_LOG=info`: the
//! access log is on, a JSON line per request, written to a file (its stdout and stderr both go
//! to `server-N.log` in that directory), as the issue measured. `LOGIN_MAX_FAILURES=0`: the
//! bench's logins all come from 127.0.0.1, and the throttle counts attempts in flight.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{peak_rss_kib, stop_with_parent, terminate};
use warp::Filter;

/// The HS256 secret of every server but the EdDSA one.
pub const SECRET: &str = "bench-secret-0123456789abcdef0123456789abcdef";

/// How long a start may take before the bench gives up on it (the target is 1 s; the bench
/// must still measure a slow one).
const START_TIMEOUT: Duration = Duration::from_secs(300);

/// What to start.
pub struct Spec<'a> {
    pub dir: &'a Path,
    pub database_url: &'a str,
    pub cost: u32,
    /// More variables, after the defaults; an empty value removes the variable.
    pub env: &'a [(&'a str, &'a str)],
}

/// How long a start took: from spawn to the "listening on" line in the log, and to the first
/// 200 of /health/ready.
#[derive(Clone, Copy)]
pub struct Startup {
    pub listening: Duration,
    pub ready: Duration,
}

pub struct Server {
    child: Child,
    pub addr: String,
    pub log: PathBuf,
    pub startup: Startup,
}

impl Drop for Server {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl Server {
    pub fn start(spec: &Spec<'_>) -> Server {
        let bin = std::env::var("BENCH_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_warp-auth-api").to_owned());
        let log = spec.dir.join(format!(
            "server-{}.log",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        // Appending: the bench may cut the file short between phases, and the server's writes
        // then still land at its end.
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("create the server's log file");
        let err = out.try_clone().expect("clone the log file handle");
        let mut cmd = Command::new(&bin);
        stop_with_parent(&mut cmd);
        cmd.current_dir(spec.dir)
            .env("DATABASE_URL", spec.database_url)
            .env("JWT_SECRET", SECRET)
            .env("JWT_ALGORITHM", "HS256")
            .env("BCRYPT_COST", spec.cost.to_string())
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("LOGIN_MAX_FAILURES", "0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env_remove("TRUSTED_PROXIES")
            .env_remove("METRICS_ADDR");
        for &(name, value) in spec.env {
            if value.is_empty() {
                cmd.env_remove(name);
            } else {
                cmd.env(name, value);
            }
        }
        let spawned = Instant::now();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        // Made before the waits: if the server does not start, the panic drops (stops) it.
        let mut server = Server {
            child,
            addr: String::new(),
            log,
            startup: Startup {
                listening: Duration::ZERO,
                ready: Duration::ZERO,
            },
        };
        loop {
            let text = std::fs::read_to_string(&server.log).unwrap_or_default();
            if let Some(rest) = text.split("listening on http://").nth(1) {
                server.addr = rest
                    .chars()
                    .take_while(|c| !c.is_whitespace() && !matches!(c, '"' | '\\'))
                    .collect();
                break;
            }
            server.check_alive(spawned);
            std::thread::sleep(Duration::from_millis(1));
        }
        server.startup.listening = spawned.elapsed();
        while http_status(&server.addr, "/health/ready") != Some(200) {
            server.check_alive(spawned);
            std::thread::sleep(Duration::from_millis(2));
        }
        server.startup.ready = spawned.elapsed();
        server
    }

    /// Panics, with the log's tail, if the server has exited or has taken too long (or the
    /// bench was interrupted).
    fn check_alive(&mut self, spawned: Instant) {
        crate::check_interrupted();
        let tail = || {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the server exited ({status}) while starting:\n{}", tail());
        }
        assert!(
            spawned.elapsed() < START_TIMEOUT,
            "the server did not start within {START_TIMEOUT:?}:\n{}",
            tail()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn peak_rss_mib(&self) -> f64 {
        peak_rss_kib(self.pid()) as f64 / 1024.0
    }

    /// Empties the log when it has grown past 64 MiB (a line per request adds up over a run);
    /// the server appends, so its next line goes to the start.
    pub fn trim_log(&self) {
        if std::fs::metadata(&self.log).is_ok_and(|m| m.len() > 64 << 20)
            && let Ok(file) = OpenOptions::new().write(true).open(&self.log)
        {
            let _ = file.set_len(0);
        }
    }
}

/// The status of a GET on a new connection, or `None` (refused, cut short, too slow).
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// A bare warp 0.4 route in the bench's own process, on a tokio runtime of its own with two
/// workers (as the server's, on two CPUs): `GET /bare` answers `body` as JSON, serialised per
/// request as `warp::reply::json` does for the server's `/me`. No logging, no state, no
/// database: the ceiling a warp route reaches on this machine.
pub struct Bare {
    runtime: Option<tokio::runtime::Runtime>,
    pub addr: String,
}

impl Bare {
    pub fn start(body: serde_json::Value) -> Bare {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bare-route")
            .enable_all()
            .build()
            .expect("the bare route's runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the bare route");
        let addr = listener.local_addr().expect("its address").to_string();
        let body = Arc::new(body);
        let route = warp::path!("bare")
            .and(warp::get())
            .map(move || warp::reply::json(&*body));
        runtime.spawn(warp::serve(route).incoming(listener).run());
        Bare {
            runtime: Some(runtime),
            addr,
        }
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
