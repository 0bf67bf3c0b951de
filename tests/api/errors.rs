//! One error shape everywhere: routing, bodies, headers, overload and a locked database.

use std::time::Duration;

use serde_json::json;

use super::helpers::{PASSWORD, TestApp};

#[tokio::test]
async fn unknown_routes_are_404_problems() {
    let app = TestApp::new().await;
    for path in [
        "/",
        "/nope",
        "/api/v1/users",
        "/api/v1/users/me/extra",
        "/api/v2/users/me",
    ] {
        let r = app.send(warp::test::request().path(path)).await;
        r.problem(404);
    }
}

#[tokio::test]
async fn a_wrong_method_is_405_with_allow_and_wins_over_401() {
    let app = TestApp::new().await;
    let r = app
        .send(
            warp::test::request()
                .method("GET")
                .path("/api/v1/users/register"),
        )
        .await;
    r.problem(405);
    assert_eq!(r.header("allow"), Some("POST"));
    // POST /me without a token: the method is wrong before the token is missing.
    let r = app
        .send(
            warp::test::request()
                .method("POST")
                .path("/api/v1/users/me"),
        )
        .await;
    r.problem(405);
    assert!(r.header("allow").unwrap().contains("GET"));
    let r = app
        .send(warp::test::request().method("DELETE").path("/health"))
        .await;
    r.problem(405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
}

#[tokio::test]
async fn every_response_has_a_request_id_and_nosniff() {
    let app = TestApp::new().await;
    let paths = ["/health", "/nope", "/api/v1/users/me"];
    for path in paths {
        let r = app.send(warp::test::request().path(path)).await;
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        let id = r.header("x-request-id").expect("x-request-id");
        assert!(!id.is_empty() && id.len() <= 64);
    }
    let r = app
        .send(
            warp::test::request()
                .path("/health")
                .header("x-request-id", "abc-123.XYZ_9"),
        )
        .await;
    assert_eq!(r.header("x-request-id"), Some("abc-123.XYZ_9"));
    for bad in ["has space", "semi;colon", &"x".repeat(65), "ünïcode"] {
        let r = app
            .send(
                warp::test::request()
                    .path("/health")
                    .header("x-request-id", bad),
            )
            .await;
        let id = r.header("x-request-id").unwrap();
        assert_ne!(id, bad);
        assert_eq!(id.len(), 32);
    }
}

#[tokio::test]
async fn bodies_over_16_kib_are_413() {
    let app = TestApp::new().await;
    let big =
        json!({"email": "a@example.com", "password": PASSWORD, "full_name": "x".repeat(17 * 1024)});
    let r = app.post_json("/api/v1/users/register", &big).await;
    r.problem(413);
    // Exactly at the limit is read (and then judged on its content).
    let mut body =
        serde_json::to_string(&json!({"email": "a@example.com", "password": PASSWORD, "pad": ""}))
            .unwrap();
    let pad = 16 * 1024 - body.len();
    body = body.replace("\"pad\":\"\"", &format!("\"pad\":\"{}\"", "p".repeat(pad)));
    assert_eq!(body.len(), 16 * 1024);
    let r = app
        .send(
            warp::test::request()
                .method("POST")
                .path("/api/v1/users/register")
                .header("content-type", "application/json")
                .body(body),
        )
        .await;
    r.assert_status(201);
}

#[tokio::test]
async fn a_json_endpoint_refuses_other_content_types_with_415() {
    let app = TestApp::new().await;
    let body =
        serde_json::to_vec(&json!({"email": "a@example.com", "password": PASSWORD})).unwrap();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/json; charset=latin1"),
    ] {
        let mut request = warp::test::request()
            .method("POST")
            .path("/api/v1/users/register")
            .body(&body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        app.send(request).await.problem(415);
    }
    let ok = warp::test::request()
        .method("POST")
        .path("/api/v1/users/register")
        .header("content-type", "application/json; charset=utf-8")
        .body(&body);
    app.send(ok).await.assert_status(201);
}

#[tokio::test]
async fn malformed_json_missing_and_mistyped_fields_are_400() {
    let app = TestApp::new().await;
    let raw = |body: &'static str| {
        warp::test::request()
            .method("POST")
            .path("/api/v1/users/register")
            .header("content-type", "application/json")
            .body(body)
    };
    let r = app
        .send(raw(r#"{"email": "a@example.com", "password": "#))
        .await;
    r.problem(400);
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("Malformed JSON")
    );
    app.send(raw("[]")).await.problem(400);
    app.send(raw("")).await.problem(400);

    let r = app.send(raw(r#"{"email": "a@example.com"}"#)).await;
    r.problem(400);
    assert_eq!(r.error_fields(), ["password"]);

    let r = app
        .send(raw(r#"{"email": "a@example.com", "password": 123456789}"#))
        .await;
    r.problem(400);
    assert_eq!(r.error_fields(), ["password"]);
    assert!(!String::from_utf8_lossy(&r.body).contains("123456789"));

    let r = app
        .send(raw(
            r#"{"email": ["a@example.com"], "password": "MyStrongPass123"}"#,
        ))
        .await;
    r.problem(400);
    assert_eq!(r.error_fields(), ["email"]);
}

#[tokio::test]
async fn a_full_hashing_queue_answers_503_with_retry_after() {
    // One worker, one waiting place, a slow cost: a burst of registrations must overflow.
    let app = TestApp::with_hasher(1, 1, 10).await;
    let burst = (0..6).map(|i| app.register_owned(format!("user{i}@example.com")));
    let results = futures_util::future::join_all(burst).await;
    let mut refused = 0;
    for r in &results {
        match r.status.as_u16() {
            201 => {}
            503 => {
                r.problem(503);
                assert!(r.header("retry-after").is_some());
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused >= 1, "no request was refused");
}

#[tokio::test]
async fn a_locked_database_is_503_and_reads_go_on_meanwhile() {
    if super::helpers::sqlite_only("a file lock held by another process") {
        return;
    }
    let app = TestApp::new().await;
    let token = app.token("alice@example.com").await;
    // Another process holds the write lock for longer than the busy timeout.
    let sql = app.sql();
    sql.execute_batch(
        "BEGIN IMMEDIATE; INSERT INTO users (email, password_hash) VALUES ('lock@example.com', 'x');",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let write = app.register("bob@example.com", PASSWORD);
    let reads = async {
        // While the write waits on the lock, reads answer at once.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t = std::time::Instant::now();
        let me = app.me(&token).await;
        let ready = app.send(warp::test::request().path("/health/ready")).await;
        (me, ready, t.elapsed())
    };
    let (r, (me, ready, read_time)) = tokio::join!(write, reads);
    r.problem(503);
    assert!(r.header("retry-after").is_some());
    assert!(started.elapsed() >= Duration::from_millis(1500));
    me.assert_status(200);
    ready.assert_status(200);
    assert!(
        read_time < Duration::from_millis(500),
        "reads waited {read_time:?}"
    );
    sql.execute_batch("ROLLBACK;").unwrap();
    app.register("bob@example.com", PASSWORD)
        .await
        .assert_status(201);
}

impl TestApp {
    async fn register_owned(&self, email: String) -> super::helpers::Reply {
        self.register(&email, PASSWORD).await
    }
}
