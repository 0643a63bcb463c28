//! The key sets pgtenant holds from identity providers, shared by the token verifier and the fetcher task.
//!
//! The login path stays synchronous and cheap: [`JwksStore::keys`] clones an `Arc` of the current keys under a
//! read lock. Only the fetcher (see `jwks_fetch`) replaces them, source by source: a source that fails keeps its
//! last good keys, so a provider that is down costs nothing until it rotates its keys.
//!
//! A token whose key is unknown may ask for one refetch ([`JwksStore::refetch_until`]). Refetches are rate
//! limited for the whole store (`auth.jwks_refetch_interval_secs`): a flood of tokens with made-up `kid`s costs
//! at most one fetch per interval; logins that arrive while a fetch is running wait for it (up to
//! `auth.jwks_login_wait_ms`) instead of starting another, and try again each time a source's keys change, so a
//! slow source does not hold up a key another source already delivered.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use reqwest::Url;
use tokio::sync::{watch, Notify};

use super::jwks::{self, Jwk, JwksError, ParsedJwks, MAX_JWKS_BYTES};

/// Where keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    /// `auth.jwks_url`.
    Url(Url),
    /// `auth.issuer` with `auth.discover = true`: the key set's URL is the discovery document's `jwks_uri`.
    Discovery { issuer: String, document: Url },
    /// `auth.jwks_file`, re-read when it changes and on RELOAD.
    File(PathBuf),
}

impl JwksSource {
    pub(super) fn is_remote(&self) -> bool {
        !matches!(self, JwksSource::File(_))
    }
}

impl fmt::Display for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksSource::Url(url) => write!(f, "{url}"),
            JwksSource::Discovery { document, .. } => write!(f, "{document} (discovery)"),
            JwksSource::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// Timings and limits of fetching, from `[auth]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct JwksSettings {
    /// Background refresh of every remote source.
    pub(super) refresh: Duration,
    /// At most one refetch for unknown keys per this interval.
    pub(super) refetch_interval: Duration,
    /// After this long without a successful fetch, each failure is logged as an error.
    pub(super) stale_after: Duration,
    pub(super) connect_timeout: Duration,
    /// Whole request, body included.
    pub(super) timeout: Duration,
    /// How long a login with an unknown key waits for a refetch.
    pub(super) login_wait: Duration,
    /// How often `jwks_file` is checked for changes.
    pub(super) file_check: Duration,
    pub(super) allow_http: bool,
    pub(super) allow_link_local: bool,
}

/// What SHOW CONFIG and /metrics say about one source.
#[derive(Clone, Debug)]
pub struct JwksSourceStatus {
    pub source: String,
    /// Keys in the set now serving.
    pub keys: usize,
    /// Their `kid`s (from the provider's document).
    pub kids: Vec<String>,
    /// Last successful fetch or read.
    pub updated_at: Option<SystemTime>,
    /// Why the last attempt failed, when it did.
    pub last_error: Option<String>,
    pub fetches: u64,
    pub failures: u64,
}

impl JwksSourceStatus {
    /// Seconds since the serving set was fetched; `None` when it never was.
    pub fn age_secs(&self) -> Option<u64> {
        self.updated_at
            .map(|t| t.elapsed().map(|d| d.as_secs()).unwrap_or(0))
    }
}

#[derive(Default)]
struct SourceState {
    keys: Vec<Arc<Jwk>>,
    updated_at: Option<SystemTime>,
    last_error: Option<String>,
    /// First failure since the last success (or since start).
    failing_since: Option<Instant>,
    fetches: u64,
    failures: u64,
    /// SHA-256 of the file's last content (file sources).
    fingerprint: Option<Vec<u8>>,
}

/// The refetch gate: one refetch for unknown keys per interval, and whether a fetch round is running.
struct Gate {
    last_forced: Option<Instant>,
    in_flight: bool,
}

/// How a failure stands, for the fetcher's log line.
pub(super) struct Failure {
    /// How long the source has been failing.
    pub(super) failing_for: Duration,
    /// Failing for longer than `stale_after`.
    pub(super) stale: bool,
    /// The source still serves keys from an earlier fetch.
    pub(super) serving: usize,
}

