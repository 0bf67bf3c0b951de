//! Mail on SQLite: the one-time tokens of mailed links, and the outbox the mail worker sends from.
//!
//! Every write runs on the single writer connection, in an IMMEDIATE transaction, so the hourly
//! count and the insert it allows cannot interleave with another request's, and two workers (two
//! processes on one file) never claim one mail.

use tokio_rusqlite::rusqlite::{self, OptionalExtension, TransactionBehavior, params};

use super::audit::commit_with;
use super::{SqliteStore, to_i64, user_from_row};
use crate::audit::Context;
use crate::store::{MailKind, MailToken, OutboxMail, Queued, Recipient, StoreError, User};

/// How long sent and dropped outbox rows are kept (for the hourly limit, and to be looked at).
const DONE_KEPT_SECONDS: i64 = 86_400;

/// Queues a mail of `kind` to the user and kills the user's live tokens of that kind, inside the
/// caller's transaction.
pub(super) fn queue(
    tx: &rusqlite::Transaction<'_>,
    user_id: i64,
    email: &str,
    kind: MailKind,
    now: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM mail_tokens WHERE user_id = ?1 AND kind = ?2")?
        .execute(params![user_id, kind.as_str()])?;
    tx.prepare_cached(
        "INSERT INTO mail_outbox (user_id, kind, recipient, next_attempt_at, created_at)
         VALUES (?1, ?2, ?3, ?4, ?4)",
    )?
    .execute(params![user_id, kind.as_str(), email, now])?;
    Ok(())
}

fn kind_from_db(kind: &str) -> rusqlite::Result<MailKind> {
    MailKind::parse(kind).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            1,
            rusqlite::types::Type::Text,
            format!("unknown mail kind {kind:?}").into(),
        )
    })
}

impl SqliteStore {
    pub async fn queue_mail(
        &self,
        to: Recipient,
        kind: MailKind,
        now: u64,
        hourly_limit: u32,
        audit: Context,
    ) -> Result<Queued, StoreError> {
        let now = to_i64(now);
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let user: Option<(i64, String)> = match &to {
                Recipient::User(id) => tx
                    .prepare_cached("SELECT id, email FROM users WHERE id = ?1")?
                    .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?,
                Recipient::Email(email) => tx
                    .prepare_cached("SELECT id, email FROM users WHERE email = ?1")?
                    .query_row(params![email], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?,
            };
            let Some((user_id, email)) = user else {
                return Ok(Queued::NoSuchUser);
            };
            let (sent, oldest): (i64, Option<i64>) = tx
                .prepare_cached(
                    "SELECT count(*), min(created_at) FROM mail_outbox
                     WHERE user_id = ?1 AND kind = ?2 AND created_at > ?3",
                )?
                .query_row(params![user_id, kind.as_str(), now - 3600], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            if sent >= i64::from(hourly_limit) {
                let retry_after = oldest.map_or(3600, |oldest| (oldest + 3600 - now).max(1));
                return Ok(Queued::Limited {
                    retry_after: u64::try_from(retry_after).unwrap_or(3600),
                });
            }
            queue(&tx, user_id, &email, kind, now)?;
            let event = crate::audit::mail_queued(kind, user_id);
            commit_with(tx, &audit, event.as_slice())?;
            Ok(Queued::Yes)
        })
        .await
    }

