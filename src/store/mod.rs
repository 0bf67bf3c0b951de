//! The store: every read and write of the service's data, behind one interface with two
//! implementations, SQLite ([`sqlite`], the default: one process) and PostgreSQL
//! ([`postgres`]: any number of replicas on one database). Only these modules hold SQL.
//!
//! [`Store`] is an enum over the two rather than a trait object: the set of backends is closed,
//! calls need no boxed futures (`/me` makes one per request), and handlers see one concrete type.
//! Each backend returns [`StoreError`], domain outcomes (`EmailTaken`, `LastAdmin`, …) and the
//! database's state (`Busy`, `Unavailable`, `Corrupt`), which `error.rs` maps to HTTP statuses
//! in one `From`.

pub mod postgres;
pub mod sqlite;

use serde::Serialize;
use utoipa::ToSchema;

use crate::audit::{self, Context};
use crate::config::DatabaseLocation;

/// What a store operation can fail with, besides its own result.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The email (in any case) already has an account.
    #[error("email already registered")]
    EmailTaken,
    /// No user with this id.
    #[error("no such user")]
    NotFound,
    /// The change would leave no admin.
    #[error("the last admin")]
    LastAdmin,
    /// The admin acting is no longer an admin (demoted meanwhile).
    #[error("the actor is not an admin")]
    NotAdmin,
    /// The user acting no longer exists (deleted meanwhile).
    #[error("the actor no longer exists")]
    ActorGone,
    /// The user's password (or the user) changed since it was checked.
    #[error("the password changed since it was checked")]
    PasswordChanged,
    /// Locked, full, read-only or unreachable: a passing condition.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database file is damaged.
    #[error("database damaged: {0}")]
    Corrupt(String),
    /// Anything else (a bug, a schema the code does not expect).
    #[error("database: {0}")]
    Internal(String),
}

/// A user's role; read on every request, so a change applies to live tokens at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Member,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }

    /// The role a database column holds.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A user as the API shows it (never with its password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(as = UserOut, example = json!({"id": 1, "email": "alice@example.com", "full_name": "Alice", "role": "member", "created_at": "2026-01-01T12:00:00Z", "email_verified": false, "disabled": false, "mfa_enabled": false}))]
pub struct User {
    #[schema(example = 1)]
    pub id: i64,
    #[schema(example = "alice@example.com")]
    pub email: String,
    /// Null when not given.
    #[schema(example = "Alice", required = true)]
    pub full_name: Option<String>,
    pub role: Role,
    /// RFC 3339, UTC.
    #[schema(example = "2026-01-01T12:00:00Z")]
    pub created_at: String,
    /// Whether the owner of the email proved it (the mailed link, or a password reset).
    #[schema(example = false)]
    pub email_verified: bool,
    /// A disabled account cannot log in, and has no sessions.
    #[schema(example = false)]
    pub disabled: bool,
    /// Whether logins need a second factor (TOTP, or a recovery code).
    #[schema(example = false)]
    pub mfa_enabled: bool,
}

/// What login needs to check a password (and the role its token will carry).
#[derive(Debug)]
pub struct Credentials {
    pub user_id: i64,
    pub password_hash: String,
    pub role: Role,
    pub email_verified: bool,
    pub disabled: bool,
    pub mfa_enabled: bool,
}

/// A new session: its id, its user, the hash of its first refresh token and its end.
#[derive(Debug)]
pub struct NewSession<'a> {
    pub id: &'a str,
    pub user_id: i64,
    pub refresh_hash: &'a [u8; 32],
    /// The password hash the login verified: the session is made only while it is still the
    /// user's.
    pub password_hash: String,
    pub now: u64,
    pub expires_at: u64,
    /// The client's `User-Agent` (at most 256 characters) and address.
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    /// Whether the login passed a second factor; without one, the session is made only while
    /// the user has MFA off (a login racing its confirmation gets no password-only session).
    pub second_factor: bool,
    /// The login's event (`login.succeeded`), written with the session, and its request.
    pub event: audit::Event,
    pub audit: &'a Context,
}

