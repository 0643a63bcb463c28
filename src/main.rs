//! The `pgtenant` binary: parses the command line and calls into the library.
//!
//! `main` sets up logging and the runtime, runs the command and prints an error as one line; the command
//! line's definitions and the handlers of its commands are in `cli`.

mod cli;

use anyhow::{Context, Result};
use clap::Parser;
use cli::args::{Cli, Command, TokenAction, UserAction};
use cli::cluster::cluster_action;
use cli::migrate::migrate;
use cli::serve::serve;
use cli::tenant::tenant_action;
use cli::token::revoke;
use cli::{connect_admin, load};
use pgtenant::tenancy::{self, OnboardRequest};
use std::process::ExitCode;

/// Threads serving clients: `PGTENANT_WORKER_THREADS`, else half the cores (at least one). Every core the
/// proxy keeps busy is taken from PostgreSQL on the same machine, and fewer threads mean fewer cross-thread
/// wake-ups per message.
fn worker_threads() -> usize {
    std::env::var("PGTENANT_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| (n.get() / 2).max(1))
                .unwrap_or(1)
        })
}

/// One worker thread: a current-thread runtime (no work-stealing scheduler, no cross-thread wake-ups; the
/// thread polls the sockets itself). More: the multi-thread runtime. `PGTENANT_RUNTIME=multi_thread` forces
/// the latter (for comparisons).
fn build_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let forced_multi = std::env::var("PGTENANT_RUNTIME").is_ok_and(|v| v == "multi_thread");
    if workers == 1 && !forced_multi {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
}

/// Errors end the process with one line on stderr, `error: ` and the chain of causes, and exit code 1 (never
/// a backtrace, whatever `RUST_BACKTRACE` says: what went wrong is the user's to read, not a bug report).
fn main() -> ExitCode {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGTENANT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    // Colours only on a terminal: a log file or journald gets plain lines, made by a cheaper formatter.
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        logs.with_ansi(true).init();
    } else {
        logs.with_ansi(false)
            .event_format(pgtenant::log_line::PlainLines::default())
            .init();
    }
    let cli = Cli::parse();
    match try_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// `err` and its causes, joined by `: ` as `{err:#}` does, minus each cause the text before it already holds:
/// most error types of the library print their source in their own message.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn try_main(cli: Cli) -> Result<()> {
    let runtime = build_runtime(worker_threads())?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Dev(args) => Ok(pgtenant::dev::run(args).await?),
        Command::Serve => serve(load(&cli.config)?, cli.config.clone()).await,
        Command::Onboard {
            name,
            admin_email,
            slug,
            no_ddl,
            cluster,
        } => {
            let config = load(&cli.config)?;
            let mut admin = connect_admin(&config).await?;
            let done = tenancy::onboard(
                &mut admin,
                &config,
                &OnboardRequest {
                    name,
                    admin_email,
                    slug,
                    ddl_allowed: no_ddl.then_some(false),
                    cluster,
                },
            )
            .await?;
            println!("organization: {} ({})", done.slug, done.organization_id);
            println!("cluster:      {}", done.cluster);
            println!("schema:       {}", done.schema);
            println!("role:         {}", done.role);
            println!("admin user:   {}", done.admin_user_id);
            println!("migrations:   {} applied", done.migrations_applied);
            Ok(())
        }
        Command::Token {
            action:
                Some(TokenAction::Revoke {
                    jti,
                    user,
                    sessions,
                }),
            ..
        } => {
            let config = load(&cli.config)?;
            let client = connect_admin(&config).await?;
            revoke(&client, jti, user, sessions).await
        }
        Command::Token {
            email, ttl, admin, ..
        } => {
            let config = load(&cli.config)?;
            let client = connect_admin(&config).await?;
            let email = email.context("--email is required")?;
            let token =
                pgtenant::tenancy::mint_token_for(&client, &config, &email, ttl, admin).await?;
            println!("{token}");
            Ok(())
        }
        Command::User { action } => {
            use pgtenant::tenancy::revoke::set_user_disabled;
            let config = load(&cli.config)?;
            let client = connect_admin(&config).await?;
            let (email, disabled) = match action {
                UserAction::Disable { email } => (email, true),
                UserAction::Enable { email } => (email, false),
            };
            let changed = set_user_disabled(&client, &email, disabled).await?;
            let what = if disabled { "disabled" } else { "enabled" };
            println!("{email}: {what} ({} memberships changed)", changed.len());
            Ok(())
        }
        Command::Tenant { action } => {
            let config = load(&cli.config)?;
            tenant_action(&config, action).await
        }
        Command::Migrate { target } => {
            let config = load(&cli.config)?;
            migrate(&config, target).await
        }
        Command::Cluster { action } => {
            let config = load(&cli.config)?;
            cluster_action(&config, action).await
        }
    }
}
