//! The session life cycle: refresh rotation and reuse detection, logout, password change,
//! profile, account deletion, login throttling.

use serde_json::{Value, json};
use warp_auth_api::filters::ClientAddr;

use super::helpers::{PASSWORD, Reply, TestApp};

impl TestApp {
    pub async fn refresh(&self, refresh_token: &str) -> Reply {
        self.post_json(
            "/api/v1/users/refresh",
            &json!({"refresh_token": refresh_token}),
        )
        .await
    }

    pub async fn authed(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Reply {
        let mut request = warp::test::request()
            .method(method)
            .path(path)
            .header("authorization", format!("Bearer {token}"));
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(request).await
    }

    /// Pretends the last rotation of every session happened `seconds` earlier.
    pub async fn age_rotations(&self, seconds: i64) {
        self.exec(&format!(
            "UPDATE sessions SET rotated_at = rotated_at - {seconds}"
        ))
        .await;
    }
}

fn tokens(pair: &Value) -> (String, String) {
    (
        pair["access_token"].as_str().unwrap().to_owned(),
        pair["refresh_token"].as_str().unwrap().to_owned(),
    )
}

fn claim(token: &str, name: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let json: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    json[name].clone()
}

#[tokio::test]
async fn refresh_rotates_and_keeps_the_session() {
    let app = TestApp::new().await;
    let (access, refresh) = tokens(&app.user("alice@example.com").await);
    let r = app.refresh(&refresh).await;
    r.assert_status(200);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("pragma"), Some("no-cache"));
    let (access2, refresh2) = tokens(&r.json());
    assert_ne!(refresh2, refresh);
    assert_ne!(access2, access);
    assert_eq!(claim(&access2, "sid"), claim(&access, "sid"));
    app.me(&access2).await.assert_status(200);
    // The pair from the rotation rotates in turn.
    let (_, refresh3) = tokens(&app.refresh(&refresh2).await.json());
    app.refresh(&refresh3).await.assert_status(200);
}

#[tokio::test]
async fn reuse_after_the_grace_window_revokes_that_session_only() {
    let app = TestApp::new().await;
    let (access, refresh) = tokens(&app.user("alice@example.com").await);
    let other = app.login("alice@example.com", PASSWORD).await.json();
    let (other_access, other_refresh) = tokens(&other);

    let (access2, refresh2) = tokens(&app.refresh(&refresh).await.json());
    app.age_rotations(11).await;
    // The spent token again, 11 s later: reuse. The session dies, every token of it too.
    app.refresh(&refresh).await.problem(401);
    let gone = app.me(&access2).await;
    gone.problem(401);
    assert!(
        gone.header("www-authenticate")
            .unwrap()
            .contains("invalid_token")
    );
    app.me(&access).await.problem(401);
    app.refresh(&refresh2).await.problem(401);
    // The user's other session lives on.
    app.me(&other_access).await.assert_status(200);
    app.refresh(&other_refresh).await.assert_status(200);
}

#[tokio::test]
async fn an_older_spent_token_is_reuse_too() {
    let app = TestApp::new().await;
    let (_, r1) = tokens(&app.user("alice@example.com").await);
    let (_, r2) = tokens(&app.refresh(&r1).await.json());
    let (a3, r3) = tokens(&app.refresh(&r2).await.json());
    // r1 is two rotations back: not the grace case, whatever the time.
    app.refresh(&r1).await.problem(401);
    app.me(&a3).await.problem(401);
    app.refresh(&r3).await.problem(401);
}

#[tokio::test]
async fn two_racing_refreshes_of_one_token_both_succeed_on_one_chain() {
    let app = TestApp::new().await;
    let (_, refresh) = tokens(&app.user("alice@example.com").await);
    let (a, b) = tokio::join!(app.refresh(&refresh), app.refresh(&refresh));
    a.assert_status(200);
    b.assert_status(200);
    let (access_a, refresh_a) = tokens(&a.json());
    let (access_b, refresh_b) = tokens(&b.json());
    // One chain: both got the same live refresh token, and both access tokens work.
    assert_eq!(refresh_a, refresh_b);
    assert_eq!(claim(&access_a, "sid"), claim(&access_b, "sid"));
    app.me(&access_a).await.assert_status(200);
    app.me(&access_b).await.assert_status(200);
    // A retry within the window (a lost response) gets it too; the session goes on.
    let retry = app.refresh(&refresh).await;
    assert_eq!(tokens(&retry.json()).1, refresh_a);
    app.refresh(&refresh_a).await.assert_status(200);
}

