//! The audit log: an event for each change, written with the change (and only with it), with the
//! request's id, address and agent and never a secret; `GET /api/v1/admin/audit` and its filters;
//! retention; and the event's log line from the real binary.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde_json::{Value, json};
use warp_auth_api::filters::ClientAddr;

use super::binary::Server;
use super::helpers::{PASSWORD, Reply, TestApp};
use super::mail::{RESET, VERIFY, app_with, forgot, one_mail, reset, verify};
use super::mfa::{code_at, enrolled, mfa_token, now, second_step};
use crate::smtp::Catcher;

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
const AGENT: &str = "audit-test/1.0";

/// A request as a client sends it: its own request id, address and agent.
fn request(method: &str, path: &str, request_id: &str) -> warp::test::RequestBuilder {
    warp::test::request()
        .method(method)
        .path(path)
        .header("x-request-id", request_id)
        .header("user-agent", AGENT)
        .extension(ClientAddr(CLIENT))
}

async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    request_id: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut r = request(method, path, request_id);
    if let Some(token) = token {
        r = r.header("authorization", format!("Bearer {token}"));
    }
    if let Some(body) = body {
        r = r.json(&body);
    }
    app.send(r).await
}

/// Every event, newest first, read through the API as an admin.
async fn events(app: &TestApp, admin: &str, query: &str) -> Vec<Value> {
    let r = app
        .admin("GET", &format!("/api/v1/admin/audit{query}"), admin, None)
        .await;
    r.assert_status(200);
    r.json()["items"].as_array().unwrap().clone()
}

/// The one event of this type (and user, when given); fails on none or several.
#[track_caller]
fn the_event<'a>(all: &'a [Value], kind: &str, user_id: Option<i64>) -> &'a Value {
    let found: Vec<&Value> = all
        .iter()
        .filter(|e| e["type"] == kind && user_id.is_none_or(|u| e["user_id"] == u))
        .collect();
    assert_eq!(found.len(), 1, "{kind} for {user_id:?} in {all:#?}");
    found[0]
}

#[track_caller]
fn from_request(event: &Value, request_id: &str) {
    assert_eq!(event["request_id"], request_id, "{event}");
    assert_eq!(event["ip"], CLIENT.to_string(), "{event}");
    assert_eq!(event["user_agent"], AGENT, "{event}");
}

