//! Metrics: the text a scrape gets, read by a real parser of the Prometheus format; the counters
//! after registrations, logins and refreshes; path templates as route labels; and, against the
//! binary, `/metrics` on `METRICS_ADDR` only and the access-log line's fields.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use openmetrics_parser::{PrometheusType, PrometheusValue};
use serde_json::{Value, json};
use utoipa::OpenApi;
use warp_auth_api::metrics::{UNDOCUMENTED, UNMATCHED};

use super::binary::Server;
use super::helpers::{PASSWORD, TestApp};

/// A scrape, parsed: each family's type, help and series.
struct Scrape(HashMap<String, Family>);

struct Family {
    kind: PrometheusType,
    help: String,
    series: Vec<Series>,
}

#[derive(Debug)]
struct Series {
    labels: HashMap<String, String>,
    value: PrometheusValue,
}

/// The app's metrics as a scrape would get them, parsed.
async fn scrape(app: &TestApp) -> Scrape {
    let text = app.state.metrics.render(&app.state).await;
    parse(&text)
}

fn parse(text: &str) -> Scrape {
    let exposition = openmetrics_parser::prometheus::parse_prometheus(text)
        .unwrap_or_else(|e| panic!("not the Prometheus text format ({e:?}):\n{text}"));
    let families = exposition
        .families
        .into_iter()
        .map(|(name, family)| {
            let series = family
                .iter_samples()
                .map(|sample| Series {
                    labels: sample
                        .get_labelset()
                        .expect("labels")
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    value: sample.value.clone(),
                })
                .collect();
            let family = Family {
                kind: family.family_type.clone(),
                help: family.help.clone(),
                series,
            };
            (name, family)
        })
        .collect();
    Scrape(families)
}

/// The series of `name` whose labels include all of `labels`.
fn samples<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<&'a Series> {
    scrape.0.get(name).map_or_else(Vec::new, |family| {
        family
            .series
            .iter()
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    })
}

/// A counter's or gauge's value.
fn number(series: &Series) -> f64 {
    match &series.value {
        PrometheusValue::Counter(c) => c.value.as_f64(),
        PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n) => n.as_f64(),
        other => panic!("not a counter or gauge: {other:?}"),
    }
}

/// The value of the one counter or gauge series of `name` with these labels.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = samples(scrape, name, labels);
    assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
    number(found[0])
}

/// The one histogram series of `name` with these labels: its buckets (upper bound, cumulative
/// count) and its count.
fn histogram(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> (Vec<(f64, f64)>, u64) {
    let family = scrape.0.get(name).unwrap_or_else(|| panic!("no {name}"));
    assert_eq!(family.kind, PrometheusType::Histogram, "{name}");
    let found = samples(scrape, name, labels);
    assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
    match &found[0].value {
        PrometheusValue::Histogram(h) => (
            h.buckets
                .iter()
                .map(|b| (b.upper_bound, b.count.as_f64()))
                .collect(),
            h.count.unwrap_or_default(),
        ),
        other => panic!("{name} is not a histogram: {other:?}"),
    }
}

fn logins(scrape: &Scrape, outcome: &str) -> f64 {
    value(scrape, "auth_logins_total", &[("outcome", outcome)])
}

fn refreshes(scrape: &Scrape, outcome: &str) -> f64 {
    value(scrape, "auth_refreshes_total", &[("outcome", outcome)])
}

fn requests(scrape: &Scrape, method: &str, route: &str, status: &str) -> f64 {
    samples(
        scrape,
        "http_requests_total",
        &[("method", method), ("route", route), ("status", status)],
    )
    .into_iter()
    .map(number)
    .sum()
}

#[tokio::test]
async fn every_family_is_there_before_anything_happened() {
    let app = TestApp::new().await;
    let scrape = scrape(&app).await;
    for outcome in [
        "success",
        "invalid",
        "throttled",
        "mfa_required",
        "forbidden",
    ] {
        assert_eq!(logins(&scrape, outcome), 0.0, "{outcome}");
    }
    for outcome in ["rotated", "grace", "reused", "invalid"] {
        assert_eq!(refreshes(&scrape, outcome), 0.0, "{outcome}");
    }
    for outcome in ["sent", "failed"] {
        assert_eq!(
            value(&scrape, "auth_mail_sent_total", &[("outcome", outcome)]),
            0.0
        );
    }
    assert_eq!(value(&scrape, "auth_registrations_total", &[]), 0.0);
    assert_eq!(value(&scrape, "auth_password_hash_queue_depth", &[]), 0.0);
    assert_eq!(value(&scrape, "auth_mail_outbox_pending", &[]), 0.0);
    #[cfg(target_os = "linux")]
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "process_threads",
    ] {
        assert!(!samples(&scrape, name, &[]).is_empty(), "{name}");
    }
    // Each family says what it is.
    for family in scrape.0.values() {
        assert!(!family.help.is_empty());
    }
    assert_eq!(scrape.0["auth_logins_total"].kind, PrometheusType::Counter);
    let (buckets, count) = histogram(&scrape, "auth_password_hash_seconds", &[]);
    assert_eq!(count, 0);
    assert!(buckets.len() >= 10, "{buckets:?}");
}

