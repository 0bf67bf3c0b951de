//! A real SMTP server for tests: `tests/support/smtp_catcher.py` (Python's aiosmtpd) as a
//! process of its own on 127.0.0.1, keeping every message it receives in a temporary directory.
//!
//! `Catcher::start()` takes a free port, `Catcher::start_on(port)` a given one (SMTP down at
//! first, up later); `url()` is what the service is configured with. `wait_for(recipient, n,
//! timeout)` returns the mails to that recipient once `n` have arrived, decoded: subject (RFC
//! 2047), text and HTML bodies (quoted-printable, base64 and charsets undone). The catcher
//! decodes them with Python's `email` package, which reads any MIME a client writes, rather
//! than a MIME crate here: one dependency fewer to build, and the same aiosmtpd process that
//! received the bytes says what they mean.
//!
//! The process dies with the catcher (Drop kills it) and with the test process: its stdin is a
//! pipe from us, and it exits when the pipe closes, SIGKILL included.
//!
//! Python: `$SMTP_TEST_PYTHON` if set (CI sets its venv's), else `python3` if it can import
//! aiosmtpd, else a venv of our own, `{CARGO_TARGET_TMPDIR}/aiosmtpd-venv`, made once with the
//! pin of `tests/support/smtp_catcher.requirements.txt` (or, without `venv`, `pip install
//! --target {CARGO_TARGET_TMPDIR}/aiosmtpd-lib` on PYTHONPATH); a lock file keeps test binaries
//! running at once from making it twice.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// The catcher script.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/smtp_catcher.py");
/// Its one requirement, pinned (CI installs the same line).
const REQUIREMENTS: &str = include_str!("../support/smtp_catcher.requirements.txt");
/// Temporary directories are `<tmp>/warp-auth-api-smtp-<pid>-XXXXXX`: the pid lets a later run
/// remove those of a test process that was killed.
const PREFIX: &str = "warp-auth-api-smtp-";
/// From spawning Python to its `listening` line (imports on a busy 2-core machine included).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often `wait_for` looks.
const POLL: Duration = Duration::from_millis(20);

/// A running (or stopped) aiosmtpd on 127.0.0.1, and the mail it has received.
pub struct Catcher {
    /// `mail/` (the catcher's `<n>.eml` and `<n>.json`) and `catcher.log` (its stderr).
    dir: tempfile::TempDir,
    port: u16,
    /// `None` once stopped.
    child: Mutex<Option<Child>>,
}

/// One message as the catcher received it.
#[derive(Debug, Clone)]
pub struct Mail {
    /// Arrival order at this catcher, from 1.
    pub seq: u64,
    /// The envelope's recipients (RCPT TO), as the client wrote them.
    pub to: Vec<String>,
    /// The envelope's sender (MAIL FROM).
    pub from: String,
    /// What the client sent with AUTH (PLAIN or LOGIN), if it authenticated: (login, password).
    pub auth: Option<(String, String)>,
    /// Every header, in order, its value decoded (RFC 2047).
    pub headers: Vec<(String, String)>,
    /// The Subject header, decoded.
    pub subject: String,
    /// The text/plain part, decoded, its line breaks "\n"; empty when there is none.
    pub text: String,
    /// The text/html part, decoded, if there is one.
    pub html: Option<String>,
    /// The DATA bytes as received (CRLF line endings), lossily as UTF-8.
    pub raw: String,
}

/// The catcher's `<n>.json`.
#[derive(Deserialize)]
struct Record {
    mail_from: String,
    rcpt_tos: Vec<String>,
    auth_login: Option<String>,
    auth_password: Option<String>,
    headers: Vec<(String, String)>,
    subject: String,
    text: Option<String>,
    html: Option<String>,
    decode_error: Option<String>,
}

impl Catcher {
    /// A catcher on a free port (the kernel's pick: no race).
    pub fn start() -> Catcher {
        Self::start_on(0)
    }