fn access(pair: &Value) -> String {
    pair["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn each_change_writes_its_event_with_the_request_and_no_secret() {
    let app = TestApp::new().await;
    let admin = app.admin_token("root@example.com").await;
    let admin_id = app.id_of("root@example.com").await;

    // Registration and logins.
    send(
        &app,
        "POST",
        "/api/v1/users/register",
        "reg-1",
        None,
        Some(json!({"email": "ann@example.com", "password": PASSWORD})),
    )
    .await
    .assert_status(201);
    let ann = app.id_of("ann@example.com").await;
    let wrong = "Wrong-Password-99";
    send(
        &app,
        "POST",
        "/api/v1/users/login",
        "bad-1",
        None,
        Some(json!({"email": "ann@example.com", "password": wrong})),
    )
    .await
    .assert_status(401);
    let stranger = "nobody-here@example.org";
    send(
        &app,
        "POST",
        "/api/v1/users/login",
        "bad-2",
        None,
        Some(json!({"email": stranger, "password": wrong})),
    )
    .await
    .assert_status(401);
    let login = send(
        &app,
        "POST",
        "/api/v1/users/login",
        "in-1",
        None,
        Some(json!({"email": "ann@example.com", "password": PASSWORD})),
    )
    .await;
    login.assert_status(200);
    let pair = login.json();
    let refresh_token = pair["refresh_token"].as_str().unwrap().to_owned();
    let session = app.me(&access(&pair)).await;
    session.assert_status(200);

    // A refresh rotates (no event); the spent token again, after the grace window, is reuse.
    let rotated = send(
        &app,
        "POST",
        "/api/v1/users/refresh",
        "ref-1",
        None,
        Some(json!({"refresh_token": refresh_token})),
    )
    .await;
    rotated.assert_status(200);
    app.age_rotations(11).await;
    send(
        &app,
        "POST",
        "/api/v1/users/refresh",
        "reuse-1",
        None,
        Some(json!({"refresh_token": refresh_token})),
    )
    .await
    .assert_status(401);

    // Sessions ended by their user: logout, one by id, all others.
    let a = app.login("ann@example.com", PASSWORD).await.json();
    let b = app.login("ann@example.com", PASSWORD).await.json();
    let c = app.login("ann@example.com", PASSWORD).await.json();
    send(
        &app,
        "POST",
        "/api/v1/users/logout",
        "out-1",
        Some(&access(&a)),
        None,
    )
    .await
    .assert_status(204);
    let sessions = app
        .authed("GET", "/api/v1/users/me/sessions", &access(&b), None)
        .await
        .json();
    let other = sessions
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == false)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    send(
        &app,
        "DELETE",
        &format!("/api/v1/users/me/sessions/{other}"),
        "end-1",
        Some(&access(&b)),
        None,
    )
    .await
    .assert_status(204);
    app.me(&access(&c)).await.assert_status(401);
    let d = app.login("ann@example.com", PASSWORD).await.json();
    let e = app.login("ann@example.com", PASSWORD).await.json();
    send(
        &app,
        "DELETE",
        "/api/v1/users/me/sessions",
        "end-all",
        Some(&access(&b)),
        None,
    )
    .await
    .assert_status(204);
    app.me(&access(&d)).await.assert_status(401);
    app.me(&access(&e)).await.assert_status(401);

    // The password: a wrong current one changes nothing; the right one does.
    let new_password = "An0ther-Strong-Pass";
    send(
        &app,
        "PUT",
        "/api/v1/users/me/password",
        "pw-bad",
        Some(&access(&b)),
        Some(json!({"current_password": wrong, "new_password": new_password})),
    )
    .await
    .assert_status(401);
    send(
        &app,
        "PUT",
        "/api/v1/users/me/password",
        "pw-1",
        Some(&access(&b)),
        Some(json!({"current_password": PASSWORD, "new_password": new_password})),
    )
    .await
    .assert_status(204);

    // An admin's changes.
    app.register("bob@example.com", PASSWORD)
        .await
        .assert_status(201);
    let bob = app.id_of("bob@example.com").await;
    let bob_session = app.login("bob@example.com", PASSWORD).await.json();
    let bob_path = format!("/api/v1/admin/users/{bob}");
    send(
        &app,
        "PATCH",
        &bob_path,
        "adm-1",
        Some(&admin),
        Some(json!({"role": "admin"})),
    )
    .await
    .assert_status(200);
    send(
        &app,
        "PATCH",
        &bob_path,
        "adm-2",
        Some(&admin),
        Some(json!({"role": "admin"})),
    )
    .await
    .assert_status(200);
    send(
        &app,
        "PATCH",
        &bob_path,
        "adm-3",
        Some(&admin),
        Some(json!({"disabled": true})),
    )
    .await
    .assert_status(200);
    app.me(&access(&bob_session)).await.assert_status(401);
    // The last enabled admin cannot demote itself: 409, and no event.
    send(
        &app,
        "PATCH",
        &format!("/api/v1/admin/users/{admin_id}"),
        "adm-409",
        Some(&admin),
        Some(json!({"role": "member"})),
    )
    .await
    .assert_status(409);
    send(&app, "DELETE", &bob_path, "adm-del", Some(&admin), None)
        .await
        .assert_status(204);

    // A disabled account's right password: 403, written as a failed login.
    app.register("cy@example.com", PASSWORD)
        .await
        .assert_status(201);
    let cy = app.id_of("cy@example.com").await;
    app.admin(
        "PATCH",
        &format!("/api/v1/admin/users/{cy}"),
        &admin,
        Some(json!({"disabled": true})),
    )
    .await
    .assert_status(200);
    send(
        &app,
        "POST",
        "/api/v1/users/login",
        "dis-1",
        None,
        Some(json!({"email": "cy@example.com", "password": PASSWORD})),
    )
    .await
    .assert_status(403);

    // An account deleted by its owner.
    let dee = app.token("dee@example.com").await;
    let dee_id = app.id_of("dee@example.com").await;
    send(
        &app,
        "DELETE",
        "/api/v1/users/me",
        "me-del",
        Some(&dee),
        None,
    )
    .await
    .assert_status(204);

    let all = events(&app, &admin, "?limit=100").await;

    let e = the_event(&all, "user.registered", Some(ann));
    from_request(e, "reg-1");
    assert_eq!(e["detail"], json!({"role": "member"}));
    assert_eq!(e["actor_id"], Value::Null);
    assert!(e["at"].as_str().unwrap().ends_with('Z'), "{e}");

    let failed: Vec<&Value> = all.iter().filter(|e| e["type"] == "login.failed").collect();
    let known = failed
        .iter()
        .find(|e| e["request_id"] == "bad-1")
        .expect("the wrong password");
    assert_eq!(known["user_id"], ann);
    assert_eq!(known["detail"], json!({"reason": "invalid"}));
    from_request(known, "bad-1");
    let unknown = failed
        .iter()
        .find(|e| e["request_id"] == "bad-2")
        .expect("the unknown email");
    assert_eq!(unknown["user_id"], Value::Null);
    assert_eq!(unknown["detail"], json!({"reason": "invalid"}));
    let disabled = failed
        .iter()
        .find(|e| e["request_id"] == "dis-1")
        .expect("the disabled account");
    assert_eq!(disabled["user_id"], cy);
    assert_eq!(disabled["detail"], json!({"reason": "disabled"}));

    let succeeded: Vec<&Value> = all
        .iter()
        .filter(|e| e["type"] == "login.succeeded" && e["request_id"] == "in-1")
        .collect();
    assert_eq!(succeeded.len(), 1, "{all:#?}");
    from_request(succeeded[0], "in-1");
    assert_eq!(succeeded[0]["user_id"], ann);
    assert_eq!(succeeded[0]["detail"]["second_factor"], Value::Null);
    assert!(
        succeeded[0]["detail"]["session_id"]
            .as_str()
            .is_some_and(|s| s.len() >= 16)
    );

    let reuse = the_event(&all, "refresh.reuse_detected", Some(ann));
    from_request(reuse, "reuse-1");
    assert_eq!(
        reuse["detail"]["session_id"],
        succeeded[0]["detail"]["session_id"]
    );
    assert!(
        !all.iter().any(|e| e["request_id"] == "ref-1"),
        "a rotation is no event"
    );

    let revoked: Vec<&Value> = all
        .iter()
        .filter(|e| e["type"] == "session.revoked")
        .collect();
    let logout = revoked.iter().find(|e| e["request_id"] == "out-1").unwrap();
    assert_eq!(logout["detail"]["reason"], "logout");
    assert_eq!(logout["actor_id"], ann);
    let one = revoked.iter().find(|e| e["request_id"] == "end-1").unwrap();
    assert_eq!(
        one["detail"],
        json!({"reason": "user", "session_id": other})
    );
    let rest = revoked
        .iter()
        .find(|e| e["request_id"] == "end-all")
        .unwrap();
    assert_eq!(rest["detail"], json!({"reason": "user", "sessions": 2}));
    from_request(rest, "end-all");

    let changed = the_event(&all, "password.changed", Some(ann));
    from_request(changed, "pw-1");
    assert_eq!(changed["actor_id"], ann);
    assert!(
        !all.iter()
            .any(|e| e["request_id"] == "pw-bad" && e["type"] == "password.changed")
    );

    let updates: Vec<&Value> = all
        .iter()
        .filter(|e| e["type"] == "admin.user_updated" && e["user_id"] == bob)
        .collect();
    assert_eq!(
        updates.len(),
        2,
        "promoting an admin again changes nothing: {updates:#?}"
    );
    let promoted = updates.iter().find(|e| e["request_id"] == "adm-1").unwrap();
    assert_eq!(
        promoted["detail"],
        json!({"role": {"from": "member", "to": "admin"}})
    );
    assert_eq!(promoted["actor_id"], admin_id);
    let disabling = updates.iter().find(|e| e["request_id"] == "adm-3").unwrap();
    assert_eq!(
        disabling["detail"],
        json!({"disabled": {"from": false, "to": true}, "sessions_ended": 1})
    );
    assert!(
        !all.iter().any(|e| e["request_id"] == "adm-409"),
        "a refused change is no event"
    );
    let deleted = the_event(&all, "admin.user_deleted", Some(bob));
    from_request(deleted, "adm-del");
    assert_eq!(deleted["actor_id"], admin_id);
    let gone = the_event(&all, "user.deleted", Some(dee_id));
    assert_eq!(gone["actor_id"], dee_id);

    // Nothing secret, and not the email that has no account, in any column of any event (the
    // API shows every column, and these are all the events).
    let stored = app.query_i64("SELECT count(*) FROM audit_events").await;
    assert_eq!(stored, all.len() as i64);
    let everything = serde_json::to_string(&all).unwrap();
    for secret in [
        PASSWORD,
        wrong,
        new_password,
        &refresh_token,
        &access(&pair),
        stranger,
    ] {
        assert!(
            !everything.contains(secret),
            "{secret:?} is in the audit log"
        );
    }
}

