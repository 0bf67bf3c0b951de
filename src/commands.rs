//! Commands besides `serve` that work on the database directly.

use crate::config::Config;
use crate::password::{self, PasswordHasher};
use crate::store::{Role, Store};
use crate::validation;

/// What `create-admin` did, for the one line it prints (never a secret).
#[derive(Debug, PartialEq, Eq)]
pub enum AdminOutcome {
    Created { id: i64, email: String },
    Promoted { id: i64, email: String },
    AlreadyAdmin { id: i64, email: String },
}

impl std::fmt::Display for AdminOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Created { id, email } => write!(f, "created admin {email} (id {id})"),
            Self::Promoted { id, email } => {
                write!(
                    f,
                    "{email} (id {id}) is now an admin; its password is unchanged"
                )
            }
            Self::AlreadyAdmin { id, email } => write!(f, "{email} (id {id}) is already an admin"),
        }
    }
}

/// Makes `email` an admin: promotes an existing user (keeping its password), or creates one
/// with the password `read_password` gives, checked by the registration rules. The password is
/// read only when a user is created. Safe while a server runs on the same database (SQLite's
/// locking, with the store's busy timeout).
pub async fn create_admin(
    config: &Config,
    email: &str,
    read_password: impl FnOnce() -> Result<String, String>,
) -> Result<AdminOutcome, String> {
    let email = validation::normalized_email(email);
    validation::valid_email(&email).map_err(|e| format!("--email {}", message(&e)))?;
    let store = Store::open(&config.database)
        .await
        .map_err(|e| format!("DATABASE_URL: {e}"))?;
    let result = make_admin(config, &store, email, read_password).await;
    let _ = store.close().await;
    result
}

async fn make_admin(
    config: &Config,
    store: &Store,
    email: String,
    read_password: impl FnOnce() -> Result<String, String>,
) -> Result<AdminOutcome, String> {
    if let Some(user) = store
        .find_user_by_email(email.clone())
        .await
        .map_err(|e| e.to_string())?
    {
        if user.role == Role::Admin {
            return Ok(AdminOutcome::AlreadyAdmin { id: user.id, email });
        }
        let user = store
            .set_role(user.id, Role::Admin)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(AdminOutcome::Promoted { id: user.id, email });
    }
    let password = read_password()?;
    password::check_new_password(&password, config.password_min_length)
        .map_err(|why| format!("the password {why}"))?;
    let hasher = PasswordHasher::new(config.bcrypt_cost, 1, 1).map_err(|e| e.to_string())?;
    let hash = hasher.hash(password).await.map_err(|e| e.to_string())?;
    match store
        .create_user(email.clone(), None, hash, Role::Admin)
        .await
    {
        Ok(user) => Ok(AdminOutcome::Created { id: user.id, email }),
        // Registered between the check and now: promote it instead.
        Err(crate::error::ApiError::EmailTaken) => {
            let user = store
                .find_user_by_email(email.clone())
                .await
                .map_err(|e| e.to_string())?
                .ok_or("the user vanished while being created")?;
            let user = store
                .set_role(user.id, Role::Admin)
                .await
                .map_err(|e| e.to_string())?;
            Ok(AdminOutcome::Promoted { id: user.id, email })
        }
        Err(e) => Err(e.to_string()),
    }
}

fn message(e: &validator::ValidationError) -> String {
    e.message.as_deref().unwrap_or("is not valid").to_owned()
}
