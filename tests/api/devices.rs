//! The sessions a user sees and ends (`/me/sessions`): one per login, on each device.

use serde_json::{Value, json};
use warp_auth_api::filters::ClientAddr;

use super::binary::Server;
use super::helpers::{PASSWORD, Reply, TestApp};

fn login_as(agent: &[u8], addr: &str) -> warp::test::RequestBuilder {
    warp::test::request()
        .method("POST")
        .path("/api/v1/users/login")
        .header(
            "user-agent",
            warp::http::HeaderValue::from_bytes(agent).unwrap(),
        )
        .extension(ClientAddr(addr.parse().unwrap()))
        .json(&json!({"email": "ann@example.com", "password": PASSWORD}))
}

fn refresh_as(refresh: &str, agent: &str, addr: &str) -> warp::test::RequestBuilder {
    warp::test::request()
        .method("POST")
        .path("/api/v1/users/refresh")
        .header("user-agent", agent)
        .extension(ClientAddr(addr.parse().unwrap()))
        .json(&json!({"refresh_token": refresh}))
}

async fn device(app: &TestApp, agent: &str, addr: &str) -> Value {
    let r = app.send(login_as(agent.as_bytes(), addr)).await;
    r.assert_status(200);
    r.json()
}

fn access(token: &Value) -> &str {
    token["access_token"].as_str().unwrap()
}

fn refresh_token(token: &Value) -> &str {
    token["refresh_token"].as_str().unwrap()
}

async fn sessions(app: &TestApp, token: &Value) -> Vec<Value> {
    let r = app
        .authed("GET", "/api/v1/users/me/sessions", access(token), None)
        .await;
    r.assert_status(200);
    r.json().as_array().unwrap().clone()
}

/// The session of `token` itself (logins within one second have no order among them).
async fn own(app: &TestApp, token: &Value) -> Value {
    sessions(app, token)
        .await
        .into_iter()
        .find(|s| s["current"] == true)
        .expect("the caller's own session")
}

async fn end(app: &TestApp, token: &Value, path: &str) -> Reply {
    app.authed("DELETE", path, access(token), None).await
}

#[tokio::test]
async fn sessions_are_listed_newest_first_with_their_device_and_address() {
    let app = TestApp::new().await;
    app.register("ann@example.com", PASSWORD)
        .await
        .assert_status(201);
    let phone = device(&app, "Phone/1.0", "203.0.113.5").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let laptop = device(&app, "Laptop/2.0", "2001:db8::7").await;

    let listed = sessions(&app, &laptop).await;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["user_agent"], "Laptop/2.0");
    assert_eq!(listed[0]["ip"], "2001:db8::7");
    assert_eq!(listed[0]["current"], true);
    assert_eq!(listed[1]["user_agent"], "Phone/1.0");
    assert_eq!(listed[1]["ip"], "203.0.113.5");
    assert_eq!(listed[1]["current"], false);
    for s in &listed {
        for field in ["created_at", "last_used_at", "expires_at"] {
            let t = s[field].as_str().unwrap();
            assert!(t.len() == 20 && t.ends_with('Z'), "{field}: {t}");
        }
        assert_eq!(s["created_at"], s["last_used_at"], "a login is a use");
        assert_eq!(s["id"].as_str().unwrap().len(), 32);
    }
    // Seen from the phone, the phone's is current.
    let from_phone = sessions(&app, &phone).await;
    assert_eq!(from_phone[1]["current"], true);
    assert_eq!(from_phone[0]["current"], false);
}

#[tokio::test]
async fn a_refresh_records_the_device_and_time_and_never_extends_the_session() {
    let app = TestApp::new().await;
    app.register("ann@example.com", PASSWORD)
        .await
        .assert_status(201);
    let first = device(&app, "Browser/1", "192.0.2.1").await;
    let before = own(&app, &first).await;
    app.exec("UPDATE sessions SET last_used_at = 1000000000, created_at = created_at - 100")
        .await;
    // /me is a read: it records nothing.
    app.me(access(&first)).await.assert_status(200);
    assert_eq!(
        sessions(&app, &first).await[0]["last_used_at"],
        "2001-09-09T01:46:40Z"
    );
    let r = app
        .send(refresh_as(refresh_token(&first), "Browser/2", "192.0.2.99"))
        .await;
    r.assert_status(200);
    let after = own(&app, &r.json()).await;
    assert_eq!(after["id"], before["id"]);
    assert_eq!(after["user_agent"], "Browser/2");
    assert_eq!(after["ip"], "192.0.2.99");
    assert_ne!(after["last_used_at"], "2001-09-09T01:46:40Z");
    assert_eq!(
        after["expires_at"], before["expires_at"],
        "the end never moves"
    );
}

