//! Signing keys on PostgreSQL, shared by every replica.

use super::{KEYS_LOCK, PostgresStore};
use crate::store::{AddKey, StoreError, StoredKey};

impl PostgresStore {
    pub async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT kid, algorithm, private_der, created_at, retired_at FROM signing_keys
                 ORDER BY created_at, kid",
            )
            .await?;
        client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(|r| {
                Ok(StoredKey {
                    kid: r.try_get(0)?,
                    algorithm: r.try_get(1)?,
                    private_der: r.try_get(2)?,
                    created_at: r.try_get(3)?,
                    retired_at: r.try_get(4)?,
                })
            })
            .collect()
    }

    pub async fn add_signing_key(
        &self,
        key: StoredKey,
        how: AddKey,
        audit: crate::audit::Context,
    ) -> Result<StoredKey, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&KEYS_LOCK])
            .await?;
        match how {
            AddKey::IfNone => {
                let existing = tx
                    .query_opt(
                        "SELECT kid, algorithm, private_der, created_at, retired_at FROM signing_keys
                         WHERE algorithm = $1 AND retired_at IS NULL ORDER BY created_at DESC LIMIT 1",
                        &[&key.algorithm],
                    )
                    .await?;
                if let Some(r) = existing {
                    return Ok(StoredKey {
                        kid: r.try_get(0)?,
                        algorithm: r.try_get(1)?,
                        private_der: r.try_get(2)?,
                        created_at: r.try_get(3)?,
                        retired_at: r.try_get(4)?,
                    });
                }
            }
            AddKey::Rotate => {}
        }
        // Every key that signed so far retires (also one of another algorithm, when
        // JWT_ALGORITHM changed): it verifies its tokens until they expire, no longer.
        tx.execute(
            "UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL",
            &[&key.created_at],
        )
        .await?;
        tx.execute(
            "INSERT INTO signing_keys (kid, algorithm, private_der, created_at) VALUES ($1, $2, $3, $4)",
            &[&key.kid, &key.algorithm, &key.private_der, &key.created_at],
        )
        .await?;
        super::audit::commit_with(tx, &audit, &[crate::audit::key_added(how, &key)]).await?;
        Ok(key)
    }

    pub async fn purge_signing_keys(&self, before: i64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        Ok(client
            .execute(
                "DELETE FROM signing_keys WHERE retired_at IS NOT NULL AND retired_at < $1",
                &[&before],
            )
            .await?)
    }
}
