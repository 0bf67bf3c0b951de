//! Signing keys: which key signs access tokens, which keys verify them, and the JWK Set other
//! services verify with.
//!
//! With an HMAC algorithm the key is `JWT_SECRET` (its `kid` a short fingerprint of it, never the
//! secret), and `JWT_PREVIOUS_SECRETS` verify tokens of earlier secrets; the JWK Set is empty (a
//! secret is never published). With `EdDSA`, `ES256` or `RS256` the keys live in the store: made
//! at the first start when none exists (under a lock, so replicas starting together end with
//! one), rotated by `warp-auth-api keys rotate`, and picked up by every running server within
//! [`RELOAD_INTERVAL`] — at once when a token names a key it has not seen yet. A retired key keeps
//! verifying, and stays in the JWK Set, until the last token it signed has expired.
//!
//! The private keys are held by the store and by this module only: they are in no log, response,
//! `Debug` output or command output.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::config::Config;
use crate::store::{AddKey, Store, StoreError, StoredKey};
use crate::tokens;

/// How often a server looks for keys made by `keys rotate` (the contract: within a minute).
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(30);
/// The least time between two look-ups caused by unknown `kid`s (a flood of forged tokens must
/// not become a flood of queries).
const UNKNOWN_KID_RELOAD: Duration = Duration::from_secs(1);
/// The media type of access tokens (RFC 9068), written into and required in the JWT header.
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";
/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const LEEWAY_SECONDS: u64 = 5;

/// Why the keys could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing keys: {0}")]
    Store(#[from] StoreError),
    #[error("signing key {kid}: {why}")]
    Bad { kid: String, why: String },
    #[error("making a signing key: {0}")]
    Generate(String),
    #[error("{0}")]
    Hmac(String),
}

/// The key that signs.
pub struct Signer {
    pub kid: String,
    pub algorithm: Algorithm,
    header: Header,
    key: EncodingKey,
}

impl Signer {
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(&self.header, claims, &self.key)
    }
}

/// A key that verifies: pinned to its own algorithm.
pub struct Verifier {
    pub key: DecodingKey,
    pub validation: Validation,
}

/// The keys in force at one moment.
pub struct KeySet {
    pub signer: Signer,
    verifiers: HashMap<String, Verifier>,
    /// The served JWK Set, serialised once per change.
    jwks: bytes::Bytes,
    /// Whether a token without `kid` is the signer's (HMAC: tokens of version 1 had none).
    kidless_is_signer: bool,
}

impl KeySet {
    /// The verifier of a token's `kid` (a token without one: the signer's, with HMAC).
    pub fn verifier(&self, kid: Option<&str>) -> Option<&Verifier> {
        match kid {
            Some(kid) => self.verifiers.get(kid),
            None if self.kidless_is_signer => self.verifiers.get(&self.signer.kid),
            None => None,
        }
    }

    /// `GET /.well-known/jwks.json`'s body.
    pub fn jwks(&self) -> bytes::Bytes {
        self.jwks.clone()
    }

    /// The ids of the keys that verify, for logs.
    pub fn kids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.verifiers.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }
}

/// The JWK Set (RFC 7517) as served.
#[derive(Debug, Serialize, ToSchema)]
pub struct JwkSet {
    /// The public keys that verify access tokens: the signing key and every earlier key whose
    /// tokens may still be alive. Empty with an HMAC algorithm.
    pub keys: Vec<PublicJwk>,
}

/// One public key (RFC 7517; Ed25519 as in RFC 8037). Never a private member.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublicJwk {
    /// `OKP` (Ed25519), `EC` (P-256) or `RSA`.
    #[schema(example = "OKP")]
    pub kty: String,
    /// The key's id: the `kid` header of the tokens it signs (its RFC 7638 thumbprint).
    pub kid: String,
    /// `EdDSA`, `ES256` or `RS256`.
    #[schema(example = "EdDSA")]
    pub alg: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    #[schema(example = "sig")]
    pub use_: String,
    /// `Ed25519` or `P-256`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// The public point (OKP, EC), base64url.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// The public point's y (EC), base64url.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// The modulus (RSA), base64url.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// The exponent (RSA), base64url.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
}

/// What the keys come from.
enum Source {
    /// `JWT_SECRET` and `JWT_PREVIOUS_SECRETS`: fixed for the life of the process.
    Hmac,
    /// The store, for this algorithm.
    Stored { algorithm: Algorithm },
}

/// The keys of a running server: the set in force, and how to renew it.
pub struct KeyRing {
    current: RwLock<Arc<KeySet>>,
    source: Source,
    rules: Rules,
    last_unknown_reload: Mutex<Option<Instant>>,
}