    /// A catcher on `port` (0: a free one). Panics when the port is taken, or Python with
    /// aiosmtpd cannot be found or made, saying why.
    pub fn start_on(port: u16) -> Catcher {
        static CLEANUP: Once = Once::new();
        CLEANUP.call_once(remove_stale_dirs);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-", std::process::id()))
            .tempdir()
            .unwrap_or_else(|e| {
                panic!(
                    "SMTP fixture: creating a temporary directory in {}: {e}",
                    std::env::temp_dir().display()
                )
            });
        let mut catcher = Catcher {
            dir,
            port,
            child: Mutex::new(None),
        };
        let (child, port) = catcher.spawn(port);
        catcher.port = port;
        *catcher.child.get_mut().unwrap_or_else(|e| e.into_inner()) = Some(child);
        catcher
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the service's SMTP setting takes: `smtp://127.0.0.1:PORT?tls=none`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}?tls=none", self.port)
    }

    /// Kills the server and waits for it: the port refuses connections from then on. The mail
    /// received so far stays readable. Does nothing when already stopped.
    pub fn stop(&self) {
        let child = self.lock_child().take();
        if let Some(mut child) = child {
            let _ = child.kill();
            if let Err(e) = child.wait() {
                panic!("SMTP fixture: waiting for the stopped catcher: {e}");
            }
        }
    }

    /// Starts the stopped catcher again, on the same port and directory (mail numbers go on).
    /// Panics when it still runs or the port was taken meanwhile.
    pub fn start_again(&self) {
        let mut guard = self.lock_child();
        assert!(guard.is_none(), "SMTP fixture: start_again: it still runs");
        let (child, _) = self.spawn(self.port);
        *guard = Some(child);
    }

    /// Every mail received so far, in arrival order.
    pub fn mails(&self) -> Vec<Mail> {
        self.records()
            .into_iter()
            .map(|(seq, record)| self.mail(seq, record))
            .collect()
    }

    /// The mails received so far whose envelope has `recipient` (ASCII case ignored).
    pub fn mails_to(&self, recipient: &str) -> Vec<Mail> {
        self.records()
            .into_iter()
            .filter(|(_, r)| r.rcpt_tos.iter().any(|t| same_address(t, recipient)))
            .map(|(seq, record)| self.mail(seq, record))
            .collect()
    }

