//! The command line's definitions (clap): the global options, the commands and their subcommands, and the
//! parsers of a duration and an sslmode.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "pgtenant",
    version,
    about = "PostgreSQL proxy that gives every tenant its own schema, role and pool"
)]
pub(crate) struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "PGTENANT_CONFIG",
        default_value = "config/pgtenant.toml"
    )]
    pub(crate) config: PathBuf,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
pub(crate) enum ClusterAction {
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
pub(crate) enum TokenAction {
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
pub(crate) enum UserAction {
    /// Refuse the user's logins and end its sessions on every pgtenant.
    Disable { email: String },
    /// Let a disabled user log in again.
    Enable { email: String },
}

#[derive(Subcommand)]
pub(crate) enum TenantAction {
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
pub(crate) enum MigrateTarget {
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
