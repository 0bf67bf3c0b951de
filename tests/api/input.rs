//! Hostile input: look-alike and invisible characters in emails, JSON that says more than one
//! thing, tokens that are valid but not quite canonical, and the header's whitespace. Through the
//! real router, and each rule once through the real binary.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::binary::Server;
use super::helpers::{PASSWORD, Reply, SECRET, TestApp};

/// Asserts a 400 naming `field`, whose body does not echo `sent`.
#[track_caller]
fn assert_refused_field(r: &Reply, field: &str, sent: &str) {
    r.problem(400);
    assert_eq!(r.error_fields(), vec![field.to_owned()]);
    let text = String::from_utf8_lossy(&r.body);
    assert!(!text.contains(sent), "the value is echoed: {text}");
}

// --- Emails ---------------------------------------------------------------------------------

#[tokio::test]
async fn look_alike_domains_are_one_account() {
    let app = TestApp::new().await;
    let r = app.register("dave@example.com", PASSWORD).await;
    assert_eq!(r.assert_status(201).json()["email"], "dave@example.com");
    for look_alike in [
        "dave@ｅxample.com",
        "dave@example。com",
        "Dave@ＥＸＡＭＰＬＥ.ＣＯＭ",
    ] {
        app.register(look_alike, PASSWORD).await.problem(409);
        app.login(look_alike, PASSWORD).await.assert_status(200);
    }

    let r = app.register("dave@exämple.com", PASSWORD).await;
    assert_eq!(
        r.assert_status(201).json()["email"],
        "dave@xn--exmple-cua.com"
    );
    app.register("dave@xn--exmple-cua.com", PASSWORD)
        .await
        .problem(409);
    app.register("dave@EXÄMPLE.com", PASSWORD)
        .await
        .problem(409);
    for form in ["dave@exämple.com", "dave@xn--exmple-cua.com"] {
        app.login(form, PASSWORD).await.assert_status(200);
        let r = app
            .send(
                warp::test::request()
                    .method("POST")
                    .path("/api/v1/users/login")
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(format!(
                        "username={}&password={PASSWORD}",
                        form.replace('ä', "%C3%A4")
                    )),
            )
            .await;
        r.assert_status(200);
    }
}

#[tokio::test]
async fn invisible_and_control_characters_in_an_email_are_refused() {
    let app = TestApp::new().await;
    app.register("dave@example.com", PASSWORD)
        .await
        .assert_status(201);
    for c in [
        '\u{200B}', '\u{00AD}', '\u{200C}', '\u{200D}', '\u{FEFF}', '\u{202E}', '\u{2066}',
        '\u{2069}', '\u{0007}',
    ] {
        for sent in [
            format!("da{c}ve@example.com"),
            format!("dave@exa{c}mple.com"),
        ] {
            let r = app.register(&sent, PASSWORD).await;
            assert_refused_field(&r, "email", &sent);
            assert!(
                !String::from_utf8_lossy(&r.body).contains("dave"),
                "{:04X}",
                c as u32
            );
            assert_refused_field(&app.login(&sent, PASSWORD).await, "email", &sent);
        }
    }
}

#[tokio::test]
async fn an_email_whose_domain_does_not_map_is_refused() {
    let app = TestApp::new().await;
    for sent in ["dave@exa_mple.com", "dave@xn--a.com"] {
        assert_refused_field(&app.register(sent, PASSWORD).await, "email", sent);
    }
}

#[test]
fn the_binary_stores_one_account_per_mailbox() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let register = |email: &str| {
        server.json(
            "POST",
            "/api/v1/users/register",
            &json!({"email": email, "password": PASSWORD}),
            &[],
        )
    };
    let user = register("erin@exämple.com").expect(201);
    assert_eq!(user["email"], "erin@xn--exmple-cua.com");
    register("erin@xn--exmple-cua.com").expect(409);
    register("erin@ｅxämple.com").expect(409);
    let refused = register("erin\u{200B}@example.com").expect(400);
    assert_eq!(refused["errors"][0]["field"], "email");
}

// --- JSON -----------------------------------------------------------------------------------

const REGISTER: &str = "/api/v1/users/register";

async fn post_raw(app: &TestApp, path: &str, body: &str) -> Reply {
    app.send(
        warp::test::request()
            .method("POST")
            .path(path)
            .header("content-type", "application/json")
            .body(body),
    )
    .await
}

#[tokio::test]
async fn data_after_the_json_object_is_malformed() {
    let app = TestApp::new().await;
    let body = format!(r#"{{"email":"frank@example.com","password":"{PASSWORD}"}}"#);
    for tail in [" x", "{}", r#"{"email":"grace@example.com"}"#, ",", " null"] {
        let r = post_raw(&app, REGISTER, &format!("{body}{tail}")).await;
        let problem = r.problem(400);
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.starts_with("Malformed JSON"), "{tail:?}: {detail}");
        assert!(!detail.contains(PASSWORD));
    }
    app.login("frank@example.com", PASSWORD).await.problem(401);
    post_raw(&app, REGISTER, &format!("{body} \r\n\t "))
        .await
        .assert_status(201);
}

