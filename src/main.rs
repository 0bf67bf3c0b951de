//! The `warp-auth-api` command: `serve` (the default) runs the HTTP server; the others
//! (`create-admin`, `keys`, `backup`, `healthcheck`, `openapi`) work beside it.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use warp_auth_api::commands::CommandError;
use warp_auth_api::config::{Config, SecretSource};
use warp_auth_api::{AppState, app, commands, server, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "warp-auth-api",
    version,
    about = "User-authentication REST service (register, login with JWT, sessions)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server (what the bare command does).
    Serve,
    /// Create an admin. The password comes from ADMIN_PASSWORD, or else from standard input; it
    /// is never an argument. An email that already has an account is refused (exit 1) unless
    /// --promote-existing is given.
    CreateAdmin {
        /// The admin's email address.
        #[arg(long)]
        email: String,
        /// Make the existing account with this email an admin instead; reads no password and
        /// leaves the account's password as it is.
        #[arg(long)]
        promote_existing: bool,
    },
    /// Print the OpenAPI document generated from the code (the committed openapi.json is this).
    Openapi,
    /// Ask the running server's /health/ready (at HOST/PORT); exit 0 when ready, 1 otherwise.
    Healthcheck,
    /// Copy the SQLite database (DATABASE_URL) to PATH, consistent while the server runs
    /// (SQLite's online backup); an existing PATH is never overwritten. On PostgreSQL it says to
    /// use pg_dump.
    Backup {
        /// The new file to write the copy to (created readable by its owner only).
        path: std::path::PathBuf,
    },
    /// The signing keys of an asymmetric JWT_ALGORITHM (EdDSA, ES256, RS256), in the database.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Debug, Subcommand)]
enum KeysAction {
    /// Make a new signing key; running servers sign with it within a minute, and the old key
    /// verifies (and stays in the JWKS) until its last token expired.
    Rotate,
    /// Print each key's id, algorithm, created and retired times (never the private part).
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Openapi) = cli.command {
        print!("{}", warp_auth_api::openapi::document());
        return ExitCode::SUCCESS;
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("warp-auth-api: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("warp-auth-api: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => runtime.block_on(serve(config)),
        Command::Healthcheck => runtime.block_on(healthcheck(&config)),
        Command::Openapi => Ok(()),
        Command::Backup { path } => commands::backup(&config, &path).map(|line| println!("{line}")),
        Command::Keys { action } => runtime.block_on(async {
            match action {
                KeysAction::Rotate => commands::keys_rotate(&config).await,
                KeysAction::List => commands::keys_list(&config).await,
            }
            .map(|lines| {
                for line in lines {
                    println!("{line}");
                }
            })
        }),
        Command::CreateAdmin {
            email,
            promote_existing,
        } => {
            let existing = if promote_existing {
                commands::Existing::Promote
            } else {
                commands::Existing::Refuse
            };
            runtime
                .block_on(commands::create_admin(
                    &config,
                    &email,
                    existing,
                    read_admin_password,
                ))
                .map(|outcome| println!("{outcome}"))
        }
    };
    // Log lines still in the buffer go out before the process does.
    telemetry::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("warp-auth-api: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

async fn serve(config: Config) -> Result<(), CommandError> {
    telemetry::init(config.log_format, &config.rust_log)
        .map_err(|e| CommandError::Refused(format!("RUST_LOG: {e}")))?;
    if config.secret_source == SecretSource::Generated {
        tracing::warn!(
            "JWT_SECRET is not set: access tokens are signed with a random secret and stop \
             working when the server restarts (clients must refresh or log in again). Set \
             JWT_SECRET (at least 32 bytes) to keep them."
        );
    }
    let addr = config.addr();
    tracing::info!(
        database = %config.database,
        backend = if matches!(config.database, warp_auth_api::config::DatabaseLocation::Postgres(_)) { "postgres" } else { "sqlite" },
        jwt_algorithm = warp_auth_api::keys::algorithm_name(config.jwt_algorithm),
        bcrypt_cost = config.bcrypt_cost,
        "starting"
    );
    let state = AppState::new(config).await?;
    let mail = &state.config.mail;
    match &mail.smtp {
        Some(smtp) => {
            tracing::info!(smtp = %smtp, from = %mail.from, links = %mail.public_url, "mail is delivered over SMTP");
            if !mail.public_url_set {
                tracing::warn!(
                    links = %mail.public_url,
                    "PUBLIC_URL is not set: the links in mails start with the address above, made \
                     from HOST and PORT; set PUBLIC_URL to the address users reach this service at"
                );
            }
        }
        None => tracing::warn!(
            "SMTP_URL is not set: mail is NOT delivered; verification and reset links are \
             written to this log instead. Set SMTP_URL to send them."
        ),
    }
    let store = state.store.clone();
    let housekeeping = tokio::spawn(state.clone().maintain());
    let checkpoints = tokio::spawn(store.clone().checkpoints());
    let state_for_mail = state.clone();
    let mail_worker = tokio::spawn(state.clone().deliver_mail());
    let key_watch = tokio::spawn(state.tokens.ring().clone().watch(store.clone()));
    let metrics = match state.config.metrics_addr {
        Some(metrics_addr) => Some(serve_metrics(&state, metrics_addr).await?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| CommandError::Io {
            context: format!("cannot listen on {addr} (HOST/PORT)"),
            source,
        })?;
    // PORT=0 picks a free port: the line below tells which.
    let addr = listener.local_addr().unwrap_or(addr);
    tracing::info!("listening on http://{addr} (API docs at http://{addr}/docs)");
    // Whoever waits for the start (an operator, a supervisor, a test) sees it now, not at the
    // log's next write-out.
    telemetry::flush();
    let trusted_proxies = state.config.trusted_proxies.clone();
    server::serve(
        listener,
        app(state),
        trusted_proxies,
        server::shutdown_signal(),
    )
    .await;
    housekeeping.abort();
    checkpoints.abort();
    key_watch.abort();
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    // The mail being sent is finished (or given back), so no claim waits out its lease.
    state_for_mail.mailer.stop();
    if tokio::time::timeout(std::time::Duration::from_secs(10), mail_worker)
        .await
        .is_err()
    {
        tracing::warn!(
            "the mail worker did not stop within 10 s; a mail may be sent again after its lease"
        );
    }
    if let Err(e) = store.close().await {
        tracing::warn!(error = %e, "the database did not close cleanly");
    }
    tracing::info!("stopped");
    Ok(())
}

/// `GET /metrics` on its own listener (`METRICS_ADDR`), until the API server has stopped.
async fn serve_metrics(
    state: &AppState,
    addr: std::net::SocketAddr,
) -> Result<tokio::task::JoinHandle<()>, CommandError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| CommandError::Io {
            context: format!("cannot listen on {addr} (METRICS_ADDR)"),
            source,
        })?;
    // Port 0 picks a free port: the line below tells which.
    let addr = listener.local_addr().unwrap_or(addr);
    tracing::info!("metrics on http://{addr}/metrics");
    Ok(tokio::spawn(server::serve(
        listener,
        warp_auth_api::metrics::app(state),
        Vec::new(),
        std::future::pending(),
    )))
}

/// The container's health check: `GET /health/ready` on the configured port, with a deadline.
async fn healthcheck(config: &Config) -> Result<(), CommandError> {
    use http_body_util::Empty;
    use hyper_util::rt::TokioIo;

    // A server listening on every address answers on loopback.
    let mut addr = config.addr();
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let ask = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| CommandError::Io {
                context: format!("cannot connect to {addr}"),
                source,
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| CommandError::Http {
                context: format!("HTTP handshake with {addr}"),
                source,
            })?;
        tokio::spawn(connection);
        let request = hyper::Request::get("/health/ready")
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| CommandError::Refused(format!("the request: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|source| CommandError::Http {
                context: "GET /health/ready".into(),
                source,
            })?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(CommandError::Refused(format!(
                "GET /health/ready answered {}",
                response.status()
            )))
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(3), ask)
        .await
        .map_err(|_| CommandError::Refused(format!("no answer from {addr} within 3 s")))?
}

/// `ADMIN_PASSWORD`, else one line of standard input (without echo at a terminal).
fn read_admin_password() -> Result<String, CommandError> {
    use std::io::{BufRead, IsTerminal};

    if let Ok(password) = std::env::var("ADMIN_PASSWORD") {
        return Ok(password);
    }
    let password = if std::io::stdin().is_terminal() {
        rpassword::prompt_password("Password for the new admin: ").map_err(|source| {
            CommandError::Io {
                context: "cannot read the password".into(),
                source,
            }
        })?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|source| CommandError::Io {
                context: "cannot read the password from standard input".into(),
                source,
            })?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    if password.is_empty() {
        return Err(CommandError::Refused(
            "no password: set ADMIN_PASSWORD or write it to standard input".into(),
        ));
    }
    Ok(password)
}
