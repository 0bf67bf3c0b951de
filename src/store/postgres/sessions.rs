//! Sessions on PostgreSQL: creating them, the check behind every request, refresh-token rotation
//! with its grace window and reuse detection, and housekeeping. Row locks order what SQLite's one
//! writer orders by itself.

use super::audit::commit_with;
use super::{PostgresStore, role_from_db, to_i64, user_columns, user_from_row};
use crate::audit::{Context, Event, Kind};
use crate::store::{NewSession, Refresh, Rotation, SessionInfo, StoreError, User};

/// Spent refresh tokens remembered per session (reuse of an older one is refused, not detected).
const SPENT_KEPT: i64 = 64;

impl PostgresStore {
    pub async fn create_session(&self, s: NewSession<'_>) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // FOR SHARE: a password change under way (it holds the row's lock) is waited for and its
        // new hash then fails the check; a change that comes later waits for this insert and
        // then deletes the new session with the others.
        let stmt = tx
            .prepare_cached(
                "INSERT INTO sessions (id, user_id, refresh_hash, created_at, expires_at, last_used_at, user_agent, ip)
                 SELECT $1, id, $3, $4, $5, $4, $7, $8 FROM users
                 WHERE id = $2 AND password_hash = $6 AND disabled_at IS NULL
                   AND ($9 OR mfa_enabled_at IS NULL)
                 FOR SHARE",
            )
            .await?;
        let inserted = tx
            .execute(
                &stmt,
                &[
                    &s.id,
                    &s.user_id,
                    &&s.refresh_hash[..],
                    &to_i64(s.now),
                    &to_i64(s.expires_at),
                    &s.password_hash,
                    &s.user_agent,
                    &s.ip,
                    &s.second_factor,
                ],
            )
            .await?;
        if inserted == 0 {
            // The user was deleted or disabled, or its password changed, since the check.
            return Err(StoreError::PasswordChanged);
        }
        commit_with(tx, s.audit, &[s.event]).await
    }

    pub async fn session_user(
        &self,
        session_id: String,
        user_id: i64,
        now: u64,
    ) -> Result<Option<User>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(concat!(
                "SELECT ",
                user_columns!(),
                " FROM sessions s JOIN users u ON u.id = s.user_id
                  WHERE s.id = $1 AND s.user_id = $2 AND s.expires_at > $3 AND u.disabled_at IS NULL"
            ))
            .await?;
        let row = client
            .query_opt(&stmt, &[&session_id, &user_id, &to_i64(now)])
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn refresh(&self, r: Rotation) -> Result<Refresh, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let now = to_i64(r.now);
        let presented = &r.presented[..];
        // FOR UPDATE: a racing exchange of the same token (on any replica) waits here, then
        // finds the token spent and takes the grace path below; it never starts a second chain.
        let live = tx
            .query_opt(
                "SELECT s.id, s.user_id, u.role, s.expires_at FROM sessions s JOIN users u ON u.id = s.user_id
                 WHERE s.refresh_hash = $1 AND s.expires_at > $2
                 FOR UPDATE OF s",
                &[&presented, &now],
            )
            .await?;
        if let Some(row) = live {
            let session_id: String = row.try_get(0)?;
            let user_id: i64 = row.try_get(1)?;
            let role = role_from_db(row.try_get(2)?)?;
            let expires_at: i64 = row.try_get(3)?;
            tx.execute(
                "UPDATE sessions SET refresh_hash = $1, prev_hash = $2, prev_successor = $3, rotated_at = $4,
                                     last_used_at = $4, user_agent = $6, ip = $7
                 WHERE id = $5",
                &[
                    &&r.successor[..],
                    &presented,
                    &&r.sealed_successor[..],
                    &now,
                    &session_id,
                    &r.user_agent,
                    &r.ip,
                ],
            )
            .await?;
            tx.execute(
                "INSERT INTO spent_refresh_tokens (hash, session_id, spent_at) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&presented, &session_id, &r.spent_order],
            )
            .await?;
            tx.execute(
                "DELETE FROM spent_refresh_tokens WHERE session_id = $1 AND hash NOT IN
                 (SELECT hash FROM spent_refresh_tokens WHERE session_id = $1
                  ORDER BY spent_at DESC LIMIT $2)",
                &[&session_id, &SPENT_KEPT],
            )
            .await?;
            tx.commit().await?;
            return Ok(Refresh::Rotated {
                user_id,
                session_id,
                role,
                expires_at: u64::try_from(expires_at).unwrap_or(0),
            });
        }

        let previous = tx
            .query_opt(
                "SELECT s.id, s.user_id, s.prev_successor, s.rotated_at, s.expires_at, u.role
                 FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.prev_hash = $1",
                &[&presented],
            )
            .await?;
        let spent_by = match previous {
            Some(row) => {
                let session_id: String = row.try_get(0)?;
                let user_id: i64 = row.try_get(1)?;
                let sealed: Option<Vec<u8>> = row.try_get(2)?;
                let rotated_at: Option<i64> = row.try_get(3)?;
                let expires_at: i64 = row.try_get(4)?;
                let role = role_from_db(row.try_get(5)?)?;
                let in_grace = rotated_at.is_some_and(|at| now - at <= to_i64(r.grace_seconds))
                    && expires_at > now;
                match sealed {
                    Some(sealed_successor) if in_grace => {
                        return Ok(Refresh::Grace {
                            user_id,
                            session_id,
                            role,
                            expires_at: u64::try_from(expires_at).unwrap_or(0),
                            sealed_successor,
                        });
                    }
                    _ => Some((session_id, user_id)),
                }
            }
            None => tx
                .query_opt(
                    "SELECT s.id, s.user_id FROM spent_refresh_tokens t JOIN sessions s ON s.id = t.session_id
                     WHERE t.hash = $1",
                    &[&presented],
                )
                .await?
                .map(|row| Ok::<_, StoreError>((row.try_get(0)?, row.try_get(1)?)))
                .transpose()?,
        };
        match spent_by {
            Some((session_id, user_id)) => {
                tx.execute("DELETE FROM sessions WHERE id = $1", &[&session_id])
                    .await?;
                let event = Event::new(Kind::RefreshReuseDetected, Some(user_id))
                    .with("session_id", session_id.as_str());
                commit_with(tx, &r.audit, &[event]).await?;
                Ok(Refresh::Reused {
                    user_id,
                    session_id,
                })
            }
            None => Ok(Refresh::Invalid),
        }
    }

    pub async fn delete_session(
        &self,
        session_id: String,
        audit: Context,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let stmt = tx
            .prepare_cached("DELETE FROM sessions WHERE id = $1 RETURNING user_id")
            .await?;
        let events: Vec<Event> = tx
            .query_opt(&stmt, &[&session_id])
            .await?
            .map(|row| row.try_get(0))
            .transpose()?
            .map(|user_id| crate::audit::sessions_revoked(user_id, "logout", Some(&session_id), 1))
            .into_iter()
            .collect();
        commit_with(tx, &audit, &events).await
    }

    pub async fn sessions_of(
        &self,
        user_id: i64,
        now: u64,
    ) -> Result<Vec<SessionInfo>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, created_at, coalesce(last_used_at, rotated_at, created_at), expires_at, user_agent, ip
                 FROM sessions WHERE user_id = $1 AND expires_at > $2
                 ORDER BY created_at DESC, id",
            )
            .await?;
        client
            .query(&stmt, &[&user_id, &to_i64(now)])
            .await?
            .iter()
            .map(|r| {
                Ok(SessionInfo {
                    id: r.try_get(0)?,
                    created_at: r.try_get(1)?,
                    last_used_at: r.try_get(2)?,
                    expires_at: r.try_get(3)?,
                    user_agent: r.try_get(4)?,
                    ip: r.try_get(5)?,
                })
            })
            .collect()
    }

    pub async fn end_session(
        &self,
        user_id: i64,
        session_id: String,
        audit: Context,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let ended = tx
            .execute(
                "DELETE FROM sessions WHERE id = $1 AND user_id = $2",
                &[&session_id, &user_id],
            )
            .await?;
        if ended == 0 {
            return Ok(false);
        }
        let reason = crate::audit::revoked_by(&audit, user_id);
        let event = crate::audit::sessions_revoked(user_id, reason, Some(&session_id), 1);
        commit_with(tx, &audit, &[event]).await?;
        Ok(true)
    }

    pub async fn end_sessions(
        &self,
        user_id: i64,
        keep: Option<String>,
        audit: Context,
    ) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let ended = tx
            .execute(
                "DELETE FROM sessions WHERE user_id = $1 AND ($2::text IS NULL OR id <> $2)",
                &[&user_id, &keep],
            )
            .await?;
        let reason = crate::audit::revoked_by(&audit, user_id);
        let events: Vec<Event> = (ended > 0)
            .then(|| crate::audit::sessions_revoked(user_id, reason, None, ended))
            .into_iter()
            .collect();
        commit_with(tx, &audit, &events).await?;
        Ok(ended)
    }

    pub async fn purge_expired_sessions(
        &self,
        now: u64,
        grace_seconds: u64,
    ) -> Result<usize, StoreError> {
        let (now, grace) = (to_i64(now), to_i64(grace_seconds));
        let client = self.client().await?;
        let expired = client
            .execute("DELETE FROM sessions WHERE expires_at <= $1", &[&now])
            .await?;
        client
            .execute(
                "UPDATE sessions SET prev_successor = NULL
                 WHERE prev_successor IS NOT NULL AND rotated_at < $1",
                &[&(now - grace)],
            )
            .await?;
        Ok(usize::try_from(expired).unwrap_or(usize::MAX))
    }
}
