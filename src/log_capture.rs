//! Test support: log lines captured from a test subscriber, one test at a time.
//!
//! tracing keeps a global level filter and a cached interest per callsite. Both are recomputed when a
//! subscriber is made or dropped, and a callsite's interest when it is first hit; when that happens on
//! two test threads at once, the last computation to finish wins with the subscribers it saw, and a
//! capturing test's events are lost: `auth::audit`'s line test found no line in about one run in twenty
//! while the refusals test logged through the same callsite beside it. So every test that makes a
//! subscriber, or logs through a callsite such a test asserts on, holds [`exclusive`] while it does.

use std::sync::{Arc, Mutex, MutexGuard};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Held while a test makes, uses and drops a subscriber (or logs through a callsite another test captures).
pub fn exclusive() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// `events` run with `dispatch` as the default subscriber, every callsite's interest asked again first;
/// the subscriber is dropped before the lock is released.
pub fn with_subscriber(dispatch: tracing::Dispatch, events: impl FnOnce()) {
    let _one_at_a_time = exclusive();
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::callsite::rebuild_interest_cache();
        events();
    });
    drop(dispatch);
}

/// A writer into a shared buffer, for a test subscriber's `with_writer`.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        String::from_utf8(bytes).expect("log lines are UTF-8")
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
