//! The second factor: TOTP with recovery codes, codes computed here from the enrolled secret.

use serde_json::{Value, json};

use super::binary::Server;
use super::helpers::{PASSWORD, Reply, TestApp};

/// The code of the authenticator app for `secret` (base32) at unix time `at`.
pub(super) fn code_at(secret: &str, at: u64) -> String {
    let secret = totp_rs::Secret::try_from_base32(secret).expect("a base32 secret");
    totp_rs::Builder::new()
        .with_secret(secret)
        .build()
        .expect("a TOTP")
        .generate(at)
        .to_string()
}

pub(super) fn now() -> u64 {
    warp_auth_api::tokens::now_seconds()
}

fn access(token: &Value) -> &str {
    token["access_token"].as_str().unwrap()
}

async fn call(app: &TestApp, method: &str, path: &str, token: &Value, body: Value) -> Reply {
    app.authed(method, path, access(token), Some(body)).await
}

/// Enrolls and confirms MFA for a fresh user: its token, secret and recovery codes.
pub(super) async fn enrolled(app: &TestApp, email: &str) -> (Value, String, Vec<String>) {
    let token = app.user(email).await;
    let started = call(
        app,
        "POST",
        "/api/v1/users/me/mfa/totp",
        &token,
        json!({"password": PASSWORD}),
    )
    .await;
    started.assert_status(201);
    let secret = started.json()["secret"].as_str().unwrap().to_owned();
    let confirmed = call(
        app,
        "POST",
        "/api/v1/users/me/mfa/totp/confirm",
        &token,
        json!({"code": code_at(&secret, now())}),
    )
    .await;
    confirmed.assert_status(200);
    let codes = confirmed.json()["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    (token, secret, codes)
}

pub(super) async fn second_step(app: &TestApp, mfa_token: &str, code: &str) -> Reply {
    app.post_json(
        "/api/v1/users/login/mfa",
        &json!({"mfa_token": mfa_token, "code": code}),
    )
    .await
}

/// A login whose password is right: the `mfa_token` of its 403.
pub(super) async fn mfa_token(app: &TestApp, email: &str) -> String {
    let r = app.login(email, PASSWORD).await;
    let body = r.problem(403);
    assert_eq!(body["detail"], "A second factor is required");
    assert_eq!(body["expires_in"], 300);
    body["mfa_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn enroll_confirm_login_and_disable() {
    let app = TestApp::new().await;
    let token = app.user("ann@example.com").await;
    let other_device = app.login("ann@example.com", PASSWORD).await.json();
    call(
        &app,
        "POST",
        "/api/v1/users/me/mfa/totp",
        &token,
        json!({"password": "Wrong-passw0rd"}),
    )
    .await
    .problem(401);
    let started = call(
        &app,
        "POST",
        "/api/v1/users/me/mfa/totp",
        &token,
        json!({"password": PASSWORD}),
    )
    .await;
    started.assert_status(201);
    assert_eq!(started.header("cache-control"), Some("no-store"));
    let body = started.json();
    let secret = body["secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 32, "160 bits in base32");
    let uri = body["otpauth_uri"].as_str().unwrap();
    assert!(
        uri.starts_with("otpauth://totp/warp-auth-api:ann%40example.com?"),
        "{uri}"
    );
    assert!(uri.contains(&format!("secret={secret}")) && uri.contains("issuer=warp-auth-api"));
    // Pending: logins still need no code, and a wrong code confirms nothing.
    assert_eq!(app.me(access(&token)).await.json()["mfa_enabled"], false);
    call(
        &app,
        "POST",
        "/api/v1/users/me/mfa/totp/confirm",
        &token,
        json!({"code": "000000"}),
    )
    .await
    .problem(400);
    let confirmed = call(
        &app,
        "POST",
        "/api/v1/users/me/mfa/totp/confirm",
        &token,
        json!({"code": code_at(&secret, now())}),
    )
    .await;
    confirmed.assert_status(200);
    let codes = confirmed.json()["recovery_codes"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(codes.len(), 10);
    // Every other session ended; this one lives.
    app.me(access(&other_device)).await.problem(401);
    assert_eq!(app.me(access(&token)).await.json()["mfa_enabled"], true);
    call(
        &app,
        "POST",
        "/api/v1/users/me/mfa/totp",
        &token,
        json!({"password": PASSWORD}),
    )
    .await
    .problem(409);

    // The login: password, then a code (the next step's: the current one was spent confirming).
    let mfa = mfa_token(&app, "ann@example.com").await;
    app.me(&mfa).await.problem(401);
    app.refresh(&mfa).await.problem(401);
    let next = code_at(&secret, now() + 30);
    let logged_in = second_step(&app, &mfa, &next).await;
    logged_in.assert_status(200);
    let session = logged_in.json();
    app.me(access(&session)).await.assert_status(200);
    // The mfa_token worked once.
    second_step(&app, &mfa, &next).await.problem(401);

    // Disabling needs the password and a code; a recovery code will do.
    let recovery = codes[0].as_str().unwrap();
    call(
        &app,
        "DELETE",
        "/api/v1/users/me/mfa/totp",
        &session,
        json!({"password": "Wrong-passw0rd", "code": recovery}),
    )
    .await
    .problem(401);
    call(
        &app,
        "DELETE",
        "/api/v1/users/me/mfa/totp",
        &session,
        json!({"password": PASSWORD, "code": "12345"}),
    )
    .await
    .problem(400);
    call(
        &app,
        "DELETE",
        "/api/v1/users/me/mfa/totp",
        &session,
        json!({"password": PASSWORD, "code": recovery.to_uppercase()}),
    )
    .await
    .assert_status(204);
    call(
        &app,
        "DELETE",
        "/api/v1/users/me/mfa/totp",
        &session,
        json!({"password": PASSWORD, "code": recovery}),
    )
    .await
    .problem(409);
    app.login("ann@example.com", PASSWORD)
        .await
        .assert_status(200);
}

#[tokio::test]
async fn a_totp_code_is_accepted_once_and_recovery_codes_once_each() {
    let app = TestApp::new().await;
    let (_, secret, codes) = enrolled(&app, "bo@example.com").await;
    let next = code_at(&secret, now() + 30);
    second_step(&app, &mfa_token(&app, "bo@example.com").await, &next)
        .await
        .assert_status(200);
    // Replay: the same code, and an earlier step's, on a new login.
    let mfa = mfa_token(&app, "bo@example.com").await;
    second_step(&app, &mfa, &next).await.problem(401);
    second_step(&app, &mfa, &code_at(&secret, now()))
        .await
        .problem(401);
    // A recovery code works once, in any case and without its dashes.
    let plain = codes[3].replace('-', "").to_uppercase();
    second_step(&app, &mfa, &plain).await.assert_status(200);
    let again = mfa_token(&app, "bo@example.com").await;
    second_step(&app, &again, &codes[3]).await.problem(401);
    second_step(&app, &again, &codes[4])
        .await
        .assert_status(200);
}

#[tokio::test]
async fn an_mfa_token_dies_after_five_wrong_codes() {
    let app = TestApp::with(&[("LOGIN_MAX_FAILURES", "100")]).await;
    let (_, secret, _) = enrolled(&app, "cy@example.com").await;
    let mfa = mfa_token(&app, "cy@example.com").await;
    for _ in 0..5 {
        let wrong = second_step(&app, &mfa, "000000").await;
        assert_eq!(wrong.problem(401)["detail"], "The code is not valid");
    }
    let dead = second_step(&app, &mfa, &code_at(&secret, now() + 30)).await;
    assert!(
        dead.problem(401)["detail"]
            .as_str()
            .unwrap()
            .contains("log in again")
    );
    second_step(&app, "not-a-token", "123456")
        .await
        .problem(401);
}

#[tokio::test]
async fn wrong_codes_count_as_failed_logins() {
    let app = TestApp::with(&[("LOGIN_MAX_FAILURES", "3")]).await;
    let (_, secret, _) = enrolled(&app, "dee@example.com").await;
    let mfa = mfa_token(&app, "dee@example.com").await;
    for _ in 0..3 {
        second_step(&app, &mfa, "000000").await.problem(401);
    }
    let throttled = second_step(&app, &mfa, &code_at(&secret, now() + 30)).await;
    throttled.problem(429);
    assert!(throttled.header("retry-after").is_some());
    // The account's throttle: the password step is refused too now.
    app.login("dee@example.com", PASSWORD).await.problem(429);
}

#[tokio::test]
async fn new_recovery_codes_replace_the_old_ones() {
    let app = TestApp::new().await;
    let (token, secret, old) = enrolled(&app, "eve@example.com").await;
    let fresh = call(
        &app,
        "POST",
        "/api/v1/users/me/mfa/recovery-codes",
        &token,
        json!({"password": PASSWORD, "code": code_at(&secret, now() + 30)}),
    )
    .await;
    fresh.assert_status(200);
    assert_eq!(fresh.header("cache-control"), Some("no-store"));
    let fresh = fresh.json()["recovery_codes"].as_array().unwrap().clone();
    assert_eq!(fresh.len(), 10);
    let mfa = mfa_token(&app, "eve@example.com").await;
    second_step(&app, &mfa, &old[0]).await.problem(401);
    second_step(&app, &mfa, fresh[0].as_str().unwrap())
        .await
        .assert_status(200);
    let off = TestApp::new().await;
    let plain = off.user("nomfa@example.com").await;
    call(
        &off,
        "POST",
        "/api/v1/users/me/mfa/recovery-codes",
        &plain,
        json!({"password": PASSWORD, "code": "123456"}),
    )
    .await
    .problem(409);
}

#[tokio::test]
async fn an_admin_turns_a_users_mfa_off_and_the_form_login_asks_for_it_too() {
    let app = TestApp::new().await;
    let admin = app.admin_token("admin@example.com").await;
    enrolled(&app, "fay@example.com").await;
    let form = app
        .send(
            warp::test::request()
                .method("POST")
                .path("/api/v1/users/login")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("username=fay@example.com&password={PASSWORD}")),
        )
        .await;
    assert!(form.problem(403)["mfa_token"].as_str().is_some());
    let id = app.id_of("fay@example.com").await;
    let path = format!("/api/v1/admin/users/{id}/mfa");
    app.admin("DELETE", &path, &admin, None)
        .await
        .assert_status(204);
    app.admin("DELETE", &path, &admin, None).await.problem(409);
    app.admin("DELETE", "/api/v1/admin/users/9999/mfa", &admin, None)
        .await
        .problem(404);
    app.login("fay@example.com", PASSWORD)
        .await
        .assert_status(200);
}

#[test]
fn no_secret_or_code_reaches_the_log_at_debug() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("RUST_LOG", "debug")]);
    let json = |method: &str, path: &str, body: Value, bearer: Option<&str>| {
        let auth = bearer.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        server.json(method, path, &body, &headers)
    };
    json(
        "POST",
        "/api/v1/users/register",
        json!({"email": "gus@example.com", "password": PASSWORD}),
        None,
    )
    .expect(201);
    let login = json(
        "POST",
        "/api/v1/users/login",
        json!({"email": "gus@example.com", "password": PASSWORD}),
        None,
    )
    .expect(200);
    let bearer = login["access_token"].as_str().unwrap().to_owned();
    let started = json(
        "POST",
        "/api/v1/users/me/mfa/totp",
        json!({"password": PASSWORD}),
        Some(&bearer),
    )
    .expect(201);
    let secret = started["secret"].as_str().unwrap().to_owned();
    let first = code_at(&secret, now());
    let codes = json(
        "POST",
        "/api/v1/users/me/mfa/totp/confirm",
        json!({"code": first}),
        Some(&bearer),
    )
    .expect(200);
    let recovery: Vec<String> = codes["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let refused = json(
        "POST",
        "/api/v1/users/login",
        json!({"email": "gus@example.com", "password": PASSWORD}),
        None,
    )
    .expect(403);
    let mfa = refused["mfa_token"].as_str().unwrap().to_owned();
    // The problem carries the contract's members and nothing else.
    let mut members: Vec<&str> = refused
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    members.sort_unstable();
    assert_eq!(
        members,
        [
            "detail",
            "expires_in",
            "mfa_token",
            "status",
            "title",
            "type"
        ]
    );
    let second = code_at(&secret, now() + 30);
    json(
        "POST",
        "/api/v1/users/login/mfa",
        json!({"mfa_token": mfa, "code": second}),
        None,
    )
    .expect(200);
    // The lines come through a pipe read by another thread: wait for the last one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !server
        .log_lines()
        .iter()
        .any(|l| l.contains("login with a second factor"))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let logs = server.log_lines().join("\n");
    for secret_text in [secret.as_str(), mfa.as_str(), PASSWORD]
        .into_iter()
        .chain(recovery.iter().map(String::as_str))
    {
        assert!(!logs.contains(secret_text), "{secret_text:?} is in the log");
    }
    // Six digits also occur by chance (a timestamp's microseconds): look for them as a value.
    for code in [&first, &second] {
        for shape in [
            format!("\"{code}\""),
            format!("={code}"),
            format!(": {code}"),
        ] {
            assert!(!logs.contains(&shape), "the code {code} is in the log");
        }
    }
    assert!(
        logs.contains("login with a second factor"),
        "the log is at debug and says what happened"
    );
}

