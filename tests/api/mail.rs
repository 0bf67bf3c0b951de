//! Mail: email verification and password reset, delivered through the outbox to a real SMTP
//! server (aiosmtpd, `crate::smtp::Catcher`), through the router and through the real binary.

use std::time::Duration;

use serde_json::{Value, json};
use warp_auth_api::filters::ClientAddr;

use super::binary::Server;
use super::helpers::{PASSWORD, TestApp};
use crate::smtp::{Catcher, Mail, free_port};

pub(super) const VERIFY: &str = "/account/verify-email?token=";
pub(super) const RESET: &str = "/account/reset-password?token=";
/// Long enough for the worker on a busy 2-core machine.
pub(super) const MAIL_WAIT: Duration = Duration::from_secs(20);

pub(super) async fn app_with(catcher: &Catcher, vars: &[(&str, &str)]) -> TestApp {
    let url = catcher.url();
    let mut all = vec![
        ("SMTP_URL", url.as_str()),
        ("PUBLIC_URL", "https://auth.example.com"),
    ];
    all.extend_from_slice(vars);
    TestApp::with(&all).await
}

pub(super) async fn one_mail(catcher: &Catcher, to: &str, n: usize) -> Mail {
    let mails = catcher.wait_for(to, n, MAIL_WAIT).await;
    mails[n - 1].clone()
}

pub(super) async fn verify(app: &TestApp, token: &str) -> super::helpers::Reply {
    app.post_json("/api/v1/users/email/verify", &json!({"token": token}))
        .await
}

pub(super) async fn forgot(app: &TestApp, email: &str) -> super::helpers::Reply {
    app.post_json("/api/v1/users/password/forgot", &json!({"email": email}))
        .await
}

pub(super) async fn reset(app: &TestApp, token: &str, new_password: &str) -> super::helpers::Reply {
    app.post_json(
        "/api/v1/users/password/reset",
        &json!({"token": token, "new_password": new_password}),
    )
    .await
}

async fn resend(app: &TestApp, access: &str) -> super::helpers::Reply {
    app.send(
        warp::test::request()
            .method("POST")
            .path("/api/v1/users/me/email/verification")
            .header("authorization", format!("Bearer {access}")),
    )
    .await
}

