//! The proxy's live copy of the directory's clusters: read at start, read again when the directory announces
//! `clusters changed` (the trigger of shared migration V011 fires on every change to `pgtenant.clusters`,
//! whoever made it) and every [`RELOAD_EVERY`] as a safety net for an announcement missed while the
//! listener reconnected. A login for a tenant on a cluster this copy does not know reads it again first.
//!
//! Entries whose row did not change are kept as they were (the same `Arc`), so the pools opened on them stay.

use super::{ClusterEntry, ClusterError, ClusterName, ClusterSet};
use crate::config::Config;
use crate::directory::Directory;
use crate::upstream_tls::UpstreamTls;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How often the clusters are read again without an announcement.
pub const RELOAD_EVERY: Duration = Duration::from_secs(30);

pub struct Clusters {
    current: RwLock<Arc<ClusterSet>>,
    /// The TLS settings `[upstream]` had at start (the default cluster keeps them until a restart).
    default_tls: UpstreamTls,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

impl Clusters {
    pub fn new(config: &Config, default_tls: UpstreamTls) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(Arc::new(ClusterSet::default_only(config, &default_tls))),
            default_tls,
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// The clusters as last read.
    pub fn current(&self) -> Arc<ClusterSet> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The TLS settings of the default cluster.
    pub fn default_tls(&self) -> &UpstreamTls {
        &self.default_tls
    }

    /// Reads the clusters from the directory again.
    pub async fn reload(&self, directory: &Directory, config: &Config) -> Result<(), ClusterError> {
        let _one = self.reloading.lock().await;
        let admin = directory.admin().await.map_err(|e| ClusterError::Connect {
            cluster: super::DEFAULT_CLUSTER.into(),
            reason: e.to_string(),
        })?;
        let fresh = ClusterSet::load(&*admin, config, &self.default_tls).await?;
        drop(admin);
        let old = self.current();
        let fresh = fresh.keeping_unchanged(&old);
        let names: Vec<String> = fresh.iter().map(|e| e.name().to_string()).collect();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        tracing::debug!(clusters = ?names, "clusters read from the directory");
        Ok(())
    }

    /// The cluster `name`; when this copy does not know it, the directory is read again first.
    pub async fn entry(
        &self,
        name: &ClusterName,
        directory: &Directory,
        config: &Config,
    ) -> Result<Arc<ClusterEntry>, ClusterError> {
        if let Ok(entry) = self.current().get(name) {
            return Ok(entry);
        }
        self.reload(directory, config).await?;
        self.current().get(name)
    }
}
