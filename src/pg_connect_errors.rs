//! bb8 pools of tokio-postgres connections report only "timed out" when connections cannot be made; the real
//! error (server down, login refused, TLS refused) goes to the pool's error sink. [`ConnectErrors`] is that
//! sink: it logs a failure with its whole cause (the same one at most every [`REPEAT_LOG_AFTER`], as bb8
//! retries while a caller waits) and keeps the last one, to say why a `get` failed.

use bb8::{ErrorSink, RunError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The same connection error is logged again after this long.
pub const REPEAT_LOG_AFTER: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct ConnectErrors {
    /// Which pool, for the log line ("directory", "migrations").
    pool: &'static str,
    last: Arc<Mutex<Option<String>>>,
    /// The error last logged, and when.
    logged: Arc<Mutex<Option<(String, Instant)>>>,
    /// Woken at every failed attempt, for callers that would rather fail at once than wait for bb8's timeout.
    failed: Arc<tokio::sync::Notify>,
}

impl ConnectErrors {
    pub fn new(pool: &'static str) -> Self {
        Self {
            pool,
            last: Arc::default(),
            logged: Arc::default(),
            failed: Arc::default(),
        }
    }

    /// The last connection error seen, left in place (several callers woken by one failure all say why).
    pub fn last(&self) -> Option<String> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Notified at every failed connection attempt (register with `Notified::enable` before asking the pool).
    pub fn failed(&self) -> Arc<tokio::sync::Notify> {
        self.failed.clone()
    }

    /// The sink to give `bb8::Builder::error_sink`.
    pub fn sink(&self) -> Box<dyn ErrorSink<tokio_postgres::Error>> {
        Box::new(self.clone())
    }

    /// Why `get` failed: the error itself, or for a timeout the last connection error seen (taken, so an old
    /// one is not repeated later).
    pub fn explain(&self, e: RunError<tokio_postgres::Error>) -> String {
        match e {
            RunError::User(e) => crate::upstream_tls::error_chain(&e),
            RunError::TimedOut => self
                .last
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .unwrap_or_else(|| "timed out waiting for a connection".into()),
        }
    }
}

impl ErrorSink<tokio_postgres::Error> for ConnectErrors {
    fn sink(&self, error: tokio_postgres::Error) {
        let error = crate::upstream_tls::error_chain(&error);
        let log = {
            let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
            let repeat = matches!(&*logged, Some((text, at)) if *text == error && at.elapsed() < REPEAT_LOG_AFTER);
            if !repeat {
                *logged = Some((error.clone(), Instant::now()));
            }
            !repeat
        };
        if log {
            tracing::error!(pool = self.pool, error = %error, "{} connection to the database server failed", self.pool);
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
        self.failed.notify_waiters();
    }
    fn boxed_clone(&self) -> Box<dyn ErrorSink<tokio_postgres::Error>> {
        Box::new(self.clone())
    }
}
