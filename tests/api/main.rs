//! API tests: the real `app(state)` through `warp::test`, and the real binary over loopback, each
//! on both storage backends.
//!
//! Every file under `backends` is compiled twice, once in `sqlite` and once in `postgres`, each
//! with its own `BACKEND` (and its own copy of `helpers.rs`, whose `TestApp` and whose binary
//! `Server` open that backend): a test is written once and runs on both. The PostgreSQL half needs
//! the server's binaries (`build.rs` says when they are missing); `pg.rs` starts a throwaway
//! cluster for it. Tests of what has no backend (the server loop, the OpenAPI document) run once.

// Loading each file twice, once per backend, is the point.
#![allow(clippy::duplicate_mod)]

mod pg;
mod smtp;

/// The storage backend a test module runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[path = "."]
mod sqlite {
    pub const BACKEND: crate::Backend = crate::Backend::Sqlite;

    #[path = "admin.rs"]
    mod admin;
    #[path = "audit.rs"]
    mod audit;
    #[path = "auth.rs"]
    mod auth;
    #[path = "backup.rs"]
    mod backup;
    #[path = "binary.rs"]
    pub mod binary;
    #[path = "cookies.rs"]
    mod cookies;
    #[path = "cors.rs"]
    mod cors;
    #[path = "devices.rs"]
    mod devices;
    #[path = "errors.rs"]
    mod errors;
    #[path = "helpers.rs"]
    pub mod helpers;
    #[path = "input.rs"]
    mod input;
    #[path = "keys.rs"]
    mod keys;
    #[path = "mail.rs"]
    mod mail;
    #[path = "metrics.rs"]
    mod metrics;
    #[path = "mfa.rs"]
    mod mfa;
    #[path = "openapi.rs"]
    mod openapi;
    #[path = "ops.rs"]
    mod ops;
    #[path = "pages.rs"]
    mod pages;
    #[path = "security.rs"]
    mod security;
    #[path = "server.rs"]
    mod server;
    #[path = "sessions.rs"]
    mod sessions;
    #[path = "users.rs"]
    mod users;
}

#[cfg(has_postgres)]
#[path = "."]
mod postgres {
    pub const BACKEND: crate::Backend = crate::Backend::Postgres;

    #[path = "admin.rs"]
    mod admin;
    #[path = "audit.rs"]
    mod audit;
    #[path = "auth.rs"]
    mod auth;
    #[path = "backup.rs"]
    mod backup;
    #[path = "binary.rs"]
    pub mod binary;
    #[path = "cookies.rs"]
    mod cookies;
    #[path = "cors.rs"]
    mod cors;
    #[path = "devices.rs"]
    mod devices;
    #[path = "errors.rs"]
    mod errors;
    #[path = "helpers.rs"]
    pub mod helpers;
    #[path = "input.rs"]
    mod input;
    #[path = "keys.rs"]
    mod keys;
    #[path = "mail.rs"]
    mod mail;
    #[path = "metrics.rs"]
    mod metrics;
    #[path = "mfa.rs"]
    mod mfa;
    #[path = "ops.rs"]
    mod ops;
    #[path = "replicas.rs"]
    mod replicas;
    #[path = "security.rs"]
    mod security;
    #[path = "sessions.rs"]
    mod sessions;
    #[path = "users.rs"]
    mod users;
}
