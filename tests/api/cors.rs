//! CORS for the origins in `CORS_ORIGINS`, and none without it.

use super::helpers::TestApp;

fn preflight(origin: &str) -> warp::test::RequestBuilder {
    warp::test::request()
        .method("OPTIONS")
        .path("/api/v1/users/me")
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
}

#[tokio::test]
async fn configured_origins_get_preflights_and_headers_even_on_errors() {
    let app = TestApp::with(&[(
        "CORS_ORIGINS",
        "https://app.example.com, http://localhost:3000",
    )])
    .await;
    let r = app.send(preflight("https://app.example.com")).await;
    r.assert_status(200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let allowed = r
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"));

    // A real request from that origin: the error body must be readable by the page.
    let r = app
        .send(
            warp::test::request()
                .path("/api/v1/users/me")
                .header("origin", "http://localhost:3000"),
        )
        .await;
    r.problem(401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );

    // Another origin gets no CORS headers, so the browser keeps it from reading anything; its
    // preflight is not answered.
    let r = app.send(preflight("https://evil.example.net")).await;
    r.problem(405);
    assert!(r.header("access-control-allow-origin").is_none());
    let r = app
        .send(
            warp::test::request()
                .path("/health")
                .header("origin", "https://evil.example.net"),
        )
        .await;
    r.assert_status(200);
    assert!(r.header("access-control-allow-origin").is_none());
    // The server's own pages (Swagger UI) send their own origin on POSTs: served as usual.
    let r = app
        .send(
            warp::test::request()
                .method("POST")
                .path("/api/v1/users/register")
                .header("origin", "http://127.0.0.1:8000")
                .json(&serde_json::json!({"email": "alice@example.com", "password": "MyStrongPass123"})),
        )
        .await;
    r.assert_status(201);
    // A listed origin asking for a header that is not allowed: refused, as a problem.
    let r = app
        .send(
            warp::test::request()
                .method("OPTIONS")
                .path("/api/v1/users/me")
                .header("origin", "https://app.example.com")
                .header("access-control-request-method", "GET")
                .header("access-control-request-headers", "x-secret-header"),
        )
        .await;
    r.problem(403);
    // No Origin at all: not a CORS request, served as usual.
    app.send(warp::test::request().path("/health"))
        .await
        .assert_status(200);
}

#[tokio::test]
async fn without_configured_origins_there_is_no_cors() {
    let app = TestApp::new().await;
    let r = app.send(preflight("https://app.example.com")).await;
    r.problem(405);
    assert!(r.header("access-control-allow-origin").is_none());
    let r = app
        .send(
            warp::test::request()
                .path("/health")
                .header("origin", "https://app.example.com"),
        )
        .await;
    r.assert_status(200);
    assert!(r.header("access-control-allow-origin").is_none());
}
