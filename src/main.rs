//! The `warp-auth-api` command: `serve` (the default) runs the HTTP server.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use warp_auth_api::config::{Config, SecretSource};
use warp_auth_api::{AppState, app, server, telemetry};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("warp-auth-api: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), String> {
    telemetry::init(config.log_format, &config.rust_log).map_err(|e| e.to_string())?;
    if config.secret_source == SecretSource::Generated {
        tracing::warn!(
            "JWT_SECRET is not set: tokens are signed with a random secret and every token dies \
             when the server restarts. Set JWT_SECRET (at least 32 bytes) to keep them."
        );
    }
    let addr = config.addr();
    tracing::info!(database = %config.database, bcrypt_cost = config.bcrypt_cost, "starting");
    let state = AppState::new(config).await.map_err(|e| e.to_string())?;
    let store = state.store.clone();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (HOST/PORT): {e}"))?;
    // PORT=0 picks a free port: the line below tells which.
    let addr = listener.local_addr().unwrap_or(addr);
    tracing::info!("listening on http://{addr} (API docs at http://{addr}/docs)");
    server::serve(listener, app(state), server::shutdown_signal()).await;
    if let Err(e) = store.close().await {
        tracing::warn!(error = %e, "the database did not close cleanly");
    }
    tracing::info!("stopped");
    Ok(())
}
