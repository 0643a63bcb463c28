//! pgtenant: a PostgreSQL wire-protocol proxy that gives every tenant of a SaaS application its own schema,
//! its own PostgreSQL role and its own pool, and makes that isolation invisible to the application.
//!
//! Modules, in the order a client connection flows through them. No two import each other, directly or
//! through others (`tests/house_rules.rs` checks it): what several need sits below them all, e.g. [`names`]
//! (role, schema and cluster names, SQL quoting), [`error`], [`units`], [`config`].
//!
//! - [`config`]: the TOML configuration, environment overrides for secrets, validation; `config::live`, the one
//!   live snapshot that sessions, pool and directory read (RELOAD replaces it).
//! - [`server`]: the listener; accepts TCP, answers SSLRequest / GSSENCRequest, hands cancel requests to
//!   [`cancel`] and login attempts to [`session`].
//! - [`tls`]: rustls server configuration for clients.
//! - [`error`]: what a client may be told about a failure: the SQLSTATEs by name, `PgError` and
//!   `UserFacing`, the one way from an error type to an ErrorResponse; [`refusal`]: pgtenant's own refusals
//!   and session endings by name; [`user_facing`]: the allowlist, what each error type that may reach a
//!   client (refusals included) tells it.
//! - [`names`]: the names every part passes around (role, schema, cluster) and SQL quoting; [`secret`]: a
//!   secret of the configuration, which never prints.
//! - [`protocol`]: the one place that knows the wire format: frame headers, startup packets, message tags, and
//!   the backend messages pgtenant writes itself (ErrorResponse with SQLSTATE, authentication, ReadyForQuery).
//! - [`auth`]: JWT verification of the password a client sends (algorithm allowlist, keys, claims, size limit),
//!   and the identity provider's key sets (JWKS), fetched and refreshed in the background.
//! - [`login_guard`]: what a login passes besides the token and the directory: failed-login limits, the
//!   revocation list, the per-tenant login rate; and the audit line of every attempt (the parts live in `auth`:
//!   `limiter`, `revocation`, `audit`).
//! - [`directory`]: identity → user → organization → tenant (schema, role, status), cached with a short TTL,
//!   read from the shared schema; `events`: the announcements of directory changes every pgtenant listens to.
//! - [`credentials`]: tenant role passwords derived from the server secret, their SCRAM verifiers, and the
//!   check that this pgtenant's server secret is the one they were made with.
//! - [`clusters`]: the PostgreSQL clusters tenants are placed on (`pgtenant.clusters`), their read
//!   replicas and how far behind those are, placement of new tenants, which cluster a session goes to.
//! - [`pool`]: one pool per tenant role and cluster of raw upstream protocol connections logged in as that
//!   role, with a global cap and eviction of other tenants' idle connections; PAUSE / RESUME in `pauses`,
//!   the NOTICE of a queued client in `queue`, where a moved tenant's pools are now in `routes`.
//! - [`upstream`]: a raw upstream connection: startup, SCRAM-SHA-256 login, reset before reuse; `statements`:
//!   the prepared statements pgtenant keeps on it in transaction pooling.
//! - [`upstream_tls`]: TLS to PostgreSQL (`upstream.sslmode`, libpq's meaning): the rustls client
//!   configuration, SSLRequest negotiation, the plain-or-TLS upstream stream, the tokio-postgres connector.
//! - [`proxy`]: the state all sessions share (reloadable configuration, verifier, directory, pools).
//! - [`session`]: one client connection from its first byte to its end, a file per stage: `handshake`
//!   (first packet, TLS), `login` (token, directory, limits, pool, first server connection), `settings`
//!   (startup parameters as session settings), then the relay and the check-in (`mod.rs`).
//! - [`sessions`]: the registry of running sessions (admin views, ending the sessions of a suspended tenant, a
//!   disabled user or a revoked token), each with its end signal (`signal`: kicked, or drained at shutdown).
//! - [`lifetime`]: a session's deadline (its token's expiry, `server.max_session_secs`), met at an idle point.
//! - [`limits`]: per-tenant statement_timeout, lock_timeout, idle_in_transaction_session_timeout and
//!   transaction_timeout (directory columns, `[limits]` defaults): PostgreSQL's settings on each server
//!   connection; [`limit_watch`]: pgtenant's own timers in both relays as a ceiling.
//! - [`admin`]: the admin channel, served by pgtenant itself in the PostgreSQL protocol (psql works).
//! - [`txn`]: transaction pooling: a server connection per transaction (`mod.rs`: the event loop, checkout
//!   and release; `turn`: one poll over the client stream, the held connection and the session's signals),
//!   `client` (client messages, prepared statements that follow the client; `inject`: what pgtenant writes
//!   into the server stream for them), `server` (server messages matched to requests, `expect`,
//!   `spare_queues`), `frames`, `sync` (settings synchronised on each checkout); [`spare_buffers`]: client
//!   buffers passed from one transaction (or login) to the next on a thread.
//! - [`sql`]: a lexer for SQL text (literals, quoted names, comments told from identifiers) and the virtual
//!   schema rewrite (`public` in a tenant's SQL means its own schema).
//! - [`relay`]: the byte-level relay of one client session to its upstream connection (session pooling): one
//!   state machine over both streams, client messages framed only to rewrite the virtual schema.
//! - [`scram`]: SCRAM-SHA-256, client side and stored verifiers.
//! - [`metrics`]: counters and latency histograms per tenant, for SHOW STATS and Prometheus.
//! - [`metrics_http`]: the small HTTP listener on `server.metrics_listen`: `/metrics`, `/health`,
//!   `/health/tenants`, `/live`.
//! - [`health`]: readiness (listener, directory, draining) and per-tenant login checks, cached and run one
//!   round at a time.
//! - [`cancel`]: the map from the BackendKeyData pgtenant issued to the upstream's own key.
//! - [`tenancy`]: onboarding (organization, role, schema, grants, migrations, admin user) and operations on
//!   existing tenants (status, limits, revocations); tokens for its users (`pgtenant token`, `pgtenant dev`).
//! - [`migrate`]: versioned SQL files of `shared-migrations/` and `tenant-migrations/`, checksums, applying
//!   the shared ones; [`fanout`]: `tenant-migrations/` over every tenant schema of every cluster (history,
//!   locks, failure isolation, resume, progress).
//! - [`moves`]: moving a tenant to another cluster while it is served (logical replication, a short switch),
//!   resumable and cancellable from the state kept in the directory.
//! - [`pg_connect_errors`]: the error sink of the tokio-postgres pools (directory, migrations): logs why a
//!   connection failed and keeps it, since bb8 itself only reports a timeout.
//! - the `pgcluster` crate (crates/pgcluster, not part of this library): finding PostgreSQL's binaries and running a
//!   throwaway cluster, for `pgtenant dev`, the tests and (pg_dump) tenant moves.
//! - [`dev`]: the `pgtenant dev` command.
//! - [`upstream_admin`]: a connection as the configured admin role (CLI commands, `pgtenant dev`, tests);
//!   [`stop_signal`]: SIGINT / SIGTERM for `serve` and `dev`.
//! - [`units`]: sizes as PostgreSQL prints them.
//! - [`log_line`]: plain log lines for a stderr that is not a terminal (the default format's text, written
//!   without colours or per-character escaping).

pub mod addr_text;
pub mod admin;
pub mod auth;
pub mod cancel;
pub mod client_socket;
pub mod clusters;
pub mod config;
pub mod credentials;
pub mod dev;
pub mod directory;
pub mod error;
pub mod fanout;
pub mod health;
pub mod lifetime;
pub mod limit_watch;
pub mod limits;
#[cfg(test)]
mod log_capture;
pub mod log_line;
pub mod login_guard;
pub mod metrics;
pub mod metrics_http;
pub mod migrate;
pub mod moves;
pub mod names;
pub mod pg_connect_errors;
pub mod pool;
pub mod protocol;
pub mod proxy;
pub mod refusal;
pub mod relay;
pub mod scram;
pub mod secret;
pub mod server;
pub mod session;
pub mod sessions;
pub mod spare_buffers;
pub mod sql;
pub mod stop_signal;
pub mod tenancy;
pub mod tls;
pub mod txn;
pub mod units;
pub mod upstream;
pub mod upstream_admin;
pub mod upstream_tls;
pub mod user_facing;
