//! Registration, login and `/me` through the real router.

use serde_json::json;

use super::helpers::{PASSWORD, TestApp};

#[tokio::test]
async fn register_answers_201_with_the_user_and_its_location() {
    let app = TestApp::new().await;
    let r = app.register("alice@example.com", PASSWORD).await;
    r.assert_status(201);
    assert_eq!(r.header("location"), Some("/api/v1/users/me"));
    let body = r.json();
    assert!(body["id"].as_i64().is_some());
    assert_eq!(body["email"], "alice@example.com");
    assert_eq!(body["full_name"], "Alice");
    assert_eq!(body["role"], "member");
    let created = body["created_at"].as_str().unwrap();
    assert_eq!(created.len(), 20, "RFC 3339 UTC: {created}");
    assert!(created.ends_with('Z') && created.as_bytes()[10] == b'T');
    let text = String::from_utf8(r.body.clone()).unwrap();
    assert!(!text.contains(PASSWORD) && !text.contains("$2b$") && !text.contains("password"));
}

#[tokio::test]
async fn emails_are_trimmed_and_case_insensitive() {
    let app = TestApp::new().await;
    let r = app.register("  Alice@Example.COM ", PASSWORD).await;
    r.assert_status(201);
    assert_eq!(r.json()["email"], "alice@example.com");
    app.register("ALICE@example.com", PASSWORD)
        .await
        .problem(409);
    app.login("aLiCe@EXAMPLE.com", PASSWORD)
        .await
        .assert_status(200);
}

#[tokio::test]
async fn a_role_sent_at_registration_is_ignored_and_unknown_fields_too() {
    let app = TestApp::new().await;
    let r = app
        .post_json(
            "/api/v1/users/register",
            &json!({"email": "mallory@example.com", "password": PASSWORD, "role": "admin", "is_admin": true}),
        )
        .await;
    r.assert_status(201);
    assert_eq!(r.json()["role"], "member");
}

