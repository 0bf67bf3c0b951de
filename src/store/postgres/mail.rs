//! Mail on PostgreSQL: the one-time tokens of mailed links, and the outbox every replica's worker
//! sends from. Queueing locks the user's row, so the hourly count and the insert it allows hold
//! across replicas; workers claim due mails one at a time with `FOR UPDATE SKIP LOCKED` and a
//! lease, and every later write about an attempt names it (`attempts`), so each mail is sent by
//! one of them. Writers of a user's tokens lock the user's row first, in every path.

use tokio_postgres::Transaction;

use super::audit::commit_with;
use super::{PostgresStore, to_i64, user_columns, user_from_row};
use crate::audit::Context;
use crate::store::{MailKind, MailToken, OutboxMail, Queued, Recipient, StoreError, User};

/// How long sent and dropped outbox rows are kept (for the hourly limit, and to be looked at).
const DONE_KEPT_SECONDS: i64 = 86_400;

/// Queues a mail of `kind` to the user and kills the user's live tokens of that kind, inside the
/// caller's transaction.
pub(super) async fn queue(
    tx: &Transaction<'_>,
    user_id: i64,
    email: &str,
    kind: MailKind,
    now: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM mail_tokens WHERE user_id = $1 AND kind = $2",
        &[&user_id, &kind.as_str()],
    )
    .await?;
    tx.execute(
        "INSERT INTO mail_outbox (user_id, kind, recipient, next_attempt_at, created_at)
         VALUES ($1, $2, $3, $4, $4)",
        &[&user_id, &kind.as_str(), &email, &now],
    )
    .await?;
    Ok(())
}

fn kind_from_db(kind: &str) -> Result<MailKind, StoreError> {
    MailKind::parse(kind).ok_or_else(|| StoreError::Internal(format!("unknown mail kind {kind:?}")))
}

impl PostgresStore {
    pub async fn queue_mail(
        &self,
        to: Recipient,
        kind: MailKind,
        now: u64,
        hourly_limit: u32,
        audit: Context,
    ) -> Result<Queued, StoreError> {
        let now = to_i64(now);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The row lock orders racing requests for one user on every replica.
        let row = match &to {
            Recipient::User(id) => {
                tx.query_opt(
                    "SELECT id, email FROM users WHERE id = $1 FOR UPDATE",
                    &[id],
                )
                .await?
            }
            Recipient::Email(email) => {
                tx.query_opt(
                    "SELECT id, email FROM users WHERE lower(email) = $1 FOR UPDATE",
                    &[email],
                )
                .await?
            }
        };
        let Some(row) = row else {
            return Ok(Queued::NoSuchUser);
        };
        let user_id: i64 = row.try_get(0)?;
        let email: String = row.try_get(1)?;
        let counted = tx
            .query_one(
                "SELECT count(*), min(created_at) FROM mail_outbox
                 WHERE user_id = $1 AND kind = $2 AND created_at > $3",
                &[&user_id, &kind.as_str(), &(now - 3600)],
            )
            .await?;
        let sent: i64 = counted.try_get(0)?;
        let oldest: Option<i64> = counted.try_get(1)?;
        if sent >= i64::from(hourly_limit) {
            let retry_after = oldest.map_or(3600, |oldest| (oldest + 3600 - now).max(1));
            return Ok(Queued::Limited {
                retry_after: u64::try_from(retry_after).unwrap_or(3600),
            });
        }
        queue(&tx, user_id, &email, kind, now).await?;
        let event = crate::audit::mail_queued(kind, user_id);
        commit_with(tx, &audit, event.as_slice()).await?;
        Ok(Queued::Yes)
    }

