//! MOVE TENANT, CANCEL MOVE, FINISH MOVE and SHOW MOVES: the same functions as `pgtenant tenant move |
//! cancel-move | finish-move | moves` (see `crate::moves`). Progress lines come as NOTICEs.

use super::{db_error, Notices, Reply, Table};
use crate::moves::{list_moves, MoveError, MoveOptions, MoveReport, Mover};
use crate::names::ClusterName;
use crate::protocol::PgError;
use crate::proxy::Proxy;

fn text(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

/// The error a client of the admin channel gets for a move that did not go through.
pub fn move_error(e: MoveError) -> PgError {
    crate::error::UserFacing::to_error(&e)
}

fn report_rows(report: MoveReport, tag: &str) -> Reply {
    let mut table = Table::new(&["tenant", "source", "target", "state", "pause_ms", "report"]);
    let pause = report
        .pause
        .map(|p| p.as_millis().to_string())
        .unwrap_or_default();
    table.row(vec![
        text(&report.slug),
        text(&report.source),
        text(&report.target),
        text(report.outcome()),
        Some(pause),
        text(report.lines.join("; ")),
    ]);
    Reply::Rows {
        table,
        tag: tag.into(),
    }
}

/// Runs `work` with a [`Mover`] whose progress lines go to `notices`.
async fn with_mover<T>(
    proxy: &Proxy,
    notices: &Notices,
    work: impl AsyncFnOnce(&Mover<'_>) -> Result<T, MoveError>,
) -> Result<T, PgError> {
    let config = proxy.config();
    proxy
        .clusters
        .reload(&proxy.directory, &config)
        .await
        .map_err(|e| move_error(e.into()))?;
    let clusters = proxy.clusters.current();
    let admin = proxy.directory.admin().await.map_err(db_error)?;
    let say = |line: &str| {
        let _ = notices.send(line.to_string());
    };
    let mover = Mover {
        directory: &admin,
        clusters: &clusters,
        config: &config,
        progress: &say,
    };
    work(&mover).await.map_err(move_error)
}

pub async fn move_tenant(
    proxy: &Proxy,
    tenant: &str,
    cluster: &str,
    options: &MoveOptions,
    notices: &Notices,
) -> Result<Reply, PgError> {
    let target = ClusterName::new(cluster);
    let report = with_mover(proxy, notices, async |mover| {
        mover.run(tenant, &target, options).await
    })
    .await?;
    Ok(report_rows(report, "MOVE"))
}

pub async fn cancel(proxy: &Proxy, tenant: &str, notices: &Notices) -> Result<Reply, PgError> {
    let report = with_mover(proxy, notices, async |mover| mover.cancel(tenant).await).await?;
    Ok(report_rows(report, "CANCEL MOVE"))
}

pub async fn finish(proxy: &Proxy, tenant: &str, notices: &Notices) -> Result<Reply, PgError> {
    let report = with_mover(proxy, notices, async |mover| mover.finish(tenant).await).await?;
    Ok(report_rows(report, "FINISH MOVE"))
}

pub async fn show(proxy: &Proxy) -> Result<Reply, PgError> {
    let admin = proxy.directory.admin().await.map_err(db_error)?;
    let moves = list_moves(&admin).await.map_err(move_error)?;
    let mut table = Table::new(&[
        "tenant", "source", "target", "state", "started", "updated", "pause_ms", "note",
    ]);
    for m in moves {
        table.row(vec![
            text(&m.slug),
            text(&m.source),
            text(&m.target),
            text(m.state.as_str()),
            text(&m.started_at),
            text(&m.updated_at),
            m.pause_ms.map(|ms| ms.to_string()),
            m.note,
        ]);
    }
    Ok(Reply::Rows {
        table,
        tag: "SHOW".into(),
    })
}