#[tokio::test]
async fn the_second_factor_writes_its_events() {
    let app = TestApp::new().await;
    let admin = app.admin_token("root@example.com").await;
    let (token, secret, codes) = enrolled(&app, "mia@example.com").await;
    let mia = app.id_of("mia@example.com").await;

    // A wrong code at the second step, then a right one.
    let mfa = mfa_token(&app, "mia@example.com").await;
    let step = now() / 30;
    // A code no step within reach accepts (the one before, this one, the next).
    let near: Vec<String> = [-30i64, 0, 30]
        .iter()
        .map(|d| code_at(&secret, (now() as i64 + d) as u64))
        .collect();
    let wrong = ["000000", "111111", "222222", "333333"]
        .into_iter()
        .find(|c| !near.iter().any(|n| n == c))
        .unwrap();
    let r = send(
        &app,
        "POST",
        "/api/v1/users/login/mfa",
        "mfa-bad",
        None,
        Some(json!({"mfa_token": mfa, "code": wrong})),
    )
    .await;
    r.problem(401);
    // A code of the next step (the enrollment spent this one).
    let next = code_at(&secret, (step + 1) * 30);
    let ok = send(
        &app,
        "POST",
        "/api/v1/users/login/mfa",
        "mfa-ok",
        None,
        Some(json!({"mfa_token": mfa, "code": next})),
    )
    .await;
    ok.assert_status(200);
    // A recovery code logs in too.
    let mfa = mfa_token(&app, "mia@example.com").await;
    second_step(&app, &mfa, &codes[0]).await.assert_status(200);

    send(
        &app,
        "POST",
        "/api/v1/users/me/mfa/recovery-codes",
        "codes-1",
        Some(&access(&token)),
        Some(json!({"password": PASSWORD, "code": codes[1]})),
    )
    .await
    .assert_status(200);
    send(
        &app,
        "DELETE",
        "/api/v1/users/me/mfa/totp",
        "off-1",
        Some(&access(&token)),
        Some(json!({"password": PASSWORD, "code": codes[2]})),
    )
    .await
    .problem(401);

    let all = events(&app, &admin, &format!("?user_id={mia}")).await;
    assert!(
        all.iter().all(|e| e["user_id"] == mia),
        "filtered by user: {all:#?}"
    );
    let enabled = the_event(&all, "mfa.enabled", Some(mia));
    assert_eq!(enabled["actor_id"], mia);
    let failed = the_event(&all, "login.mfa_failed", Some(mia));
    from_request(failed, "mfa-bad");
    assert_eq!(failed["detail"], json!({"code": "totp"}));
    let logins: Vec<&Value> = all
        .iter()
        .filter(|e| e["type"] == "login.succeeded")
        .collect();
    let by_totp = logins.iter().find(|e| e["request_id"] == "mfa-ok").unwrap();
    assert_eq!(by_totp["detail"]["second_factor"], "totp");
    assert!(
        logins
            .iter()
            .any(|e| e["detail"]["second_factor"] == "recovery_code")
    );
    from_request(
        the_event(&all, "mfa.recovery_codes_replaced", Some(mia)),
        "codes-1",
    );
    // The old codes died with the new ones: turning MFA off with one failed, and wrote nothing.
    assert!(!all.iter().any(|e| e["type"] == "mfa.disabled"));

    // An admin turns it off.
    app.admin(
        "DELETE",
        &format!("/api/v1/admin/users/{mia}/mfa"),
        &admin,
        None,
    )
    .await
    .assert_status(204);
    let all = events(&app, &admin, &format!("?user_id={mia}&type=mfa.disabled")).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["actor_id"], app.id_of("root@example.com").await);

    let everything = serde_json::to_string(&events(&app, &admin, "?limit=100").await).unwrap();
    for secret in codes
        .iter()
        .map(String::as_str)
        .chain([secret.as_str(), &mfa, &next])
    {
        assert!(
            !everything.contains(secret),
            "{secret:?} is in the audit log"
        );
    }
}

