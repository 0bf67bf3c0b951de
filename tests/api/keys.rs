//! Signing keys: every algorithm's tokens verify against the served JWK Set with a standard JWT
//! library (jsonwebtoken's JWK support), foreign keys and other algorithms are refused, keys
//! survive restarts, rotation logs nobody out, previous HMAC secrets verify, and no private part
//! is ever shown.

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use warp_auth_api::config::DatabaseLocation;
use warp_auth_api::store::Store;

use super::binary::Server;
use super::helpers::{PASSWORD, SECRET, TestApp, database_url};

const BIN: &str = env!("CARGO_BIN_EXE_warp-auth-api");

impl TestApp {
    async fn jwks(&self) -> (Value, JwkSet) {
        let r = self
            .send(warp::test::request().path("/.well-known/jwks.json"))
            .await;
        r.assert_status(200);
        assert_eq!(r.header("cache-control"), Some("public, max-age=300"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        let raw = r.json();
        (raw, serde_json::from_slice(&r.body).unwrap())
    }
}

/// Members a JWK would carry if it held private material (RFC 7518 §6, RFC 8037).
fn assert_public_only(raw: &Value) {
    for key in raw["keys"].as_array().unwrap() {
        for private in ["d", "p", "q", "dp", "dq", "qi", "k", "oth"] {
            assert!(
                key.get(private).is_none(),
                "private member {private}: {key}"
            );
        }
        assert_eq!(key["use"], "sig");
    }
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

/// Verifies `token` the way another service would: the key from the JWK Set by `kid`, the
/// algorithm pinned to the key's.
fn verify_with(set: &JwkSet, token: &str, algorithm: Algorithm) -> Value {
    let kid = kid_of(token);
    let jwk = set
        .find(&kid)
        .unwrap_or_else(|| panic!("{kid} is not in the set"));
    let key = DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = Validation::new(algorithm);
    validation.validate_aud = false;
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .unwrap()
        .claims
}

fn access(body: &Value) -> String {
    body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn each_algorithm_issues_tokens_that_verify_against_the_served_jwks() {
    for (name, algorithm) in [
        ("EdDSA", Algorithm::EdDSA),
        ("ES256", Algorithm::ES256),
        ("RS256", Algorithm::RS256),
    ] {
        let app = TestApp::with(&[("JWT_ALGORITHM", name)]).await;
        let token = access(&app.user("alice@example.com").await);
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, algorithm);
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        let (raw, set) = app.jwks().await;
        assert_public_only(&raw);
        assert_eq!(set.keys.len(), 1, "{name}: {raw}");
        let claims = verify_with(&set, &token, algorithm);
        assert_eq!(claims["role"], "member", "{name}");
        assert!(claims["sub"].as_str().is_some());
        app.me(&token).await.assert_status(200);
    }
}

#[tokio::test]
async fn with_hmac_the_set_is_empty_and_the_kid_is_a_fingerprint() {
    let app = TestApp::new().await;
    let (raw, _) = app.jwks().await;
    assert_eq!(raw, json!({"keys": []}));
    let token = access(&app.user("alice@example.com").await);
    let kid = kid_of(&token);
    assert!(kid.starts_with("hs-"), "{kid}");
    assert!(!SECRET.contains(&kid[3..]) && !kid.contains(SECRET));
    let claims: Value = jsonwebtoken::dangerous::insecure_decode(&token)
        .unwrap()
        .claims;
    assert_eq!(claims["role"], "member");
}

#[tokio::test]
async fn an_eddsa_server_refuses_a_foreign_key_and_an_hs256_token() {
    let app = TestApp::with(&[("JWT_ALGORITHM", "EdDSA")]).await;
    let real = access(&app.user("alice@example.com").await);
    let kid = kid_of(&real);
    let claims: Value = jsonwebtoken::dangerous::insecure_decode(&real)
        .unwrap()
        .claims;
    // The claims of the real token, re-signed: the only difference is the key.
    let sign = |alg: Algorithm, kid: &str, key: &EncodingKey| {
        let mut header = Header::new(alg);
        header.typ = Some("at+jwt".into());
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    };
    let foreign = warp_auth_api::keys::generate(Algorithm::EdDSA).unwrap();
    let foreign_key = EncodingKey::from_ed_der(&foreign.private_der);
    // Our key's own tokens pass; the same claims under a foreign key do not, whatever kid.
    let ours = app.state.store.signing_keys().await.unwrap();
    let own = sign(
        Algorithm::EdDSA,
        &kid,
        &EncodingKey::from_ed_der(&ours[0].private_der),
    );
    app.me(&own).await.assert_status(200);
    for kid in [kid.as_str(), foreign.kid.as_str()] {
        let forged = sign(Algorithm::EdDSA, kid, &foreign_key);
        let r = app.me(&forged).await;
        r.problem(401);
    }
    // An HS256 token, even with the server's own kid.
    let hmac = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    app.me(&sign(Algorithm::HS256, &kid, &hmac))
        .await
        .problem(401);
}

#[tokio::test]
async fn the_key_survives_a_restart() {
    let vars = [("JWT_ALGORITHM", "EdDSA")];
    let app = TestApp::with(&vars).await;
    let token = access(&app.user("alice@example.com").await);
    let (before, _) = app.jwks().await;
    let dir = app.dir;
    let again = TestApp::in_dir(dir, &vars).await;
    again.me(&token).await.assert_status(200);
    assert_eq!(again.jwks().await.0, before);
}

#[tokio::test]
async fn rotation_keeps_old_tokens_valid_and_publishes_both_keys() {
    let vars = [("JWT_ALGORITHM", "ES256")];
    let app = TestApp::with(&vars).await;
    let old = access(&app.user("alice@example.com").await);
    let rotated = warp_auth_api::keys::rotate(&app.state.store, Algorithm::ES256)
        .await
        .unwrap();
    assert_ne!(rotated.kid, kid_of(&old));
    app.state
        .tokens
        .ring()
        .reload(&app.state.store)
        .await
        .unwrap();
    let new = access(&app.login("alice@example.com", PASSWORD).await.json());
    assert_eq!(kid_of(&new), rotated.kid);
    app.me(&old).await.assert_status(200);
    app.me(&new).await.assert_status(200);
    let (raw, set) = app.jwks().await;
    assert_public_only(&raw);
    assert_eq!(set.keys.len(), 2, "{raw}");
    verify_with(&set, &old, Algorithm::ES256);
    verify_with(&set, &new, Algorithm::ES256);
    let stored = app.state.store.signing_keys().await.unwrap();
    assert_eq!(stored.iter().filter(|k| k.retired_at.is_none()).count(), 1);
}

#[tokio::test]
async fn a_server_that_has_not_picked_the_rotation_up_accepts_the_new_key_at_once() {
    let vars = [("JWT_ALGORITHM", "EdDSA")];
    let first = TestApp::with(&vars).await;
    first
        .register("alice@example.com", PASSWORD)
        .await
        .assert_status(201);
    let second = first.sibling(&vars).await;
    let rotated = warp_auth_api::keys::rotate(&first.state.store, Algorithm::EdDSA)
        .await
        .unwrap();
    first
        .state
        .tokens
        .ring()
        .reload(&first.state.store)
        .await
        .unwrap();
    let token = access(&first.login("alice@example.com", PASSWORD).await.json());
    assert_eq!(kid_of(&token), rotated.kid);
    // The second server has not reloaded yet: the unknown kid makes it look.
    second.me(&token).await.assert_status(200);
}

#[tokio::test]
async fn previous_hmac_secrets_verify_and_new_tokens_use_the_new_secret() {
    let old_secret = "old-secret-0123456789abcdef0123456789abcdef0123456789";
    let app = TestApp::with(&[("JWT_SECRET", old_secret)]).await;
    let old = access(&app.user("alice@example.com").await);
    let dir = app.dir;
    let rotated = TestApp::in_dir(dir, &[("JWT_PREVIOUS_SECRETS", old_secret)]).await;
    rotated.me(&old).await.assert_status(200);
    let new = access(&rotated.login("alice@example.com", PASSWORD).await.json());
    assert_ne!(kid_of(&new), kid_of(&old));
    // Signed with JWT_SECRET only: the old secret does not verify it.
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_aud = false;
    assert!(
        jsonwebtoken::decode::<Value>(
            &new,
            &DecodingKey::from_secret(old_secret.as_bytes()).unwrap(),
            &validation
        )
        .is_err()
    );
    // Without JWT_PREVIOUS_SECRETS the old token is refused.
    let dir = rotated.dir;
    let plain = TestApp::in_dir(dir, &[]).await;
    plain.me(&old).await.problem(401);
    plain.me(&new).await.assert_status(200);
}

fn command(dir: &std::path::Path, args: &[&str], vars: &[(&str, &str)]) -> (bool, String) {
    let mut c = Command::new(BIN);
    c.args(args)
        .current_dir(dir)
        .env("DATABASE_URL", database_url(dir))
        .env_remove("RUST_LOG");
    for (k, v) in vars {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn keys_rotate_and_list_through_the_binary_with_no_private_part_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let vars = [("JWT_ALGORITHM", "EdDSA")];
    let server = Server::start(dir.path(), &vars);
    server.register("alice@example.com");
    let login = || {
        server.login("alice@example.com", PASSWORD).expect(200)["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let old = login();
    let jwks = server.request("GET", "/.well-known/jwks.json", &[], None);
    assert_eq!(jwks.header("cache-control"), Some("public, max-age=300"));

    let (ok, out) = command(dir.path(), &["keys", "rotate"], &vars);
    assert!(ok, "{out}");
    let (ok, list) = command(dir.path(), &["keys", "list"], &vars);
    assert!(ok, "{list}");
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(list.contains("EdDSA"));

    // The new key, as the database holds it: a token it signs is accepted by the running
    // server at once (an unknown kid makes it look), and from then on it signs with it.
    let keys = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let location = DatabaseLocation::parse(&database_url(dir.path())).unwrap();
            let store = Store::open(&location, 1).await.unwrap();
            store.signing_keys().await.unwrap()
        });
    assert_eq!(keys.len(), 2);
    let new_key = keys.iter().find(|k| k.retired_at.is_none()).unwrap();
    assert!(out.contains(&new_key.kid), "{out}");
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some("at+jwt".into());
    header.kid = Some(new_key.kid.clone());
    let claims: Value = jsonwebtoken::dangerous::insecure_decode(&old)
        .unwrap()
        .claims;
    let signed = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_ed_der(&new_key.private_der),
    )
    .unwrap();
    let bearer = |t: &str| format!("Bearer {t}");
    server
        .request(
            "GET",
            "/api/v1/users/me",
            &[("Authorization", &bearer(&signed))],
            None,
        )
        .expect(200);
    assert_eq!(kid_of(&login()), new_key.kid);
    server
        .request(
            "GET",
            "/api/v1/users/me",
            &[("Authorization", &bearer(&old))],
            None,
        )
        .expect(200);
    let jwks = server
        .request("GET", "/.well-known/jwks.json", &[], None)
        .json();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);

    // No private part in any output: the command's, the JWKS, the server's log.
    std::thread::sleep(Duration::from_millis(100));
    let mut everything = vec![out, list, jwks.to_string()];
    everything.extend(server.log_lines());
    for key in &keys {
        let b64 = URL_SAFE_NO_PAD.encode(&key.private_der);
        let std_b64 = base64::engine::general_purpose::STANDARD.encode(&key.private_der);
        let seed = URL_SAFE_NO_PAD.encode(&key.private_der[16..]);
        for text in &everything {
            for secret in [&b64, &std_b64, &seed] {
                assert!(!text.contains(secret.as_str()), "private key in: {text}");
            }
        }
    }
    // With HMAC there is nothing to rotate in the database: said, exit 1.
    let (ok, out) = command(dir.path(), &["keys", "rotate"], &[]);
    assert!(!ok);
    assert!(out.contains("JWT_PREVIOUS_SECRETS"), "{out}");
}

#[tokio::test]
async fn a_changed_algorithm_retires_the_old_key_instead_of_keeping_it_live() {
    let app = TestApp::with(&[("JWT_ALGORITHM", "ES256")]).await;
    let old = access(&app.user("alice@example.com").await);
    let dir = app.dir;
    let switched = TestApp::in_dir(dir, &[("JWT_ALGORITHM", "EdDSA")]).await;
    let stored = switched.state.store.signing_keys().await.unwrap();
    assert_eq!(stored.len(), 2);
    let es = stored.iter().find(|k| k.algorithm == "ES256").unwrap();
    assert!(es.retired_at.is_some(), "the ES256 key must retire");
    assert!(
        stored
            .iter()
            .any(|k| k.algorithm == "EdDSA" && k.retired_at.is_none())
    );
    // It still verifies its tokens until they expire, and new tokens are EdDSA.
    switched.me(&old).await.assert_status(200);
    let new = access(&switched.login("alice@example.com", PASSWORD).await.json());
    assert_eq!(
        jsonwebtoken::decode_header(&new).unwrap().alg,
        Algorithm::EdDSA
    );
}