fn access(token: &Value) -> String {
    token["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_mailed_verification_link_works_once() {
    let catcher = Catcher::start();
    let app = app_with(&catcher, &[]).await;
    let created = app.register("Ann@Example.com", PASSWORD).await;
    created.assert_status(201);
    assert_eq!(created.json()["email_verified"], false);

    let mail = one_mail(&catcher, "ann@example.com", 1).await;
    assert_eq!(mail.subject, "Verify your email address");
    assert_eq!(mail.from, "no-reply@localhost");
    let link = mail.link(VERIFY);
    assert!(
        link.starts_with("https://auth.example.com/account/verify-email?token="),
        "{link}"
    );
    let html = mail.html.as_deref().expect("an HTML part");
    assert!(html.contains(&link), "the HTML part carries the same link");
    let token = mail.token(VERIFY);
    assert!(token.len() >= 43, "at least 256 bits");

    let verified = verify(&app, &token).await;
    verified.assert_status(200);
    assert_eq!(verified.json()["email"], "ann@example.com");
    assert_eq!(verified.json()["email_verified"], true);
    let again = verify(&app, &token).await.problem(400);
    assert!(
        again["detail"]
            .as_str()
            .unwrap()
            .contains("invalid or has expired")
    );

    let login = app.login("ann@example.com", PASSWORD).await.json();
    assert_eq!(app.me(&access(&login)).await.json()["email_verified"], true);
    // Only the hash is stored.
    let stored = app.query_i64("SELECT count(*) FROM mail_tokens").await;
    assert_eq!(stored, 0, "a used token is gone");
}

#[tokio::test]
async fn a_resend_kills_the_older_link_and_is_limited() {
    let catcher = Catcher::start();
    let app = app_with(&catcher, &[]).await;
    let login = app.user("bo@example.com").await;
    let first = one_mail(&catcher, "bo@example.com", 1).await.token(VERIFY);

    let queued = resend(&app, &access(&login)).await;
    queued.assert_status(202);
    assert!(queued.json()["detail"].as_str().is_some());
    let second = one_mail(&catcher, "bo@example.com", 2).await.token(VERIFY);
    assert_ne!(first, second);
    verify(&app, &first).await.problem(400);

    // The registration's mail and two resends make three within the hour: a fourth is 429.
    resend(&app, &access(&login)).await.assert_status(202);
    let limited = resend(&app, &access(&login)).await;
    limited.problem(429);
    let wait: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!(wait > 3000 && wait <= 3600, "{wait}");

    let third = one_mail(&catcher, "bo@example.com", 3).await.token(VERIFY);
    verify(&app, &second).await.problem(400);
    verify(&app, &third).await.assert_status(200);
    resend(&app, &access(&login)).await.problem(409);
    resend(&app, "not-a-token").await.problem(401);
}

#[tokio::test]
async fn an_expired_link_is_refused() {
    let catcher = Catcher::start();
    let app = app_with(&catcher, &[]).await;
    app.register("cy@example.com", PASSWORD)
        .await
        .assert_status(201);
    let token = one_mail(&catcher, "cy@example.com", 1).await.token(VERIFY);
    app.exec("UPDATE mail_tokens SET expires_at = 1").await;
    verify(&app, &token).await.problem(400);

    let login = app.login("cy@example.com", PASSWORD).await.json();
    resend(&app, &access(&login)).await.assert_status(202);
    let fresh = one_mail(&catcher, "cy@example.com", 2).await.token(VERIFY);
    verify(&app, &fresh).await.assert_status(200);
    // Malformed tokens are the same 400, and never reach the database.
    verify(&app, "short").await.problem(400);
    verify(&app, "").await.problem(400);
}

#[tokio::test]
async fn forgot_and_reset_end_every_session_and_verify_the_email() {
    let catcher = Catcher::start();
    let app = app_with(&catcher, &[]).await;
    let login = app.user("dee@example.com").await;
    let other_device = app.login("dee@example.com", PASSWORD).await.json();
    one_mail(&catcher, "dee@example.com", 1).await; // the verification mail

    let known = forgot(&app, "Dee@example.com").await;
    let unknown = forgot(&app, "nobody@example.com").await;
    known.assert_status(202);
    unknown.assert_status(202);
    assert_eq!(known.body, unknown.body, "the same body either way");

    let mail = one_mail(&catcher, "dee@example.com", 2).await;
    assert_eq!(mail.subject, "Reset your password");
    assert!(mail.text.contains("30 minutes"), "{}", mail.text);
    let token = mail.token(RESET);

    // A bad new password is refused and spends nothing.
    let weak = reset(&app, &token, "short").await;
    weak.problem(400);
    assert_eq!(weak.error_fields(), vec!["new_password"]);

    reset(&app, &token, "A-new-passw0rd!")
        .await
        .assert_status(204);
    app.me(&access(&login)).await.problem(401);
    app.me(&access(&other_device)).await.problem(401);
    app.login("dee@example.com", PASSWORD).await.problem(401);
    let new_login = app.login("dee@example.com", "A-new-passw0rd!").await;
    new_login.assert_status(200);
    assert_eq!(
        app.me(&access(&new_login.json())).await.json()["email_verified"],
        true
    );
    // The link works once.
    reset(&app, &token, "Yet-another-passw0rd")
        .await
        .problem(400);
}

#[tokio::test]
async fn one_reset_link_used_twice_at_once_works_once() {
    let catcher = Catcher::start();
    let app = app_with(&catcher, &[]).await;
    app.register("dot@example.com", PASSWORD)
        .await
        .assert_status(201);
    forgot(&app, "dot@example.com").await.assert_status(202);
    let token = one_mail(&catcher, "dot@example.com", 2).await.token(RESET);
    let (a, b) = tokio::join!(
        reset(&app, &token, "First-new-passw0rd"),
        reset(&app, &token, "Second-new-passw0rd")
    );
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [204, 400]);
    let winner = if a.status == 204 {
        "First-new-passw0rd"
    } else {
        "Second-new-passw0rd"
    };
    app.login("dot@example.com", winner)
        .await
        .assert_status(200);
}

#[tokio::test]
async fn a_claimed_mail_belongs_to_its_worker_until_the_lease_ends() {
    // No SMTP_URL: no worker runs here; the test claims as workers do.
    let app = TestApp::new().await;
    let other = app.sibling(&[]).await;
    app.register("kit@example.com", PASSWORD)
        .await
        .assert_status(201);
    let now = warp_auth_api::tokens::now_seconds();
    let store = &app.state.store;
    let first = store
        .claim_mail(now, 120)
        .await
        .unwrap()
        .expect("a queued mail");
    assert_eq!(
        (first.attempt, first.recipient.as_str()),
        (1, "kit@example.com")
    );
    assert!(
        other
            .state
            .store
            .claim_mail(now, 120)
            .await
            .unwrap()
            .is_none()
    );
    // The lease is over: the other worker takes it, and the first one's word no longer counts.
    let second = other
        .state
        .store
        .claim_mail(now + 121, 120)
        .await
        .unwrap()
        .expect("claimed again");
    assert_eq!((second.id, second.attempt), (first.id, 2));
    let (_, token) = app.state.mailer.token(first.kind);
    assert!(!store.issue_mail_token(&first, token).await.unwrap());
    store.mail_sent(&first, now).await.unwrap();
    let status = "SELECT status FROM mail_outbox";
    assert_eq!(app.query_text(status).await, "queued");
    other.state.store.mail_sent(&second, now).await.unwrap();
    assert_eq!(app.query_text(status).await, "sent");
}

