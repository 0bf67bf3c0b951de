//! Sessions on SQLite: creating them, the check behind every request, refresh-token rotation with
//! its grace window and reuse detection, and housekeeping.

use tokio_rusqlite::rusqlite::{self, OptionalExtension, TransactionBehavior, params};

use super::audit::commit_with;
use super::{SqliteStore, role_from_db, to_i64, user_from_row};
use crate::audit::{Context, Event, Kind};
use crate::store::{NewSession, Refresh, Role, Rotation, SessionInfo, StoreError, User};

/// The session whose previous refresh token was presented.
struct Rotated {
    session_id: String,
    user_id: i64,
    role: Role,
    sealed_successor: Option<Vec<u8>>,
    rotated_at: Option<i64>,
    expires_at: i64,
}

/// Spent refresh tokens remembered per session (reuse of an older one is refused, not detected).
const SPENT_KEPT: i64 = 64;

impl SqliteStore {
    pub async fn create_session(&self, s: NewSession<'_>) -> Result<(), StoreError> {
        let (id, user_id, hash, password_hash, now, expires_at) = (
            s.id.to_owned(),
            s.user_id,
            s.refresh_hash.to_vec(),
            s.password_hash,
            to_i64(s.now),
            to_i64(s.expires_at),
        );
        let (user_agent, ip, second_factor) = (s.user_agent, s.ip, s.second_factor);
        let (event, audit) = (s.event, s.audit.clone());
        self.write(move |c| {
            let tx = c.transaction()?;
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO sessions (id, user_id, refresh_hash, created_at, expires_at, last_used_at, user_agent, ip)
                     SELECT ?1, id, ?3, ?4, ?5, ?4, ?7, ?8 FROM users
                     WHERE id = ?2 AND password_hash = ?6 AND disabled_at IS NULL
                       AND (?9 OR mfa_enabled_at IS NULL)",
                )?
                .execute(params![id, user_id, hash, now, expires_at, password_hash, user_agent, ip, second_factor])?;
            if inserted == 0 {
                // The user was deleted or disabled, or its password changed, since the check.
                return Err(StoreError::PasswordChanged);
            }
            commit_with(tx, &audit, &[event])?;
            Ok(())
        })
        .await
    }

    /// The user of a live session: the check behind every authenticated request.
    pub async fn session_user(
        &self,
        session_id: String,
        user_id: i64,
        now: u64,
    ) -> Result<Option<User>, StoreError> {
        let now = to_i64(now);
        let read = move |c: &rusqlite::Connection, id: &str| {
            let mut stmt = c.prepare_cached(
                "SELECT u.id, u.email, u.full_name, u.role, u.created_at, u.email_verified_at IS NOT NULL,
                        u.disabled_at IS NOT NULL, u.mfa_enabled_at IS NOT NULL, s.expires_at
                 FROM sessions s JOIN users u ON u.id = s.user_id
                 WHERE s.id = ?1 AND s.user_id = ?2 AND s.expires_at > ?3 AND u.disabled_at IS NULL",
            )?;
            Ok(stmt
                .query_row(params![id, user_id, now], |r| {
                    Ok((user_from_row(r)?, r.get::<_, i64>(8)?))
                })
                .optional()?)
        };
        // Every authenticated request makes this read: on its own thread (two primary-key
        // lookups), not handed to a reader thread and back (unless it would have to wait), and
        // not at all when the database has not changed since the same check (see `seen`).
        let inline = self.read_inline(|c, header| {
            if let Some(user) = header.and_then(|h| self.seen.get(&session_id, user_id, now, &h)) {
                return Ok(Some(user));
            }
            let found = read(c, &session_id)?;
            Ok(found.map(|(user, expires_at)| {
                if let Some(header) = header {
                    self.seen.keep(&session_id, header, expires_at, &user);
                }
                user
            }))
        });
        match inline {
            Some(result) => result,
            None => Ok(self
                .read(move |c| read(c, &session_id))
                .await?
                .map(|(user, _)| user)),
        }
    }

    /// Exchanges a refresh token, in one transaction, so that two racing exchanges of one token
    /// are serialised: the first rotates, the second finds a just-spent token (grace) and never
    /// starts a second chain. Reuse after the grace window deletes the session (and so every
    /// access and refresh token of it).
    pub async fn refresh(&self, r: Rotation) -> Result<Refresh, StoreError> {
        // A token that no session knows (garbage, an expired session's) is answered from a
        // reader: a flood of them must not queue every write behind the one writer.
        let presented = r.presented;
        let known = self
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM sessions WHERE refresh_hash = ?1)
                         OR EXISTS (SELECT 1 FROM sessions WHERE prev_hash = ?1)
                         OR EXISTS (SELECT 1 FROM spent_refresh_tokens WHERE hash = ?1)",
                )?;
                Ok(stmt.query_row(params![&presented[..]], |row| row.get::<_, bool>(0))?)
            })
            .await?;
        if !known {
            return Ok(Refresh::Invalid);
        }
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = to_i64(r.now);
            let presented = &r.presented[..];
            let live: Option<(String, i64, String, i64)> = tx
                .prepare_cached(
                    "SELECT s.id, s.user_id, u.role, s.expires_at FROM sessions s JOIN users u ON u.id = s.user_id
                     WHERE s.refresh_hash = ?1 AND s.expires_at > ?2",
                )?
                .query_row(params![presented, now], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                })
                .optional()?;
            if let Some((session_id, user_id, role, expires_at)) = live {
                let role = role_from_db(&role)?;
                tx.prepare_cached(
                    "UPDATE sessions SET refresh_hash = ?1, prev_hash = ?2, prev_successor = ?3, rotated_at = ?4,
                                         last_used_at = ?4, user_agent = ?6, ip = ?7
                     WHERE id = ?5",
                )?
                .execute(params![&r.successor[..], presented, &r.sealed_successor[..], now, session_id, r.user_agent, r.ip])?;
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO spent_refresh_tokens (hash, session_id, spent_at) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![presented, session_id, r.spent_order])?;
                tx.prepare_cached(
                    "DELETE FROM spent_refresh_tokens WHERE session_id = ?1 AND hash NOT IN
                     (SELECT hash FROM spent_refresh_tokens WHERE session_id = ?1
                      ORDER BY spent_at DESC LIMIT ?2)",
                )?
                .execute(params![session_id, SPENT_KEPT])?;
                tx.commit()?;
                return Ok(Refresh::Rotated {
                    user_id,
                    session_id,
                    role,
                    expires_at: u64::try_from(expires_at).unwrap_or(0),
                });
            }

            let previous = tx
                .prepare_cached(
                    "SELECT s.id, s.user_id, s.prev_successor, s.rotated_at, s.expires_at, u.role
                     FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.prev_hash = ?1",
                )?
                .query_row(params![presented], |row| {
                    Ok(Rotated {
                        session_id: row.get(0)?,
                        user_id: row.get(1)?,
                        sealed_successor: row.get(2)?,
                        rotated_at: row.get(3)?,
                        expires_at: row.get(4)?,
                        role: role_from_db(&row.get::<_, String>(5)?)?,
                    })
                })
                .optional()?;
            let in_grace = |p: &Rotated| {
                p.rotated_at.is_some_and(|at| now - at <= to_i64(r.grace_seconds))
                    && p.expires_at > now
                    && p.sealed_successor.is_some()
            };
            let spent_by = match previous {
                Some(p) if in_grace(&p) => {
                    return Ok(Refresh::Grace {
                        user_id: p.user_id,
                        session_id: p.session_id,
                        role: p.role,
                        expires_at: u64::try_from(p.expires_at).unwrap_or(0),
                        sealed_successor: p.sealed_successor.unwrap_or_default(),
                    });
                }
                Some(p) => Some((p.session_id, p.user_id)),
                None => tx
                    .prepare_cached(
                        "SELECT s.id, s.user_id FROM spent_refresh_tokens t JOIN sessions s ON s.id = t.session_id
                         WHERE t.hash = ?1",
                    )?
                    .query_row(params![presented], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()?,
            };
            match spent_by {
                Some((session_id, user_id)) => {
                    tx.prepare_cached("DELETE FROM sessions WHERE id = ?1")?
                        .execute(params![session_id])?;
                    let event = Event::new(Kind::RefreshReuseDetected, Some(user_id))
                        .with("session_id", session_id.as_str());
                    commit_with(tx, &r.audit, &[event])?;
                    Ok(Refresh::Reused { user_id, session_id })
                }
                None => Ok(Refresh::Invalid),
            }
        })
        .await
    }

    /// Ends one session (logout): its access and refresh tokens stop working at once.
    pub async fn delete_session(
        &self,
        session_id: String,
        audit: Context,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let user_id: Option<i64> = tx
                .prepare_cached("DELETE FROM sessions WHERE id = ?1 RETURNING user_id")?
                .query_row(params![session_id], |r| r.get(0))
                .optional()?;
            let events: Vec<Event> = user_id
                .map(|u| crate::audit::sessions_revoked(u, "logout", Some(&session_id), 1))
                .into_iter()
                .collect();
            commit_with(tx, &audit, &events)?;
            Ok(())
        })
        .await
    }

    pub async fn sessions_of(
        &self,
        user_id: i64,
        now: u64,
    ) -> Result<Vec<SessionInfo>, StoreError> {
        let now = to_i64(now);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, created_at, coalesce(last_used_at, rotated_at, created_at), expires_at, user_agent, ip
                 FROM sessions WHERE user_id = ?1 AND expires_at > ?2
                 ORDER BY created_at DESC, id",
            )?;
            let rows = stmt.query_map(params![user_id, now], |r| {
                Ok(SessionInfo {
                    id: r.get(0)?,
                    created_at: r.get(1)?,
                    last_used_at: r.get(2)?,
                    expires_at: r.get(3)?,
                    user_agent: r.get(4)?,
                    ip: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub async fn end_session(
        &self,
        user_id: i64,
        session_id: String,
        audit: Context,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let ended = tx
                .prepare_cached("DELETE FROM sessions WHERE id = ?1 AND user_id = ?2")?
                .execute(params![session_id, user_id])?;
            if ended == 0 {
                return Ok(false);
            }
            let event = crate::audit::sessions_revoked(
                user_id,
                crate::audit::revoked_by(&audit, user_id),
                Some(&session_id),
                1,
            );
            commit_with(tx, &audit, &[event])?;
            Ok(true)
        })
        .await
    }

    pub async fn end_sessions(
        &self,
        user_id: i64,
        keep: Option<String>,
        audit: Context,
    ) -> Result<u64, StoreError> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let ended = tx
                .prepare_cached(
                    "DELETE FROM sessions WHERE user_id = ?1 AND (?2 IS NULL OR id != ?2)",
                )?
                .execute(params![user_id, keep])? as u64;
            let events: Vec<Event> = (ended > 0)
                .then(|| {
                    crate::audit::sessions_revoked(
                        user_id,
                        crate::audit::revoked_by(&audit, user_id),
                        None,
                        ended,
                    )
                })
                .into_iter()
                .collect();
            commit_with(tx, &audit, &events)?;
            Ok(ended)
        })
        .await
    }

    pub async fn purge_expired_sessions(
        &self,
        now: u64,
        grace_seconds: u64,
    ) -> Result<usize, StoreError> {
        let (now, grace) = (to_i64(now), to_i64(grace_seconds));
        self.write(move |c| {
            let tx = c.transaction()?;
            let expired = tx
                .prepare_cached("DELETE FROM sessions WHERE expires_at <= ?1")?
                .execute(params![now])?;
            tx.prepare_cached(
                "UPDATE sessions SET prev_successor = NULL
                 WHERE prev_successor IS NOT NULL AND rotated_at < ?1",
            )?
            .execute(params![now - grace])?;
            tx.commit()?;
            Ok(expired)
        })
        .await
    }
}
