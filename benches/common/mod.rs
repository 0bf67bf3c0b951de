//! What the load benches share (`benches/load.rs`, `benches/perf/`): stopping a child process,
//! a keep-alive hyper client connection, where the CPU goes (from /proc), a process's peak RSS,
//! PostgreSQL's postmaster, nginx in front of two servers, and reading settings.
//!
//! Each bench is a crate of its own and uses only part of this, hence the `allow(dead_code)`
//! where it is declared.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// SIGTERM, then waits for the exit. Through libc: a minimal machine has no `kill` program.
pub fn terminate(child: &mut Child) {
    // Already gone (and reaped): nothing to signal, and the pid may be another process's now.
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // The pid is our child's and is not reaped before the wait below, so it names no other
    // process.
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let _ = child.wait();
}

/// Makes the command's process receive SIGTERM when the thread that starts it ends (the bench
/// killed, whatever the signal): no server, wrk or nginx outlives the bench. Linux only; start
/// such commands from the main thread, which lives as long as the bench.
pub fn stop_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec and calls only prctl(2),
    // which is async-signal-safe, with plain integers.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

/// A setting from the environment, or `default` when unset or unreadable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

/// One keep-alive connection.
pub struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    pub async fn open(addr: &str) -> Conn {
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
    pub async fn send(
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

/// The peak resident set size (VmHWM) of process `pid`, in KiB; 0 when unknown.
pub fn peak_rss_kib(pid: u32) -> u64 {
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

/// Where the CPU goes during a phase: the CPU time of groups of processes, and the whole
/// machine's, from /proc. A process that exits and is reaped during the phase takes its time
/// with it (one that has exited but is not reaped yet, a zombie, still shows its time).
pub struct Meter {
    groups: Vec<Group>,
    ticks_per_second: f64,
}

/// A process, or a process and its direct children (PostgreSQL's backends, nginx's workers).
pub struct Group {
    name: String,
    pid: u32,
    children: bool,
}

impl Group {
    /// The process alone (the bench's own process is the servers' parent, for one).
    pub fn process(name: impl Into<String>, pid: u32) -> Group {
        Group {
            name: name.into(),
            pid,
            children: false,
        }
    }

    pub fn tree(name: impl Into<String>, pid: u32) -> Group {
        Group {
            name: name.into(),
            pid,
            children: true,
        }
    }
}

pub struct Sample {
    at: Instant,
    /// pid: (parent pid, user + system ticks).
    pub processes: HashMap<u32, (u32, u64)>,
    /// The machine's busy ticks, all CPUs: user, nice, system, irq, softirq.
    machine: u64,
    /// Of which irq and softirq (loopback TCP, for one), charged to no process.
    irq: u64,
}

/// The cores each group used between two samples, irq's, the rest of the machine's.
pub struct Shares {
    /// (group name, cores).
    pub groups: Vec<(String, f64)>,
    pub irq: f64,
    /// Every other process (another user's build, kernel threads).
    pub rest: f64,
    /// The whole machine.
    pub busy: f64,
    pub cpus: usize,
    /// CPU-seconds of the groups and irq.
    pub cpu_seconds: f64,
}

impl Shares {
    /// The cores the group `name` used (0 when there is none of that name).
    pub fn cores(&self, name: &str) -> f64 {
        self.groups
            .iter()
            .filter(|(n, _)| n == name)
            .map(|&(_, c)| c)
            .sum()
    }

    /// "    cpu, cores: client 0.93, server 0.88, ..., irq 0.05, rest of the machine 0.02 (busy
    /// 1.95 of 2); 8123.0 requests per CPU-second", and that last figure: the requests per
    /// CPU-second of the groups and irq (irq is mostly loopback TCP here).
    pub fn line(&self, requests: usize) -> (String, f64) {
        let per_cpu_second = requests as f64 / self.cpu_seconds;
        let parts: Vec<String> = self
            .groups
            .iter()
            .map(|(name, cores)| format!("{name} {cores:.2}"))
            .collect();
        (
            format!(
                "    cpu, cores: {}, irq {:.2}, rest of the machine {:.2} (busy {:.2} of {}); \
                 {per_cpu_second:.1} requests per CPU-second",
                parts.join(", "),
                self.irq,
                self.rest,
                self.busy,
                self.cpus,
            ),
            per_cpu_second,
        )
    }
}

impl Meter {
    pub fn new(groups: Vec<Group>) -> Meter {
        // SAFETY: sysconf takes and returns integers.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Meter {
            groups,
            ticks_per_second: if ticks > 0 { ticks as f64 } else { 100.0 },
        }
    }

    /// Every process's CPU time and the machine's, now (the groups play no part: a sample can
    /// be taken before the processes of a group exist).
    pub fn sample() -> Sample {
        let mut processes = HashMap::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": fields after the last ')'; utime and stime are the
            // 14th and 15th fields of the line, the 12th and 13th after the state.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
            if let (Some(ppid), Some(utime), Some(stime)) = (number(1), number(11), number(12)) {
                processes.insert(pid, (ppid as u32, utime + stime));
            }
        }
        let (machine, irq) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().next()?.to_owned();
                let f: Vec<u64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|n| n.parse().ok())
                    .collect();
                // "cpu user nice system idle iowait irq softirq steal ..."
                let irq = f.get(5)? + f.get(6)?;
                Some((f.first()? + f.get(1)? + f.get(2)? + irq, irq))
            })
            .unwrap_or((0, 0));
        Sample {
            at: Instant::now(),
            processes,
            machine,
            irq,
        }
    }

    /// Where the CPU went between two samples.
    pub fn shares(&self, before: &Sample, after: &Sample) -> Shares {
        let seconds = after.at.duration_since(before.at).as_secs_f64();
        let cores = |ticks: u64| ticks as f64 / self.ticks_per_second / seconds;
        let mut groups = Vec::new();
        let mut ours = 0;
        for group in &self.groups {
            let ticks: u64 = after
                .processes
                .iter()
                .filter(|&(&pid, &(ppid, _))| {
                    pid == group.pid || (group.children && ppid == group.pid)
                })
                .map(|(pid, &(_, t))| {
                    t.saturating_sub(before.processes.get(pid).map_or(0, |&(_, t)| t))
                })
                .sum();
            ours += ticks;
            groups.push((group.name.clone(), cores(ticks)));
        }
        let machine = after.machine.saturating_sub(before.machine);
        let irq = after.irq.saturating_sub(before.irq);
        Shares {
            groups,
            irq: cores(irq),
            rest: cores(machine.saturating_sub(ours + irq)),
            busy: cores(machine),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_seconds: (ours + irq) as f64 / self.ticks_per_second,
        }
    }

    /// [`Shares::line`] of the shares between two samples.
    pub fn report(&self, before: &Sample, after: &Sample, requests: usize) -> (String, f64) {
        self.shares(before, after).line(requests)
    }
}

