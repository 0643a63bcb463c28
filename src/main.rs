//! The `pgtenant` binary: parses the command line and calls into the library.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use pgtenant::config::Config;
use pgtenant::session::Proxy;
use pgtenant::tenancy::{self, OnboardRequest};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "pgtenant",
    version,
    about = "PostgreSQL proxy that gives every tenant its own schema, role and pool"
)]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "PGTENANT_CONFIG",
        default_value = "config/pgtenant.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve,
    /// Create a tenant: organization, role, schema, tenant migrations and admin user, in one transaction (in
    /// three on a cluster other than the default one: see README "Several clusters").
    Onboard {
        /// Organization name, e.g. "Demo Company".
        #[arg(long)]
        name: String,
        /// Email of the organization's first administrator.
        #[arg(long)]
        admin_email: String,
        /// URL-style short name (default: made from the name).
        #[arg(long)]
        slug: Option<String>,
        /// Take DDL (CREATE, ALTER, DROP) away from this tenant.
        #[arg(long)]
        no_ddl: bool,
        /// The cluster the tenant goes to (a primary of `pgtenant cluster list`; default: as
        /// tenancy.placement says).
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Mint a development token with the configured HS256 secret (auth.hs_secret / PGTENANT_JWT_SECRET), or
    /// revoke tokens (`pgtenant token revoke`).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Token {
        /// Email of an existing user.
        #[arg(long, required = true)]
        email: Option<String>,
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
        /// Mark the token as an administrator's (auth.admin_claim): it opens the admin channel.
        #[arg(long)]
        admin: bool,
        #[command(subcommand)]
        action: Option<TokenAction>,
    },
    /// Users: disable (logins refused, sessions ended on every pgtenant) or enable again.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Apply pending shared-schema migrations (shared-migrations/).
    Migrate {
        #[command(subcommand)]
        target: MigrateTarget,
    },
    /// Existing tenants: list, suspend, resume, archive or drop, check; their limits (statement_timeout …).
    Tenant {
        #[command(subcommand)]
        action: TenantAction,
    },
    /// Clusters tenants are placed on: list, add (a primary or a replica), apply a cluster's guards.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Start a throwaway local PostgreSQL, migrate it, onboard a demo tenant and run the proxy.
    Dev(pgtenant::dev::DevArgs),
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Every cluster with its role, address, status, tenants, size and (replicas) replay lag in bytes.
    List,
    /// Check a cluster and record it in the directory (a primary also gets its guards).
    ///
    /// A primary must not be in recovery; it gets the files of cluster-migrations/ and its
    /// pgtenant_secret_check role. A replica must be a streaming standby of its primary (same system
    /// identifier). The admin password comes from [clusters.<name>] admin_password or
    /// PGTENANT_CLUSTER_<NAME>_ADMIN_PASSWORD (a replica falls back to its primary's), never from the
    /// directory.
    Add {
        /// Lower-case letters, digits and _, starting with a letter, at most 40.
        name: String,
        /// Host name or IP address of the cluster, as every pgtenant reaches it.
        #[arg(long)]
        host: String,
        #[arg(long, default_value_t = 5432)]
        port: u16,
        /// Default: the primary's (a replica), else upstream.database.
        #[arg(long)]
        database: Option<String>,
        /// The admin role (default: the primary's, else upstream.admin_user).
        #[arg(long)]
        user: Option<String>,
        /// disable, prefer, require, verify-ca or verify-full (default: the primary's, else disable).
        #[arg(long, value_parser = parse_sslmode)]
        sslmode: Option<pgtenant::config::SslMode>,
        /// CA certificate(s) (PEM) the cluster's certificate must chain to; a path every pgtenant has.
        #[arg(long)]
        sslrootcert: Option<PathBuf>,
        /// Client certificate (PEM), with --sslkey; a path every pgtenant has.
        #[arg(long, requires = "sslkey")]
        sslcert: Option<PathBuf>,
        /// Client key (PEM), with --sslcert.
        #[arg(long, requires = "sslcert")]
        sslkey: Option<PathBuf>,
        /// A streaming replica of this primary (reads may go to it).
        #[arg(long, value_name = "PRIMARY")]
        replica_of: Option<String>,
    },
    /// Apply pending cluster-migrations/ on a cluster that is not the default one.
    Guards { name: String },
}

