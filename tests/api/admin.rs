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
        self.state
            .store
            .promote(user.id, &warp_auth_api::audit::Context::system())
            .await
            .unwrap();
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

#[tokio::test]
async fn one_user_by_id_and_users_found_by_email() {
    let app = TestApp::new().await;
    let admin = app.admin_token("admin@example.com").await;
    for email in ["alice@example.com", "bob@example.org", "malice@example.net"] {
        app.register(email, PASSWORD).await.assert_status(201);
    }
    let id = app.id_of("bob@example.org").await;
    let one = app
        .admin("GET", &format!("/api/v1/admin/users/{id}"), &admin, None)
        .await;
    one.assert_status(200);
    assert_eq!(one.json()["email"], "bob@example.org");
    assert_eq!(one.json()["disabled"], false);

    let found = app
        .admin("GET", "/api/v1/admin/users?q=ALICE", &admin, None)
        .await
        .json();
    let emails: Vec<_> = found["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(emails, ["alice@example.com", "malice@example.net"]);
    assert_eq!(found["total"], 2, "total counts the matches");
    // Nothing in q is a pattern.
    let none = app
        .admin("GET", "/api/v1/admin/users?q=%25", &admin, None)
        .await
        .json();
    assert_eq!(none["total"], 0);
    let all = app
        .admin("GET", "/api/v1/admin/users?q=", &admin, None)
        .await
        .json();
    assert_eq!(all["total"], 4);
}

#[tokio::test]
async fn keyset_paging_walks_the_same_users_as_offset_paging() {
    let app = TestApp::new().await;
    let admin = app.admin_token("admin@example.com").await;
    let values: Vec<String> = (0..120)
        .map(|i| format!("('user{i:03}@example.com', 'x')"))
        .collect();
    app.exec(&format!(
        "INSERT INTO users (email, password_hash) VALUES {}",
        values.join(", ")
    ))
    .await;
    // A gap in the ids, as deletions leave.
    app.exec("DELETE FROM users WHERE email IN ('user010@example.com', 'user011@example.com')")
        .await;
    let ids = |page: &Value| -> Vec<i64> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["id"].as_i64().unwrap())
            .collect()
    };
    let (mut by_offset, mut by_key) = (Vec::new(), Vec::new());
    let mut offset = 0;
    loop {
        let page = app
            .admin(
                "GET",
                &format!("/api/v1/admin/users?limit=17&offset={offset}"),
                &admin,
                None,
            )
            .await
            .json();
        assert_eq!(page["total"], 119);
        let got = ids(&page);
        if got.is_empty() {
            break;
        }
        offset += got.len();
        by_offset.extend(got);
    }
    let mut after = 0;
    loop {
        let page = app
            .admin(
                "GET",
                &format!("/api/v1/admin/users?limit=17&after_id={after}"),
                &admin,
                None,
            )
            .await
            .json();
        let got = ids(&page);
        let Some(last) = got.last() else { break };
        after = *last;
        by_key.extend(got);
    }
    assert_eq!(by_offset.len(), 119);
    assert_eq!(by_key, by_offset);
    let both = app
        .admin(
            "GET",
            "/api/v1/admin/users?after_id=3&offset=0",
            &admin,
            None,
        )
        .await;
    both.problem(400);
    assert_eq!(both.error_fields(), ["offset"]);
    let bad = app
        .admin("GET", "/api/v1/admin/users?after_id=-1", &admin, None)
        .await;
    assert_eq!(bad.error_fields(), ["after_id"]);
}

