//! Configuration from the environment (and a `.env` file, which the process environment overrides).
//!
//! [`Config::from_vars`] takes our variables, every one as the text given, and checks each value,
//! numbers included, refusing the start with a message in plain words that names the variable,
//! what it needs and the value given (`PORT must be a number from 1 to 65535, not "abc"`); no
//! parser's wording reaches the operator. Nothing here reads the process environment by itself,
//! so tests build configurations from plain lists of pairs.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use jsonwebtoken::Algorithm;
use serde::Deserialize;

/// Values that the tutorial and common examples use as placeholders. A server that signs with one of
/// them hands out tokens anyone can forge, so they are refused even when they are long enough.
const PLACEHOLDER_SECRETS: &[&str] = &[
    "replace_me_with_a_long_random_value",
    "dev_secret",
    "secret",
    "changeme",
    "change_me",
    "your-secret-key",
    "your_secret_key",
    "supersecret",
    // The example key of FastAPI's own OAuth2/JWT tutorial, copied into many projects.
    "09d25e094faa6ca2556c818166b7a9563b93f7099f6f0f4caa6cf63b88e8d3e7",
];

/// A configuration error: the variable at fault and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

fn bad(var: &str, why: impl fmt::Display) -> ConfigError {
    ConfigError(format!("{var} {why}"))
}

/// Our variables as given, read by `envy`, each as text (numbers too: [`number`] reads them, so
/// that a bad one is refused in our words, not a parser's).
#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    jwt_secret: Option<String>,
    jwt_previous_secrets: Option<String>,
    jwt_algorithm: Option<String>,
    jwt_issuer: Option<String>,
    jwt_audience: Option<String>,
    access_token_expire_minutes: Option<String>,
    refresh_token_expire_days: Option<String>,
    refresh_token_cookie: Option<String>,
    database_url: Option<String>,
    database_max_connections: Option<String>,
    host: Option<String>,
    port: Option<String>,
    password_min_length: Option<String>,
    bcrypt_cost: Option<String>,
    log_format: Option<String>,
    rust_log: Option<String>,
    cors_origins: Option<String>,
    trusted_proxies: Option<String>,
    login_max_failures: Option<String>,
    public_url: Option<String>,
    verify_email_url: Option<String>,
    reset_password_url: Option<String>,
    smtp_url: Option<String>,
    mail_from: Option<String>,
    email_verify_expire_hours: Option<String>,
    password_reset_expire_minutes: Option<String>,
    require_email_verification: Option<String>,
    registration: Option<String>,
    metrics_addr: Option<String>,
    audit_retention_days: Option<String>,
}

/// Where the database lives: a SQLite file or memory, or a PostgreSQL server.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseLocation {
    File(PathBuf),
    Memory,
    /// Boxed: the driver's settings are large, and a location is made once.
    Postgres(Box<PostgresLocation>),
}

/// A PostgreSQL URL, parsed. Shown (in logs, messages, `Debug`) without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresLocation {
    config: tokio_postgres::Config,
    shown: String,
}

impl PostgresLocation {
    /// `postgres://user:password@host:port/database?sslmode=…` (also `postgresql://`).
    fn parse(url: &str) -> Result<Self, String> {
        let config: tokio_postgres::Config = url.parse().map_err(|_| {
            // The parser's message may quote the URL, password included: say it in our words.
            "is not a valid PostgreSQL URL; expected \
             postgres://USER:PASSWORD@HOST:PORT/DATABASE, optionally with ?sslmode=disable, \
             prefer or require"
                .to_owned()
        })?;
        if config.get_hosts().is_empty() {
            return Err("names no PostgreSQL host (postgres://USER:PASSWORD@HOST/DATABASE)".into());
        }
        if config.get_dbname().is_none() {
            return Err("names no database (postgres://USER:PASSWORD@HOST/DATABASE)".into());
        }
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let shown = format!(
            "postgres://{}@{}:{port}/{}",
            config.get_user().unwrap_or(""),
            hosts.join(","),
            config.get_dbname().unwrap_or(""),
        );
        Ok(Self { config, shown })
    }

    /// The connection settings, password included (for the driver only).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }
}

impl fmt::Display for PostgresLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for PostgresLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Debug for DatabaseLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Memory => f.write_str("Memory"),
            Self::Postgres(pg) => f.debug_tuple("Postgres").field(pg).finish(),
        }
    }
}

impl DatabaseLocation {
    /// Parses the tutorial's SQLAlchemy-style URL, `sqlite://path`, a plain path,
    /// `sqlite::memory:`, or a `postgres://` / `postgresql://` URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        if url.is_empty() {
            return Err("is empty".into());
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return PostgresLocation::parse(url).map(|pg| Self::Postgres(Box::new(pg)));
        }
        if url == "sqlite::memory:" || url == "sqlite://:memory:" || url == "sqlite:///:memory:" {
            return Ok(Self::Memory);
        }
        let path = if let Some(rest) = url.strip_prefix("sqlite:///") {
            // `sqlite:///./app.db` is relative, `sqlite:////data/app.db` absolute: the path is
            // everything after the third slash, as in SQLAlchemy.
            rest
        } else if let Some(rest) = url.strip_prefix("sqlite://") {
            rest
        } else if let Some(rest) = url.strip_prefix("sqlite:") {
            rest
        } else if let Some(scheme) = scheme_of(url) {
            return Err(format!(
                "uses an unsupported scheme {scheme:?}: use sqlite:///PATH, postgres:// or postgresql://"
            ));
        } else {
            url
        };
        let path = path.split('?').next().unwrap_or_default();
        if path.is_empty() {
            return Err("names no database file".into());
        }
        Ok(Self::File(PathBuf::from(path)))
    }
}

/// The scheme of a URL-like string (`postgres://…`, `file:x.db`), if it has one. A plain path
/// has none: what comes before its first `:` is not a scheme (a scheme has at least two
/// characters, starts with a letter, and holds only letters, digits, `+`, `-` and `.`).
fn scheme_of(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once(':')?;
    let valid = scheme.len() >= 2
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    valid.then_some(scheme)
}