    /// Every mail to `recipient` once at least `count` have arrived; panics after `timeout`,
    /// listing what did arrive.
    pub async fn wait_for(&self, recipient: &str, count: usize, timeout: Duration) -> Vec<Mail> {
        let start = Instant::now();
        loop {
            let mails = self.mails_to(recipient);
            if mails.len() >= count {
                return mails;
            }
            if start.elapsed() >= timeout {
                let all: Vec<String> = self
                    .records()
                    .iter()
                    .map(|(seq, r)| format!("  #{seq} to {:?}: {:?}", r.rcpt_tos, r.subject))
                    .collect();
                panic!(
                    "SMTP fixture: waited {timeout:?} for {count} mail(s) to {recipient}, got {} \
                     ({}); all {} received:\n{}{}",
                    mails.len(),
                    self.state(),
                    all.len(),
                    if all.is_empty() {
                        "  none".to_owned()
                    } else {
                        all.join("\n")
                    },
                    self.log_tail(0)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn mail_dir(&self) -> PathBuf {
        self.dir.path().join("mail")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("catcher.log")
    }

    fn lock_child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the server runs, for messages.
    fn state(&self) -> String {
        match self.lock_child().as_mut().map(Child::try_wait) {
            None => "the catcher was stopped".to_owned(),
            Some(Ok(None)) => format!("the catcher runs on port {}", self.port),
            Some(Ok(Some(status))) => format!("the catcher has exited: {status}"),
            Some(Err(e)) => format!("the catcher's state is unknown: {e}"),
        }
    }

    /// Runs the script on `port`; the child and the port it listens on.
    fn spawn(&self, port: u16) -> (Child, u16) {
        let log_before = fs::metadata(self.log()).map_or(0, |m| m.len());
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap_or_else(|e| panic!("SMTP fixture: opening {}: {e}", self.log().display()));
        let mut cmd = python().command();
        cmd.arg(SCRIPT)
            .arg("--port")
            .arg(port.to_string())
            .arg("--dir")
            .arg(self.mail_dir())
            // Held open by us: the catcher exits when it closes, whatever ends this process.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("SMTP fixture: could not run {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(read.map(|_| line));
        });
        let failure = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(line)) => match line
                .trim_end()
                .strip_prefix("listening 127.0.0.1:")
                .map(str::parse::<u16>)
            {
                Some(Ok(listening)) if port == 0 || listening == port => {
                    return (child, listening);
                }
                _ if line.is_empty() => {
                    // Closed without a word: it exited.
                    let status = child
                        .wait()
                        .map_or_else(|e| e.to_string(), |s| s.to_string());
                    format!("it exited ({status}) before listening")
                }
                _ => format!("its first line was {line:?}, not `listening 127.0.0.1:{port}`"),
            },
            Ok(Err(e)) => format!("reading its stdout: {e}"),
            Err(_) => format!("it did not listen within {START_TIMEOUT:?}"),
        };
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "SMTP fixture: starting {cmd:?}: {failure}{}",
            self.log_tail(log_before)
        );
    }

    /// The catcher's `<n>.json` records, in arrival order. Half-written ones are not there yet:
    /// the catcher renames each into place whole.
    fn records(&self) -> Vec<(u64, Record)> {
        let entries = match fs::read_dir(self.mail_dir()) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => panic!("SMTP fixture: reading {}: {e}", self.mail_dir().display()),
        };
        let mut records: Vec<(u64, Record)> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name();
                let seq = name.to_str()?.strip_suffix(".json")?.parse().ok()?;
                let text = fs::read_to_string(entry.path()).unwrap_or_else(|e| {
                    panic!("SMTP fixture: reading {}: {e}", entry.path().display())
                });
                let record = serde_json::from_str(&text).unwrap_or_else(|e| {
                    panic!("SMTP fixture: {}: {e}: {text}", entry.path().display())
                });
                Some((seq, record))
            })
            .collect();
        records.sort_by_key(|(seq, _)| *seq);
        records
    }

    fn mail(&self, seq: u64, record: Record) -> Mail {
        let eml = self.mail_dir().join(format!("{seq}.eml"));
        let raw = fs::read(&eml)
            .unwrap_or_else(|e| panic!("SMTP fixture: reading {}: {e}", eml.display()));
        let raw = String::from_utf8_lossy(&raw).into_owned();
        if let Some(why) = record.decode_error {
            panic!(
                "SMTP fixture: mail #{seq} to {:?} could not be decoded: {why}\n--- raw ---\n{raw}",
                record.rcpt_tos
            );
        }
        Mail {
            seq,
            to: record.rcpt_tos,
            from: record.mail_from,
            auth: record.auth_login.zip(record.auth_password),
            headers: record.headers,
            subject: record.subject,
            text: record.text.unwrap_or_default(),
            html: record.html,
            raw,
        }
    }

    /// The end of the catcher's stderr (what was written after byte `from`), for a panic.
    fn log_tail(&self, from: u64) -> String {
        let mut bytes = Vec::new();
        if let Ok(mut file) = File::open(self.log())
            && file.seek(SeekFrom::Start(from)).is_ok()
        {
            let _ = file.read_to_end(&mut bytes);
        }
        let log = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = log.lines().collect();
        if lines.is_empty() {
            return String::new();
        }
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("\n--- its stderr ({}) ---\n{tail}", self.log().display())
    }
}

impl Drop for Catcher {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The directory goes with `self.dir`.
    }
}

impl Mail {
    /// The value of header `name` (case ignored), decoded; the first if there are several.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The http(s) URL in the text part that contains `path` (e.g.
    /// `/account/reset-password?token=`); panics, showing the text, when there is none.
    pub fn link(&self, path: &str) -> String {
        let links = links(&self.text);
        match links.iter().find(|link| link.contains(path)) {
            Some(link) => link.clone(),
            None => panic!(
                "SMTP fixture: no link containing {path:?} in the text of mail #{} to {:?} \
                 ({:?}); its links: {links:?}\n--- text ---\n{}",
                self.seq, self.to, self.subject, self.text
            ),
        }
    }

    /// The `token` query parameter (percent-decoded) of `link(path)`; panics when it has none.
    pub fn token(&self, path: &str) -> String {
        let link = self.link(path);
        let query = link
            .split_once('?')
            .map_or("", |(_, q)| q.split('#').next().unwrap_or_default());
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
            .unwrap_or_else(|e| panic!("SMTP fixture: the query of {link}: {e}"));
        match pairs.into_iter().find(|(k, _)| k == "token") {
            Some((_, token)) if !token.is_empty() => token,
            _ => panic!(
                "SMTP fixture: {link} (mail #{} to {:?}) has no token= value",
                self.seq, self.to
            ),
        }
    }
}

