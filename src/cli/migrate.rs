//! `pgtenant migrate`: the shared schema, the fan-out over the tenants, status, dry run and repair.

use super::args::MigrateTarget;
use super::connect_admin;
use anyhow::{bail, Result};
use pgtenant::config::Config;

pub(crate) async fn migrate(config: &Config, target: MigrateTarget) -> Result<()> {
    use pgtenant::fanout::progress::Bar;
    use pgtenant::fanout::{FanOutOptions, TenantMigrator};
    match target {
        MigrateTarget::Shared => {
            let mut admin = connect_admin(config).await?;
            let applied =
                pgtenant::migrate::apply_shared(&mut admin, &config.tenancy.shared_migrations_dir)
                    .await?;
            println!("shared migrations applied: {applied:?}");
        }
        MigrateTarget::Tenants {
            concurrency,
            stop_after_failures,
            canary,
            tenant,
        } => {
            let concurrency = concurrency.unwrap_or(config.migrations.concurrency);
            let migrator = TenantMigrator::new(config, concurrency)?;
            let options = FanOutOptions {
                concurrency,
                stop_after_failures,
                canary,
                only: tenant,
            };
            let report = migrator.run(&options, &Bar::new()).await?;
            println!("{report}");
            for (slug, failure) in &report.failed {
                println!("FAILED {slug}: {failure}");
            }
            for slug in &report.busy {
                println!("BUSY {slug}: another migrator holds its lock");
            }
            for (slug, cluster) in &report.pending {
                println!("PENDING {slug}: cluster {cluster} is down; the next run migrates it");
            }
            if !report.ok() {
                bail!("not every tenant was migrated");
            }
        }
        MigrateTarget::Status => {
            let migrator = TenantMigrator::new(config, 1)?;
            let latest = migrator.latest();
            let rows = migrator.status(None).await?;
            println!(
                "{:<30} {:<24} {:<10} {:>7}  {:<12} pending",
                "tenant", "schema", "status", "version", "cluster"
            );
            let mut behind = 0;
            for row in &rows {
                if !row.pending.is_empty() {
                    behind += 1;
                }
                let version = row
                    .version
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into());
                let pending = match &row.cluster_down {
                    None => format!("{:?}", row.pending),
                    Some(e) => format!("unknown: cluster down ({e})"),
                };
                println!(
                    "{:<30} {:<24} {:<10} {:>7}  {:<12} {pending}",
                    row.slug, row.schema, row.status, version, row.cluster
                );
            }
            let latest = latest.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
            println!(
                "{} tenants, latest version {latest}, {behind} behind",
                rows.len()
            );
        }
        MigrateTarget::DryRun { tenant } => {
            let migrator = TenantMigrator::new(config, 1)?;
            let plan = migrator.dry_run(tenant.as_deref()).await?;
            for (tenant, files) in &plan {
                let names: Vec<String> = files
                    .iter()
                    .map(|m| format!("V{}__{}", m.version, m.name))
                    .collect();
                println!(
                    "{} ({}): {}",
                    tenant.tenant.slug,
                    tenant.tenant.schema,
                    names.join(", ")
                );
            }
            println!("{} tenants would be migrated", plan.len());
        }
        MigrateTarget::Repair => {
            let migrator = TenantMigrator::new(config, 1)?;
            let changed = migrator.repair().await?;
            let mut admin = connect_admin(config).await?;
            let shared =
                pgtenant::migrate::repair_shared(&mut admin, &config.tenancy.shared_migrations_dir)
                    .await?;
            println!("accepted new checksums: {changed} tenant history rows, {shared} shared history rows");
        }
    }
    Ok(())
}