#[tokio::test]
async fn a_new_password_login_does_not_give_a_code_guesser_a_fresh_count() {
    let app = TestApp::with(&[("LOGIN_MAX_FAILURES", "3")]).await;
    let (_, secret, _) = enrolled(&app, "hal@example.com").await;
    let first = mfa_token(&app, "hal@example.com").await;
    for _ in 0..2 {
        second_step(&app, &first, "000000").await.problem(401);
    }
    // The password again: a new mfa_token, and the two wrong codes still count.
    let second = mfa_token(&app, "hal@example.com").await;
    second_step(&app, &second, "000000").await.problem(401);
    second_step(&app, &second, &code_at(&secret, now() + 30))
        .await
        .problem(429);
}

#[tokio::test]
async fn a_user_disabled_between_the_two_steps_gets_403() {
    let app = TestApp::new().await;
    let admin = app.admin_token("admin@example.com").await;
    let (_, secret, _) = enrolled(&app, "ivy@example.com").await;
    let mfa = mfa_token(&app, "ivy@example.com").await;
    let id = app.id_of("ivy@example.com").await;
    app.admin(
        "PATCH",
        &format!("/api/v1/admin/users/{id}"),
        &admin,
        Some(json!({"disabled": true})),
    )
    .await
    .assert_status(200);
    let refused = second_step(&app, &mfa, &code_at(&secret, now() + 30)).await;
    assert_eq!(refused.problem(403)["detail"], "This account is disabled");
}

