//! Users on SQLite: accounts, passwords, roles, the admin operations and their rules.

use tokio_rusqlite::rusqlite::{self, OptionalExtension, TransactionBehavior, params};

use super::mail;
use super::{SqliteStore, is_unique_violation, role_from_db, to_i64, user_columns, user_from_row};
use crate::store::{Credentials, MailKind, Page, Role, StoreError, User};

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
            tx.commit()?;
            Ok(user)
        })
        .await
    }

    pub async fn credentials(&self, email: String) -> Result<Option<Credentials>, StoreError> {
        self.read(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT id, password_hash, role, email_verified_at IS NOT NULL FROM users WHERE email = ?1")?;
            Ok(stmt
                .query_row(params![email], |row| {
                    Ok(Credentials {
                        user_id: row.get(0)?,
                        password_hash: row.get(1)?,
                        role: role_from_db(&row.get::<_, String>(2)?)?,
                        email_verified: row.get(3)?,
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
            tx.prepare_cached("DELETE FROM sessions WHERE user_id = ?1")?
                .execute(params![user_id])?;
            // A reset link mailed before the change must not undo it.
            tx.prepare_cached(
                "DELETE FROM mail_tokens WHERE user_id = ?1 AND kind = 'reset_password'",
            )?
            .execute(params![user_id])?;
            tx.commit()?;
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

    pub async fn list_users(&self, limit: i64, offset: i64) -> Result<Page, StoreError> {
        self.read(move |c| {
            let tx = c.transaction()?;
            let total = tx
                .prepare_cached("SELECT count(*) FROM users")?
                .query_row([], |r| r.get(0))?;
            let items = tx
                .prepare_cached(concat!(
                    "SELECT ",
                    user_columns!(),
                    " FROM users ORDER BY id LIMIT ?1 OFFSET ?2"
                ))?
                .query_map(params![limit, offset], user_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Page { items, total })
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
    pub async fn mark_email_verified(&self, user_id: i64, now: u64) -> Result<(), StoreError> {
        self.write(move |c| {
            c.prepare_cached(
                "UPDATE users SET email_verified_at = ?1 WHERE id = ?2 AND email_verified_at IS NULL",
            )?
            .execute(params![to_i64(now), user_id])?;
            Ok(())
        })
        .await
    }

    /// Sets a user's role, as the admin `actor_id`; demoting the last admin is refused (409), in
    /// the same transaction as the count, so two admins demoting each other at once cannot leave
    /// none. The actor's own role is read in that transaction too: an admin demoted while this
    /// request was on its way is refused (403), not obeyed.
    pub async fn set_role(
        &self,
        actor_id: i64,
        user_id: i64,
        role: Role,
    ) -> Result<User, StoreError> {
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            require_admin(&tx, actor_id)?;
            let user = change_role(&tx, user_id, role)?;
            tx.commit()?;
            Ok(user)
        })
        .await
    }

    /// Makes a user an admin (the `create-admin` command: the operator needs no role).
    pub async fn promote(&self, user_id: i64) -> Result<User, StoreError> {
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let user = change_role(&tx, user_id, Role::Admin)?;
            tx.commit()?;
            Ok(user)
        })
        .await
    }

    /// Deletes a user and (foreign key cascade) its sessions: the user itself when `actor_id` is
    /// `None`, else as that admin, whose role is checked inside the transaction. Unknown is 404;
    /// the last admin is refused with 409, whether an admin deletes it or it deletes itself.
    pub async fn delete_user(&self, actor_id: Option<i64>, user_id: i64) -> Result<(), StoreError> {
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(actor_id) = actor_id {
                require_admin(&tx, actor_id)?;
            }
            // Deleting oneself when already gone: the caller's token is dead, not a 404.
            let role = match role_of(&tx, user_id) {
                Err(StoreError::NotFound) if actor_id.is_none() => {
                    return Err(StoreError::ActorGone);
                }
                role => role?,
            };
            if role == Role::Admin && admins_other_than(&tx, user_id)? == 0 {
                return Err(StoreError::LastAdmin);
            }
            tx.prepare_cached("DELETE FROM users WHERE id = ?1")?
                .execute(params![user_id])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }
}

fn admins_other_than(tx: &rusqlite::Transaction<'_>, user_id: i64) -> rusqlite::Result<i64> {
    tx.prepare_cached("SELECT count(*) FROM users WHERE role = 'admin' AND id != ?1")?
        .query_row(params![user_id], |r| r.get(0))
}

fn role_of(tx: &rusqlite::Transaction<'_>, user_id: i64) -> Result<Role, StoreError> {
    let role: Option<String> = tx
        .prepare_cached("SELECT role FROM users WHERE id = ?1")?
        .query_row(params![user_id], |r| r.get(0))
        .optional()?;
    match role {
        Some(role) => Ok(role_from_db(&role)?),
        None => Err(StoreError::NotFound),
    }
}

/// The actor of an admin change must still be an admin when the change is written.
fn require_admin(tx: &rusqlite::Transaction<'_>, actor_id: i64) -> Result<(), StoreError> {
    match role_of(tx, actor_id) {
        Ok(Role::Admin) => Ok(()),
        Ok(Role::Member) => Err(StoreError::NotAdmin),
        // The admin's account was deleted meanwhile: its token is dead.
        Err(StoreError::NotFound) => Err(StoreError::ActorGone),
        Err(e) => Err(e),
    }
}

/// Sets a role inside a write transaction, refusing to demote the last admin.
fn change_role(
    tx: &rusqlite::Transaction<'_>,
    user_id: i64,
    role: Role,
) -> Result<User, StoreError> {
    let current = role_of(tx, user_id)?;
    if current == Role::Admin && role != Role::Admin && admins_other_than(tx, user_id)? == 0 {
        return Err(StoreError::LastAdmin);
    }
    Ok(tx
        .prepare_cached(concat!(
            "UPDATE users SET role = ?1 WHERE id = ?2 RETURNING ",
            user_columns!()
        ))?
        .query_row(params![role.as_str(), user_id], user_from_row)?)
}