impl KeyRing {
    /// The keys for this configuration: from the secrets (HMAC), or from the store, making the
    /// first key when there is none.
    pub async fn load(config: &Config, store: &Store) -> Result<Self, KeyError> {
        let rules = Rules::of(config);
        if !is_asymmetric(config.jwt_algorithm) {
            return Self::hmac(config);
        }
        let algorithm = config.jwt_algorithm;
        ensure_key(store, algorithm).await?;
        let set = rules.stored_set(algorithm, &store.signing_keys().await?)?;
        Ok(Self::with(set, Source::Stored { algorithm }, rules))
    }

    /// The HMAC keys of this configuration (no store needed).
    pub fn hmac(config: &Config) -> Result<Self, KeyError> {
        let rules = Rules::of(config);
        let set = rules.hmac_set(config)?;
        Ok(Self::with(set, Source::Hmac, rules))
    }

    fn with(set: KeySet, source: Source, rules: Rules) -> Self {
        Self {
            current: RwLock::new(Arc::new(set)),
            source,
            rules,
            last_unknown_reload: Mutex::new(None),
        }
    }

    /// The set in force now (cheap: a reference count).
    pub fn current(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the keys live in the store (and so may change while the server runs).
    pub fn is_stored(&self) -> bool {
        matches!(self.source, Source::Stored { .. })
    }

    /// Reads the keys from the store again (asymmetric only; HMAC keys never change).
    pub async fn reload(&self, store: &Store) -> Result<(), KeyError> {
        let Source::Stored { algorithm } = self.source else {
            return Ok(());
        };
        let stored = store.signing_keys().await?;
        let set = self.rules.stored_set(algorithm, &stored)?;
        let before = self.current();
        if before.signer.kid != set.signer.kid {
            tracing::info!(kid = %set.signer.kid, "signing with a new key");
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        Ok(())
    }

    /// A token named a key this server does not know: maybe one made moments ago on another
    /// replica. Reloads, at most once per [`UNKNOWN_KID_RELOAD`]; `true` when it did.
    pub async fn reload_for_unknown_kid(&self, store: &Store) -> bool {
        if !self.is_stored() {
            return false;
        }
        {
            let mut last = self
                .last_unknown_reload
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| at.elapsed() < UNKNOWN_KID_RELOAD) {
                return false;
            }
            *last = Some(Instant::now());
        }
        match self.reload(store).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "could not reload the signing keys");
                false
            }
        }
    }

    /// Background task (started by `main`): picks up rotations, and removes keys whose tokens
    /// have all expired.
    pub async fn watch(self: Arc<Self>, store: Store) {
        if !self.is_stored() {
            return;
        }
        let mut tick = tokio::time::interval(RELOAD_INTERVAL);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = self.reload(&store).await {
                tracing::warn!(error = %e, "could not reload the signing keys");
            }
            let before = unix_now() - secs(self.rules.keep_retired);
            match store.purge_signing_keys(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(keys = n, "retired signing keys removed"),
                Err(e) => tracing::warn!(error = %e, "could not remove retired signing keys"),
            }
        }
    }
}

/// Makes the first key of the configured algorithm, unless one signs already.
async fn ensure_key(store: &Store, algorithm: Algorithm) -> Result<(), KeyError> {
    let stored = store.signing_keys().await?;
    if stored
        .iter()
        .any(|k| k.retired_at.is_none() && k.algorithm == algorithm_name(algorithm))
    {
        return Ok(());
    }
    let key = generate(algorithm)?;
    let kept = store
        .add_signing_key(key, AddKey::IfNone, &crate::audit::Context::system())
        .await?;
    tracing::info!(kid = %kept.kid, algorithm = %kept.algorithm, "signing key ready");
    Ok(())
}

/// The rules every verifier applies, and how long retired keys stay.
struct Rules {
    issuer: Option<String>,
    audience: Option<String>,
    /// How long a retired key must keep verifying.
    keep_retired: Duration,
}

impl Rules {
    fn of(config: &Config) -> Self {
        Self {
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            keep_retired: retired_keep(config),
        }
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        validation(algorithm, self.issuer.as_deref(), self.audience.as_deref())
    }

