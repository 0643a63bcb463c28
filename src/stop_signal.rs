//! The process's stop signals: `pgtenant serve` and `pgtenant dev` stop at Ctrl-C (SIGINT) or SIGTERM.

/// Completes at Ctrl-C (SIGINT) or SIGTERM.
pub async fn wait_for_stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}
