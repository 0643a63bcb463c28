//! The form of every admin command with what it does, for HELP and for the hints of a malformed command.

/// The forms of every command, for HELP and for hints.
pub const FORMS: &[(&str, &str)] = &[
    (
        "SHOW TENANTS",
        "every tenant: schema, status, migration version, size, clients, server connections",
    ),
    ("SHOW POOLS", "server connection pools per tenant"),
    ("SHOW CLIENTS", "client sessions of this pgtenant"),
    ("SHOW SERVERS", "server connections of this pgtenant"),
    (
        "SHOW MIGRATIONS [tenant]",
        "migration version of every tenant, or one tenant's history",
    ),
    ("SHOW STATS", "per tenant: transactions and queries per second, latency percentiles, bytes, errors, waits"),
    ("SHOW CONFIG", "the running configuration (secrets hidden)"),
    ("SHOW VERSION", "pgtenant's version"),
    (
        "SHOW LIMITS",
        "every tenant's statement_timeout, lock_timeout, idle_in_transaction_session_timeout, transaction_timeout",
    ),
    (
        "SHOW LOGINS",
        "recent refused logins of this pgtenant: time, reason, SQLSTATE, address, user, tenant, jti, kid",
    ),
    (
        "REVOKE TOKEN 'jti' [SESSIONS]",
        "refuse one token on every pgtenant; SESSIONS also ends the sessions it opened",
    ),
    (
        "REVOKE USER 'email' [SESSIONS]",
        "refuse every token of a user issued until now; SESSIONS also ends its sessions",
    ),
    (
        "DISABLE USER 'email'",
        "refuse a user's logins and end its sessions on every pgtenant",
    ),
    ("ENABLE USER 'email'", "let a disabled user log in again"),
    (
        "CREATE TENANT 'name' ADMIN 'email' [NO DDL] [ON CLUSTER c]",
        "onboard a tenant: organization, role, schema, migrations, admin user (on a cluster, or by tenancy.placement)",
    ),
    (
        "SHOW CLUSTERS",
        "every cluster: role, address, status, tenants, server connections, size, replica lag",
    ),
    (
        "ADD CLUSTER name HOST 'h' [PORT n] [DATABASE 'd'] [USER 'u'] [SSLMODE m] [SSLROOTCERT 'f'] [SSLCERT 'f' SSLKEY 'f'] [REPLICA OF primary]",
        "check a cluster (a primary gets its guards) and record it; its password comes from [clusters.name]",
    ),
    (
        "MIGRATE TENANTS [DRY RUN]",
        "apply pending tenant migrations to every tenant",
    ),
    (
        "MIGRATE TENANT x [DRY RUN]",
        "apply pending tenant migrations to one tenant",
    ),
    (
        "SUSPEND TENANT x",
        "refuse new logins of a tenant and end its sessions",
    ),
    (
        "RESUME TENANT x",
        "let a suspended or archived tenant log in again",
    ),
    (
        "DROP TENANT x",
        "archive a tenant: logins refused, data kept",
    ),
    (
        "DROP TENANT x CONFIRM 'x'",
        "drop a tenant's schema, role, users and history for good",
    ),
    (
        "CHECK TENANTS",
        "log in as every tenant's role and report its health",
    ),
    (
        "MOVE TENANT x TO cluster [OFFLINE] [DRY RUN]",
        "move a tenant to another cluster while it is served (or resume its move); OFFLINE copies with COPY while the tenant waits; DRY RUN only checks",
    ),
    (
        "CANCEL MOVE x",
        "before its switch, stop a tenant's move and drop what the target got",
    ),
    (
        "FINISH MOVE x",
        "after its switch, drop the tenant's copy on the cluster it left",
    ),
    ("SHOW MOVES", "every tenant move: clusters, state, pause, last error"),
    (
        "ALTER TENANT x SET setting = 'value'",
        "a tenant's statement_timeout, lock_timeout, idle_in_transaction_session_timeout or transaction_timeout ('5s', 0: off) for its new sessions",
    ),
    (
        "ALTER TENANT x RESET setting | ALL",
        "back to the [limits] default",
    ),
    ("RELOAD", "re-read the configuration file"),
    ("HELP", "this list"),
];
