//! `with_auth`: which bearer tokens open `/me`, and how every other one is refused.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::helpers::{SECRET, TestApp};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The claims of a real token, to build forgeries from.
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn sign(claims: &Value, alg: Algorithm, secret: &[u8], typ: Option<&str>) -> String {
    let mut header = Header::new(alg);
    header.typ = typ.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret).unwrap()).unwrap()
}

#[track_caller]
fn assert_invalid_token(r: &super::helpers::Reply) {
    r.problem(401);
    let challenge = r.header("www-authenticate").expect("WWW-Authenticate");
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
}

#[tokio::test]
async fn no_token_is_401_with_a_plain_challenge() {
    let app = TestApp::new().await;
    let r = app
        .send(warp::test::request().path("/api/v1/users/me"))
        .await;
    r.problem(401);
    let challenge = r.header("www-authenticate").unwrap();
    assert!(challenge.starts_with("Bearer"));
    assert!(!challenge.contains("invalid_token"));
    // Another scheme is no bearer token either.
    let basic = app
        .send(
            warp::test::request()
                .path("/api/v1/users/me")
                .header("authorization", "Basic YWxpY2U6c2VjcmV0"),
        )
        .await;
    basic.problem(401);
}

#[tokio::test]
async fn malformed_tokens_are_401_invalid_token() {
    let app = TestApp::new().await;
    for token in [
        "",
        "garbage",
        "a.b.c",
        "Bearer",
        "eyJhbGciOiJIUzI1NiJ9.e30.",
    ] {
        assert_invalid_token(&app.me(token).await);
    }
}

#[tokio::test]
async fn forged_expired_and_foreign_tokens_are_refused() {
    let app = TestApp::new().await;
    let token = app.token("alice@example.com").await;
    app.me(&token).await.assert_status(200);
    let claims = claims_of(&token);

    // alg: none, with the signature stripped.
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"at+jwt"}"#);
    let payload = token.split('.').nth(1).unwrap();
    assert_invalid_token(&app.me(&format!("{none_header}.{payload}.")).await);

    // Another secret.
    let other = sign(
        &claims,
        Algorithm::HS256,
        b"another-secret-another-secret-another-secret",
        Some("at+jwt"),
    );
    assert_invalid_token(&app.me(&other).await);

    // The right secret, another HMAC algorithm.
    let hs384 = sign(&claims, Algorithm::HS384, SECRET.as_bytes(), Some("at+jwt"));
    assert_invalid_token(&app.me(&hs384).await);

    // The right secret and algorithm, but not an access token (no `typ: at+jwt`).
    assert_invalid_token(
        &app.me(&sign(&claims, Algorithm::HS256, SECRET.as_bytes(), None))
            .await,
    );
    assert_invalid_token(
        &app.me(&sign(
            &claims,
            Algorithm::HS256,
            SECRET.as_bytes(),
            Some("JWT"),
        ))
        .await,
    );

    // Expired beyond the 5-second leeway.
    let mut expired = claims.clone();
    expired["exp"] = json!(now() - 10);
    expired["iat"] = json!(now() - 100);
    assert_invalid_token(
        &app.me(&sign(
            &expired,
            Algorithm::HS256,
            SECRET.as_bytes(),
            Some("at+jwt"),
        ))
        .await,
    );

    // Issued in the future.
    let mut future = claims.clone();
    future["iat"] = json!(now() + 60);
    assert_invalid_token(
        &app.me(&sign(
            &future,
            Algorithm::HS256,
            SECRET.as_bytes(),
            Some("at+jwt"),
        ))
        .await,
    );

    // A required claim missing.
    for claim in ["exp", "iat", "sub"] {
        let mut missing = claims.clone();
        missing.as_object_mut().unwrap().remove(claim);
        assert_invalid_token(
            &app.me(&sign(
                &missing,
                Algorithm::HS256,
                SECRET.as_bytes(),
                Some("at+jwt"),
            ))
            .await,
        );
    }

    // Tampered: another user's id in the payload, the original signature kept.
    let mut tampered = claims.clone();
    tampered["sub"] = json!("2");
    let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&tampered).unwrap());
    let parts: Vec<&str> = token.split('.').collect();
    assert_invalid_token(
        &app.me(&format!("{}.{forged_payload}.{}", parts[0], parts[2]))
            .await,
    );

    // A well-signed token naming a session that does not exist.
    let mut unknown_session = claims.clone();
    unknown_session["sid"] = json!("no-such-session");
    assert_invalid_token(
        &app.me(&sign(
            &unknown_session,
            Algorithm::HS256,
            SECRET.as_bytes(),
            Some("at+jwt"),
        ))
        .await,
    );

    // The genuine token still works after all that.
    app.me(&token).await.assert_status(200);
}

#[tokio::test]
async fn a_valid_token_of_a_deleted_user_is_refused() {
    let app = TestApp::new().await;
    let token = app.token("alice@example.com").await;
    app.me(&token).await.assert_status(200);
    app.exec("DELETE FROM users WHERE email = 'alice@example.com'")
        .await;
    assert_invalid_token(&app.me(&token).await);
    // Registering the email again gives a new user; the old token does not open it.
    app.register("alice@example.com", super::helpers::PASSWORD)
        .await
        .assert_status(201);
    assert_invalid_token(&app.me(&token).await);
}

#[tokio::test]
async fn issuer_and_audience_when_configured() {
    let app = TestApp::with(&[
        ("JWT_ISSUER", "https://auth.example.com"),
        ("JWT_AUDIENCE", "example-api"),
    ])
    .await;
    let token = app.token("alice@example.com").await;
    let claims = claims_of(&token);
    assert_eq!(claims["iss"], "https://auth.example.com");
    assert_eq!(claims["aud"], "example-api");
    app.me(&token).await.assert_status(200);

    let mut no_iss = claims.clone();
    no_iss.as_object_mut().unwrap().remove("iss");
    assert_invalid_token(
        &app.me(&sign(
            &no_iss,
            Algorithm::HS256,
            SECRET.as_bytes(),
            Some("at+jwt"),
        ))
        .await,
    );
    let mut other_aud = claims.clone();
    other_aud["aud"] = json!("another-api");
    assert_invalid_token(
        &app.me(&sign(
            &other_aud,
            Algorithm::HS256,
            SECRET.as_bytes(),
            Some("at+jwt"),
        ))
        .await,
    );
}

#[tokio::test]
async fn tokens_carry_the_contract_claims() {
    let app = TestApp::new().await;
    let token = app.token("alice@example.com").await;
    let claims = claims_of(&token);
    for claim in ["sub", "exp", "iat", "jti", "sid"] {
        assert!(!claims[claim].is_null(), "{claim} missing: {claims}");
    }
    assert!(claims["sub"].is_string());
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600
    );
    assert!(claims.get("iss").is_none() && claims.get("aud").is_none());
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "HS256");
}