    fn hmac_set(&self, config: &Config) -> Result<KeySet, KeyError> {
        let algorithm = config.jwt_algorithm;
        let signing = EncodingKey::from_secret(&config.jwt_secret)
            .map_err(|e| KeyError::Hmac(format!("JWT_SECRET: {e}")))?;
        let kid = hmac_kid(&config.jwt_secret);
        let mut verifiers = HashMap::new();
        for secret in std::iter::once(&config.jwt_secret).chain(&config.jwt_previous_secrets) {
            let key = DecodingKey::from_secret(secret)
                .map_err(|e| KeyError::Hmac(format!("JWT_PREVIOUS_SECRETS: {e}")))?;
            verifiers.insert(
                hmac_kid(secret),
                Verifier {
                    key,
                    validation: self.validation(algorithm),
                },
            );
        }
        Ok(KeySet {
            signer: signer(kid, algorithm, signing),
            verifiers,
            jwks: jwks_bytes(&JwkSet { keys: vec![] }),
            kidless_is_signer: true,
        })
    }

    fn stored_set(&self, algorithm: Algorithm, stored: &[StoredKey]) -> Result<KeySet, KeyError> {
        let now = unix_now();
        let keep = secs(self.keep_retired);
        let mut verifiers = HashMap::new();
        let mut public = Vec::new();
        let mut signing: Option<(&StoredKey, EncodingKey)> = None;
        for key in stored {
            if key.retired_at.is_some_and(|at| at + keep < now) {
                continue;
            }
            let Some(key_algorithm) = parse_algorithm(&key.algorithm) else {
                tracing::warn!(kid = %key.kid, algorithm = %key.algorithm, "a signing key of an unknown algorithm is ignored");
                continue;
            };
            let bad = |why: String| KeyError::Bad {
                kid: key.kid.clone(),
                why,
            };
            let encoding = encoding_key(key_algorithm, &key.private_der);
            let jwk = Jwk::from_encoding_key(&encoding, key_algorithm)
                .map_err(|e| bad(format!("cannot read it: {e}")))?;
            let decoding =
                DecodingKey::from_jwk(&jwk).map_err(|e| bad(format!("its public key: {e}")))?;
            verifiers.insert(
                key.kid.clone(),
                Verifier {
                    key: decoding,
                    validation: self.validation(key_algorithm),
                },
            );
            public.push(public_jwk(&key.kid, key_algorithm, &jwk));
            // The newest key of the configured algorithm that is not retired signs.
            if key.retired_at.is_none()
                && key_algorithm == algorithm
                && signing
                    .as_ref()
                    .is_none_or(|(s, _)| s.created_at <= key.created_at)
            {
                signing = Some((key, encoding));
            }
        }
        let (key, encoding) = signing.ok_or_else(|| KeyError::Bad {
            kid: "-".into(),
            why: format!(
                "no {} key signs; run `warp-auth-api keys rotate`",
                algorithm_name(algorithm)
            ),
        })?;
        Ok(KeySet {
            signer: signer(key.kid.clone(), algorithm, encoding),
            verifiers,
            jwks: jwks_bytes(&JwkSet { keys: public }),
            kidless_is_signer: false,
        })
    }
}

/// A new key of `algorithm` (asymmetric), ready to store: its `kid` is the RFC 7638 thumbprint of
/// its public key.
pub fn generate(algorithm: Algorithm) -> Result<StoredKey, KeyError> {
    let private_der = match algorithm {
        Algorithm::EdDSA => {
            // PKCS#8 v1 of an Ed25519 seed (RFC 8410): a fixed 16-byte header, then the 32 bytes.
            const HEADER: [u8; 16] = [
                0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
                0x04, 0x20,
            ];
            let seed: [u8; 32] = rand::random();
            [&HEADER[..], &seed[..]].concat()
        }
        Algorithm::ES256 => {
            // A random scalar below the group order; one of about 2^32 draws is not.
            let secret = loop {
                let bytes: [u8; 32] = rand::random();
                if let Ok(secret) = p256::SecretKey::from_slice(&bytes) {
                    break secret;
                }
            };
            p256::pkcs8::EncodePrivateKey::to_pkcs8_der(&secret)
                .map_err(|e| KeyError::Generate(e.to_string()))?
                .as_bytes()
                .to_vec()
        }
        Algorithm::RS256 => {
            use rsa::pkcs1::EncodeRsaPrivateKey as _;
            let key = rsa::PrivateKey::new(&mut rand::rng(), 2048)
                .map_err(|e| KeyError::Generate(e.to_string()))?;
            key.to_pkcs1_der()
                .map_err(|e| KeyError::Generate(e.to_string()))?
                .as_bytes()
                .to_vec()
        }
        other => {
            return Err(KeyError::Generate(format!(
                "{other:?} keys are secrets, not made here"
            )));
        }
    };
    let jwk = Jwk::from_encoding_key(&encoding_key(algorithm, &private_der), algorithm)
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    Ok(StoredKey {
        kid: thumbprint(&jwk),
        algorithm: algorithm_name(algorithm).to_owned(),
        private_der,
        created_at: unix_now(),
        retired_at: None,
    })
}