/// A session as its user (or an admin) sees it. Times are unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: String,
    pub created_at: i64,
    /// The login or the last refresh.
    pub last_used_at: i64,
    pub expires_at: i64,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
}

/// Which users a list shows: a page by offset or after an id, optionally those whose email
/// contains `q` (lower-cased).
#[derive(Debug, Clone, Default)]
pub struct UserQuery {
    pub limit: i64,
    pub offset: i64,
    pub after_id: Option<i64>,
    pub q: Option<String>,
}

/// An admin's change to a user: only the fields present change.
#[derive(Debug, Clone, Copy, Default)]
pub struct UserChange {
    pub role: Option<Role>,
    pub disabled: Option<bool>,
}

/// Why the database could not be opened at start: what was being done, and the cause.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {cause}")]
pub struct OpenError {
    context: String,
    cause: String,
}

impl OpenError {
    pub(crate) fn new(context: impl Into<String>, cause: impl std::fmt::Display) -> Self {
        Self {
            context: context.into(),
            cause: cause.to_string(),
        }
    }
}

/// What presenting a refresh token led to.
#[derive(Debug, PartialEq, Eq)]
pub enum Refresh {
    /// The live token of a session: it is now spent and the new one is live.
    Rotated {
        user_id: i64,
        session_id: String,
        role: Role,
        /// The session's end (unix seconds), which refreshing never moves.
        expires_at: u64,
    },
    /// The token spent last, again within the grace window: the live token, sealed under it.
    Grace {
        user_id: i64,
        session_id: String,
        role: Role,
        expires_at: u64,
        sealed_successor: Vec<u8>,
    },
    /// A spent token outside the grace window: its session has been revoked.
    Reused { user_id: i64, session_id: String },
    /// Unknown, or its session has ended.
    Invalid,
}

/// A rotation to attempt: the presented token's hash, its successor's, and the sealed successor.
#[derive(Debug)]
pub struct Rotation {
    pub presented: [u8; 32],
    pub successor: [u8; 32],
    pub sealed_successor: [u8; 32],
    pub now: u64,
    pub grace_seconds: u64,
    /// The order of this rotation in the session's trail of spent tokens (`spent_at`): unix
    /// nanoseconds, so that rotations within one second keep their order and the trail keeps
    /// exactly the most recent ones (rows of version 1 hold seconds, and so come first).
    pub spent_order: i64,
    /// The client's `User-Agent` and address, recorded on the session.
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    /// The request, for the `refresh.reuse_detected` event a reuse writes.
    pub audit: Context,
}

/// One page of users, ordered by id, and how many users the query matches in all.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<User>,
    pub total: i64,
}

/// A signing key as stored: its id, algorithm, private key (DER) and lifetime.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub kid: String,
    pub algorithm: String,
    pub private_der: Vec<u8>,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private part.
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

/// How a new signing key is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddKey {
    /// Only when no key of its algorithm signs yet (the first start, or a changed
    /// `JWT_ALGORITHM`, whose old keys then retire); else the one that does is kept, so replicas
    /// starting together end with one key.
    IfNone,
    /// A rotation: every signing key is retired (`now`), and this one signs.
    Rotate,
}

/// A key of the shared login throttle (a hashed account, or a client address) and its limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleKey {
    pub key: String,
    pub max_failures: u32,
}

/// The two kinds of mailed link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailKind {
    VerifyEmail,
    ResetPassword,
}

impl MailKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MailKind::VerifyEmail => "verify_email",
            MailKind::ResetPassword => "reset_password",
        }
    }

    /// The kind a database column holds.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "verify_email" => Some(MailKind::VerifyEmail),
            "reset_password" => Some(MailKind::ResetPassword),
            _ => None,
        }
    }
}

/// A one-time token to store, by its hash, with its lifetime. The token itself is only in the
/// mail that carries it.
#[derive(Debug, Clone)]
pub struct MailToken {
    pub kind: MailKind,
    pub hash: [u8; 32],
    pub now: u64,
    pub expires_at: u64,
}

/// Whom a mail is for.
#[derive(Debug, Clone)]
pub enum Recipient {
    User(i64),
    /// An email that may have no account (forgot password).
    Email(String),
}