pub struct JwksStore {
    sources: Vec<JwksSource>,
    pub(super) settings: JwksSettings,
    state: Mutex<Vec<SourceState>>,
    current: RwLock<Arc<[Arc<Jwk>]>>,
    /// Some remote source's last attempt failed.
    failing: AtomicBool,
    gate: Mutex<Gate>,
    /// Wakes the fetcher for a refetch.
    pub(super) wake: Notify,
    /// Counts changes: a source's keys replaced, or a fetch round ended. Logins waiting for a refetch watch it.
    changes: watch::Sender<u64>,
    /// Refetches asked for by unknown keys.
    forced: AtomicU64,
}

impl fmt::Debug for JwksStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksStore")
            .field("sources", &self.sources)
            .field("keys", &self.keys().len())
            .finish_non_exhaustive()
    }
}

impl JwksStore {
    pub(super) fn new(sources: Vec<JwksSource>, settings: JwksSettings) -> JwksStore {
        let remote = sources.iter().any(JwksSource::is_remote);
        JwksStore {
            state: Mutex::new(sources.iter().map(|_| SourceState::default()).collect()),
            sources,
            settings,
            current: RwLock::new(Arc::from(Vec::new())),
            failing: AtomicBool::new(false),
            // The first round runs as soon as the fetcher starts: logins before it ends wait for it.
            gate: Mutex::new(Gate {
                last_forced: None,
                in_flight: remote,
            }),
            wake: Notify::new(),
            changes: watch::Sender::new(0),
            forced: AtomicU64::new(0),
        }
    }

    pub(super) fn sources(&self) -> &[JwksSource] {
        &self.sources
    }

    /// The keys now serving, from every source.
    pub(super) fn keys(&self) -> Arc<[Arc<Jwk>]> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Some source is fetched over HTTP (an unknown key may ask for a refetch).
    pub(super) fn has_remote_sources(&self) -> bool {
        self.sources.iter().any(JwksSource::is_remote)
    }

    /// The last attempt of some remote source failed.
    pub(super) fn refresh_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Refetches asked for by tokens with unknown keys since start.
    pub fn forced_refetches(&self) -> u64 {
        self.forced.load(Ordering::Relaxed)
    }

    /// Reads a file source now (at startup and RELOAD, so that a broken file is a configuration error).
    pub(super) fn load_file(&self, index: usize) -> Result<(), String> {
        let JwksSource::File(path) = &self.sources[index] else {
            return Ok(());
        };
        let bytes = read_file(path)?;
        let parsed = jwks::parse(&bytes).map_err(|e| e.to_string())?;
        self.record_success(index, parsed, Some(fingerprint(&bytes)));
        Ok(())
    }

    /// Takes over the keys and counters of the remote sources `previous` shares with this store, so a RELOAD
    /// does not leave logins without keys until the first fetch.
    pub(super) fn seed_from(&self, previous: &JwksStore) {
        {
            let old = previous.state.lock().unwrap_or_else(|p| p.into_inner());
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            for (i, source) in self.sources.iter().enumerate() {
                if !source.is_remote() {
                    continue;
                }
                if let Some(j) = previous.sources.iter().position(|s| s == source) {
                    let o = &old[j];
                    state[i] = SourceState {
                        keys: o.keys.clone(),
                        updated_at: o.updated_at,
                        last_error: o.last_error.clone(),
                        failing_since: o.failing_since,
                        fetches: o.fetches,
                        failures: o.failures,
                        fingerprint: None,
                    };
                }
            }
        }
        self.rebuild();
    }

    /// A fetch or read of source `index` succeeded: its keys replace the ones it had.
    pub(super) fn record_success(
        &self,
        index: usize,
        parsed: ParsedJwks,
        fingerprint: Option<Vec<u8>>,
    ) {
        {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let s = &mut state[index];
            s.keys = parsed.keys.into_iter().map(Arc::new).collect();
            s.updated_at = Some(SystemTime::now());
            s.last_error = None;
            s.failing_since = None;
            s.fetches += 1;
            if fingerprint.is_some() {
                s.fingerprint = fingerprint;
            }
        }
        self.rebuild();
        self.changes.send_modify(|n| *n += 1);
    }

    /// A fetch or read of source `index` failed: its last good keys keep serving.
    pub(super) fn record_failure(&self, index: usize, error: String) -> Failure {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let s = &mut state[index];
        s.last_error = Some(error);
        s.failures += 1;
        let since = *s.failing_since.get_or_insert_with(Instant::now);
        let failing_for = since.elapsed();
        let serving = s.keys.len();
        drop(state);
        self.update_failing();
        Failure {
            failing_for,
            stale: failing_for >= self.settings.stale_after,
            serving,
        }
    }