impl fmt::Display for DatabaseLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Memory => f.write_str(":memory:"),
            Self::Postgres(pg) => fmt::Display::fmt(pg, f),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Where the signing secret came from; a generated one is announced loudly at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretSource {
    Configured,
    Generated,
    /// An asymmetric algorithm: the keys live in the database.
    NotNeeded,
}

/// The checked configuration of one server.
#[derive(Clone)]
pub struct Config {
    pub jwt_secret: Vec<u8>,
    /// Earlier HMAC secrets, accepted for verification only.
    pub jwt_previous_secrets: Vec<Vec<u8>>,
    /// The configured `JWT_SECRET` (whatever the algorithm): the key of TOTP secrets at rest is
    /// derived from it (and from `JWT_PREVIOUS_SECRETS`). `None`: MFA cannot be enrolled.
    pub mfa_secret: Option<Vec<u8>>,
    pub secret_source: SecretSource,
    pub jwt_algorithm: Algorithm,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub access_token_minutes: u32,
    pub refresh_token_days: u32,
    /// The refresh token travels only as an HttpOnly cookie (Sessions in the browser).
    pub refresh_token_cookie: bool,
    pub database: DatabaseLocation,
    /// PostgreSQL's pool size per replica.
    pub database_max_connections: usize,
    pub host: IpAddr,
    pub port: u16,
    pub password_min_length: usize,
    pub bcrypt_cost: u32,
    pub log_format: LogFormat,
    pub rust_log: String,
    pub cors_origins: Vec<String>,
    /// Reverse proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub login_max_failures: u32,
    /// Links in mails and how mail is delivered.
    pub mail: MailSettings,
    /// Unverified accounts cannot log in (403).
    pub require_email_verification: bool,
    /// `false`: `POST /register` answers 403.
    pub registration_open: bool,
    /// Where `/metrics` is served (its own listener, never the API's); `None`: no metrics.
    pub metrics_addr: Option<SocketAddr>,
    /// Audit events older than this many days are removed by housekeeping.
    pub audit_retention_days: u32,
}

/// Mail: where its links point, how it is delivered, and how long its tokens live.
#[derive(Clone, Debug)]
pub struct MailSettings {
    /// The service's public base URL (no trailing slash).
    pub public_url: String,
    /// Whether `PUBLIC_URL` was set (else it is made from HOST and PORT).
    pub public_url_set: bool,
    /// The verification link, with `{token}` where the token goes.
    pub verify_email_url: String,
    /// The reset link, with `{token}` where the token goes.
    pub reset_password_url: String,
    /// Unset: mail is written to the log instead of being delivered.
    pub smtp: Option<SmtpSettings>,
    pub from: lettre::message::Mailbox,
    pub verify_hours: u32,
    pub reset_minutes: u32,
}

/// An SMTP server, from `SMTP_URL`. Shown without its password.
#[derive(Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    /// User name and password, when the URL has them.
    pub credentials: Option<(String, String)>,
}

/// How the connection to the SMTP server is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    /// `?tls=none`: plain text (a local catcher).
    None,
    /// `smtp://` without credentials: STARTTLS when the server offers it.
    Opportunistic,
    /// `smtp://…?tls=required`, and `smtp://` with credentials: STARTTLS or fail, so that the
    /// password is never sent in clear to a server whose STARTTLS was stripped.
    Required,
    /// `smtps://`: TLS from the first byte.
    Wrapper,
}

impl fmt::Display for SmtpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls == SmtpTls::Wrapper {
            "smtps"
        } else {
            "smtp"
        };
        let user = match &self.credentials {
            Some((user, _)) => format!("{user}@"),
            None => String::new(),
        };
        write!(f, "{scheme}://{user}{}:{}", self.host, self.port)?;
        match self.tls {
            SmtpTls::None => f.write_str("?tls=none"),
            SmtpTls::Required => f.write_str("?tls=required"),
            _ => Ok(()),
        }
    }
}

impl fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl SmtpSettings {
    /// `smtp://[user:pass@]host[:port][?tls=none|required]` or `smtps://…`. The message never
    /// quotes the URL (it may hold a password).
    fn parse(text: &str) -> Result<Self, String> {
        const FORM: &str = "must look like smtp://USER:PASSWORD@HOST:PORT (STARTTLS when the \
             server offers it), smtps://USER:PASSWORD@HOST:PORT (TLS on connect) or \
             smtp://HOST:PORT?tls=none (a local catcher)";
        let url = url::Url::parse(text.trim()).map_err(|_| FORM.to_owned())?;
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_owned(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            None => return Err(FORM.to_owned()),
        };
        let mut tls_param = None;
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "tls" => tls_param = Some(value.into_owned()),
                other => return Err(format!("has an unknown parameter {other:?}; {FORM}")),
            }
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|d| d.into_owned())
                .map_err(|_| "holds a user or password that is not UTF-8 once decoded".to_owned())
        };
        let credentials = match (url.username(), url.password()) {
            ("", None) => None,
            (user, Some(password)) => Some((decode(user)?, decode(password)?)),
            (_, None) => {
                return Err("names a user but no password (smtp://USER:PASSWORD@HOST)".into());
            }
        };
        let (tls, default_port) = match (url.scheme(), tls_param.as_deref()) {
            // A password is never sent where STARTTLS could have been stripped.
            ("smtp", None) if credentials.is_some() => (SmtpTls::Required, 587),
            ("smtp", None | Some("opportunistic")) => (SmtpTls::Opportunistic, 587),
            ("smtp", Some("required")) => (SmtpTls::Required, 587),
            ("smtp", Some("none")) => (SmtpTls::None, 25),
            ("smtps", None) => (SmtpTls::Wrapper, 465),
            ("smtp" | "smtps", Some(other)) => {
                return Err(format!(
                    "has tls={other:?}; tls may be none, opportunistic or required (smtp:// only)"
                ));
            }
            _ => return Err(FORM.to_owned()),
        };
        Ok(Self {
            host,
            port: url.port().unwrap_or(default_port),
            tls,
            credentials,
        })
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret never reaches a log.
        f.debug_struct("Config")
            .field("jwt_secret", &"<redacted>")
            .field("jwt_previous_secrets", &self.jwt_previous_secrets.len())
            .field("secret_source", &self.secret_source)
            .field("jwt_algorithm", &self.jwt_algorithm)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("access_token_minutes", &self.access_token_minutes)
            .field("refresh_token_days", &self.refresh_token_days)
            .field("refresh_token_cookie", &self.refresh_token_cookie)
            .field("database", &self.database)
            .field("database_max_connections", &self.database_max_connections)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("password_min_length", &self.password_min_length)
            .field("bcrypt_cost", &self.bcrypt_cost)
            .field("log_format", &self.log_format)
            .field("cors_origins", &self.cors_origins)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("login_max_failures", &self.login_max_failures)
            .field("mail", &self.mail)
            .field(
                "require_email_verification",
                &self.require_email_verification,
            )
            .field("registration_open", &self.registration_open)
            .field("metrics_addr", &self.metrics_addr)
            .field("audit_retention_days", &self.audit_retention_days)
            .finish()
    }
}

