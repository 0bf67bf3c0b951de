//! The load generator: wrk (Debian's package), one process per phase, with a Lua script of the
//! bench's (`lua/`): tokens taken in turn, login bodies, refresh tokens carried from answer to
//! request, a new email per registration. Its figures come from the scripts' `done()`, one
//! JSON line; where the CPU went comes from /proc around the run (wrk's own time included: it
//! is read while wrk is a zombie, before it is reaped).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Group, Meter, Sample, Shares, stop_with_parent, terminate};

const COMMON: &str = include_str!("lua/common.lua");

/// What a phase sends.
pub enum Script<'a> {
    /// The same GET each time (`header`: one more header, e.g. an admin's Authorization).
    Get { header: Option<String> },
    /// GET with an access token per request, taken in turn from the file (one per line).
    Tokens { file: &'a Path },
    /// POST /login as user<first>..user<last>@bench.example, picked at random per request.
    Login { first: u64, last: u64 },
    /// POST /refresh with the refresh tokens of the file, each answer's new one reused.
    Refresh { file: &'a Path },
    /// POST /register, a new account per request (`tag` keeps phases apart).
    Register { tag: &'a str },
}

/// One wrk run.
pub struct Run<'a> {
    pub addr: &'a str,
    pub path: &'a str,
    pub script: Script<'a>,
    pub connections: usize,
    pub seconds: u64,
    /// Answers slower than this count as timeouts (wrk's --timeout).
    pub timeout: Duration,
}

/// wrk's figures for one run, and where the CPU went meanwhile.
pub struct Outcome {
    pub requests: u64,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Socket errors: connect, read, write.
    pub socket_errors: u64,
    /// Answers with a status above 399.
    pub status_errors: u64,
    /// Answers slower than the run's timeout.
    pub timeouts: u64,
    /// Answers the script counted as wrong (a 200 without its token, no token left to send).
    pub unexpected: u64,
    pub cpu: Shares,
}

impl Outcome {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    pub fn errors(&self) -> u64 {
        self.socket_errors + self.status_errors + self.timeouts + self.unexpected
    }

    /// Requests per CPU-second of the metered processes and irq.
    pub fn per_cpu_second(&self) -> f64 {
        self.requests as f64 / self.cpu.cpu_seconds
    }

    /// The phase's line, as `benches/load.rs` prints it, and its CPU line.
    pub fn lines(&self, name: &str) -> String {
        let errors = if self.errors() == 0 {
            "0 errors".to_owned()
        } else {
            format!(
                "{} errors: {} socket, {} status >= 400, {} timeouts, {} unexpected",
                self.errors(),
                self.socket_errors,
                self.status_errors,
                self.timeouts,
                self.unexpected
            )
        };
        let (cpu, _) = self.cpu.line(self.requests as usize);
        format!(
            "{name:<44} {:>9.1} req/s   p50 {:>8.2} ms   p99 {:>8.2} ms   ({} requests, {errors})\n{cpu}",
            self.rps(),
            self.p50_ms,
            self.p99_ms,
            self.requests,
        )
    }
}

/// wrk, its scripts' directory and its thread count.
pub struct Wrk {
    bin: PathBuf,
    dir: PathBuf,
    pub threads: usize,
    pub version: String,
}

impl Wrk {
    /// `BENCH_WRK`, else `wrk` on PATH; `Err` says what to install.
    pub fn find(dir: &Path, threads: usize) -> Result<Wrk, String> {
        let bin = std::env::var_os("BENCH_WRK")
            .filter(|b| !b.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("PATH").and_then(|path| {
                    std::env::split_paths(&path)
                        .map(|d| d.join("wrk"))
                        .find(|p| p.is_file())
                })
            })
            .ok_or(
                "wrk is not installed (apt-get install wrk, or BENCH_WRK=/path/to/wrk); the perf \
                 bench uses it as its load generator",
            )?;
        let output = Command::new(&bin)
            .arg("-v")
            .output()
            .map_err(|e| format!("could not run {}: {e}", bin.display()))?;
        let version = String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let scripts = [
            ("get", include_str!("lua/get.lua")),
            ("tokens", include_str!("lua/tokens.lua")),
            ("login", include_str!("lua/login.lua")),
            ("refresh", include_str!("lua/refresh.lua")),
            ("register", include_str!("lua/register.lua")),
        ];
        for (name, text) in scripts {
            std::fs::write(dir.join(format!("{name}.lua")), format!("{COMMON}\n{text}"))
                .map_err(|e| format!("writing the wrk scripts: {e}"))?;
        }
        Ok(Wrk {
            bin,
            dir: dir.to_owned(),
            threads,
            version,
        })
    }

    /// Starts a run; [`Pending::finish`] waits for it.
    pub fn start(&self, run: &Run<'_>) -> Pending {
        let threads = self.threads.min(run.connections).max(1);
        let mut cmd = Command::new(&self.bin);
        stop_with_parent(&mut cmd);
        cmd.arg(format!("-t{threads}"))
            .arg(format!("-c{}", run.connections))
            .arg(format!("-d{}s", run.seconds))
            .arg(format!("--timeout={}s", run.timeout.as_secs().max(1)));
        let script = |name: &str| self.dir.join(format!("{name}.lua"));
        let url = format!("http://{}{}", run.addr, run.path);
        let args: Vec<String> = match &run.script {
            Script::Get { header } => {
                if let Some(header) = header {
                    cmd.arg("-H").arg(header);
                }
                cmd.arg("-s").arg(script("get"));
                vec![]
            }
            Script::Tokens { file } => {
                cmd.arg("-s").arg(script("tokens"));
                vec![run.path.to_owned(), file.display().to_string()]
            }
            Script::Login { first, last } => {
                cmd.arg("-s").arg(script("login"));
                vec![
                    run.path.to_owned(),
                    first.to_string(),
                    last.to_string(),
                    crate::PASSWORD.to_owned(),
                ]
            }
            Script::Refresh { file } => {
                cmd.arg("-s").arg(script("refresh"));
                vec![
                    run.path.to_owned(),
                    file.display().to_string(),
                    threads.to_string(),
                ]
            }
            Script::Register { tag } => {
                cmd.arg("-s").arg(script("register"));
                vec![
                    run.path.to_owned(),
                    (*tag).to_owned(),
                    crate::PASSWORD.to_owned(),
                ]
            }
        };
        cmd.arg(&url);
        if !args.is_empty() {
            cmd.arg("--").args(&args);
        }
        // stderr to a file: a pipe that nobody reads could fill and stall wrk.
        let stderr_path = self
            .dir
            .join(format!("wrk-{}.err", NEXT.fetch_add(1, Ordering::Relaxed)));
        let stderr = std::fs::File::create(&stderr_path).expect("create wrk's stderr file");
        let before = Meter::sample();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
        Pending {
            child,
            before,
            started: Instant::now(),
            stderr_path,
        }
    }

    /// A run from start to end.
    pub fn run(&self, run: &Run<'_>, groups: Vec<Group>) -> Outcome {
        self.start(run).finish(groups)
    }
}

