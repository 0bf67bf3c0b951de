//! Several replicas on one PostgreSQL database: every promise that holds within one process holds
//! across them (tokens, revocation, racing registrations, the throttle, the last-admin rule,
//! refresh rotation), and a server rides out PostgreSQL restarting under it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::binary::Server;
use super::helpers::{PASSWORD, TestApp};

fn tokens(body: &Value) -> (String, String) {
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["refresh_token"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn a_token_from_one_replica_works_on_the_other_and_revocation_holds_on_both() {
    let a = TestApp::new().await;
    let b = a.replica(&[]).await;
    let (access, refresh) = tokens(&a.user("alice@example.com").await);
    b.me(&access).await.assert_status(200);
    // A refresh on B gives a pair that A accepts.
    let (access2, _) = tokens(&b.refresh(&refresh).await.json());
    a.me(&access2).await.assert_status(200);
    // Logout on A: B refuses the same token at once.
    a.authed("POST", "/api/v1/users/logout", &access2, None)
        .await
        .assert_status(204);
    b.me(&access2).await.problem(401);

    // A password change on B ends A's sessions at once.
    let (access3, _) = tokens(&a.login("alice@example.com", PASSWORD).await.json());
    b.authed(
        "PUT",
        "/api/v1/users/me/password",
        &access3,
        Some(json!({"current_password": PASSWORD, "new_password": "An0ther-Strong-Pass"})),
    )
    .await
    .assert_status(204);
    a.me(&access3).await.problem(401);
    a.login("alice@example.com", "An0ther-Strong-Pass")
        .await
        .assert_status(200);
}

#[tokio::test]
async fn racing_registrations_of_one_email_on_two_replicas_give_one_201() {
    let a = TestApp::new().await;
    let b = a.replica(&[]).await;
    for round in 0..3 {
        let email = format!("race{round}@example.com");
        let attempts = (0..8).map(|i| {
            let app = if i % 2 == 0 { &a } else { &b };
            // Case differs too: one account all the same.
            let email = if i % 3 == 0 {
                email.to_uppercase()
            } else {
                email.clone()
            };
            async move { app.register(&email, PASSWORD).await.status.as_u16() }
        });
        let mut statuses = futures_util::future::join_all(attempts).await;
        statuses.sort_unstable();
        assert_eq!(
            statuses,
            [201, 409, 409, 409, 409, 409, 409, 409],
            "{email}"
        );
    }
}

#[tokio::test]
async fn the_login_throttle_is_shared_by_the_replicas() {
    let vars = [("LOGIN_MAX_FAILURES", "3")];
    let a = TestApp::with(&vars).await;
    let b = a.replica(&vars).await;
    a.register("alice@example.com", PASSWORD)
        .await
        .assert_status(201);
    a.login("alice@example.com", "Wrong-password-1")
        .await
        .problem(401);
    b.login("alice@example.com", "Wrong-password-2")
        .await
        .problem(401);
    a.login("alice@example.com", "Wrong-password-3")
        .await
        .problem(401);
    // Three failures across two replicas: blocked on both, even with the right password.
    for app in [&a, &b] {
        let r = app.login("alice@example.com", PASSWORD).await;
        r.problem(429);
        let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=30).contains(&wait), "{wait}");
    }
    // A burst sent to both at once gets no more guesses than the limit.
    let c = TestApp::with(&vars).await;
    let d = c.replica(&vars).await;
    c.register("bob@example.com", PASSWORD)
        .await
        .assert_status(201);
    let burst = (0..10).map(|i| {
        let app = if i % 2 == 0 { &c } else { &d };
        async move {
            app.login("bob@example.com", &format!("Wrong-password-{i}"))
                .await
                .status
                .as_u16()
        }
    });
    let statuses = futures_util::future::join_all(burst).await;
    let checked = statuses.iter().filter(|s| **s == 401).count();
    assert!(checked <= 3, "{statuses:?}");
    assert_eq!(checked + statuses.iter().filter(|s| **s == 429).count(), 10);
}

