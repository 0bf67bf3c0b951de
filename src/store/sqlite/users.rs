//! Users on SQLite: accounts, passwords, roles, the admin operations and their rules.

use tokio_rusqlite::rusqlite::{self, OptionalExtension, TransactionBehavior, params};

use super::audit::commit_with;
use super::mail;
use super::{SqliteStore, is_unique_violation, role_from_db, to_i64, user_columns, user_from_row};
use crate::audit::{Context, Event, Kind};
use crate::store::{Credentials, MailKind, Page, Role, StoreError, User, UserChange, UserQuery};

impl SqliteStore {
    pub async fn email_exists(&self, email: String) -> Result<bool, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached("SELECT 1 FROM users WHERE email = ?1")?;
            Ok(stmt.exists(params![email])?)
        })
        .await
    }

    /// Inserts a user; an email already present (in any case) is `EmailTaken`, also when two
    /// registrations race: the database's unique index decides.
    pub async fn create_user(
        &self,
        email: String,
        full_name: Option<String>,
        password_hash: String,
        role: Role,
        verification_at: Option<u64>,
        audit: Context,
    ) -> Result<User, StoreError> {
        self.write(move |c| {
            // An explicit transaction: its commit reports a failure (a full disk) that a
            // statement's own autocommit would hide once its RETURNING row has been read.
            let tx = c.transaction()?;
            let user = tx
                .prepare_cached(concat!(
                    "INSERT INTO users (email, full_name, password_hash, role) VALUES (?1, ?2, ?3, ?4) RETURNING ",
                    user_columns!()
                ))?
                .query_row(
                    params![email, full_name, password_hash, role.as_str()],
                    user_from_row,
                )
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::EmailTaken
                    } else {
                        e.into()
                    }
                })?;
            if let Some(now) = verification_at {
                mail::queue(&tx, user.id, &user.email, MailKind::VerifyEmail, to_i64(now))?;
            }
            let event = Event::new(Kind::UserRegistered, Some(user.id)).with("role", role.as_str());
            commit_with(tx, &audit, &[event])?;
            Ok(user)
        })
        .await
    }

    pub async fn credentials(&self, email: String) -> Result<Option<Credentials>, StoreError> {
        self.read(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT id, password_hash, role, email_verified_at IS NOT NULL, disabled_at IS NOT NULL, mfa_enabled_at IS NOT NULL FROM users WHERE email = ?1")?;
            Ok(stmt
                .query_row(params![email], |row| {
                    Ok(Credentials {
                        user_id: row.get(0)?,
                        password_hash: row.get(1)?,
                        role: role_from_db(&row.get::<_, String>(2)?)?,
                        email_verified: row.get(3)?,
                        disabled: row.get(4)?,
                        mfa_enabled: row.get(5)?,
                    })
                })
                .optional()?)
        })
        .await
    }

    /// Replaces a hash made with another cost (after a good login), leaving sessions alone.
    /// `false` when the stored hash is no longer `old` (the password changed meanwhile).
    pub async fn rehash_password(
        &self,
        user_id: i64,
        old: String,
        new: String,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            let changed = c
                .prepare_cached(
                    "UPDATE users SET password_hash = ?1 WHERE id = ?2 AND password_hash = ?3",
                )?
                .execute(params![new, user_id, old])?;
            Ok(changed == 1)
        })
        .await
    }

    pub async fn password_hash(&self, user_id: i64) -> Result<Option<String>, StoreError> {
        self.read(move |c| {
            Ok(
                c.prepare_cached("SELECT password_hash FROM users WHERE id = ?1")?
                    .query_row(params![user_id], |r| r.get(0))
                    .optional()?,
            )
        })
        .await
    }

    /// Sets a new password and ends every session of the user, in one transaction. `false` when
    /// the stored hash is no longer `old` (a concurrent change won).
    pub async fn change_password(
        &self,
        user_id: i64,
        old: String,
        new: String,
        audit: Context,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let changed = tx
                .prepare_cached(
                    "UPDATE users SET password_hash = ?1 WHERE id = ?2 AND password_hash = ?3",
                )?
                .execute(params![new, user_id, old])?;
            if changed == 0 {
                return Ok(false);
            }
            let ended = tx
                .prepare_cached("DELETE FROM sessions WHERE user_id = ?1")?
                .execute(params![user_id])?;
            // A reset link mailed before the change must not undo it.
            tx.prepare_cached(
                "DELETE FROM mail_tokens WHERE user_id = ?1 AND kind = 'reset_password'",
            )?
            .execute(params![user_id])?;
            let event = crate::audit::password_changed(user_id, ended as u64);
            commit_with(tx, &audit, &[event])?;
            Ok(true)
        })
        .await
    }

    /// Sets (or clears, with `None`) the user's full name; the user as stored afterwards.
    pub async fn set_full_name(
        &self,
        user_id: i64,
        full_name: Option<String>,
    ) -> Result<Option<User>, StoreError> {
        self.write(move |c| {
            // An explicit transaction, so that a failed commit is reported (see `create_user`).
            let tx = c.transaction()?;
            let user = tx
                .prepare_cached(concat!(
                    "UPDATE users SET full_name = ?1 WHERE id = ?2 RETURNING ",
                    user_columns!()
                ))?
                .query_row(params![full_name, user_id], user_from_row)
                .optional()?;
            tx.commit()?;
            Ok(user)
        })
        .await
    }

    pub async fn list_users(&self, query: UserQuery) -> Result<Page, StoreError> {
        self.read(move |c| {
            let tx = c.transaction()?;
            // Every user: the count the triggers keep (no scan, however many there are). Those
            // matching `q`: counted (the search reads them all anyway). `instr` rather than LIKE:
            // nothing in `q` is a pattern (emails are stored lower-cased).
            let total = match &query.q {
                None => tx
                    .prepare_cached("SELECT value FROM counters WHERE name = 'users'")?
                    .query_row([], |r| r.get(0))?,
                Some(q) => tx
                    .prepare_cached("SELECT count(*) FROM users WHERE instr(email, ?1) > 0")?
                    .query_row(params![q], |r| r.get(0))?,
            };
            let items = tx
                .prepare_cached(concat!(
                    "SELECT ",
                    user_columns!(),
                    " FROM users WHERE (?1 IS NULL OR instr(email, ?1) > 0) AND id > ?2
                     ORDER BY id LIMIT ?3 OFFSET ?4"
                ))?
                .query_map(
                    params![
                        query.q,
                        query.after_id.unwrap_or(0),
                        query.limit,
                        query.offset
                    ],
                    user_from_row,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Page { items, total })
        })
        .await
    }

    pub async fn user(&self, user_id: i64) -> Result<Option<User>, StoreError> {
        self.read(move |c| {
            Ok(c.prepare_cached(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users WHERE id = ?1"
            ))?
            .query_row(params![user_id], user_from_row)
            .optional()?)
        })
        .await
    }

    pub async fn find_user_by_email(&self, email: String) -> Result<Option<User>, StoreError> {
        self.read(move |c| {
            Ok(c.prepare_cached(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users WHERE email = ?1"
            ))?
            .query_row(params![email], user_from_row)
            .optional()?)
        })
        .await
    }

    /// Marks the email verified now, unless it already is.
    pub async fn mark_email_verified(
        &self,
        user_id: i64,
        now: u64,
        audit: Context,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let verified = tx
                .prepare_cached(
                    "UPDATE users SET email_verified_at = ?1 WHERE id = ?2 AND email_verified_at IS NULL",
                )?
                .execute(params![to_i64(now), user_id])?;
            let events = if verified == 1 {
                vec![crate::audit::email_verified(user_id, "create-admin")]
            } else {
                Vec::new()
            };
            commit_with(tx, &audit, &events)?;
            Ok(())
        })
        .await
    }

    /// Changes a user's role and whether it is disabled, as the admin `actor_id`, in one
    /// transaction with the last-admin count and the actor's own role, so two admins acting on
    /// each other at once cannot leave no enabled admin, and an admin demoted while this request
    /// was on its way is refused (403), not obeyed. Disabling ends every session of the user.
    pub async fn update_user(
        &self,
        actor_id: i64,
        user_id: i64,
        change: UserChange,
        audit: Context,
    ) -> Result<User, StoreError> {
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            require_admin(&tx, actor_id)?;
            let (user, event) = change_user(&tx, user_id, change)?;
            commit_with(tx, &audit, event.as_slice())?;
            Ok(user)
        })
        .await
    }

    /// Makes a user an admin (the `create-admin` command: the operator needs no role).
    pub async fn promote(&self, user_id: i64, audit: Context) -> Result<User, StoreError> {
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (user, event) = change_user(
                &tx,
                user_id,
                UserChange {
                    role: Some(Role::Admin),
                    disabled: None,
                },
            )?;
            commit_with(tx, &audit, event.as_slice())?;
            Ok(user)
        })
        .await
    }

    /// Deletes a user and (foreign key cascade) its sessions: the user itself when `actor_id` is
    /// `None`, else as that admin, whose role is checked inside the transaction. Unknown is 404;
    /// the last admin is refused with 409, whether an admin deletes it or it deletes itself.
    pub async fn delete_user(
        &self,
        actor_id: Option<i64>,
        user_id: i64,
        audit: Context,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(actor_id) = actor_id {
                require_admin(&tx, actor_id)?;
            }
            // Deleting oneself when already gone: the caller's token is dead, not a 404.
            let standing = match standing_of(&tx, user_id) {
                Err(StoreError::NotFound) if actor_id.is_none() => {
                    return Err(StoreError::ActorGone);
                }
                standing => standing?,
            };
            if standing.enabled_admin() && admins_other_than(&tx, user_id)? == 0 {
                return Err(StoreError::LastAdmin);
            }
            tx.prepare_cached("DELETE FROM users WHERE id = ?1")?
                .execute(params![user_id])?;
            commit_with(tx, &audit, &[crate::audit::deleted(actor_id, user_id)])?;
            Ok(())
        })
        .await
    }
}

