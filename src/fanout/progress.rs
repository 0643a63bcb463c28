//! Progress of a fan-out: a progress bar for the CLI, NOTICE-style lines for the admin channel.

use super::{TenantOutcome, TenantResult};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Told about each tenant as the fan-out finishes it. Called from several tasks at once.
pub trait Progress: Send + Sync {
    fn start(&self, tenants_to_migrate: usize);
    fn tenant(&self, result: &TenantResult);
    fn finish(&self);
}

/// Says nothing.
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: usize) {}
    fn tenant(&self, _: &TenantResult) {}
    fn finish(&self) {}
}

/// A terminal progress bar: tenants done and failed, rate, ETA. Failures are printed above the bar.
pub struct Bar {
    bar: indicatif::ProgressBar,
    failed: Mutex<usize>,
}

impl Bar {
    pub fn new() -> Self {
        let bar = indicatif::ProgressBar::new(0);
        let style = indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} tenants  {per_sec}  eta {eta}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        Self {
            bar,
            failed: Mutex::new(0),
        }
    }
}

impl Default for Bar {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for Bar {
    fn start(&self, tenants_to_migrate: usize) {
        self.bar.set_length(tenants_to_migrate as u64);
        self.bar.set_message("failed 0");
    }
    fn tenant(&self, result: &TenantResult) {
        if let TenantOutcome::Failed(failure) = &result.outcome {
            let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            *failed += 1;
            self.bar.set_message(format!("failed {failed}"));
            self.bar
                .println(format!("FAILED {}: {failure}", result.slug));
        }
        self.bar.inc(1);
    }
    fn finish(&self) {
        self.bar.finish();
    }
}

/// Lines of text (for NOTICE messages): every failure, and a summary at most once per `interval`.
pub struct Lines<F: Fn(String) + Send + Sync> {
    emit: F,
    interval: Duration,
    state: Mutex<LinesState>,
}

struct LinesState {
    total: usize,
    done: usize,
    failed: usize,
    started: Instant,
    last: Instant,
}

impl<F: Fn(String) + Send + Sync> Lines<F> {
    pub fn new(interval: Duration, emit: F) -> Self {
        Self {
            emit,
            interval,
            state: Mutex::new(LinesState {
                total: 0,
                done: 0,
                failed: 0,
                started: Instant::now(),
                last: Instant::now(),
            }),
        }
    }
}

/// "120/1000 tenants, 3 failed, 85.2/s, eta 10s".
pub fn summary(done: usize, total: usize, failed: usize, elapsed: Duration) -> String {
    let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
    let eta = if rate > 0.0 {
        format!("{:.0}s", (total.saturating_sub(done)) as f64 / rate)
    } else {
        "?".into()
    };
    format!("{done}/{total} tenants, {failed} failed, {rate:.1}/s, eta {eta}")
}

impl<F: Fn(String) + Send + Sync> Progress for Lines<F> {
    fn start(&self, tenants_to_migrate: usize) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.total = tenants_to_migrate;
        state.started = Instant::now();
        state.last = Instant::now();
        (self.emit)(format!("migrating {tenants_to_migrate} tenants"));
    }
    fn tenant(&self, result: &TenantResult) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.done += 1;
        if let TenantOutcome::Failed(failure) = &result.outcome {
            state.failed += 1;
            (self.emit)(format!("FAILED {}: {failure}", result.slug));
        }
        if state.last.elapsed() >= self.interval {
            state.last = Instant::now();
            (self.emit)(summary(
                state.done,
                state.total,
                state.failed,
                state.started.elapsed(),
            ));
        }
    }
    fn finish(&self) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (self.emit)(summary(
            state.done,
            state.total,
            state.failed,
            state.started.elapsed(),
        ));
    }
}