/// A wrk run under way; stopped if dropped before it ends (a panic elsewhere).
pub struct Pending {
    child: Child,
    before: Sample,
    started: Instant,
    stderr_path: PathBuf,
}

/// Numbers the runs' stderr files (two runs can be under way at once).
static NEXT: AtomicUsize = AtomicUsize::new(0);

impl Drop for Pending {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

impl Pending {
    /// Waits for wrk's end and reads its figures; `groups` are the processes to meter besides
    /// wrk itself (named "wrk").
    pub fn finish(mut self, mut groups: Vec<Group>) -> Outcome {
        let mut stdout = String::new();
        // To its end: wrk has exited (or closed it) then.
        if let Some(mut out) = self.child.stdout.take() {
            let _ = out.read_to_string(&mut stdout);
        }
        // Not reaped yet: a zombie still shows its CPU time in /proc.
        let after = Meter::sample();
        let status = self.child.wait().expect("wait for wrk");
        let stderr = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let _ = std::fs::remove_file(&self.stderr_path);
        groups.insert(0, Group::process("wrk", self.child.id()));
        let cpu = Meter::new(groups).shares(&self.before, &after);
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("PERFJSON "))
            .unwrap_or_else(|| {
                panic!(
                    "wrk ({status}, after {:.1} s) printed no figures:\n{stdout}\n{stderr}",
                    self.started.elapsed().as_secs_f64()
                )
            });
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("wrk's figures {line:?}: {e}"));
        let n = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        let count = |k: &str| v[k].as_f64().unwrap_or(0.0) as u64;
        if !stderr.trim().is_empty() {
            // A script error (each thread would say it), or a message of wrk's: show it once.
            let first = stderr.lines().next().unwrap_or_default();
            println!("    (wrk said on stderr: {first})");
        }
        Outcome {
            requests: count("requests"),
            seconds: n("duration_us") / 1e6,
            p50_ms: n("p50_us") / 1000.0,
            p99_ms: n("p99_us") / 1000.0,
            max_ms: n("max_us") / 1000.0,
            socket_errors: count("connect") + count("read") + count("write"),
            status_errors: count("status"),
            timeouts: count("timeout"),
            unexpected: count("unexpected"),
            cpu,
        }
    }
}
