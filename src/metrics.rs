//! Counters and latency histograms, per tenant and in total: for the admin `SHOW STATS` and the Prometheus
//! `/metrics` endpoint (off by default, `server.metrics_listen`).
//!
//! The relay records with relaxed atomics and one short-held lock per completed request (the histogram);
//! rates are computed by a sampler every few seconds from the counters' deltas.

use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counters of one tenant (or of all).
pub struct TenantMetrics {
    /// Transactions completed (ReadyForQuery with status idle).
    pub transactions: AtomicU64,
    /// Requests answered (Query, Sync, FunctionCall).
    pub queries: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// ErrorResponses sent to clients by the server.
    pub errors: AtomicU64,
    /// Clients that had to wait for a server connection, and for how long in total.
    pub waits: AtomicU64,
    pub wait_micros: AtomicU64,
    /// Statements pgtenant cancelled at the tenant's statement_timeout (its ceiling; PostgreSQL's own
    /// cancels are not counted here).
    pub limit_cancels: AtomicU64,
    /// Sessions pgtenant ended at the tenant's idle_in_transaction_session_timeout or transaction_timeout.
    pub limit_terminations: AtomicU64,
    /// Request latency (first byte sent to ReadyForQuery), microseconds.
    latency: Mutex<Histogram<u64>>,
    rates: Mutex<Rates>,
}

#[derive(Clone, Copy, Default, Debug)]
pub struct Rates {
    pub transactions_per_sec: f64,
    pub queries_per_sec: f64,
    last_transactions: u64,
    last_queries: u64,
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Default, Debug)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub count: u64,
}

impl Default for TenantMetrics {
    fn default() -> Self {
        Self {
            transactions: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            wait_micros: AtomicU64::new(0),
            limit_cancels: AtomicU64::new(0),
            limit_terminations: AtomicU64::new(0),
            // 1 µs to 1 hour, 3 significant digits.
            latency: Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
            ),
            rates: Mutex::new(Rates::default()),
        }
    }
}

impl TenantMetrics {
    pub fn record_latency(&self, latency: Duration) {
        let micros = (latency.as_micros() as u64).clamp(1, 3_600_000_000);
        if let Ok(mut h) = self.latency.lock() {
            let _ = h.record(micros);
        }
    }

    pub fn latency(&self) -> Latency {
        match self.latency.lock() {
            Ok(h) => Latency {
                p50: h.value_at_quantile(0.5),
                p90: h.value_at_quantile(0.9),
                p99: h.value_at_quantile(0.99),
                p999: h.value_at_quantile(0.999),
                count: h.len(),
            },
            Err(_) => Latency::default(),
        }
    }

    pub fn rates(&self) -> Rates {
        self.rates.lock().map(|r| *r).unwrap_or_default()
    }

    fn sample(&self, elapsed: Duration) {
        let transactions = self.transactions.load(Ordering::Relaxed);
        let queries = self.queries.load(Ordering::Relaxed);
        if let Ok(mut r) = self.rates.lock() {
            let secs = elapsed.as_secs_f64().max(0.001);
            r.transactions_per_sec = transactions.saturating_sub(r.last_transactions) as f64 / secs;
            r.queries_per_sec = queries.saturating_sub(r.last_queries) as f64 / secs;
            r.last_transactions = transactions;
            r.last_queries = queries;
        }
    }

    pub fn add_wait(&self, waited: Duration) {
        self.waits.fetch_add(1, Ordering::Relaxed);
        self.wait_micros
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Metrics of every tenant this process served, by tenant slug.
#[derive(Default)]
pub struct Metrics {
    tenants: Mutex<HashMap<String, Arc<TenantMetrics>>>,
    last_sample: Mutex<Option<Instant>>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn tenant(&self, slug: &str) -> Arc<TenantMetrics> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        tenants.entry(slug.to_string()).or_default().clone()
    }

    pub fn all(&self) -> Vec<(String, Arc<TenantMetrics>)> {
        let mut list: Vec<(String, Arc<TenantMetrics>)> = self
            .tenants
            .lock()
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// Updates per-second rates from the counters since the last call.
    pub fn sample(&self) {
        let now = Instant::now();
        let elapsed = {
            let mut last = self.last_sample.lock().unwrap_or_else(|p| p.into_inner());
            let elapsed = last.map(|l| now - l).unwrap_or(Duration::from_secs(1));
            *last = Some(now);
            elapsed
        };
        for (_, m) in self.all() {
            m.sample(elapsed);
        }
    }
}

/// Records one session's traffic into its tenant's metrics: ReadyForQuery statuses, errors, latency.
/// Used by both relays; cheap enough for every message.
pub struct Recorder {
    metrics: Arc<TenantMetrics>,
    /// When each outstanding request was sent, oldest first.
    sent: std::collections::VecDeque<Instant>,
}

impl Recorder {
    pub fn new(metrics: Arc<TenantMetrics>) -> Self {
        Self {
            metrics,
            sent: std::collections::VecDeque::new(),
        }
    }

    pub fn metrics(&self) -> &Arc<TenantMetrics> {
        &self.metrics
    }

    /// A Query, Sync or FunctionCall went to the server.
    pub fn request_sent(&mut self) {
        if self.sent.len() < 10_000 {
            self.sent.push_back(Instant::now());
        }
    }

    /// A ReadyForQuery came back with this status byte.
    pub fn ready(&mut self, status: u8) {
        self.metrics.queries.fetch_add(1, Ordering::Relaxed);
        if status == b'I' {
            self.metrics.transactions.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(sent) = self.sent.pop_front() {
            self.metrics.record_latency(sent.elapsed());
        }
    }

    pub fn error(&self) {
        self.metrics.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn bytes(&self, from_client: u64, from_server: u64) {
        self.metrics
            .bytes_in
            .fetch_add(from_client, Ordering::Relaxed);
        self.metrics
            .bytes_out
            .fetch_add(from_server, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_counts_transactions_and_latency() {
        let metrics = Arc::new(TenantMetrics::default());
        let mut r = Recorder::new(metrics.clone());
        r.request_sent();
        r.ready(b'T');
        r.request_sent();
        r.ready(b'I');
        r.error();
        assert_eq!(metrics.queries.load(Ordering::Relaxed), 2);
        assert_eq!(metrics.transactions.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.errors.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.latency().count, 2);
    }

    #[test]
    fn rates_come_from_deltas() {
        let m = TenantMetrics::default();
        m.transactions.store(100, Ordering::Relaxed);
        m.sample(Duration::from_secs(2));
        assert_eq!(m.rates().transactions_per_sec, 50.0);
        m.transactions.store(110, Ordering::Relaxed);
        m.sample(Duration::from_secs(1));
        assert_eq!(m.rates().transactions_per_sec, 10.0);
    }
}
