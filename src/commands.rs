//! Commands besides `serve` that work on the database directly.

use crate::config::Config;
use crate::password::{self, PasswordHasher};
use crate::store::{Role, Store};
use crate::validation;

/// Why a command, or the server's start, failed: what was being done, and the cause.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The service could not be set up (the database, the hashing pool, the keys).
    #[error(transparent)]
    Start(#[from] crate::StartError),
    /// The database could not be opened.
    #[error("DATABASE_URL: {0}")]
    Open(#[from] crate::store::OpenError),
    /// A read or write of the store failed.
    #[error("{context}: {source}")]
    Store {
        context: &'static str,
        source: crate::store::StoreError,
    },
    /// An I/O step failed: listening, reading a password, connecting.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// An HTTP exchange failed (`healthcheck`).
    #[error("{context}: {source}")]
    Http {
        context: String,
        source: hyper::Error,
    },
    /// The input was refused, or the state does not allow the command; the message says why.
    #[error("{0}")]
    Refused(String),
}

impl CommandError {
    fn store(context: &'static str) -> impl FnOnce(crate::store::StoreError) -> Self {
        move |source| Self::Store { context, source }
    }
}

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

/// Whether `create-admin` may make an account that already exists an admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Refuse: whoever registered the email first is not necessarily the operator.
    Refuse,
    /// `--promote-existing`: promote it, keep its password, read none.
    Promote,
}

/// Makes `email` an admin. Creates the user with the password `read_password` gives (checked by
/// the registration rules); an email that already has an account is refused unless `existing`
/// is [`Existing::Promote`], which promotes it and never reads a password. Safe while a server
/// runs on the same database (SQLite's locking, with the store's busy timeout).
pub async fn create_admin(
    config: &Config,
    email: &str,
    existing: Existing,
    read_password: impl FnOnce() -> Result<String, CommandError>,
) -> Result<AdminOutcome, CommandError> {
    let email = validation::normalized_email(email);
    validation::valid_email(&email)
        .map_err(|e| CommandError::Refused(format!("--email {}", message(&e))))?;
    let store = Store::open(&config.database, 1).await?;
    let result = make_admin(config, &store, email, existing, read_password).await;
    let _ = store.close().await;
    result
}

/// What is said when the email already has an account and promoting was not asked for.
fn account_exists(email: &str) -> CommandError {
    CommandError::Refused(format!(
        "{email} already has an account, which someone else may have registered; nothing was \
         changed. To make that account an admin (its password stays as it is), run again with \
         --promote-existing"
    ))
}

async fn make_admin(
    config: &Config,
    store: &Store,
    email: String,
    existing: Existing,
    read_password: impl FnOnce() -> Result<String, CommandError>,
) -> Result<AdminOutcome, CommandError> {
    let found = store
        .find_user_by_email(email.clone())
        .await
        .map_err(CommandError::store("looking the email up"))?;
    match (found, existing) {
        (Some(_), Existing::Refuse) => Err(account_exists(&email)),
        (Some(user), Existing::Promote) if user.role == Role::Admin => {
            Ok(AdminOutcome::AlreadyAdmin { id: user.id, email })
        }
        (Some(user), Existing::Promote) => {
            let user = store
                .promote(user.id)
                .await
                .map_err(CommandError::store("promoting the user"))?;
            Ok(AdminOutcome::Promoted { id: user.id, email })
        }
        (None, Existing::Promote) => Err(CommandError::Refused(format!(
            "{email} has no account to promote; without --promote-existing a new admin is created"
        ))),
        (None, Existing::Refuse) => {
            let password = read_password()?;
            password::check_new_password(&password, config.password_min_length)
                .map_err(|why| CommandError::Refused(format!("the password {why}")))?;
            let hasher = PasswordHasher::new(config.bcrypt_cost, 1, 1)
                .map_err(|e| CommandError::Start(e.into()))?;
            let hash = hasher
                .hash(password)
                .await
                .map_err(|e| CommandError::Start(e.into()))?;
            match store
                .create_user(email.clone(), None, hash, Role::Admin)
                .await
            {
                Ok(user) => Ok(AdminOutcome::Created { id: user.id, email }),
                // Registered by someone between the check and now: refused all the same.
                Err(crate::store::StoreError::EmailTaken) => Err(account_exists(&email)),
                Err(e) => Err(CommandError::store("creating the admin")(e)),
            }
        }
    }
}

fn message(e: &validator::ValidationError) -> String {
    e.message.as_deref().unwrap_or("is not valid").to_owned()
}