    pub async fn verify_email(
        &self,
        hash: [u8; 32],
        now: u64,
        audit: Context,
    ) -> Result<Option<User>, StoreError> {
        let now = to_i64(now);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(user_id) = take_token(&tx, &hash, MailKind::VerifyEmail, now).await? else {
            return Ok(None);
        };
        let was_verified = is_verified(&tx, user_id).await?;
        let row = tx
            .query_opt(
                concat!(
                    "UPDATE users AS u SET email_verified_at = coalesce(email_verified_at, $1)
                     WHERE id = $2 RETURNING ",
                    user_columns!()
                ),
                &[&now, &user_id],
            )
            .await?;
        let user = row.as_ref().map(user_from_row).transpose()?;
        let events: Vec<_> = (!was_verified)
            .then(|| crate::audit::email_verified(user_id, "link"))
            .into_iter()
            .collect();
        commit_with(tx, &audit, &events).await?;
        Ok(user)
    }

    pub async fn reset_token_user(
        &self,
        hash: [u8; 32],
        now: u64,
    ) -> Result<Option<(i64, String)>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT t.user_id, u.email FROM mail_tokens t JOIN users u ON u.id = t.user_id
                 WHERE t.hash = $1 AND t.kind = 'reset_password' AND t.expires_at > $2",
            )
            .await?;
        let row = client.query_opt(&stmt, &[&&hash[..], &to_i64(now)]).await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    pub async fn reset_password(
        &self,
        hash: [u8; 32],
        new_password_hash: String,
        now: u64,
        audit: Context,
    ) -> Result<Option<i64>, StoreError> {
        let now = to_i64(now);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(user_id) = take_token(&tx, &hash, MailKind::ResetPassword, now).await? else {
            return Ok(None);
        };
        let was_verified = is_verified(&tx, user_id).await?;
        // The row lock of this update makes a racing login's session insert wait, then see the
        // new hash (as a password change does).
        tx.execute(
            "UPDATE users SET password_hash = $1, email_verified_at = coalesce(email_verified_at, $2)
             WHERE id = $3",
            &[&new_password_hash, &now, &user_id],
        )
        .await?;
        let ended = tx
            .execute("DELETE FROM sessions WHERE user_id = $1", &[&user_id])
            .await?;
        tx.execute("DELETE FROM mail_tokens WHERE user_id = $1", &[&user_id])
            .await?;
        let events = crate::audit::password_reset(user_id, ended, !was_verified);
        commit_with(tx, &audit, &events).await?;
        Ok(Some(user_id))
    }

    pub async fn claim_mail(&self, now: u64, lease: u64) -> Result<Option<OutboxMail>, StoreError> {
        let now = to_i64(now);
        let lease = to_i64(lease);
        let client = self.client().await?;
        // One statement: the row another replica's claim holds is skipped, not waited for.
        let row = client
            .query_opt(
                "UPDATE mail_outbox o SET next_attempt_at = $1 + $2, attempts = o.attempts + 1
                 FROM (SELECT id FROM mail_outbox
                       WHERE status = 'queued' AND next_attempt_at <= $1
                       ORDER BY next_attempt_at, id LIMIT 1
                       FOR UPDATE SKIP LOCKED) due
                 WHERE o.id = due.id
                 RETURNING o.id, o.user_id, o.kind, o.recipient, o.attempts, o.created_at,
                           (SELECT u.email_verified_at IS NOT NULL FROM users u WHERE u.id = o.user_id)",
                &[&now, &lease],
            )
            .await?;
        row.map(|row| {
            let attempt: i32 = row.try_get(4)?;
            Ok(OutboxMail {
                id: row.try_get(0)?,
                user_id: row.try_get(1)?,
                kind: kind_from_db(row.try_get(2)?)?,
                recipient: row.try_get(3)?,
                attempt: u32::try_from(attempt).unwrap_or(0),
                created_at: row.try_get(5)?,
                email_verified: row.try_get::<_, Option<bool>>(6)?.unwrap_or(false),
            })
        })
        .transpose()
    }

    pub async fn issue_mail_token(
        &self,
        mail_id: i64,
        attempt: u32,
        user_id: i64,
        token: MailToken,
    ) -> Result<bool, StoreError> {
        let attempt = i32::try_from(attempt).unwrap_or(i32::MAX);
        let kind = token.kind.as_str();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The user's row first, as every writer of its tokens locks it.
        let user = tx
            .query_opt("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[&user_id])
            .await?;
        let ours = tx
            .query_opt(
                "SELECT 1 FROM mail_outbox WHERE id = $1 AND attempts = $2 AND status = 'queued'
                 FOR UPDATE",
                &[&mail_id, &attempt],
            )
            .await?;
        if user.is_none() || ours.is_none() {
            return Ok(false);
        }
        tx.execute(
            "DELETE FROM mail_tokens WHERE user_id = $1 AND kind = $2",
            &[&user_id, &kind],
        )
        .await?;
        tx.execute(
            "INSERT INTO mail_tokens (hash, user_id, kind, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &&token.hash[..],
                &user_id,
                &kind,
                &to_i64(token.now),
                &to_i64(token.expires_at),
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
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
        let attempt = i32::try_from(attempt).unwrap_or(i32::MAX);
        let client = self.client().await?;
        client
            .execute(
                "UPDATE mail_outbox SET status = $1, done_at = $2, last_error = $3
                 WHERE id = $4 AND attempts = $5 AND status = 'queued'",
                &[&status, &now, &error, &id, &attempt],
            )
            .await?;
        Ok(())
    }

    pub async fn mail_failed(
        &self,
        id: i64,
        attempt: u32,
        retry_at: u64,
        error: String,
    ) -> Result<(), StoreError> {
        let attempt = i32::try_from(attempt).unwrap_or(i32::MAX);
        let client = self.client().await?;
        client
            .execute(
                "UPDATE mail_outbox SET next_attempt_at = $1, last_error = $2
                 WHERE id = $3 AND attempts = $4 AND status = 'queued'",
                &[&to_i64(retry_at), &error, &id, &attempt],
            )
            .await?;
        Ok(())
    }

    pub async fn purge_mail(&self, now: u64) -> Result<u64, StoreError> {
        let now = to_i64(now);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let tokens = tx
            .execute("DELETE FROM mail_tokens WHERE expires_at <= $1", &[&now])
            .await?;
        let mails = tx
            .execute(
                "DELETE FROM mail_outbox WHERE status <> 'queued' AND done_at < $1",
                &[&(now - DONE_KEPT_SECONDS)],
            )
            .await?;
        tx.commit().await?;
        Ok(tokens + mails)
    }

    pub async fn pending_mail(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT count(*) FROM mail_outbox WHERE status = 'queued'")
            .await?;
        let count: i64 = client.query_one(&stmt, &[]).await?.get(0);
        Ok(u64::try_from(count).unwrap_or(0))
    }
}

/// Deletes a live token of `kind`, inside the caller's transaction; the user it was for. The
/// user's row is locked first, the order every writer of a user's tokens keeps (a password
/// change, queueing a mail), so two of them cannot deadlock.
/// Whether the user's address is verified already (the row is locked by `take_token`).
async fn is_verified(tx: &Transaction<'_>, user_id: i64) -> Result<bool, StoreError> {
    Ok(tx
        .query_one(
            "SELECT email_verified_at IS NOT NULL FROM users WHERE id = $1",
            &[&user_id],
        )
        .await?
        .try_get(0)?)
}

async fn take_token(
    tx: &Transaction<'_>,
    hash: &[u8; 32],
    kind: MailKind,
    now: i64,
) -> Result<Option<i64>, StoreError> {
    let owner = tx
        .query_opt(
            "SELECT user_id FROM mail_tokens WHERE hash = $1 AND kind = $2",
            &[&&hash[..], &kind.as_str()],
        )
        .await?;
    let Some(owner) = owner else {
        return Ok(None);
    };
    let user_id: i64 = owner.try_get(0)?;
    tx.query_opt("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[&user_id])
        .await?;
    let row = tx
        .query_opt(
            "DELETE FROM mail_tokens WHERE hash = $1 AND kind = $2 AND expires_at > $3
             RETURNING user_id",
            &[&&hash[..], &kind.as_str(), &now],
        )
        .await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}