fn parse_sslmode(text: &str) -> Result<pgtenant::config::SslMode, String> {
    pgtenant::clusters::parse_sslmode(text).ok_or_else(|| {
        format!("unknown sslmode {text}: disable, prefer, require, verify-ca, verify-full")
    })
}

#[derive(Subcommand)]
enum TokenAction {
    /// Refuse a token (by its jti) or every token of a user issued until now, on every pgtenant at once.
    #[command(group = clap::ArgGroup::new("which").required(true).args(["jti", "user"]))]
    Revoke {
        /// The token's `jti` claim.
        #[arg(long)]
        jti: Option<String>,
        /// Email of the user whose tokens issued until now are refused (each of its memberships).
        #[arg(long, value_name = "EMAIL")]
        user: Option<String>,
        /// Also end the sessions those tokens opened.
        #[arg(long)]
        sessions: bool,
    },
}

#[derive(Subcommand)]
enum UserAction {
    /// Refuse the user's logins and end its sessions on every pgtenant.
    Disable { email: String },
    /// Let a disabled user log in again.
    Enable { email: String },
}

#[derive(Subcommand)]
enum TenantAction {
    /// Every tenant with its status, migration version and size.
    List,
    /// Refuse new logins and end the tenant's sessions on every pgtenant.
    Suspend { tenant: String },
    /// Let a suspended or archived tenant log in again.
    Resume { tenant: String },
    /// Archive the tenant (logins refused, data kept), or with --confirm <slug> drop it for good.
    Drop {
        tenant: String,
        /// The tenant's slug, to drop its schema, role, users and history.
        #[arg(long)]
        confirm: Option<String>,
    },
    /// Log in as every tenant's role and report its health.
    Check,
    /// Every tenant's statement_timeout, lock_timeout, idle_in_transaction_session_timeout and
    /// transaction_timeout: its own value, or the [limits] default it follows.
    Limits,
    /// Set one of a tenant's limits, for its sessions from now on (on every pgtenant), as the admin command
    /// ALTER TENANT x SET.
    Set {
        /// The tenant's slug, schema, name or id.
        tenant: String,
        /// statement_timeout, lock_timeout, idle_in_transaction_session_timeout or transaction_timeout.
        setting: String,
        /// A duration: 500ms, 5s, 2min, 1h (a bare number is milliseconds); 0 turns the limit off for this
        /// tenant whatever the default.
        value: String,
    },
    /// Move a tenant to another cluster while it is served, or resume its move (as MOVE TENANT x TO c): its
    /// role and schema made there, its tables copied by logical replication, a short pause, the switch.
    Move {
        /// The tenant's slug, schema, name or id.
        tenant: String,
        /// The cluster to move it to.
        #[arg(long = "to")]
        cluster: String,
        /// Only check and print the plan.
        #[arg(long)]
        dry_run: bool,
        /// Copy with COPY during the switch instead of logical replication, for tables logical replication
        /// cannot carry (no primary key or replica identity, UNLOGGED); the tenant waits for the whole copy.
        #[arg(long)]
        offline: bool,
        /// At the switch, how long the tenant's running transactions may take before they are ended.
        #[arg(long, default_value_t = 5000)]
        pause_timeout_ms: u64,
    },
    /// Before its switch, stop a tenant's move and drop what the target got (as CANCEL MOVE x).
    CancelMove { tenant: String },
    /// After its switch, drop the tenant's copy on the cluster it left (as FINISH MOVE x).
    FinishMove { tenant: String },
    /// Every tenant move on record (as SHOW MOVES).
    Moves,
    /// Put one of a tenant's limits (or all) back to the [limits] default, as ALTER TENANT x RESET.
    Reset {
        /// The tenant's slug, schema, name or id.
        tenant: String,
        /// A setting's name, or "all".
        setting: String,
    },
}

