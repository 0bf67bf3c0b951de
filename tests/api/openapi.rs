//! The OpenAPI document: generated, committed and served alike, and true to the contract; and the
//! pages that show it.

use std::collections::BTreeSet;

use serde_json::Value;

use super::helpers::TestApp;

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
    ("get", "/.well-known/jwks.json", false),
    ("get", "/health", false),
    ("get", "/health/ready", false),
    ("get", "/openapi.json", false),
    ("get", "/docs", false),
    ("get", "/redoc", false),
];

#[test]
fn every_operation_of_the_contract_is_there_with_bearer_auth_exactly_where_needed() {
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
            assert_eq!(
                security,
                Some(&serde_json::json!([{"bearer": []}])),
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
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
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