#[tokio::test]
async fn full_name_is_optional_trimmed_and_bounded() {
    let app = TestApp::new().await;
    let no_name = app
        .post_json(
            "/api/v1/users/register",
            &json!({"email": "a@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(no_name.json()["full_name"], serde_json::Value::Null);
    let empty = app
        .post_json(
            "/api/v1/users/register",
            &json!({"email": "b@example.com", "password": PASSWORD, "full_name": "   "}),
        )
        .await;
    assert_eq!(empty.json()["full_name"], serde_json::Value::Null);
    let trimmed = app
        .post_json(
            "/api/v1/users/register",
            &json!({"email": "c@example.com", "password": PASSWORD, "full_name": "  Bob  "}),
        )
        .await;
    assert_eq!(trimmed.json()["full_name"], "Bob");
    let long = app
        .post_json(
            "/api/v1/users/register",
            &json!({"email": "d@example.com", "password": PASSWORD, "full_name": "x".repeat(101)}),
        )
        .await;
    long.problem(400);
    assert_eq!(long.error_fields(), ["full_name"]);
    let hundred = app
        .post_json(
            "/api/v1/users/register",
            &json!({"email": "e@example.com", "password": PASSWORD, "full_name": "é".repeat(100)}),
        )
        .await;
    hundred.assert_status(201);
}

#[tokio::test]
async fn every_bad_field_is_listed_at_once_without_echoing_the_password() {
    let app = TestApp::new().await;
    let r = app
        .post_json(
            "/api/v1/users/register",
            &json!({"email": "not-an-email", "password": "tiny7", "full_name": "y".repeat(101)}),
        )
        .await;
    let body = r.problem(400);
    assert_eq!(r.error_fields(), ["email", "full_name", "password"]);
    for e in body["errors"].as_array().unwrap() {
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert!(!String::from_utf8_lossy(&r.body).contains("tiny7"));
}

#[tokio::test]
async fn email_length_is_bounded() {
    let app = TestApp::new().await;
    let local = "a".repeat(64);
    let domain = format!(
        "{}.example.com",
        ["b".repeat(63), "c".repeat(63), "d".repeat(50)].join(".")
    );
    let email = format!("{local}@{domain}");
    assert!(email.len() > 254);
    let r = app.register(&email, PASSWORD).await;
    r.problem(400);
    assert_eq!(r.error_fields(), ["email"]);
}

#[tokio::test]
async fn common_passwords_are_refused() {
    let app = TestApp::new().await;
    for common in ["password", "iloveyou", "Sunshine", "12345678", "qwertyuiop"] {
        let r = app.register("bob@example.com", common).await;
        r.problem(400);
        assert_eq!(r.error_fields(), ["password"], "{common}");
    }
}

#[tokio::test]
async fn the_72_byte_limit_counts_bytes_not_characters() {
    let app = TestApp::new().await;
    // 24 euro signs: 24 characters, 72 bytes: accepted, and it logs in.
    let at_limit = "€".repeat(24);
    app.register("euro@example.com", &at_limit)
        .await
        .assert_status(201);
    app.login("euro@example.com", &at_limit)
        .await
        .assert_status(200);
    // 25 of them: 75 bytes: refused, never truncated.
    let over = "€".repeat(25);
    let r = app.register("euro2@example.com", &over).await;
    r.problem(400);
    assert_eq!(r.error_fields(), ["password"]);
    // A login with the first 72 bytes plus more must not succeed through truncation.
    let longer = format!("{at_limit}x");
    let status = app.login("euro@example.com", &longer).await.status.as_u16();
    assert!(status == 400 || status == 401, "got {status}");
}

#[tokio::test]
async fn password_min_length_is_configurable() {
    let app = TestApp::with(&[("PASSWORD_MIN_LENGTH", "16")]).await;
    let r = app.register("carol@example.com", "Fifteen-chars-1").await;
    r.problem(400);
    assert_eq!(r.error_fields(), ["password"]);
    app.register("carol@example.com", "Sixteen-chars-12")
        .await
        .assert_status(201);
}

#[tokio::test]
async fn racing_registrations_of_one_email_give_one_201_and_409s() {
    let app = TestApp::new().await;
    let attempts = (0..8).map(|i| {
        let email = if i % 2 == 0 {
            "race@example.com"
        } else {
            "RACE@example.com"
        };
        app.register(email, PASSWORD)
    });
    let results = futures_util::future::join_all(attempts).await;
    let mut created = 0;
    for r in &results {
        match r.status.as_u16() {
            201 => created += 1,
            409 => {
                r.problem(409);
            }
            other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    assert_eq!(created, 1);
}

#[tokio::test]
async fn login_gives_a_token_pair_that_is_never_cached() {
    let app = TestApp::new().await;
    app.register("alice@example.com", PASSWORD)
        .await
        .assert_status(201);
    let r = app.login("alice@example.com", PASSWORD).await;
    r.assert_status(200);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("pragma"), Some("no-cache"));
    let body = r.json();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 3600);
    assert!(body["refresh_token"].as_str().unwrap().len() >= 43);
    let token = body["access_token"].as_str().unwrap();
    let me = app.me(token).await;
    me.assert_status(200);
    assert_eq!(me.json()["email"], "alice@example.com");
}

#[tokio::test]
async fn login_accepts_the_oauth2_form() {
    let app = TestApp::new().await;
    app.register("alice@example.com", PASSWORD)
        .await
        .assert_status(201);
    let form = warp::test::request()
        .method("POST")
        .path("/api/v1/users/login")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=password&username=Alice%40example.com&password={PASSWORD}"
        ));
    let r = app.send(form).await;
    r.assert_status(200);
    assert!(r.json()["access_token"].is_string());

    let missing = warp::test::request()
        .method("POST")
        .path("/api/v1/users/login")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("username=alice%40example.com");
    let r = app.send(missing).await;
    r.problem(400);
    assert_eq!(r.error_fields(), ["password"]);

    let bad_email = warp::test::request()
        .method("POST")
        .path("/api/v1/users/login")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("username=alice&password=whatever1");
    let r = app.send(bad_email).await;
    r.problem(400);
    assert_eq!(r.error_fields(), ["username"]);
}

#[tokio::test]
async fn bad_credentials_look_the_same_whether_or_not_the_email_exists() {
    let app = TestApp::new().await;
    app.register("alice@example.com", PASSWORD)
        .await
        .assert_status(201);
    let wrong_password = app.login("alice@example.com", "NotThePassword1").await;
    let unknown_email = app.login("nobody@example.com", PASSWORD).await;
    let a = wrong_password.problem(401);
    let b = unknown_email.problem(401);
    assert_eq!(a["detail"], b["detail"]);
    assert!(
        wrong_password
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
    assert!(
        unknown_email
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
}

#[tokio::test]
async fn a_malformed_email_at_login_is_400() {
    let app = TestApp::new().await;
    let r = app.login("not-an-email", PASSWORD).await;
    r.problem(400);
    assert_eq!(r.error_fields(), ["email"]);
}

#[tokio::test]
async fn a_hash_of_another_cost_is_replaced_at_the_next_good_login() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    {
        let app = TestApp::in_dir(dir, &[]).await;
        app.register("alice@example.com", PASSWORD)
            .await
            .assert_status(201);
        let dir = app.dir;
        let app = TestApp::in_dir(dir, &[("BCRYPT_COST", "5")]).await;
        app.login("alice@example.com", "wrong-password-1")
            .await
            .problem(401);
        let hash = app.query_text("SELECT password_hash FROM users").await;
        assert!(
            hash.starts_with("$2b$04$"),
            "a failed login changes nothing"
        );
        app.login("alice@example.com", PASSWORD)
            .await
            .assert_status(200);
        let hash = app.query_text("SELECT password_hash FROM users").await;
        assert!(hash.starts_with("$2b$05$"), "{hash}");
        app.login("alice@example.com", PASSWORD)
            .await
            .assert_status(200);
        assert!(path.exists() || super::BACKEND != crate::Backend::Sqlite);
    }
}

#[tokio::test]
async fn users_and_tokens_survive_a_restart_with_the_same_secret() {
    let app = TestApp::new().await;
    let token = app.token("alice@example.com").await;
    let dir = app.dir;
    drop(app.api);
    let restarted = TestApp::in_dir(dir, &[]).await;
    restarted.me(&token).await.assert_status(200);
    restarted
        .login("alice@example.com", PASSWORD)
        .await
        .assert_status(200);
}

#[tokio::test]
async fn logins_racing_to_replace_a_hash_of_another_cost_all_succeed() {
    for round in 0..4 {
        let app = TestApp::new().await;
        app.register("alice@example.com", PASSWORD)
            .await
            .assert_status(201);
        // Restarted with another cost: the stored hash is of the old one.
        let dir = app.dir;
        let app = TestApp::in_dir(dir, &[("BCRYPT_COST", "5")]).await;
        let logins = (0..4).map(|_| app.login("alice@example.com", PASSWORD));
        for r in futures_util::future::join_all(logins).await {
            r.assert_status(200);
            let _ = round;
        }
        let hash = app.query_text("SELECT password_hash FROM users").await;
        assert!(hash.starts_with("$2b$05$"), "{hash}");
    }
}

#[tokio::test]
async fn racing_password_changes_give_one_204_and_a_401() {
    let app = TestApp::new().await;
    let token = app.token("alice@example.com").await;
    let change = |new: &'static str| {
        app.send(
            warp::test::request()
                .method("PUT")
                .path("/api/v1/users/me/password")
                .header("authorization", format!("Bearer {token}"))
                .json(&serde_json::json!({"current_password": PASSWORD, "new_password": new})),
        )
    };
    let (a, b) = tokio::join!(change("An0ther-Strong-Pass"), change("Yet-An0ther-Pass-9"));
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort_unstable();
    // The loser's session ended with the winner's change: its token is dead (the contract's
    // 401), never a 409.
    assert_eq!(statuses, [204, 401], "{a:?} {b:?}");
}
