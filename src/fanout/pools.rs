//! The migrator's admin connections: one pool per cluster (the default cluster's is the directory's, the
//! others made at first use), a connection that fails as soon as its cluster is found down, and the probe
//! that tells a down cluster from a failing tenant.

use super::{AdminPool, ClusterPool, PooledAdmin, TenantMigrator};
use crate::clusters::ClusterSet;
use crate::migrate::MigrateError;
use crate::names::ClusterName;
use crate::upstream_tls::UpstreamTls;
use bb8_postgres::PostgresConnectionManager;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres_rustls::MakeRustlsConnect;

pub(super) fn admin_pool(
    config: tokio_postgres::Config,
    tls: &UpstreamTls,
    concurrency: usize,
    connect_errors: &crate::pg_connect_errors::ConnectErrors,
    connection_timeout: Duration,
) -> AdminPool {
    let manager = PostgresConnectionManager::new(config, tls.postgres());
    bb8::Pool::builder()
        .max_size(concurrency.max(1) as u32 + 2)
        .connection_timeout(connection_timeout)
        .test_on_check_out(false)
        .error_sink(connect_errors.sink())
        .build_unchecked(manager)
}

impl TenantMigrator {
    /// The directory's clusters.
    pub(super) async fn clusters(&self) -> Result<&ClusterSet, MigrateError> {
        self.inner
            .clusters
            .get_or_try_init(|| async {
                let admin = self.admin().await?;
                ClusterSet::load(&*admin, &self.inner.config, &self.inner.default_tls)
                    .await
                    .map_err(|e| MigrateError::AdminPool(e.to_string()))
            })
            .await
    }

    /// The migrator's pool on a cluster other than the default one.
    pub(super) async fn cluster_pool(
        &self,
        name: &ClusterName,
    ) -> Result<Arc<ClusterPool>, MigrateError> {
        if let Some(pool) = self
            .inner
            .cluster_pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(pool.clone());
        }
        let entry = self
            .clusters()
            .await?
            .get(name)
            .map_err(|e| MigrateError::AdminPool(e.to_string()))?;
        let tls = entry
            .tls()
            .map_err(|e| MigrateError::AdminPool(e.to_string()))?;
        let connect_errors = crate::pg_connect_errors::ConnectErrors::new("migrations");
        let admin = admin_pool(
            entry.upstream.admin_pg_config(),
            tls,
            self.inner.concurrency,
            &connect_errors,
            entry.upstream.connect_timeout() * 2,
        );
        let pool = Arc::new(ClusterPool {
            entry,
            admin,
            connect_errors,
        });
        self.inner
            .cluster_pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), pool.clone());
        Ok(pool)
    }

    /// An admin connection to `cluster` (the default one: the directory's pool). Fails as soon as the
    /// pool's attempt to connect fails (the cluster is down), not after the pool's timeout.
    pub(super) async fn cluster_admin(
        &self,
        cluster: &ClusterName,
    ) -> Result<PooledAdmin<'static>, MigrateError> {
        let (pool, errors) = if cluster.is_default() {
            (self.inner.admin.clone(), self.inner.connect_errors.clone())
        } else {
            let p = self.cluster_pool(cluster).await?;
            (p.admin.clone(), p.connect_errors.clone())
        };
        let failed = errors.failed();
        let failed = failed.notified();
        tokio::pin!(failed);
        failed.as_mut().enable();
        tokio::select! {
            conn = pool.get_owned() => conn.map_err(|e| MigrateError::AdminPool(errors.explain(e))),
            () = &mut failed => Err(MigrateError::AdminPool(
                errors.last().unwrap_or_else(|| format!("cannot connect to cluster {cluster}")),
            )),
        }
    }

    /// Whether `cluster` accepts a new admin connection now (asked after a tenant failed with a connection
    /// error): `Err` says why not.
    pub(super) async fn probe(&self, cluster: &ClusterName) -> Result<(), String> {
        let entry = self
            .clusters()
            .await
            .map_err(|e| e.to_string())?
            .get(cluster)
            .map_err(|e| e.to_string())?;
        let limit = entry.upstream.connect_timeout();
        match tokio::time::timeout(limit, entry.connect_admin()).await {
            Ok(Ok(client)) => client
                .simple_query("SELECT 1")
                .await
                .map(|_| ())
                .map_err(|e| crate::upstream_tls::error_chain(&e)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no connection within {} ms", limit.as_millis())),
        }
    }

    pub(super) async fn admin(
        &self,
    ) -> Result<bb8::PooledConnection<'_, PostgresConnectionManager<MakeRustlsConnect>>, MigrateError>
    {
        self.inner
            .admin
            .get()
            .await
            .map_err(|e| MigrateError::AdminPool(self.inner.connect_errors.explain(e)))
    }
}
