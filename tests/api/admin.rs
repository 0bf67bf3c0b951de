//! Roles and the admin endpoints through the real router.

use serde_json::{Value, json};

use super::helpers::{PASSWORD, Reply, TestApp};

impl TestApp {
    /// Registers `email`, makes it an admin in the store (as `create-admin` does), logs in.
    pub async fn admin_token(&self, email: &str) -> String {
        self.register(email, PASSWORD).await.assert_status(201);
        let user = self
            .state
            .store
            .find_user_by_email(email.to_owned())
            .await
            .unwrap()
            .unwrap();
        self.state.store.promote(user.id).await.unwrap();
        self.login(email, PASSWORD).await.json()["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn admin(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Reply {
        self.authed(method, path, token, body).await
    }

    pub async fn id_of(&self, email: &str) -> i64 {
        self.state
            .store
            .find_user_by_email(email.to_owned())
            .await
            .unwrap()
            .unwrap()
            .id
    }
}

#[tokio::test]
async fn members_get_403_and_strangers_401() {
    let app = TestApp::new().await;
    let member = app.token("member@example.com").await;
    let id = app.id_of("member@example.com").await;
    let target = format!("/api/v1/admin/users/{id}");
    for (method, path, body) in [
        ("GET", "/api/v1/admin/users", None),
        ("PATCH", target.as_str(), Some(json!({"role": "admin"}))),
        ("DELETE", target.as_str(), None),
    ] {
        app.admin(method, path, &member, body.clone())
            .await
            .problem(403);
        let mut anonymous = warp::test::request().method(method).path(path);
        if let Some(body) = body {
            anonymous = anonymous.json(&body);
        }
        let r = app.send(anonymous).await;
        r.problem(401);
        assert!(r.header("www-authenticate").is_some());
    }
    // The member did not make itself an admin.
    assert_eq!(app.me(&member).await.json()["role"], "member");
}

#[tokio::test]
async fn the_user_list_pages_in_id_order() {
    let app = TestApp::new().await;
    let admin = app.admin_token("admin@example.com").await;
    for i in 0..4 {
        app.register(&format!("user{i}@example.com"), PASSWORD)
            .await
            .assert_status(201);
    }
    let r = app.admin("GET", "/api/v1/admin/users", &admin, None).await;
    r.assert_status(200);
    let page = r.json();
    assert_eq!(page["total"], 5);
    assert_eq!(page["limit"], 50);
    assert_eq!(page["offset"], 0);
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    let ids: Vec<i64> = items.iter().map(|u| u["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(items[0]["email"], "admin@example.com");
    assert_eq!(items[0]["role"], "admin");
    assert!(items.iter().all(|u| u.get("password_hash").is_none()));

    let page = app
        .admin("GET", "/api/v1/admin/users?limit=2&offset=1", &admin, None)
        .await
        .json();
    assert_eq!(page["total"], 5);
    let emails: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["user0@example.com", "user1@example.com"]);
    let page = app
        .admin("GET", "/api/v1/admin/users?offset=5", &admin, None)
        .await
        .json();
    assert_eq!(page["items"], json!([]));
    assert_eq!(page["total"], 5);
    let page = app
        .admin(
            "GET",
            "/api/v1/admin/users?limit=100&offset=4&unknown=1",
            &admin,
            None,
        )
        .await
        .json();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let page = app
        .admin("GET", "/api/v1/admin/users?limit=1", &admin, None)
        .await
        .json();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_bad_page_query_is_400_naming_the_parameters() {
    let app = TestApp::new().await;
    let admin = app.admin_token("admin@example.com").await;
    for (query, fields) in [
        ("limit=0", vec!["limit"]),
        ("limit=101", vec!["limit"]),
        ("limit=abc", vec!["limit"]),
        ("limit=", vec!["limit"]),
        ("offset=-1", vec!["offset"]),
        ("limit=1.5&offset=x", vec!["limit", "offset"]),
    ] {
        let r = app
            .admin("GET", &format!("/api/v1/admin/users?{query}"), &admin, None)
            .await;
        r.problem(400);
        assert_eq!(r.error_fields(), fields, "{query}");
    }
    app.admin("GET", "/api/v1/admin/users?limit=1&limit=2", &admin, None)
        .await
        .problem(400);
}

#[tokio::test]
async fn promotion_and_demotion_apply_to_live_tokens_at_once() {
    let app = TestApp::new().await;
    let admin = app.admin_token("admin@example.com").await;
    let bob = app.token("bob@example.com").await;
    let bob_id = app.id_of("bob@example.com").await;
    let path = format!("/api/v1/admin/users/{bob_id}");
    app.admin("GET", "/api/v1/admin/users", &bob, None)
        .await
        .problem(403);

    let r = app
        .admin("PATCH", &path, &admin, Some(json!({"role": "admin"})))
        .await;
    r.assert_status(200);
    assert_eq!(r.json()["role"], "admin");
    assert_eq!(r.json()["email"], "bob@example.com");
    // Bob's token, issued while he was a member, is an admin's token now.
    app.admin("GET", "/api/v1/admin/users", &bob, None)
        .await
        .assert_status(200);
    assert_eq!(app.me(&bob).await.json()["role"], "admin");

    // Bob demotes the first admin (two admins: allowed); that token loses its rights at once.
    let admin_id = app.id_of("admin@example.com").await;
    app.admin(
        "PATCH",
        &format!("/api/v1/admin/users/{admin_id}"),
        &bob,
        Some(json!({"role": "member"})),
    )
    .await
    .assert_status(200);
    app.admin("GET", "/api/v1/admin/users", &admin, None)
        .await
        .problem(403);
    app.me(&admin).await.assert_status(200);
}

#[tokio::test]
async fn the_last_admin_can_be_neither_demoted_nor_deleted() {
    let app = TestApp::new().await;
    let admin = app.admin_token("admin@example.com").await;
    let admin_id = app.id_of("admin@example.com").await;
    let path = format!("/api/v1/admin/users/{admin_id}");
    app.admin("PATCH", &path, &admin, Some(json!({"role": "member"})))
        .await
        .problem(409);
    app.admin("DELETE", &path, &admin, None).await.problem(409);
    // Setting the role it already has is fine.
    app.admin("PATCH", &path, &admin, Some(json!({"role": "admin"})))
        .await
        .assert_status(200);
    // With a second admin, the first may go.
    let second = app.admin_token("second@example.com").await;
    app.admin("DELETE", &path, &second, None)
        .await
        .assert_status(204);
    app.me(&admin).await.problem(401);
}

#[tokio::test]
async fn deleting_a_user_kills_its_tokens_at_once() {
    let app = TestApp::new().await;
    let admin = app.admin_token("admin@example.com").await;
    let bob = app.user("bob@example.com").await;
    let bob_id = app.id_of("bob@example.com").await;
    let r = app
        .admin(
            "DELETE",
            &format!("/api/v1/admin/users/{bob_id}"),
            &admin,
            None,
        )
        .await;
    r.assert_status(204);
    assert!(r.body.is_empty());
    app.me(bob["access_token"].as_str().unwrap())
        .await
        .problem(401);
    app.refresh(bob["refresh_token"].as_str().unwrap())
        .await
        .problem(401);
    app.admin(
        "DELETE",
        &format!("/api/v1/admin/users/{bob_id}"),
        &admin,
        None,
    )
    .await
    .problem(404);
    let page = app
        .admin("GET", "/api/v1/admin/users", &admin, None)
        .await
        .json();
    assert_eq!(page["total"], 1);
}

#[tokio::test]
async fn unknown_or_non_numeric_ids_are_404_and_bad_bodies_400() {
    let app = TestApp::new().await;
    let admin = app.admin_token("admin@example.com").await;
    for id in ["999", "abc", "-1", "+1", "1e3", "99999999999999999999999"] {
        let path = format!("/api/v1/admin/users/{id}");
        app.admin("GET", &path, &admin, None).await.problem(404);
        app.admin("PATCH", &path, &admin, Some(json!({"role": "admin"})))
            .await
            .problem(404);
        app.admin("DELETE", &path, &admin, None).await.problem(404);
    }
    let id = app.id_of("admin@example.com").await;
    let path = format!("/api/v1/admin/users/{id}");
    for (body, field) in [
        (json!({"role": "superuser"}), "role"),
        (json!({"role": 1}), "role"),
        (json!({"disabled": "yes"}), "disabled"),
    ] {
        let r = app.admin("PATCH", &path, &admin, Some(body)).await;
        r.problem(400);
        assert_eq!(r.error_fields(), [field]);
    }
    // `{}` changes nothing.
    let same = app.admin("PATCH", &path, &admin, Some(json!({}))).await;
    same.assert_status(200);
    assert_eq!(same.json()["role"], "admin");
    let r = app.admin("POST", &path, &admin, None).await;
    r.problem(405);
    assert_eq!(r.header("allow"), Some("GET, HEAD, PATCH, DELETE"));
    let r = app.admin("POST", "/api/v1/admin/users", &admin, None).await;
    r.problem(405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
}

#[tokio::test]
async fn the_last_admin_cannot_delete_itself_either() {
    let app = TestApp::new().await;
    let admin = app.admin_token("admin@example.com").await;
    app.authed("DELETE", "/api/v1/users/me", &admin, None)
        .await
        .problem(409);
    app.me(&admin).await.assert_status(200);
    let second = app.admin_token("second@example.com").await;
    app.authed("DELETE", "/api/v1/users/me", &admin, None)
        .await
        .assert_status(204);
    app.authed("DELETE", "/api/v1/users/me", &second, None)
        .await
        .problem(409);
}
