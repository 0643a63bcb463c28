//! Quantities as PostgreSQL prints them, for the admin channel's tables and the CLI's messages.

/// 1536 → "1536 bytes", 10 MB → "10 MB", as pg_size_pretty.
pub fn pretty_size(bytes: i64) -> String {
    const UNITS: &[&str] = &["bytes", "kB", "MB", "GB", "TB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size.abs() >= 10.0 * 1024.0 && unit + 1 < UNITS.len() {
        size /= 1024.0;
        unit += 1;
    }
    format!("{:.0} {}", size, UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_pretty() {
        assert_eq!(pretty_size(8192), "8192 bytes");
        assert_eq!(pretty_size(16 * 1024 * 1024), "16 MB");
        assert_eq!(pretty_size(40 * 1024), "40 kB");
    }
}