impl Config {
    /// Reads `.env` from the working directory (if present) under the process environment, which
    /// wins, and checks the result.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut vars: HashMap<String, String> = match std::fs::read(".env") {
            Ok(bytes) => read_dotenv(&bytes)?.into_iter().collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(ConfigError(format!(".env could not be read: {e}"))),
        };
        // Variables whose value is not Unicode are skipped here; none of ours can be like that.
        vars.extend(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        );
        Self::from_vars(vars)
    }

    /// Checks a configuration given as `NAME=value` pairs (names as in the environment; a later
    /// pair overrides an earlier one).
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        // A later pair wins over an earlier one of the same name. Only our own upper-case names:
        // envy lower-cases keys, and an unrelated `port` (lower case) must not shadow `PORT`.
        let ours: HashMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(k, _): &(String, String)| {
                k.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            })
            .collect();
        // Every field is text, so envy refuses nothing here; the checks below do, in our words.
        let raw: RawConfig = envy::from_iter(ours)
            .map_err(|e| ConfigError(format!("the environment could not be read: {e}")))?;
        Self::check(raw)
    }

    fn check(raw: RawConfig) -> Result<Self, ConfigError> {
        let jwt_algorithm = match raw.jwt_algorithm.as_deref().map(str::trim) {
            None | Some("HS256") => Algorithm::HS256,
            Some("HS384") => Algorithm::HS384,
            Some("HS512") => Algorithm::HS512,
            Some("EdDSA") => Algorithm::EdDSA,
            Some("ES256") => Algorithm::ES256,
            Some("RS256") => Algorithm::RS256,
            Some(other) => {
                return Err(bad(
                    "JWT_ALGORITHM",
                    format!("must be HS256, HS384, HS512, EdDSA, ES256 or RS256, not {other:?}"),
                ));
            }
        };
        let asymmetric = crate::keys::is_asymmetric(jwt_algorithm);
        let min_secret = match jwt_algorithm {
            Algorithm::HS384 => 48,
            Algorithm::HS512 => 64,
            _ => 32,
        };
        // With a key pair (kept in the database) JWT_SECRET signs nothing; set, it still keys the
        // sealing of TOTP secrets, which must not depend on the database alone.
        let asymmetric_secret = raw.jwt_secret.clone().filter(|_| asymmetric);
        let (jwt_secret, secret_source) = match raw.jwt_secret {
            _ if asymmetric => (Vec::new(), SecretSource::NotNeeded),
            None => {
                let mut secret = vec![0u8; 64];
                rand::fill(&mut secret[..]);
                (secret, SecretSource::Generated)
            }
            Some(secret) => {
                let lowered = secret.trim().to_ascii_lowercase();
                if PLACEHOLDER_SECRETS.contains(&lowered.as_str())
                    || lowered.contains("replace_me")
                    || lowered.contains("change_me")
                    || lowered.contains("changeme")
                {
                    return Err(bad(
                        "JWT_SECRET",
                        "is a placeholder value; generate one, e.g. with `openssl rand -base64 48`",
                    ));
                }
                if secret.len() < min_secret {
                    return Err(bad(
                        "JWT_SECRET",
                        format!(
                            "must be at least {min_secret} bytes for {jwt_algorithm:?} (it has {})",
                            secret.len()
                        ),
                    ));
                }
                (secret.into_bytes(), SecretSource::Configured)
            }
        };
        let mfa_secret = match asymmetric_secret {
            Some(secret) if secret.len() >= 32 => Some(secret.into_bytes()),
            Some(_) => {
                return Err(bad(
                    "JWT_SECRET",
                    "must be at least 32 bytes (with a key-pair JWT_ALGORITHM it keys the sealing \
                     of TOTP secrets)",
                ));
            }
            None if secret_source == SecretSource::Configured => Some(jwt_secret.clone()),
            None => None,
        };
        let mut jwt_previous_secrets = Vec::new();
        for (i, previous) in raw
            .jwt_previous_secrets
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .enumerate()
        {
            if previous.len() < min_secret {
                return Err(bad(
                    "JWT_PREVIOUS_SECRETS",
                    format!(
                        "holds a secret (number {}) shorter than {min_secret} bytes",
                        i + 1
                    ),
                ));
            }
            jwt_previous_secrets.push(previous.as_bytes().to_vec());
        }

        let non_empty = |var: &str, value: Option<String>| -> Result<Option<String>, ConfigError> {
            match value {
                Some(v) if v.trim().is_empty() => Err(bad(var, "is set but empty")),
                Some(v) => Ok(Some(v.trim().to_owned())),
                None => Ok(None),
            }
        };
        let jwt_issuer = non_empty("JWT_ISSUER", raw.jwt_issuer)?;
        let jwt_audience = non_empty("JWT_AUDIENCE", raw.jwt_audience)?;

        let access_token_minutes = number(
            "ACCESS_TOKEN_EXPIRE_MINUTES",
            raw.access_token_expire_minutes.as_deref(),
            60,
            1,
            60 * 24 * 365,
        )?;
        let refresh_token_days = number(
            "REFRESH_TOKEN_EXPIRE_DAYS",
            raw.refresh_token_expire_days.as_deref(),
            14,
            1,
            3650,
        )?;

        let database =
            DatabaseLocation::parse(raw.database_url.as_deref().unwrap_or("sqlite:///./app.db"))
                .map_err(|why| bad("DATABASE_URL", why))?;

        let database_max_connections = number(
            "DATABASE_MAX_CONNECTIONS",
            raw.database_max_connections.as_deref(),
            16,
            1,
            1000,
        )? as usize;

        let host = match raw.host.as_deref().map(str::trim) {
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some("localhost") => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some(h) => h.parse().map_err(|_| {
                bad(
                    "HOST",
                    format!("must be an IP address or localhost, not {h:?}"),
                )
            })?,
        };
        // PORT=0 (any free port; the "listening on" line says which) is for tests, and not
        // advertised.
        let port = match raw.port.as_deref() {
            Some(text) if text.trim() == "0" => 0,
            text => number("PORT", text, 8000, 1, u32::from(u16::MAX))? as u16,
        };

        let password_min_length = number(
            "PASSWORD_MIN_LENGTH",
            raw.password_min_length.as_deref(),
            8,
            8,
            64,
        )? as usize;
        let bcrypt_cost = number("BCRYPT_COST", raw.bcrypt_cost.as_deref(), 12, 4, 31)?;

        let log_format = match raw.log_format.as_deref().map(str::trim) {
            None | Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(bad(
                    "LOG_FORMAT",
                    format!("must be pretty or json, not {other:?}"),
                ));
            }
        };
        let rust_log = raw.rust_log.unwrap_or_else(|| "info".to_owned());
        // The parser's own message names its internals: say it plainly, with examples.
        tracing_subscriber::EnvFilter::try_new(&rust_log).map_err(|_| {
            bad(
                "RUST_LOG",
                format!(
                    "is not a valid log filter (e.g. info, or warp_auth_api=debug,info): {rust_log:?}"
                ),
            )
        })?;

        let mut trusted_proxies = Vec::new();
        for entry in raw
            .trusted_proxies
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let net = entry
                .parse::<ipnet::IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    bad(
                        "TRUSTED_PROXIES",
                        format!(
                            "must be a comma-separated list of addresses or CIDRs (e.g. \
                             10.0.0.0/8, 192.0.2.7), not {entry:?}"
                        ),
                    )
                })?;
            trusted_proxies.push(net.trunc());
        }

        let mut cors_origins = Vec::new();
        for origin in raw.cors_origins.as_deref().unwrap_or("").split(',') {
            let origin = origin.trim();
            if origin.is_empty() {
                continue;
            }
            let valid = (origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin.ends_with('/')
                && origin.is_ascii()
                && !origin.contains(char::is_whitespace);
            if !valid && origin != "*" {
                return Err(bad(
                    "CORS_ORIGINS",
                    format!(
                        "holds {origin:?}; origins look like https://app.example.com (no path, no trailing slash)"
                    ),
                ));
            }
            cors_origins.push(origin.to_owned());
        }

        let login_max_failures = number(
            "LOGIN_MAX_FAILURES",
            raw.login_max_failures.as_deref(),
            10,
            0,
            1_000_000,
        )?;

        let refresh_token_cookie = boolean(
            "REFRESH_TOKEN_COOKIE",
            raw.refresh_token_cookie.as_deref(),
            false,
        )?;
        if refresh_token_cookie && cors_origins.iter().any(|o| o == "*") {
            return Err(bad(
                "CORS_ORIGINS",
                "must list the origins (not *) when REFRESH_TOKEN_COOKIE=true: browsers send the \
                 refresh cookie only to origins named one by one",
            ));
        }
        let mail = mail_settings(
            &RawMail {
                public_url: raw.public_url,
                verify_email_url: raw.verify_email_url,
                reset_password_url: raw.reset_password_url,
                smtp_url: raw.smtp_url,
                mail_from: raw.mail_from,
                verify_hours: raw.email_verify_expire_hours,
                reset_minutes: raw.password_reset_expire_minutes,
            },
            host,
            port,
        )?;
        let require_email_verification = boolean(
            "REQUIRE_EMAIL_VERIFICATION",
            raw.require_email_verification.as_deref(),
            false,
        )?;
        let registration_open = match raw.registration.as_deref().map(str::trim) {
            None | Some("open") => true,
            Some("closed") => false,
            Some(other) => {
                return Err(bad(
                    "REGISTRATION",
                    format!("must be open or closed, not {other:?}"),
                ));
            }
        };
        let metrics_addr = match raw.metrics_addr.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => {
                let addr = text.parse::<SocketAddr>().map_err(|_| {
                    bad(
                        "METRICS_ADDR",
                        format!("must be an address and port such as 127.0.0.1:9100, not {text:?}"),
                    )
                })?;
                if addr.port() != 0
                    && addr.port() == port
                    && (addr.ip() == host || addr.ip().is_unspecified() || host.is_unspecified())
                {
                    return Err(bad(
                        "METRICS_ADDR",
                        format!(
                            "must not be the API's own address ({host}:{port}): metrics are served on a listener of their own, not {text:?}"
                        ),
                    ));
                }
                Some(addr)
            }
        };
        let audit_retention_days = number(
            "AUDIT_RETENTION_DAYS",
            raw.audit_retention_days.as_deref(),
            90,
            1,
            3650,
        )?;

        Ok(Self {
            jwt_secret,
            jwt_previous_secrets,
            mfa_secret,
            secret_source,
            jwt_algorithm,
            jwt_issuer,
            jwt_audience,
            access_token_minutes,
            refresh_token_days,
            refresh_token_cookie,
            database,
            database_max_connections,
            host,
            port,
            password_min_length,
            bcrypt_cost,
            log_format,
            rust_log,
            cors_origins,
            trusted_proxies,
            login_max_failures,
            mail,
            require_email_verification,
            registration_open,
            metrics_addr,
            audit_retention_days,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }
}

