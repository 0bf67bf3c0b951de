//! Sessions: what a login starts, the token pair it answers with, and the rotation of refresh
//! tokens with its grace window and reuse detection. Handlers call this; it calls the store.
//!
//! A session is one row in the store. An access token names it (`sid`) and is accepted only
//! while the row exists, so ending a session, a password change or reuse detection revoke at
//! once. A refresh token is 256 random bits, stored only as SHA-256; each use spends it.

use crate::AppState;
use crate::audit::{self, Context};
use crate::error::ApiError;
use crate::store::{NewSession, Refresh, Role, Rotation, Store, StoreError};
use crate::tokens::{self, OpaqueToken};

/// How long a just-spent refresh token still gets the live pair of its session (two tabs
/// refreshing at once, a retry after a lost response).
pub const REFRESH_GRACE_SECONDS: u64 = 10;

/// A new access token and the session's live refresh token.
#[derive(Debug)]
pub struct TokenPair {
    pub access_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    pub refresh_token: String,
    /// Seconds until the session ends (the refresh cookie's `Max-Age`).
    pub session_remaining: u64,
}

/// The client as a session records it, at login and at each refresh.
#[derive(Debug, Clone, Default)]
pub struct Client {
    /// `User-Agent`, at most [`USER_AGENT_MAX`] characters.
    pub user_agent: Option<String>,
    pub ip: Option<String>,
}

/// The longest `User-Agent` a session keeps (longer ones are cut).
pub const USER_AGENT_MAX: usize = 256;

impl Client {
    /// From the raw `User-Agent` header (any bytes: what is not UTF-8 is replaced, never refused)
    /// and the client's address.
    pub fn new(user_agent: Option<&[u8]>, ip: Option<std::net::IpAddr>) -> Self {
        Self {
            user_agent: user_agent.map(|raw| {
                String::from_utf8_lossy(raw)
                    .chars()
                    .take(USER_AGENT_MAX)
                    .collect()
            }),
            ip: ip.map(|ip| ip.to_string()),
        }
    }
}

/// Which second factor a login passed, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecondFactor {
    None,
    Totp,
    RecoveryCode,
}

impl SecondFactor {
    /// Its name in the audit log (`totp`, `recovery_code`); none for a password-only login.
    pub fn name(self) -> Option<&'static str> {
        match self {
            SecondFactor::None => None,
            SecondFactor::Totp => Some("totp"),
            SecondFactor::RecoveryCode => Some("recovery_code"),
        }
    }
}

/// Starts a session for the user, if `verified_hash` is still its password hash (else
/// `InvalidCredentials`: a password change won the race with this login), and returns its first
/// pair. The session is written with its `login.succeeded` event.
pub async fn start(
    state: &AppState,
    user_id: i64,
    role: Role,
    verified_hash: String,
    audit: &Context,
    second_factor: SecondFactor,
) -> Result<TokenPair, ApiError> {
    let session_id = tokens::new_session_id();
    let refresh = OpaqueToken::generate();
    let now = tokens::now_seconds();
    let expires_at = now + u64::from(state.config.refresh_token_days) * 86_400;
    let event = audit::Event::new(audit::Kind::LoginSucceeded, Some(user_id))
        .with("session_id", session_id.as_str())
        .with("second_factor", second_factor.name());
    state
        .store
        .create_session(NewSession {
            id: &session_id,
            user_id,
            refresh_hash: &refresh.hash,
            password_hash: verified_hash,
            now,
            expires_at,
            user_agent: audit.client.user_agent.clone(),
            ip: audit.client.ip.clone(),
            second_factor: second_factor != SecondFactor::None,
            event,
            audit,
        })
        .await?;
    pair(state, user_id, role, &session_id, refresh.token, expires_at)
}

/// Exchanges a presented refresh token for a new pair of the same session. A spent token
/// presented again revokes its session, except within [`REFRESH_GRACE_SECONDS`] of its use, when
/// it gets the live pair again.
pub async fn rotate(
    state: &AppState,
    presented: &str,
    audit: Context,
) -> Result<TokenPair, ApiError> {
    let Some(presented) = OpaqueToken::parse(presented) else {
        state.metrics.refresh(&Refresh::Invalid);
        return Err(ApiError::InvalidToken);
    };
    let successor = OpaqueToken::generate();
    let outcome = state
        .store
        .refresh(Rotation {
            presented: presented.hash,
            successor: successor.hash,
            sealed_successor: presented.seal(&successor),
            now: tokens::now_seconds(),
            grace_seconds: REFRESH_GRACE_SECONDS,
            spent_order: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
            user_agent: audit.client.user_agent.clone(),
            ip: audit.client.ip.clone(),
            audit,
        })
        .await?;
    state.metrics.refresh(&outcome);
    match outcome {
        Refresh::Rotated {
            user_id,
            session_id,
            role,
            expires_at,
        } => pair(
            state,
            user_id,
            role,
            &session_id,
            successor.token,
            expires_at,
        ),
        Refresh::Grace {
            user_id,
            session_id,
            role,
            expires_at,
            sealed_successor,
        } => {
            let live = presented.unseal(&sealed_successor).ok_or_else(|| {
                ApiError::Internal("a sealed refresh token of the wrong size".into())
            })?;
            pair(state, user_id, role, &session_id, live.token, expires_at)
        }
        Refresh::Reused {
            user_id,
            session_id,
        } => {
            tracing::warn!(
                user_id,
                session_id,
                "a spent refresh token was presented again: session revoked"
            );
            Err(ApiError::InvalidToken)
        }
        Refresh::Invalid => Err(ApiError::InvalidToken),
    }
}

/// Housekeeping: sessions past their end go, and sealed successors past their grace window are
/// forgotten. How many sessions went.
pub async fn purge_expired(store: &Store) -> Result<usize, StoreError> {
    store
        .purge_expired_sessions(tokens::now_seconds(), REFRESH_GRACE_SECONDS)
        .await
}

fn pair(
    state: &AppState,
    user_id: i64,
    role: Role,
    session_id: &str,
    refresh_token: String,
    session_expires_at: u64,
) -> Result<TokenPair, ApiError> {
    Ok(TokenPair {
        access_token: state.tokens.issue(user_id, session_id, role)?,
        expires_in: state.tokens.ttl_seconds(),
        refresh_token,
        session_remaining: session_expires_at.saturating_sub(tokens::now_seconds()),
    })
}
