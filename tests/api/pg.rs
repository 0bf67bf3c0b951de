//! A real, throwaway PostgreSQL for tests: a cluster of its own (initdb in a temporary directory,
//! on 127.0.0.1 and a free port, its socket in that directory), one empty database per test.
//!
//! `shared()` starts one cluster per test process on first use and stops it when the process
//! exits (an `atexit` handler: statics are never dropped). Without PostgreSQL installed it says
//! once why the PostgreSQL tests are skipped and returns `None`; with `CI` or `REQUIRE_POSTGRES`
//! set it panics instead, so CI cannot skip them silently.
//!
//! Binaries: `$PG_BIN` if set, else the highest version under /usr/lib/postgresql/*/bin, else
//! `initdb` on PATH. As root (PostgreSQL refuses to run as root) the directory belongs to the
//! `postgres` OS user and initdb/pg_ctl run through `runuser -u postgres --`.

use std::ffi::{CStr, OsStr, OsString};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Once, OnceLock};

/// The cluster's superuser, in every URL.
pub const USER: &str = "warp_test";
/// Its password (password authentication, as in production URLs; URL-safe as it is).
pub const PASSWORD: &str = "warp-test-password";

/// Temporary directories are `<tmp>/warp-auth-api-pg-<pid>-XXXXXX`: the pid lets a later run
/// clean up after a test process that was killed before its exit handler ran.
const PREFIX: &str = "warp-auth-api-pg-";
/// Tries at a free port: another process may take the one we picked before PostgreSQL binds it.
const START_ATTEMPTS: usize = 5;
/// `pg_ctl -w` waits at most this long.
const PG_CTL_TIMEOUT_SECS: &str = "60";

/// A PostgreSQL cluster of its own, in a temporary directory, on 127.0.0.1 and a free port.
pub struct Cluster {
    bins: Bins,
    /// The temporary directory: `data/`, the log, the password file and the socket.
    root: PathBuf,
    /// 0 until the first start.
    port: AtomicU16,
    /// The `postgres` OS user's uid and gid when we are root; `None`: run as ourselves.
    owner: Option<(u32, u32)>,
}

#[derive(Clone, Debug)]
struct Bins {
    initdb: PathBuf,
    pg_ctl: PathBuf,
    psql: PathBuf,
}

/// Why a `pg_ctl start` failed, and whether it was the port.
struct StartFailure {
    port_taken: bool,
    message: String,
}

static DATABASES: AtomicU64 = AtomicU64::new(0);

impl Cluster {
    /// initdb + pg_ctl start. Err(why) when PostgreSQL is not installed (saying what to install);
    /// any other failure panics with the command, its stderr and the server log's tail.
    pub fn start() -> Result<Cluster, String> {
        Self::start_with_ports(free_port)
    }