/// The http:// and https:// URLs in `text`, each up to a space, quote or angle bracket, without
/// trailing punctuation.
fn links(text: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut rest = text;
    while let Some(at) = ["http://", "https://"]
        .iter()
        .filter_map(|scheme| rest.find(scheme))
        .min()
    {
        let url = &rest[at..];
        let end = url
            .find(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"' | '\''))
            .unwrap_or(url.len());
        let link = url[..end].trim_end_matches(['.', ',', ';', ':', '!', '?', ')', ']']);
        links.push(link.to_owned());
        rest = &url[end.max(1)..];
    }
    links
}

/// Envelope addresses compare with ASCII case ignored (the domain is case-blind, and no test
/// means two mailboxes by case alone).
fn same_address(a: &str, b: &str) -> bool {
    let bare = |s: &str| {
        s.trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_owned()
    };
    bare(a).eq_ignore_ascii_case(&bare(b))
}

/// A port that was free a moment ago: for a catcher started later with `start_on`.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("SMTP fixture: binding 127.0.0.1:0 for a port: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("SMTP fixture: the bound port: {e}"))
        .port()
}

/// How to run a Python that can import aiosmtpd.
#[derive(Debug, Clone)]
struct Python {
    exe: PathBuf,
    /// PYTHONPATH, for aiosmtpd installed with `pip --target`.
    path: Option<PathBuf>,
}

impl Python {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.exe);
        if let Some(path) = &self.path {
            cmd.env("PYTHONPATH", path);
        }
        cmd
    }

    /// The aiosmtpd version it imports, or why it cannot.
    fn aiosmtpd(&self) -> Result<String, String> {
        let mut cmd = self.command();
        cmd.args([
            "-c",
            "import aiosmtpd, aiosmtpd.controller; print(aiosmtpd.__version__)",
        ]);
        run(cmd).map(|out| out.trim().to_owned())
    }
}

/// The Python every catcher of this process runs, found (or made) on first use.
fn python() -> &'static Python {
    static PYTHON: OnceLock<Result<Python, String>> = OnceLock::new();
    match PYTHON.get_or_init(find_python) {
        Ok(python) => python,
        Err(why) => panic!("SMTP fixture: {why}"),
    }
}

/// `aiosmtpd==X.Y.Z`, from the requirements file.
fn pin() -> &'static str {
    REQUIREMENTS
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("aiosmtpd=="))
        .expect("smtp_catcher.requirements.txt pins aiosmtpd==")
}

fn find_python() -> Result<Python, String> {
    let how = format!(
        "set SMTP_TEST_PYTHON=/path/to/python of a Python 3 with aiosmtpd installed \
         (`/path/to/python -m pip install {}`)",
        pin()
    );
    if let Some(exe) = std::env::var_os("SMTP_TEST_PYTHON").filter(|p| !p.is_empty()) {
        let python = Python {
            exe: PathBuf::from(exe),
            path: None,
        };
        return match python.aiosmtpd() {
            Ok(_) => Ok(python),
            Err(e) => Err(format!(
                "SMTP_TEST_PYTHON={} cannot run the catcher: {e}\nInstall aiosmtpd there, or {how}",
                python.exe.display()
            )),
        };
    }
    let Some(python3) = on_path("python3") else {
        return Err(format!(
            "SMTP_TEST_PYTHON is not set and there is no python3 on PATH: {how}"
        ));
    };
    let system = Python {
        exe: python3.clone(),
        path: None,
    };
    if system.aiosmtpd().is_ok() {
        return Ok(system);
    }
    bootstrap(&python3).map_err(|tried| {
        format!(
            "SMTP_TEST_PYTHON is not set, {} cannot import aiosmtpd, and installing {} for the \
             tests failed:\n{tried}\nInstall python3-venv (or pip), or {how}",
            python3.display(),
            pin()
        )
    })
}

