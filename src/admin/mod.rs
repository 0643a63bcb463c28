//! The admin channel: a client that connects to the reserved database (`server.admin_database`, default
//! `pgtenant`) with an administrator's token is served by pgtenant itself, in the PostgreSQL protocol, so
//! psql shows tables. Commands are parsed in [`parse`], run by [`show`], [`logins`], [`tenants`] (also their
//! limits), [`tokens`]
//! and [`migrate`] (which call the same library functions as the CLI), and answered as text columns. Long
//! commands stream progress as NOTICE messages while they run.

mod clusters;
mod logins;
mod migrate;
mod moves;
pub mod parse;
pub(crate) mod show;
mod tenants;
mod tokens;

use crate::error::UserFacing;
use crate::protocol::{self, sqlstate, tag, PgError, TxStatus};
use crate::proxy::Proxy;
use crate::refusal::Refusal;
use crate::tls::ClientStream;
use bytes::BytesMut;
use parse::Command;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Who is using the admin channel (from the token).
#[derive(Debug, Clone)]
pub struct AdminIdentity {
    pub name: String,
    /// The login token's `exp` (for `auth.session_expiry = "end"`).
    pub token_expires_at: u64,
}

/// A result set: text columns.
#[derive(Debug, Default, Clone)]
pub struct Table {
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl Table {
    pub fn new(columns: &[&'static str]) -> Self {
        Self {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }
    pub fn row(&mut self, values: Vec<Option<String>>) {
        self.rows.push(values);
    }
}

/// What a command answers.
pub enum Reply {
    Rows { table: Table, tag: String },
    Done { tag: String },
}

/// Progress lines of a running command, sent to the client as NOTICEs.
pub type Notices = mpsc::UnboundedSender<String>;

/// Largest Query message the admin channel reads.
const MAX_ADMIN_QUERY: usize = 1 << 20;

/// Serves an admin session until the client leaves.
pub async fn serve(
    proxy: Arc<Proxy>,
    mut client: ClientStream,
    who: AdminIdentity,
    peer: SocketAddr,
) {
    tracing::info!(%peer, admin = %who.name, "admin session started");
    if let Err(e) = send_startup(&mut client).await {
        tracing::debug!(%peer, error = %e, "admin client left during startup");
        return;
    }
    let deadline = crate::lifetime::deadline(
        &proxy.config(),
        who.token_expires_at,
        std::time::SystemTime::now(),
    )
    .map(|d| (tokio::time::Instant::now() + d.after, d.reason.error()));
    if let Err(e) = session_loop(&proxy, &mut client, &who, deadline).await {
        tracing::debug!(%peer, error = %e, "admin session ended with an error");
    }
    tracing::info!(%peer, admin = %who.name, "admin session ended");
}

async fn send_startup(client: &mut ClientStream) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    protocol::write::authentication_ok(&mut out);
    for (name, value) in [
        ("server_version", "15.0 (pgtenant admin)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", "pgtenant"),
    ] {
        protocol::write::parameter_status(&mut out, name, value);
    }
    protocol::write::backend_key_data(&mut out, 0, 0);
    protocol::write::ready_for_query(&mut out, TxStatus::Idle);
    client.write_all(&out).await?;
    client.flush().await
}

/// Serves commands until the client leaves. Past `deadline` (the token's expiry, `server.max_session_secs`),
/// the next message ends the session with its reason instead: between commands, never during one.
async fn session_loop(
    proxy: &Arc<Proxy>,
    client: &mut ClientStream,
    who: &AdminIdentity,
    deadline: Option<(tokio::time::Instant, PgError)>,
) -> std::io::Result<()> {
    // After an extended-protocol message, everything up to the next Sync is skipped (one error reported).
    let mut skipping_to_sync = false;
    loop {
        let (msg_tag, body) = match protocol::read_message(client, MAX_ADMIN_QUERY).await {
            Ok(m) => m,
            Err(protocol::ProtocolError::Closed) => return Ok(()),
            Err(e) => {
                let mut out = BytesMut::new();
                protocol::write::error_response(
                    &mut out,
                    &Refusal::Protocol(e.to_string()).to_fatal(),
                );
                let _ = client.write_all(&out).await;
                return Ok(());
            }
        };
        if let Some((at, reason)) = &deadline {
            if msg_tag != tag::TERMINATE && tokio::time::Instant::now() >= *at {
                let mut out = BytesMut::new();
                protocol::write::error_response(&mut out, reason);
                client.write_all(&out).await?;
                return client.flush().await;
            }
        }
        match msg_tag {
            tag::QUERY => {
                let end = body.iter().position(|b| *b == 0).unwrap_or(body.len());
                let text = String::from_utf8_lossy(&body[..end]).into_owned();
                run_query(proxy, client, who, &text).await?;
            }
            tag::TERMINATE => return Ok(()),
            tag::SYNC => {
                skipping_to_sync = false;
                let mut out = BytesMut::new();
                protocol::write::ready_for_query(&mut out, TxStatus::Idle);
                client.write_all(&out).await?;
                client.flush().await?;
            }
            tag::FLUSH => client.flush().await?,
            _ => {
                if !skipping_to_sync {
                    skipping_to_sync = true;
                    let mut out = BytesMut::new();
                    protocol::write::error_response(
                        &mut out,
                        &Refusal::AdminSimpleQueryOnly.to_error(),
                    );
                    client.write_all(&out).await?;
                    client.flush().await?;
                }
            }
        }
    }
}

/// Runs the statements of one Query message; answers each, stops at the first error, ends with
/// ReadyForQuery.
async fn run_query(
    proxy: &Arc<Proxy>,
    client: &mut ClientStream,
    who: &AdminIdentity,
    text: &str,
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    match parse::parse(text) {
        Err(e) => {
            protocol::write::error_response(
                &mut out,
                &Refusal::AdminSyntax {
                    message: e.message,
                    hint: e.hint,
                }
                .to_error(),
            );
        }
        Ok(commands) if commands.is_empty() => protocol::write::empty_query_response(&mut out),
        Ok(commands) => {
            for command in commands {
                tracing::info!(admin = %who.name, ?command, "admin command");
                match run_with_notices(proxy, client, command).await? {
                    Ok(reply) => write_reply(&mut out, reply),
                    Err(e) => {
                        protocol::write::error_response(&mut out, &e);
                        break;
                    }
                }
                client.write_all(&out).await?;
                out.clear();
            }
        }
    }
    protocol::write::ready_for_query(&mut out, TxStatus::Idle);
    client.write_all(&out).await?;
    client.flush().await
}

/// Runs one command while writing the progress lines it sends as NOTICEs.
async fn run_with_notices(
    proxy: &Arc<Proxy>,
    client: &mut ClientStream,
    command: Command,
) -> std::io::Result<Result<Reply, PgError>> {
    let (notices, mut lines) = mpsc::unbounded_channel();
    let work = execute(proxy.clone(), command, notices);
    tokio::pin!(work);
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            Some(line) = lines.recv() => send_notice(client, &line).await?,
        }
    };
    while let Ok(line) = lines.try_recv() {
        send_notice(client, &line).await?;
    }
    Ok(result)
}

