//! `pgtenant tenant`: list, suspend, resume, drop and check tenants, their limits, and their moves to
//! another cluster.

use super::args::TenantAction;
use super::connect_admin;
use anyhow::{bail, Context, Result};
use pgtenant::config::Config;

/// A mover whose progress lines go to stdout, as they happen.
fn mover<'a>(
    admin: &'a tokio_postgres::Client,
    clusters: &'a pgtenant::clusters::ClusterSet,
    config: &'a Config,
) -> pgtenant::moves::Mover<'a> {
    fn say(line: &str) {
        println!("{line}");
    }
    pgtenant::moves::Mover {
        directory: admin,
        clusters,
        config,
        progress: &say,
    }
}

fn print_move(report: &pgtenant::moves::MoveReport) {
    for line in &report.lines {
        println!("{line}");
    }
    println!(
        "tenant {}: {} (from {} to {})",
        report.slug,
        report.outcome(),
        report.source,
        report.target
    );
}

pub(crate) async fn tenant_action(config: &Config, action: TenantAction) -> Result<()> {
    use pgtenant::tenancy::ops;
    let mut admin = connect_admin(config).await?;
    let clusters = pgtenant::clusters::load_with(&admin, config).await?;
    match action {
        TenantAction::List => {
            println!(
                "{:<30} {:<20} {:<10} {:>7} {:>12}  cluster",
                "slug", "schema", "status", "version", "bytes"
            );
            for l in ops::list_tenants(&admin, &clusters).await? {
                let version = l
                    .version
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into());
                let bytes = l
                    .size_bytes
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:<30} {:<20} {:<10} {:>7} {:>12}  {}",
                    l.tenant.slug,
                    l.tenant.schema,
                    l.tenant.status,
                    version,
                    bytes,
                    l.tenant.cluster
                );
            }
        }
        TenantAction::Suspend { tenant } => {
            let t = ops::suspend(&mut admin, &tenant).await?;
            println!("suspended {}", t.slug);
        }
        TenantAction::Resume { tenant } => {
            let t = ops::resume(&mut admin, &clusters, &tenant).await?;
            println!("resumed {}", t.slug);
        }
        TenantAction::Drop { tenant, confirm } => match confirm {
            None => {
                let t = ops::archive(&mut admin, &clusters, &tenant).await?;
                println!(
                    "archived {} (data kept; drop for good with --confirm {})",
                    t.slug, t.slug
                );
            }
            Some(word) => {
                let t = ops::drop_tenant(&mut admin, &clusters, &tenant, &word).await?;
                println!("dropped {} (schema {}, role {})", t.slug, t.schema, t.role);
            }
        },
        TenantAction::Limits => {
            use pgtenant::limits::Limit;
            let defaults = &config.limits;
            print!("{:<30}", "tenant");
            for limit in Limit::ALL {
                print!(" {:<38}", limit.setting_name());
            }
            println!();
            for (tenant, own) in pgtenant::tenancy::limits::list_limits(&admin).await? {
                print!("{:<30}", tenant.slug);
                for limit in Limit::ALL {
                    let shown = pgtenant::tenancy::limits::describe(
                        own.get(limit),
                        defaults.default_of(limit),
                    );
                    print!(" {shown:<38}");
                }
                println!();
            }
        }
        TenantAction::Set {
            tenant,
            setting,
            value,
        } => {
            let limit = limit_named(&setting)?;
            let ms = pgtenant::limits::parse_ms(&value).map_err(anyhow::Error::msg)?;
            let t = pgtenant::tenancy::limits::set_limits(&admin, &tenant, &[(limit, Some(ms))])
                .await?;
            println!(
                "{}: {} = {} for its new sessions",
                t.slug,
                limit.setting_name(),
                pgtenant::limits::format_ms(ms)
            );
        }
        TenantAction::Reset { tenant, setting } => {
            use pgtenant::limits::Limit;
            let changes: Vec<(Limit, Option<u32>)> = if setting.eq_ignore_ascii_case("all") {
                Limit::ALL.iter().map(|l| (*l, None)).collect()
            } else {
                vec![(limit_named(&setting)?, None)]
            };
            let t = pgtenant::tenancy::limits::set_limits(&admin, &tenant, &changes).await?;
            println!(
                "{}: {setting} back to the default for its new sessions",
                t.slug
            );
        }
        TenantAction::Move {
            tenant,
            cluster,
            dry_run,
            offline,
            pause_timeout_ms,
        } => {
            let options = pgtenant::moves::MoveOptions {
                dry_run,
                offline,
                pause_timeout: std::time::Duration::from_millis(pause_timeout_ms),
                ..Default::default()
            };
            let report = mover(&admin, &clusters, config)
                .run(
                    &tenant,
                    &pgtenant::names::ClusterName::new(cluster),
                    &options,
                )
                .await?;
            print_move(&report);
        }
        TenantAction::CancelMove { tenant } => {
            print_move(&mover(&admin, &clusters, config).cancel(&tenant).await?);
        }
        TenantAction::FinishMove { tenant } => {
            print_move(&mover(&admin, &clusters, config).finish(&tenant).await?);
        }
        TenantAction::Moves => {
            println!(
                "{:<30} {:<12} {:<12} {:<12} {:<24} {:>8}  note",
                "tenant", "source", "target", "state", "updated", "pause_ms"
            );
            for m in pgtenant::moves::list_moves(&admin).await? {
                println!(
                    "{:<30} {:<12} {:<12} {:<12} {:<24} {:>8}  {}",
                    m.slug,
                    m.source,
                    m.target,
                    m.state.as_str(),
                    m.updated_at,
                    m.pause_ms.map(|ms| ms.to_string()).unwrap_or_default(),
                    m.note.unwrap_or_default()
                );
            }
        }
        TenantAction::Check => {
            let results =
                ops::check_tenants_with(&admin, config, &clusters, config.migrations.concurrency)
                    .await?;
            let mut unhealthy = 0;
            for h in &results {
                match &h.error {
                    None => println!(
                        "{:<30} healthy ({} ms)",
                        h.tenant.slug,
                        h.elapsed.as_millis()
                    ),
                    Some(e) => {
                        unhealthy += 1;
                        println!("{:<30} UNHEALTHY: {e}", h.tenant.slug);
                    }
                }
            }
            if unhealthy > 0 {
                bail!("{unhealthy} of {} tenants unhealthy", results.len());
            }
        }
    }
    Ok(())
}

fn limit_named(name: &str) -> Result<pgtenant::limits::Limit> {
    pgtenant::limits::Limit::parse(name).with_context(|| {
        format!("unknown tenant setting {name:?}: statement_timeout, lock_timeout, idle_in_transaction_session_timeout or transaction_timeout")
    })
}