#[tokio::test]
async fn ending_one_session_kills_its_tokens_at_once_and_leaves_the_others() {
    let app = TestApp::new().await;
    app.register("ann@example.com", PASSWORD)
        .await
        .assert_status(201);
    let phone = device(&app, "Phone", "192.0.2.1").await;
    let laptop = device(&app, "Laptop", "192.0.2.2").await;
    let phone_id = own(&app, &phone).await["id"].as_str().unwrap().to_owned();
    end(
        &app,
        &laptop,
        &format!("/api/v1/users/me/sessions/{phone_id}"),
    )
    .await
    .assert_status(204);
    app.me(access(&phone)).await.problem(401);
    app.refresh(refresh_token(&phone)).await.problem(401);
    app.me(access(&laptop)).await.assert_status(200);
    assert_eq!(sessions(&app, &laptop).await.len(), 1);
    // Gone, unknown, and another user's: the same 404.
    end(
        &app,
        &laptop,
        &format!("/api/v1/users/me/sessions/{phone_id}"),
    )
    .await
    .problem(404);
    end(&app, &laptop, "/api/v1/users/me/sessions/nope")
        .await
        .problem(404);
    let bob = app.user("bob@example.com").await;
    let bob_id = sessions(&app, &bob).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    end(
        &app,
        &laptop,
        &format!("/api/v1/users/me/sessions/{bob_id}"),
    )
    .await
    .problem(404);
    app.me(access(&bob)).await.assert_status(200);
    // Its own session: the caller is logged out.
    let mine = own(&app, &laptop).await["id"].as_str().unwrap().to_owned();
    end(&app, &laptop, &format!("/api/v1/users/me/sessions/{mine}"))
        .await
        .assert_status(204);
    app.me(access(&laptop)).await.problem(401);
}

#[tokio::test]
async fn ending_all_others_leaves_only_this_one() {
    let app = TestApp::new().await;
    app.register("ann@example.com", PASSWORD)
        .await
        .assert_status(201);
    let a = device(&app, "A", "192.0.2.1").await;
    let b = device(&app, "B", "192.0.2.2").await;
    let c = device(&app, "C", "192.0.2.3").await;
    let bob = app.user("bob@example.com").await;
    end(&app, &a, "/api/v1/users/me/sessions")
        .await
        .assert_status(204);
    for other in [&b, &c] {
        app.me(access(other)).await.problem(401);
        app.refresh(refresh_token(other)).await.problem(401);
    }
    app.me(access(&a)).await.assert_status(200);
    app.me(access(&bob)).await.assert_status(200);
    let left = sessions(&app, &a).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["current"], true);
    // 405 with Allow on the collection and on one session.
    let r = app
        .authed("POST", "/api/v1/users/me/sessions", access(&a), None)
        .await;
    r.problem(405);
    assert_eq!(r.header("allow"), Some("GET, HEAD, DELETE"));
    let r = app
        .authed("GET", "/api/v1/users/me/sessions/x", access(&a), None)
        .await;
    assert_eq!(r.header("allow"), Some("DELETE"));
    let r = app
        .send(warp::test::request().path("/api/v1/users/me/sessions"))
        .await;
    r.problem(401);
}

#[tokio::test]
async fn a_long_or_strange_user_agent_is_kept_short_and_never_refused() {
    let app = TestApp::new().await;
    app.register("ann@example.com", PASSWORD)
        .await
        .assert_status(201);
    let long = "x".repeat(1000);
    let token = device(&app, &long, "192.0.2.1").await;
    let listed = own(&app, &token).await;
    assert_eq!(listed["user_agent"].as_str().unwrap().len(), 256);
    let odd = app.send(login_as(b"Agent \xff\xfe/1", "192.0.2.1")).await;
    odd.assert_status(200);
    let listed = own(&app, &odd.json()).await;
    assert_eq!(listed["user_agent"], "Agent \u{fffd}\u{fffd}/1");
    // No User-Agent at all: null.
    let none = app.login("ann@example.com", PASSWORD).await.json();
    assert_eq!(own(&app, &none).await["user_agent"], Value::Null);
}

#[test]
fn the_binary_records_the_real_peer_address() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    server
        .json(
            "POST",
            "/api/v1/users/register",
            &json!({"email": "ann@example.com", "password": PASSWORD}),
            &[],
        )
        .expect(201);
    let token = server
        .json(
            "POST",
            "/api/v1/users/login",
            &json!({"email": "ann@example.com", "password": PASSWORD}),
            &[
                ("User-Agent", "curl/8.0"),
                ("X-Forwarded-For", "198.51.100.1"),
            ],
        )
        .expect(200);
    let bearer = format!("Bearer {}", token["access_token"].as_str().unwrap());
    let listed = server
        .request(
            "GET",
            "/api/v1/users/me/sessions",
            &[("Authorization", &bearer)],
            None,
        )
        .expect(200);
    assert_eq!(listed[0]["user_agent"], "curl/8.0");
    // No trusted proxy: X-Forwarded-For changes nothing.
    assert_eq!(listed[0]["ip"], "127.0.0.1");
}