/// The `NAME=value` pairs of a `.env` file, in order, as dotenvy reads them. A line it cannot read
/// is refused as `.env line N: <why>`, N counted from 1; the line itself is never quoted (its
/// value may be a secret).
fn read_dotenv(bytes: &[u8]) -> Result<Vec<(String, String)>, ConfigError> {
    // dotenvy's error holds the line's text but not its number. It reads through a `BufReader`,
    // which asks its reader for more only once it has used up what it holds; handed one line per
    // read, it has read exactly up to the end of the line at fault when it fails.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
    let last_line = std::rc::Rc::new(std::cell::Cell::new(0));
    let reader = LineByLine {
        lines: lines.iter().copied(),
        pending: &[],
        line: 0,
        last_line: last_line.clone(),
    };
    let at = |line: usize, why: &str| ConfigError(format!(".env line {line}: {why}"));
    let mut pairs = Vec::new();
    for item in dotenvy::from_read_iter(reader) {
        match item {
            Ok(pair) => pairs.push(pair),
            Err(dotenvy::Error::LineParse(text, _)) => {
                // The text is the line (or its value), or, for a quote left open, every line
                // from it to the end; a line break in it means the line began that much earlier.
                let breaks = text
                    .strip_suffix('\n')
                    .unwrap_or(&text)
                    .matches('\n')
                    .count();
                let end = last_line.get();
                let start = end.saturating_sub(breaks).max(1);
                let logical: Vec<u8> = lines[start - 1..end.min(lines.len())].concat();
                return Err(at(start, dotenv_reason(&String::from_utf8_lossy(&logical))));
            }
            Err(dotenvy::Error::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(at(last_line.get().max(1), "is not UTF-8 text"));
            }
            Err(e) => return Err(ConfigError(format!(".env could not be read: {e}"))),
        }
    }
    Ok(pairs)
}