#[tokio::test]
async fn mailed_links_write_their_events() {
    let catcher = Catcher::start();
    let app = app_with(&catcher, &[]).await;
    let admin = app.admin_token("root@example.com").await;
    app.register("lu@example.com", PASSWORD)
        .await
        .assert_status(201);
    let lu = app.id_of("lu@example.com").await;
    let verify_token = one_mail(&catcher, "lu@example.com", 1).await.token(VERIFY);
    let r = app
        .send(
            request("POST", "/api/v1/users/email/verify", "ver-1")
                .json(&json!({"token": verify_token})),
        )
        .await;
    r.assert_status(200);
    verify(&app, &verify_token).await.problem(400);

    // The unknown email first: its lookup (after the answer) is done long before the known
    // one's mail has gone out, which the test waits for below.
    forgot(&app, "nobody@example.com").await.assert_status(202);
    let asked = app
        .send(
            request("POST", "/api/v1/users/password/forgot", "forgot-1")
                .json(&json!({"email": "lu@example.com"})),
        )
        .await;
    asked.assert_status(202);
    let reset_token = one_mail(&catcher, "lu@example.com", 2).await.token(RESET);
    let new_password = "An0ther-Strong-Pass";
    let done = app
        .send(
            request("POST", "/api/v1/users/password/reset", "reset-1")
                .json(&json!({"token": reset_token, "new_password": new_password})),
        )
        .await;
    done.assert_status(204);
    reset(&app, &reset_token, "Yet-An0ther-Pass")
        .await
        .problem(400);
    app.admin(
        "POST",
        &format!("/api/v1/admin/users/{lu}/password-reset"),
        &admin,
        None,
    )
    .await
    .assert_status(202);

    let all = events(&app, &admin, "").await;
    let verified = the_event(&all, "email.verified", Some(lu));
    from_request(verified, "ver-1");
    assert_eq!(verified["detail"], json!({"by": "link"}));
    let requested: Vec<&Value> = all
        .iter()
        .filter(|e| e["type"] == "password.reset_requested")
        .collect();
    assert_eq!(
        requested.len(),
        2,
        "the forgot request and the admin's; none for an unknown email: {all:#?}"
    );
    let by_user = requested
        .iter()
        .find(|e| e["request_id"] == "forgot-1")
        .unwrap();
    assert_eq!(by_user["user_id"], lu);
    assert_eq!(by_user["actor_id"], Value::Null);
    let by_admin = requested
        .iter()
        .find(|e| e["actor_id"] != Value::Null)
        .unwrap();
    assert_eq!(by_admin["actor_id"], app.id_of("root@example.com").await);
    from_request(the_event(&all, "password.reset", Some(lu)), "reset-1");
    let everything = serde_json::to_string(&all).unwrap();
    for secret in [
        verify_token.as_str(),
        &reset_token,
        new_password,
        "nobody@example.com",
    ] {
        assert!(
            !everything.contains(secret),
            "{secret:?} is in the audit log"
        );
    }
}