/// What queueing a mail led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// The token is stored (older ones of its kind are dead) and the mail is in the outbox.
    Yes,
    /// The hourly limit of mails of this kind to this user is reached: nothing changed.
    Limited { retry_after: u64 },
    /// No such user: nothing changed.
    NoSuchUser,
}

/// A mail the outbox holds, claimed for one delivery attempt.
#[derive(Debug, Clone)]
pub struct OutboxMail {
    pub id: i64,
    pub user_id: i64,
    pub kind: MailKind,
    pub recipient: String,
    /// This claim's number (1 for the first attempt): the later calls about this attempt name
    /// it, so a worker whose claim was taken over changes nothing.
    pub attempt: u32,
    /// Unix seconds when it was queued.
    pub created_at: i64,
    /// Whether the user's email is verified by now (a queued verification mail is then moot).
    pub email_verified: bool,
}

/// A user's TOTP secret as stored: sealed, with the id of the key that sealed it.
#[derive(Clone)]
pub struct TotpRecord {
    pub sealed: Vec<u8>,
    pub key_id: String,
    pub confirmed: bool,
}

impl std::fmt::Debug for TotpRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpRecord")
            .field("key_id", &self.key_id)
            .field("confirmed", &self.confirmed)
            .finish_non_exhaustive()
    }
}

/// A live second step of a login.
#[derive(Debug, Clone)]
pub struct Challenge {
    pub user_id: i64,
    pub email: String,
    pub role: Role,
    /// The hash the password step verified: the session is made only while it is the user's.
    pub password_hash: String,
    /// Disabled since the password step.
    pub disabled: bool,
}

/// The database handle handlers use. Cheap to clone.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PostgresStore),
}

/// How often SQLite's log is copied into the database file ([`Store::checkpoints`]).
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Calls the same method on whichever backend this is.
macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            Store::Sqlite(s) => s.$method($($arg),*).await,
            Store::Postgres(s) => s.$method($($arg),*).await,
        }
    };
}

impl Store {
    /// Opens the database `location` names, creating and migrating it as needed;
    /// `max_connections` sizes PostgreSQL's pool.
    pub async fn open(
        location: &DatabaseLocation,
        max_connections: usize,
    ) -> Result<Self, OpenError> {
        Ok(match location {
            DatabaseLocation::Postgres(pg) => {
                Store::Postgres(postgres::PostgresStore::open(pg, max_connections).await?)
            }
            sqlite => Store::Sqlite(sqlite::SqliteStore::open(sqlite).await?),
        })
    }

    /// Which backend this is, for logs.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Closes the database (at shutdown). Later calls fail.
    pub async fn close(&self) -> Result<(), StoreError> {
        dispatch!(self.close())
    }