#[tokio::test]
async fn an_issuer_that_is_a_url_works_and_the_second_step_sets_the_cookie() {
    let app = TestApp::with(&[
        ("JWT_ISSUER", "https://auth.example.com"),
        ("REFRESH_TOKEN_COOKIE", "true"),
        ("PUBLIC_URL", "https://auth.example.com"),
    ])
    .await;
    app.register("joe@example.com", PASSWORD)
        .await
        .assert_status(201);
    let login = app.login("joe@example.com", PASSWORD).await.json();
    let started = call(
        &app,
        "POST",
        "/api/v1/users/me/mfa/totp",
        &login,
        json!({"password": PASSWORD}),
    )
    .await;
    started.assert_status(201);
    let body = started.json();
    assert!(
        body["otpauth_uri"]
            .as_str()
            .unwrap()
            .contains("issuer=auth.example.com")
    );
    let secret = body["secret"].as_str().unwrap().to_owned();
    call(
        &app,
        "POST",
        "/api/v1/users/me/mfa/totp/confirm",
        &login,
        json!({"code": code_at(&secret, now())}),
    )
    .await
    .assert_status(200);
    let mfa = mfa_token(&app, "joe@example.com").await;
    let done = second_step(&app, &mfa, &code_at(&secret, now() + 30)).await;
    done.assert_status(200);
    assert!(done.json().get("refresh_token").is_none());
    assert!(
        done.header("set-cookie")
            .unwrap()
            .starts_with("refresh_token=")
    );
    // A login from another site's page is refused in cookie mode (no login CSRF).
    let foreign = app
        .send(
            warp::test::request()
                .method("POST")
                .path("/api/v1/users/login")
                .header("origin", "https://evil.example")
                .json(&json!({"email": "joe@example.com", "password": PASSWORD})),
        )
        .await;
    foreign.problem(403);
}