#[tokio::test]
async fn a_flood_of_refused_logins_writes_one_throttled_event_a_minute() {
    let app = TestApp::with(&[("LOGIN_MAX_FAILURES", "2")]).await;
    let admin = app.admin_token("root@example.com").await;
    app.register("eve@example.com", PASSWORD)
        .await
        .assert_status(201);
    let eve = app.id_of("eve@example.com").await;
    for i in 0..2 {
        send(
            &app,
            "POST",
            "/api/v1/users/login",
            &format!("f{i}"),
            None,
            Some(json!({"email": "eve@example.com", "password": "Wrong-Password-99"})),
        )
        .await
        .assert_status(401);
    }
    for i in 0..20 {
        send(
            &app,
            "POST",
            "/api/v1/users/login",
            &format!("t{i}"),
            None,
            Some(json!({"email": "eve@example.com", "password": PASSWORD})),
        )
        .await
        .problem(429);
    }
    let throttled = events(&app, &admin, "?type=login.throttled").await;
    assert_eq!(throttled.len(), 1, "{throttled:#?}");
    assert_eq!(throttled[0]["user_id"], eve);
    from_request(&throttled[0], "t0");
    assert!(
        throttled[0]["detail"]["retry_after"]
            .as_u64()
            .is_some_and(|s| s > 0)
    );
    assert_eq!(events(&app, &admin, "?type=login.failed").await.len(), 2);
}

