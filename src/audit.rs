//! The audit log: what happened to accounts, sessions, second factors and keys, by whom and from
//! where.
//!
//! A change writes its event in its own transaction (the store methods that change something take
//! the request's [`Context`] and add the event before they commit), so there is no change without
//! its event and no event without its change. The few events that record no change of the
//! service's data (a failed or throttled login, a wrong second-factor code) are written on their
//! own. Each event is also one structured log line, written once it is committed.
//!
//! Never a secret: no password, token, code or key material goes into an event, and a failed
//! login for an email with no account stores no email (only `user_id: null`). Events outlive the
//! users they name; housekeeping removes those older than `AUDIT_RETENTION_DAYS`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::sessions::Client;

/// The kinds of event, as the `type` field names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    UserRegistered,
    UserDeleted,
    LoginSucceeded,
    LoginFailed,
    LoginThrottled,
    LoginMfaFailed,
    PasswordChanged,
    PasswordResetRequested,
    PasswordReset,
    EmailVerified,
    SessionRevoked,
    RefreshReuseDetected,
    MfaEnabled,
    MfaDisabled,
    MfaRecoveryCodesReplaced,
    AdminUserUpdated,
    AdminUserDeleted,
    KeyCreated,
    KeyRotated,
}

impl Kind {
    /// Every kind, in the order the contract lists them (then the service's own).
    pub const ALL: &[Kind] = &[
        Kind::UserRegistered,
        Kind::LoginSucceeded,
        Kind::LoginFailed,
        Kind::LoginThrottled,
        Kind::LoginMfaFailed,
        Kind::PasswordChanged,
        Kind::PasswordResetRequested,
        Kind::PasswordReset,
        Kind::EmailVerified,
        Kind::SessionRevoked,
        Kind::RefreshReuseDetected,
        Kind::MfaEnabled,
        Kind::MfaDisabled,
        Kind::AdminUserUpdated,
        Kind::AdminUserDeleted,
        Kind::KeyRotated,
        Kind::UserDeleted,
        Kind::MfaRecoveryCodesReplaced,
        Kind::KeyCreated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::UserRegistered => "user.registered",
            Kind::UserDeleted => "user.deleted",
            Kind::LoginSucceeded => "login.succeeded",
            Kind::LoginFailed => "login.failed",
            Kind::LoginThrottled => "login.throttled",
            Kind::LoginMfaFailed => "login.mfa_failed",
            Kind::PasswordChanged => "password.changed",
            Kind::PasswordResetRequested => "password.reset_requested",
            Kind::PasswordReset => "password.reset",
            Kind::EmailVerified => "email.verified",
            Kind::SessionRevoked => "session.revoked",
            Kind::RefreshReuseDetected => "refresh.reuse_detected",
            Kind::MfaEnabled => "mfa.enabled",
            Kind::MfaDisabled => "mfa.disabled",
            Kind::MfaRecoveryCodesReplaced => "mfa.recovery_codes_replaced",
            Kind::AdminUserUpdated => "admin.user_updated",
            Kind::AdminUserDeleted => "admin.user_deleted",
            Kind::KeyCreated => "key.created",
            Kind::KeyRotated => "key.rotated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Kind::ALL.iter().copied().find(|k| k.as_str() == s)
    }
}

/// Who acts, and from where: the request's side of every event it writes.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The authenticated user making the change (the user itself, or an admin); `None` for an
    /// anonymous request (register, login, a mailed link) and for the command line.
    pub actor_id: Option<i64>,
    /// The client's address and `User-Agent` (at most 256 characters).
    pub client: Client,
    /// The request's id (`X-Request-Id`); `None` outside a request.
    pub request_id: Option<String>,
}

impl Context {
    /// Outside any request: the command line, housekeeping.
    pub fn system() -> Self {
        Self::default()
    }

    /// The same request, acted in by the authenticated user `actor_id`.
    pub fn by(&self, actor_id: i64) -> Self {
        Self {
            actor_id: Some(actor_id),
            ..self.clone()
        }
    }
}

/// An event to write: its kind, the user it is about, and what else is worth knowing (never a
/// secret).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: Kind,
    pub user_id: Option<i64>,
    pub detail: Map<String, Value>,
}