#[tokio::test]
async fn counters_move_with_registrations_and_every_login_outcome() {
    let app = TestApp::with(&[("LOGIN_MAX_FAILURES", "2")]).await;
    app.register("alice@example.com", PASSWORD)
        .await
        .assert_status(201);
    app.register("bob@example.com", PASSWORD)
        .await
        .assert_status(201);
    // The second registration of an email is no registration.
    app.register("bob@example.com", PASSWORD)
        .await
        .assert_status(409);
    let scrape1 = scrape(&app).await;
    assert_eq!(value(&scrape1, "auth_registrations_total", &[]), 2.0);
    // Both verification mails wait in the outbox (no SMTP_URL: nothing sends them here).
    assert_eq!(value(&scrape1, "auth_mail_outbox_pending", &[]), 2.0);
    // Registering hashed twice; bcrypt's time is in the histogram.
    let (buckets, count) = histogram(&scrape1, "auth_password_hash_seconds", &[]);
    assert_eq!(count, 2);
    assert_eq!(buckets.last(), Some(&(f64::INFINITY, 2.0)), "{buckets:?}");

    app.login("alice@example.com", PASSWORD)
        .await
        .assert_status(200);
    app.login("alice@example.com", "Wrong-password-9")
        .await
        .problem(401);
    app.login("nobody@example.com", "Wrong-password-9")
        .await
        .problem(401);
    app.login("alice@example.com", "Wrong-password-9")
        .await
        .problem(401);
    // Two failures of one account: the next attempt is throttled, the right password too.
    app.login("alice@example.com", PASSWORD).await.problem(429);
    // A disabled account: the right password gets 403.
    app.exec("UPDATE users SET disabled_at = 1 WHERE email = 'bob@example.com'")
        .await;
    app.login("bob@example.com", PASSWORD).await.problem(403);
    // A malformed body is no attempt.
    app.post_json("/api/v1/users/login", &json!({"email": "x"}))
        .await
        .problem(400);

    let scrape2 = scrape(&app).await;
    assert_eq!(logins(&scrape2, "success"), 1.0);
    assert_eq!(logins(&scrape2, "invalid"), 3.0);
    assert_eq!(logins(&scrape2, "throttled"), 1.0);
    assert_eq!(logins(&scrape2, "forbidden"), 1.0);
    assert_eq!(logins(&scrape2, "mfa_required"), 0.0);
    let route = "/api/v1/users/login";
    assert_eq!(requests(&scrape2, "POST", route, "200"), 1.0);
    assert_eq!(requests(&scrape2, "POST", route, "401"), 3.0);
    assert_eq!(requests(&scrape2, "POST", route, "429"), 1.0);
    assert_eq!(requests(&scrape2, "POST", route, "403"), 1.0);
    assert_eq!(requests(&scrape2, "POST", route, "400"), 1.0);
}

