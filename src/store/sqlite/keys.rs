//! Signing keys on SQLite.

use tokio_rusqlite::rusqlite::{OptionalExtension, Row, TransactionBehavior, params};

use super::SqliteStore;
use super::audit::commit_with;
use crate::audit::Context;
use crate::store::{AddKey, StoreError, StoredKey};

fn key_from_row(r: &Row<'_>) -> tokio_rusqlite::rusqlite::Result<StoredKey> {
    Ok(StoredKey {
        kid: r.get(0)?,
        algorithm: r.get(1)?,
        private_der: r.get(2)?,
        created_at: r.get(3)?,
        retired_at: r.get(4)?,
    })
}

impl SqliteStore {
    pub async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT kid, algorithm, private_der, created_at, retired_at FROM signing_keys
                 ORDER BY created_at, kid",
            )?
            .query_map([], key_from_row)?
            .collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub async fn add_signing_key(
        &self,
        key: StoredKey,
        how: AddKey,
        audit: Context,
    ) -> Result<StoredKey, StoreError> {
        self.write(move |c| {
            // IMMEDIATE: the check and the insert under one write lock, also across processes.
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            match how {
                AddKey::IfNone => {
                    let existing = tx
                        .prepare_cached(
                            "SELECT kid, algorithm, private_der, created_at, retired_at FROM signing_keys
                             WHERE algorithm = ?1 AND retired_at IS NULL ORDER BY created_at DESC LIMIT 1",
                        )?
                        .query_row(params![key.algorithm], key_from_row)
                        .optional()?;
                    if let Some(existing) = existing {
                        return Ok(existing);
                    }
                }
                AddKey::Rotate => {}
            }
            // Every key that signed so far retires (also one of another algorithm, when
            // JWT_ALGORITHM changed): it verifies its tokens until they expire, no longer.
            tx.prepare_cached("UPDATE signing_keys SET retired_at = ?1 WHERE retired_at IS NULL")?
                .execute(params![key.created_at])?;
            tx.prepare_cached(
                "INSERT INTO signing_keys (kid, algorithm, private_der, created_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![key.kid, key.algorithm, key.private_der, key.created_at])?;
            commit_with(tx, &audit, &[crate::audit::key_added(how, &key)])?;
            Ok(key)
        })
        .await
    }

    pub async fn purge_signing_keys(&self, before: i64) -> Result<u64, StoreError> {
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "DELETE FROM signing_keys WHERE retired_at IS NOT NULL AND retired_at < ?1",
                )?
                .execute(params![before])?;
            Ok(n as u64)
        })
        .await
    }
}
