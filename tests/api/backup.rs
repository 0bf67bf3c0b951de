//! `warp-auth-api backup PATH` run as an operator would: beside a real server under write load on
//! SQLite (the copy opens, and holds every user whose 201 had arrived), never over an existing
//! file, and on PostgreSQL a pointer to `pg_dump` that never shows the password.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_rusqlite::rusqlite::{Connection, OpenFlags};

use super::binary::{Server, text};
use super::helpers::{PASSWORD, database_url, postgres_only, sqlite_only};

const BIN: &str = env!("CARGO_BIN_EXE_warp-auth-api");

/// `warp-auth-api backup PATH` on the database of `dir`.
fn backup(dir: &Path, path: &Path) -> Output {
    Command::new(BIN)
        .arg("backup")
        .arg(path)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env("DATABASE_URL", database_url(dir))
        .output()
        .expect("run the binary")
}

#[test]
fn a_backup_under_write_load_holds_every_acknowledged_user_and_restores() {
    if sqlite_only("the online backup") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let copy = dir.path().join("backup.db");
    let acknowledged = Mutex::new(Vec::<String>::new());
    let stop = AtomicBool::new(false);

    let (before, output, after) = std::thread::scope(|scope| {
        // Registrations one after another, as fast as the server answers, until told to stop.
        let writer = scope.spawn(|| {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let email = format!("load{i}@example.com");
                let r = server.json(
                    "POST",
                    "/api/v1/users/register",
                    &json!({"email": email, "password": PASSWORD}),
                    &[],
                );
                assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
                acknowledged.lock().unwrap().push(email);
                i += 1;
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while acknowledged.lock().unwrap().len() < 30 {
            assert!(Instant::now() < deadline, "the registrations are too slow");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Every user whose 201 has arrived by now must be in the copy.
        let before = acknowledged.lock().unwrap().clone();
        let output = backup(dir.path(), &copy);
        // The load went on while the copy was made, and goes on after it.
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        let after = acknowledged.lock().unwrap().len();
        (before, output, after)
    });
    assert!(output.status.success(), "{}", text(&output));
    assert!(after > before.len(), "no registration after the backup");

    let copied = Connection::open_with_flags(&copy, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let version: i64 = copied
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, warp_auth_api::store::sqlite::SCHEMA_VERSION);
    let check: String = copied
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let emails: Vec<String> = copied
        .prepare("SELECT email FROM users")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for email in &before {
        assert!(
            emails.contains(email),
            "{email} was answered 201 but is not in the copy"
        );
    }
    drop(copied);

    // One line: where the copy is, and the users it holds.
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains(&copy.display().to_string()), "{stdout}");
    assert!(
        stdout.contains(&format!("{} users", emails.len())),
        "{stdout}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&copy).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the copy holds password hashes");
    }

    // Restore: the server stopped, the copy as its database, started again.
    let (status, _) = server.terminate();
    assert!(status.success());
    let restored = tempfile::tempdir().unwrap();
    std::fs::copy(&copy, restored.path().join("app.db")).unwrap();
    let server = Server::start(restored.path(), &[]);
    server
        .json(
            "POST",
            "/api/v1/users/login",
            &json!({"email": before.last().unwrap(), "password": PASSWORD}),
            &[],
        )
        .expect(200);
}

#[test]
fn a_backup_never_overwrites_a_file_and_memory_has_nothing_to_copy() {
    if sqlite_only("the online backup") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    server.register("alice@example.com");
    let existing = dir.path().join("precious.db");
    std::fs::write(&existing, b"the only good copy").unwrap();
    let out = backup(dir.path(), &existing);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("already exists"), "{}", text(&out));
    assert_eq!(std::fs::read(&existing).unwrap(), b"the only good copy");
    // Nor over the database itself.
    let out = backup(dir.path(), &dir.path().join("app.db"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // sqlite::memory: lives inside a server's process: refused plainly, nothing written.
    let target = dir.path().join("memory.db");
    let out = Command::new(BIN)
        .arg("backup")
        .arg(&target)
        .current_dir(dir.path())
        .env("DATABASE_URL", "sqlite::memory:")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no file to back up"), "{}", text(&out));
    assert!(!target.exists());
}

#[test]
fn a_backup_on_postgresql_points_to_pg_dump_without_the_password() {
    if postgres_only("pointing to pg_dump") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = database_url(dir.path());
    assert!(url.contains(crate::pg::PASSWORD), "{url}");
    let target = dir.path().join("backup.dump");
    let out = backup(dir.path(), &target);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("pg_dump --format=custom --file="), "{said}");
    assert!(said.contains("pg_restore"), "{said}");
    assert!(
        !said.contains(crate::pg::PASSWORD),
        "the password was shown: {said}"
    );
    assert!(!target.exists());
}
