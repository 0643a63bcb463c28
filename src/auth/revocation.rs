//! The revocation list: tokens revoked by `jti`, and users whose tokens issued before a time are revoked
//! (`pgtenant.revoked_tokens`, shared migration V009). Logins check it in memory.
//!
//! The whole table is loaded by the first login and re-read by a login once it is older than
//! `auth.revocation_refresh_secs`; in between, the announcements of the table's trigger on the directory channel
//! update it at once (so every pgtenant refuses a revoked token within moments), and a removal makes the next
//! login re-read it. Revocations announced while a load runs are applied again over its result, so none is
//! lost. If the table cannot be read, the last list keeps serving; with none yet, logins are refused.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// One revocation, as announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// The token with this `jti`.
    Token { jti: String, end_sessions: bool },
    /// Every token of the user whose `iat` is before `before` (Unix seconds), or that has no `iat`.
    User {
        user_id: Uuid,
        before: u64,
        end_sessions: bool,
    },
}

/// Why a token is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revoked {
    /// The token's own `jti` was revoked.
    Token,
    /// Every token of the user issued before a time was revoked, this one among them.
    User,
}

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("the revocation list cannot be read: {0}")]
    Unavailable(String),
    /// No connection to the directory database could be made (server down, TLS refused): why.
    #[error("the revocation list cannot be read: directory database unavailable: {0}")]
    Unreachable(String),
}

#[derive(Default)]
struct List {
    jtis: HashSet<String>,
    /// User id → tokens with `iat` below this (Unix seconds) are revoked.
    users: HashMap<Uuid, u64>,
    loaded_at: Option<Instant>,
    /// Set by an announced removal: the next login re-reads the table.
    stale: bool,
    /// Revocations announced since the running load started (applied again over its result).
    during_load: Option<Vec<Revocation>>,
}

impl List {
    fn apply(&mut self, revocation: &Revocation) {
        match revocation {
            Revocation::Token { jti, .. } => {
                self.jtis.insert(jti.clone());
            }
            Revocation::User {
                user_id, before, ..
            } => {
                let entry = self.users.entry(*user_id).or_insert(0);
                *entry = (*entry).max(*before);
            }
        }
    }
}

pub struct RevocationList {
    list: Mutex<List>,
    /// One load at a time; logins arriving meanwhile wait for it.
    loading: tokio::sync::Mutex<()>,
}

impl Default for RevocationList {
    fn default() -> Self {
        RevocationList {
            list: Mutex::new(List::default()),
            loading: tokio::sync::Mutex::new(()),
        }
    }
}

impl RevocationList {
    fn lock(&self) -> std::sync::MutexGuard<'_, List> {
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fresh(&self, refresh: Duration) -> bool {
        let list = self.lock();
        !list.stale && list.loaded_at.is_some_and(|at| at.elapsed() < refresh)
    }

