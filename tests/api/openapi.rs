//! The OpenAPI document: generated, committed and served alike, and true to the contract; and the
//! pages that show it.

use std::collections::BTreeSet;

use serde_json::Value;

use super::helpers::{PASSWORD, TestApp};

fn committed_file() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json")).unwrap()
}

#[test]
fn the_committed_document_is_the_generated_one() {
    let generated = warp_auth_api::openapi::document();
    assert!(
        generated == committed_file(),
        "openapi.json differs from what the code generates; regenerate it with\n\n    cargo run -- openapi > openapi.json\n"
    );
}

#[tokio::test]
async fn the_served_document_is_the_committed_file_byte_for_byte() {
    let app = TestApp::new().await;
    let r = app.send(warp::test::request().path("/openapi.json")).await;
    r.assert_status(200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(
        r.body == committed_file().as_bytes(),
        "the served document is not openapi.json"
    );
}

fn document() -> Value {
    serde_json::from_str(&committed_file()).unwrap()
}

/// Every operation of the contract, and which of them take a bearer token.
const OPERATIONS: &[(&str, &str, bool)] = &[
    ("post", "/api/v1/users/register", false),
    ("post", "/api/v1/users/login", false),
    ("post", "/api/v1/users/login/mfa", false),
    ("post", "/api/v1/users/me/mfa/totp", true),
    ("delete", "/api/v1/users/me/mfa/totp", true),
    ("post", "/api/v1/users/me/mfa/totp/confirm", true),
    ("post", "/api/v1/users/me/mfa/recovery-codes", true),
    ("delete", "/api/v1/admin/users/{id}/mfa", true),
    ("post", "/api/v1/users/refresh", false),
    ("post", "/api/v1/users/logout", true),
    ("get", "/api/v1/users/me", true),
    ("patch", "/api/v1/users/me", true),
    ("put", "/api/v1/users/me/password", true),
    ("delete", "/api/v1/users/me", true),
    ("get", "/api/v1/users/me/sessions", true),
    ("delete", "/api/v1/users/me/sessions", true),
    ("delete", "/api/v1/users/me/sessions/{id}", true),
    ("post", "/api/v1/users/email/verify", false),
    ("post", "/api/v1/users/me/email/verification", true),
    ("post", "/api/v1/users/password/forgot", false),
    ("post", "/api/v1/users/password/reset", false),
    ("get", "/account/verify-email", false),
    ("get", "/account/reset-password", false),
    ("get", "/api/v1/admin/users", true),
    ("get", "/api/v1/admin/users/{id}", true),
    ("patch", "/api/v1/admin/users/{id}", true),
    ("delete", "/api/v1/admin/users/{id}", true),
    ("get", "/api/v1/admin/users/{id}/sessions", true),
    ("delete", "/api/v1/admin/users/{id}/sessions", true),
    ("post", "/api/v1/admin/users/{id}/password-reset", true),
    ("get", "/api/v1/admin/audit", true),
    ("get", "/.well-known/jwks.json", false),
    ("get", "/health", false),
    ("get", "/health/ready", false),
    ("get", "/openapi.json", false),
    ("get", "/docs", false),
    ("get", "/redoc", false),
];

#[test]
fn every_operation_of_the_contract_is_there_with_a_token_exactly_where_needed() {
    let doc = document();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    let expected: BTreeSet<_> = OPERATIONS
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, expected);
    for (method, path, protected) in OPERATIONS {
        let op = &doc["paths"][path][method];
        let security = op.get("security");
        if *protected {
            // Either scheme: a pasted token, or one from Swagger UI's password flow.
            assert_eq!(
                security,
                Some(&serde_json::json!([{"bearer": []}, {"oauth2": []}])),
                "{method} {path}"
            );
            assert!(
                op["responses"].get("401").is_some(),
                "{method} {path} must document 401"
            );
        } else {
            assert!(
                security.is_none(),
                "{method} {path} must not ask for a token"
            );
        }
        let tag = op["tags"][0].as_str().unwrap();
        assert!(["users", "account", "admin", "keys", "ops"].contains(&tag));
    }
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    assert_eq!(
        schemes.keys().collect::<Vec<_>>(),
        ["bearer", "oauth2"],
        "a scheme no operation takes, or one missing"
    );
    let scheme = &schemes["bearer"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
}

/// Swagger UI's Authorize logs in with the OAuth2 password flow on the login, whose form it
/// reads; the scheme says that the username is the email, and what an MFA account does instead.
#[test]
fn the_oauth2_scheme_is_the_password_flow_on_the_login() {
    let doc = document();
    let scheme = &doc["components"]["securitySchemes"]["oauth2"];
    assert_eq!(scheme["type"], "oauth2");
    let flows = scheme["flows"].as_object().unwrap();
    assert_eq!(flows.keys().collect::<Vec<_>>(), ["password"]);
    assert_eq!(flows["password"]["tokenUrl"], "/api/v1/users/login");
    assert_eq!(flows["password"]["scopes"], serde_json::json!({}));
    let description = scheme["description"].as_str().unwrap();
    assert!(description.contains("username is the account's email"));
    assert!(description.contains("mfa_token") && description.contains("bearer"));
    let login = &doc["paths"]["/api/v1/users/login"]["post"];
    assert!(login.get("security").is_none());
    let form = &login["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"];
    let form =
        &doc["components"]["schemas"][form["$ref"].as_str().unwrap().rsplit('/').next().unwrap()];
    assert_eq!(
        form["required"],
        serde_json::json!(["username", "password"])
    );
    assert_eq!(
        login["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Token"
    );
}

/// The token request exactly as Swagger UI 5 sends it, in both places its dialog can put the
/// client credentials (an `Authorization: Basic` header by default, or the body); the answer is
/// what it takes: JSON with `access_token` and `token_type: bearer`, and no `error` field.
#[tokio::test]
async fn swagger_uis_password_flow_request_logs_in() {
    let app = TestApp::new().await;
    app.register("alice@example.com", PASSWORD)
        .await
        .assert_status(201);
    let password = PASSWORD;
    for (authorization, body) in [
        (
            Some("Basic Og=="),
            format!("grant_type=password&scope=&username=alice%40example.com&password={password}"),
        ),
        (
            None,
            format!(
                "grant_type=password&scope=&username=alice%40example.com&password={password}\
                 &client_id=swagger&client_secret=ignored"
            ),
        ),
    ] {
        let mut request = warp::test::request()
            .method("POST")
            .path("/api/v1/users/login")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json, text/plain, */*")
            .header("x-requested-with", "XMLHttpRequest")
            .header("origin", "http://localhost")
            .body(body);
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        let r = app.send(request).await;
        r.assert_status(200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let token = r.json();
        assert_eq!(token["token_type"], "bearer");
        assert!(token.get("error").is_none());
        let access = token["access_token"].as_str().unwrap();
        let me = app.me(access).await;
        me.assert_status(200);
        assert_eq!(me.json()["email"], "alice@example.com");
    }
}

#[test]
fn every_error_is_documented_as_problem_json() {
    let doc = document();
    let responses = &doc["components"]["responses"];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, response) in op["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    let reference = response["$ref"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{method} {path} {status}"));
                    let name = reference.rsplit('/').next().unwrap();
                    let content = &responses[name]["content"];
                    assert_eq!(
                        content["application/problem+json"]["schema"]["$ref"],
                        "#/components/schemas/Problem",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
    let problem = &doc["components"]["schemas"]["Problem"];
    assert!(
        problem["properties"]["errors"]["items"]["$ref"]
            .as_str()
            .unwrap()
            .ends_with("FieldError")
    );
    // The login operation reads JSON and the OAuth2 form.
    let login = &doc["paths"]["/api/v1/users/login"]["post"]["requestBody"]["content"];
    assert!(login.get("application/json").is_some());
    assert!(login.get("application/x-www-form-urlencoded").is_some());
    // Examples come from the tutorial.
    let register = &doc["components"]["schemas"]["RegisterIn"]["example"];
    assert_eq!(register["password"], "MyStrongPass123");
    assert_eq!(register["full_name"], "Alice");
}

#[tokio::test]
async fn the_pages_are_utf8_and_load_nothing_from_another_origin() {
    let app = TestApp::new().await;
    for page in ["/docs", "/redoc"] {
        let r = app.send(warp::test::request().path(page)).await;
        r.assert_status(200);
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        let html = String::from_utf8(r.body.clone()).unwrap();
        assert!(html.contains("<meta charset=\"utf-8\">"));
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "{page} names another origin"
        );
        let policy = r.header("content-security-policy").unwrap();
        assert!(policy.contains("default-src 'none'") && policy.contains("script-src 'self'"));
        // Swagger UI's "Try it out" and its OAuth2 password flow fetch this origin.
        assert!(policy.contains("connect-src 'self'"), "{policy}");
        // Every script the page loads is served here, as UTF-8 JavaScript.
        for src in html
            .split("src=\"")
            .skip(1)
            .map(|s| s.split('"').next().unwrap())
        {
            let asset = app.send(warp::test::request().path(src)).await;
            asset.assert_status(200);
            assert_eq!(
                asset.header("content-type"),
                Some("text/javascript; charset=utf-8"),
                "{src}"
            );
            assert!(asset.body.len() > 100, "{src}");
        }
    }
    let init = app
        .send(warp::test::request().path("/docs/swagger-initializer.js"))
        .await;
    let init = String::from_utf8(init.body).unwrap();
    assert!(init.contains("\"/openapi.json\""), "{init}");
    assert!(init.contains("\"validatorUrl\": \"none\""), "{init}");
    let css = app
        .send(warp::test::request().path("/docs/swagger-ui.css"))
        .await;
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    app.send(warp::test::request().path("/docs/nope.js"))
        .await
        .problem(404);
    app.send(warp::test::request().method("POST").path("/docs"))
        .await
        .problem(405);
}