#[tokio::test]
async fn the_second_factor_counts_as_a_login() {
    let app = TestApp::new().await;
    let token = app.user("alice@example.com").await;
    let access = token["access_token"].as_str().unwrap();
    let enrolled = app
        .authed(
            "POST",
            "/api/v1/users/me/mfa/totp",
            access,
            Some(json!({"password": PASSWORD})),
        )
        .await;
    enrolled.assert_status(201);
    let secret = totp_rs::Secret::try_from_base32(enrolled.json()["secret"].as_str().unwrap())
        .expect("a base32 secret");
    let code = totp_rs::Builder::new()
        .with_secret(secret)
        .build()
        .unwrap()
        .generate(warp_auth_api::tokens::now_seconds())
        .to_string();
    let confirmed = app
        .authed(
            "POST",
            "/api/v1/users/me/mfa/totp/confirm",
            access,
            Some(json!({"code": code})),
        )
        .await;
    confirmed.assert_status(200);
    let recovery = confirmed.json()["recovery_codes"][0]
        .as_str()
        .unwrap()
        .to_owned();

    let first = app.login("alice@example.com", PASSWORD).await.problem(403);
    let mfa_token = first["mfa_token"].as_str().unwrap();
    for (code, status) in [("000000", 401), (recovery.as_str(), 200)] {
        let body = json!({"mfa_token": mfa_token, "code": code});
        app.post_json("/api/v1/users/login/mfa", &body)
            .await
            .assert_status(status);
    }

    let scrape = scrape(&app).await;
    // The password login before MFA, and the second step.
    assert_eq!(logins(&scrape, "success"), 2.0);
    assert_eq!(logins(&scrape, "mfa_required"), 1.0);
    assert_eq!(logins(&scrape, "invalid"), 1.0);
    assert_eq!(
        requests(&scrape, "POST", "/api/v1/users/login/mfa", "200"),
        1.0
    );
}