    /// Whether `content` differs from what file source `index` last loaded.
    pub(super) fn file_changed(&self, index: usize, content: &[u8]) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state[index].fingerprint.as_deref() != Some(fingerprint(content).as_slice())
    }

    /// Remembers a file content that failed to parse, so that it is reported once, not at every check; `None`
    /// forgets the content, so that the next one is parsed whatever it is.
    pub(super) fn note_file_content(&self, index: usize, content: Option<&[u8]>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state[index].fingerprint = content.map(fingerprint);
    }

    fn rebuild(&self) {
        let keys: Vec<Arc<Jwk>> = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flat_map(|s| s.keys.iter().cloned())
            .collect();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::from(keys);
        self.update_failing();
    }

    fn update_failing(&self) {
        let failing = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            self.sources
                .iter()
                .zip(state.iter())
                .any(|(source, s)| source.is_remote() && s.failing_since.is_some())
        };
        self.failing.store(failing, Ordering::Relaxed);
    }

    /// A token named a key the store does not have: asks the fetcher for one refetch (unless one ran less than
    /// `refetch_interval` ago; a fetch already running is waited for, never doubled), and calls `attempt` each
    /// time a source's keys change, until it returns `Some`, the round ends, or `login_wait` has passed. A round
    /// that was running already may have started before the key was published: when it ends without the key,
    /// the refetch is asked for once more (rate limited like the first). `None`: no refetch was allowed, or it
    /// did not help in time.
    ///
    /// (A round lasts as long as its slowest source, up to `timeout`; keys of faster sources count as soon as
    /// they arrive, but a login that comes in after they did waits for the round's end.)
    ///
    /// Cancel-safe: dropping the future only stops the waiting.
    pub(super) async fn refetch_until<T>(
        &self,
        mut attempt: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        if !self.has_remote_sources() {
            return None;
        }
        // Subscribed before looking at the gate: every change from here on is seen.
        let mut changes = self.changes.subscribe();
        if !self.request_refetch() {
            return None;
        }
        let deadline = tokio::time::Instant::now() + self.settings.login_wait;
        let mut asked_again = false;
        loop {
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
            if let Some(done) = attempt() {
                return Some(done);
            }
            if !self.round_in_flight() {
                if asked_again || !self.request_refetch() {
                    return None;
                }
                asked_again = true;
            }
        }
    }

    /// The gate: whether a refetch runs (already, or from now on) for a token with an unknown key.
    fn request_refetch(&self) -> bool {
        let mut gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        if gate.in_flight {
            return true;
        }
        if gate
            .last_forced
            .is_some_and(|t| t.elapsed() < self.settings.refetch_interval)
        {
            return false;
        }
        gate.last_forced = Some(Instant::now());
        gate.in_flight = true;
        self.forced.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_one();
        true
    }

    pub(super) fn round_in_flight(&self) -> bool {
        self.gate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .in_flight
    }

    /// The fetcher starts a round of fetches.
    pub(super) fn begin_round(&self) {
        self.gate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .in_flight = true;
    }

    /// The fetcher finished a round: waiting logins try once more, then give up.
    pub(super) fn end_round(&self) {
        self.gate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .in_flight = false;
        self.changes.send_modify(|n| *n += 1);
    }

    pub fn status(&self) -> Vec<JwksSourceStatus> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.sources
            .iter()
            .zip(state.iter())
            .map(|(source, s)| JwksSourceStatus {
                source: source.to_string(),
                keys: s.keys.len(),
                kids: s.keys.iter().filter_map(|k| k.kid.clone()).collect(),
                updated_at: s.updated_at,
                last_error: s.last_error.clone(),
                fetches: s.fetches,
                failures: s.failures,
            })
            .collect()
    }
}

/// Reads a key set file, refusing one above the size limit before reading it.
pub(super) fn read_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read it: {e}"))?;
    if meta.len() > MAX_JWKS_BYTES as u64 {
        return Err(JwksError::TooLarge.to_string());
    }
    std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))
}

/// SHA-256 of a key set file's content, to tell a changed file from an unchanged one.
pub(super) fn fingerprint(content: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, content)
        .as_ref()
        .to_vec()
}