#[test]
fn the_binary_refuses_data_after_the_json_object() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let body = format!(r#"{{"email":"heidi@example.com","password":"{PASSWORD}"}}{{}}"#);
    let r = server.request(
        "POST",
        REGISTER,
        &[("Content-Type", "application/json")],
        Some(body.as_bytes()),
    );
    let problem = r.expect(400);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Malformed JSON")
    );
}

#[tokio::test]
async fn a_repeated_key_is_400_naming_it() {
    let app = TestApp::new().await;
    let r = post_raw(
        &app,
        REGISTER,
        &format!(
            r#"{{"email":"ivan@example.com","email":"judy@example.com","password":"{PASSWORD}"}}"#
        ),
    )
    .await;
    r.problem(400);
    assert_eq!(r.json()["errors"][0]["field"], "email");
    assert_eq!(r.json()["errors"][0]["message"], "appears more than once");
    let text = String::from_utf8_lossy(&r.body);
    assert!(!text.contains("ivan") && !text.contains("judy"), "{text}");

    // In a nested object too, and however the key is escaped.
    let r = post_raw(
        &app,
        REGISTER,
        &format!(
            r#"{{"email":"ivan@example.com","password":"{PASSWORD}","extra":{{"a":1,"\u0061":2}}}}"#
        ),
    )
    .await;
    r.problem(400);
    assert_eq!(r.error_fields(), vec!["extra.a".to_owned()]);

    let r = post_raw(
        &app,
        "/api/v1/users/login",
        &format!(r#"{{"email":"ivan@example.com","password":"x","password":"{PASSWORD}"}}"#),
    )
    .await;
    r.problem(400);
    assert_eq!(r.error_fields(), vec!["password".to_owned()]);
    assert!(!String::from_utf8_lossy(&r.body).contains(PASSWORD));
    // Nothing was registered by the refused bodies.
    app.register("ivan@example.com", PASSWORD)
        .await
        .assert_status(201);
}

#[test]
fn the_binary_refuses_a_repeated_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let body = format!(r#"{{"email":"ken@example.com","password":"{PASSWORD}","password":"x"}}"#);
    let r = server.request(
        "POST",
        REGISTER,
        &[("Content-Type", "application/json")],
        Some(body.as_bytes()),
    );
    let problem = r.expect(400);
    assert_eq!(problem["errors"][0]["field"], "password");
    assert_eq!(problem["errors"][0]["message"], "appears more than once");
}

// --- Tokens ---------------------------------------------------------------------------------

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The claims of a real access token, read without checking it.
fn claims_of(token: &str) -> Value {
    jsonwebtoken::dangerous::insecure_decode::<Value>(token)
        .unwrap()
        .claims
}

/// A token signed as the service signs its own (the harness's secret, HS256, `typ: at+jwt`),
/// with the claims sub/exp/iat/jti/sid of the real token `real` and then `changes`: a token
/// whose only fault is the change.
fn resign(real: &str, changes: Value) -> String {
    let real = claims_of(real);
    let mut claims = json!({
        "sub": real["sub"],
        "exp": real["exp"],
        "iat": real["iat"],
        "jti": real["jti"],
        "sid": real["sid"],
    });
    for (name, value) in changes.as_object().unwrap() {
        claims[name] = value.clone();
    }
    let mut header = Header::new(Algorithm::HS256);
    header.typ = Some("at+jwt".to_owned());
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[track_caller]
fn assert_invalid_token(r: &Reply) {
    r.problem(401);
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
}

#[tokio::test]
async fn a_token_whose_nbf_is_in_the_future_is_401() {
    let app = TestApp::new().await;
    let real = app.token("nina@example.com").await;
    // The re-signed token as it is works: only the change below is refused.
    app.me(&resign(&real, json!({}))).await.assert_status(200);
    let now = now();
    for nbf in [now - 60, now + 2] {
        app.me(&resign(&real, json!({ "nbf": nbf })))
            .await
            .assert_status(200);
    }
    for nbf in [now + 60, now + 86_400] {
        assert_invalid_token(&app.me(&resign(&real, json!({ "nbf": nbf }))).await);
    }
}

/// Registers and logs in through the binary: the access token.
fn binary_token(server: &Server, email: &str) -> String {
    let body = json!({"email": email, "password": PASSWORD});
    server.json("POST", REGISTER, &body, &[]).expect(201);
    let login = server
        .json("POST", "/api/v1/users/login", &body, &[])
        .expect(200);
    login["access_token"].as_str().unwrap().to_owned()
}

fn binary_me(server: &Server, authorization: &str) -> super::binary::Response {
    server.request(
        "GET",
        "/api/v1/users/me",
        &[("Authorization", authorization)],
        None,
    )
}

#[test]
fn the_binary_refuses_a_token_not_yet_valid() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let real = binary_token(&server, "olga@example.com");
    let fine = resign(&real, json!({}));
    binary_me(&server, &format!("Bearer {fine}")).expect(200);
    let early = resign(&real, json!({ "nbf": now() + 600 }));
    binary_me(&server, &format!("Bearer {early}")).expect(401);
}

#[tokio::test]
async fn a_sub_not_in_canonical_decimal_is_401() {
    let app = TestApp::new().await;
    let real = app.token("peggy@example.com").await;
    let id = claims_of(&real)["sub"].as_str().unwrap().to_owned();
    app.me(&resign(&real, json!({ "sub": id })))
        .await
        .assert_status(200);
    for sub in [
        format!("0{id}"),
        format!("+{id}"),
        format!(" {id}"),
        format!("{id}.0"),
    ] {
        let r = app.me(&resign(&real, json!({ "sub": sub }))).await;
        assert_invalid_token(&r);
    }
}

#[test]
fn the_binary_refuses_a_sub_not_in_canonical_decimal() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let real = binary_token(&server, "quinn@example.com");
    let id = claims_of(&real)["sub"].as_str().unwrap().to_owned();
    for sub in [format!("0{id}"), format!("+{id}")] {
        let token = resign(&real, json!({ "sub": sub }));
        binary_me(&server, &format!("Bearer {token}")).expect(401);
    }
}

