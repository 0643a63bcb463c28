//! Fetching key sets over HTTP(S): the background task that keeps a [`JwksStore`] fresh, and the rules a URL
//! must pass before pgtenant connects to it.
//!
//! A key set URL comes from the configuration or from a discovery document, i.e. partly from outside, and the
//! fetch runs inside the network pgtenant lives in. So:
//!
//! - `https://` only; `http://` only to loopback (`127.0.0.0/8`, `::1`, `localhost`) unless
//!   `auth.jwks_allow_http`;
//! - no URL (or name resolution) that leads to a link-local or cloud metadata address (`169.254.0.0/16`,
//!   `fe80::/10`, `fd00::/8`, and those addresses mapped into IPv6) unless `auth.jwks_allow_link_local`; names
//!   are checked by the resolver the HTTP client connects with, so a name cannot resolve to one address when
//!   checked and another when used;
//! - no redirects, no proxy from the environment, a connect and a total timeout, and at most
//!   [`MAX_JWKS_BYTES`] of body.
//!
//! The task fetches every remote source at start, then every `auth.jwks_refresh_secs`; a source that fails is
//! retried sooner (1 s, 2 s, 4 s, … up to the refresh interval) and keeps serving its last good keys. Failures
//! are warnings until a source has failed for `auth.jwks_stale_secs`, then errors. An unknown key on the login
//! path wakes the task for one extra round (rate limited in the store). A `jwks_file` is re-read when its
//! content changes. The task stops with the token it is given (the proxy's shutdown, or a RELOAD that replaces
//! the store).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{ACCEPT, LOCATION};
use reqwest::{Client, Url};
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::jwks::{self, MAX_JWKS_BYTES};
use super::jwks_store::{fingerprint, read_file, JwksSettings, JwksSource, JwksStore};

/// Shortest retry delay after a failed fetch.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// The path of an OpenID Provider's discovery document under its issuer.
pub(super) const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// Why a fetch failed. The text is logged and shown by SHOW CONFIG and /metrics; it holds no token.
#[derive(Debug, thiserror::Error)]
pub(super) enum FetchError {
    #[error("refused: {0}")]
    Refused(String),
    #[error("timed out after {0} ms")]
    Timeout(u128),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("the server answered {status} with a redirect{} (redirects are not followed)", location_text(.location))]
    Redirect {
        status: u16,
        location: Option<String>,
    },
    #[error("the server answered HTTP {0}")]
    Status(u16),
    #[error("the response is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("{0}")]
    Http(String),
    #[error("the discovery document {0}")]
    Discovery(String),
    #[error("{0}")]
    Document(#[from] jwks::JwksError),
}

fn location_text(location: &Option<String>) -> String {
    location
        .as_deref()
        .map(|l| format!(" to {l}"))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------------------------
// Which URLs and addresses may be fetched

/// Checks a key set or discovery URL against the rules above; returns it parsed.
pub(super) fn check_url(
    text: &str,
    allow_http: bool,
    allow_link_local: bool,
) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("{text:?} is not a valid URL ({e})"))?;
    check_parsed_url(&url, allow_http, allow_link_local)?;
    Ok(url)
}

fn check_parsed_url(url: &Url, allow_http: bool, allow_link_local: bool) -> Result<(), String> {
    if !matches!(url.scheme(), "https" | "http") {
        return Err(format!(
            "{url}: scheme {:?} is not supported (use https://)",
            url.scheme()
        ));
    }
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err(format!("{url} has no host"));
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err("a key set URL must not hold credentials".to_owned());
    }
    // The URL parser normalises IP literals (IPv4 to dotted decimal, IPv6 in brackets).
    let literal: Option<IpAddr> = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse()
        .ok();
    if let Some(ip) = literal {
        if !allow_link_local && is_link_local_or_metadata(ip) {
            return Err(format!(
                "{url}: {ip} is a link-local or metadata address (set auth.jwks_allow_link_local = true \
                 to allow it)"
            ));
        }
    }
    let loopback = match literal {
        Some(ip) => ip.is_loopback(),
        None => host.eq_ignore_ascii_case("localhost"),
    };
    if url.scheme() == "http" && !loopback && !allow_http {
        return Err(format!(
            "{url}: http:// is only allowed to loopback addresses (use https://, or set \
             auth.jwks_allow_http = true)"
        ));
    }
    Ok(())
}