#[tokio::test]
async fn counters_move_with_every_refresh_outcome() {
    let app = TestApp::new().await;
    let pair = app.user("alice@example.com").await;
    let r1 = pair["refresh_token"].as_str().unwrap().to_owned();
    let r2 = app.refresh(&r1).await.json()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // r1 again at once: the grace window gives the live pair.
    app.refresh(&r1).await.assert_status(200);
    // Something that is no refresh token, and one that was never issued.
    app.refresh("not-a-token").await.problem(401);
    app.refresh("3q2-7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .await
        .problem(401);
    // r1 after the grace window: reuse, and the session is revoked.
    app.age_rotations(11).await;
    app.refresh(&r1).await.problem(401);
    app.refresh(&r2).await.problem(401);

    let scrape = scrape(&app).await;
    assert_eq!(refreshes(&scrape, "rotated"), 1.0);
    assert_eq!(refreshes(&scrape, "grace"), 1.0);
    assert_eq!(refreshes(&scrape, "reused"), 1.0);
    // The malformed one, the unknown one, and r2 of the revoked session.
    assert_eq!(refreshes(&scrape, "invalid"), 3.0);
    assert_eq!(
        requests(&scrape, "POST", "/api/v1/users/refresh", "200"),
        2.0
    );
}

/// A concrete path for a template: each parameter filled with a value of its kind.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|segment| match segment {
            "{id}" => "7",
            "{file}" => "swagger-ui.css",
            s if s.starts_with('{') => "some-value",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn routes_are_labelled_with_their_templates_never_a_raw_path() {
    let app = TestApp::new().await;
    let documented: Vec<String> = warp_auth_api::openapi::ApiDoc::openapi()
        .paths
        .paths
        .keys()
        .cloned()
        .collect();
    assert!(documented.iter().any(|p| p == "/api/v1/admin/users/{id}"));
    let templates: Vec<String> = documented
        .iter()
        .cloned()
        .chain(UNDOCUMENTED.iter().map(|s| s.to_string()))
        .collect();
    for template in &templates {
        let path = concrete(template);
        // GET everywhere: a path that takes no GET answers 405, which is labelled all the same.
        let status = app.send(warp::test::request().path(&path)).await.status;
        assert_ne!(status, 404, "{path} is no route");
    }
    // The asset routes serve what they name.
    for template in UNDOCUMENTED {
        app.send(warp::test::request().path(&concrete(template)))
            .await
            .assert_status(200);
    }
    // A path with a trailing slash is the route's; paths of no route share one label.
    app.send(warp::test::request().path("/api/v1/admin/users/12345/"))
        .await;
    for unknown in [
        "/wp-login.php",
        "/api/v1/users/me/sessions/abc/def",
        "/api/v1/users/99999",
        "/?x=1",
    ] {
        app.send(warp::test::request().path(unknown))
            .await
            .problem(404);
    }

    let scrape = scrape(&app).await;
    let mut by_route: HashMap<String, f64> = HashMap::new();
    for series in samples(&scrape, "http_requests_total", &[]) {
        let route = series.labels["route"].clone();
        *by_route.entry(route).or_default() += number(series);
    }
    for template in &templates {
        assert!(
            by_route.get(template).is_some_and(|n| *n >= 1.0),
            "{template} has no sample of its own: {by_route:?}"
        );
    }
    assert_eq!(by_route.get(UNMATCHED), Some(&4.0), "{by_route:?}");
    for route in by_route.keys() {
        assert!(
            route == UNMATCHED || templates.contains(route),
            "a label that is no template: {route}"
        );
    }
    assert_eq!(
        requests(&scrape, "GET", "/api/v1/admin/users/{id}", "401"),
        2.0,
        "7 and 12345/"
    );
    // The latency histogram, by route, with its buckets.
    let (buckets, count) = histogram(
        &scrape,
        "http_request_duration_seconds",
        &[("route", "/api/v1/users/me")],
    );
    assert_eq!(count, 1);
    assert!(buckets.len() >= 10, "{buckets:?}");
    assert!(buckets.iter().any(|(le, _)| *le == 0.001), "{buckets:?}");
    assert_eq!(buckets.last(), Some(&(f64::INFINITY, 1.0)), "{buckets:?}");
    let (_, templated) = histogram(
        &scrape,
        "http_request_duration_seconds",
        &[("route", "/api/v1/admin/users/{id}")],
    );
    assert_eq!(templated, 2);
}

/// `GET` of `path` on `addr`, over a connection of its own: the status, the headers (names in
/// lower case) and the body.
fn get(addr: SocketAddr, method: &str, path: &str) -> (u16, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8(answer).expect("a text answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The address of the metrics listener, from the server's start log.
fn metrics_addr(server: &Server) -> SocketAddr {
    let started = Instant::now();
    loop {
        let found = server.log_lines().iter().find_map(|line| {
            let rest = line.split("metrics on http://").nth(1)?;
            rest.split('/').next()?.parse::<SocketAddr>().ok()
        });
        if let Some(addr) = found {
            return addr;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no metrics line: {:?}",
            server.log_lines()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_binary_serves_metrics_on_its_own_listener_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("METRICS_ADDR", "127.0.0.1:0")]);
    let metrics = metrics_addr(&server);
    assert_ne!(metrics, server.addr);
    server.register("alice@example.com");
    let pair = server.login("alice@example.com", PASSWORD).expect(200);
    server
        .json(
            "POST",
            "/api/v1/users/refresh",
            &json!({"refresh_token": pair["refresh_token"]}),
            &[],
        )
        .expect(200);

    let (status, headers, body) = get(metrics, "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(
        header(&headers, "content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{headers:?}"
    );
    assert!(header(&headers, "x-request-id").is_some());
    let scrape = parse(&body);
    assert_eq!(value(&scrape, "auth_registrations_total", &[]), 1.0);
    assert_eq!(logins(&scrape, "success"), 1.0);
    assert_eq!(refreshes(&scrape, "rotated"), 1.0);
    assert_eq!(
        requests(&scrape, "POST", "/api/v1/users/register", "201"),
        1.0
    );
    assert!(value(&scrape, "process_resident_memory_bytes", &[]) > 0.0);
    // Scrapes are not API requests.
    assert!(samples(&scrape, "http_requests_total", &[("route", UNMATCHED)]).is_empty());

    let (status, headers, body) = get(metrics, "HEAD", "/metrics");
    assert_eq!(status, 200);
    assert!(body.is_empty());
    assert!(header(&headers, "content-length").is_some_and(|n| n != "0"));
    let (status, headers, _) = get(metrics, "POST", "/metrics");
    assert_eq!(status, 405);
    assert_eq!(header(&headers, "allow"), Some("GET, HEAD"));
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/problem+json")
    );
    let (status, headers, _) = get(metrics, "GET", "/api/v1/users/me");
    assert_eq!(status, 404);
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/problem+json")
    );
    // Not on the API's port.
    server.request("GET", "/metrics", &[], None).expect(404);
}

#[test]
fn without_metrics_addr_there_is_no_metrics_listener() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    server.request("GET", "/metrics", &[], None).expect(404);
    let lines = server.log_lines();
    assert!(!lines.iter().any(|l| l.contains("metrics on")), "{lines:?}");
}

#[test]
fn the_access_log_line_names_the_route_the_client_and_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[("LOG_FORMAT", "json")]);
    server.register("alice@example.com");
    let pair = server.login("alice@example.com", PASSWORD).expect(200);
    let access = pair["access_token"].as_str().unwrap().to_owned();
    // A second session, to end from the first.
    server.login("alice@example.com", PASSWORD).expect(200);
    let sessions = server
        .request(
            "GET",
            "/api/v1/users/me/sessions",
            &[
                ("Authorization", &format!("Bearer {access}")),
                ("X-Request-Id", "metrics-me-1"),
            ],
            None,
        )
        .expect(200);
    let session = sessions
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == false)
        .and_then(|s| s["id"].as_str())
        .expect("the other session")
        .to_owned();
    server
        .request(
            "DELETE",
            &format!("/api/v1/users/me/sessions/{session}"),
            &[
                ("Authorization", &format!("Bearer {access}")),
                ("X-Request-Id", "metrics-me-2"),
            ],
            None,
        )
        .expect(204);
    server
        .request(
            "GET",
            "/no/such/path/42",
            &[("X-Request-Id", "metrics-unknown-1")],
            None,
        )
        .expect(404);
    let (status, _) = server.terminate();
    assert!(status.success());
    // The reader threads see the last lines just after the exit.
    std::thread::sleep(Duration::from_millis(200));
    let lines = server.log_lines();
    let finished: HashMap<String, Value> = lines
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v["message"] == "request finished")
        .filter_map(|v| Some((v["span"]["request_id"].as_str()?.to_owned(), v)))
        .collect();
    let line = |id: &str| {
        finished
            .get(id)
            .unwrap_or_else(|| panic!("no access-log line for {id}: {lines:?}"))
    };

    let listed = line("metrics-me-1");
    assert_eq!(listed["span"]["method"], "GET");
    assert_eq!(listed["route"], "/api/v1/users/me/sessions");
    assert_eq!(listed["client"], "127.0.0.1");
    assert_eq!(listed["user_id"], 1);
    assert_eq!(listed["status"], 200);
    assert!(listed["latency_ms"].as_f64().is_some());

    let templated = line("metrics-me-2");
    assert_eq!(templated["route"], "/api/v1/users/me/sessions/{id}");
    assert_eq!(
        templated["span"]["path"],
        format!("/api/v1/users/me/sessions/{session}")
    );
    assert_eq!(templated["span"]["method"], "DELETE");
    assert_eq!(templated["user_id"], 1);
    assert_eq!(templated["status"], 204);

    let unknown = line("metrics-unknown-1");
    assert_eq!(unknown["route"], UNMATCHED);
    assert_eq!(unknown["span"]["path"], "/no/such/path/42");
    assert_eq!(unknown["client"], "127.0.0.1");
    assert!(unknown.get("user_id").is_none(), "{unknown}");
    assert_eq!(unknown["status"], 404);
}