#[tokio::test]
async fn disabling_kills_live_tokens_and_refuses_the_right_password() {
    let app = TestApp::new().await;
    let admin = app.admin_token("admin@example.com").await;
    let login = app.user("eve@example.com").await;
    let id = app.id_of("eve@example.com").await;
    let path = format!("/api/v1/admin/users/{id}");
    let off = app
        .admin("PATCH", &path, &admin, Some(json!({"disabled": true})))
        .await;
    off.assert_status(200);
    assert_eq!(off.json()["disabled"], true);
    app.me(login["access_token"].as_str().unwrap())
        .await
        .problem(401);
    app.refresh(login["refresh_token"].as_str().unwrap())
        .await
        .problem(401);
    let refused = app.login("eve@example.com", PASSWORD).await.problem(403);
    assert_eq!(refused["detail"], "This account is disabled");
    app.login("eve@example.com", "Wrong-passw0rd")
        .await
        .problem(401);
    let on = app
        .admin("PATCH", &path, &admin, Some(json!({"disabled": false})))
        .await;
    assert_eq!(on.json()["disabled"], false);
    app.login("eve@example.com", PASSWORD)
        .await
        .assert_status(200);
}

#[tokio::test]
async fn the_last_enabled_admin_cannot_be_disabled() {
    let app = TestApp::new().await;
    let first = app.admin_token("first@example.com").await;
    let first_id = app.id_of("first@example.com").await;
    let path = |id: i64| format!("/api/v1/admin/users/{id}");
    app.admin(
        "PATCH",
        &path(first_id),
        &first,
        Some(json!({"disabled": true})),
    )
    .await
    .problem(409);
    let second = app.admin_token("second@example.com").await;
    let second_id = app.id_of("second@example.com").await;
    // Two enabled admins: one may go; its tokens die.
    app.admin(
        "PATCH",
        &path(second_id),
        &first,
        Some(json!({"disabled": true})),
    )
    .await
    .assert_status(200);
    app.me(&second).await.problem(401);
    // A disabled admin does not count: the first is the last enabled one now.
    for (method, body) in [
        ("PATCH", Some(json!({"disabled": true}))),
        ("PATCH", Some(json!({"role": "member"}))),
        ("DELETE", None),
    ] {
        app.admin(method, &path(first_id), &first, body)
            .await
            .problem(409);
    }
    app.authed("DELETE", "/api/v1/users/me", &first, None)
        .await
        .problem(409);
    // The disabled admin may be deleted.
    app.admin("DELETE", &path(second_id), &first, None)
        .await
        .assert_status(204);
}

#[tokio::test]
async fn an_admin_lists_and_ends_a_users_sessions() {
    let app = TestApp::new().await;
    let admin = app.admin_token("admin@example.com").await;
    let a = app.user("kim@example.com").await;
    let b = app.login("kim@example.com", PASSWORD).await.json();
    let id = app.id_of("kim@example.com").await;
    let path = format!("/api/v1/admin/users/{id}/sessions");
    let listed = app.admin("GET", &path, &admin, None).await;
    listed.assert_status(200);
    let listed = listed.json();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["current"] == false)
    );
    app.admin("DELETE", &path, &admin, None)
        .await
        .assert_status(204);
    for token in [&a, &b] {
        app.me(token["access_token"].as_str().unwrap())
            .await
            .problem(401);
    }
    app.me(&admin).await.assert_status(200);
    let member = app.user("mo@example.com").await;
    app.admin("GET", &path, member["access_token"].as_str().unwrap(), None)
        .await
        .problem(403);
    for method in ["GET", "DELETE"] {
        app.admin(method, "/api/v1/admin/users/9999/sessions", &admin, None)
            .await
            .problem(404);
    }
}

#[tokio::test]
async fn an_admin_sends_a_password_reset_mail() {
    let catcher = crate::smtp::Catcher::start();
    let url = catcher.url();
    let app = TestApp::with(&[("SMTP_URL", url.as_str())]).await;
    let admin = app.admin_token("admin@example.com").await;
    app.register("lou@example.com", PASSWORD)
        .await
        .assert_status(201);
    let id = app.id_of("lou@example.com").await;
    let path = format!("/api/v1/admin/users/{id}/password-reset");
    app.admin("POST", &path, &admin, None)
        .await
        .assert_status(202);
    let mails = catcher
        .wait_for("lou@example.com", 2, std::time::Duration::from_secs(20))
        .await;
    let reset = mails
        .iter()
        .find(|m| m.subject == "Reset your password")
        .expect("the reset mail");
    let token = reset.token("/account/reset-password?token=");
    app.post_json(
        "/api/v1/users/password/reset",
        &json!({"token": token, "new_password": "Admin-sent-passw0rd"}),
    )
    .await
    .assert_status(204);
    app.admin(
        "POST",
        "/api/v1/admin/users/9999/password-reset",
        &admin,
        None,
    )
    .await
    .problem(404);
    let r = app.admin("GET", &path, &admin, None).await;
    r.problem(405);
    assert_eq!(r.header("allow"), Some("POST"));
}