/// Hands out a file one line at a time, at most a line per read, and notes the number of the
/// line it handed out last.
struct LineByLine<'a, I: Iterator<Item = &'a [u8]>> {
    lines: I,
    pending: &'a [u8],
    line: usize,
    last_line: std::rc::Rc<std::cell::Cell<usize>>,
}

impl<'a, I: Iterator<Item = &'a [u8]>> std::io::Read for LineByLine<'a, I> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pending.is_empty() {
            let Some(next) = self.lines.next() else {
                return Ok(0);
            };
            self.pending = next;
            self.line += 1;
            self.last_line.set(self.line);
        }
        let n = self.pending.len().min(buf.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending = &self.pending[n..];
        Ok(n)
    }
}

/// Why dotenvy could not read `line` (one logical line: a quoted value may span several), in a
/// few words that never quote it.
fn dotenv_reason(line: &str) -> &'static str {
    const EXPECTED: &str = "expected NAME=value";
    let line = line.trim_start();
    let line = match line.strip_prefix("export") {
        Some(rest) if rest.starts_with([' ', '\t']) => rest.trim_start(),
        _ => line,
    };
    if !line.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        return "expected NAME=value, the name starting with a letter or _";
    }
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(line.len());
    let Some(value) = line[name_end..].trim_start().strip_prefix('=') else {
        return EXPECTED;
    };
    let mut quote = None;
    let mut chars = value.trim().chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('\''), _) => {}
            (_, '\\') => {
                if !matches!(chars.next(), Some('\\' | '\'' | '"' | '$' | ' ' | 'n')) {
                    return "an unknown escape: after \\ may come \\, ', \", $, n or a space";
                }
            }
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, ' ' | '\t') => {
                if !chars.as_str().trim_start().starts_with('#') {
                    return "a value with spaces must be in quotes";
                }
                // The rest is a comment.
                break;
            }
            (None, _) => {}
        }
    }
    if quote.is_some() {
        return "a quote is not closed";
    }
    if value.contains("${") && !value.contains('}') {
        return "a ${ is not closed by }";
    }
    EXPECTED
}

/// The mail variables, taken out of the raw configuration.
struct RawMail {
    public_url: Option<String>,
    verify_email_url: Option<String>,
    reset_password_url: Option<String>,
    smtp_url: Option<String>,
    mail_from: Option<String>,
    verify_hours: Option<String>,
    reset_minutes: Option<String>,
}

fn mail_settings(raw: &RawMail, host: IpAddr, port: u16) -> Result<MailSettings, ConfigError> {
    let public_url = match raw.public_url.as_deref().map(str::trim) {
        Some(url) => {
            http_url(url).map_err(|why| bad("PUBLIC_URL", why))?;
            url.trim_end_matches('/').to_owned()
        }
        None => {
            // HOST itself; a server listening on every address is reached, on this machine, at
            // localhost.
            let shown = if host.is_unspecified() {
                "localhost".to_owned()
            } else if host.is_ipv6() {
                format!("[{host}]")
            } else {
                host.to_string()
            };
            format!("http://{shown}:{port}")
        }
    };
    let template = |var: &str, value: Option<&str>, page: &str| -> Result<String, ConfigError> {
        match value.map(str::trim) {
            None => Ok(format!("{public_url}{page}?token={{token}}")),
            Some(t) => {
                if !t.contains("{token}") {
                    return Err(bad(
                        var,
                        format!(
                            "must contain {{token}} where the token goes, e.g. https://app.example.com{page}?token={{token}}"
                        ),
                    ));
                }
                http_url(&t.replace("{token}", "TOKEN")).map_err(|_| {
                    bad(
                        var,
                        format!(
                            "must be an http:// or https:// URL with {{token}} in it, not {t:?}"
                        ),
                    )
                })?;
                Ok(t.to_owned())
            }
        }
    };
    let verify_email_url = template(
        "VERIFY_EMAIL_URL",
        raw.verify_email_url.as_deref(),
        "/account/verify-email",
    )?;
    let reset_password_url = template(
        "RESET_PASSWORD_URL",
        raw.reset_password_url.as_deref(),
        "/account/reset-password",
    )?;
    let smtp = match raw.smtp_url.as_deref() {
        None => None,
        Some(url) if url.trim().is_empty() => None,
        Some(url) => Some(SmtpSettings::parse(url).map_err(|why| bad("SMTP_URL", why))?),
    };
    let from = raw
        .mail_from
        .as_deref()
        .unwrap_or("warp-auth-api <no-reply@localhost>")
        .trim()
        .parse::<lettre::message::Mailbox>()
        .map_err(|_| {
            bad(
                "MAIL_FROM",
                "must be a mailbox, e.g. no-reply@example.com or \"Example <no-reply@example.com>\"",
            )
        })?;
    Ok(MailSettings {
        public_url_set: raw.public_url.is_some(),
        public_url,
        verify_email_url,
        reset_password_url,
        smtp,
        from,
        verify_hours: number(
            "EMAIL_VERIFY_EXPIRE_HOURS",
            raw.verify_hours.as_deref(),
            24,
            1,
            24 * 30,
        )?,
        reset_minutes: number(
            "PASSWORD_RESET_EXPIRE_MINUTES",
            raw.reset_minutes.as_deref(),
            30,
            5,
            24 * 60,
        )?,
    })
}

