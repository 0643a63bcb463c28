//! The state shared by every session of one pgtenant process: configuration (reloadable), token verifier,
//! directory, pools, cancel keys, running sessions, TLS, shutdown signal.

use crate::auth::revocation::Revocation;
use crate::auth::TokenVerifier;
use crate::cancel::CancelMap;
use crate::config::{Config, LiveConfig};
use crate::credentials::RolePasswords;
use crate::directory::events::DirectoryEvent;
use crate::directory::Directory;
use crate::error::UserFacing;
use crate::names::ClusterName;
use crate::names::RoleName;
use crate::pool::{PoolKey, PoolManager};
use crate::refusal::Refusal;
use crate::sessions::SessionRegistry;
use crate::upstream_tls::UpstreamTls;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthConfigError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsConfigError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    UpstreamTls(#[from] crate::upstream_tls::UpstreamTlsError),
    #[error("pgtenant was started without a config file: nothing to reload")]
    NoConfigFile,
}

/// What is built from the live configuration, rebuilt by [`Proxy::reload`].
struct Derived {
    verifier: TokenVerifier,
    tls: Option<TlsAcceptor>,
}

pub struct Proxy {
    /// The configuration everything reads (sessions, pool, directory, admin channel); RELOAD replaces it.
    config: Arc<LiveConfig>,
    derived: RwLock<Derived>,
    /// The file the configuration came from, for RELOAD.
    pub config_path: Option<PathBuf>,
    pub directory: Arc<Directory>,
    /// The clusters of the directory, with this pgtenant's secrets (reloaded on `clusters changed`).
    pub clusters: Arc<crate::clusters::registry::Clusters>,
    /// How far behind each replica is, as this pgtenant measures it.
    pub replicas: Arc<crate::clusters::replicas::ReplicaMonitor>,
    pub pools: Arc<PoolManager>,
    pub cancels: Arc<CancelMap>,
    pub sessions: Arc<SessionRegistry>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Failed-login and per-tenant login limits.
    pub limiter: crate::auth::limiter::LoginLimiter,
    /// Revoked tokens and users, kept in memory.
    pub revocations: crate::auth::revocation::RevocationList,
    /// Login counters by outcome and recent refusals.
    pub logins: crate::auth::audit::LoginAudit,
    /// Stop accepting; sessions end when they stand idle between transactions (`server::run` then drains
    /// every session through `sessions`, and kicks those left when the grace period runs out).
    pub shutdown: CancellationToken,
    pub started_at: std::time::SystemTime,
    /// The client listener is accepting (set by `server::run`).
    listening: std::sync::atomic::AtomicBool,
    /// Stops the key set fetcher of the live verifier (a child of `shutdown`; replaced on RELOAD).
    jwks_fetcher: Mutex<Option<CancellationToken>>,
}

/// Starts the key set fetcher of `verifier` (when it has key sets) on the current runtime; the token returned
/// stops it, and so does `shutdown`.
fn spawn_jwks_fetcher(
    verifier: &TokenVerifier,
    shutdown: &CancellationToken,
) -> Option<CancellationToken> {
    verifier.jwks()?;
    if tokio::runtime::Handle::try_current().is_err() {
        tracing::error!("no async runtime: key sets are not fetched");
        return None;
    }
    let stop = shutdown.child_token();
    verifier.spawn_jwks_fetcher(stop.clone());
    Some(stop)
}

fn tls_acceptor(config: &Config) -> Result<Option<TlsAcceptor>, ProxyError> {
    Ok(match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key)?),
        _ => None,
    })
}

impl Proxy {
    pub fn from_config(
        config: Config,
        shutdown: CancellationToken,
    ) -> Result<Arc<Proxy>, ProxyError> {
        Self::build(config, None, shutdown)
    }

    /// As [`Proxy::from_config`], remembering the file for RELOAD.
    pub fn from_config_file(
        config: Config,
        path: PathBuf,
        shutdown: CancellationToken,
    ) -> Result<Arc<Proxy>, ProxyError> {
        Self::build(config, Some(path), shutdown)
    }