#[tokio::test]
async fn signing_keys_write_their_events() {
    let app = TestApp::with(&[("JWT_ALGORITHM", "EdDSA")]).await;
    let admin = app.admin_token("root@example.com").await;
    let created = events(&app, &admin, "?type=key.created").await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["detail"]["algorithm"], "EdDSA");
    assert_eq!(created[0]["user_id"], Value::Null);
    let key = warp_auth_api::keys::rotate(&app.state.store, jsonwebtoken::Algorithm::EdDSA)
        .await
        .unwrap();
    let rotated = events(&app, &admin, "?type=key.rotated").await;
    assert_eq!(rotated.len(), 1);
    assert_eq!(
        rotated[0]["detail"],
        json!({"kid": key.kid, "algorithm": "EdDSA"})
    );
    let everything = serde_json::to_string(&events(&app, &admin, "?limit=100").await).unwrap();
    let private = base64_of(&key.private_der);
    assert!(!everything.contains(&private[..24]));
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn the_log_pages_newest_first_and_filters_by_user_and_type() {
    let app = TestApp::new().await;
    let admin = app.admin_token("root@example.com").await;
    for i in 0..7 {
        app.register(&format!("p{i}@example.com"), PASSWORD)
            .await
            .assert_status(201);
    }
    let registered = events(&app, &admin, "?type=user.registered").await;
    // Seven and the admin.
    assert_eq!(registered.len(), 8);
    let ids: Vec<i64> = registered
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");

    // Pages of 3 by before_id give the same events in the same order.
    let mut paged = Vec::new();
    let mut before = String::new();
    loop {
        let page = events(
            &app,
            &admin,
            &format!("?type=user.registered&limit=3{before}"),
        )
        .await;
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        before = format!("&before_id={}", page.last().unwrap()["id"]);
        paged.extend(page);
    }
    assert_eq!(paged, registered);

    let p3 = app.id_of("p3@example.com").await;
    let one = events(&app, &admin, &format!("?user_id={p3}")).await;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["type"], "user.registered");
    assert!(events(&app, &admin, "?type=mfa.enabled").await.is_empty());

    // Bad parameters are named, all at once.
    let r = app
        .admin(
            "GET",
            "/api/v1/admin/audit?limit=0&before_id=x&user_id=-1&type=login",
            &admin,
            None,
        )
        .await;
    r.problem(400);
    let mut fields = r.error_fields();
    fields.sort();
    assert_eq!(fields, ["before_id", "limit", "type", "user_id"]);
    let r = app
        .admin("GET", "/api/v1/admin/audit?limit=101", &admin, None)
        .await;
    assert_eq!(r.error_fields(), ["limit"]);

    // Admins only.
    let member = app.token("member@example.com").await;
    app.admin("GET", "/api/v1/admin/audit", &member, None)
        .await
        .problem(403);
    app.send(warp::test::request().path("/api/v1/admin/audit"))
        .await
        .problem(401);
    let r = app.admin("POST", "/api/v1/admin/audit", &admin, None).await;
    r.problem(405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
}

