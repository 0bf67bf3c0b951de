//! Users on PostgreSQL: accounts, passwords, roles, the admin operations and their rules.
//!
//! Emails arrive normalised (lower-cased); lookups go through the unique index on `lower(email)`.

use tokio_postgres::Transaction;

use super::audit::commit_with;
use super::mail;
use super::{
    PostgresStore, is_unique_violation, lock_admins, role_from_db, to_i64, user_columns,
    user_from_row,
};
use crate::audit::{Context, Event, Kind};
use crate::store::{Credentials, MailKind, Page, Role, StoreError, User, UserChange, UserQuery};

impl PostgresStore {
    pub async fn email_exists(&self, email: String) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT 1 FROM users WHERE lower(email) = $1")
            .await?;
        Ok(client.query_opt(&stmt, &[&email]).await?.is_some())
    }

    pub async fn create_user(
        &self,
        email: String,
        full_name: Option<String>,
        password_hash: String,
        role: Role,
        verification_at: Option<u64>,
        audit: Context,
    ) -> Result<User, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let stmt = tx
            .prepare_cached(concat!(
                "INSERT INTO users AS u (email, full_name, password_hash, role) VALUES ($1, $2, $3, $4) RETURNING ",
                user_columns!()
            ))
            .await?;
        let row = tx
            .query_one(&stmt, &[&email, &full_name, &password_hash, &role.as_str()])
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::EmailTaken
                } else {
                    e.into()
                }
            })?;
        let user = user_from_row(&row)?;
        if let Some(now) = verification_at {
            mail::queue(
                &tx,
                user.id,
                &user.email,
                MailKind::VerifyEmail,
                to_i64(now),
            )
            .await?;
        }
        let event = Event::new(Kind::UserRegistered, Some(user.id)).with("role", role.as_str());
        commit_with(tx, &audit, &[event]).await?;
        Ok(user)
    }

    pub async fn credentials(&self, email: String) -> Result<Option<Credentials>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT id, password_hash, role, email_verified_at IS NOT NULL, disabled_at IS NOT NULL,
                        mfa_enabled_at IS NOT NULL
                 FROM users WHERE lower(email) = $1")
            .await?;
        let row = client.query_opt(&stmt, &[&email]).await?;
        row.map(|row| {
            Ok(Credentials {
                user_id: row.try_get(0)?,
                password_hash: row.try_get(1)?,
                role: role_from_db(row.try_get(2)?)?,
                email_verified: row.try_get(3)?,
                disabled: row.try_get(4)?,
                mfa_enabled: row.try_get(5)?,
            })
        })
        .transpose()
    }

    pub async fn rehash_password(
        &self,
        user_id: i64,
        old: String,
        new: String,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE users SET password_hash = $1 WHERE id = $2 AND password_hash = $3",
            )
            .await?;
        Ok(client.execute(&stmt, &[&new, &user_id, &old]).await? == 1)
    }

    pub async fn password_hash(&self, user_id: i64) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT password_hash FROM users WHERE id = $1")
            .await?;
        let row = client.query_opt(&stmt, &[&user_id]).await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    pub async fn change_password(
        &self,
        user_id: i64,
        old: String,
        new: String,
        audit: Context,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The row lock of this update makes a racing login wait (its session insert reads the
        // row FOR SHARE), then see the new hash; a racing change re-checks `old` and loses.
        let changed = tx
            .execute(
                "UPDATE users SET password_hash = $1 WHERE id = $2 AND password_hash = $3",
                &[&new, &user_id, &old],
            )
            .await?;
        if changed == 0 {
            return Ok(false);
        }
        let ended = tx
            .execute("DELETE FROM sessions WHERE user_id = $1", &[&user_id])
            .await?;
        // A reset link mailed before the change must not undo it.
        tx.execute(
            "DELETE FROM mail_tokens WHERE user_id = $1 AND kind = 'reset_password'",
            &[&user_id],
        )
        .await?;
        let event = crate::audit::password_changed(user_id, ended);
        commit_with(tx, &audit, &[event]).await?;
        Ok(true)
    }

    pub async fn set_full_name(
        &self,
        user_id: i64,
        full_name: Option<String>,
    ) -> Result<Option<User>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(concat!(
                "UPDATE users AS u SET full_name = $1 WHERE id = $2 RETURNING ",
                user_columns!()
            ))
            .await?;
        let row = client.query_opt(&stmt, &[&full_name, &user_id]).await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn list_users(&self, query: UserQuery) -> Result<Page, StoreError> {
        let mut client = self.client().await?;
        // One snapshot for the count and the page.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        // Every user: the count the trigger keeps (no scan, however many there are). Those
        // matching `q`: counted (the search reads them all anyway). strpos rather than LIKE:
        // nothing in `q` is a pattern (emails are stored lower-cased).
        let total: i64 = match &query.q {
            None => tx
                .query_one("SELECT value FROM counters WHERE name = 'users'", &[])
                .await?
                .try_get(0)?,
            Some(q) => tx
                .query_one(
                    "SELECT count(*) FROM users WHERE strpos(email, $1) > 0",
                    &[q],
                )
                .await?
                .try_get(0)?,
        };
        let stmt = tx
            .prepare_cached(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users u WHERE ($1::text IS NULL OR strpos(u.email, $1) > 0) AND u.id > $2
                  ORDER BY u.id LIMIT $3 OFFSET $4"
            ))
            .await?;
        let items = tx
            .query(
                &stmt,
                &[
                    &query.q,
                    &query.after_id.unwrap_or(0),
                    &query.limit,
                    &query.offset,
                ],
            )
            .await?
            .iter()
            .map(user_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit().await?;
        Ok(Page { items, total })
    }

    pub async fn user(&self, user_id: i64) -> Result<Option<User>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users u WHERE u.id = $1"
            ))
            .await?;
        let row = client.query_opt(&stmt, &[&user_id]).await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn find_user_by_email(&self, email: String) -> Result<Option<User>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users u WHERE lower(u.email) = $1"
            ))
            .await?;
        let row = client.query_opt(&stmt, &[&email]).await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn mark_email_verified(
        &self,
        user_id: i64,
        now: u64,
        audit: Context,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let verified = tx
            .execute(
                "UPDATE users SET email_verified_at = $1 WHERE id = $2 AND email_verified_at IS NULL",
                &[&to_i64(now), &user_id],
            )
            .await?;
        let events = if verified == 1 {
            vec![crate::audit::email_verified(user_id, "create-admin")]
        } else {
            Vec::new()
        };
        commit_with(tx, &audit, &events).await
    }

    pub async fn update_user(
        &self,
        actor_id: i64,
        user_id: i64,
        change: UserChange,
        audit: Context,
    ) -> Result<User, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        lock_admins(&tx).await?;
        require_admin(&tx, actor_id).await?;
        let (user, event) = change_user(&tx, user_id, change).await?;
        commit_with(tx, &audit, event.as_slice()).await?;
        Ok(user)
    }

    pub async fn promote(&self, user_id: i64, audit: Context) -> Result<User, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        lock_admins(&tx).await?;
        let (user, event) = change_user(
            &tx,
            user_id,
            UserChange {
                role: Some(Role::Admin),
                disabled: None,
            },
        )
        .await?;
        commit_with(tx, &audit, event.as_slice()).await?;
        Ok(user)
    }

    pub async fn delete_user(
        &self,
        actor_id: Option<i64>,
        user_id: i64,
        audit: Context,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        lock_admins(&tx).await?;
        if let Some(actor_id) = actor_id {
            require_admin(&tx, actor_id).await?;
        }
        // Deleting oneself when already gone: the caller's token is dead, not a 404.
        let standing = match standing_of(&tx, user_id).await {
            Err(StoreError::NotFound) if actor_id.is_none() => return Err(StoreError::ActorGone),
            standing => standing?,
        };
        if standing.enabled_admin() && admins_other_than(&tx, user_id).await? == 0 {
            return Err(StoreError::LastAdmin);
        }
        tx.execute("DELETE FROM users WHERE id = $1", &[&user_id])
            .await?;
        commit_with(tx, &audit, &[crate::audit::deleted(actor_id, user_id)]).await
    }
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