/// Link-local and cloud metadata addresses: `169.254.0.0/16`, `fe80::/10`, `fd00::/8`, and IPv4 ones mapped
/// into IPv6 (`::ffff:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`).
pub(super) fn is_link_local_or_metadata(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4.is_link_local();
            }
            let s = v6.segments();
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let o = v6.octets();
                return Ipv4Addr::new(o[12], o[13], o[14], o[15]).is_link_local();
            }
            (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xff00) == 0xfd00
        }
    }
}

/// The resolver the HTTP client connects with: the system's, minus addresses pgtenant may not fetch from.
/// `localhost` must resolve to loopback addresses only (plain http is allowed to it).
struct GuardedResolver {
    allow_link_local: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let allow_link_local = self.allow_link_local;
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let localhost = host.eq_ignore_ascii_case("localhost");
            let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
                found.into_iter().partition(|a| {
                    (allow_link_local || !is_link_local_or_metadata(a.ip()))
                        && (!localhost || a.ip().is_loopback())
                });
            if allowed.is_empty() {
                let list: Vec<String> = refused.iter().map(|a| a.ip().to_string()).collect();
                let reason = if list.is_empty() {
                    format!("{host} resolves to no address")
                } else {
                    format!(
                        "{host} resolves only to addresses pgtenant may not fetch from ({}): link-local or \
                         metadata (auth.jwks_allow_link_local), or not loopback for localhost",
                        list.join(", ")
                    )
                };
                return Err(reason.into());
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP

pub(super) fn build_client(settings: &JwksSettings) -> Result<Client, String> {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.timeout)
        .dns_resolver(GuardedResolver {
            allow_link_local: settings.allow_link_local,
        })
        .user_agent(concat!("pgtenant/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {}", error_chain(&e)))
}

/// GETs `url`: a 2xx answer of at most [`MAX_JWKS_BYTES`].
async fn get(client: &Client, url: &Url, settings: &JwksSettings) -> Result<Vec<u8>, FetchError> {
    check_parsed_url(url, settings.allow_http, settings.allow_link_local)
        .map_err(FetchError::Refused)?;
    let http_error = |e: reqwest::Error| {
        if e.is_timeout() {
            FetchError::Timeout(settings.timeout.as_millis())
        } else if e.is_connect() {
            FetchError::Connect(error_chain(&e.without_url()))
        } else {
            FetchError::Http(error_chain(&e.without_url()))
        }
    };
    let mut response = client
        .get(url.clone())
        .header(ACCEPT, "application/jwk-set+json, application/json")
        .send()
        .await
        .map_err(http_error)?;
    let status = response.status();
    if status.is_redirection() {
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(|l| l.chars().take(200).collect());
        return Err(FetchError::Redirect {
            status: status.as_u16(),
            location,
        });
    }
    if !status.is_success() {
        return Err(FetchError::Status(status.as_u16()));
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err(FetchError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(http_error)? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(FetchError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads the discovery document and returns its `jwks_uri`, checked like a configured URL. The document's
/// `issuer` must be the configured one (OpenID Connect Discovery §4.3; a trailing `/` aside).
async fn discover(
    client: &Client,
    issuer: &str,
    document: &Url,
    settings: &JwksSettings,
) -> Result<Url, FetchError> {
    let body = get(client, document, settings).await?;
    let doc: Value = serde_json::from_slice(&body)
        .map_err(|_| FetchError::Discovery("is not JSON".to_owned()))?;
    let said = doc
        .get("issuer")
        .and_then(Value::as_str)
        .ok_or_else(|| FetchError::Discovery("has no \"issuer\"".to_owned()))?;
    if said.trim_end_matches('/') != issuer.trim_end_matches('/') {
        return Err(FetchError::Discovery(format!(
            "names issuer {:?}, not the configured {issuer:?}",
            said.chars().take(200).collect::<String>()
        )));
    }
    let uri = doc
        .get("jwks_uri")
        .and_then(Value::as_str)
        .ok_or_else(|| FetchError::Discovery("has no \"jwks_uri\"".to_owned()))?;
    check_url(uri, settings.allow_http, settings.allow_link_local).map_err(|e| {
        FetchError::Discovery(format!("points to a key set pgtenant may not fetch: {e}"))
    })
}

/// "outer: inner: innermost", skipping a cause the message already holds.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

// ---------------------------------------------------------------------------------------------------------------
// The background task

/// What the task keeps per source between rounds.
#[derive(Clone)]
struct Schedule {
    next_due: Instant,
    failures: u32,
    /// The discovered key set URL (discovery sources).
    discovered: Option<Url>,
}

/// Starts the fetcher of `store`; it stops when `stop` is cancelled.
pub(super) fn spawn(store: Arc<JwksStore>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = run(store.clone()) => {}
        }
    })
}

async fn run(store: Arc<JwksStore>) {
    let settings = store.settings.clone();
    let client = match build_client(&settings) {
        Ok(client) => Some(client),
        Err(e) => {
            tracing::error!(error = %e, "JWKS: no HTTP client; key set URLs are not fetched");
            for (i, source) in store.sources().iter().enumerate() {
                if source.is_remote() {
                    store.record_failure(i, e.clone());
                }
            }
            store.end_round();
            None
        }
    };
    let now = Instant::now();
    let mut schedule: Vec<Schedule> = store
        .sources()
        .iter()
        .map(|source| Schedule {
            next_due: if source.is_remote() {
                now
            } else {
                now + settings.file_check
            },
            failures: 0,
            discovered: None,
        })
        .collect();
    let mut forced = false;
    loop {
        let now = Instant::now();
        let remote_due: Vec<usize> = store
            .sources()
            .iter()
            .enumerate()
            .filter(|(i, s)| s.is_remote() && (forced || schedule[*i].next_due <= now))
            .map(|(i, _)| i)
            .collect();
        if let (Some(client), false) = (&client, remote_due.is_empty()) {
            // Sources are fetched side by side: a slow one does not delay the others' keys.
            store.begin_round();
            let mut fetches = tokio::task::JoinSet::new();
            for &i in &remote_due {
                // Kept should the fetch task fail: no retry before the next refresh.
                schedule[i].next_due = now + settings.refresh;
                let (store, client, mut plan) =
                    (store.clone(), client.clone(), schedule[i].clone());
                fetches.spawn(async move {
                    fetch_source(&store, &client, i, &mut plan).await;
                    (i, plan)
                });
            }
            while let Some(done) = fetches.join_next().await {
                if let Ok((i, plan)) = done {
                    schedule[i] = plan;
                }
            }
            store.end_round();
        } else if forced {
            store.end_round();
        }
        for (i, source) in store.sources().iter().enumerate() {
            if let JwksSource::File(path) = source {
                if schedule[i].next_due <= now {
                    check_file(&store, i, path);
                    schedule[i].next_due = now + settings.file_check;
                }
            }
        }
        let next = schedule
            .iter()
            .zip(store.sources())
            .filter(|(_, s)| client.is_some() || !s.is_remote())
            .map(|(s, _)| s.next_due)
            .min();
        forced = match next {
            Some(next) => tokio::select! {
                _ = tokio::time::sleep_until(next) => false,
                _ = store.wake.notified() => true,
            },
            None => {
                store.wake.notified().await;
                true
            }
        };
    }
}

async fn fetch_source(store: &JwksStore, client: &Client, index: usize, schedule: &mut Schedule) {
    let settings = &store.settings;
    let source = &store.sources()[index];
    let result = match source {
        JwksSource::Url(url) => fetch_keys(client, url, settings).await,
        JwksSource::Discovery { issuer, document } => {
            match discover(client, issuer, document, settings).await {
                Ok(url) => {
                    if schedule.discovered.as_ref() != Some(&url) {
                        tracing::info!(%source, jwks_uri = %url, "JWKS: discovered the key set URL");
                    }
                    schedule.discovered = Some(url.clone());
                    fetch_keys(client, &url, settings).await
                }
                // The provider's discovery endpoint failing need not stop the key set URL it gave before.
                Err(e) => match schedule.discovered.clone() {
                    Some(url) => {
                        tracing::warn!(%source, error = %e, "JWKS: discovery failed; using the key set URL found before");
                        fetch_keys(client, &url, settings).await
                    }
                    None => Err(e),
                },
            }
        }
        JwksSource::File(_) => return,
    };
    let now = Instant::now();
    match result {
        Ok(parsed) => {
            let kids: Vec<&str> = parsed
                .keys
                .iter()
                .filter_map(|k| k.kid.as_deref())
                .collect();
            if schedule.failures > 0 {
                tracing::info!(%source, keys = parsed.keys.len(), ?kids, "JWKS: fetched again after failures");
            } else {
                tracing::debug!(%source, keys = parsed.keys.len(), ?kids, "JWKS: fetched");
            }
            for reason in &parsed.skipped {
                tracing::debug!(%source, reason = %reason, "JWKS: key skipped");
            }
            store.record_success(index, parsed, None);
            schedule.failures = 0;
            schedule.next_due = now + settings.refresh;
        }
        Err(e) => {
            let error = e.to_string();
            let failure = store.record_failure(index, error.clone());
            let failing_secs = failure.failing_for.as_secs();
            if failure.stale {
                tracing::error!(
                    %source, error = %error, failing_secs, serving_keys = failure.serving,
                    "JWKS: the identity provider's key set could not be fetched for a long time; tokens signed \
                     by keys it added since are refused"
                );
            } else {
                tracing::warn!(
                    %source, error = %error, failing_secs, serving_keys = failure.serving,
                    "JWKS: fetch failed; the last good key set keeps serving"
                );
            }
            let backoff = FIRST_RETRY.saturating_mul(1 << schedule.failures.min(16));
            schedule.failures = schedule.failures.saturating_add(1);
            schedule.next_due = now + backoff.min(settings.refresh);
        }
    }
}

async fn fetch_keys(
    client: &Client,
    url: &Url,
    settings: &JwksSettings,
) -> Result<jwks::ParsedJwks, FetchError> {
    let body = get(client, url, settings).await?;
    Ok(jwks::parse(&body)?)
}

fn check_file(store: &JwksStore, index: usize, path: &std::path::Path) {
    let source = &store.sources()[index];
    let content = match read_file(path) {
        Ok(content) => content,
        Err(e) => {
            // Reported once per distinct failure: the same unreadable file is not logged every check.
            let known = store.status().get(index).and_then(|s| s.last_error.clone());
            if known.as_deref() != Some(e.as_str()) {
                tracing::warn!(%source, error = %e, "JWKS: cannot read the key set file; its last good keys keep serving");
                store.record_failure(index, e);
            }
            // Whatever comes back (even the same content) is read again.
            store.note_file_content(index, None);
            return;
        }
    };
    if !store.file_changed(index, &content) {
        return;
    }
    match jwks::parse(&content) {
        Ok(parsed) => {
            let kids: Vec<&str> = parsed
                .keys
                .iter()
                .filter_map(|k| k.kid.as_deref())
                .collect();
            tracing::info!(%source, keys = parsed.keys.len(), ?kids, "JWKS: key set file changed; re-read");
            store.record_success(index, parsed, Some(fingerprint(&content)));
        }
        Err(e) => {
            tracing::warn!(%source, error = %e, "JWKS: the key set file changed but cannot be used; its last good keys keep serving");
            store.note_file_content(index, Some(&content));
            store.record_failure(index, e.to_string());
        }
    }
}