#[tokio::test]
async fn total_stays_exact_through_every_insert_and_delete() {
    let app = TestApp::new().await;
    let admin = app.admin_token("root@example.com").await;
    for i in 0..5 {
        app.register(&format!("t{i}@example.com"), PASSWORD)
            .await
            .assert_status(201);
    }
    // Racing registrations of one email: one counts.
    let racing = (0..4).map(|_| app.register("same@example.com", PASSWORD));
    futures_util::future::join_all(racing).await;
    assert_eq!(total_of(&app, &admin).await, 7);
    let t0 = app.id_of("t0@example.com").await;
    app.admin("DELETE", &format!("/api/v1/admin/users/{t0}"), &admin, None)
        .await
        .assert_status(204);
    let t1 = app.token("t1x@example.com").await;
    app.authed("DELETE", "/api/v1/users/me", &t1, None)
        .await
        .assert_status(204);
    // Rows written by something else than the service count too, one or many at a time.
    app.exec(
        "INSERT INTO users (email, password_hash) VALUES ('direct@example.com', 'x');
         DELETE FROM users WHERE email = 't4@example.com';
         INSERT INTO users (email, password_hash) VALUES ('bulk1@example.com', 'x'),
             ('bulk2@example.com', 'x'), ('bulk3@example.com', 'x');
         DELETE FROM users WHERE email IN ('bulk1@example.com', 'bulk2@example.com');",
    )
    .await;
    let counted = app.query_i64("SELECT count(*) FROM users").await;
    assert_eq!(counted, 7);
    assert_eq!(total_of(&app, &admin).await, counted);
    // With a search, the matches are counted.
    let page = app
        .admin("GET", "/api/v1/admin/users?q=t2", &admin, None)
        .await
        .json();
    assert_eq!(page["total"], 1);
}

#[tokio::test]
async fn the_user_count_of_an_older_database_starts_from_its_users() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let app = TestApp::in_dir(dir, &[]).await;
    app.admin_token("root@example.com").await;
    app.register("old@example.com", PASSWORD)
        .await
        .assert_status(201);
    // Back to the schema before the count (version 6), with a user the count does not know.
    let TestApp { state, dir, .. } = app;
    state.store.close().await.unwrap();
    drop(state);
    let back = match super::BACKEND {
        crate::Backend::Sqlite => {
            "DROP TRIGGER users_counted_in; DROP TRIGGER users_counted_out; DROP TABLE counters;
             PRAGMA user_version = 6;"
        }
        crate::Backend::Postgres => {
            "DROP TRIGGER users_counted_in ON users; DROP TRIGGER users_counted_out ON users;
             DROP FUNCTION count_inserted_users(); DROP FUNCTION count_deleted_users();
             DROP TABLE counters; DELETE FROM schema_migrations WHERE version >= 7;"
        }
    };
    super::helpers::exec(&path, back).await;
    super::helpers::exec(
        &path,
        "INSERT INTO users (email, password_hash) VALUES ('older@example.com', 'x')",
    )
    .await;
    // The start migrates, and the count starts from the users there are.
    let app = TestApp::in_dir(dir, &[]).await;
    let admin = app.login("root@example.com", PASSWORD).await.json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let page = app
        .admin("GET", "/api/v1/admin/users", &admin, None)
        .await
        .json();
    assert_eq!(page["total"], 3);
}

/// The admin list's `total`.
async fn total_of(app: &TestApp, admin: &str) -> i64 {
    let page = app
        .admin("GET", "/api/v1/admin/users?limit=1", admin, None)
        .await;
    page.assert_status(200);
    page.json()["total"].as_i64().unwrap()
}