impl Event {
    pub fn new(kind: Kind, user_id: Option<i64>) -> Self {
        Self {
            kind,
            user_id,
            detail: Map::new(),
        }
    }

    /// Adds one detail.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.detail.insert(key.to_owned(), value.into());
        self
    }

    /// The detail as JSON text (the column's value).
    pub fn detail_json(&self) -> String {
        Value::Object(self.detail.clone()).to_string()
    }

    /// The event's log line (after its transaction committed). Outside the request's span on
    /// SQLite's writer thread, so the line names the request itself.
    pub fn log(&self, context: &Context) {
        tracing::info!(
            audit = self.kind.as_str(),
            user_id = self.user_id,
            actor_id = context.actor_id,
            ip = context.client.ip.as_deref(),
            user_agent = context.client.user_agent.as_deref(),
            request_id = context.request_id.as_deref(),
            detail = %self.detail_json(),
            "audit event"
        );
    }
}

/// Writes an event that records no change of its own (a failed login, a wrong code). Best
/// effort: the answer the request gets does not depend on it, and a failure is logged.
pub async fn record(store: &crate::store::Store, event: Event, context: &Context) {
    let kind = event.kind;
    if let Err(e) = store.record_event(event, context).await {
        tracing::warn!(error = %e, audit = kind.as_str(), "an audit event could not be written");
    }
}

/// A refused login (`login.throttled`): written at most once a minute per account and per client
/// address ([`THROTTLED_EVENT_EVERY`]; an address as the throttle counts it, IPv6 by its /64),
/// with the user's id when the email has an account (never the email itself).
pub async fn login_throttled(
    state: &crate::AppState,
    context: &Context,
    email: &str,
    retry_after: u64,
) {
    let address = context
        .client
        .ip
        .as_deref()
        .and_then(|ip| ip.parse().ok())
        .map(|ip| format!("address:{}", crate::throttle::address_key(ip)))
        .unwrap_or_default();
    let account = format!("account:{email}");
    if !state
        .throttled_events
        .admit(&[&account, &address], Instant::now())
    {
        return;
    }
    let user_id = match state.store.credentials(email.to_owned()).await {
        Ok(found) => found.map(|c| c.user_id),
        Err(e) => {
            tracing::warn!(error = %e, "login.throttled: the account could not be looked up");
            None
        }
    };
    let event = Event::new(Kind::LoginThrottled, user_id).with("retry_after", retry_after);
    record(&state.store, event, context).await;
}

/// A failed login (`login.failed`) and why: `invalid` (unknown email or wrong password: the two
/// are not told apart here either, and an unknown email is stored as `user_id: null`),
/// `disabled`, `unverified`, or `password_changed` (a change won the race with the login).
pub fn login_failed(user_id: Option<i64>, reason: &str) -> Event {
    Event::new(Kind::LoginFailed, user_id).with("reason", reason)
}

// The events both store backends write alike.

/// A deletion: by an admin (`admin.user_deleted`), or by the user itself (`user.deleted`).
pub fn deleted(actor_id: Option<i64>, user_id: i64) -> Event {
    let kind = if actor_id.is_some() {
        Kind::AdminUserDeleted
    } else {
        Kind::UserDeleted
    };
    Event::new(kind, Some(user_id))
}

/// An admin's change of a user (`admin.user_updated`): each field that changed as `{from, to}`,
/// and how many sessions disabling ended. `None` when nothing changed.
pub fn user_updated(
    user_id: i64,
    role: (crate::store::Role, crate::store::Role),
    disabled: (bool, bool),
    sessions_ended: u64,
) -> Option<Event> {
    let mut event = Event::new(Kind::AdminUserUpdated, Some(user_id));
    if role.0 != role.1 {
        event = event.with(
            "role",
            serde_json::json!({"from": role.0.as_str(), "to": role.1.as_str()}),
        );
    }
    if disabled.0 != disabled.1 {
        event = event.with(
            "disabled",
            serde_json::json!({"from": disabled.0, "to": disabled.1}),
        );
    }
    if sessions_ended > 0 {
        event = event.with("sessions_ended", sessions_ended);
    }
    (!event.detail.is_empty()).then_some(event)
}