#[tokio::test]
async fn two_admins_on_two_replicas_demoting_each_other_leave_one() {
    for round in 0..4 {
        let a = TestApp::new().await;
        let b = a.replica(&[]).await;
        let root = a.admin_token("root@example.com").await;
        let ops = a.admin_token("ops@example.com").await;
        let root_id = a.id_of("root@example.com").await;
        let ops_id = a.id_of("ops@example.com").await;
        let body = Some(json!({"role": "member"}));
        let (ops_path, root_path) = (
            format!("/api/v1/admin/users/{ops_id}"),
            format!("/api/v1/admin/users/{root_id}"),
        );
        let (r1, r2) = tokio::join!(
            a.admin("PATCH", &ops_path, &root, body.clone()),
            b.admin("PATCH", &root_path, &ops, body.clone()),
        );
        let mut statuses = [r1.status.as_u16(), r2.status.as_u16()];
        statuses.sort_unstable();
        // One wins; the other is no longer an admin (403) or would leave none (409).
        assert_eq!(statuses[0], 200, "round {round}: {statuses:?}");
        assert!(
            matches!(statuses[1], 403 | 409),
            "round {round}: {statuses:?}"
        );
        let admins = a
            .query_i64("SELECT count(*) FROM users WHERE role = 'admin'")
            .await;
        assert_eq!(admins, 1, "round {round}");
    }
}

#[tokio::test]
async fn refresh_rotation_and_reuse_detection_hold_across_replicas() {
    let a = TestApp::new().await;
    let b = a.replica(&[]).await;
    let (_, refresh) = tokens(&a.user("alice@example.com").await);
    // The same token refreshed on both at once: one chain, the same live pair for both.
    let (r1, r2) = tokio::join!(a.refresh(&refresh), b.refresh(&refresh));
    let (p1, p2) = (r1.json(), r2.json());
    assert_eq!(r1.status.as_u16(), 200, "{p1}");
    assert_eq!(r2.status.as_u16(), 200, "{p2}");
    assert_eq!(p1["refresh_token"], p2["refresh_token"]);
    let (access, live) = tokens(&p1);
    // Past the grace window, the spent token presented on B revokes the session on A too.
    a.age_rotations(11).await;
    b.refresh(&refresh).await.problem(401);
    a.me(&access).await.problem(401);
    a.refresh(&live).await.problem(401);
}

#[test]
fn a_server_rides_out_postgresql_restarting_under_it() {
    let Ok(cluster) = crate::pg::Cluster::start() else {
        panic!("PostgreSQL is installed (build.rs found it) but a cluster would not start");
    };
    let dir = tempfile::tempdir().unwrap();
    let url = cluster.create_database();
    std::fs::write(dir.path().join("postgres-url"), &url).unwrap();
    let server = Server::start(dir.path(), &[]);
    let register = |email: &str| {
        server.json(
            "POST",
            "/api/v1/users/register",
            &json!({"email": email, "password": PASSWORD}),
            &[],
        )
    };
    register("before@example.com").expect(201);

    cluster.stop();
    let down = register("during@example.com");
    down.expect(503);
    assert!(down.header("retry-after").is_some());
    server.request("GET", "/health", &[], None).expect(200);
    server
        .request("GET", "/health/ready", &[], None)
        .expect(503);

    cluster.start_again();
    // Back by itself: no restart of the server.
    let started = Instant::now();
    loop {
        let r = server.request("GET", "/health/ready", &[], None);
        if r.status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not ready again: {}",
            r.status
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    register("after@example.com").expect(201);
    server
        .json(
            "POST",
            "/api/v1/users/login",
            &json!({"email": "before@example.com", "password": PASSWORD}),
            &[],
        )
        .expect(200);
    let logs = server.log_lines();
    assert!(
        logs.iter().all(|l| !l.contains(crate::pg::PASSWORD)),
        "the database password reached the log"
    );
}

#[tokio::test]
async fn a_mail_another_replica_is_claiming_is_skipped_not_waited_for() {
    let app = TestApp::new().await;
    app.register("sky@example.com", PASSWORD)
        .await
        .assert_status(201);
    app.register("sun@example.com", PASSWORD)
        .await
        .assert_status(201);
    // Another replica's claim, caught in the middle: its transaction holds the first row.
    let mut other = app.postgres_client().await;
    let held = other.transaction().await.unwrap();
    let locked: i64 = held
        .query_one(
            "SELECT id FROM mail_outbox ORDER BY id LIMIT 1 FOR UPDATE",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let now = warp_auth_api::tokens::now_seconds();
    let claim = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        app.state.store.claim_mail(now, 120),
    )
    .await
    .expect("the claim does not wait for the held row")
    .unwrap()
    .expect("the other mail");
    assert_ne!(claim.id, locked);
    assert_eq!(claim.recipient, "sun@example.com");
    held.rollback().await.unwrap();
}