#[derive(Subcommand)]
enum MigrateTarget {
    /// The shared schema (directory tables): shared-migrations/.
    Shared,
    /// Every tenant schema: tenant-migrations/, fanned out with bounded concurrency.
    Tenants {
        /// Tenants migrated at once (default: migrations.concurrency).
        #[arg(long)]
        concurrency: Option<usize>,
        /// Stop starting new tenants after this many failed.
        #[arg(long = "stop-after", value_name = "N-FAILURES")]
        stop_after_failures: Option<usize>,
        /// Migrate the first N tenants first and stop there if any of them fails.
        #[arg(long, value_name = "N")]
        canary: Option<usize>,
        /// Only this tenant (slug, schema or organization id).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Every tenant's version, and which are behind.
    Status,
    /// What `migrate tenants` would apply, per tenant.
    DryRun {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Accept the current checksums of applied files that were edited on purpose.
    Repair,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration: {text}"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("invalid duration unit in {text}: use s, m, h or d")),
    };
    Ok(Duration::from_secs(number * seconds))
}

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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGTENANT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
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
            let token = pgtenant::dev::mint_token_for(&client, &config, &email, ttl, admin).await?;
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

async fn cluster_action(config: &Config, action: ClusterAction) -> Result<()> {
    use pgtenant::clusters::{self, ops};
    let admin = connect_admin(config).await?;
    let set = clusters::load_with(&admin, config).await?;
    match action {
        ClusterAction::List => {
            let facts = ops::describe(&admin, &set, Duration::from_secs(5)).await?;
            println!(
                "{:<16} {:<8} {:<12} {:<32} {:<9} {:>7} {:>12} {:>10}  health",
                "name", "role", "primary", "address", "status", "tenants", "bytes", "lag_bytes"
            );
            for f in facts {
                let e = &f.entry;
                println!(
                    "{:<16} {:<8} {:<12} {:<32} {:<9} {:>7} {:>12} {:>10}  {}",
                    e.name(),
                    e.row.role.as_str(),
                    e.row
                        .primary_of
                        .as_ref()
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "-".into()),
                    e.address(),
                    e.row.status.as_str(),
                    f.tenants,
                    f.size_bytes
                        .map(|b| b.to_string())
                        .unwrap_or_else(|| "-".into()),
                    f.lag_bytes
                        .map(|b| b.to_string())
                        .unwrap_or_else(|| "-".into()),
                    f.error
                        .map(|e| format!("down: {e}"))
                        .unwrap_or_else(|| "ok".into()),
                );
            }
        }
        ClusterAction::Add {
            name,
            host,
            port,
            database,
            user,
            sslmode,
            sslrootcert,
            sslcert,
            sslkey,
            replica_of,
        } => {
            let request = ops::AddCluster {
                name,
                host,
                port,
                database,
                admin_user: user,
                sslmode,
                sslrootcert,
                sslcert,
                sslkey,
                replica_of,
            };
            let row = ops::add_cluster(&admin, config, &set, &request).await?;
            println!(
                "added cluster {} ({}{})",
                row.name,
                row.role.as_str(),
                row.primary_of
                    .map(|p| format!(" of {p}"))
                    .unwrap_or_default()
            );
        }
        ClusterAction::Guards { name } => {
            let entry = set.get(&pgtenant::names::ClusterName::new(name))?;
            let applied = clusters::guards::apply(&entry, config).await?;
            println!(
                "cluster {}: cluster migrations applied: {applied:?}",
                entry.name()
            );
        }
    }
    Ok(())
}

