//! The second factor on SQLite: TOTP secrets (sealed), recovery codes (hashed), and the second
//! step of logins. A code is accepted by one conditional UPDATE, so it is accepted once.

use tokio_rusqlite::rusqlite::{self, OptionalExtension, TransactionBehavior, params};

use super::audit::commit_with;
use super::{SqliteStore, role_from_db, to_i64};
use crate::audit::{Context, Event, Kind};
use crate::store::{Challenge, StoreError, TotpRecord};

fn set_codes(
    tx: &rusqlite::Transaction<'_>,
    user_id: i64,
    codes: &[[u8; 32]],
) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM mfa_recovery_codes WHERE user_id = ?1")?
        .execute(params![user_id])?;
    let mut insert =
        tx.prepare_cached("INSERT INTO mfa_recovery_codes (user_id, code_hash) VALUES (?1, ?2)")?;
    for code in codes {
        insert.execute(params![user_id, &code[..]])?;
    }
    Ok(())
}

impl SqliteStore {
    pub async fn set_pending_totp(
        &self,
        user_id: i64,
        sealed: Vec<u8>,
        key_id: String,
        now: u64,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            let changed = c
                .prepare_cached(
                    "INSERT INTO mfa_totp (user_id, secret_sealed, key_id, created_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (user_id) DO UPDATE SET secret_sealed = excluded.secret_sealed,
                         key_id = excluded.key_id, created_at = excluded.created_at, last_step = NULL
                     WHERE mfa_totp.confirmed_at IS NULL",
                )?
                .execute(params![user_id, sealed, key_id, to_i64(now)])?;
            Ok(changed == 1)
        })
        .await
    }

    pub async fn totp(&self, user_id: i64) -> Result<Option<TotpRecord>, StoreError> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT secret_sealed, key_id, confirmed_at IS NOT NULL FROM mfa_totp WHERE user_id = ?1",
            )?
            .query_row(params![user_id], |r| {
                Ok(TotpRecord {
                    sealed: r.get(0)?,
                    key_id: r.get(1)?,
                    confirmed: r.get(2)?,
                })
            })
            .optional()?)
        })
        .await
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
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let confirmed = tx
                .prepare_cached(
                    "UPDATE mfa_totp SET confirmed_at = ?1, last_step = ?2
                     WHERE user_id = ?3 AND confirmed_at IS NULL AND secret_sealed = ?4",
                )?
                .execute(params![now, step, user_id, sealed])?;
            if confirmed == 0 {
                return Ok(false);
            }
            tx.prepare_cached("UPDATE users SET mfa_enabled_at = ?1 WHERE id = ?2")?
                .execute(params![now, user_id])?;
            set_codes(&tx, user_id, &codes)?;
            let ended = tx
                .prepare_cached("DELETE FROM sessions WHERE user_id = ?1 AND id != ?2")?
                .execute(params![user_id, keep])?;
            let event = Event::new(Kind::MfaEnabled, Some(user_id)).with("sessions_ended", ended);
            commit_with(tx, &audit, &[event])?;
            Ok(true)
        })
        .await
    }

    pub async fn reseal_totp(
        &self,
        user_id: i64,
        old: Vec<u8>,
        sealed: Vec<u8>,
        key_id: String,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            c.prepare_cached(
                "UPDATE mfa_totp SET secret_sealed = ?1, key_id = ?2 WHERE user_id = ?3 AND secret_sealed = ?4",
            )?
            .execute(params![sealed, key_id, user_id, old])?;
            Ok(())
        })
        .await
    }

    pub async fn accept_totp_step(&self, user_id: i64, step: i64) -> Result<bool, StoreError> {
        self.write(move |c| {
            let accepted = c
                .prepare_cached(
                    "UPDATE mfa_totp SET last_step = ?1
                     WHERE user_id = ?2 AND confirmed_at IS NOT NULL
                       AND (last_step IS NULL OR last_step < ?1)",
                )?
                .execute(params![step, user_id])?;
            Ok(accepted == 1)
        })
        .await
    }

    pub async fn use_recovery_code(
        &self,
        user_id: i64,
        hash: [u8; 32],
        now: u64,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            let used = c
                .prepare_cached(
                    "UPDATE mfa_recovery_codes SET used_at = ?1
                     WHERE user_id = ?2 AND code_hash = ?3 AND used_at IS NULL",
                )?
                .execute(params![to_i64(now), user_id, &hash[..]])?;
            Ok(used == 1)
        })
        .await
    }

    pub async fn replace_recovery_codes(
        &self,
        user_id: i64,
        codes: Vec<[u8; 32]>,
        audit: Context,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let on = tx
                .prepare_cached(
                    "SELECT 1 FROM mfa_totp WHERE user_id = ?1 AND confirmed_at IS NOT NULL",
                )?
                .exists(params![user_id])?;
            if !on {
                return Ok(false);
            }
            set_codes(&tx, user_id, &codes)?;
            let event = Event::new(Kind::MfaRecoveryCodesReplaced, Some(user_id));
            commit_with(tx, &audit, &[event])?;
            Ok(true)
        })
        .await
    }

    pub async fn disable_mfa(&self, user_id: i64, audit: Context) -> Result<bool, StoreError> {
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let was_on = tx
                .prepare_cached(
                    "UPDATE users SET mfa_enabled_at = NULL WHERE id = ?1 AND mfa_enabled_at IS NOT NULL",
                )?
                .execute(params![user_id])?;
            if was_on == 0 {
                return Ok(false);
            }
            for table in [
                "DELETE FROM mfa_totp WHERE user_id = ?1",
                "DELETE FROM mfa_recovery_codes WHERE user_id = ?1",
                "DELETE FROM mfa_challenges WHERE user_id = ?1",
            ] {
                tx.prepare_cached(table)?.execute(params![user_id])?;
            }
            commit_with(tx, &audit, &[Event::new(Kind::MfaDisabled, Some(user_id))])?;
            Ok(true)
        })
        .await
    }

    pub async fn create_challenge(
        &self,
        hash: [u8; 32],
        user_id: i64,
        password_hash: String,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO mfa_challenges (hash, user_id, password_hash, expires_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![&hash[..], user_id, password_hash, to_i64(expires_at)])?;
            Ok(())
        })
        .await
    }

    pub async fn claim_guess(
        &self,
        hash: [u8; 32],
        now: u64,
        max_guesses: u32,
    ) -> Result<Option<Challenge>, StoreError> {
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let claimed: Option<(i64, String)> = tx
                .prepare_cached(
                    "UPDATE mfa_challenges SET failures = failures + 1
                     WHERE hash = ?1 AND expires_at > ?2 AND failures < ?3
                     RETURNING user_id, password_hash",
                )?
                .query_row(params![&hash[..], to_i64(now), max_guesses], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            let Some((user_id, password_hash)) = claimed else {
                return Ok(None);
            };
            let challenge = tx
                .prepare_cached(
                    "SELECT email, role, disabled_at IS NOT NULL FROM users WHERE id = ?1",
                )?
                .query_row(params![user_id], |r| {
                    Ok(Challenge {
                        user_id,
                        email: r.get(0)?,
                        role: role_from_db(&r.get::<_, String>(1)?)?,
                        password_hash: password_hash.clone(),
                        disabled: r.get(2)?,
                    })
                })
                .optional()?;
            tx.commit()?;
            Ok(challenge)
        })
        .await
    }

    pub async fn take_challenge(&self, hash: [u8; 32]) -> Result<bool, StoreError> {
        self.write(move |c| {
            let taken = c
                .prepare_cached("DELETE FROM mfa_challenges WHERE hash = ?1")?
                .execute(params![&hash[..]])?;
            Ok(taken == 1)
        })
        .await
    }

    pub async fn purge_challenges(&self, now: u64) -> Result<u64, StoreError> {
        self.write(move |c| {
            let gone = c
                .prepare_cached("DELETE FROM mfa_challenges WHERE expires_at <= ?1")?
                .execute(params![to_i64(now)])?;
            Ok(gone as u64)
        })
        .await
    }
}
