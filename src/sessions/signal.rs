//! How a running session learns that it must end: one atomic word and one waker per session. The relays
//! poll it on every turn of their loops, so checking it touches nothing shared with other sessions (no
//! lock, no process-wide `Notify`); whoever ends sessions (a kick, pgtenant's shutdown, the grace period's
//! end) sets a bit and wakes the one task.

use futures_util::task::AtomicWaker;
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// End the session at its next idle point (between transactions): pgtenant is shutting down.
const DRAIN: u8 = 1;
/// End the session now: kicked (tenant suspended, token revoked) or the shutdown grace period is over.
const KICK: u8 = 2;

/// One session's end signal.
#[derive(Default, Debug)]
pub struct SessionSignal {
    state: AtomicU8,
    waker: AtomicWaker,
}

impl SessionSignal {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Asks the session to end at its next idle point.
    pub fn drain(&self) {
        self.raise(DRAIN);
    }

    /// Asks the session to end now.
    pub fn kick(&self) {
        self.raise(KICK);
    }

    pub fn is_kicked(&self) -> bool {
        self.state.load(Ordering::Acquire) & KICK != 0
    }

    pub fn is_draining(&self) -> bool {
        self.state.load(Ordering::Acquire) & DRAIN != 0
    }

    fn raise(&self, bit: u8) {
        self.state.fetch_or(bit, Ordering::AcqRel);
        self.waker.wake();
    }

    fn poll_bit(&self, bit: u8, cx: &mut Context<'_>) -> Poll<()> {
        if self.state.load(Ordering::Acquire) & bit != 0 {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // Raised between the load and the registration: seen now.
        if self.state.load(Ordering::Acquire) & bit != 0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Completes once the session is kicked. Both futures of one session must be polled by one task (the
    /// session's relay): they share the waker slot.
    pub fn kicked(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let signal = self.clone();
        std::future::poll_fn(move |cx| signal.poll_bit(KICK, cx))
    }

    /// Completes once the session is asked to drain (or kicked: a kicked session drains too).
    pub fn drained(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let signal = self.clone();
        std::future::poll_fn(move |cx| signal.poll_bit(DRAIN | KICK, cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_kick_wakes_a_waiting_relay_and_counts_as_drain() {
        let signal = SessionSignal::new();
        let waiting = tokio::spawn(signal.kicked());
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished());
        signal.kick();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the kick woke the waiter")
            .expect("the waiter did not panic");
        assert!(signal.is_kicked());
        tokio::time::timeout(Duration::from_secs(5), signal.drained())
            .await
            .expect("a kicked session counts as draining");
    }

    #[tokio::test]
    async fn a_drain_does_not_kick() {
        let signal = SessionSignal::new();
        let drained = tokio::spawn(signal.drained());
        signal.drain();
        tokio::time::timeout(Duration::from_secs(5), drained)
            .await
            .expect("the drain woke the waiter")
            .expect("the waiter did not panic");
        assert!(signal.is_draining() && !signal.is_kicked());
        let kicked = signal.kicked();
        tokio::pin!(kicked);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), kicked)
                .await
                .is_err(),
            "a drain is not a kick"
        );
    }
}