async fn migrate(config: &Config, target: MigrateTarget) -> Result<()> {
    use pgtenant::fanout::progress::Bar;
    use pgtenant::fanout::{FanOutOptions, TenantMigrator};
    match target {
        MigrateTarget::Shared => {
            let mut admin = connect_admin(config).await?;
            let applied =
                pgtenant::migrate::apply_shared(&mut admin, &config.tenancy.shared_migrations_dir)
                    .await?;
            println!("shared migrations applied: {applied:?}");
        }
        MigrateTarget::Tenants {
            concurrency,
            stop_after_failures,
            canary,
            tenant,
        } => {
            let concurrency = concurrency.unwrap_or(config.migrations.concurrency);
            let migrator = TenantMigrator::new(config, concurrency)?;
            let options = FanOutOptions {
                concurrency,
                stop_after_failures,
                canary,
                only: tenant,
            };
            let report = migrator.run(&options, &Bar::new()).await?;
            println!("{report}");
            for (slug, failure) in &report.failed {
                println!("FAILED {slug}: {failure}");
            }
            for slug in &report.busy {
                println!("BUSY {slug}: another migrator holds its lock");
            }
            for (slug, cluster) in &report.pending {
                println!("PENDING {slug}: cluster {cluster} is down; the next run migrates it");
            }
            if !report.ok() {
                bail!("not every tenant was migrated");
            }
        }
        MigrateTarget::Status => {
            let migrator = TenantMigrator::new(config, 1)?;
            let latest = migrator.latest();
            let rows = migrator.status(None).await?;
            println!(
                "{:<30} {:<24} {:<10} {:>7}  {:<12} pending",
                "tenant", "schema", "status", "version", "cluster"
            );
            let mut behind = 0;
            for row in &rows {
                if !row.pending.is_empty() {
                    behind += 1;
                }
                let version = row
                    .version
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into());
                let pending = match &row.cluster_down {
                    None => format!("{:?}", row.pending),
                    Some(e) => format!("unknown: cluster down ({e})"),
                };
                println!(
                    "{:<30} {:<24} {:<10} {:>7}  {:<12} {pending}",
                    row.slug, row.schema, row.status, version, row.cluster
                );
            }
            let latest = latest.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
            println!(
                "{} tenants, latest version {latest}, {behind} behind",
                rows.len()
            );
        }
        MigrateTarget::DryRun { tenant } => {
            let migrator = TenantMigrator::new(config, 1)?;
            let plan = migrator.dry_run(tenant.as_deref()).await?;
            for (tenant, files) in &plan {
                let names: Vec<String> = files
                    .iter()
                    .map(|m| format!("V{}__{}", m.version, m.name))
                    .collect();
                println!(
                    "{} ({}): {}",
                    tenant.tenant.slug,
                    tenant.tenant.schema,
                    names.join(", ")
                );
            }
            println!("{} tenants would be migrated", plan.len());
        }
        MigrateTarget::Repair => {
            let migrator = TenantMigrator::new(config, 1)?;
            let changed = migrator.repair().await?;
            let mut admin = connect_admin(config).await?;
            let shared =
                pgtenant::migrate::repair_shared(&mut admin, &config.tenancy.shared_migrations_dir)
                    .await?;
            println!("accepted new checksums: {changed} tenant history rows, {shared} shared history rows");
        }
    }
    Ok(())
}

/// A mover whose progress lines go to stdout, as they happen.
fn mover<'a>(
    admin: &'a tokio_postgres::Client,
    clusters: &'a pgtenant::clusters::ClusterSet,
    config: &'a Config,
) -> pgtenant::moves::Mover<'a> {
    fn say(line: &str) {
        println!("{line}");
    }
    pgtenant::moves::Mover {
        directory: admin,
        clusters,
        config,
        progress: &say,
    }
}

fn print_move(report: &pgtenant::moves::MoveReport) {
    for line in &report.lines {
        println!("{line}");
    }
    println!(
        "tenant {}: {} (from {} to {})",
        report.slug,
        report.outcome(),
        report.source,
        report.target
    );
}

