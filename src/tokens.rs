//! Access tokens (JWT, `typ: at+jwt`) and refresh tokens (opaque, stored only as SHA-256).

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::error::ApiError;
use crate::keys::{ACCESS_TOKEN_TYPE, KeyRing, KeySet, LEEWAY_SECONDS};
use crate::store::Role;

/// The claims of an access token.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    iat: u64,
    jti: String,
    sid: String,
    /// The role when the token was issued, for other services (this one reads the role anew on
    /// every request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
}

/// Who an accepted access token speaks for; the session still has to be checked in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessClaims {
    pub user_id: i64,
    pub session_id: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Bad in itself: signature, algorithm, type, lifetime, claims.
    Invalid,
    /// It names a key this server does not know (yet: another replica may have just made it).
    UnknownKey,
}

/// Signs and checks access tokens with the keys of the [`KeyRing`].
pub struct TokenKeys {
    ring: Arc<KeyRing>,
    issuer: Option<String>,
    audience: Option<String>,
    ttl_seconds: u64,
    verified: Verified,
}

/// Access tokens this process has verified lately, by their whole text, until their `exp`.
///
/// A client sends the same token on every request until it expires; checking its signature again
/// each time costs an Ed25519 verify (~65 µs) or an HMAC (~4 µs) for nothing. An entry answers
/// only for the exact token that passed the full check ([`TokenKeys::verify`]), only before its
/// `exp` (the full check would still accept it for the leeway after), and only while the key that
/// verified it is in the key set: every check the full path makes is either about the token's
/// bytes (the same bytes), the key (still there, so the same key: a `kid` names one key), or the
/// clock (`exp`: checked; `nbf` and `iat`: time only makes them pass more). A token refused is
/// never kept. Revocation is not the cache's business: the session is read from the store on
/// every request after this. Bounded: at [`VERIFIED_CAPACITY`] the expired entries go, and if
/// that frees less than an eighth the whole cache is dropped (so a full cache of live tokens is
/// not scanned again on every insert; a valid token costs a login or a refresh to get, so
/// churning the cache is as slow as the database, and a dropped entry only costs a full check).
#[derive(Default)]
struct Verified {
    entries: RwLock<HashMap<Box<str>, CachedClaims>>,
}

/// Tokens kept at most (a few MiB).
const VERIFIED_CAPACITY: usize = 8192;

struct CachedClaims {
    claims: AccessClaims,
    exp: u64,
    kid: Option<Box<str>>,
}

impl Verified {
    fn get(&self, token: &str, now: u64, keys: &KeySet) -> Option<AccessClaims> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let cached = entries.get(token)?;
        (now < cached.exp && keys.verifier(cached.kid.as_deref()).is_some())
            .then(|| cached.claims.clone())
    }

    fn insert(&self, token: &str, cached: CachedClaims, now: u64) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= VERIFIED_CAPACITY {
            entries.retain(|_, c| now < c.exp);
            if entries.len() > VERIFIED_CAPACITY - VERIFIED_CAPACITY / 8 {
                entries.clear();
            }
        }
        entries.insert(token.into(), cached);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl TokenKeys {
    pub fn new(config: &Config, ring: Arc<KeyRing>) -> Self {
        Self {
            ring,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            ttl_seconds: u64::from(config.access_token_minutes) * 60,
            verified: Verified::default(),
        }
    }

    /// The keys (for the JWK Set, and reloads).
    pub fn ring(&self) -> &Arc<KeyRing> {
        &self.ring
    }

    /// Lifetime of an access token in seconds (the `expires_in` of a token response).
    pub fn ttl_seconds(&self) -> u64 {
        self.ttl_seconds
    }

    /// A new access token for this user and session, signed by the current key (its `kid` in
    /// the header).
    pub fn issue(&self, user_id: i64, session_id: &str, role: Role) -> Result<String, ApiError> {
        let now = now_seconds();
        let claims = Claims {
            sub: user_id.to_string(),
            exp: now + self.ttl_seconds,
            iat: now,
            jti: random_id(),
            sid: session_id.to_owned(),
            role: Some(role),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        self.ring
            .current()
            .signer
            .sign(&claims)
            .map_err(|e| ApiError::Internal(format!("JWT signing: {e}")))
    }

    /// Checks the key (by `kid`), signature, algorithm (the key's own), type, lifetime, issuer
    /// and audience. Every failure but an unknown key is the same [`Refused::Invalid`]: a caller
    /// learns nothing about which check failed.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, Refused> {
        self.verify_at(token, now_seconds())
    }

    /// [`verify`](Self::verify) at unix time `now`: first the tokens verified lately, then the
    /// whole check, whose success is remembered.
    fn verify_at(&self, token: &str, now: u64) -> Result<AccessClaims, Refused> {
        let keys = self.ring.current();
        if let Some(claims) = self.verified.get(token, now, &keys) {
            return Ok(claims);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refused::Invalid)?;
        let verifier = keys
            .verifier(header.kid.as_deref())
            .ok_or(if header.kid.is_some() {
                Refused::UnknownKey
            } else {
                Refused::Invalid
            })?;
        let data = jsonwebtoken::decode::<Claims>(token, &verifier.key, &verifier.validation)
            .map_err(|_| Refused::Invalid)?;
        let typ_ok = data.header.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case(ACCESS_TOKEN_TYPE)
                || t.eq_ignore_ascii_case("application/at+jwt")
        });
        if !typ_ok || data.claims.iat > now + LEEWAY_SECONDS {
            return Err(Refused::Invalid);
        }
        let user_id = canonical_user_id(&data.claims.sub).ok_or(Refused::Invalid)?;
        let claims = AccessClaims {
            user_id,
            session_id: data.claims.sid,
        };
        self.verified.insert(
            token,
            CachedClaims {
                claims: claims.clone(),
                exp: data.claims.exp,
                kid: header.kid.map(Into::into),
            },
            now,
        );
        Ok(claims)
    }
}