    fn build(
        config: Config,
        config_path: Option<PathBuf>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Proxy>, ProxyError> {
        let verifier = TokenVerifier::new(&config.auth)?;
        let tls = tls_acceptor(&config)?;
        let upstream_tls = UpstreamTls::from_config(&config.upstream)?;
        let live = LiveConfig::new(config.clone());
        let directory =
            Directory::new(config.admin_pg_config(), upstream_tls.clone(), live.clone());
        let clusters = crate::clusters::registry::Clusters::new(&config, upstream_tls);
        let replicas = crate::clusters::replicas::ReplicaMonitor::new(Duration::from_millis(
            config.replicas.check_interval_ms,
        ));
        let pools = PoolManager::new(live.clone(), RolePasswords::new(config.server_secret()));
        let jwks_fetcher = Mutex::new(spawn_jwks_fetcher(&verifier, &shutdown));
        Ok(Arc::new(Proxy {
            config: live,
            derived: RwLock::new(Derived { verifier, tls }),
            jwks_fetcher,
            config_path,
            directory,
            clusters,
            replicas,
            pools,
            cancels: CancelMap::new(),
            sessions: SessionRegistry::new(),
            metrics: crate::metrics::Metrics::new(),
            limiter: Default::default(),
            revocations: Default::default(),
            logins: Default::default(),
            shutdown,
            started_at: std::time::SystemTime::now(),
            listening: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// Whether the client listener is accepting connections.
    pub fn is_listening(&self) -> bool {
        self.listening.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_listening(&self, up: bool) {
        self.listening
            .store(up, std::sync::atomic::Ordering::Relaxed);
    }

    /// The current configuration, to keep across awaits.
    pub fn config(&self) -> Arc<Config> {
        self.config.snapshot()
    }

    pub fn verifier(&self) -> TokenVerifier {
        self.derived
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .verifier
            .clone()
    }

    pub fn tls(&self) -> Option<TlsAcceptor> {
        self.derived
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .tls
            .clone()
    }

    /// Re-reads the config file: token keys and claims rules, TLS certificate, timeouts and limits read per
    /// session take effect for new sessions; running sessions are untouched. Returns the settings that differ
    /// but only take effect after a restart (listen address, upstream, pool sizes).
    pub fn reload(&self) -> Result<Vec<&'static str>, ProxyError> {
        let path = self.config_path.as_ref().ok_or(ProxyError::NoConfigFile)?;
        let config = Config::load(path)?;
        let verifier = TokenVerifier::new_replacing(&config.auth, &self.verifier())?;
        let tls = tls_acceptor(&config)?;
        let needs_restart = crate::config::live::restart_needed(&self.config.load(), &config);
        let fetcher = spawn_jwks_fetcher(&verifier, &self.shutdown);
        *self.derived.write().unwrap_or_else(|p| p.into_inner()) = Derived { verifier, tls };
        self.config.replace(config);
        let old = std::mem::replace(
            &mut *self.jwks_fetcher.lock().unwrap_or_else(|p| p.into_inner()),
            fetcher,
        );
        if let Some(old) = old {
            old.cancel();
        }
        // Lookups cached under the old configuration are not reused.
        self.directory.invalidate();
        tracing::info!(?needs_restart, "configuration reloaded");
        Ok(needs_restart)
    }

    /// Acts on a directory change announced by any pgtenant or CLI.
    pub fn on_directory_event(&self, event: DirectoryEvent) {
        match event {
            DirectoryEvent::Closed {
                tenant_id,
                role,
                why,
            } => {
                let reason = Refusal::TenantClosed { why: why.clone() }.to_fatal();
                let ended = self.sessions.end_tenant_sessions(tenant_id, &reason);
                self.pools.close_idle(Some(&RoleName::new(role)));
                tracing::info!(%tenant_id, %why, sessions_ended = ended, "tenant closed");
            }
            DirectoryEvent::Revoked(revocation) => self.on_revocation(&revocation),
            DirectoryEvent::RevocationsChanged => self.revocations.mark_stale(),
            DirectoryEvent::UserDisabled { user_id } => {
                let reason = Refusal::UserDisabledEnded.to_fatal();
                let ended = self
                    .sessions
                    .end_sessions_where(|s| s.user_id == user_id, &reason);
                tracing::info!(%user_id, sessions_ended = ended, "user disabled");
            }
            DirectoryEvent::ClustersChanged => self.spawn_clusters_reload(),
            DirectoryEvent::MovePause { role, lease_ms } => {
                tracing::info!(%role, lease_ms, "a tenant move holds the tenant's new transactions");
                self.pools
                    .pause_for(&RoleName::new(role), Duration::from_millis(lease_ms));
            }
            DirectoryEvent::MoveSwitched { role, from, to } => {
                self.spawn_move_switched(role, from, to)
            }
            DirectoryEvent::MoveResume { role } => {
                tracing::info!(%role, "a tenant move's switch was undone: the tenant's transactions go on");
                self.pools.resume(Some(&RoleName::new(role)));
            }
            DirectoryEvent::Changed => {}
        }
    }

    /// A tenant's move switched: its sessions take connections on the target from their next transaction
    /// on, then the held transactions go on (in that order, so none goes to the source).
    fn spawn_move_switched(&self, role: String, from: ClusterName, to: ClusterName) {
        let role = RoleName::new(role);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.pools.resume(Some(&role));
            return;
        };
        let (clusters, directory, config, pools) = (
            self.clusters.clone(),
            self.directory.clone(),
            self.config(),
            self.pools.clone(),
        );
        runtime.spawn(async move {
            match clusters
                .entry(&to, &directory, &config)
                .await
                .and_then(|entry| entry.target())
            {
                Ok(target) => pools.moved.record(
                    PoolKey::new(from.clone(), role.clone()),
                    PoolKey::new(to.clone(), role.clone()),
                    target,
                ),
                Err(e) => {
                    tracing::error!(%role, cluster = %to, error = %e, "a moved tenant's new cluster is not usable; its sessions will fail until they log in again")
                }
            }
            directory.invalidate();
            pools.close_idle(Some(&role));
            pools.resume(Some(&role));
            tracing::info!(%role, %from, %to, "tenant moved: its transactions go to the new cluster");
        });
    }

    /// Reads the clusters again, in the background.
    pub fn spawn_clusters_reload(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (clusters, directory, config) =
            (self.clusters.clone(), self.directory.clone(), self.config());
        runtime.spawn(async move {
            if let Err(e) = clusters.reload(&directory, &config).await {
                tracing::warn!(error = %e, "could not read the clusters from the directory");
            }
        });
    }

    /// Starts what keeps the clusters current: a first read, one every `RELOAD_EVERY`, and the replica
    /// lag measures. They stop with `shutdown`.
    pub fn spawn_cluster_tasks(self: &Arc<Self>) {
        let proxy = Arc::downgrade(self);
        let stop = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                match proxy.upgrade() {
                    Some(p) => p.spawn_clusters_reload(),
                    None => return,
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(crate::clusters::registry::RELOAD_EVERY) => {}
                }
            }
        });
        self.replicas
            .spawn(self.clusters.clone(), self.shutdown.clone());
    }

    /// The cluster `name` (read from the directory again if this pgtenant does not know it yet).
    pub async fn cluster(
        &self,
        name: &crate::names::ClusterName,
    ) -> Result<Arc<crate::clusters::ClusterEntry>, crate::clusters::ClusterError> {
        self.clusters
            .entry(name, &self.directory, &self.config())
            .await
    }

    /// Refuses a revoked token from now on and, when asked, ends the sessions it opened.
    fn on_revocation(&self, revocation: &Revocation) {
        self.revocations.apply(revocation);
        let reason = Refusal::TokenRevokedEnded.to_fatal();
        let ended = match revocation {
            Revocation::Token {
                jti,
                end_sessions: true,
            } => self
                .sessions
                .end_sessions_where(|s| s.jti.as_deref() == Some(jti.as_str()), &reason),
            Revocation::User {
                user_id,
                before,
                end_sessions: true,
            } => self.sessions.end_sessions_where(
                |s| s.user_id == *user_id && s.issued_at.is_none_or(|iat| iat < *before),
                &reason,
            ),
            _ => 0,
        };
        match revocation {
            Revocation::Token { jti, .. } => {
                tracing::info!(jti = ?crate::auth::audit::loggable(jti), sessions_ended = ended, "token revoked")
            }
            Revocation::User { user_id, .. } => {
                tracing::info!(%user_id, sessions_ended = ended, "tokens of a user revoked")
            }
        }
    }

    /// Starts the directory change listener; it stops with `shutdown`.
    pub fn spawn_directory_listener(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let proxy = Arc::downgrade(self);
        self.directory.spawn_listener(
            self.config().admin_pg_config(),
            self.shutdown.clone(),
            move |event| {
                if let Some(proxy) = proxy.upgrade() {
                    proxy.on_directory_event(event);
                }
            },
        )
    }
}