/// Sessions ended by their user or an admin (`session.revoked`): one by its id, or how many.
pub fn sessions_revoked(user_id: i64, reason: &str, session_id: Option<&str>, count: u64) -> Event {
    let event = Event::new(Kind::SessionRevoked, Some(user_id)).with("reason", reason);
    match session_id {
        Some(id) => event.with("session_id", id),
        None => event.with("sessions", count),
    }
}

/// A new signing key: `key.rotated` (`keys rotate`), or `key.created` (the first key of its
/// algorithm). Its id and algorithm, never its private part.
pub fn key_added(how: crate::store::AddKey, key: &crate::store::StoredKey) -> Event {
    let kind = match how {
        crate::store::AddKey::Rotate => Kind::KeyRotated,
        crate::store::AddKey::IfNone => Kind::KeyCreated,
    };
    Event::new(kind, None)
        .with("kid", key.kid.as_str())
        .with("algorithm", key.algorithm.as_str())
}

/// A password changed by its user: `password.changed`, with how many sessions ended.
pub fn password_changed(user_id: i64, sessions_ended: u64) -> Event {
    Event::new(Kind::PasswordChanged, Some(user_id)).with("sessions_ended", sessions_ended)
}

/// A password set with a mailed link: `password.reset` (with how many sessions ended), and
/// `email.verified` when the address was not verified before (the link proved it).
pub fn password_reset(user_id: i64, sessions_ended: u64, newly_verified: bool) -> Vec<Event> {
    let mut events =
        vec![Event::new(Kind::PasswordReset, Some(user_id)).with("sessions_ended", sessions_ended)];
    if newly_verified {
        events.push(email_verified(user_id, "password_reset"));
    }
    events
}

/// An address verified: by its mailed link (`link`), a password reset (`password_reset`) or the
/// operator (`create-admin`).
pub fn email_verified(user_id: i64, by: &str) -> Event {
    Event::new(Kind::EmailVerified, Some(user_id)).with("by", by)
}

/// A mail queued: a reset mail is `password.reset_requested` (a verification mail is no event;
/// its use is).
pub fn mail_queued(kind: crate::store::MailKind, user_id: i64) -> Option<Event> {
    match kind {
        crate::store::MailKind::ResetPassword => {
            Some(Event::new(Kind::PasswordResetRequested, Some(user_id)))
        }
        crate::store::MailKind::VerifyEmail => None,
    }
}

/// Why sessions were ended: by their own user (`user`) or by an admin (`admin`).
pub fn revoked_by(audit: &Context, user_id: i64) -> &'static str {
    match audit.actor_id {
        Some(actor) if actor != user_id => "admin",
        _ => "user",
    }
}

/// An event as stored, and as `GET /api/v1/admin/audit` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[schema(example = json!({"id": 42, "at": "2026-01-01T12:00:00Z", "type": "login.failed", "user_id": 7, "actor_id": null, "ip": "192.0.2.10", "user_agent": "HTTPie/3.2.4", "request_id": "3f2c9a6e5b1d4c8f9a0b1c2d3e4f5a6b", "detail": {"reason": "invalid"}}))]
pub struct AuditEvent {
    #[schema(example = 42)]
    pub id: i64,
    /// RFC 3339, UTC.
    #[schema(example = "2026-01-01T12:00:00Z")]
    pub at: String,
    /// `user.registered`, `login.succeeded`, `login.failed`, `login.throttled`,
    /// `login.mfa_failed`, `password.changed`, `password.reset_requested`, `password.reset`,
    /// `email.verified`, `session.revoked`, `refresh.reuse_detected`, `mfa.enabled`,
    /// `mfa.disabled`, `admin.user_updated`, `admin.user_deleted`, `key.rotated`,
    /// `user.deleted`, `mfa.recovery_codes_replaced` or `key.created`.
    #[serde(rename = "type")]
    #[schema(example = "login.failed")]
    pub kind: String,
    /// The user the event is about (null: none, or an email with no account).
    #[schema(required = true)]
    pub user_id: Option<i64>,
    /// Who acted: the user itself or an admin (null: nobody signed in, or the command line).
    #[schema(required = true)]
    pub actor_id: Option<i64>,
    /// The client's address.
    #[schema(required = true)]
    pub ip: Option<String>,
    #[schema(required = true)]
    pub user_agent: Option<String>,
    /// The `X-Request-Id` of the request that wrote it.
    #[schema(required = true)]
    pub request_id: Option<String>,
    /// What else is known (e.g. `reason`, `session_id`, changes as `{from, to}`); never a secret.
    #[schema(value_type = Object)]
    pub detail: Value,
}