#[tokio::test]
async fn forgot_sends_at_most_three_mails_an_hour_and_answers_202_all_the_same() {
    let catcher = Catcher::start();
    let app = app_with(&catcher, &[]).await;
    app.register("eve@example.com", PASSWORD)
        .await
        .assert_status(201);
    // One at a time: a mail whose link a newer one replaced before it went out is dropped.
    for n in 2..=4 {
        forgot(&app, "eve@example.com").await.assert_status(202);
        one_mail(&catcher, "eve@example.com", n).await;
    }
    for _ in 0..2 {
        forgot(&app, "eve@example.com").await.assert_status(202);
    }
    // Give a fifth or sixth mail the time to arrive, if one were wrongly sent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mails = catcher.mails_to("eve@example.com");
    let resets: Vec<_> = mails
        .iter()
        .filter(|m| m.subject == "Reset your password")
        .collect();
    assert_eq!(resets.len(), 3, "mails: {mails:?}");
    // Only the newest link works.
    let newest = resets.last().unwrap().token(RESET);
    for older in &resets[..2] {
        reset(&app, &older.token(RESET), "A-new-passw0rd!")
            .await
            .problem(400);
    }
    reset(&app, &newest, "A-new-passw0rd!")
        .await
        .assert_status(204);
}

#[tokio::test]
async fn a_password_change_kills_outstanding_reset_links() {
    let catcher = Catcher::start();
    let app = app_with(&catcher, &[]).await;
    let login = app.user("fay@example.com").await;
    forgot(&app, "fay@example.com").await.assert_status(202);
    let token = one_mail(&catcher, "fay@example.com", 2).await.token(RESET);
    app.send(
        warp::test::request()
            .method("PUT")
            .path("/api/v1/users/me/password")
            .header("authorization", format!("Bearer {}", access(&login)))
            .json(&json!({"current_password": PASSWORD, "new_password": "Changed-passw0rd"})),
    )
    .await
    .assert_status(204);
    reset(&app, &token, "A-new-passw0rd!").await.problem(400);
    app.login("fay@example.com", "Changed-passw0rd")
        .await
        .assert_status(200);
}

#[tokio::test]
async fn forgot_counts_against_the_address_limit() {
    // LOGIN_MAX_FAILURES=1: ten requests per address, then 429.
    let app = TestApp::with(&[("LOGIN_MAX_FAILURES", "1")]).await;
    let from = |addr: &str| {
        warp::test::request()
            .method("POST")
            .path("/api/v1/users/password/forgot")
            .extension(ClientAddr(addr.parse().unwrap()))
            .json(&json!({"email": "nobody@example.com"}))
    };
    for _ in 0..10 {
        app.send(from("192.0.2.1")).await.assert_status(202);
    }
    let refused = app.send(from("192.0.2.1")).await;
    refused.problem(429);
    assert!(refused.header("retry-after").is_some());
    app.send(from("192.0.2.2")).await.assert_status(202);
    forgot(&app, "not an email").await.problem(400);
}

#[tokio::test]
async fn unverified_accounts_cannot_log_in_when_verification_is_required() {
    let catcher = Catcher::start();
    let app = app_with(&catcher, &[("REQUIRE_EMAIL_VERIFICATION", "true")]).await;
    app.register("gus@example.com", PASSWORD)
        .await
        .assert_status(201);
    let refused = app.login("gus@example.com", PASSWORD).await.problem(403);
    assert_eq!(refused["detail"], "Verify your email address first");
    // A wrong password is still the same 401 as for anyone.
    app.login("gus@example.com", "Wrong-passw0rd")
        .await
        .problem(401);
    let token = one_mail(&catcher, "gus@example.com", 1).await.token(VERIFY);
    // The 403 sent no new mail.
    assert_eq!(catcher.mails_to("gus@example.com").len(), 1);
    verify(&app, &token).await.assert_status(200);
    app.login("gus@example.com", PASSWORD)
        .await
        .assert_status(200);
}

#[tokio::test]
async fn closed_registration_is_403_whatever_the_body() {
    let app = TestApp::with(&[("REGISTRATION", "closed")]).await;
    let closed = app.register("hal@example.com", PASSWORD).await.problem(403);
    assert!(closed["detail"].as_str().unwrap().contains("closed"));
    app.post_json("/api/v1/users/register", &json!({}))
        .await
        .problem(403);
}