// --- The Authorization header ---------------------------------------------------------------

#[tokio::test]
async fn a_tab_after_bearer_is_a_bearer_token() {
    let app = TestApp::new().await;
    let token = app.token("rita@example.com").await;
    for authorization in [
        format!("Bearer\t{token}"),
        format!("bearer \t {token}"),
        format!("Bearer\t\t{token}"),
    ] {
        let r = app
            .send(
                warp::test::request()
                    .path("/api/v1/users/me")
                    .header("authorization", authorization.as_str()),
            )
            .await;
        assert_eq!(
            r.assert_status(200).json()["email"],
            "rita@example.com",
            "{authorization:?}"
        );
    }
}

#[test]
fn the_binary_reads_a_bearer_token_after_a_tab() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let token = binary_token(&server, "sam@example.com");
    let me = binary_me(&server, &format!("Bearer\t{token}")).expect(200);
    assert_eq!(me["email"], "sam@example.com");
}

#[tokio::test]
async fn a_full_name_with_a_control_character_is_refused_on_either_backend() {
    let app = TestApp::new().await;
    for name in ["a\u{0}b", "line\nbreak", "\u{7}"] {
        let r = app
            .post_json(
                "/api/v1/users/register",
                &serde_json::json!({"email": "nul@example.com", "password": PASSWORD, "full_name": name}),
            )
            .await;
        r.problem(400);
        assert_eq!(r.error_fields(), ["full_name"], "{name:?}");
    }
    let token = app.token("alice@example.com").await;
    let r = app
        .send(
            warp::test::request()
                .method("PATCH")
                .path("/api/v1/users/me")
                .header("authorization", format!("Bearer {token}"))
                .json(&serde_json::json!({"full_name": "x\u{0}"})),
        )
        .await;
    r.problem(400);
    assert_eq!(r.error_fields(), ["full_name"]);
}

#[tokio::test]
async fn a_password_holding_the_email_its_name_or_the_service_name_is_refused() {
    let app = TestApp::new().await;
    for password in [
        "x-Alice.Liddell@Example.com-1",
        "my-alice.liddell-pass",
        "Warp-Auth-Api-2026!",
    ] {
        let r = app.register("alice.liddell@example.com", password).await;
        r.problem(400);
        assert_eq!(r.error_fields(), ["password"], "{password}");
        assert!(!String::from_utf8_lossy(&r.body).contains(password));
    }
    // A short local part (under 4 characters) is no rule.
    app.register("bo@example.com", "bo-Str0ng-pass-1")
        .await
        .assert_status(201);
    let token = app.token("carol@example.com").await;
    let change = app
        .authed(
            "PUT",
            "/api/v1/users/me/password",
            &token,
            Some(json!({"current_password": PASSWORD, "new_password": "Carol-is-here-99"})),
        )
        .await;
    change.problem(400);
    assert_eq!(change.error_fields(), ["new_password"]);
}

#[tokio::test]
async fn a_json_endpoint_sent_nothing_names_what_is_missing() {
    let app = TestApp::new().await;
    for path in [
        "/api/v1/users/register",
        "/api/v1/users/login",
        "/api/v1/users/password/forgot",
    ] {
        let r = app
            .send(warp::test::request().method("POST").path(path))
            .await;
        r.problem(400);
        assert_eq!(r.error_fields(), ["email"], "{path}");
    }
    let r = app
        .send(
            warp::test::request()
                .method("POST")
                .path("/api/v1/users/refresh"),
        )
        .await;
    assert_eq!(r.error_fields(), ["refresh_token"]);
    // Nothing sent where every field is optional: still a body is required.
    let token = app.token("dan@example.com").await;
    let r = app
        .send(
            warp::test::request()
                .method("PATCH")
                .path("/api/v1/users/me")
                .header("authorization", format!("Bearer {token}")),
        )
        .await;
    r.problem(400);
    // A body of another type is still 415.
    let r = app
        .send(
            warp::test::request()
                .method("POST")
                .path("/api/v1/users/register")
                .header("content-type", "text/plain")
                .body("hello"),
        )
        .await;
    r.problem(415);
}