    /// `start`, taking each port to try from `next_port`.
    fn start_with_ports(next_port: impl FnMut() -> u16) -> Result<Cluster, String> {
        let bins = find_bins()?;
        let owner = postgres_owner()?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-", std::process::id()))
            .tempdir()
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL fixture: creating a temporary directory in {}: {e}",
                    std::env::temp_dir().display()
                )
            });
        // From here on the cluster's Drop removes the directory (and stops the server) even if
        // a step below panics.
        let cluster = Cluster {
            bins,
            root: tmp.keep(),
            port: AtomicU16::new(0),
            owner,
        };
        cluster.initdb();
        cluster.start_on(next_port);
        Ok(cluster)
    }

    pub fn port(&self) -> u16 {
        self.port.load(Ordering::SeqCst)
    }

    /// A new, empty database (unique name) and its URL:
    /// `postgres://USER:PASSWORD@127.0.0.1:PORT/NAME`. Safe to call from many threads at once.
    pub fn create_database(&self) -> String {
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::SeqCst)
        );
        let mut cmd = Command::new(&self.bins.psql);
        cmd.args([
            "-X",
            "-q",
            "-w",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
        ])
        .arg(self.port().to_string())
        .args(["-U", USER, "-d", "postgres", "-c"])
        .arg(format!("CREATE DATABASE {name}"))
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10");
        if let Err(e) = run(cmd) {
            panic!(
                "PostgreSQL fixture: creating a database: {e}{}",
                self.log_tail(0)
            );
        }
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{name}",
            self.port()
        )
    }

    /// Runs `sql` with the cluster's `psql` against `url` (unaligned, tuples only); its output
    /// trimmed, or why it failed (connection refused, SQL error: psql's stderr).
    pub fn psql(&self, url: &str, sql: &str) -> Result<String, String> {
        let mut cmd = Command::new(&self.bins.psql);
        cmd.args([
            "-X",
            "-q",
            "-w",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .env("PGCONNECT_TIMEOUT", "10");
        run(cmd).map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Stop (fast shutdown) and start again on the same port and data.
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// Fast shutdown: sessions are disconnected, the data stays.
    pub fn stop(&self) {
        let mut cmd = self.pg_command(&self.bins.pg_ctl);
        cmd.arg("stop").arg("-D").arg(self.data()).args([
            "-m",
            "fast",
            "-w",
            "-t",
            PG_CTL_TIMEOUT_SECS,
        ]);
        if let Err(e) = run(cmd) {
            panic!("PostgreSQL fixture: stopping: {e}{}", self.log_tail(0));
        }
    }

    /// Starts the stopped cluster again on the same port and data.
    pub fn start_again(&self) {
        if let Err(f) = self.pg_ctl_start(self.port()) {
            let why = if f.port_taken {
                format!("port {} was taken while it was stopped: ", self.port())
            } else {
                String::new()
            };
            panic!("PostgreSQL fixture: starting again: {why}{}", f.message);
        }
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    fn log(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    /// A command for initdb/pg_ctl: through `runuser -u postgres --` when we are root.
    fn pg_command(&self, tool: &Path) -> Command {
        let mut cmd = if self.owner.is_some() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(tool);
            cmd
        } else {
            Command::new(tool)
        };
        // Our working directory may be one the postgres user cannot enter.
        cmd.current_dir(&self.root);
        cmd
    }

    fn initdb(&self) {
        let pwfile = self.root.join("pwfile");
        if let Err(e) = fs::write(&pwfile, format!("{PASSWORD}\n")) {
            panic!("PostgreSQL fixture: writing {}: {e}", pwfile.display());
        }
        if let Some((uid, gid)) = self.owner {
            for path in [&self.root, &pwfile] {
                if let Err(e) = std::os::unix::fs::chown(path, Some(uid), Some(gid)) {
                    panic!(
                        "PostgreSQL fixture: giving {} to the postgres user ({uid}:{gid}): {e}",
                        path.display()
                    );
                }
            }
        }
        let mut cmd = self.pg_command(&self.bins.initdb);
        cmd.arg("-D")
            .arg(self.data())
            .args(["--auth=scram-sha-256", &format!("--username={USER}")])
            .arg(concat_os("--pwfile=", &pwfile))
            .args(["-E", "UTF8", "--locale=C", "--no-sync"]);
        if let Err(e) = run(cmd) {
            panic!("PostgreSQL fixture: {e}");
        }
    }

    /// The first start: a port from `next_port`, and another one if that one was taken.
    fn start_on(&self, mut next_port: impl FnMut() -> u16) {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = next_port();
            match self.pg_ctl_start(port) {
                Ok(()) => {
                    self.port.store(port, Ordering::SeqCst);
                    return;
                }
                Err(f) if f.port_taken => failures.push(format!("port {port}: {}", f.message)),
                Err(f) => panic!("PostgreSQL fixture: starting: {}", f.message),
            }
        }
        panic!(
            "PostgreSQL fixture: no free port in {START_ATTEMPTS} tries:\n{}",
            failures.join("\n")
        );
    }

    fn pg_ctl_start(&self, port: u16) -> Result<(), StartFailure> {
        let root = self.root.to_string_lossy();
        assert!(
            !root.contains('\''),
            "PostgreSQL fixture: the temporary directory {root} has a quote in its name"
        );
        // pg_ctl hands -o to a shell: quote the directory.
        let options = format!(
            "-k '{root}' -p {port} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=400"
        );
        let log_before = fs::metadata(self.log()).map_or(0, |m| m.len());
        let mut cmd = self.pg_command(&self.bins.pg_ctl);
        cmd.arg("start")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log())
            .args(["-w", "-t", PG_CTL_TIMEOUT_SECS, "-o", &options]);
        run(cmd).map(drop).map_err(|e| {
            let new_log = read_from(&self.log(), log_before);
            StartFailure {
                port_taken: new_log.contains("Address already in use"),
                message: format!("{e}{}", self.log_tail(log_before)),
            }
        })
    }

    /// The end of the server log (what was written after byte `from`), to append to a panic.
    fn log_tail(&self, from: u64) -> String {
        let log = read_from(&self.log(), from);
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("\n--- tail of {} ---\n{tail}", self.log().display())
    }

    /// `pg_ctl stop -m immediate` if it runs, then the directory goes. Never panics (it runs
    /// from Drop and from the exit handler); says on stderr what it could not do.
    fn shut_down_now(&self) {
        if self.data().join("postmaster.pid").exists() {
            let mut cmd = self.pg_command(&self.bins.pg_ctl);
            cmd.arg("stop").arg("-D").arg(self.data()).args([
                "-m",
                "immediate",
                "-w",
                "-t",
                PG_CTL_TIMEOUT_SECS,
            ]);
            if let Err(e) = run(cmd) {
                let _ = writeln!(std::io::stderr(), "PostgreSQL fixture: {e}");
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.root)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            let _ = writeln!(
                std::io::stderr(),
                "PostgreSQL fixture: removing {}: {e}",
                self.root.display()
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shut_down_now();
    }
}

static SHARED: OnceLock<Option<Cluster>> = OnceLock::new();

/// One cluster shared by every test of this process, started on first use; stopped (and its
/// directory removed) when the process exits. `None` when PostgreSQL is not installed and
/// neither `CI` nor `REQUIRE_POSTGRES` is set (it then says so once on stderr); with either set
/// a missing PostgreSQL panics.
pub fn shared() -> Option<&'static Cluster> {
    SHARED
        .get_or_init(|| {
            remove_stale_clusters();
            match Cluster::start() {
                Ok(cluster) => {
                    // SAFETY: registers a plain function; it runs once, at exit.
                    if unsafe { libc::atexit(stop_shared_at_exit) } != 0 {
                        let _ = writeln!(
                            std::io::stderr(),
                            "PostgreSQL fixture: atexit failed: the shared cluster in {} may \
                             outlive this process",
                            cluster.root.display()
                        );
                    }
                    Some(cluster)
                }
                Err(why) => {
                    unavailable(&why);
                    None
                }
            }
        })
        .as_ref()
}

/// `shared()?.create_database()`.
pub fn fresh_database_url() -> Option<String> {
    Some(shared()?.create_database())
}

extern "C" fn stop_shared_at_exit() {
    if let Some(Some(cluster)) = SHARED.get() {
        cluster.shut_down_now();
    }
}

/// PostgreSQL is missing: a panic when it is required, else one line on stderr per process.
fn unavailable(why: &str) {
    if let Some(var) = ["CI", "REQUIRE_POSTGRES"].into_iter().find(|v| is_set(v)) {
        panic!("PostgreSQL is required ({var} is set) but unavailable: {why}");
    }
    static SAID: Once = Once::new();
    SAID.call_once(|| {
        let _ = writeln!(std::io::stderr(), "PostgreSQL tests skipped: {why}");
    });
}

fn is_set(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// A port that was free a moment ago (PostgreSQL may lose it to someone else: we retry).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("PostgreSQL fixture: binding 127.0.0.1:0 for a port: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("PostgreSQL fixture: the bound port: {e}"))
        .port()
}

fn find_bins() -> Result<Bins, String> {
    if let Some(dir) = std::env::var_os("PG_BIN").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        let tool = |name: &str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(format!("PG_BIN={} has no {name}", dir.display()))
            }
        };
        return Ok(Bins {
            initdb: tool("initdb")?,
            pg_ctl: tool("pg_ctl")?,
            psql: tool("psql")?,
        });
    }
    if let Some(dir) = debian_bin_dir() {
        let (pg_ctl, psql) = (dir.join("pg_ctl"), dir.join("psql"));
        if pg_ctl.is_file() && psql.is_file() {
            return Ok(Bins {
                initdb: dir.join("initdb"),
                pg_ctl,
                psql,
            });
        }
    }
    let missing = "no initdb under /usr/lib/postgresql/*/bin or on PATH \
                   (apt-get install postgresql)";
    let initdb = on_path("initdb").ok_or(missing)?;
    // The other tools next to initdb (or next to what it links to), else on PATH.
    let dirs: Vec<PathBuf> = [Some(initdb.clone()), fs::canonicalize(&initdb).ok()]
        .into_iter()
        .flatten()
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect();
    let tool = |name: &str| {
        dirs.iter()
            .map(|d| d.join(name))
            .find(|p| p.is_file())
            .or_else(|| on_path(name))
            .ok_or_else(|| {
                format!(
                    "{} is there but not {name} (apt-get install postgresql)",
                    initdb.display()
                )
            })
    };
    Ok(Bins {
        pg_ctl: tool("pg_ctl")?,
        psql: tool("psql")?,
        initdb: initdb.clone(),
    })
}