#[tokio::test]
async fn bad_and_expired_refresh_tokens_are_refused() {
    let app = TestApp::new().await;
    let (access, refresh) = tokens(&app.user("alice@example.com").await);
    for bad in [
        "nope",
        access.as_str(),
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let r = app.refresh(bad).await;
        r.problem(401);
        assert!(r.header("www-authenticate").is_some());
    }
    let r = app.post_json("/api/v1/users/refresh", &json!({})).await;
    r.problem(400);
    assert_eq!(r.error_fields(), ["refresh_token"]);
    app.exec("UPDATE sessions SET expires_at = 1").await;
    app.refresh(&refresh).await.problem(401);
    app.me(&access).await.problem(401);
    let purged = app
        .state
        .store
        .purge_expired_sessions(warp_auth_api::tokens::now_seconds(), 10)
        .await
        .unwrap();
    assert_eq!(purged, 1);
}

#[tokio::test]
async fn logout_ends_only_its_own_session() {
    let app = TestApp::new().await;
    let (access, refresh) = tokens(&app.user("alice@example.com").await);
    let (other_access, _) = tokens(&app.login("alice@example.com", PASSWORD).await.json());
    let r = app
        .authed("POST", "/api/v1/users/logout", &access, None)
        .await;
    r.assert_status(204);
    assert!(r.body.is_empty());
    app.me(&access).await.problem(401);
    app.refresh(&refresh).await.problem(401);
    app.authed("POST", "/api/v1/users/logout", &access, None)
        .await
        .problem(401);
    app.me(&other_access).await.assert_status(200);
    app.send(
        warp::test::request()
            .method("POST")
            .path("/api/v1/users/logout"),
    )
    .await
    .problem(401);
}

#[tokio::test]
async fn a_password_change_revokes_every_session() {
    let app = TestApp::new().await;
    let (access, refresh) = tokens(&app.user("alice@example.com").await);
    let (other_access, other_refresh) =
        tokens(&app.login("alice@example.com", PASSWORD).await.json());
    let path = "/api/v1/users/me/password";

    let wrong = app
        .authed("PUT", path, &access, Some(json!({"current_password": "Not-the-password-1", "new_password": "An0ther-Strong-Pass"})))
        .await;
    wrong.problem(401);
    let weak = app
        .authed(
            "PUT",
            path,
            &access,
            Some(json!({"current_password": PASSWORD, "new_password": "password"})),
        )
        .await;
    weak.problem(400);
    assert_eq!(weak.error_fields(), ["new_password"]);
    app.me(&access).await.assert_status(200);

    app.authed(
        "PUT",
        path,
        &access,
        Some(json!({"current_password": PASSWORD, "new_password": "An0ther-Strong-Pass"})),
    )
    .await
    .assert_status(204);
    for token in [&access, &other_access] {
        app.me(token).await.problem(401);
    }
    for token in [&refresh, &other_refresh] {
        app.refresh(token).await.problem(401);
    }
    app.login("alice@example.com", PASSWORD).await.problem(401);
    app.login("alice@example.com", "An0ther-Strong-Pass")
        .await
        .assert_status(200);
}

#[tokio::test]
async fn patch_me_changes_only_what_is_sent() {
    let app = TestApp::new().await;
    let (access, _) = tokens(&app.user("alice@example.com").await);
    let patch = |body: Value| app.authed("PATCH", "/api/v1/users/me", &access, Some(body));
    let r = patch(json!({"full_name": "  Alice Liddell "})).await;
    r.assert_status(200);
    assert_eq!(r.json()["full_name"], "Alice Liddell");
    let r = patch(json!({})).await;
    assert_eq!(r.json()["full_name"], "Alice Liddell");
    let r = patch(json!({"email": "mallory@example.com", "role": "admin"})).await;
    assert_eq!(r.json()["email"], "alice@example.com");
    assert_eq!(r.json()["role"], "member");
    let r = patch(json!({"full_name": "x".repeat(101)})).await;
    r.problem(400);
    assert_eq!(r.error_fields(), ["full_name"]);
    let r = patch(json!({"full_name": 42})).await;
    r.problem(400);
    assert_eq!(r.error_fields(), ["full_name"]);
    let r = patch(json!({"full_name": null})).await;
    assert_eq!(r.json()["full_name"], Value::Null);
    patch(json!({"full_name": "Bob"})).await;
    let r = patch(json!({"full_name": ""})).await;
    assert_eq!(r.json()["full_name"], Value::Null);
    assert_eq!(app.me(&access).await.json()["full_name"], Value::Null);
}