    pub async fn verify_email(
        &self,
        hash: [u8; 32],
        now: u64,
        audit: Context,
    ) -> Result<Option<User>, StoreError> {
        let now = to_i64(now);
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let Some(user_id) = take_token(&tx, &hash, MailKind::VerifyEmail, now)? else {
                return Ok(None);
            };
            let was_verified = is_verified(&tx, user_id)?;
            let user = tx
                .prepare_cached(concat!(
                    "UPDATE users SET email_verified_at = coalesce(email_verified_at, ?1)
                     WHERE id = ?2 RETURNING ",
                    super::user_columns!()
                ))?
                .query_row(params![now, user_id], user_from_row)
                .optional()?;
            let events: Vec<_> = (!was_verified)
                .then(|| crate::audit::email_verified(user_id, "link"))
                .into_iter()
                .collect();
            commit_with(tx, &audit, &events)?;
            Ok(user)
        })
        .await
    }

    pub async fn reset_token_user(
        &self,
        hash: [u8; 32],
        now: u64,
    ) -> Result<Option<(i64, String)>, StoreError> {
        let now = to_i64(now);
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT t.user_id, u.email FROM mail_tokens t JOIN users u ON u.id = t.user_id
                 WHERE t.hash = ?1 AND t.kind = 'reset_password' AND t.expires_at > ?2",
            )?
            .query_row(params![&hash[..], now], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
        })
        .await
    }

    pub async fn reset_password(
        &self,
        hash: [u8; 32],
        new_password_hash: String,
        now: u64,
        audit: Context,
    ) -> Result<Option<i64>, StoreError> {
        let now = to_i64(now);
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let Some(user_id) = take_token(&tx, &hash, MailKind::ResetPassword, now)? else {
                return Ok(None);
            };
            let was_verified = is_verified(&tx, user_id)?;
            tx.prepare_cached(
                "UPDATE users SET password_hash = ?1, email_verified_at = coalesce(email_verified_at, ?2)
                 WHERE id = ?3",
            )?
            .execute(params![new_password_hash, now, user_id])?;
            let ended = tx
                .prepare_cached("DELETE FROM sessions WHERE user_id = ?1")?
                .execute(params![user_id])?;
            tx.prepare_cached("DELETE FROM mail_tokens WHERE user_id = ?1")?
                .execute(params![user_id])?;
            let events = crate::audit::password_reset(user_id, ended as u64, !was_verified);
            commit_with(tx, &audit, &events)?;
            Ok(Some(user_id))
        })
        .await
    }

    pub async fn claim_mail(&self, now: u64, lease: u64) -> Result<Option<OutboxMail>, StoreError> {
        let now = to_i64(now);
        let lease = to_i64(lease);
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mail = tx
                .prepare_cached(
                    "UPDATE mail_outbox SET next_attempt_at = ?1 + ?2, attempts = attempts + 1
                     WHERE id = (SELECT id FROM mail_outbox
                                 WHERE status = 'queued' AND next_attempt_at <= ?1
                                 ORDER BY next_attempt_at, id LIMIT 1)
                     RETURNING id, user_id, kind, recipient, attempts, created_at,
                               (SELECT email_verified_at IS NOT NULL FROM users WHERE id = user_id)",
                )?
                .query_row(params![now, lease], |r| {
                    Ok(OutboxMail {
                        id: r.get(0)?,
                        user_id: r.get(1)?,
                        kind: kind_from_db(&r.get::<_, String>(2)?)?,
                        recipient: r.get(3)?,
                        attempt: r.get(4)?,
                        created_at: r.get(5)?,
                        email_verified: r.get::<_, Option<bool>>(6)?.unwrap_or(false),
                    })
                })
                .optional()?;
            tx.commit()?;
            Ok(mail)
        })
        .await
    }

    pub async fn issue_mail_token(
        &self,
        mail_id: i64,
        attempt: u32,
        user_id: i64,
        token: MailToken,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let ours = tx
                .prepare_cached(
                    "SELECT 1 FROM mail_outbox WHERE id = ?1 AND attempts = ?2 AND status = 'queued'",
                )?
                .exists(params![mail_id, attempt])?;
            if !ours {
                return Ok(false);
            }
            let kind = token.kind.as_str();
            tx.prepare_cached("DELETE FROM mail_tokens WHERE user_id = ?1 AND kind = ?2")?
                .execute(params![user_id, kind])?;
            tx.prepare_cached(
                "INSERT INTO mail_tokens (hash, user_id, kind, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                &token.hash[..],
                user_id,
                kind,
                to_i64(token.now),
                to_i64(token.expires_at)
            ])?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    pub async fn mail_sent(&self, id: i64, attempt: u32, now: u64) -> Result<(), StoreError> {
        self.finish_mail(id, attempt, "sent", to_i64(now), None)
            .await
    }

    pub async fn mail_dropped(
        &self,
        id: i64,
        attempt: u32,
        now: u64,
        reason: String,
    ) -> Result<(), StoreError> {
        self.finish_mail(id, attempt, "dropped", to_i64(now), Some(reason))
            .await
    }

    async fn finish_mail(
        &self,
        id: i64,
        attempt: u32,
        status: &'static str,
        now: i64,
        error: Option<String>,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            c.prepare_cached(
                "UPDATE mail_outbox SET status = ?1, done_at = ?2, last_error = ?3
                 WHERE id = ?4 AND attempts = ?5 AND status = 'queued'",
            )?
            .execute(params![status, now, error, id, attempt])?;
            Ok(())
        })
        .await
    }

    pub async fn mail_failed(
        &self,
        id: i64,
        attempt: u32,
        retry_at: u64,
        error: String,
    ) -> Result<(), StoreError> {
        let retry_at = to_i64(retry_at);
        self.write(move |c| {
            c.prepare_cached(
                "UPDATE mail_outbox SET next_attempt_at = ?1, last_error = ?2
                 WHERE id = ?3 AND attempts = ?4 AND status = 'queued'",
            )?
            .execute(params![retry_at, error, id, attempt])?;
            Ok(())
        })
        .await
    }

    pub async fn purge_mail(&self, now: u64) -> Result<u64, StoreError> {
        let now = to_i64(now);
        self.write(move |c| {
            let tx = c.transaction()?;
            let tokens = tx
                .prepare_cached("DELETE FROM mail_tokens WHERE expires_at <= ?1")?
                .execute(params![now])?;
            let mails = tx
                .prepare_cached(
                    "DELETE FROM mail_outbox WHERE status != 'queued' AND done_at < ?1",
                )?
                .execute(params![now - DONE_KEPT_SECONDS])?;
            tx.commit()?;
            Ok((tokens + mails) as u64)
        })
        .await
    }

    pub async fn pending_mail(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            let count: i64 = c
                .prepare_cached("SELECT count(*) FROM mail_outbox WHERE status = 'queued'")?
                .query_row([], |row| row.get(0))?;
            Ok(u64::try_from(count).unwrap_or(0))
        })
        .await
    }
}

/// Deletes a live token of `kind`, inside the caller's transaction; the user it was for.
/// Whether the user's address is verified already (inside a write transaction).
fn is_verified(tx: &rusqlite::Transaction<'_>, user_id: i64) -> rusqlite::Result<bool> {
    tx.prepare_cached("SELECT email_verified_at IS NOT NULL FROM users WHERE id = ?1")?
        .query_row(params![user_id], |r| r.get(0))
}

fn take_token(
    tx: &rusqlite::Transaction<'_>,
    hash: &[u8; 32],
    kind: MailKind,
    now: i64,
) -> rusqlite::Result<Option<i64>> {
    tx.prepare_cached(
        "DELETE FROM mail_tokens WHERE hash = ?1 AND kind = ?2 AND expires_at > ?3 RETURNING user_id",
    )?
    .query_row(params![&hash[..], kind.as_str(), now], |r| r.get(0))
    .optional()
}
