//! Liveness and readiness.

use super::helpers::TestApp;

#[tokio::test]
async fn health_is_ok_while_the_process_runs() {
    let app = TestApp::new().await;
    let r = app.send(warp::test::request().path("/health")).await;
    r.assert_status(200);
    assert_eq!(r.json(), serde_json::json!({"status": "ok"}));
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn ready_answers_when_the_database_does_and_503_when_it_does_not() {
    let app = TestApp::new().await;
    app.send(warp::test::request().path("/health/ready"))
        .await
        .assert_status(200);
    app.state.store.close().await.unwrap();
    let r = app.send(warp::test::request().path("/health/ready")).await;
    r.problem(503);
    assert!(r.header("retry-after").is_some());
    // Liveness does not depend on the database.
    app.send(warp::test::request().path("/health"))
        .await
        .assert_status(200);
}

#[cfg(unix)]
#[tokio::test]
async fn the_database_file_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    if super::helpers::sqlite_only("the database file") {
        return;
    }
    let app = TestApp::new().await;
    app.register("alice@example.com", super::helpers::PASSWORD)
        .await
        .assert_status(201);
    for name in ["app.db", "app.db-wal"] {
        let mode = std::fs::metadata(app.dir.path().join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}: {mode:o}");
    }
}