/// Enabled admins other than `user_id`.
fn admins_other_than(tx: &rusqlite::Transaction<'_>, user_id: i64) -> rusqlite::Result<i64> {
    tx.prepare_cached(
        "SELECT count(*) FROM users WHERE role = 'admin' AND disabled_at IS NULL AND id != ?1",
    )?
    .query_row(params![user_id], |r| r.get(0))
}

/// A user's role and whether it is disabled.
#[derive(Debug, Clone, Copy)]
struct Standing {
    role: Role,
    disabled: bool,
}

impl Standing {
    fn enabled_admin(self) -> bool {
        self.role == Role::Admin && !self.disabled
    }
}

fn standing_of(tx: &rusqlite::Transaction<'_>, user_id: i64) -> Result<Standing, StoreError> {
    let row: Option<(String, bool)> = tx
        .prepare_cached("SELECT role, disabled_at IS NOT NULL FROM users WHERE id = ?1")?
        .query_row(params![user_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match row {
        Some((role, disabled)) => Ok(Standing {
            role: role_from_db(&role)?,
            disabled,
        }),
        None => Err(StoreError::NotFound),
    }
}

/// The actor of an admin change must still be an enabled admin when the change is written.
fn require_admin(tx: &rusqlite::Transaction<'_>, actor_id: i64) -> Result<(), StoreError> {
    match standing_of(tx, actor_id) {
        Ok(s) if s.enabled_admin() => Ok(()),
        // Disabled meanwhile: its sessions, this request's too, are gone.
        Ok(s) if s.disabled => Err(StoreError::ActorGone),
        Ok(_) => Err(StoreError::NotAdmin),
        // The admin's account was deleted meanwhile: its token is dead.
        Err(StoreError::NotFound) => Err(StoreError::ActorGone),
        Err(e) => Err(e),
    }
}

/// Applies a change inside a write transaction, refusing to leave no enabled admin; disabling
/// ends the user's sessions. The user afterwards, and the event of what changed (none when
/// nothing did).
fn change_user(
    tx: &rusqlite::Transaction<'_>,
    user_id: i64,
    change: UserChange,
) -> Result<(User, Option<Event>), StoreError> {
    let current = standing_of(tx, user_id)?;
    let after = Standing {
        role: change.role.unwrap_or(current.role),
        disabled: change.disabled.unwrap_or(current.disabled),
    };
    if current.enabled_admin() && !after.enabled_admin() && admins_other_than(tx, user_id)? == 0 {
        return Err(StoreError::LastAdmin);
    }
    let mut sessions_ended = 0;
    if after.disabled && !current.disabled {
        sessions_ended = tx
            .prepare_cached("DELETE FROM sessions WHERE user_id = ?1")?
            .execute(params![user_id])?;
    }
    let event = crate::audit::user_updated(
        user_id,
        (current.role, after.role),
        (current.disabled, after.disabled),
        sessions_ended as u64,
    );
    let user = tx
        .prepare_cached(concat!(
            "UPDATE users SET role = ?1,
                 disabled_at = CASE WHEN ?2 THEN coalesce(disabled_at, unixepoch()) END
             WHERE id = ?3 RETURNING ",
            user_columns!()
        ))?
        .query_row(
            params![after.role.as_str(), after.disabled, user_id],
            user_from_row,
        )?;
    Ok((user, event))
}
