//! Sessions in the browser: `REFRESH_TOKEN_COOKIE=true`, the refresh token as an HttpOnly cookie.

use serde_json::json;

use super::helpers::{PASSWORD, Reply, TestApp};

const SPA: &str = "https://app.example.com";
const OWN: &str = "https://auth.example.com";

async fn cookie_app() -> TestApp {
    TestApp::with(&[
        ("REFRESH_TOKEN_COOKIE", "true"),
        ("PUBLIC_URL", OWN),
        ("CORS_ORIGINS", SPA),
    ])
    .await
}

/// The `refresh_token` cookie's value and attributes, from `Set-Cookie`.
fn cookie(r: &Reply) -> (String, Vec<String>) {
    let set = r.header("set-cookie").expect("Set-Cookie");
    let mut parts = set.split("; ");
    let (name, value) = parts.next().unwrap().split_once('=').unwrap();
    assert_eq!(name, "refresh_token");
    (value.to_owned(), parts.map(str::to_owned).collect())
}

async fn refresh_with(app: &TestApp, value: Option<&str>, origin: Option<&str>) -> Reply {
    let mut request = warp::test::request()
        .method("POST")
        .path("/api/v1/users/refresh");
    if let Some(value) = value {
        request = request.header("cookie", format!("refresh_token={value}"));
    }
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    app.send(request).await
}

#[tokio::test]
async fn login_and_refresh_set_the_cookie_and_keep_the_token_out_of_the_body() {
    let app = cookie_app().await;
    app.register("ann@example.com", PASSWORD)
        .await
        .assert_status(201);
    let login = app.login("ann@example.com", PASSWORD).await;
    login.assert_status(200);
    let body = login.json();
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert!(body["access_token"].as_str().is_some());
    assert_eq!(login.header("cache-control"), Some("no-store"));
    let (value, attributes) = cookie(&login);
    assert!(value.len() >= 43);
    for expected in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/api/v1/users",
    ] {
        assert!(attributes.iter().any(|a| a == expected), "{attributes:?}");
    }
    let max_age: u64 = attributes
        .iter()
        .find_map(|a| a.strip_prefix("Max-Age="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (14 * 86_400 - 5..=14 * 86_400).contains(&max_age),
        "{max_age}"
    );

    // From the service's own origin, and from a listed one.
    let own = refresh_with(&app, Some(&value), Some(OWN)).await;
    own.assert_status(200);
    assert!(own.json().get("refresh_token").is_none());
    let (next, _) = cookie(&own);
    assert_ne!(next, value);
    let spa = refresh_with(&app, Some(&next), Some(SPA)).await;
    spa.assert_status(200);
    assert_eq!(spa.header("access-control-allow-origin"), Some(SPA));
    assert_eq!(spa.header("access-control-allow-credentials"), Some("true"));
    let (last, _) = cookie(&spa);
    app.me(spa.json()["access_token"].as_str().unwrap())
        .await
        .assert_status(200);

    // Any other origin, or none, is refused even with a good cookie; no cookie is a 401.
    refresh_with(&app, Some(&last), Some("https://evil.example"))
        .await
        .problem(403);
    refresh_with(&app, Some(&last), None).await.problem(403);
    refresh_with(&app, None, Some(SPA)).await.problem(401);
    // The refused attempts spent nothing; a JSON content type with nothing sent is no body too.
    let typed = app
        .send(
            warp::test::request()
                .method("POST")
                .path("/api/v1/users/refresh")
                .header("cookie", format!("refresh_token={last}"))
                .header("origin", SPA)
                .header("content-type", "application/json")
                .header("content-length", "0"),
        )
        .await;
    typed.assert_status(200);
}

#[tokio::test]
async fn logout_clears_the_cookie_and_the_form_login_sets_it_too() {
    let app = cookie_app().await;
    app.register("ann@example.com", PASSWORD)
        .await
        .assert_status(201);
    let form = app
        .send(
            warp::test::request()
                .method("POST")
                .path("/api/v1/users/login")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("username=ann@example.com&password={PASSWORD}")),
        )
        .await;
    form.assert_status(200);
    let (value, _) = cookie(&form);
    let access = form.json()["access_token"].as_str().unwrap().to_owned();
    let out = app
        .authed("POST", "/api/v1/users/logout", &access, None)
        .await;
    out.assert_status(204);
    let (cleared, attributes) = cookie(&out);
    assert_eq!(cleared, "");
    assert!(
        attributes.iter().any(|a| a == "Max-Age=0"),
        "{attributes:?}"
    );
    refresh_with(&app, Some(&value), Some(OWN))
        .await
        .problem(401);
}

#[tokio::test]
async fn without_cookie_mode_an_empty_refresh_names_the_missing_field() {
    let app = TestApp::new().await;
    let r = refresh_with(&app, Some("whatever"), Some(OWN)).await;
    r.problem(400);
    assert_eq!(r.error_fields(), ["refresh_token"]);
    let login = app.user("ann@example.com").await;
    assert!(login["refresh_token"].as_str().is_some());
    // A body still works in cookie mode, and a JSON body with the token is the same as before.
    let cookies = cookie_app().await;
    cookies
        .register("bob@example.com", PASSWORD)
        .await
        .assert_status(201);
    let login = cookies.login("bob@example.com", PASSWORD).await;
    let (value, _) = cookie(&login);
    cookies
        .post_json("/api/v1/users/refresh", &json!({"refresh_token": value}))
        .await
        .assert_status(200);
}

#[test]
fn cookie_mode_refuses_a_wildcard_cors_origin() {
    let err = warp_auth_api::config::Config::from_vars([
        ("REFRESH_TOKEN_COOKIE", "true"),
        ("CORS_ORIGINS", "*"),
    ])
    .unwrap_err();
    assert!(err.to_string().contains("CORS_ORIGINS"), "{err}");
}
