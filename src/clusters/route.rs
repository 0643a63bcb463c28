//! Which cluster a session's server connections go to: the tenant's primary, or, when the session asks for
//! it, one of that primary's replicas.
//!
//! A session asks with the startup option `pgtenant.target_session_attrs` (libpq's values: `any`,
//! `read-write`, `primary`, `prefer-standby`, `standby`, `read-only`; e.g. `PGOPTIONS='-c
//! pgtenant.target_session_attrs=standby'`), or with a database name ending with `replicas.database_suffix`
//! (default `.ro`: `app.ro`, `acme.ro`), which means `replicas.database_suffix_target` (default
//! `prefer-standby`). The option wins over the suffix.
//!
//! A replica takes the session if it is `active`, measured within the last intervals and at most
//! `replicas.max_replica_lag_ms` behind (see [`super::replicas`]); of several, the least behind (then the
//! first name). None fits: `prefer-standby` gets the primary, `standby` / `read-only` is refused with
//! 57P03 saying why each replica was skipped. The choice holds for the session: in transaction pooling every
//! transaction goes to the replica chosen at login.

use super::replicas::ReplicaMonitor;
use super::{ClusterEntry, ClusterName, ClusterSet, ClusterStatus};
use crate::config::{ReplicasConfig, TargetSessionAttrs};
use std::sync::Arc;
use std::time::Duration;

/// The startup option (or parameter) naming what a session wants.
pub const TARGET_SESSION_ATTRS_PARAMETER: &str = "pgtenant.target_session_attrs";

/// What a login asked for: the database name without the replica suffix, and where to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub database: String,
    pub attrs: TargetSessionAttrs,
}

/// Reads the request from the database name and the value of [`TARGET_SESSION_ATTRS_PARAMETER`], if given.
/// An unknown value is an error naming the ones understood.
pub fn request(
    database: &str,
    option: Option<&str>,
    config: &ReplicasConfig,
) -> Result<Request, String> {
    let (database, by_suffix) = match database.strip_suffix(config.database_suffix.as_str()) {
        Some(base) if !config.database_suffix.is_empty() && !base.is_empty() => {
            (base.to_string(), Some(config.database_suffix_target))
        }
        _ => (database.to_string(), None),
    };
    let attrs = match option {
        Some(text) => TargetSessionAttrs::parse(text).ok_or_else(|| {
            format!(
                "invalid value for {TARGET_SESSION_ATTRS_PARAMETER}: \"{text}\" (any, read-write, primary, \
                 prefer-standby, standby, read-only)"
            )
        })?,
        None => by_suffix.unwrap_or_default(),
    };
    Ok(Request { database, attrs })
}

/// Where a session goes.
#[derive(Debug, Clone)]
pub enum Route {
    Primary,
    Replica {
        entry: Arc<ClusterEntry>,
        lag_ms: u64,
    },
}

/// Picks the replica of `primary` for a session that asked for one; `Err` says why each was skipped.
pub fn pick_replica(
    clusters: &ClusterSet,
    monitor: &ReplicaMonitor,
    primary: &ClusterName,
    max_lag: Duration,
) -> Result<(Arc<ClusterEntry>, u64), String> {
    let mut skipped = Vec::new();
    let mut best: Option<(u64, Arc<ClusterEntry>)> = None;
    for replica in clusters.replicas_of(primary) {
        if replica.row.status != ClusterStatus::Active {
            skipped.push(format!(
                "{}: {}",
                replica.name(),
                replica.row.status.as_str()
            ));
            continue;
        }
        match monitor.usable(replica.name(), max_lag) {
            Ok(lag) => {
                if best.as_ref().is_none_or(|(l, _)| lag < *l) {
                    best = Some((lag, replica.clone()));
                }
            }
            Err(why) => skipped.push(format!("{}: {why}", replica.name())),
        }
    }
    match best {
        Some((lag, entry)) => Ok((entry, lag)),
        None if skipped.is_empty() => Err(format!("cluster {primary} has no replica")),
        None => Err(skipped.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_suffix_and_the_option_ask_for_a_replica() {
        let config = ReplicasConfig::default();
        let r = request("app.ro", None, &config).expect("ok");
        assert_eq!(r.database, "app");
        assert_eq!(r.attrs, TargetSessionAttrs::PreferStandby);
        let r = request("acme", Some("standby"), &config).expect("ok");
        assert_eq!(
            (r.database.as_str(), r.attrs),
            ("acme", TargetSessionAttrs::Standby)
        );
        let r = request("app.ro", Some("read-write"), &config).expect("ok");
        assert_eq!(
            (r.database.as_str(), r.attrs),
            ("app", TargetSessionAttrs::Any)
        );
        let r = request("app", None, &config).expect("ok");
        assert_eq!(r.attrs, TargetSessionAttrs::Any);
        assert_eq!(request(".ro", None, &config).expect("ok").database, ".ro");
        assert!(request("app", Some("sometimes"), &config)
            .unwrap_err()
            .contains("prefer-standby"));
        let off = ReplicasConfig {
            database_suffix: String::new(),
            ..ReplicasConfig::default()
        };
        assert_eq!(
            request("app.ro", None, &off).expect("ok").database,
            "app.ro"
        );
    }
}
