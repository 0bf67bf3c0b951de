//! The login throttle on PostgreSQL, shared by every replica: N replicas must not give an attacker
//! N times the attempts. An attempt is counted up front, by one atomic upsert per key, and given
//! back when it turns out not to have been a failure; the rules are those of the in-memory
//! throttle (`crate::throttle`): `max` failures in 15 minutes block the key for 30 seconds, each
//! further failure doubles that up to 15 minutes, and 15 quiet minutes forget it all.

use super::{PostgresStore, to_i64};
use crate::store::{StoreError, ThrottleKey};
use crate::throttle::{BASE_BLOCK, WINDOW};

impl PostgresStore {
    /// Counts one attempt against every key, in one transaction, unless one of them is blocked:
    /// then nothing is counted and the answer is how many seconds to wait.
    pub async fn throttle_admit(
        &self,
        keys: &[ThrottleKey],
        now: u64,
    ) -> Result<Option<u64>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let now = to_i64(now);
        let window = to_i64(WINDOW.as_secs());
        let base = to_i64(BASE_BLOCK.as_secs());
        for key in keys {
            let max = i32::try_from(key.max_failures).unwrap_or(i32::MAX);
            // The row's lock orders racing attempts on every replica; a blocked key is not
            // updated (the WHERE), and then no row comes back.
            let counted = tx
                .query_opt(
                    "INSERT INTO login_throttle AS t (key, failures, last_failure, blocked_until)
                     VALUES ($1::text, 1, $2::bigint,
                             CASE WHEN 1 >= $3::integer THEN $2::bigint + $5::bigint END)
                     ON CONFLICT (key) DO UPDATE SET
                         failures = CASE WHEN t.last_failure < $2 - $4::bigint THEN 1 ELSE t.failures + 1 END,
                         last_failure = $2,
                         blocked_until = CASE
                             WHEN (CASE WHEN t.last_failure < $2 - $4 THEN 1 ELSE t.failures + 1 END) >= $3
                             THEN $2 + LEAST($4, $5 * (1::bigint << LEAST(16,
                                 (CASE WHEN t.last_failure < $2 - $4 THEN 1 ELSE t.failures + 1 END) - $3)))
                         END
                     WHERE t.blocked_until IS NULL OR t.blocked_until <= $2
                     RETURNING t.failures",
                    &[&key.key, &now, &max, &window, &base],
                )
                .await?;
            if counted.is_none() {
                let until: Option<i64> = tx
                    .query_one(
                        "SELECT blocked_until FROM login_throttle WHERE key = $1",
                        &[&key.key],
                    )
                    .await?
                    .try_get(0)?;
                // Rolled back: the keys counted before this one are not charged.
                tx.rollback().await?;
                let wait = until.map_or(1, |until| (until - now).max(1));
                return Ok(Some(u64::try_from(wait).unwrap_or(1)));
            }
        }
        tx.commit().await?;
        Ok(None)
    }

    /// Gives back an attempt counted up front: `clear` forgets the key (an account whose
    /// password was right); otherwise one failure is taken back, and the block it may have
    /// started with it.
    pub async fn throttle_refund(&self, key: &ThrottleKey, clear: bool) -> Result<(), StoreError> {
        let client = self.client().await?;
        if clear {
            client
                .execute("DELETE FROM login_throttle WHERE key = $1", &[&key.key])
                .await?;
        } else {
            let max = i32::try_from(key.max_failures).unwrap_or(i32::MAX);
            client
                .execute(
                    "UPDATE login_throttle SET
                         failures = GREATEST(failures - 1, 0),
                         blocked_until = CASE WHEN failures - 1 >= $2::integer THEN blocked_until END
                     WHERE key = $1",
                    &[&key.key, &max],
                )
                .await?;
        }
        Ok(())
    }

    /// Housekeeping: keys with no failure for 15 minutes and no block left are forgotten.
    pub async fn throttle_purge(&self, now: u64) -> Result<u64, StoreError> {
        let now = to_i64(now);
        let client = self.client().await?;
        Ok(client
            .execute(
                "DELETE FROM login_throttle
                 WHERE last_failure < $1 AND (blocked_until IS NULL OR blocked_until <= $2)",
                &[&(now - to_i64(WINDOW.as_secs())), &now],
            )
            .await?)
    }
}
