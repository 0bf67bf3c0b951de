//! Signing-key benchmark: `cargo bench --bench keys`.
//!
//! For each algorithm the service signs with (HS256, EdDSA, ES256, RS256), in one run: how long
//! signing an access token takes (what login and refresh pay) and verifying one (what every
//! authenticated request pays), with the service's own header, claims and validation, through
//! jsonwebtoken's rust_crypto backend as the server uses it; and the ratios to HS256 and EdDSA.
//! Settings: `BENCH_SECONDS` (per measurement, default 2).

use std::hint::black_box;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::json;

fn per_op(seconds: f64, mut f: impl FnMut()) -> Duration {
    // Warm up, then as many rounds as fit.
    for _ in 0..10 {
        f();
    }
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut n = 0u64;
    while Instant::now() < deadline {
        f();
        n += 1;
    }
    started.elapsed() / u32::try_from(n.max(1)).unwrap_or(u32::MAX)
}

fn main() {
    let seconds: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let claims = json!({
        "sub": "12345", "exp": 4_102_444_800u64, "iat": 1_796_000_000u64,
        "jti": "0123456789abcdef0123456789abcdef", "sid": "fedcba9876543210fedcba9876543210",
        "role": "member",
    });
    println!("algorithm   sign (login, refresh)   verify (every request)");
    let mut rows = Vec::new();
    for algorithm in [
        Algorithm::HS256,
        Algorithm::EdDSA,
        Algorithm::ES256,
        Algorithm::RS256,
    ] {
        let (encoding, decoding) = if algorithm == Algorithm::HS256 {
            let secret = b"bench-secret-0123456789abcdef0123456789abcdef";
            (
                EncodingKey::from_secret(secret).expect("secret"),
                DecodingKey::from_secret(secret).expect("secret"),
            )
        } else {
            let key = warp_auth_api::keys::generate(algorithm).expect("a key");
            let encoding = match algorithm {
                Algorithm::EdDSA => EncodingKey::from_ed_der(&key.private_der),
                Algorithm::ES256 => EncodingKey::from_ec_der(&key.private_der),
                _ => EncodingKey::from_rsa_der(&key.private_der),
            };
            let jwk = Jwk::from_encoding_key(&encoding, algorithm).expect("public key");
            (encoding, DecodingKey::from_jwk(&jwk).expect("decoding key"))
        };
        let mut header = Header::new(algorithm);
        header.typ = Some("at+jwt".into());
        header.kid = Some("bench".into());
        let validation = warp_auth_api::keys::validation(algorithm, None, None);
        let token = jsonwebtoken::encode(&header, &claims, &encoding).expect("sign");
        let sign = per_op(seconds, || {
            black_box(jsonwebtoken::encode(&header, black_box(&claims), &encoding).ok());
        });
        let verify = per_op(seconds, || {
            black_box(
                jsonwebtoken::decode::<serde_json::Value>(
                    black_box(&token),
                    &decoding,
                    &validation,
                )
                .ok(),
            );
        });
        println!(
            "{:<11} {:>10.1} µs {:>22.1} µs",
            warp_auth_api::keys::algorithm_name(algorithm),
            sign.as_secs_f64() * 1e6,
            verify.as_secs_f64() * 1e6
        );
        rows.push((algorithm, sign, verify));
    }
    let (_, eddsa_sign, eddsa_verify) = rows[1];
    println!("\nratios to EdDSA (same run): sign, verify");
    for (algorithm, sign, verify) in &rows {
        println!(
            "  {:<6} {:>6.2}x {:>6.2}x",
            warp_auth_api::keys::algorithm_name(*algorithm),
            sign.as_secs_f64() / eddsa_sign.as_secs_f64(),
            verify.as_secs_f64() / eddsa_verify.as_secs_f64()
        );
    }
}
