//! SHOW LOGINS: the recent refused logins of this pgtenant (a bounded ring, `login.recent_refusals`), newest
//! first, then one row per reason with its count since start.

use super::{Reply, Table};
use crate::proxy::Proxy;
use std::time::{SystemTime, UNIX_EPOCH};

/// `2026-12-02T15:04:05Z`.
pub fn utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

pub fn logins(proxy: &Proxy) -> Reply {
    let mut table = Table::new(&[
        "at", "reason", "sqlstate", "address", "user", "tenant", "jti", "kid", "count",
    ]);
    for r in proxy.logins.recent() {
        table.row(vec![
            Some(utc(r.at)),
            Some(r.reason.as_str().to_string()),
            Some(r.sqlstate),
            Some(r.peer.to_string()),
            Some(r.user_name),
            r.tenant,
            r.jti,
            r.kid,
            None,
        ]);
    }
    // Totals since start: `at` empty, one row per reason that happened, and the accepted logins.
    for (reason, count) in proxy.logins.refused() {
        if count > 0 {
            let mut row = vec![None; 9];
            row[1] = Some(reason.as_str().to_string());
            row[8] = Some(count.to_string());
            table.row(row);
        }
    }
    let mut row = vec![None; 9];
    row[1] = Some("accepted".to_string());
    row[8] = Some(proxy.logins.accepted().to_string());
    table.row(row);
    Reply::Rows {
        table,
        tag: "SHOW".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_formats_like_rfc3339() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(1_795_000_000)),
            "2026-11-18T11:06:40Z"
        );
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}