async fn tenant_action(config: &Config, action: TenantAction) -> Result<()> {
    use pgtenant::tenancy::ops;
    let mut admin = connect_admin(config).await?;
    let clusters = pgtenant::clusters::load_with(&admin, config).await?;
    match action {
        TenantAction::List => {
            println!(
                "{:<30} {:<20} {:<10} {:>7} {:>12}  cluster",
                "slug", "schema", "status", "version", "bytes"
            );
            for l in ops::list_tenants(&admin, &clusters).await? {
                let version = l
                    .version
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into());
                let bytes = l
                    .size_bytes
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:<30} {:<20} {:<10} {:>7} {:>12}  {}",
                    l.tenant.slug,
                    l.tenant.schema,
                    l.tenant.status,
                    version,
                    bytes,
                    l.tenant.cluster
                );
            }
        }
        TenantAction::Suspend { tenant } => {
            let t = ops::suspend(&mut admin, &tenant).await?;
            println!("suspended {}", t.slug);
        }
        TenantAction::Resume { tenant } => {
            let t = ops::resume(&mut admin, &clusters, &tenant).await?;
            println!("resumed {}", t.slug);
        }
        TenantAction::Drop { tenant, confirm } => match confirm {
            None => {
                let t = ops::archive(&mut admin, &clusters, &tenant).await?;
                println!(
                    "archived {} (data kept; drop for good with --confirm {})",
                    t.slug, t.slug
                );
            }
            Some(word) => {
                let t = ops::drop_tenant(&mut admin, &clusters, &tenant, &word).await?;
                println!("dropped {} (schema {}, role {})", t.slug, t.schema, t.role);
            }
        },
        TenantAction::Limits => {
            use pgtenant::limits::Limit;
            let defaults = &config.limits;
            print!("{:<30}", "tenant");
            for limit in Limit::ALL {
                print!(" {:<38}", limit.setting_name());
            }
            println!();
            for (tenant, own) in pgtenant::tenancy::limits::list_limits(&admin).await? {
                print!("{:<30}", tenant.slug);
                for limit in Limit::ALL {
                    let shown = pgtenant::tenancy::limits::describe(
                        own.get(limit),
                        defaults.default_of(limit),
                    );
                    print!(" {shown:<38}");
                }
                println!();
            }
        }
        TenantAction::Set {
            tenant,
            setting,
            value,
        } => {
            let limit = limit_named(&setting)?;
            let ms = pgtenant::limits::parse_ms(&value).map_err(anyhow::Error::msg)?;
            let t = pgtenant::tenancy::limits::set_limits(&admin, &tenant, &[(limit, Some(ms))])
                .await?;
            println!(
                "{}: {} = {} for its new sessions",
                t.slug,
                limit.setting_name(),
                pgtenant::limits::format_ms(ms)
            );
        }
        TenantAction::Reset { tenant, setting } => {
            use pgtenant::limits::Limit;
            let changes: Vec<(Limit, Option<u32>)> = if setting.eq_ignore_ascii_case("all") {
                Limit::ALL.iter().map(|l| (*l, None)).collect()
            } else {
                vec![(limit_named(&setting)?, None)]
            };
            let t = pgtenant::tenancy::limits::set_limits(&admin, &tenant, &changes).await?;
            println!(
                "{}: {setting} back to the default for its new sessions",
                t.slug
            );
        }
        TenantAction::Move {
            tenant,
            cluster,
            dry_run,
            offline,
            pause_timeout_ms,
        } => {
            let options = pgtenant::moves::MoveOptions {
                dry_run,
                offline,
                pause_timeout: std::time::Duration::from_millis(pause_timeout_ms),
                ..Default::default()
            };
            let report = mover(&admin, &clusters, config)
                .run(
                    &tenant,
                    &pgtenant::names::ClusterName::new(cluster),
                    &options,
                )
                .await?;
            print_move(&report);
        }
        TenantAction::CancelMove { tenant } => {
            print_move(&mover(&admin, &clusters, config).cancel(&tenant).await?);
        }
        TenantAction::FinishMove { tenant } => {
            print_move(&mover(&admin, &clusters, config).finish(&tenant).await?);
        }
        TenantAction::Moves => {
            println!(
                "{:<30} {:<12} {:<12} {:<12} {:<24} {:>8}  note",
                "tenant", "source", "target", "state", "updated", "pause_ms"
            );
            for m in pgtenant::moves::list_moves(&admin).await? {
                println!(
                    "{:<30} {:<12} {:<12} {:<12} {:<24} {:>8}  {}",
                    m.slug,
                    m.source,
                    m.target,
                    m.state.as_str(),
                    m.updated_at,
                    m.pause_ms.map(|ms| ms.to_string()).unwrap_or_default(),
                    m.note.unwrap_or_default()
                );
            }
        }
        TenantAction::Check => {
            let results =
                ops::check_tenants_with(&admin, config, &clusters, config.migrations.concurrency)
                    .await?;
            let mut unhealthy = 0;
            for h in &results {
                match &h.error {
                    None => println!(
                        "{:<30} healthy ({} ms)",
                        h.tenant.slug,
                        h.elapsed.as_millis()
                    ),
                    Some(e) => {
                        unhealthy += 1;
                        println!("{:<30} UNHEALTHY: {e}", h.tenant.slug);
                    }
                }
            }
            if unhealthy > 0 {
                bail!("{unhealthy} of {} tenants unhealthy", results.len());
            }
        }
    }
    Ok(())
}