#[tokio::test]
async fn opening_the_page_never_spends_the_token() {
    let catcher = Catcher::start();
    let app = app_with(&catcher, &[]).await;
    app.register("ida@example.com", PASSWORD)
        .await
        .assert_status(201);
    let token = one_mail(&catcher, "ida@example.com", 1).await.token(VERIFY);
    for _ in 0..3 {
        app.send(warp::test::request().path(&format!("{VERIFY}{token}")))
            .await
            .assert_status(200);
    }
    verify(&app, &token).await.assert_status(200);
}

#[tokio::test]
async fn each_mail_is_sent_once_by_two_workers_on_one_database() {
    let catcher = Catcher::start();
    let first = app_with(&catcher, &[]).await;
    let url = catcher.url();
    let second = first
        .sibling(&[
            ("SMTP_URL", url.as_str()),
            ("PUBLIC_URL", "https://auth.example.com"),
        ])
        .await;
    for i in 0..12 {
        let app = if i % 2 == 0 { &first } else { &second };
        app.register(&format!("u{i}@example.com"), PASSWORD)
            .await
            .assert_status(201);
    }
    for i in 0..12 {
        catcher
            .wait_for(&format!("u{i}@example.com"), 1, MAIL_WAIT)
            .await;
    }
    // Both workers poll every few seconds: give a duplicate the time to show.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for i in 0..12 {
        assert_eq!(
            catcher.mails_to(&format!("u{i}@example.com")).len(),
            1,
            "u{i} got one mail"
        );
    }
}

// The real binary.

fn binary_mail_vars(smtp_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SMTP_URL", smtp_url.to_owned()),
        ("PUBLIC_URL", "http://127.0.0.1:1".to_owned()),
    ]
}

fn start(dir: &std::path::Path, vars: &[(&'static str, String)]) -> Server {
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start(dir, &vars)
}

#[tokio::test]
async fn smtp_down_at_first_delays_the_mail_and_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let vars = binary_mail_vars(&format!("smtp://127.0.0.1:{port}?tls=none"));
    let server = start(dir.path(), &vars);
    server
        .json(
            "POST",
            "/api/v1/users/register",
            &json!({"email": "jo@example.com", "password": PASSWORD}),
            &[],
        )
        .expect(201);
    // The first attempt fails (nothing listens); the server says so and keeps the mail.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !server
        .log_lines()
        .iter()
        .any(|l| l.contains("mail not sent"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            server.log_lines()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let catcher = Catcher::start_on(port);
    let mail = catcher
        .wait_for("jo@example.com", 1, Duration::from_secs(30))
        .await;
    assert_eq!(mail[0].subject, "Verify your email address");
    let token = mail[0].token(VERIFY);
    server
        .json(
            "POST",
            "/api/v1/users/email/verify",
            &json!({"token": token}),
            &[],
        )
        .expect(200);
}

#[tokio::test]
async fn a_restart_with_mail_still_queued_delivers_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let vars = binary_mail_vars(&format!("smtp://127.0.0.1:{port}?tls=none"));
    let mut server = start(dir.path(), &vars);
    server
        .json(
            "POST",
            "/api/v1/users/password/forgot",
            &json!({"email": "kim@example.com"}),
            &[],
        )
        .expect(202);
    server
        .json(
            "POST",
            "/api/v1/users/register",
            &json!({"email": "kim@example.com", "password": PASSWORD}),
            &[],
        )
        .expect(201);
    let (status, _) = server.terminate();
    assert!(status.success());
    drop(server);

    let catcher = Catcher::start_on(port);
    let again = start(dir.path(), &vars);
    let mail = catcher
        .wait_for("kim@example.com", 1, Duration::from_secs(30))
        .await;
    drop(again);
    assert_eq!(
        mail.len(),
        1,
        "the forgot came before the account: nothing for it"
    );
    assert_eq!(mail[0].subject, "Verify your email address");
}

#[tokio::test]
async fn without_smtp_the_links_are_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::launch(dir.path(), &[], &["SMTP_URL"]);
    server
        .json(
            "POST",
            "/api/v1/users/register",
            &json!({"email": "lee@example.com", "password": PASSWORD}),
            &[],
        )
        .expect(201);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let line = loop {
        if let Some(line) = server
            .log_lines()
            .into_iter()
            .find(|l| l.contains("mail not delivered"))
        {
            break line;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            server.log_lines()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        server
            .log_lines()
            .iter()
            .any(|l| l.contains("SMTP_URL is not set")),
        "a warning at start"
    );
    assert!(line.contains("lee@example.com") && line.contains("Verify your email address"));
    let token = line
        .split("token=")
        .nth(1)
        .unwrap()
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .next()
        .unwrap()
        .to_owned();
    server
        .json(
            "POST",
            "/api/v1/users/email/verify",
            &json!({"token": token}),
            &[],
        )
        .expect(200);
}