/// A venv with the pinned aiosmtpd under CARGO_TARGET_TMPDIR, made once for every test process
/// (a lock file: test binaries run at once); `pip install --target` where venv is missing.
/// Err: what each way said.
fn bootstrap(python3: &Path) -> Result<Python, String> {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    fs::create_dir_all(tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    let lock_path = tmp.join("aiosmtpd.lock");
    // Held to the end of this function: the other processes wait, then find it made.
    let _lock = File::create(&lock_path)
        .and_then(|f| f.lock().map(|()| f))
        .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    let version = pin().trim_start_matches("aiosmtpd==");
    let venv = tmp.join("aiosmtpd-venv");
    let lib = tmp.join("aiosmtpd-lib");
    let in_venv = Python {
        exe: venv.join("bin").join("python"),
        path: None,
    };
    let in_lib = Python {
        exe: python3.to_owned(),
        path: Some(lib.clone()),
    };
    // Made before, by this process or another.
    for python in [&in_venv, &in_lib] {
        if python.aiosmtpd().is_ok_and(|v| v == version) {
            return Ok(python.clone());
        }
    }
    let pip = ["-m", "pip", "install", "-q", "--disable-pip-version-check"];
    let mut tried = Vec::new();
    let _ = fs::remove_dir_all(&venv);
    let mut make = Command::new(python3);
    make.args(["-m", "venv"]).arg(&venv);
    let mut install = in_venv.command();
    install.args(pip).arg(pin());
    match run(make)
        .and_then(|_| run(install))
        .and_then(|_| in_venv.aiosmtpd())
    {
        Ok(_) => return Ok(in_venv),
        Err(e) => tried.push(format!("- a venv in {}: {e}", venv.display())),
    }
    let _ = fs::remove_dir_all(&venv);
    let _ = fs::remove_dir_all(&lib);
    let mut install = Command::new(python3);
    install.args(pip).arg("--target").arg(&lib).arg(pin());
    match run(install).and_then(|_| in_lib.aiosmtpd()) {
        Ok(_) => Ok(in_lib),
        Err(e) => {
            tried.push(format!("- pip install --target {}: {e}", lib.display()));
            Err(tried.join("\n"))
        }
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Runs a command to its end: its stdout, or an error naming it with its status and stderr.
fn run(mut cmd: Command) -> Result<String, String> {
    cmd.stdin(Stdio::null());
    let out = cmd
        .output()
        .map_err(|e| format!("could not run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Directories of test processes that were killed before their catchers were dropped (the
/// catchers themselves exited when their stdin closed).
fn remove_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
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
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            // Someone else's directory stays (the sticky /tmp refuses), and that is right.
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;

    const WAIT: Duration = Duration::from_secs(10);

    /// A minimal SMTP client over plain TCP, as a mail library speaks it.
    struct Client {
        stream: BufReader<TcpStream>,
    }

    impl Client {
        async fn connect(port: u16) -> Client {
            let stream = TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap_or_else(|e| panic!("connecting to 127.0.0.1:{port}: {e}"));
            let mut client = Client {
                stream: BufReader::new(stream),
            };
            client.expect(220).await;
            client
        }

        /// The next reply, all its lines; panics unless its code is `code`.
        async fn expect(&mut self, code: u16) -> String {
            let mut reply = String::new();
            loop {
                let mut line = String::new();
                let n = self
                    .stream
                    .read_line(&mut line)
                    .await
                    .expect("reading a reply");
                assert!(n > 0, "the server closed the connection; so far: {reply:?}");
                reply.push_str(&line);
                // "250-more follows", "250 last line".
                if line.as_bytes().get(3) != Some(&b'-') {
                    break;
                }
            }
            assert!(
                reply.starts_with(&code.to_string()),
                "expected {code}, got {reply:?}"
            );
            reply
        }

        async fn command(&mut self, line: &str, code: u16) -> String {
            self.stream
                .get_mut()
                .write_all(format!("{line}\r\n").as_bytes())
                .await
                .expect("writing a command");
            self.expect(code).await
        }

        /// One message: MAIL FROM, RCPT TO each, DATA (dot-stuffed, CRLF line endings).
        async fn send(&mut self, from: &str, to: &[&str], message: &str) {
            self.command(&format!("MAIL FROM:<{from}>"), 250).await;
            for rcpt in to {
                self.command(&format!("RCPT TO:<{rcpt}>"), 250).await;
            }
            self.command("DATA", 354).await;
            let mut data = String::new();
            for line in message.lines() {
                if line.starts_with('.') {
                    data.push('.');
                }
                data.push_str(line);
                data.push_str("\r\n");
            }
            data.push_str(".\r\n");
            let stream = self.stream.get_mut();
            stream
                .write_all(data.as_bytes())
                .await
                .expect("writing DATA");
            self.expect(250).await;
        }
    }

    /// One plain text message from noreply@example.com, without AUTH.
    async fn send_plain(port: u16, to: &str, subject: &str) {
        let mut client = Client::connect(port).await;
        client.command("EHLO client.test", 250).await;
        let message = format!("From: noreply@example.com\nTo: {to}\nSubject: {subject}\n\nHi.\n");
        client.send("noreply@example.com", &[to], &message).await;
        client.command("QUIT", 221).await;
    }

    fn pid_gone(pid: u32) -> bool {
        // Reaped (gone) or a zombie whose parent is gone too: either way not serving.
        fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|state| state == 'Z' || state == 'X')
        })
    }

    fn child_pid(catcher: &Catcher) -> u32 {
        catcher.lock_child().as_ref().expect("it runs").id()
    }

    async fn refused(port: u16) -> bool {
        TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    }

    #[tokio::test]
    async fn a_multipart_message_arrives_decoded() {
        let catcher = Catcher::start();
        assert_ne!(catcher.port(), 0);
        assert_eq!(
            catcher.url(),
            format!("smtp://127.0.0.1:{}?tls=none", catcher.port())
        );

        let html = "<p>Bonjour élève, <a href=\"https://app.example.com/account/reset-password\
                    ?token=Abc_DEF-123%2Bz\">choisissez un mot de passe</a>.</p>";
        let html_b64: Vec<String> = BASE64
            .encode(html)
            .as_bytes()
            .chunks(76)
            .map(|chunk| String::from_utf8_lossy(chunk).into_owned())
            .collect();
        // As lettre writes one: encoded words in headers, a quoted-printable text part (a soft
        // line break inside the URL, "=3D" for its "="), a base64 HTML part, a dot-led line.
        let message = format!(
            "From: =?utf-8?b?{from}?= <noreply@example.com>\n\
             To: alice@example.com\n\
             Subject: =?utf-8?q?R=C3=A9initialisez_votre_?= =?utf-8?b?{subject}?=\n\
             MIME-Version: 1.0\n\
             Content-Type: multipart/alternative; boundary=\"XyZ\"\n\
             \n\
             --XyZ\n\
             Content-Type: text/plain; charset=utf-8\n\
             Content-Transfer-Encoding: quoted-printable\n\
             \n\
             Bonjour =C3=A9l=C3=A8ve,\n\
             Choisissez-le ici : https://app.example.com/account/reset-password?token=3DAbc_DE=\n\
             F-123%2Bz.\n\
             .Une ligne qui commence par un point.\n\
             --XyZ\n\
             Content-Type: text/html; charset=utf-8\n\
             Content-Transfer-Encoding: base64\n\
             \n\
             {html_b64}\n\
             --XyZ--\n",
            from = BASE64.encode("Wärp Auth"),
            subject = BASE64.encode("mot de passe — Wärp"),
            html_b64 = html_b64.join("\n"),
        );
        let mut client = Client::connect(catcher.port()).await;
        let ehlo = client.command("EHLO client.test", 250).await;
        assert!(ehlo.contains("AUTH"), "AUTH is offered: {ehlo}");
        assert!(!ehlo.contains("STARTTLS"), "no STARTTLS: {ehlo}");
        let plain = BASE64.encode("\0mailer\0s3cret pass");
        client.command(&format!("AUTH PLAIN {plain}"), 235).await;
        client
            .send(
                "noreply@example.com",
                &["alice@example.com", "Bob@Example.com"],
                &message,
            )
            .await;
        client.command("QUIT", 221).await;

        let mails = catcher.wait_for("Alice@example.COM", 1, WAIT).await;
        assert_eq!(mails.len(), 1, "{mails:#?}");
        let mail = &mails[0];
        assert_eq!(mail.seq, 1);
        assert_eq!(mail.to, ["alice@example.com", "Bob@Example.com"]);
        assert_eq!(mail.from, "noreply@example.com");
        assert_eq!(
            mail.auth,
            Some(("mailer".to_owned(), "s3cret pass".to_owned()))
        );
        assert_eq!(mail.subject, "Réinitialisez votre mot de passe — Wärp");
        assert_eq!(mail.header("from"), Some("Wärp Auth <noreply@example.com>"));
        assert_eq!(mail.header("TO"), Some("alice@example.com"));
        assert_eq!(mail.header("Reply-To"), None);
        // The line break before a boundary is the boundary's (RFC 2046), not the part's.
        assert_eq!(
            mail.text,
            "Bonjour élève,\n\
             Choisissez-le ici : https://app.example.com/account/reset-password?token=Abc_DEF-123%2Bz.\n\
             .Une ligne qui commence par un point."
        );
        assert_eq!(mail.html.as_deref(), Some(html));
        assert!(
            mail.raw
                .contains("Content-Transfer-Encoding: quoted-printable\r\n"),
            "{}",
            mail.raw
        );
        assert!(
            mail.raw.contains("\r\n.Une ligne"),
            "unstuffed: {}",
            mail.raw
        );
        assert_eq!(
            mail.link("/account/reset-password?token="),
            "https://app.example.com/account/reset-password?token=Abc_DEF-123%2Bz"
        );
        assert_eq!(mail.token("/account/reset-password"), "Abc_DEF-123+z");

        let bob = catcher.mails_to("bob@example.com");
        assert_eq!(bob.len(), 1);
        assert_eq!(bob[0].subject, mail.subject);
        assert!(catcher.mails_to("carol@example.com").is_empty());
        assert_eq!(catcher.mails().len(), 1);
    }

    #[test]
    fn links_end_at_spaces_quotes_brackets_and_trailing_punctuation() {
        let text = "Go to <https://a.test/x?token=1>, or \"http://b.test/y?token=2&z=3\".\n\
                    (https://c.test/account/verify?token=q%3D%3D#top) https://";
        assert_eq!(
            links(text),
            [
                "https://a.test/x?token=1",
                "http://b.test/y?token=2&z=3",
                "https://c.test/account/verify?token=q%3D%3D#top",
                "https://",
            ]
        );
        let mail = Mail {
            seq: 1,
            to: vec!["a@example.com".to_owned()],
            from: String::new(),
            auth: None,
            headers: Vec::new(),
            subject: String::new(),
            text: text.to_owned(),
            html: None,
            raw: String::new(),
        };
        assert_eq!(mail.token("/account/verify"), "q==");
        assert_eq!(mail.token("b.test/y"), "2");
    }

    #[test]
    #[should_panic(expected = "no link containing \"/account/reset-password\"")]
    fn link_panics_when_the_text_has_none() {
        let mail = Mail {
            seq: 3,
            to: vec!["a@example.com".to_owned()],
            from: String::new(),
            auth: None,
            headers: Vec::new(),
            subject: "Welcome".to_owned(),
            text: "See https://app.example.com/account/verify?token=x".to_owned(),
            html: None,
            raw: String::new(),
        };
        mail.link("/account/reset-password");
    }

    #[tokio::test]
    #[should_panic(expected = "for 1 mail(s) to nobody@example.com, got 0")]
    async fn wait_for_panics_after_its_timeout_listing_what_arrived() {
        let catcher = Catcher::start();
        send_plain(catcher.port(), "somebody@example.com", "Not for nobody").await;
        catcher.wait_for("somebody@example.com", 1, WAIT).await;
        // The panic lists it: "#1 to [\"somebody@example.com\"]: \"Not for nobody\"".
        catcher
            .wait_for("nobody@example.com", 1, Duration::from_millis(200))
            .await;
    }

    #[tokio::test]
    async fn smtp_down_at_first_comes_up_on_its_port_later_and_again_after_a_stop() {
        let port = free_port();
        assert!(refused(port).await, "nothing listens on {port} yet");

        let catcher = Catcher::start_on(port);
        assert_eq!(catcher.port(), port);
        assert_eq!(catcher.url(), format!("smtp://127.0.0.1:{port}?tls=none"));
        send_plain(port, "late@example.com", "First").await;
        catcher.wait_for("late@example.com", 1, WAIT).await;

        catcher.stop();
        assert!(refused(port).await, "stopped, it no longer listens");
        catcher.stop();
        let kept = catcher.mails_to("late@example.com");
        assert_eq!(kept.len(), 1, "the mail stays readable after a stop");

        catcher.start_again();
        send_plain(port, "late@example.com", "Second").await;
        let mails = catcher.wait_for("late@example.com", 2, WAIT).await;
        let seen: Vec<(u64, &str)> = mails.iter().map(|m| (m.seq, m.subject.as_str())).collect();
        assert_eq!(seen, [(1, "First"), (2, "Second")]);
    }

    #[test]
    #[should_panic(expected = "cannot listen on 127.0.0.1")]
    fn start_on_a_taken_port_says_so() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let port = taken.local_addr().expect("its address").port();
        Catcher::start_on(port);
    }

    #[tokio::test]
    async fn dropped_the_catcher_stops_and_its_directory_goes() {
        let catcher = Catcher::start();
        let (pid, port, dir) = (
            child_pid(&catcher),
            catcher.port(),
            catcher.dir.path().to_owned(),
        );
        drop(catcher);
        assert!(pid_gone(pid), "catcher {pid} runs after drop");
        assert!(refused(port).await, "port {port} still listens after drop");
        assert!(!dir.exists(), "{} is left after drop", dir.display());
    }

    #[tokio::test]
    async fn the_catcher_exits_when_its_stdin_closes() {
        let catcher = Catcher::start();
        let port = catcher.port();
        drop(catcher.lock_child().as_mut().expect("it runs").stdin.take());
        let start = Instant::now();
        let status = loop {
            if let Some(status) = catcher
                .lock_child()
                .as_mut()
                .expect("it runs")
                .try_wait()
                .expect("try_wait")
            {
                break status;
            }
            assert!(start.elapsed() < WAIT, "still running {WAIT:?} after EOF");
            tokio::time::sleep(POLL).await;
        };
        assert!(status.success(), "{status}{}", catcher.log_tail(0));
        assert!(refused(port).await);
    }

    /// Set by `the_catcher_dies_with_a_killed_test_process` for the child it runs.
    const KILL_CHILD: &str = "SMTP_FIXTURE_KILL_CHILD";

    /// In a child process only: starts a catcher, says its pid, and waits to be killed.
    #[test]
    fn kill_child() {
        if std::env::var_os(KILL_CHILD).is_none() {
            return;
        }
        let catcher = Catcher::start();
        println!(
            "catcher pid {} port {}",
            child_pid(&catcher),
            catcher.port()
        );
        std::thread::sleep(Duration::from_secs(120));
    }

    #[tokio::test]
    async fn the_catcher_dies_with_a_killed_test_process() {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut test = std::process::Command::new(exe)
            .args([
                "smtp::tests::kill_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(KILL_CHILD, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("running the test binary");
        let mut out = std::io::BufReader::new(test.stdout.take().expect("piped"));
        let mut seen = String::new();
        let (pid, port) = loop {
            let mut line = String::new();
            if out
                .read_line(&mut line)
                .expect("reading the child's stdout")
                == 0
            {
                let _ = test.kill();
                panic!("the child test said no pid: {seen}");
            }
            seen.push_str(&line);
            // With --nocapture the line may follow "test ... " on the same line.
            if let Some((_, rest)) = line.split_once("catcher pid ") {
                let (pid, port) = rest.trim().split_once(" port ").expect("pid and port");
                break (
                    pid.parse::<u32>().expect("a pid"),
                    port.parse::<u16>().expect("a port"),
                );
            }
        };
        test.kill().expect("SIGKILL to the child test");
        test.wait().expect("waiting for the child test");
        let start = Instant::now();
        while !pid_gone(pid) {
            assert!(
                start.elapsed() < WAIT,
                "catcher {pid} outlived its killed test process by {WAIT:?}"
            );
            tokio::time::sleep(POLL).await;
        }
        assert!(refused(port).await, "port {port} still listens");
    }
}