    /// Keeps SQLite's log short from a task of its own, so that commits only append to it and
    /// never wait for its pages to be copied into the database file (the writer does that only
    /// when the log has grown long anyway). Returns at once on PostgreSQL.
    pub async fn checkpoints(self) {
        let Store::Sqlite(sqlite) = self else {
            return;
        };
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned: Option<std::time::Instant> = None;
        loop {
            tick.tick().await;
            // The writer still checkpoints by itself when the log grows long; a failure here is
            // said at most once a minute.
            if let Err(e) = sqlite.checkpoint().await
                && warned.is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(60))
            {
                tracing::warn!(error = %e, "checkpoint of the SQLite log failed");
                warned = Some(std::time::Instant::now());
            }
        }
    }

    /// Answers when the database answers a query that reads its tables (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self.ping())
    }

    // Users.

    pub async fn email_exists(&self, email: String) -> Result<bool, StoreError> {
        dispatch!(self.email_exists(email))
    }

    /// Inserts a user; an email already present (in any case) is `EmailTaken`, also when two
    /// registrations race: the database's unique index decides.
    /// `verification_at`: queue a verification mail in the same transaction, at that time.
    /// Writes `user.registered`.
    pub async fn create_user(
        &self,
        email: String,
        full_name: Option<String>,
        password_hash: String,
        role: Role,
        verification_at: Option<u64>,
        audit: &Context,
    ) -> Result<User, StoreError> {
        dispatch!(self.create_user(
            email,
            full_name,
            password_hash,
            role,
            verification_at,
            audit.clone()
        ))
    }

    pub async fn credentials(&self, email: String) -> Result<Option<Credentials>, StoreError> {
        dispatch!(self.credentials(email))
    }

    /// Replaces a hash made with another cost (after a good login), leaving sessions alone.
    /// `false` when the stored hash is no longer `old` (the password changed meanwhile).
    pub async fn rehash_password(
        &self,
        user_id: i64,
        old: String,
        new: String,
    ) -> Result<bool, StoreError> {
        dispatch!(self.rehash_password(user_id, old, new))
    }

    pub async fn password_hash(&self, user_id: i64) -> Result<Option<String>, StoreError> {
        dispatch!(self.password_hash(user_id))
    }

    /// Sets a new password and ends every session of the user, in one transaction, with
    /// `password.changed`. `false` when the stored hash is no longer `old` (a concurrent change
    /// won).
    pub async fn change_password(
        &self,
        user_id: i64,
        old: String,
        new: String,
        audit: &Context,
    ) -> Result<bool, StoreError> {
        dispatch!(self.change_password(user_id, old, new, audit.clone()))
    }

    /// Sets (or clears, with `None`) the user's full name; the user as stored afterwards.
    pub async fn set_full_name(
        &self,
        user_id: i64,
        full_name: Option<String>,
    ) -> Result<Option<User>, StoreError> {
        dispatch!(self.set_full_name(user_id, full_name))
    }

    /// A page of users, ordered by id (see [`UserQuery`]).
    pub async fn list_users(&self, query: UserQuery) -> Result<Page, StoreError> {
        dispatch!(self.list_users(query))
    }

    pub async fn user(&self, user_id: i64) -> Result<Option<User>, StoreError> {
        dispatch!(self.user(user_id))
    }

    pub async fn find_user_by_email(&self, email: String) -> Result<Option<User>, StoreError> {
        dispatch!(self.find_user_by_email(email))
    }

    /// Changes a user's role and whether it is disabled, as the admin `actor_id`, whose own role
    /// is read in the transaction that writes (`NotAdmin` if it was demoted meanwhile).
    /// Demoting or disabling the last enabled admin is `LastAdmin`, decided in that transaction
    /// too, so two admins acting on each other at once cannot leave none. Disabling ends every
    /// session of the user in the same transaction. Writes `admin.user_updated` with what
    /// changed (`{from, to}`), when something did.
    pub async fn update_user(
        &self,
        actor_id: i64,
        user_id: i64,
        change: UserChange,
        audit: &Context,
    ) -> Result<User, StoreError> {
        dispatch!(self.update_user(actor_id, user_id, change, audit.clone()))
    }

    /// Makes a user an admin (the `create-admin` command: the operator needs no role).
    pub async fn promote(&self, user_id: i64, audit: &Context) -> Result<User, StoreError> {
        dispatch!(self.promote(user_id, audit.clone()))
    }

    /// Deletes a user and its sessions: the user itself when `actor_id` is `None`, else as that
    /// admin (checked as in `set_role`). Unknown is `NotFound` (`ActorGone` when the user deletes
    /// itself: its token is dead); the last admin is `LastAdmin`. Writes `admin.user_deleted`
    /// (or `user.deleted`).
    pub async fn delete_user(
        &self,
        actor_id: Option<i64>,
        user_id: i64,
        audit: &Context,
    ) -> Result<(), StoreError> {
        dispatch!(self.delete_user(actor_id, user_id, audit.clone()))
    }

    /// Marks the user's email verified now, if it is not yet (an admin made from the command
    /// line: the operator vouches for it), with `email.verified`.
    pub async fn mark_email_verified(
        &self,
        user_id: i64,
        now: u64,
        audit: &Context,
    ) -> Result<(), StoreError> {
        dispatch!(self.mark_email_verified(user_id, now, audit.clone()))
    }

    // Mail.

    /// Queues a mail of `kind` for the recipient and kills the user's live tokens of that kind
    /// (older links stop working), in one transaction, unless `hourly_limit` mails of that kind
    /// were queued for the user within the last hour (then nothing changes). Whether a
    /// verification is still needed is the caller's check. A reset mail writes
    /// `password.reset_requested`.
    pub async fn queue_mail(
        &self,
        to: Recipient,
        kind: MailKind,
        now: u64,
        hourly_limit: u32,
        audit: &Context,
    ) -> Result<Queued, StoreError> {
        dispatch!(self.queue_mail(to, kind, now, hourly_limit, audit.clone()))
    }

    /// Uses a verification token: the email is verified (`email.verified`) and the user (as it
    /// is now) comes back; `None` when the token is unknown, used, replaced or expired.
    pub async fn verify_email(
        &self,
        hash: [u8; 32],
        now: u64,
        audit: &Context,
    ) -> Result<Option<User>, StoreError> {
        dispatch!(self.verify_email(hash, now, audit.clone()))
    }

    /// The user (id and email) a live reset token is for (checked before the new password is
    /// hashed).
    pub async fn reset_token_user(
        &self,
        hash: [u8; 32],
        now: u64,
    ) -> Result<Option<(i64, String)>, StoreError> {
        dispatch!(self.reset_token_user(hash, now))
    }

    /// Uses a reset token, in one transaction: the password is set, every session and mailed
    /// token of the user ends, and the email counts as verified (`password.reset`). The user's
    /// id; `None` when the token is unknown, used, replaced or expired.
    pub async fn reset_password(
        &self,
        hash: [u8; 32],
        new_password_hash: String,
        now: u64,
        audit: &Context,
    ) -> Result<Option<i64>, StoreError> {
        dispatch!(self.reset_password(hash, new_password_hash, now, audit.clone()))
    }

    /// Claims the next due mail for one delivery attempt: it is not due again until
    /// `now + lease` (a worker that dies mid-send leaves it to the next one). On PostgreSQL rows
    /// another replica holds are skipped, so each mail is sent by one.
    pub async fn claim_mail(&self, now: u64, lease: u64) -> Result<Option<OutboxMail>, StoreError> {
        dispatch!(self.claim_mail(now, lease))
    }

    /// Stores the token a claimed mail will carry, as the user's only live one of its kind, if
    /// the claim is still this attempt's; `false` (nothing stored) otherwise.
    pub async fn issue_mail_token(
        &self,
        mail: &OutboxMail,
        token: MailToken,
    ) -> Result<bool, StoreError> {
        dispatch!(self.issue_mail_token(mail.id, mail.attempt, mail.user_id, token))
    }

    /// The mail was handed to the SMTP server.
    pub async fn mail_sent(&self, mail: &OutboxMail, now: u64) -> Result<(), StoreError> {
        dispatch!(self.mail_sent(mail.id, mail.attempt, now))
    }

    /// The attempt failed: the mail is due again at `retry_at`.
    pub async fn mail_failed(
        &self,
        mail: &OutboxMail,
        retry_at: u64,
        error: String,
    ) -> Result<(), StoreError> {
        dispatch!(self.mail_failed(mail.id, mail.attempt, retry_at, error))
    }

    /// The mail will not be sent (moot, too old, or refused for good by the SMTP server).
    pub async fn mail_dropped(
        &self,
        mail: &OutboxMail,
        now: u64,
        reason: String,
    ) -> Result<(), StoreError> {
        dispatch!(self.mail_dropped(mail.id, mail.attempt, now, reason))
    }

    /// Housekeeping: expired tokens, and outbox rows done for more than a day, go.
    pub async fn purge_mail(&self, now: u64) -> Result<u64, StoreError> {
        dispatch!(self.purge_mail(now))
    }

    /// How many mails the outbox holds that are neither sent nor dropped (the metrics read it at
    /// each scrape: a count over the partial index of queued rows).
    pub async fn pending_mail(&self) -> Result<u64, StoreError> {
        dispatch!(self.pending_mail())
    }

    // The second factor.

    /// Stores a pending TOTP secret (replacing an earlier pending one); `false` when MFA is
    /// already on.
    pub async fn set_pending_totp(
        &self,
        user_id: i64,
        sealed: Vec<u8>,
        key_id: String,
        now: u64,
    ) -> Result<bool, StoreError> {
        dispatch!(self.set_pending_totp(user_id, sealed, key_id, now))
    }

    pub async fn totp(&self, user_id: i64) -> Result<Option<TotpRecord>, StoreError> {
        dispatch!(self.totp(user_id))
    }

    /// Turns MFA on, in one transaction: the pending secret is confirmed with the code of `step`,
    /// the recovery codes are set, and every session of the user but `keep` ends. `false` when
    /// nothing is pending (or it was confirmed meanwhile).
    /// (`sealed` is the pending secret the code was checked against: one enrolled meanwhile in
    /// another tab is not confirmed by it.) Writes `mfa.enabled`.
    #[allow(clippy::too_many_arguments)]
    pub async fn confirm_totp(
        &self,
        user_id: i64,
        sealed: Vec<u8>,
        step: i64,
        codes: Vec<[u8; 32]>,
        keep: String,
        now: u64,
        audit: &Context,
    ) -> Result<bool, StoreError> {
        dispatch!(self.confirm_totp(user_id, sealed, step, codes, keep, now, audit.clone()))
    }

    /// Seals a secret again under the current key (after `JWT_SECRET` was rotated), unless it
    /// changed meanwhile.
    pub async fn reseal_totp(
        &self,
        user_id: i64,
        old: Vec<u8>,
        sealed: Vec<u8>,
        key_id: String,
    ) -> Result<(), StoreError> {
        dispatch!(self.reseal_totp(user_id, old, sealed, key_id))
    }

    /// Accepts the code of time step `step` once: `false` when a code of this step or a later
    /// one was accepted already (a replay, on any replica), or MFA is off.
    pub async fn accept_totp_step(&self, user_id: i64, step: i64) -> Result<bool, StoreError> {
        dispatch!(self.accept_totp_step(user_id, step))
    }

    /// Spends an unused recovery code; `false` when it is unknown or used.
    pub async fn use_recovery_code(
        &self,
        user_id: i64,
        hash: [u8; 32],
        now: u64,
    ) -> Result<bool, StoreError> {
        dispatch!(self.use_recovery_code(user_id, hash, now))
    }

    /// Replaces the recovery codes (`mfa.recovery_codes_replaced`); `false` when MFA is off.
    pub async fn replace_recovery_codes(
        &self,
        user_id: i64,
        codes: Vec<[u8; 32]>,
        audit: &Context,
    ) -> Result<bool, StoreError> {
        dispatch!(self.replace_recovery_codes(user_id, codes, audit.clone()))
    }

    /// Turns MFA off (its secret, codes and pending logins go), with `mfa.disabled`; `false`
    /// when it was not on.
    pub async fn disable_mfa(&self, user_id: i64, audit: &Context) -> Result<bool, StoreError> {
        dispatch!(self.disable_mfa(user_id, audit.clone()))
    }

    /// Starts the second step of a login.
    pub async fn create_challenge(
        &self,
        hash: [u8; 32],
        user_id: i64,
        password_hash: String,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        dispatch!(self.create_challenge(hash, user_id, password_hash, expires_at))
    }

    /// Claims one guess at a live challenge (not expired, fewer than `max_guesses` so far) and
    /// counts it, in one statement, so racing guesses cannot get past the limit.
    pub async fn claim_guess(
        &self,
        hash: [u8; 32],
        now: u64,
        max_guesses: u32,
    ) -> Result<Option<Challenge>, StoreError> {
        dispatch!(self.claim_guess(hash, now, max_guesses))
    }

    /// Uses a challenge up after a right code: `false` when a racing request used it.
    pub async fn take_challenge(&self, hash: [u8; 32]) -> Result<bool, StoreError> {
        dispatch!(self.take_challenge(hash))
    }

    /// Housekeeping: expired challenges go.
    pub async fn purge_challenges(&self, now: u64) -> Result<u64, StoreError> {
        dispatch!(self.purge_challenges(now))
    }

    // The audit log.

    /// Writes an event that records no other change (a failed or throttled login, a wrong
    /// second-factor code).
    pub async fn record_event(
        &self,
        event: audit::Event,
        audit: &Context,
    ) -> Result<(), StoreError> {
        dispatch!(self.record_event(event, audit.clone()))
    }

    /// A page of events, newest first (see [`audit::Query`]).
    pub async fn audit_events(
        &self,
        query: audit::Query,
    ) -> Result<Vec<audit::AuditEvent>, StoreError> {
        dispatch!(self.audit_events(query))
    }

    /// Housekeeping: events from before `before` (unix seconds) go, at most `batch` of them (a
    /// long backlog goes over several rounds, so no round holds the writer long). How many went.
    pub async fn purge_audit(&self, before: u64, batch: u32) -> Result<u64, StoreError> {
        dispatch!(self.purge_audit(before, batch))
    }

    // Signing keys.

    /// Every signing key (retired ones included, until housekeeping removes them).
    pub async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        dispatch!(self.signing_keys())
    }

    /// Adds a signing key in one transaction (see [`AddKey`]); the key that signs afterwards.
    /// Writes `key.rotated`, or `key.created` when a first key (of its algorithm) is made.
    pub async fn add_signing_key(
        &self,
        key: StoredKey,
        how: AddKey,
        audit: &Context,
    ) -> Result<StoredKey, StoreError> {
        dispatch!(self.add_signing_key(key, how, audit.clone()))
    }

    /// Housekeeping: keys retired before `before` go (their last tokens have expired).
    pub async fn purge_signing_keys(&self, before: i64) -> Result<u64, StoreError> {
        dispatch!(self.purge_signing_keys(before))
    }

    // Sessions.

    /// Creates a session for a user that still exists and still has the password hash the login
    /// verified (else `PasswordChanged`), with the login's event.
    pub async fn create_session(&self, s: NewSession<'_>) -> Result<(), StoreError> {
        dispatch!(self.create_session(s))
    }

    /// The user of a live session: the check behind every authenticated request.
    pub async fn session_user(
        &self,
        session_id: String,
        user_id: i64,
        now: u64,
    ) -> Result<Option<User>, StoreError> {
        dispatch!(self.session_user(session_id, user_id, now))
    }

    /// Exchanges a refresh token in one transaction, so that two racing exchanges of one token
    /// are serialised: the first rotates, the second finds a just-spent token (grace) and never
    /// starts a second chain. Reuse after the grace window deletes the session and writes
    /// `refresh.reuse_detected`.
    pub async fn refresh(&self, r: Rotation) -> Result<Refresh, StoreError> {
        dispatch!(self.refresh(r))
    }

    /// Ends one session (logout): its access and refresh tokens stop working at once
    /// (`session.revoked`).
    pub async fn delete_session(
        &self,
        session_id: String,
        audit: &Context,
    ) -> Result<(), StoreError> {
        dispatch!(self.delete_session(session_id, audit.clone()))
    }

    /// The user's live sessions, newest first.
    pub async fn sessions_of(
        &self,
        user_id: i64,
        now: u64,
    ) -> Result<Vec<SessionInfo>, StoreError> {
        dispatch!(self.sessions_of(user_id, now))
    }

    /// Ends one session of the user (`session.revoked`); `false` when the user has no session
    /// of this id.
    pub async fn end_session(
        &self,
        user_id: i64,
        session_id: String,
        audit: &Context,
    ) -> Result<bool, StoreError> {
        dispatch!(self.end_session(user_id, session_id, audit.clone()))
    }

    /// Ends every session of the user but `keep` (`session.revoked`, when any ended); how many
    /// ended.
    pub async fn end_sessions(
        &self,
        user_id: i64,
        keep: Option<String>,
        audit: &Context,
    ) -> Result<u64, StoreError> {
        dispatch!(self.end_sessions(user_id, keep, audit.clone()))
    }

    /// Housekeeping: deletes sessions past their end and forgets sealed successors whose grace
    /// window is over. How many sessions went.
    pub async fn purge_expired_sessions(
        &self,
        now: u64,
        grace_seconds: u64,
    ) -> Result<usize, StoreError> {
        dispatch!(self.purge_expired_sessions(now, grace_seconds))
    }
}
