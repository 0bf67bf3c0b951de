//! API tests: the real `app(state)` through `warp::test`, and the real binary over loopback.

mod admin;
mod auth;
mod binary;
mod cors;
mod errors;
mod helpers;
mod input;
mod openapi;
mod ops;
mod pg;
mod security;
mod server;
mod sessions;
mod users;
