//! Mail on PostgreSQL: the one-time tokens of mailed links, and the outbox every replica's worker
//! sends from. Queueing locks the user's row, so the hourly count and the insert it allows hold
//! across replicas; workers claim due mails with `FOR UPDATE SKIP LOCKED` and a lease, so each
//! mail is sent by one of them.

use tokio_postgres::Transaction;

use super::{PostgresStore, to_i64, user_columns, user_from_row};
use crate::store::{Claimed, MailKind, MailToken, OutboxMail, Queued, Recipient, StoreError, User};

/// How long sent and dropped outbox rows are kept (for the hourly limit, and to be looked at).
const DONE_KEPT_SECONDS: i64 = 86_400;

/// Stores `token` as the user's only live one of its kind and puts its mail in the outbox, inside
/// the caller's transaction.
pub(super) async fn store_token(
    tx: &Transaction<'_>,
    user_id: i64,
    email: &str,
    token: &MailToken,
) -> Result<(), StoreError> {
    let kind = token.kind.as_str();
    let now = to_i64(token.now);
    let hash = &token.hash[..];
    tx.execute(
        "DELETE FROM mail_tokens WHERE user_id = $1 AND kind = $2",
        &[&user_id, &kind],
    )
    .await?;
    tx.execute(
        "INSERT INTO mail_tokens (hash, user_id, kind, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5)",
        &[&hash, &user_id, &kind, &now, &to_i64(token.expires_at)],
    )
    .await?;
    tx.execute(
        "INSERT INTO mail_outbox (user_id, kind, recipient, token, token_hash, next_attempt_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
        &[&user_id, &kind, &email, &token.token, &hash, &now],
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
        token: MailToken,
        hourly_limit: u32,
    ) -> Result<Queued, StoreError> {
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
        let now = to_i64(token.now);
        let counted = tx
            .query_one(
                "SELECT count(*), min(created_at) FROM mail_outbox
                 WHERE user_id = $1 AND kind = $2 AND created_at > $3",
                &[&user_id, &token.kind.as_str(), &(now - 3600)],
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
        store_token(&tx, user_id, &email, &token).await?;
        tx.commit().await?;
        Ok(Queued::Yes)
    }

    pub async fn verify_email(&self, hash: [u8; 32], now: u64) -> Result<Option<User>, StoreError> {
        let now = to_i64(now);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(user_id) = take_token(&tx, &hash, MailKind::VerifyEmail, now).await? else {
            return Ok(None);
        };
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
        tx.commit().await?;
        Ok(user)
    }

    pub async fn reset_token_user(
        &self,
        hash: [u8; 32],
        now: u64,
    ) -> Result<Option<i64>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT user_id FROM mail_tokens
                 WHERE hash = $1 AND kind = 'reset_password' AND expires_at > $2",
            )
            .await?;
        let row = client.query_opt(&stmt, &[&&hash[..], &to_i64(now)]).await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    pub async fn reset_password(
        &self,
        hash: [u8; 32],
        new_password_hash: String,
        now: u64,
    ) -> Result<Option<i64>, StoreError> {
        let now = to_i64(now);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(user_id) = take_token(&tx, &hash, MailKind::ResetPassword, now).await? else {
            return Ok(None);
        };
        // The row lock of this update makes a racing login's session insert wait, then see the
        // new hash (as a password change does).
        tx.execute(
            "UPDATE users SET password_hash = $1, email_verified_at = coalesce(email_verified_at, $2)
             WHERE id = $3",
            &[&new_password_hash, &now, &user_id],
        )
        .await?;
        tx.execute("DELETE FROM sessions WHERE user_id = $1", &[&user_id])
            .await?;
        tx.execute("DELETE FROM mail_tokens WHERE user_id = $1", &[&user_id])
            .await?;
        tx.commit().await?;
        Ok(Some(user_id))
    }

    pub async fn claim_mail(
        &self,
        now: u64,
        lease: u64,
        limit: u32,
    ) -> Result<Claimed, StoreError> {
        let now = to_i64(now);
        let lease = to_i64(lease);
        let limit = i64::from(limit);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let due = tx
            .query(
                "SELECT o.id, o.kind, o.recipient, o.token, o.attempts,
                        EXISTS (SELECT 1 FROM mail_tokens t
                                WHERE t.hash = o.token_hash AND t.expires_at > $1) AS alive
                 FROM mail_outbox o
                 WHERE o.status = 'queued' AND o.next_attempt_at <= $1
                 ORDER BY o.next_attempt_at, o.id
                 LIMIT $2
                 FOR UPDATE OF o SKIP LOCKED",
                &[&now, &limit],
            )
            .await?;
        let mut claimed = Claimed::default();
        for row in due {
            let id: i64 = row.try_get(0)?;
            if !row.try_get::<_, bool>(5)? {
                tx.execute(
                    "UPDATE mail_outbox SET status = 'dropped', token = NULL, done_at = $1
                     WHERE id = $2",
                    &[&now, &id],
                )
                .await?;
                claimed.dropped += 1;
                continue;
            }
            tx.execute(
                "UPDATE mail_outbox SET next_attempt_at = $1, attempts = attempts + 1 WHERE id = $2",
                &[&(now + lease), &id],
            )
            .await?;
            let attempts: i32 = row.try_get(4)?;
            claimed.mails.push(OutboxMail {
                id,
                kind: kind_from_db(row.try_get(1)?)?,
                recipient: row.try_get(2)?,
                token: row.try_get::<_, Option<String>>(3)?.ok_or_else(|| {
                    StoreError::Internal("a queued mail without its token".into())
                })?,
                attempts: u32::try_from(attempts).unwrap_or(0),
            });
        }
        tx.commit().await?;
        Ok(claimed)
    }

    pub async fn mail_sent(&self, id: i64, now: u64) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE mail_outbox SET status = 'sent', token = NULL, done_at = $1, last_error = NULL
                 WHERE id = $2",
                &[&to_i64(now), &id],
            )
            .await?;
        Ok(())
    }

    pub async fn mail_failed(
        &self,
        id: i64,
        retry_at: u64,
        error: String,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE mail_outbox SET next_attempt_at = $1, last_error = $2
                 WHERE id = $3 AND status = 'queued'",
                &[&to_i64(retry_at), &error, &id],
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
}

/// Deletes a live token of `kind`, inside the caller's transaction; the user it was for.
async fn take_token(
    tx: &Transaction<'_>,
    hash: &[u8; 32],
    kind: MailKind,
    now: i64,
) -> Result<Option<i64>, StoreError> {
    let row = tx
        .query_opt(
            "DELETE FROM mail_tokens WHERE hash = $1 AND kind = $2 AND expires_at > $3
             RETURNING user_id",
            &[&&hash[..], &kind.as_str(), &now],
        )
        .await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}