async fn standing_of(tx: &Transaction<'_>, user_id: i64) -> Result<Standing, StoreError> {
    let row = tx
        .query_opt(
            "SELECT role, disabled_at IS NOT NULL FROM users WHERE id = $1",
            &[&user_id],
        )
        .await?
        .ok_or(StoreError::NotFound)?;
    Ok(Standing {
        role: role_from_db(row.try_get(0)?)?,
        disabled: row.try_get(1)?,
    })
}

/// Enabled admins other than `user_id`.
async fn admins_other_than(tx: &Transaction<'_>, user_id: i64) -> Result<i64, StoreError> {
    Ok(tx
        .query_one(
            "SELECT count(*) FROM users WHERE role = 'admin' AND disabled_at IS NULL AND id <> $1",
            &[&user_id],
        )
        .await?
        .try_get(0)?)
}

/// The actor of an admin change must still be an enabled admin when the change is written.
async fn require_admin(tx: &Transaction<'_>, actor_id: i64) -> Result<(), StoreError> {
    match standing_of(tx, actor_id).await {
        Ok(s) if s.enabled_admin() => Ok(()),
        // Disabled meanwhile: its sessions, this request's too, are gone.
        Ok(s) if s.disabled => Err(StoreError::ActorGone),
        Ok(_) => Err(StoreError::NotAdmin),
        Err(StoreError::NotFound) => Err(StoreError::ActorGone),
        Err(e) => Err(e),
    }
}

/// Applies a change inside a transaction holding the admin lock, refusing to leave no enabled
/// admin; disabling ends the user's sessions. The user afterwards, and the event of what changed
/// (none when nothing did).
async fn change_user(
    tx: &Transaction<'_>,
    user_id: i64,
    change: UserChange,
) -> Result<(User, Option<Event>), StoreError> {
    let current = standing_of(tx, user_id).await?;
    let after = Standing {
        role: change.role.unwrap_or(current.role),
        disabled: change.disabled.unwrap_or(current.disabled),
    };
    if current.enabled_admin()
        && !after.enabled_admin()
        && admins_other_than(tx, user_id).await? == 0
    {
        return Err(StoreError::LastAdmin);
    }
    // The row's lock first (as a login's session insert reads it FOR SHARE): a login racing the
    // disabling either made its session before, and it is deleted here, or finds it disabled.
    let row = tx
        .query_one(
            concat!(
                "UPDATE users AS u SET role = $1,
                     disabled_at = CASE WHEN $2 THEN coalesce(disabled_at, extract(epoch FROM now())::bigint) END
                 WHERE id = $3 RETURNING ",
                user_columns!()
            ),
            &[&after.role.as_str(), &after.disabled, &user_id],
        )
        .await?;
    let mut sessions_ended = 0;
    if after.disabled && !current.disabled {
        sessions_ended = tx
            .execute("DELETE FROM sessions WHERE user_id = $1", &[&user_id])
            .await?;
    }
    let event = crate::audit::user_updated(
        user_id,
        (current.role, after.role),
        (current.disabled, after.disabled),
        sessions_ended,
    );
    Ok((user_from_row(&row)?, event))
}