#[tokio::test]
async fn housekeeping_removes_events_past_the_retention() {
    let app = TestApp::with(&[("AUDIT_RETENTION_DAYS", "30")]).await;
    let admin = app.admin_token("root@example.com").await;
    let day = 86_400;
    let now = now() as i64;
    // 12,001 events from 31 days ago (more than one batch), one from 29 days ago.
    let old = now - 31 * day;
    let recent = now - 29 * day;
    let insert_old = match super::BACKEND {
        crate::Backend::Sqlite => format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 12001)
             INSERT INTO audit_events (at, type, detail) SELECT {old}, 'login.failed', '{{}}' FROM n"
        ),
        crate::Backend::Postgres => format!(
            "INSERT INTO audit_events (at, type) SELECT {old}, 'login.failed' FROM generate_series(1, 12001)"
        ),
    };
    app.exec(&insert_old).await;
    app.exec(&format!(
        "INSERT INTO audit_events (at, type) VALUES ({recent}, 'login.failed')"
    ))
    .await;
    let before = app.query_i64("SELECT count(*) FROM audit_events").await;

    assert_eq!(app.state.purge_audit().await, 12_001);
    let after = app.query_i64("SELECT count(*) FROM audit_events").await;
    assert_eq!(after, before - 12_001);
    let left = events(&app, &admin, "?type=login.failed").await;
    assert_eq!(left.len(), 1, "the event within the retention stays");
    assert_eq!(app.state.purge_audit().await, 0);
}

#[test]
fn each_event_is_also_one_log_line_with_its_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[("LOG_FORMAT", "json")]);
    let r = server.json(
        "POST",
        "/api/v1/users/register",
        &json!({"email": "log@example.com", "password": PASSWORD}),
        &[("X-Request-Id", "audit-line-1"), ("User-Agent", AGENT)],
    );
    assert_eq!(r.status, 201);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let line = loop {
        let found = server
            .logs
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("\"audit\":\"user.registered\""))
            .cloned();
        if let Some(line) = found {
            break line;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit line: {:?}",
            server.logs.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["request_id"], "audit-line-1");
    assert_eq!(line["ip"], "127.0.0.1");
    assert_eq!(line["user_agent"], AGENT);
    assert!(line["user_id"].as_i64().is_some());
    assert_eq!(line["detail"], r#"{"role":"member"}"#);
    assert!(!line.to_string().contains(PASSWORD));
    server.terminate();
}

