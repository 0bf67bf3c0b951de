//! Tells the test suite whether PostgreSQL's server binaries are on this machine: with them,
//! `tests/api/` builds its PostgreSQL half (the `has_postgres` cfg) and starts a throwaway cluster
//! of its own; without them it says so here, as a warning, and runs on SQLite only. CI installs
//! PostgreSQL first and sets REQUIRE_POSTGRES=1, which turns a missing server into an error.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_postgres)");
    println!("cargo::rerun-if-env-changed=PG_BIN");
    println!("cargo::rerun-if-env-changed=REQUIRE_POSTGRES");
    println!("cargo::rerun-if-changed=/usr/lib/postgresql");
    if let Some(bin) = postgres_bin() {
        println!("cargo::rustc-cfg=has_postgres");
        println!("cargo::rerun-if-changed={}", bin.display());
        return;
    }
    let message = "PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin, in \
                   PG_BIN or on PATH): the PostgreSQL half of the API tests is not built. \
                   Install it with `apt-get install postgresql` to run the suite on both backends";
    if std::env::var_os("REQUIRE_POSTGRES").is_some_and(|v| v == "1") {
        println!("cargo::error={message}");
    } else {
        println!("cargo::warning={message}");
    }
}

/// The directory holding `initdb`: `$PG_BIN`, the newest Debian one, or one on `PATH`.
fn postgres_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        let dir = PathBuf::from(dir);
        return dir.join("initdb").is_file().then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path).find(|dir| Path::new(dir).join("initdb").is_file())
    })
}