    /// Makes sure the list was read from the table within `refresh` (reading it if not).
    pub async fn ensure_fresh(
        &self,
        refresh: Duration,
        client: impl AsyncLoad,
    ) -> Result<(), RevocationError> {
        if self.fresh(refresh) {
            return Ok(());
        }
        let _loading = self.loading.lock().await;
        if self.fresh(refresh) {
            return Ok(());
        }
        {
            let mut list = self.lock();
            list.during_load = Some(Vec::new());
            list.stale = false;
        }
        let loaded = client.load().await;
        let mut list = self.lock();
        let announced = list.during_load.take().unwrap_or_default();
        match loaded {
            Ok((jtis, users)) => {
                list.jtis = jtis;
                list.users = users;
                for revocation in &announced {
                    list.apply(revocation);
                }
                list.loaded_at = Some(Instant::now());
                Ok(())
            }
            Err(e) if list.loaded_at.is_some() => {
                tracing::warn!(error = %e, "could not re-read the revocation list; the last one keeps serving");
                // Try again at the next refresh, not at every login.
                list.loaded_at = Some(Instant::now());
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Applies an announced revocation.
    pub fn apply(&self, revocation: &Revocation) {
        let mut list = self.lock();
        list.apply(revocation);
        if let Some(during) = list.during_load.as_mut() {
            during.push(revocation.clone());
        }
    }

    /// An announced removal: the next login re-reads the table.
    pub fn mark_stale(&self) {
        self.lock().stale = true;
    }

    /// Whether the token with `jti` is revoked.
    pub fn token_revoked(&self, jti: Option<&str>) -> Option<Revoked> {
        let jti = jti?;
        self.lock().jtis.contains(jti).then_some(Revoked::Token)
    }

    /// Whether the user's tokens issued at `issued_at` are revoked (a token without `iat` is, once any of the
    /// user's tokens are).
    pub fn user_revoked(&self, user_id: Uuid, issued_at: Option<u64>) -> Option<Revoked> {
        let before = *self.lock().users.get(&user_id)?;
        match issued_at {
            Some(iat) if iat >= before => None,
            _ => Some(Revoked::User),
        }
    }

    /// Entries held (jtis, users).
    pub fn sizes(&self) -> (usize, usize) {
        let list = self.lock();
        (list.jtis.len(), list.users.len())
    }
}

/// The revocation table's rows: jtis, and users with their cut-off time.
pub type Rows = (HashSet<String>, HashMap<Uuid, u64>);

/// Something that reads the revocation table (the directory's admin pool; a stub in unit tests).
pub trait AsyncLoad {
    fn load(self) -> impl std::future::Future<Output = Result<Rows, RevocationError>> + Send;
}

/// Reads the table over a directory connection.
pub async fn load_rows(client: &tokio_postgres::Client) -> Result<Rows, RevocationError> {
    let rows = client
        .query(
            "SELECT jti, user_id, ceil(extract(epoch FROM revoked_before))::bigint \
             FROM pgtenant.revoked_tokens",
            &[],
        )
        .await
        .map_err(|e| RevocationError::Unavailable(e.to_string()))?;
    let mut jtis = HashSet::new();
    let mut users = HashMap::new();
    for row in rows {
        let jti: Option<String> = row.get(0);
        let user: Option<Uuid> = row.get(1);
        let before: Option<i64> = row.get(2);
        match (jti, user, before) {
            (Some(jti), _, _) => {
                jtis.insert(jti);
            }
            (None, Some(user), Some(before)) => {
                users.insert(user, u64::try_from(before).unwrap_or(0));
            }
            _ => {}
        }
    }
    Ok((jtis, users))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Result<Rows, String>);

    impl AsyncLoad for Fixed {
        async fn load(self) -> Result<Rows, RevocationError> {
            self.0.map_err(RevocationError::Unavailable)
        }
    }

    fn rows(jtis: &[&str], users: &[(Uuid, u64)]) -> Rows {
        (
            jtis.iter().map(|s| s.to_string()).collect(),
            users.iter().copied().collect(),
        )
    }

    #[tokio::test]
    async fn loaded_rows_and_announcements_revoke() {
        let list = RevocationList::default();
        let user = Uuid::new_v4();
        list.ensure_fresh(
            Duration::from_secs(60),
            Fixed(Ok(rows(&["j1"], &[(user, 100)]))),
        )
        .await
        .expect("loads");
        assert_eq!(list.token_revoked(Some("j1")), Some(Revoked::Token));
        assert_eq!(list.token_revoked(Some("j2")), None);
        assert_eq!(list.token_revoked(None), None);
        assert_eq!(list.user_revoked(user, Some(99)), Some(Revoked::User));
        assert_eq!(list.user_revoked(user, None), Some(Revoked::User));
        assert_eq!(list.user_revoked(user, Some(100)), None);
        assert_eq!(list.user_revoked(Uuid::new_v4(), None), None);
        list.apply(&Revocation::Token {
            jti: "j2".into(),
            end_sessions: false,
        });
        list.apply(&Revocation::User {
            user_id: user,
            before: 200,
            end_sessions: false,
        });
        assert_eq!(list.token_revoked(Some("j2")), Some(Revoked::Token));
        assert_eq!(list.user_revoked(user, Some(150)), Some(Revoked::User));
        // Fresh: no second load (this one would fail).
        list.ensure_fresh(Duration::from_secs(60), Fixed(Err("down".into())))
            .await
            .expect("still fresh");
    }

    #[tokio::test]
    async fn never_loaded_and_unreadable_is_an_error_later_failures_keep_the_list() {
        let list = RevocationList::default();
        assert!(list
            .ensure_fresh(Duration::from_secs(60), Fixed(Err("down".into())))
            .await
            .is_err());
        list.ensure_fresh(Duration::from_secs(60), Fixed(Ok(rows(&["j1"], &[]))))
            .await
            .expect("loads");
        list.mark_stale();
        list.ensure_fresh(Duration::from_secs(60), Fixed(Err("down".into())))
            .await
            .expect("the last list serves");
        assert_eq!(list.token_revoked(Some("j1")), Some(Revoked::Token));
        // A removal announced and re-read: gone.
        list.mark_stale();
        list.ensure_fresh(Duration::from_secs(60), Fixed(Ok(rows(&[], &[]))))
            .await
            .expect("loads");
        assert_eq!(list.token_revoked(Some("j1")), None);
    }
}