/// Which events a page shows: newest first, before `before_id`, of one user and of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    pub user_id: Option<i64>,
    pub kind: Option<Kind>,
    pub before_id: Option<i64>,
    pub limit: i64,
}

/// How often one account or one client address may write a `login.throttled` event: a flood of
/// refused attempts (cheap to send, each refused without a password check) must not turn into a
/// flood of writes. Every refusal is still logged.
pub const THROTTLED_EVENT_EVERY: Duration = Duration::from_secs(60);

/// Keys remembered by [`Coalesce`] before it stops admitting new ones (until the old ones age).
const COALESCE_CAPACITY: usize = 10_000;

/// Admits at most one event per key and period: the `login.throttled` events of one account or
/// one address. Bounded: a full table forgets its older half (so a flood cannot keep other keys'
/// events out; at worst a forgotten key writes again within the period).
#[derive(Debug)]
pub struct Coalesce {
    period: Duration,
    last: Mutex<HashMap<String, Instant>>,
}

impl Coalesce {
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an event for these keys may be written now: none of them had one within the
    /// period. If so, each is marked as having had one.
    pub fn admit(&self, keys: &[&str], now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let recent = |at: &Instant| now.saturating_duration_since(*at) < self.period;
        if keys.iter().any(|k| last.get(*k).is_some_and(recent)) {
            return false;
        }
        if last.len() + keys.len() > COALESCE_CAPACITY {
            last.retain(|_, at| recent(at));
            if last.len() + keys.len() > COALESCE_CAPACITY {
                let mut times: Vec<Instant> = last.values().copied().collect();
                let half = times.len() / 2;
                let (_, median, _) = times.select_nth_unstable(half);
                let median = *median;
                last.retain(|_, at| *at > median);
            }
        }
        for key in keys {
            last.insert((*key).to_owned(), now);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_read_back_from_their_names() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(*kind));
        }
        assert_eq!(Kind::parse("login"), None);
        let mut names: Vec<_> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Kind::ALL.len());
    }

    #[test]
    fn detail_is_a_json_object() {
        let event = Event::new(Kind::SessionRevoked, Some(3))
            .with("session_id", "abc")
            .with("sessions", 2);
        assert_eq!(event.detail_json(), r#"{"session_id":"abc","sessions":2}"#);
        assert_eq!(Event::new(Kind::LoginFailed, None).detail_json(), "{}");
    }

    #[test]
    fn one_event_per_key_and_period() {
        let c = Coalesce::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(c.admit(&["a@x.org", "192.0.2.1"], t0));
        // Either key seen within the period: not again.
        assert!(!c.admit(&["a@x.org", "192.0.2.2"], t0 + Duration::from_secs(1)));
        assert!(!c.admit(&["b@x.org", "192.0.2.1"], t0 + Duration::from_secs(59)));
        // Both new: yes.
        assert!(c.admit(&["b@x.org", "192.0.2.3"], t0 + Duration::from_secs(2)));
        // After the period: yes again.
        assert!(c.admit(&["a@x.org", "192.0.2.1"], t0 + Duration::from_secs(61)));
    }

    #[test]
    fn a_full_table_forgets_its_older_half_and_stays_bounded() {
        let c = Coalesce::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..COALESCE_CAPACITY {
            let at = t0 + Duration::from_millis(i as u64);
            assert!(c.admit(&[format!("k{i}").as_str()], at));
        }
        let later = t0 + Duration::from_secs(20);
        // A new key is still admitted (a flood cannot keep others' events out)...
        assert!(c.admit(&["new"], later));
        assert!(c.last.lock().unwrap().len() <= COALESCE_CAPACITY / 2 + 1);
        // ...and the newer half is still remembered.
        let newest = format!("k{}", COALESCE_CAPACITY - 1);
        assert!(!c.admit(&[newest.as_str()], later));
    }
}
