//! MIGRATE TENANTS / MIGRATE TENANT x [DRY RUN]: the fan-out engine, with progress as NOTICE lines.

use super::{Notices, Reply, Table};
use crate::fanout::progress::Lines;
use crate::fanout::{FanOutOptions, TenantMigrator};
use crate::migrate::MigrateError;
use crate::protocol::PgError;
use crate::proxy::Proxy;
use std::time::Duration;

fn migrate_error(e: MigrateError) -> PgError {
    crate::error::UserFacing::to_error(&e)
}

fn text(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

pub async fn run(
    proxy: &Proxy,
    tenant: Option<String>,
    dry_run: bool,
    notices: Notices,
) -> Result<Reply, PgError> {
    let config = proxy.config();
    let migrator = TenantMigrator::with_clusters(
        &config,
        config.migrations.concurrency,
        (*proxy.clusters.current()).clone(),
    )
    .map_err(migrate_error)?;
    if dry_run {
        let plan = migrator
            .dry_run(tenant.as_deref())
            .await
            .map_err(migrate_error)?;
        let mut table = Table::new(&["tenant", "schema", "would_apply"]);
        for (t, files) in &plan {
            let names: Vec<String> = files
                .iter()
                .map(|m| format!("V{}__{}", m.version, m.name))
                .collect();
            table.row(vec![
                text(&t.tenant.slug),
                text(&t.tenant.schema),
                text(names.join(", ")),
            ]);
        }
        return Ok(Reply::Rows {
            table,
            tag: format!("DRY RUN {}", plan.len()),
        });
    }
    let progress = Lines::new(Duration::from_secs(1), move |line| {
        let _ = notices.send(line);
    });
    let options = FanOutOptions {
        concurrency: config.migrations.concurrency,
        only: tenant,
        ..FanOutOptions::default()
    };
    let report = migrator
        .run(&options, &progress)
        .await
        .map_err(migrate_error)?;
    let mut table = Table::new(&["tenant", "result", "detail"]);
    for (slug, failure) in &report.failed {
        table.row(vec![text(slug), text("failed"), text(failure)]);
    }
    for slug in &report.busy {
        table.row(vec![
            text(slug),
            text("busy"),
            text("another migrator holds its lock"),
        ]);
    }
    for (slug, cluster) in &report.pending {
        table.row(vec![
            text(slug),
            text("pending"),
            text(format!(
                "cluster {cluster} is down; the next run migrates it"
            )),
        ]);
    }
    for (cluster, c) in &report.clusters {
        if let Some(why) = &c.down {
            table.row(vec![
                text(format!("(cluster {cluster})")),
                text("down"),
                text(format!("{why}; {} tenants pending", c.pending)),
            ]);
        }
    }
    table.row(vec![
        text("(all)"),
        text(if report.ok() { "ok" } else { "incomplete" }),
        text(&report),
    ]);
    Ok(Reply::Rows {
        table,
        tag: format!("MIGRATE {}", report.migrated),
    })
}