fn limit_named(name: &str) -> Result<pgtenant::limits::Limit> {
    pgtenant::limits::Limit::parse(name).with_context(|| {
        format!("unknown tenant setting {name:?}: statement_timeout, lock_timeout, idle_in_transaction_session_timeout or transaction_timeout")
    })
}

fn load(path: &std::path::Path) -> Result<Config> {
    Config::load(path).with_context(|| format!("loading {}", path.display()))
}

async fn revoke(
    client: &tokio_postgres::Client,
    jti: Option<String>,
    user: Option<String>,
    sessions: bool,
) -> Result<()> {
    use pgtenant::tenancy::revoke::{revoke_token, revoke_user};
    let ended = if sessions { "; its sessions end" } else { "" };
    match (jti, user) {
        (Some(jti), _) => {
            revoke_token(client, &jti, sessions, "cli").await?;
            println!("token revoked on every pgtenant{ended}");
        }
        (None, Some(email)) => {
            let revoked = revoke_user(client, &email, sessions, "cli").await?;
            println!(
                "tokens of {email} issued until now revoked ({} memberships){ended}",
                revoked.len()
            );
        }
        (None, None) => bail!("give --jti or --user"),
    }
    Ok(())
}

async fn connect_admin(config: &Config) -> Result<tokio_postgres::Client> {
    pgtenant::dev::connect_admin(config)
        .await
        .context("connecting to the database as the admin role")
}

async fn serve(config: Config, path: PathBuf) -> Result<()> {
    if config.auth.hs_secret.is_none()
        && config.auth.public_key_files.is_empty()
        && !config.auth.uses_jwks()
    {
        bail!("no token keys configured: set auth.hs_secret (or PGTENANT_JWT_SECRET), auth.public_key_files, auth.jwks_url, auth.jwks_file or auth.discover");
    }
    let listener = pgtenant::server::bind(&config).await?;
    let shutdown = CancellationToken::new();
    let proxy = Proxy::from_config_file(config, path, shutdown.clone())?;
    tokio::spawn(stop_on_signal(shutdown));
    tokio::spawn(reload_on_sighup(proxy.clone()));
    pgtenant::server::run(listener, proxy).await;
    Ok(())
}

async fn reload_on_sighup(proxy: std::sync::Arc<Proxy>) {
    let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        return;
    };
    while hangup.recv().await.is_some() {
        match proxy.reload() {
            Ok(needs_restart) if needs_restart.is_empty() => {
                tracing::info!("SIGHUP: configuration reloaded")
            }
            Ok(needs_restart) => tracing::warn!(
                ?needs_restart,
                "SIGHUP: reloaded; some changes need a restart"
            ),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: reload failed; the running configuration stays")
            }
        }
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    pgtenant::dev::wait_for_stop_signal().await;
    tracing::info!("stop signal received");
    shutdown.cancel();
}