/// Why `text` is not an absolute http(s) URL without a query or fragment, if it is not.
fn http_url(text: &str) -> Result<(), String> {
    match url::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(()),
        _ => Err(format!(
            "must be an http:// or https:// URL, e.g. https://auth.example.com, not {text:?}"
        )),
    }
}

/// `true` or `false` (the contract allows no other spelling).
fn boolean(var: &str, value: Option<&str>, default: bool) -> Result<bool, ConfigError> {
    match value.map(str::trim) {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(bad(var, format!("must be true or false, not {other:?}"))),
    }
}

/// A whole number from `min` to `max` (`default` when unset). One wording for every variable,
/// whether the value is not a number or out of range, naming the range and the value as given.
fn number(
    var: &str,
    value: Option<&str>,
    default: u32,
    min: u32,
    max: u32,
) -> Result<u32, ConfigError> {
    let Some(text) = value else {
        return Ok(default);
    };
    match text.trim().parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(bad(
            var,
            format!("must be a number from {min} to {max}, not {text:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn defaults_follow_the_contract() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.secret_source, SecretSource::Generated);
        assert_eq!(c.jwt_secret.len(), 64);
        assert_eq!(c.jwt_algorithm, Algorithm::HS256);
        assert_eq!(c.access_token_minutes, 60);
        assert_eq!(c.refresh_token_days, 14);
        assert_eq!(c.database, DatabaseLocation::File("./app.db".into()));
        assert_eq!(c.addr().to_string(), "127.0.0.1:8000");
        assert_eq!(c.password_min_length, 8);
        assert_eq!(c.bcrypt_cost, 12);
        assert_eq!(c.log_format, LogFormat::Pretty);
        assert!(c.cors_origins.is_empty());
        assert_eq!(c.login_max_failures, 10);
        assert_eq!(c.metrics_addr, None);
        assert_eq!(c.audit_retention_days, 90);
    }

    #[test]
    fn metrics_and_audit_settings() {
        let c = cfg(&[
            ("METRICS_ADDR", "127.0.0.1:9100"),
            ("AUDIT_RETENTION_DAYS", "30"),
        ])
        .unwrap();
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(c.audit_retention_days, 30);
        assert_eq!(
            cfg(&[("METRICS_ADDR", "9100")]).unwrap_err().to_string(),
            "invalid configuration: METRICS_ADDR must be an address and port such as \
             127.0.0.1:9100, not \"9100\""
        );
        // Never the API's own port.
        for same in ["127.0.0.1:8000", "0.0.0.0:8000"] {
            let err = cfg(&[("METRICS_ADDR", same)]).unwrap_err().to_string();
            assert!(err.contains("listener of their own"), "{same}: {err}");
        }
        assert_eq!(
            cfg(&[("AUDIT_RETENTION_DAYS", "0")])
                .unwrap_err()
                .to_string(),
            "invalid configuration: AUDIT_RETENTION_DAYS must be a number from 1 to 3650, not \"0\""
        );
    }

    #[test]
    fn database_urls() {
        let p = |s| DatabaseLocation::parse(s);
        assert_eq!(
            p("sqlite:///./app.db"),
            Ok(DatabaseLocation::File("./app.db".into()))
        );
        assert_eq!(
            p("sqlite:////data/app.db"),
            Ok(DatabaseLocation::File("/data/app.db".into()))
        );
        assert_eq!(
            p("sqlite://data/app.db"),
            Ok(DatabaseLocation::File("data/app.db".into()))
        );
        assert_eq!(
            p("/tmp/x.db"),
            Ok(DatabaseLocation::File("/tmp/x.db".into()))
        );
        assert_eq!(p("sqlite::memory:"), Ok(DatabaseLocation::Memory));
        let pg = p("postgres://app:s3cret@db.internal:5433/auth?sslmode=require").unwrap();
        assert_eq!(pg.to_string(), "postgres://app@db.internal:5433/auth");
        assert!(!format!("{pg:?}").contains("s3cret"));
        assert!(matches!(
            p("postgresql://app@localhost/auth"),
            Ok(DatabaseLocation::Postgres(_))
        ));
        assert!(p("postgres://app:pw@localhost").is_err(), "no database");
        let refused = p("postgres://app:s3cret@localhost/db?sslmode=sometimes").unwrap_err();
        assert!(!refused.contains("s3cret"), "{refused}");
        assert!(p("postgresql:x").is_err());
        assert!(p("file:x.db").is_err());
        assert_eq!(
            p("./data:1.db"),
            Ok(DatabaseLocation::File("./data:1.db".into()))
        );
        assert!(p("sqlite://").is_err());
        assert!(p("").is_err());
    }

    #[test]
    fn every_bad_value_names_its_variable() {
        let cases: &[(&str, &str)] = &[
            ("PORT", "eighty"),
            ("PORT", "70000"),
            ("ACCESS_TOKEN_EXPIRE_MINUTES", "0"),
            ("ACCESS_TOKEN_EXPIRE_MINUTES", "-5"),
            ("REFRESH_TOKEN_EXPIRE_DAYS", "0"),
            ("JWT_ALGORITHM", "PS256"),
            ("JWT_ALGORITHM", "none"),
            ("LOG_FORMAT", "xml"),
            ("DATABASE_URL", "mysql://db/app"),
            ("PASSWORD_MIN_LENGTH", "4"),
            ("PASSWORD_MIN_LENGTH", "65"),
            ("BCRYPT_COST", "3"),
            ("BCRYPT_COST", "32"),
            ("JWT_SECRET", "short"),
            ("JWT_SECRET", "replace_me_with_a_long_random_value"),
            ("HOST", "not a host"),
            ("LOGIN_MAX_FAILURES", "-1"),
            ("CORS_ORIGINS", "app.example.com"),
            ("JWT_ISSUER", " "),
            ("RUST_LOG", "foo=bar=baz"),
            ("DATABASE_URL", "file:app.db"),
            ("SMTP_URL", "mail.example.com"),
            ("SMTP_URL", "http://mail.example.com"),
            ("SMTP_URL", "smtp://mail.example.com?tls=maybe"),
            ("SMTP_URL", "smtps://mail.example.com?tls=none"),
            ("SMTP_URL", "smtp://user@mail.example.com"),
            ("MAIL_FROM", "not a mailbox"),
            ("PUBLIC_URL", "auth.example.com"),
            ("PUBLIC_URL", "ftp://auth.example.com"),
            ("VERIFY_EMAIL_URL", "https://app.example.com/verify"),
            ("RESET_PASSWORD_URL", "/reset?token={token}"),
            ("EMAIL_VERIFY_EXPIRE_HOURS", "0"),
            ("PASSWORD_RESET_EXPIRE_MINUTES", "0"),
            ("REQUIRE_EMAIL_VERIFICATION", "yes"),
            ("REGISTRATION", "invite"),
            ("REFRESH_TOKEN_COOKIE", "1"),
            ("METRICS_ADDR", "localhost"),
            ("AUDIT_RETENTION_DAYS", "3651"),
            (
                "JWT_SECRET",
                "09d25e094faa6ca2556c818166b7a9563b93f7099f6f0f4caa6cf63b88e8d3e7",
            ),
        ];
        for (var, value) in cases {
            let err = cfg(&[(var, value)]).expect_err(&format!("{var}={value} must be refused"));
            assert!(err.to_string().contains(var), "{var}={value}: {err}");
        }
    }

    #[test]
    fn bad_numbers_are_refused_in_one_plain_wording() {
        let said = |var: &str, value: &str| cfg(&[(var, value)]).unwrap_err().to_string();
        assert!(
            said("PORT", "abc").ends_with(r#"PORT must be a number from 1 to 65535, not "abc""#),
            "{}",
            said("PORT", "abc")
        );
        for (var, value, range) in [
            ("PORT", "70000", "1 to 65535"),
            ("PORT", "-1", "1 to 65535"),
            ("BCRYPT_COST", "x", "4 to 31"),
            ("BCRYPT_COST", "3", "4 to 31"),
            ("ACCESS_TOKEN_EXPIRE_MINUTES", "0", "1 to 525600"),
            ("ACCESS_TOKEN_EXPIRE_MINUTES", "1.5", "1 to 525600"),
            (
                "REFRESH_TOKEN_EXPIRE_DAYS",
                "99999999999999999999",
                "1 to 3650",
            ),
            ("DATABASE_MAX_CONNECTIONS", "", "1 to 1000"),
            ("PASSWORD_MIN_LENGTH", "ten", "8 to 64"),
            ("LOGIN_MAX_FAILURES", "-1", "0 to 1000000"),
            ("EMAIL_VERIFY_EXPIRE_HOURS", "1d", "1 to 720"),
            ("PASSWORD_RESET_EXPIRE_MINUTES", "4", "5 to 1440"),
        ] {
            let message = said(var, value);
            assert!(
                message.ends_with(&format!(
                    "{var} must be a number from {range}, not {value:?}"
                )),
                "{var}={value}: {message}"
            );
            for parser_word in [
                "invalid digit",
                "invalid type",
                "ParseIntError",
                "number too large",
                "expected",
                "envy",
            ] {
                assert!(!message.contains(parser_word), "{var}={value}: {message}");
            }
        }
        // Surrounding blanks are forgiven; PORT=0 (any free port) is for tests.
        let c = cfg(&[("PORT", " 9000 "), ("BCRYPT_COST", "4")]).unwrap();
        assert_eq!((c.port, c.bcrypt_cost), (9000, 4));
        assert_eq!(cfg(&[("PORT", "0")]).unwrap().port, 0);
    }

    #[test]
    fn a_bad_log_filter_is_refused_in_plain_words() {
        let message = cfg(&[("RUST_LOG", "foo=bar=baz")]).unwrap_err().to_string();
        assert!(
            message.ends_with(
                r#"RUST_LOG is not a valid log filter (e.g. info, or warp_auth_api=debug,info): "foo=bar=baz""#
            ),
            "{message}"
        );
        assert!(cfg(&[("RUST_LOG", "warp_auth_api=debug,info")]).is_ok());
    }

    fn dotenv(text: &str) -> Result<Vec<(String, String)>, String> {
        read_dotenv(text.as_bytes()).map_err(|e| e.0)
    }

    #[test]
    fn a_dotenv_file_gives_its_pairs_in_order() {
        let pairs = dotenv(
            "# a comment\n\nPORT=9000\nexport LOG_FORMAT=json # trailing\r\nMAIL_FROM=\"A <a@b.c>\"\n\
             SMTP_URL='x\ny'\nLAST=1",
        )
        .unwrap();
        let names: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            ["PORT", "LOG_FORMAT", "MAIL_FROM", "SMTP_URL", "LAST"]
        );
        assert_eq!(pairs[1].1, "json");
        assert_eq!(pairs[2].1, "A <a@b.c>");
        assert_eq!(pairs[3].1, "x\ny");
        assert_eq!(dotenv("\u{feff}PORT=1").unwrap()[0].0, "PORT");
        assert!(dotenv("").unwrap().is_empty());
    }

    #[test]
    fn a_bad_dotenv_line_is_named_by_number_and_never_quoted() {
        let cases = [
            (
                "PORT=9000\nthis is not an assignment\n",
                "line 2: expected NAME=value",
            ),
            ("PORT=9000\nSECRET_WORD\n", "line 2: expected NAME=value"),
            (
                "# c\n\nPORT=9000\n1SECRET=x\n",
                "line 4: expected NAME=value, the name",
            ),
            (
                "A=1\nJWT_SECRET=two secret words\n",
                "line 2: a value with spaces must be in quotes",
            ),
            (
                "A=1\r\nB=2\r\nJWT_SECRET=\"secret-unclosed\n",
                "line 3: a quote is not closed",
            ),
            (
                "A=1\nJWT_SECRET='secret\nstill secret\n\n",
                "line 2: a quote is not closed",
            ),
            (
                "A='x\ny'\nB=\"z\nw\"\nJWT_SECRET=secret\\q\n",
                "line 5: an unknown escape",
            ),
            ("A=1\nB=${secret", "line 2: a ${ is not closed by }"),
            (
                "A=1\nB=\"ok\" and secret",
                "line 2: a value with spaces must be in quotes",
            ),
        ];
        for (text, expected) in cases {
            let message = dotenv(text).expect_err(text);
            assert!(
                message.starts_with(&format!(".env {expected}")),
                "{text:?}: {message}"
            );
            assert!(!message.contains("secret"), "{text:?}: {message}");
        }
        let message = read_dotenv(b"A=1\nB=\xff\n").unwrap_err().0;
        assert_eq!(message, ".env line 2: is not UTF-8 text");
        // A long line is still one line.
        let long = format!("A=1\nB={}\nC=secret value\n", "x".repeat(20_000));
        assert!(dotenv(&long).unwrap_err().starts_with(".env line 3: "));
    }

    #[test]
    fn secret_length_depends_on_the_algorithm() {
        let s48 = &SECRET[..48];
        assert!(cfg(&[("JWT_SECRET", &SECRET[..32])]).is_ok());
        assert!(cfg(&[("JWT_SECRET", &SECRET[..31])]).is_err());
        assert!(cfg(&[("JWT_SECRET", &SECRET[..47]), ("JWT_ALGORITHM", "HS384")]).is_err());
        assert!(cfg(&[("JWT_SECRET", s48), ("JWT_ALGORITHM", "HS384")]).is_ok());
        assert!(cfg(&[("JWT_SECRET", s48), ("JWT_ALGORITHM", "HS512")]).is_err());
        let c = cfg(&[("JWT_SECRET", SECRET), ("JWT_ALGORITHM", "HS512")]).unwrap();
        assert_eq!(c.secret_source, SecretSource::Configured);
    }

    #[test]
    fn the_secret_never_appears_in_debug_output() {
        let c = cfg(&[("JWT_SECRET", SECRET)]).unwrap();
        assert!(!format!("{c:?}").contains(SECRET));
    }

    #[test]
    fn mail_settings_follow_the_contract() {
        let c = cfg(&[]).unwrap();
        assert!(c.mail.smtp.is_none());
        assert_eq!(c.mail.public_url, "http://127.0.0.1:8000");
        assert_eq!(
            c.mail.from.to_string(),
            "warp-auth-api <no-reply@localhost>"
        );
        assert_eq!((c.mail.verify_hours, c.mail.reset_minutes), (24, 30));
        assert!(!c.require_email_verification);
        assert!(c.registration_open);

        let smtp = |url: &str| cfg(&[("SMTP_URL", url)]).unwrap().mail.smtp.unwrap();
        let plain = smtp("smtp://127.0.0.1:1025?tls=none");
        assert_eq!((plain.tls, plain.port), (SmtpTls::None, 1025));
        let starttls = smtp("smtp://me%40x.com:p%3Ass@mail.example.com");
        // With a password, STARTTLS is required unless the URL says otherwise.
        assert_eq!((starttls.tls, starttls.port), (SmtpTls::Required, 587));
        assert_eq!(smtp("smtp://mail.example.com").tls, SmtpTls::Opportunistic);
        assert_eq!(
            smtp("smtp://u:p@mail.example.com?tls=opportunistic").tls,
            SmtpTls::Opportunistic
        );
        assert_eq!(
            starttls.credentials,
            Some(("me@x.com".to_owned(), "p:ss".to_owned()))
        );
        assert_eq!(smtp("smtp://h?tls=required").tls, SmtpTls::Required);
        let wrapper = smtp("smtps://h");
        assert_eq!((wrapper.tls, wrapper.port), (SmtpTls::Wrapper, 465));

        let c = cfg(&[
            ("REQUIRE_EMAIL_VERIFICATION", "true"),
            ("REGISTRATION", "closed"),
            ("MAIL_FROM", "Example <no-reply@example.com>"),
            ("HOST", "0.0.0.0"),
            ("PORT", "9000"),
        ])
        .unwrap();
        assert!(c.require_email_verification && !c.registration_open);
        assert_eq!(c.mail.public_url, "http://localhost:9000");
        assert_eq!(c.mail.from.email.to_string(), "no-reply@example.com");
    }

    #[test]
    fn the_smtp_password_never_appears_in_messages_or_debug_output() {
        let c = cfg(&[(
            "SMTP_URL",
            "smtp://user:hunter2-secret@mail.example.com:587",
        )])
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        let err = cfg(&[(
            "SMTP_URL",
            "smtp://user:hunter2-secret@mail.example.com:587?x=1",
        )])
        .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn lower_case_names_are_not_ours() {
        let c = cfg(&[("port", "1")]).unwrap();
        assert_eq!(c.port, 8000);
    }
}