/// The highest version's /usr/lib/postgresql/VERSION/bin that has an initdb.
fn debian_bin_dir() -> Option<PathBuf> {
    fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version: Vec<u32> = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<_>>()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// As root: the `postgres` OS user's uid and gid (PostgreSQL refuses to run as root). As
/// anyone else: `None`, the cluster runs as ourselves.
fn postgres_owner() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name: &CStr = c"postgres";
    // SAFETY: getpwnam_r (the thread-safe getpwnam: tests start clusters in parallel) writes
    // into `pwd` and `buf`, which outlive the call; `result` is null or points at `pwd`.
    let found = unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        if rc != 0 {
            return Err(format!(
                "looking up the postgres user: {}",
                std::io::Error::from_raw_os_error(rc)
            ));
        }
        (!result.is_null()).then_some((pwd.pw_uid, pwd.pw_gid))
    };
    found.map(Some).ok_or_else(|| {
        "running as root, which PostgreSQL refuses, and there is no `postgres` OS user to run \
         it as (apt-get install postgresql creates it)"
            .to_owned()
    })
}

/// Runs a command to its end: its output, or an error naming it with its status and stderr.
fn run(mut cmd: Command) -> Result<Output, String> {
    cmd.stdin(Stdio::null());
    let out = cmd
        .output()
        .map_err(|e| format!("could not run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            if out.stdout.is_empty() {
                String::new()
            } else {
                format!("\nstdout: {}", String::from_utf8_lossy(&out.stdout).trim())
            }
        ))
    }
}

