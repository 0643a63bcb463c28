//! `SHOW CONFIG` and `pgtenant config show`: every setting as (name, value), secrets shown as set or not set.

use super::Config;
use std::path::PathBuf;

impl Config {
    /// Every setting as (key, value) text, secrets shown only as set or not set.
    pub fn describe(&self) -> Vec<(String, String)> {
        let secret = |s: &Option<crate::secret::Secret>| {
            if s.is_some() { "(set)" } else { "(not set)" }.to_string()
        };
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        let (s, u, p, a, t, m) = (
            &self.server,
            &self.upstream,
            &self.pool,
            &self.auth,
            &self.tenancy,
            &self.migrations,
        );
        vec![
            ("server.listen".into(), s.listen.to_string()),
            ("server.tls_cert".into(), path(&s.tls_cert)),
            ("server.tls_key".into(), path(&s.tls_key)),
            (
                "server.allow_plaintext_password".into(),
                s.allow_plaintext_password.to_string(),
            ),
            (
                "server.max_client_connections".into(),
                s.max_client_connections.to_string(),
            ),
            (
                "server.login_timeout_ms".into(),
                s.login_timeout_ms.to_string(),
            ),
            ("server.admin_database".into(), s.admin_database.clone()),
            (
                "server.shutdown_grace_secs".into(),
                s.shutdown_grace_secs.to_string(),
            ),
            (
                "server.metrics_listen".into(),
                s.metrics_listen.map(|a| a.to_string()).unwrap_or_default(),
            ),
            (
                "server.client_idle_timeout_secs".into(),
                s.client_idle_timeout_secs.to_string(),
            ),
            (
                "server.max_session_secs".into(),
                s.max_session_secs.to_string(),
            ),
            ("upstream.host".into(), u.host.clone()),
            ("upstream.port".into(), u.port.to_string()),
            ("upstream.database".into(), u.database.clone()),
            ("upstream.admin_user".into(), u.admin_user.clone()),
            ("upstream.admin_password".into(), secret(&u.admin_password)),
            ("upstream.server_secret".into(), secret(&u.server_secret)),
            (
                "upstream.connect_timeout_ms".into(),
                u.connect_timeout_ms.to_string(),
            ),
            ("upstream.sslmode".into(), u.sslmode.as_str().to_string()),
            ("upstream.sslrootcert".into(), path(&u.sslrootcert)),
            ("upstream.sslcert".into(), path(&u.sslcert)),
            ("upstream.sslkey".into(), path(&u.sslkey)),
            ("pool.mode".into(), p.mode.as_str().to_string()),
            ("pool.size_per_tenant".into(), p.size_per_tenant.to_string()),
            (
                "pool.max_server_connections".into(),
                p.max_server_connections.to_string(),
            ),
            (
                "pool.acquire_timeout_ms".into(),
                p.acquire_timeout_ms.to_string(),
            ),
            (
                "pool.idle_timeout_secs".into(),
                p.idle_timeout_secs.to_string(),
            ),
            (
                "pool.max_lifetime_secs".into(),
                p.max_lifetime_secs.to_string(),
            ),
            ("auth.algorithms".into(), a.algorithms.join(",")),
            ("auth.hs_secret".into(), secret(&a.hs_secret)),
            (
                "auth.public_key_files".into(),
                a.public_key_files
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            (
                "auth.identity_claim".into(),
                a.identity_claim.claim_name().to_string(),
            ),
            (
                "auth.audience".into(),
                a.audience.clone().unwrap_or_default(),
            ),
            ("auth.issuer".into(), a.issuer.clone().unwrap_or_default()),
            ("auth.max_token_bytes".into(), a.max_token_bytes.to_string()),
            ("auth.leeway_secs".into(), a.leeway_secs.to_string()),
            ("auth.admin_claim".into(), a.admin_claim.clone()),
            (
                "auth.user_claim".into(),
                a.user_claim
                    .clone()
                    .unwrap_or_else(|| a.identity_claim.claim_name().to_string()),
            ),
            (
                "auth.org_claim".into(),
                a.org_claim.clone().unwrap_or_default(),
            ),
            ("auth.jwks_url".into(), a.jwks_url.join(",")),
            (
                "auth.jwks_file".into(),
                a.jwks_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ),
            ("auth.discover".into(), a.discover.to_string()),
            (
                "auth.jwks_refresh_secs".into(),
                a.jwks_refresh_secs.to_string(),
            ),
            (
                "auth.jwks_refetch_interval_secs".into(),
                a.jwks_refetch_interval_secs.to_string(),
            ),
            ("auth.jwks_stale_secs".into(), a.jwks_stale_secs.to_string()),
            (
                "auth.jwks_connect_timeout_ms".into(),
                a.jwks_connect_timeout_ms.to_string(),
            ),
            ("auth.jwks_timeout_ms".into(), a.jwks_timeout_ms.to_string()),
            (
                "auth.jwks_login_wait_ms".into(),
                a.jwks_login_wait_ms.to_string(),
            ),
            (
                "auth.jwks_file_check_ms".into(),
                a.jwks_file_check_ms.to_string(),
            ),
            ("auth.jwks_allow_http".into(), a.jwks_allow_http.to_string()),
            (
                "auth.jwks_allow_link_local".into(),
                a.jwks_allow_link_local.to_string(),
            ),
            (
                "auth.session_expiry".into(),
                a.session_expiry.as_str().to_string(),
            ),
            (
                "auth.revocation_refresh_secs".into(),
                a.revocation_refresh_secs.to_string(),
            ),
            (
                "login.failures_burst_per_address".into(),
                self.login.failures_burst_per_address.to_string(),
            ),
            (
                "login.failures_per_sec_per_address".into(),
                self.login.failures_per_sec_per_address.to_string(),
            ),
            (
                "login.failures_burst_per_identity".into(),
                self.login.failures_burst_per_identity.to_string(),
            ),
            (
                "login.failures_per_sec_per_identity".into(),
                self.login.failures_per_sec_per_identity.to_string(),
            ),
            (
                "login.tenant_logins_per_sec".into(),
                self.login.tenant_logins_per_sec.to_string(),
            ),
            (
                "login.tenant_logins_burst".into(),
                self.login.tenant_logins_burst.to_string(),
            ),
            (
                "login.max_buckets".into(),
                self.login.max_buckets.to_string(),
            ),
            (
                "login.recent_refusals".into(),
                self.login.recent_refusals.to_string(),
            ),
            (
                "tenancy.schema_name_format".into(),
                format!("{:?}", t.schema_name_format),
            ),
            (
                "tenancy.allow_tenant_ddl".into(),
                t.allow_tenant_ddl.to_string(),
            ),
            (
                "tenancy.tenant_migrations_dir".into(),
                t.tenant_migrations_dir.display().to_string(),
            ),
            (
                "tenancy.shared_migrations_dir".into(),
                t.shared_migrations_dir.display().to_string(),
            ),
            (
                "tenancy.directory_cache_ttl_ms".into(),
                t.directory_cache_ttl_ms.to_string(),
            ),
            ("tenancy.admin_user_sql".into(), t.admin_user_sql.clone()),
            (
                "tenancy.virtual_schema".into(),
                t.virtual_schema.clone().unwrap_or_default(),
            ),
            (
                "tenancy.cluster_migrations_dir".into(),
                t.cluster_migrations_dir.display().to_string(),
            ),
            ("tenancy.placement".into(), t.placement.as_str().to_string()),
            (
                "replicas.max_replica_lag_ms".into(),
                self.replicas.max_replica_lag_ms.to_string(),
            ),
            (
                "replicas.check_interval_ms".into(),
                self.replicas.check_interval_ms.to_string(),
            ),
            (
                "replicas.database_suffix".into(),
                self.replicas.database_suffix.clone(),
            ),
            (
                "replicas.database_suffix_target".into(),
                self.replicas.database_suffix_target.as_str().to_string(),
            ),
            ("migrations.concurrency".into(), m.concurrency.to_string()),
            (
                "health.ready_cache_ms".into(),
                self.health.ready_cache_ms.to_string(),
            ),
            (
                "health.tenants_cache_ms".into(),
                self.health.tenants_cache_ms.to_string(),
            ),
            (
                "health.tenants_concurrency".into(),
                self.health.tenants_concurrency.to_string(),
            ),
            (
                "health.check_timeout_ms".into(),
                self.health.check_timeout_ms.to_string(),
            ),
            (
                "migrations.lock_timeout_ms".into(),
                m.lock_timeout_ms.to_string(),
            ),
            (
                "limits.statement_timeout_ms".into(),
                self.limits.statement_timeout_ms.to_string(),
            ),
            (
                "limits.lock_timeout_ms".into(),
                self.limits.lock_timeout_ms.to_string(),
            ),
            (
                "limits.idle_in_transaction_timeout_ms".into(),
                self.limits.idle_in_transaction_timeout_ms.to_string(),
            ),
            (
                "limits.transaction_timeout_ms".into(),
                self.limits.transaction_timeout_ms.to_string(),
            ),
            (
                "limits.enforce_grace_ms".into(),
                self.limits.enforce_grace_ms.to_string(),
            ),
            (
                "limits.queue_notice_after_ms".into(),
                self.limits.queue_notice_after_ms.to_string(),
            ),
        ]
        .into_iter()
        .chain(self.clusters.iter().map(|(name, c)| {
            (
                format!("clusters.{name}.admin_password"),
                if c.admin_password.is_some() {
                    "(set)"
                } else {
                    "(not set)"
                }
                .to_string(),
            )
        }))
        .collect()
    }
}
