//! What the metrics and the access-log fields add to every request: `cargo bench --bench overhead`.
//!
//! Times, in one process and with nothing else running in it, the pieces the request path gained:
//! the route-template lookup (a path without a parameter, one with, one of no route), one
//! `Metrics::request` (a counter and a histogram), and the access-log line as the app writes it
//! (the request span with its id recorded, then the `request finished` event) with and without
//! the route, client and user fields, and, for comparison, with those fields recorded into the
//! span instead (what JSON logs make expensive: each record re-serializes the span's fields).
//! Logs go to a sink, formatted as the server formats them (pretty and JSON).
//!
//! Each figure is the fastest of 7 trials: on a shared machine others' load only ever adds. Set
//! `BENCH_ITERATIONS` (default 100000) per trial. Compare the figures with `/me`'s CPU time per
//! request from `cargo bench --bench load` (its `requests per CPU-second`).

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use warp::http::StatusCode;
use warp_auth_api::filters::LoggedUser;
use warp_auth_api::metrics;

/// The fastest of 7 trials of `n` calls, in nanoseconds per call.
fn time<F: FnMut()>(name: &str, n: u32, mut f: F) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..7 {
        let started = Instant::now();
        for _ in 0..n {
            f();
        }
        best = best.min(started.elapsed().as_nanos() as f64 / f64::from(n));
    }
    println!("{name:<66} {best:>8.1} ns");
    best
}

const ID: &str = "a42ebe8f2b854d67915e928dbdf5a934";
const PATH: &str = "/api/v1/users/me";

/// The access-log line of one `/me` request, three ways.
fn access_line(format: &str, n: u32) {
    let client = IpAddr::from([127, 0, 0, 1]);
    let bare = || {
        let span = tracing::info_span!(
            "request",
            method = %"GET",
            path = %PATH,
            request_id = tracing::field::Empty,
        );
        let _entered = span.enter();
        span.record("request_id", ID);
        tracing::info!(status = 200u16, latency_ms = 0.412f64, "request finished");
    };
    let with_fields = || {
        let user = LoggedUser::default();
        let span = tracing::info_span!(
            "request",
            method = %"GET",
            path = %PATH,
            request_id = tracing::field::Empty,
        );
        let _entered = span.enter();
        span.record("request_id", ID);
        let route = metrics::route(black_box(PATH));
        let client = Some(tracing::field::display(client));
        let user_id = user.get().or(Some(42));
        tracing::info!(
            status = 200u16,
            latency_ms = 0.412f64,
            route,
            client,
            user_id,
            "request finished"
        );
    };
    let recorded = || {
        let span = tracing::info_span!(
            "request",
            method = %"GET",
            path = %PATH,
            route = %metrics::route(black_box(PATH)),
            request_id = tracing::field::Empty,
            client = tracing::field::Empty,
            user_id = tracing::field::Empty,
        );
        let _entered = span.enter();
        span.record("request_id", ID);
        span.record("client", tracing::field::display(client));
        span.record("user_id", 42i64);
        tracing::info!(status = 200u16, latency_ms = 0.412f64, "request finished");
    };
    let a = time(
        &format!("{format}: access line, method, path and id only"),
        n,
        bare,
    );
    let b = time(
        &format!("{format}: + route, client, user_id on the line (as served)"),
        n,
        with_fields,
    );
    let c = time(
        &format!("{format}: + route, client, user_id recorded into the span"),
        n,
        recorded,
    );
    println!(
        "{format}: the fields add {:.1} ns on the line, {:.1} ns through the span",
        b - a,
        c - a
    );
}

fn main() {
    let n: u32 = std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("app.db");
    let config = warp_auth_api::config::Config::from_vars([
        (
            "JWT_SECRET",
            "bench-secret-0123456789abcdef0123456789abcdef",
        ),
        ("BCRYPT_COST", "4"),
        ("DATABASE_URL", db.to_str().expect("a UTF-8 path")),
    ])
    .expect("the bench's configuration");
    let state = runtime
        .block_on(warp_auth_api::AppState::new(config))
        .expect("the app's state");

    println!("per request, {n} calls a trial, the fastest of 7 trials");
    time("route label of /api/v1/users/me (no parameter)", n, || {
        black_box(metrics::route(black_box(PATH)));
    });
    time("route label of /api/v1/admin/users/42/sessions", n, || {
        black_box(metrics::route(black_box("/api/v1/admin/users/42/sessions")));
    });
    time("route label of /no/such/path (unmatched)", n, || {
        black_box(metrics::route(black_box("/no/such/path")));
    });
    let took = Duration::from_micros(412);
    time("Metrics::request (GET, /api/v1/users/me, 200)", n, || {
        state
            .metrics
            .request("GET", PATH, StatusCode::OK, black_box(took));
    });
    // The server's worker threads count into the same atomics at once, so their cache lines move
    // between cores: one thread per CPU, all on /me, each making `n` calls; the wall time per call.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut best = f64::MAX;
    for _ in 0..7 {
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    for _ in 0..n {
                        state
                            .metrics
                            .request("GET", PATH, StatusCode::OK, black_box(took));
                    }
                });
            }
        });
        best = best.min(started.elapsed().as_nanos() as f64 / f64::from(n));
    }
    let name = format!("Metrics::request, {threads} threads at once (wall time per call)");
    println!("{name:<66} {best:>8.1} ns");

    // As `telemetry::init` sets them up, writing to a sink.
    let pretty = tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .with_target(false)
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(pretty, || access_line("pretty", n));
    let json = tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .with_target(false)
        .with_ansi(false)
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .finish();
    tracing::subscriber::with_default(json, || access_line("json", n));
}
