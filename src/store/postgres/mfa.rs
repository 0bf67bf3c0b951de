//! The second factor on PostgreSQL: TOTP secrets (sealed), recovery codes (hashed), and the
//! second step of logins. A code is accepted by one conditional UPDATE, so it is accepted once
//! across every replica.

use tokio_postgres::Transaction;

use super::audit::commit_with;
use super::{PostgresStore, role_from_db, to_i64};
use crate::audit::{Context, Event, Kind};
use crate::store::{Challenge, StoreError, TotpRecord};

async fn set_codes(
    tx: &Transaction<'_>,
    user_id: i64,
    codes: &[[u8; 32]],
) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM mfa_recovery_codes WHERE user_id = $1",
        &[&user_id],
    )
    .await?;
    for code in codes {
        tx.execute(
            "INSERT INTO mfa_recovery_codes (user_id, code_hash) VALUES ($1, $2)",
            &[&user_id, &&code[..]],
        )
        .await?;
    }
    Ok(())
}

impl PostgresStore {
    pub async fn set_pending_totp(
        &self,
        user_id: i64,
        sealed: Vec<u8>,
        key_id: String,
        now: u64,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "INSERT INTO mfa_totp AS m (user_id, secret_sealed, key_id, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (user_id) DO UPDATE SET secret_sealed = excluded.secret_sealed,
                     key_id = excluded.key_id, created_at = excluded.created_at, last_step = NULL
                 WHERE m.confirmed_at IS NULL",
                &[&user_id, &sealed, &key_id, &to_i64(now)],
            )
            .await?;
        Ok(changed == 1)
    }

    pub async fn totp(&self, user_id: i64) -> Result<Option<TotpRecord>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT secret_sealed, key_id, confirmed_at IS NOT NULL FROM mfa_totp WHERE user_id = $1",
                &[&user_id],
            )
            .await?;
        row.map(|r| {
            Ok(TotpRecord {
                sealed: r.try_get(0)?,
                key_id: r.try_get(1)?,
                confirmed: r.try_get(2)?,
            })
        })
        .transpose()
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn confirm_totp(
        &self,
        user_id: i64,
        sealed: Vec<u8>,
        step: i64,
        codes: Vec<[u8; 32]>,
        keep: String,
        now: u64,
        audit: Context,
    ) -> Result<bool, StoreError> {
        let now = to_i64(now);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The user's row first, as every other writer of the user's state locks it.
        tx.execute(
            "UPDATE users SET mfa_enabled_at = $1 WHERE id = $2",
            &[&now, &user_id],
        )
        .await?;
        let confirmed = tx
            .execute(
                "UPDATE mfa_totp SET confirmed_at = $1, last_step = $2
                 WHERE user_id = $3 AND confirmed_at IS NULL AND secret_sealed = $4",
                &[&now, &step, &user_id, &sealed],
            )
            .await?;
        if confirmed == 0 {
            return Ok(false);
        }
        set_codes(&tx, user_id, &codes).await?;
        let ended = tx
            .execute(
                "DELETE FROM sessions WHERE user_id = $1 AND id <> $2",
                &[&user_id, &keep],
            )
            .await?;
        let event = Event::new(Kind::MfaEnabled, Some(user_id)).with("sessions_ended", ended);
        commit_with(tx, &audit, &[event]).await?;
        Ok(true)
    }

    pub async fn reseal_totp(
        &self,
        user_id: i64,
        old: Vec<u8>,
        sealed: Vec<u8>,
        key_id: String,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE mfa_totp SET secret_sealed = $1, key_id = $2 WHERE user_id = $3 AND secret_sealed = $4",
                &[&sealed, &key_id, &user_id, &old],
            )
            .await?;
        Ok(())
    }

    pub async fn accept_totp_step(&self, user_id: i64, step: i64) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let accepted = client
            .execute(
                "UPDATE mfa_totp SET last_step = $1
                 WHERE user_id = $2 AND confirmed_at IS NOT NULL
                   AND (last_step IS NULL OR last_step < $1)",
                &[&step, &user_id],
            )
            .await?;
        Ok(accepted == 1)
    }

    pub async fn use_recovery_code(
        &self,
        user_id: i64,
        hash: [u8; 32],
        now: u64,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let used = client
            .execute(
                "UPDATE mfa_recovery_codes SET used_at = $1
                 WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL",
                &[&to_i64(now), &user_id, &&hash[..]],
            )
            .await?;
        Ok(used == 1)
    }

    pub async fn replace_recovery_codes(
        &self,
        user_id: i64,
        codes: Vec<[u8; 32]>,
        audit: Context,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let on = tx
            .query_opt(
                "SELECT 1 FROM users WHERE id = $1 AND mfa_enabled_at IS NOT NULL FOR UPDATE",
                &[&user_id],
            )
            .await?;
        if on.is_none() {
            return Ok(false);
        }
        set_codes(&tx, user_id, &codes).await?;
        let event = Event::new(Kind::MfaRecoveryCodesReplaced, Some(user_id));
        commit_with(tx, &audit, &[event]).await?;
        Ok(true)
    }

    pub async fn disable_mfa(&self, user_id: i64, audit: Context) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let was_on = tx
            .execute(
                "UPDATE users SET mfa_enabled_at = NULL WHERE id = $1 AND mfa_enabled_at IS NOT NULL",
                &[&user_id],
            )
            .await?;
        if was_on == 0 {
            return Ok(false);
        }
        for statement in [
            "DELETE FROM mfa_totp WHERE user_id = $1",
            "DELETE FROM mfa_recovery_codes WHERE user_id = $1",
            "DELETE FROM mfa_challenges WHERE user_id = $1",
        ] {
            tx.execute(statement, &[&user_id]).await?;
        }
        commit_with(tx, &audit, &[Event::new(Kind::MfaDisabled, Some(user_id))]).await?;
        Ok(true)
    }

    pub async fn create_challenge(
        &self,
        hash: [u8; 32],
        user_id: i64,
        password_hash: String,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO mfa_challenges (hash, user_id, password_hash, expires_at) VALUES ($1, $2, $3, $4)",
                &[&&hash[..], &user_id, &password_hash, &to_i64(expires_at)],
            )
            .await?;
        Ok(())
    }

    pub async fn claim_guess(
        &self,
        hash: [u8; 32],
        now: u64,
        max_guesses: u32,
    ) -> Result<Option<Challenge>, StoreError> {
        let client = self.client().await?;
        let max = i32::try_from(max_guesses).unwrap_or(i32::MAX);
        // The row's lock orders racing guesses on every replica; each one is counted.
        let row = client
            .query_opt(
                "UPDATE mfa_challenges c SET failures = c.failures + 1
                 FROM users u
                 WHERE c.hash = $1 AND c.expires_at > $2 AND c.failures < $3 AND u.id = c.user_id
                 RETURNING c.user_id, u.email, u.role, c.password_hash, u.disabled_at IS NOT NULL",
                &[&&hash[..], &to_i64(now), &max],
            )
            .await?;
        row.map(|r| {
            Ok(Challenge {
                user_id: r.try_get(0)?,
                email: r.try_get(1)?,
                role: role_from_db(r.try_get(2)?)?,
                password_hash: r.try_get(3)?,
                disabled: r.try_get(4)?,
            })
        })
        .transpose()
    }

    pub async fn take_challenge(&self, hash: [u8; 32]) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let taken = client
            .execute("DELETE FROM mfa_challenges WHERE hash = $1", &[&&hash[..]])
            .await?;
        Ok(taken == 1)
    }

    pub async fn purge_challenges(&self, now: u64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        Ok(client
            .execute(
                "DELETE FROM mfa_challenges WHERE expires_at <= $1",
                &[&to_i64(now)],
            )
            .await?)
    }
}