/// `keys rotate`: a new key of `algorithm` signs from now on; every other one is retired (and
/// keeps verifying until its last token expired). The new key's id.
pub async fn rotate(store: &Store, algorithm: Algorithm) -> Result<StoredKey, KeyError> {
    let key = generate(algorithm)?;
    Ok(store
        .add_signing_key(key, AddKey::Rotate, &crate::audit::Context::system())
        .await?)
}

/// Whether an algorithm's keys are a key pair (kept in the store) rather than a secret.
pub fn is_asymmetric(algorithm: Algorithm) -> bool {
    matches!(
        algorithm,
        Algorithm::EdDSA | Algorithm::ES256 | Algorithm::RS256
    )
}

/// How long a retired key must keep verifying: the longest a token it signed can live, plus the
/// time a replica may go on signing with it before it picks the rotation up, plus the leeway.
fn retired_keep(config: &Config) -> Duration {
    Duration::from_secs(u64::from(config.access_token_minutes) * 60 + LEEWAY_SECONDS)
        + RELOAD_INTERVAL * 2
}

/// The validation of tokens signed by a key of `algorithm`: that algorithm only; `exp`, `iat`,
/// `sub` required; `iss`/`aud` when configured; an `nbf`, when there is one, must have passed.
pub fn validation(
    algorithm: Algorithm,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_nbf = true;
    let mut required = vec!["exp", "iat", "sub"];
    if let Some(iss) = issuer {
        validation.set_issuer(&[iss]);
        required.push("iss");
    }
    match audience {
        Some(aud) => {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}

fn signer(kid: String, algorithm: Algorithm, key: EncodingKey) -> Signer {
    let mut header = Header::new(algorithm);
    header.typ = Some(ACCESS_TOKEN_TYPE.to_owned());
    header.kid = Some(kid.clone());
    Signer {
        kid,
        algorithm,
        header,
        key,
    }
}

/// The `kid` of an HMAC secret: a short fingerprint, from which the secret cannot be recovered.
pub fn hmac_kid(secret: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"warp-auth-api hmac kid v1\0");
    h.update(secret);
    let digest = h.finalize();
    format!("hs-{}", URL_SAFE_NO_PAD.encode(&digest[..12]))
}

/// RFC 7638: SHA-256 over the required members, in lexicographic order, with no whitespace.
fn thumbprint(jwk: &Jwk) -> String {
    let canonical = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) => {
            format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, p.x)
        }
        AlgorithmParameters::EllipticCurve(p) => {
            format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                p.x, p.y
            )
        }
        AlgorithmParameters::RSA(p) => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, p.e, p.n),
        // Secrets have no public key to name.
        _ => String::new(),
    };
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

fn public_jwk(kid: &str, algorithm: Algorithm, jwk: &Jwk) -> PublicJwk {
    let mut out = PublicJwk {
        kty: String::new(),
        kid: kid.to_owned(),
        alg: algorithm_name(algorithm).to_owned(),
        use_: "sig".into(),
        crv: None,
        x: None,
        y: None,
        n: None,
        e: None,
    };
    match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) => {
            out.kty = "OKP".into();
            out.crv = Some("Ed25519".into());
            out.x = Some(p.x.clone());
        }
        AlgorithmParameters::EllipticCurve(p) => {
            out.kty = "EC".into();
            out.crv = Some("P-256".into());
            out.x = Some(p.x.clone());
            out.y = Some(p.y.clone());
        }
        AlgorithmParameters::RSA(p) => {
            out.kty = "RSA".into();
            out.n = Some(p.n.clone());
            out.e = Some(p.e.clone());
        }
        _ => {}
    }
    out
}

fn jwks_bytes(set: &JwkSet) -> bytes::Bytes {
    serde_json::to_vec(set).unwrap_or_default().into()
}

fn encoding_key(algorithm: Algorithm, der: &[u8]) -> EncodingKey {
    match algorithm {
        Algorithm::EdDSA => EncodingKey::from_ed_der(der),
        Algorithm::ES256 => EncodingKey::from_ec_der(der),
        _ => EncodingKey::from_rsa_der(der),
    }
}

pub fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::EdDSA => "EdDSA",
        Algorithm::ES256 => "ES256",
        Algorithm::RS256 => "RS256",
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        _ => "other",
    }
}

fn parse_algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "EdDSA" => Some(Algorithm::EdDSA),
        "ES256" => Some(Algorithm::ES256),
        "RS256" => Some(Algorithm::RS256),
        _ => None,
    }
}

fn unix_now() -> i64 {
    i64::try_from(tokens::now_seconds()).unwrap_or(i64::MAX)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}
