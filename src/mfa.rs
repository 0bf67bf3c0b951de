//! The second factor: TOTP (RFC 6238, with `totp-rs`) and single-use recovery codes.
//!
//! A TOTP secret is 160 random bits. At rest it is sealed with XChaCha20-Poly1305 under a key
//! derived (HMAC-SHA256) from `JWT_SECRET`, which lives in the environment, not the database:
//! a copy of the database alone does not give the secrets away. `JWT_PREVIOUS_SECRETS` still
//! open what they sealed, so `JWT_SECRET` can be rotated. Without a configured `JWT_SECRET`
//! (a random one dies with the process) MFA cannot be enrolled.
//!
//! A code is accepted for the time steps now −1 … now +1 (30 s each), and only for a step later
//! than the last one accepted for the user (no replay; the store decides, across replicas).
//! Recovery codes are 80 random bits, shown once as `xxxx-xxxx-xxxx-xxxx` (base32), stored as
//! SHA-256, and spent on use.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use totp_rs::{Builder, Totp};

use crate::config::Config;
use crate::error::ApiError;
use crate::store::TotpRecord;

/// How long the second step of a login may take.
pub const MFA_TOKEN_SECONDS: u64 = 300;
/// Wrong codes an `mfa_token` survives.
pub const MAX_WRONG_CODES: u32 = 5;
/// Recovery codes per user.
pub const RECOVERY_CODES: usize = 10;
const STEP_SECONDS: u64 = 30;
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A code as a user types it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    /// Six digits from the authenticator app.
    Totp(String),
    /// A recovery code, by its hash.
    Recovery([u8; 32]),
}

impl Code {
    /// Which kind of code this is, for the audit log (never the code).
    pub fn kind(&self) -> &'static str {
        self.second_factor().name().unwrap_or_default()
    }

    /// The second factor a login passed with this code.
    pub fn second_factor(&self) -> crate::sessions::SecondFactor {
        match self {
            Code::Totp(_) => crate::sessions::SecondFactor::Totp,
            Code::Recovery(_) => crate::sessions::SecondFactor::RecoveryCode,
        }
    }

    /// Six ASCII digits, or a recovery code as issued (case and `-` ignored).
    pub fn parse(code: &str) -> Option<Self> {
        let code = code.trim();
        if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) {
            return Some(Code::Totp(code.to_owned()));
        }
        let normalized: String = code
            .chars()
            .filter(|c| *c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        (normalized.len() == 16 && normalized.bytes().all(|b| BASE32.contains(&b)))
            .then(|| Code::Recovery(Sha256::digest(normalized.as_bytes()).into()))
    }
}

/// A key that seals TOTP secrets, and its id (stored beside what it sealed).
struct SealKey {
    id: String,
    key: [u8; 32],
}

/// TOTP and recovery codes for the service.
pub struct Mfa {
    /// The current key first, then those of earlier secrets (open only).
    keys: Vec<SealKey>,
    issuer: String,
}

impl Mfa {
    pub fn new(config: &Config) -> Self {
        let keys = config
            .mfa_secret
            .iter()
            .chain(
                config
                    .jwt_previous_secrets
                    .iter()
                    .filter(|_| config.mfa_secret.is_some()),
            )
            .map(|secret| {
                let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(secret)
                    .expect("HMAC takes a key of any length");
                mac.update(b"warp-auth-api totp secrets v1");
                let key: [u8; 32] = mac.finalize().into_bytes().into();
                let id: String = Sha256::digest(key)[..6]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                SealKey { id, key }
            })
            .collect();
        Self {
            keys,
            issuer: issuer_label(config.jwt_issuer.as_deref()),
        }
    }

    /// Whether secrets can be sealed (a `JWT_SECRET` is configured).
    pub fn available(&self) -> bool {
        !self.keys.is_empty()
    }

    /// A new secret: 160 random bits.
    pub fn new_secret() -> Vec<u8> {
        let mut secret = vec![0u8; 20];
        rand::fill(&mut secret[..]);
        secret
    }