#[tokio::test]
async fn a_reset_of_an_unverified_address_also_verifies_it_and_says_so() {
    let catcher = Catcher::start();
    let app = app_with(&catcher, &[]).await;
    let admin = app.admin_token("root@example.com").await;
    let session = app.user("mo@example.com").await;
    let mo = app.id_of("mo@example.com").await;
    one_mail(&catcher, "mo@example.com", 1).await;
    forgot(&app, "mo@example.com").await.assert_status(202);
    let token = one_mail(&catcher, "mo@example.com", 2).await.token(RESET);
    reset(&app, &token, "An0ther-Strong-Pass")
        .await
        .assert_status(204);
    app.me(&access(&session)).await.assert_status(401);
    let all = events(&app, &admin, &format!("?user_id={mo}")).await;
    let verified = the_event(&all, "email.verified", Some(mo));
    assert_eq!(verified["detail"], json!({"by": "password_reset"}));
    let reset_event = the_event(&all, "password.reset", Some(mo));
    assert_eq!(reset_event["detail"], json!({"sessions_ended": 1}));
}

#[tokio::test]
async fn a_second_step_that_finds_the_password_changed_is_a_failed_login() {
    let app = TestApp::new().await;
    let admin = app.admin_token("root@example.com").await;
    let (token, secret, _codes) = enrolled(&app, "ria@example.com").await;
    let ria = app.id_of("ria@example.com").await;
    let mfa = mfa_token(&app, "ria@example.com").await;
    // The password changes between the two steps.
    app.authed(
        "PUT",
        "/api/v1/users/me/password",
        &access(&token),
        Some(json!({"current_password": PASSWORD, "new_password": "An0ther-Strong-Pass"})),
    )
    .await
    .assert_status(204);
    let next = code_at(&secret, (now() / 30 + 1) * 30);
    let r = send(
        &app,
        "POST",
        "/api/v1/users/login/mfa",
        "late-1",
        None,
        Some(json!({"mfa_token": mfa, "code": next})),
    )
    .await;
    r.problem(401);
    let failed = events(&app, &admin, &format!("?user_id={ria}&type=login.failed")).await;
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert_eq!(
        failed[0]["detail"],
        json!({"reason": "password_changed", "second_factor": "totp"})
    );
    from_request(&failed[0], "late-1");
    let changed = events(
        &app,
        &admin,
        &format!("?user_id={ria}&type=password.changed"),
    )
    .await;
    assert_eq!(changed[0]["detail"], json!({"sessions_ended": 1}));
}

#[tokio::test]
async fn refused_logins_from_one_ipv6_prefix_write_one_throttled_event() {
    // Per address: ten times this, so ten failures from the /64 block it.
    let app = TestApp::with(&[("LOGIN_MAX_FAILURES", "1")]).await;
    let admin = app.admin_token("root@example.com").await;
    let from = |host: u16| {
        let ip: IpAddr = format!("2001:db8:1:2::{host:x}").parse().unwrap();
        ip
    };
    let login = |host: u16, email: String| {
        warp::test::request()
            .method("POST")
            .path("/api/v1/users/login")
            .extension(ClientAddr(from(host)))
            .json(&json!({"email": email, "password": "Wrong-Password-99"}))
    };
    for i in 0..10 {
        app.send(login(i, format!("guess{i}@example.com")))
            .await
            .assert_status(401);
    }
    // Every further attempt from the prefix, each from another address and for another email
    // (none of which has an account), is refused; one event says so.
    for i in 10..60 {
        app.send(login(i, format!("guess{i}@example.com")))
            .await
            .problem(429);
    }
    let throttled = events(&app, &admin, "?type=login.throttled").await;
    assert_eq!(throttled.len(), 1, "{throttled:#?}");
    assert_eq!(throttled[0]["user_id"], Value::Null, "no account, no id");
    assert_eq!(throttled[0]["ip"], from(10).to_string());
    let everything = serde_json::to_string(&throttled).unwrap();
    assert!(!everything.contains("guess"), "no email is stored");
}