#[tokio::test]
async fn delete_me_removes_the_user_and_frees_the_email() {
    let app = TestApp::new().await;
    let (access, refresh) = tokens(&app.user("alice@example.com").await);
    let (other_access, _) = tokens(&app.login("alice@example.com", PASSWORD).await.json());
    app.authed("DELETE", "/api/v1/users/me", &access, None)
        .await
        .assert_status(204);
    app.me(&access).await.problem(401);
    app.me(&other_access).await.problem(401);
    app.refresh(&refresh).await.problem(401);
    app.login("alice@example.com", PASSWORD).await.problem(401);
    let sessions = app.query_i64("SELECT count(*) FROM sessions").await;
    assert_eq!(sessions, 0);
    app.register("alice@example.com", PASSWORD)
        .await
        .assert_status(201);
}

fn login_from(email: &str, password: &str, addr: &str) -> warp::test::RequestBuilder {
    warp::test::request()
        .method("POST")
        .path("/api/v1/users/login")
        .extension(ClientAddr(addr.parse().unwrap()))
        .json(&json!({"email": email, "password": password}))
}

#[tokio::test]
async fn failed_logins_are_throttled_per_account_and_a_success_resets_the_count() {
    let app = TestApp::with(&[("LOGIN_MAX_FAILURES", "3")]).await;
    app.register("alice@example.com", PASSWORD)
        .await
        .assert_status(201);
    let wrong = "Wrong-password-1";
    // Two failures, then a success: the count starts again.
    for _ in 0..2 {
        app.send(login_from("alice@example.com", wrong, "192.0.2.1"))
            .await
            .problem(401);
    }
    app.send(login_from("alice@example.com", PASSWORD, "192.0.2.1"))
        .await
        .assert_status(200);
    for _ in 0..2 {
        app.send(login_from("alice@example.com", wrong, "192.0.2.1"))
            .await
            .problem(401);
    }
    app.send(login_from("alice@example.com", PASSWORD, "192.0.2.1"))
        .await
        .assert_status(200);
    // Three failures in a row: blocked, even with the right password, from anywhere.
    for _ in 0..3 {
        app.send(login_from("alice@example.com", wrong, "192.0.2.1"))
            .await
            .problem(401);
    }
    let r = app
        .send(login_from("ALICE@example.com", PASSWORD, "198.51.100.9"))
        .await;
    r.problem(429);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    // Other accounts are not affected.
    app.register("bob@example.com", PASSWORD)
        .await
        .assert_status(201);
    app.send(login_from("bob@example.com", PASSWORD, "192.0.2.1"))
        .await
        .assert_status(200);
    // Unknown emails count too (no way to tell them apart from outside).
    for _ in 0..3 {
        app.send(login_from("ghost@example.com", wrong, "203.0.113.5"))
            .await
            .problem(401);
    }
    app.send(login_from("ghost@example.com", wrong, "203.0.113.5"))
        .await
        .problem(429);
}

#[tokio::test]
async fn failed_logins_are_throttled_per_address_at_ten_times_the_limit() {
    let app = TestApp::with(&[("LOGIN_MAX_FAILURES", "2")]).await;
    app.register("victim@example.com", PASSWORD)
        .await
        .assert_status(201);
    // 20 failures from one address, each on another account.
    for i in 0..20 {
        app.send(login_from(
            &format!("user{i}@example.com"),
            "Wrong-password-1",
            "192.0.2.50",
        ))
        .await
        .problem(401);
    }
    app.send(login_from("victim@example.com", PASSWORD, "192.0.2.50"))
        .await
        .problem(429);
    app.send(login_from("victim@example.com", PASSWORD, "192.0.2.51"))
        .await
        .assert_status(200);
}

#[tokio::test]
async fn guessing_the_current_password_is_throttled_too() {
    let app = TestApp::with(&[("LOGIN_MAX_FAILURES", "2")]).await;
    let (access, _) = tokens(&app.user("alice@example.com").await);
    let body = json!({"current_password": "Guess-number-1", "new_password": "An0ther-Strong-Pass"});
    for _ in 0..2 {
        app.authed(
            "PUT",
            "/api/v1/users/me/password",
            &access,
            Some(body.clone()),
        )
        .await
        .problem(401);
    }
    app.authed("PUT", "/api/v1/users/me/password", &access, Some(body))
        .await
        .problem(429);
}

