//! Commands besides `serve` that work on the database directly.

use crate::audit::Context;
use crate::config::{Config, DatabaseLocation};
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
    /// `backup` made no copy (the target exists, the database cannot be read, …).
    #[error(transparent)]
    Backup(#[from] crate::store::sqlite::BackupError),
    /// The command does not apply to the configured database (`backup` on PostgreSQL); the
    /// message says what to use instead. Exit code 2, like a configuration error.
    #[error("{0}")]
    NotForThisDatabase(String),
}

impl CommandError {
    /// The process's exit code for this failure: 2 when the configuration points the command at
    /// a database it does not apply to, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::NotForThisDatabase(_) => 2,
            _ => 1,
        }
    }

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
                .promote(user.id, &Context::system())
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
                .and_then(|()| password::check_personal(&password, &email))
                .map_err(|why| CommandError::Refused(format!("the password {why}")))?;
            let hasher = PasswordHasher::new(config.bcrypt_cost, 1, 1)
                .map_err(|e| CommandError::Start(e.into()))?;
            let hash = hasher
                .hash(password)
                .await
                .map_err(|e| CommandError::Start(e.into()))?;
            match store
                .create_user(
                    email.clone(),
                    None,
                    hash,
                    Role::Admin,
                    None,
                    &Context::system(),
                )
                .await
            {
                Ok(user) => {
                    // The operator vouches for the address: the admin can log in even with
                    // REQUIRE_EMAIL_VERIFICATION=true and no mail set up.
                    store
                        .mark_email_verified(
                            user.id,
                            crate::tokens::now_seconds(),
                            &Context::system(),
                        )
                        .await
                        .map_err(CommandError::store("marking the admin's email verified"))?;
                    Ok(AdminOutcome::Created { id: user.id, email })
                }
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

/// `keys rotate`: a new signing key of the configured (asymmetric) algorithm; the lines printed.
pub async fn keys_rotate(config: &Config) -> Result<Vec<String>, CommandError> {
    require_key_pairs(config)?;
    let store = Store::open(&config.database, 1).await?;
    let result = crate::keys::rotate(&store, config.jwt_algorithm).await;
    let _ = store.close().await;
    let key = result.map_err(|e| CommandError::Refused(e.to_string()))?;
    Ok(vec![format!(
        "new signing key {} ({}); running servers sign with it within {} s, and earlier keys keep verifying until their tokens expire",
        key.kid,
        key.algorithm,
        crate::keys::RELOAD_INTERVAL.as_secs() * 2
    )])
}

/// `keys list`: each key's id, algorithm, created and retired times (never the private part).
pub async fn keys_list(config: &Config) -> Result<Vec<String>, CommandError> {
    require_key_pairs(config)?;
    let store = Store::open(&config.database, 1).await?;
    let result = store.signing_keys().await;
    let _ = store.close().await;
    let keys = result.map_err(CommandError::store("reading the signing keys"))?;
    let mut lines = vec![format!(
        "{:<44} {:<6} {:<20} {:<20}",
        "kid", "alg", "created", "retired"
    )];
    for key in keys {
        lines.push(format!(
            "{:<44} {:<6} {:<20} {:<20}",
            key.kid,
            key.algorithm,
            crate::tokens::rfc3339(key.created_at),
            key.retired_at
                .map_or_else(|| "-".to_owned(), crate::tokens::rfc3339)
        ));
    }
    Ok(lines)
}

/// `backup PATH`: a consistent copy of the configured SQLite database, made while a server may be
/// writing to it, in the new file `path` (never over an existing one); the line printed on success. On PostgreSQL, or
/// for a database in memory, it copies nothing and says what to do instead. Blocking.
pub fn backup(config: &Config, path: &std::path::Path) -> Result<String, CommandError> {
    let source = match &config.database {
        DatabaseLocation::File(source) => source,
        DatabaseLocation::Postgres(pg) => {
            return Err(CommandError::NotForThisDatabase(format!(
                "DATABASE_URL is a PostgreSQL database ({pg}); this command copies SQLite \
                 databases only. Back it up with PostgreSQL's own tools: pg_dump \
                 --format=custom --file={} \"$DATABASE_URL\" (restore it with pg_restore)",
                shell_word(&path.display().to_string())
            )));
        }
        DatabaseLocation::Memory => {
            return Err(CommandError::NotForThisDatabase(
                "DATABASE_URL is sqlite::memory:, a database that lives and dies inside the \
                 server process; there is no file to back up"
                    .into(),
            ));
        }
    };
    let summary = crate::store::sqlite::backup(source, path)?;
    let users = match summary.users {
        1 => "1 user".to_owned(),
        n => format!("{n} users"),
    };
    Ok(format!(
        "backed up {} to {}: {users}, schema version {}",
        source.display(),
        path.display(),
        summary.schema_version
    ))
}

/// `text` as one word for a POSIX shell: as it is when it is plain, else in single quotes.
fn shell_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./+=:,@%".contains(c));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// The `keys` commands are for key pairs; HMAC keys are the secrets in the environment.
fn require_key_pairs(config: &Config) -> Result<(), CommandError> {
    if crate::keys::is_asymmetric(config.jwt_algorithm) {
        return Ok(());
    }
    Err(CommandError::Refused(format!(
        "JWT_ALGORITHM is {}: its key is JWT_SECRET, not kept in the database. To rotate it, \
         move the old secret to JWT_PREVIOUS_SECRETS and set a new JWT_SECRET (see the README)",
        crate::keys::algorithm_name(config.jwt_algorithm)
    )))
}

#[cfg(test)]
mod tests {
    #[test]
    fn shell_words() {
        assert_eq!(super::shell_word("/data/backup.dump"), "/data/backup.dump");
        assert_eq!(super::shell_word("my dump's"), r"'my dump'\''s'");
        assert_eq!(super::shell_word(""), "''");
    }

    #[test]
    fn rfc3339_of_unix_seconds() {
        assert_eq!(crate::tokens::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(crate::tokens::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(
            crate::tokens::rfc3339(1_796_160_370),
            "2026-12-01T21:26:10Z"
        );
    }
}