    /// The secret sealed under the current key, and that key's id.
    pub fn seal(&self, secret: &[u8]) -> Result<(Vec<u8>, String), ApiError> {
        let key = self.keys.first().ok_or_else(unavailable)?;
        let mut nonce = [0u8; 24];
        rand::fill(&mut nonce);
        let sealed = XChaCha20Poly1305::new((&key.key).into())
            .encrypt(&XNonce::from(nonce), secret)
            .map_err(|_| ApiError::Internal("sealing a TOTP secret".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok((out, key.id.clone()))
    }

    /// Whether a record is sealed under the current key (else it is sealed again once opened).
    pub fn is_current(&self, record: &TotpRecord) -> bool {
        self.keys.first().is_some_and(|k| k.id == record.key_id)
    }

    /// The secret of a stored record, opened with the key that sealed it.
    pub fn open(&self, record: &TotpRecord) -> Result<Vec<u8>, ApiError> {
        let key = self
            .keys
            .iter()
            .find(|k| k.id == record.key_id)
            .ok_or_else(|| {
                ApiError::Internal(
                    "a TOTP secret sealed under a JWT_SECRET that is neither JWT_SECRET nor in \
                     JWT_PREVIOUS_SECRETS"
                        .into(),
                )
            })?;
        if record.sealed.len() < 24 {
            return Err(ApiError::Internal("a sealed TOTP secret too short".into()));
        }
        let (nonce, sealed) = record.sealed.split_at(24);
        let nonce: [u8; 24] = nonce
            .try_into()
            .map_err(|_| ApiError::Internal("a sealed TOTP secret's nonce".into()))?;
        XChaCha20Poly1305::new((&key.key).into())
            .decrypt(&XNonce::from(nonce), sealed)
            .map_err(|_| ApiError::Internal("a sealed TOTP secret does not open".into()))
    }

    /// The TOTP of a secret, labelled for an authenticator app (the otpauth URI forbids `:` in
    /// either label, which an email may hold in a quoted local part).
    fn totp(&self, secret: &[u8], account: &str) -> Result<Totp, ApiError> {
        Builder::new()
            .with_secret(secret.to_vec())
            .with_issuer(Some(self.issuer.as_str()))
            .with_account_name(account.replace(':', ""))
            .build()
            .map_err(|e| ApiError::Internal(format!("TOTP: {e}")))
    }

    /// The TOTP of a secret, unlabelled: what checking a code needs.
    fn checker(secret: &[u8]) -> Result<Totp, ApiError> {
        Builder::new()
            .with_secret(secret.to_vec())
            .build()
            .map_err(|e| ApiError::Internal(format!("TOTP: {e}")))
    }

    /// What an authenticator app needs: the secret in base32 and the `otpauth://` URI.
    pub fn enrollment(&self, secret: &[u8], account: &str) -> Result<(String, String), ApiError> {
        let totp = self.totp(secret, account)?;
        let uri = totp
            .to_url()
            .map_err(|e| ApiError::Internal(format!("TOTP URI: {e}")))?;
        Ok((totp_rs::Secret::from(secret.to_vec()).to_base32(), uri))
    }

    /// The time step (now −1 … +1) whose code is `code`, if any.
    pub fn matching_step(
        &self,
        secret: &[u8],
        code: &str,
        now: u64,
    ) -> Result<Option<i64>, ApiError> {
        let totp = Self::checker(secret)?;
        let current = now / STEP_SECONDS;
        for step in [current.saturating_sub(1), current, current + 1] {
            let expected = totp.generate(step * STEP_SECONDS).to_string();
            if constant_time_eq(expected.as_bytes(), code.as_bytes()) {
                return Ok(Some(i64::try_from(step).unwrap_or(i64::MAX)));
            }
        }
        Ok(None)
    }

    /// New recovery codes: as shown to the user, and as stored.
    pub fn recovery_codes() -> (Vec<String>, Vec<[u8; 32]>) {
        (0..RECOVERY_CODES)
            .map(|_| {
                let mut bytes = [0u8; 10];
                rand::fill(&mut bytes);
                let plain = base32(&bytes);
                let hash: [u8; 32] = Sha256::digest(plain.as_bytes()).into();
                let shown = plain
                    .as_bytes()
                    .chunks(4)
                    .map(|c| String::from_utf8_lossy(c).to_lowercase())
                    .collect::<Vec<_>>()
                    .join("-");
                (shown, hash)
            })
            .unzip()
    }
}

/// The issuer an authenticator app shows: `JWT_ISSUER` (its host when it is a URL, which the
/// otpauth label cannot hold), else `warp-auth-api`.
fn issuer_label(issuer: Option<&str>) -> String {
    let label = match issuer {
        None => return "warp-auth-api".to_owned(),
        Some(issuer) => match url::Url::parse(issuer) {
            Ok(url) => url.host_str().unwrap_or(issuer).to_owned(),
            Err(_) => issuer.to_owned(),
        },
    };
    let label = label.replace(':', "");
    if label.is_empty() {
        "warp-auth-api".to_owned()
    } else {
        label
    }
}

fn unavailable() -> ApiError {
    ApiError::MfaUnavailable
}

/// 80 bits as 16 base32 characters.
fn base32(bytes: &[u8; 10]) -> String {
    let mut out = String::with_capacity(16);
    let mut buffer: u64 = 0;
    let mut bits = 0;
    for &b in bytes {
        buffer = (buffer << 8) | u64::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32[((buffer >> bits) & 31) as usize] as char);
        }
    }
    out
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mfa() -> Mfa {
        let config = Config::from_vars([(
            "JWT_SECRET",
            "0123456789abcdef0123456789abcdef0123456789abcdef",
        )])
        .unwrap();
        Mfa::new(&config)
    }