/// The pid of the postmaster listening on `port` (its command line has `-p PORT`).
pub fn postmaster_pid(port: u16) -> Option<u32> {
    let port = port.to_string();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let is_postgres = args.first()?.ends_with(b"postgres");
            let on_port = args
                .windows(2)
                .any(|w| w[0] == b"-p" && w[1] == port.as_bytes());
            (is_postgres && on_port).then_some(pid)
        })
}

/// nginx on loopback in front of two servers: `one` proxies to replica A alone, `two` to A and
/// B (round robin, the default), both over keepalive upstream connections.
pub struct Nginx {
    pub child: Child,
    pub one: String,
    pub two: String,
    pub workers: String,
    pub dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: nginx's fast shutdown.
        terminate(&mut self.child);
    }
}

/// `BENCH_NGINX`, else `nginx` on PATH, else /usr/sbin/nginx.
pub fn nginx_binary() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("BENCH_NGINX").filter(|b| !b.is_empty()) {
        return Some(PathBuf::from(bin));
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file())
}

/// nginx's version, "nginx/1.22.1", or empty.
pub fn nginx_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("-v")
        .output()
        .map(|o| {
            let v = String::from_utf8_lossy(&o.stderr);
            v.trim().trim_start_matches("nginx version: ").to_owned()
        })
        .unwrap_or_default()
}

/// Two loopback ports that were free a moment ago.
pub fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    (
        a.local_addr().expect("address").port(),
        b.local_addr().expect("address").port(),
    )
}

pub fn start_nginx(bin: &Path, a: &str, b: &str) -> Nginx {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().display().to_string();
    // As root nginx runs its workers as an unprivileged user: let them into the directory
    // (it holds only this configuration and the error log).
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod the nginx directory");
    let (port_one, port_two) = free_ports();
    // keepalive_requests: nginx closes a connection after 1000 requests by default, on either
    // side; the client here keeps its connections for the whole phase.
    let conf = format!(
        r#"daemon off;
master_process on;
worker_processes auto;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    upstream one {{ server {a}; keepalive 64; keepalive_requests 1000000; }}
    upstream two {{ server {a}; server {b}; keepalive 64; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{port_one};
        location / {{ proxy_pass http://one; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    }}
    server {{
        listen 127.0.0.1:{port_two};
        location / {{ proxy_pass http://two; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    }}
}}
"#
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("write nginx.conf");
    let mut cmd = Command::new(bin);
    stop_with_parent(&mut cmd);
    let child = cmd
        .arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .arg("-c")
        .arg(&conf_path)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let mut nginx = Nginx {
        child,
        one: format!("127.0.0.1:{port_one}"),
        two: format!("127.0.0.1:{port_two}"),
        workers: String::new(),
        dir,
    };
    let log_path = nginx.dir.path().join("error.log");
    let error_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = nginx.child.try_wait() {
            panic!("nginx exited ({status}):\n{}", error_log());
        }
        let up = [&nginx.one, &nginx.two]
            .iter()
            .all(|addr| std::net::TcpStream::connect(addr.as_str()).is_ok());
        if up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nginx did not listen within 10 s:\n{}",
            error_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let master = nginx.child.id();
    let workers = Meter::sample()
        .processes
        .values()
        .filter(|&&(ppid, _)| ppid == master)
        .count();
    nginx.workers = format!("{workers} worker processes");
    nginx
}

/// The storage backend a server of the bench runs on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}