async fn send_notice(client: &mut ClientStream, line: &str) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    let notice = PgError::notice(sqlstate::SUCCESSFUL_COMPLETION, line);
    protocol::write::notice_response(&mut out, &notice);
    client.write_all(&out).await?;
    client.flush().await
}

fn write_reply(out: &mut BytesMut, reply: Reply) {
    match reply {
        Reply::Rows { table, tag } => {
            protocol::write::row_description(out, &table.columns);
            for row in &table.rows {
                protocol::write::data_row(out, row);
            }
            protocol::write::command_complete(out, &tag);
        }
        Reply::Done { tag } => protocol::write::command_complete(out, &tag),
    }
}

async fn execute(proxy: Arc<Proxy>, command: Command, notices: Notices) -> Result<Reply, PgError> {
    match command {
        Command::ShowTenants => show::tenants(&proxy).await,
        Command::ShowPools => show::pools(&proxy).await,
        Command::ShowClients => Ok(show::clients(&proxy)),
        Command::ShowServers => Ok(show::servers(&proxy)),
        Command::ShowMigrations { tenant } => show::migrations(&proxy, tenant.as_deref()).await,
        Command::ShowConfig => Ok(show::config(&proxy)),
        Command::ShowVersion => Ok(show::version()),
        Command::Help => Ok(show::help()),
        Command::CreateTenant {
            name,
            admin_email,
            ddl,
            cluster,
        } => tenants::create(&proxy, name, admin_email, ddl, cluster).await,
        Command::ShowClusters => clusters::show(&proxy).await,
        Command::AddCluster(request) => clusters::add(&proxy, &request).await,
        Command::SuspendTenant { tenant } => tenants::suspend(&proxy, &tenant).await,
        Command::ResumeTenant { tenant } => tenants::resume(&proxy, &tenant).await,
        Command::DropTenant { tenant, confirm } => {
            tenants::drop(&proxy, &tenant, confirm.as_deref()).await
        }
        Command::CheckTenants => tenants::check(&proxy, &notices).await,
        Command::Migrate { tenant, dry_run } => {
            migrate::run(&proxy, tenant, dry_run, notices).await
        }
        Command::Reload => reload(&proxy, &notices),
        Command::ShowStats => Ok(show::stats(&proxy)),
        Command::Pause { tenant } => tenants::pause(&proxy, tenant.as_deref(), &notices).await,
        Command::Unpause { tenant } => tenants::unpause(&proxy, tenant.as_deref()).await,
        Command::ShowLogins => Ok(logins::logins(&proxy)),
        Command::RevokeToken { jti, sessions } => {
            tokens::revoke_token(&proxy, &jti, sessions).await
        }
        Command::RevokeUser { email, sessions } => {
            tokens::revoke_user(&proxy, &email, sessions).await
        }
        Command::DisableUser { email } => tokens::set_disabled(&proxy, &email, true).await,
        Command::EnableUser { email } => tokens::set_disabled(&proxy, &email, false).await,
        Command::ShowLimits => show::limits(&proxy).await,
        Command::MoveTenant {
            tenant,
            cluster,
            offline,
            dry_run,
        } => {
            let options = crate::moves::MoveOptions {
                dry_run,
                offline,
                ..Default::default()
            };
            moves::move_tenant(&proxy, &tenant, &cluster, &options, &notices).await
        }
        Command::CancelMove { tenant } => moves::cancel(&proxy, &tenant, &notices).await,
        Command::FinishMove { tenant } => moves::finish(&proxy, &tenant, &notices).await,
        Command::ShowMoves => moves::show(&proxy).await,
        Command::AlterTenantLimits { tenant, changes } => {
            tenants::alter_limits(&proxy, &tenant, &changes).await
        }
        Command::Shutdown => {
            let _ = notices
                .send("pgtenant stops accepting clients; running transactions may finish".into());
            proxy.shutdown.cancel();
            Ok(Reply::Done {
                tag: "SHUTDOWN".into(),
            })
        }
    }
}

fn reload(proxy: &Proxy, notices: &Notices) -> Result<Reply, PgError> {
    let needs_restart = proxy
        .reload()
        .map_err(|e| Refusal::ReloadRefused(e.to_string()).to_error())?;
    for setting in needs_restart {
        let _ = notices.send(format!("{setting} changed: takes effect after a restart"));
    }
    Ok(Reply::Done {
        tag: "RELOAD".into(),
    })
}

/// An error talking to the database, for the admin client.
pub(crate) fn db_error(e: impl std::fmt::Display) -> PgError {
    Refusal::AdminDatabase(e.to_string()).to_error()
}