/// The user id a `sub` claim names, when it is written exactly as [`TokenKeys::issue`] writes
/// one: a positive id in canonical decimal. `"01"`, `"+1"`, `" 1"`, `"1.0"` and `"0"` are no
/// user id, though `str::parse` would read some of them.
fn canonical_user_id(sub: &str) -> Option<i64> {
    let id: i64 = sub.parse().ok()?;
    (id > 0 && id.to_string() == sub).then_some(id)
}

pub fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix seconds as RFC 3339 (UTC), without a date library: civil-from-days (H. Hinnant).
pub fn rfc3339(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let rest = seconds.rem_euclid(86_400);
    let (h, m, s) = (rest / 3600, rest % 3600 / 60, rest % 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

/// A new session id (the `sid` claim).
pub fn new_session_id() -> String {
    random_id()
}

/// A random (version 4) UUID as 32 hex digits, from the thread's CSPRNG: no system call per id
/// (request ids are made for every request).
pub fn random_id() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .simple()
        .to_string()
}

/// An opaque token (a refresh token, a mailed link's token): 256 random bits, base64url. Only its
/// hash is stored.
pub struct OpaqueToken {
    pub token: String,
    pub bytes: [u8; 32],
    pub hash: [u8; 32],
}

impl OpaqueToken {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes);
        Self::from_bytes(bytes)
    }

    fn from_bytes(bytes: [u8; 32]) -> Self {
        Self {
            token: URL_SAFE_NO_PAD.encode(bytes),
            hash: Sha256::digest(bytes).into(),
            bytes,
        }
    }

    /// Reads a presented token; anything that is not 32 bytes of base64url is no refresh token.
    pub fn parse(token: &str) -> Option<Self> {
        let bytes: [u8; 32] = URL_SAFE_NO_PAD.decode(token.trim()).ok()?.try_into().ok()?;
        Some(Self::from_bytes(bytes))
    }

    /// Seals `successor` under this token, for the grace window: whoever presents this token
    /// again within it gets the same successor back, so two racing refreshes end on one chain.
    /// The key is SHA-256 of this token, which is stored nowhere, so a copy of the database
    /// reveals no live token. Each token seals exactly one successor (a one-time pad).
    pub fn seal(&self, successor: &OpaqueToken) -> [u8; 32] {
        xor(&successor.bytes, &self.pad())
    }

    /// The successor sealed by [`seal`](Self::seal) under this token.
    pub fn unseal(&self, sealed: &[u8]) -> Option<OpaqueToken> {
        let sealed: [u8; 32] = sealed.try_into().ok()?;
        Some(Self::from_bytes(xor(&sealed, &self.pad())))
    }

    fn pad(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"warp-auth-api refresh grace v1");
        h.update(self.bytes);
        h.finalize().into()
    }
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(pairs: &[(&str, &str)]) -> TokenKeys {
        let config =
            Config::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap();
        TokenKeys::new(&config, Arc::new(KeyRing::hmac(&config).unwrap()))
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn round_trip() {
        let k = keys(&[("JWT_SECRET", SECRET)]);
        let t = k.issue(7, "s1", Role::Member).unwrap();
        assert_eq!(
            k.verify(&t).unwrap(),
            AccessClaims {
                user_id: 7,
                session_id: "s1".into()
            }
        );
        let header = jsonwebtoken::decode_header(&t).unwrap();
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(header.alg, jsonwebtoken::Algorithm::HS256);
        assert!(
            header
                .kid
                .as_deref()
                .is_some_and(|kid| kid.starts_with("hs-"))
        );
    }

    #[test]
    fn issuer_and_audience_are_written_and_required() {
        let with = keys(&[
            ("JWT_SECRET", SECRET),
            ("JWT_ISSUER", "me"),
            ("JWT_AUDIENCE", "you"),
        ]);
        let without = keys(&[("JWT_SECRET", SECRET)]);
        let other_iss = keys(&[
            ("JWT_SECRET", SECRET),
            ("JWT_ISSUER", "them"),
            ("JWT_AUDIENCE", "you"),
        ]);
        assert!(
            with.verify(&with.issue(1, "s", Role::Member).unwrap())
                .is_ok()
        );
        assert!(
            with.verify(&without.issue(1, "s", Role::Member).unwrap())
                .is_err()
        );
        assert!(
            with.verify(&other_iss.issue(1, "s", Role::Member).unwrap())
                .is_err()
        );
    }

    /// A token of `k`'s header and key with the claims of a real one, `changes` applied.
    fn resigned(k: &TokenKeys, changes: serde_json::Value) -> String {
        let real = k.issue(7, "s1", Role::Member).unwrap();
        let mut claims = jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(&real)
            .unwrap()
            .claims;
        for (name, value) in changes.as_object().unwrap() {
            claims[name] = value.clone();
        }
        k.ring.current().signer.sign(&claims).unwrap()
    }

    #[test]
    fn a_token_not_yet_valid_is_refused() {
        let k = keys(&[("JWT_SECRET", SECRET)]);
        let now = now_seconds();
        assert!(k.verify(&resigned(&k, serde_json::json!({}))).is_ok());
        for nbf in [now - 60, now, now + LEEWAY_SECONDS - 1] {
            let token = resigned(&k, serde_json::json!({ "nbf": nbf }));
            assert!(
                k.verify(&token).is_ok(),
                "nbf now{:+}",
                nbf as i64 - now as i64
            );
        }
        for nbf in [now + 60, now + 3600] {
            let token = resigned(&k, serde_json::json!({ "nbf": nbf }));
            assert!(k.verify(&token).is_err(), "nbf now+{}", nbf - now);
        }
        let token = resigned(&k, serde_json::json!({ "nbf": "soon" }));
        assert!(k.verify(&token).is_err());
    }

    #[test]
    fn sub_must_be_the_canonical_user_id() {
        let k = keys(&[("JWT_SECRET", SECRET)]);
        let token = resigned(&k, serde_json::json!({ "sub": "7" }));
        assert_eq!(k.verify(&token).unwrap().user_id, 7);
        for sub in ["07", "+7", " 7", "7 ", "7.0", "0", "-7", "", "0x7"] {
            let token = resigned(&k, serde_json::json!({ "sub": sub }));
            assert!(k.verify(&token).is_err(), "{sub:?}");
        }
        let token = resigned(&k, serde_json::json!({ "sub": 7 }));
        assert!(k.verify(&token).is_err(), "a number, not a string");
        assert_eq!(canonical_user_id(&i64::MAX.to_string()), Some(i64::MAX));
    }

    #[test]
    fn a_remembered_token_is_accepted_only_as_the_full_check_would() {
        let k = keys(&[("JWT_SECRET", SECRET), ("ACCESS_TOKEN_EXPIRE_MINUTES", "1")]);
        let token = k.issue(7, "s1", Role::Member).unwrap();
        let now = now_seconds();
        let claims = k.verify_at(&token, now).unwrap();
        assert_eq!(k.verified.len(), 1, "remembered after the full check");
        assert_eq!(k.verify_at(&token, now + 1).unwrap(), claims);

        // Any other text is checked in full: every one-character change is refused, as the full
        // check refuses it, though the original is remembered.
        let fresh = keys(&[("JWT_SECRET", SECRET), ("ACCESS_TOKEN_EXPIRE_MINUTES", "1")]);
        for i in 0..token.len() {
            for replacement in ['A', 'x', '_', '.'] {
                let mut bytes = token.clone().into_bytes();
                if bytes[i] == replacement as u8 {
                    continue;
                }
                bytes[i] = replacement as u8;
                let changed = String::from_utf8(bytes).unwrap();
                assert_eq!(
                    k.verify_at(&changed, now).is_ok(),
                    fresh.verify_at(&changed, now).is_ok(),
                    "{changed}"
                );
            }
        }
        assert!(k.verify_at(&format!("{token} "), now).is_err());
        assert!(k.verify_at(&token[..token.len() - 1], now).is_err());

        // Not from `exp` on, though the full check would still take it for the leeway.
        let exp = now + 60;
        assert!(k.verify_at(&token, exp - 1).is_ok());
        assert!(k.verify(&token).is_ok());
        let remembered = k.verified.get(&token, exp, &k.ring.current());
        assert!(remembered.is_none(), "an entry never outlives exp");

        // A refused token is never remembered.
        let before = k.verified.len();
        let other_secret = keys(&[(
            "JWT_SECRET",
            "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210",
        )]);
        let forged = other_secret.issue(7, "s1", Role::Member).unwrap();
        assert!(k.verify_at(&forged, now).is_err());
        assert!(k.verify_at(&forged, now).is_err());
        assert_eq!(k.verified.len(), before);
    }

    #[test]
    fn a_remembered_token_dies_with_its_key() {
        let k = keys(&[("JWT_SECRET", SECRET)]);
        let token = k.issue(7, "s1", Role::Member).unwrap();
        let now = now_seconds();
        assert!(k.verify_at(&token, now).is_ok());
        // A key set without the token's key (as after a rotation's key has gone): the entry no
        // longer answers.
        let other = keys(&[(
            "JWT_SECRET",
            "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210",
        )]);
        assert!(k.verified.get(&token, now, &other.ring.current()).is_none());
        assert!(k.verified.get(&token, now, &k.ring.current()).is_some());
    }

    #[test]
    fn the_remembered_tokens_are_bounded() {
        let k = keys(&[("JWT_SECRET", SECRET)]);
        let now = now_seconds();
        for i in 0..(VERIFIED_CAPACITY + 10) {
            let token = k.issue(7, &format!("s{i}"), Role::Member).unwrap();
            assert!(k.verify_at(&token, now).is_ok());
            assert!(k.verified.len() <= VERIFIED_CAPACITY);
        }
    }

    #[test]
    fn refresh_tokens_are_long_hashed_and_parse_back() {
        let a = OpaqueToken::generate();
        let b = OpaqueToken::generate();
        assert_ne!(a.token, b.token);
        assert_eq!(a.token.len(), 43);
        let parsed = OpaqueToken::parse(&a.token).unwrap();
        assert_eq!(parsed.hash, a.hash);
        assert_ne!(a.hash, a.bytes);
        assert!(OpaqueToken::parse("short").is_none());
        assert!(OpaqueToken::parse(&format!("{}A", a.token)).is_none());
    }

    #[test]
    fn a_sealed_successor_opens_only_with_its_predecessor() {
        let old = OpaqueToken::generate();
        let new = OpaqueToken::generate();
        let sealed = old.seal(&new);
        assert_ne!(sealed, new.bytes);
        assert_eq!(old.unseal(&sealed).unwrap().token, new.token);
        assert_ne!(
            OpaqueToken::generate().unseal(&sealed).unwrap().token,
            new.token
        );
    }
}