/// A file's text from byte `from` on; empty if it cannot be read.
fn read_from(path: &Path, from: u64) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut file) = fs::File::open(path)
        && file.seek(SeekFrom::Start(from)).is_ok()
    {
        let _ = file.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn concat_os(prefix: &str, path: &Path) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(OsStr::new(path));
    s
}

/// Clusters left by test processes that were killed before their exit handler ran (SIGKILL,
/// Ctrl-C): stopped, their directories removed. Only directories of ours whose process is gone.
fn remove_stale_clusters() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    let (Ok(bins), Ok(owner)) = (find_bins(), postgres_owner()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || process_alive(pid) {
            continue;
        }
        // Only clusters that run as we would run ours (someone else's are not ours to stop).
        // SAFETY: geteuid cannot fail.
        let uid = owner.map_or_else(|| unsafe { libc::geteuid() }, |(uid, _)| uid);
        if entry.metadata().map_or(true, |m| m.uid() != uid) {
            continue;
        }
        // Dropping it stops it and removes the directory.
        drop(Cluster {
            bins: bins.clone(),
            root: entry.path(),
            port: AtomicU16::new(0),
            owner,
        });
    }
}

/// Whether process `pid` exists and is not a zombie.
fn process_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // "pid (comm) S ...": the state follows the last ')'.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dedicated cluster, or `None` (having said why, or panicked when required) like
    /// `shared()`.
    fn dedicated(start: impl FnOnce() -> Result<Cluster, String>) -> Option<Cluster> {
        match start() {
            Ok(cluster) => Some(cluster),
            Err(why) => {
                unavailable(&why);
                None
            }
        }
    }

    fn postmaster_pid(cluster: &Cluster) -> u32 {
        let pidfile = cluster.data().join("postmaster.pid");
        let text = fs::read_to_string(&pidfile)
            .unwrap_or_else(|e| panic!("reading {}: {e}", pidfile.display()));
        let first = text.lines().next().unwrap_or_default();
        first
            .parse()
            .unwrap_or_else(|e| panic!("{}: first line {first:?}: {e}", pidfile.display()))
    }

    #[test]
    fn the_shared_cluster_gives_each_caller_an_empty_database_of_its_own() {
        let Some(cluster) = shared() else { return };
        let a = cluster.create_database();
        let b = fresh_database_url().expect("shared() is Some, so is fresh_database_url()");
        assert_ne!(a, b);
        let prefix = format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/t_",
            cluster.port()
        );
        for url in [&a, &b] {
            assert!(url.starts_with(&prefix), "{url} should start with {prefix}");
            assert_eq!(cluster.psql(url, "select 1"), Ok("1".to_owned()), "{url}");
            let name = url.rsplit('/').next().unwrap_or_default();
            assert_eq!(
                cluster.psql(url, "select current_database()"),
                Ok(name.to_owned())
            );
            assert_eq!(
                cluster.psql(
                    url,
                    "select count(*) from pg_tables where schemaname = 'public'"
                ),
                Ok("0".to_owned()),
                "{url} should be empty"
            );
        }
        cluster
            .psql(&a, "create table only_in_a (x int)")
            .unwrap_or_else(|e| panic!("{e}"));
        let err = cluster
            .psql(&b, "select * from only_in_a")
            .expect_err("a table of database a should not be in database b");
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn the_shared_cluster_creates_databases_for_many_threads_at_once() {
        let Some(cluster) = shared() else { return };
        let urls: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| s.spawn(|| cluster.create_database()))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        let mut unique = urls.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), urls.len(), "{urls:?}");
        for url in &urls {
            assert_eq!(cluster.psql(url, "select 1"), Ok("1".to_owned()), "{url}");
        }
    }

    #[test]
    fn a_cluster_keeps_its_data_and_port_across_stop_and_start_again() {
        let Some(cluster) = dedicated(Cluster::start) else {
            return;
        };
        let port = cluster.port();
        let url = cluster.create_database();
        cluster
            .psql(
                &url,
                "create table kept (v text); insert into kept values ('before the stop')",
            )
            .unwrap_or_else(|e| panic!("{e}"));

        cluster.stop();
        let err = cluster
            .psql(&url, "select 1")
            .expect_err("a stopped cluster should refuse connections");
        assert!(err.contains("127.0.0.1"), "{err}");

        cluster.start_again();
        assert_eq!(cluster.port(), port);
        assert_eq!(
            cluster.psql(&url, "select v from kept"),
            Ok("before the stop".to_owned())
        );

        cluster.restart();
        assert_eq!(cluster.port(), port);
        assert_eq!(
            cluster.psql(&url, "select v from kept"),
            Ok("before the stop".to_owned())
        );

        // Dropped: the server stops (immediate) and the directory goes.
        let (pid, root) = (postmaster_pid(&cluster), cluster.root.clone());
        drop(cluster);
        assert!(
            !process_alive(pid),
            "postmaster {pid} still runs after drop"
        );
        assert!(!root.exists(), "{} still exists after drop", root.display());
    }

    #[test]
    fn a_cluster_tries_another_port_when_its_port_is_taken() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let taken_port = taken.local_addr().expect("its address").port();
        let mut ports = [taken_port].into_iter();
        let start = || Cluster::start_with_ports(|| ports.next().unwrap_or_else(free_port));
        let Some(cluster) = dedicated(start) else {
            return;
        };
        assert_ne!(cluster.port(), taken_port);
        let url = cluster.create_database();
        assert_eq!(cluster.psql(&url, "select 1"), Ok("1".to_owned()));
        drop(taken);
    }

    /// Set by `the_shared_cluster_stops_when_the_process_exits` for the child it runs.
    const EXIT_CHILD: &str = "PG_FIXTURE_EXIT_CHILD";

    /// In a child process only: starts the shared cluster and says where it runs.
    #[test]
    fn exit_child() {
        if std::env::var_os(EXIT_CHILD).is_none() {
            return;
        }
        let Some(cluster) = shared() else { return };
        println!(
            "shared cluster: pid {} root {}",
            postmaster_pid(cluster),
            cluster.root.display()
        );
    }

    #[test]
    fn the_shared_cluster_stops_when_the_process_exits() {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut cmd = Command::new(&exe);
        cmd.args([
            "pg::tests::exit_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(EXIT_CHILD, "1");
        let out = run(cmd).unwrap_or_else(|e| panic!("{e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        // With --nocapture the line may follow "test ... " on the same line.
        let Some(line) = stdout
            .split_once("shared cluster: pid ")
            .and_then(|(_, rest)| rest.lines().next())
        else {
            // The child skipped: PostgreSQL is missing (when it is required the child panics,
            // and `run` above fails).
            match find_bins().and_then(|_| postgres_owner()) {
                Ok(_) => {
                    panic!("PostgreSQL is installed, yet the child started no cluster: {stdout}")
                }
                Err(why) => return unavailable(&why),
            }
        };
        let (pid, root) = line
            .split_once(" root ")
            .unwrap_or_else(|| panic!("unexpected child output: {line}"));
        let pid: u32 = pid
            .parse()
            .unwrap_or_else(|e| panic!("pid in {line:?}: {e}"));
        assert!(
            !process_alive(pid),
            "postmaster {pid} outlived its test process"
        );
        assert!(
            !Path::new(root).exists(),
            "{root} outlived its test process"
        );
    }
}