#[tokio::test]
async fn zero_turns_throttling_off() {
    let app = TestApp::with(&[("LOGIN_MAX_FAILURES", "0")]).await;
    app.register("alice@example.com", PASSWORD)
        .await
        .assert_status(201);
    for _ in 0..15 {
        app.send(login_from(
            "alice@example.com",
            "Wrong-password-1",
            "192.0.2.1",
        ))
        .await
        .problem(401);
    }
    app.send(login_from("alice@example.com", PASSWORD, "192.0.2.1"))
        .await
        .assert_status(200);
    // Nothing was counted anywhere.
    match &app.state.throttle {
        warp_auth_api::throttle::Throttle::Local(local) => assert_eq!(local.len(), (0, 0)),
        warp_auth_api::throttle::Throttle::Shared(_) => panic!("off is never shared"),
    }
}

#[tokio::test]
async fn a_parallel_burst_gets_no_more_guesses_than_one_by_one() {
    let app = TestApp::with(&[("LOGIN_MAX_FAILURES", "3")]).await;
    app.register("alice@example.com", PASSWORD)
        .await
        .assert_status(201);
    let burst = (0..20).map(|_| {
        app.send(login_from(
            "alice@example.com",
            "Wrong-password-1",
            "192.0.2.1",
        ))
    });
    let results = futures_util::future::join_all(burst).await;
    let guessed = results.iter().filter(|r| r.status == 401).count();
    let throttled = results.iter().filter(|r| r.status == 429).count();
    assert_eq!(guessed + throttled, 20);
    let order: Vec<u16> = results.iter().map(|r| r.status.as_u16()).collect();
    assert!(guessed <= 3, "{guessed} guesses were checked: {order:?}");
    app.send(login_from("alice@example.com", PASSWORD, "192.0.2.1"))
        .await
        .problem(429);
}

#[tokio::test]
async fn refreshing_in_a_loop_keeps_a_bounded_trail_and_housekeeping_forgets_sealed_tokens() {
    let app = TestApp::new().await;
    let (_, mut refresh) = tokens(&app.user("alice@example.com").await);
    let mut spent = Vec::new();
    for _ in 0..70 {
        spent.push(refresh.clone());
        refresh = tokens(&app.refresh(&refresh).await.json()).1;
    }
    let trail = app
        .query_i64("SELECT count(*) FROM spent_refresh_tokens")
        .await;
    assert_eq!(trail, 64);
    let sealed = async |app: &TestApp| -> i64 {
        app.query_i64("SELECT count(*) FROM sessions WHERE prev_successor IS NOT NULL")
            .await
    };
    assert_eq!(sealed(&app).await, 1);
    app.age_rotations(11).await;
    app.state
        .store
        .purge_expired_sessions(warp_auth_api::tokens::now_seconds(), 10)
        .await
        .unwrap();
    assert_eq!(sealed(&app).await, 0);
    // A recent spent token is still reuse: the session dies.
    app.refresh(&spent[60]).await.problem(401);
    app.refresh(&refresh).await.problem(401);
}

#[tokio::test]
async fn a_session_ended_behind_the_services_back_is_refused_within_a_second() {
    let app = TestApp::new().await;
    let token = app.token("side@example.com").await;
    app.me(&token).await.assert_status(200);
    app.me(&token).await.assert_status(200);
    // Another process (an operator's SQL, say) deletes the session: this process may answer
    // from what it read for at most a second (SQLite), then reads the database again.
    app.exec("DELETE FROM sessions").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    app.me(&token).await.problem(401);
}

#[tokio::test]
async fn a_logout_holds_for_the_very_next_request_however_often_the_token_was_used() {
    let app = TestApp::new().await;
    let pair = app.user("often@example.com").await;
    let access = pair["access_token"].as_str().unwrap().to_owned();
    let other = app.login("often@example.com", PASSWORD).await.json();
    let other = other["access_token"].as_str().unwrap().to_owned();
    for _ in 0..20 {
        app.me(&access).await.assert_status(200);
        app.me(&other).await.assert_status(200);
    }
    app.authed("POST", "/api/v1/users/logout", &access, None)
        .await
        .assert_status(204);
    app.me(&access).await.problem(401);
    app.me(&other).await.assert_status(200);
    // A role change is seen by the very next request too.
    let admin = app.admin_token("boss@example.com").await;
    let id = app.id_of("often@example.com").await;
    app.authed(
        "PATCH",
        &format!("/api/v1/admin/users/{id}"),
        &admin,
        Some(serde_json::json!({"role": "admin"})),
    )
    .await
    .assert_status(200);
    assert_eq!(app.me(&other).await.json()["role"], "admin");
}