    #[test]
    fn codes_parse_as_the_contract_says() {
        assert_eq!(Code::parse(" 123456 "), Some(Code::Totp("123456".into())));
        assert_eq!(Code::parse("12345"), None);
        assert_eq!(Code::parse("12345a"), None);
        let (shown, hashes) = Mfa::recovery_codes();
        assert_eq!(shown.len(), 10);
        assert_eq!(shown[0].len(), 19);
        assert_eq!(Code::parse(&shown[0]), Some(Code::Recovery(hashes[0])));
        assert_eq!(
            Code::parse(&shown[0].to_uppercase().replace('-', "")),
            Some(Code::Recovery(hashes[0]))
        );
        assert_ne!(hashes[0], hashes[1]);
    }

    #[test]
    fn a_sealed_secret_opens_only_with_its_key() {
        let m = mfa();
        let secret = Mfa::new_secret();
        let (sealed, key_id) = m.seal(&secret).unwrap();
        assert!(!sealed.windows(secret.len()).any(|w| w == secret.as_slice()));
        let record = TotpRecord {
            sealed: sealed.clone(),
            key_id: key_id.clone(),
            confirmed: false,
        };
        assert_eq!(m.open(&record).unwrap(), secret);
        // Rotated: the old secret moves to JWT_PREVIOUS_SECRETS and still opens it.
        let rotated = Mfa::new(
            &Config::from_vars([
                (
                    "JWT_SECRET",
                    "another-secret-another-secret-another-secret-12",
                ),
                (
                    "JWT_PREVIOUS_SECRETS",
                    "0123456789abcdef0123456789abcdef0123456789abcdef",
                ),
            ])
            .unwrap(),
        );
        assert_eq!(rotated.open(&record).unwrap(), secret);
        let other = Mfa::new(
            &Config::from_vars([(
                "JWT_SECRET",
                "another-secret-another-secret-another-secret-12",
            )])
            .unwrap(),
        );
        assert!(other.open(&record).is_err());
        let mut tampered = record;
        tampered.sealed[30] ^= 1;
        assert!(m.open(&tampered).is_err());
        // No configured secret: nothing to seal with.
        assert!(
            !Mfa::new(&Config::from_vars::<[(&str, &str); 0], &str, &str>([]).unwrap()).available()
        );
    }

    #[test]
    fn codes_match_the_step_before_now_and_after_only() {
        let m = mfa();
        let secret = Mfa::new_secret();
        let totp = m.totp(&secret, "a@example.com").unwrap();
        let now = 1_800_000_015;
        for (offset, matches) in [
            (-60i64, false),
            (-30, true),
            (0, true),
            (30, true),
            (60, false),
        ] {
            let at = u64::try_from(i64::try_from(now).unwrap() + offset).unwrap();
            let code = totp.generate(at).to_string();
            let step = m.matching_step(&secret, &code, now).unwrap();
            assert_eq!(step.is_some(), matches, "offset {offset}");
            if let Some(step) = step {
                assert_eq!(step, i64::try_from(at / 30).unwrap());
            }
        }
        let issued = Mfa::new(
            &Config::from_vars([
                (
                    "JWT_SECRET",
                    "0123456789abcdef0123456789abcdef0123456789abcdef",
                ),
                ("JWT_ISSUER", "https://auth.example.com"),
            ])
            .unwrap(),
        );
        let (_, uri) = issued.enrollment(&secret, "a@example.com").unwrap();
        assert!(uri.contains("issuer=auth.example.com"), "{uri}");
        let code = totp.generate(now).to_string();
        assert!(issued.matching_step(&secret, &code, now).unwrap().is_some());
        let (base32, uri) = m.enrollment(&secret, "a@example.com").unwrap();
        assert_eq!(base32.len(), 32);
        assert!(uri.starts_with("otpauth://totp/"), "{uri}");
        assert!(uri.contains("issuer=warp-auth-api"), "{uri}");
        assert!(uri.contains(&base32), "{uri}");
    }
}
