//! Unit tests of `config`.

use super::*;

#[test]
fn debug_output_never_shows_secrets() {
    let mut config = Config::default();
    config.upstream.admin_password = Some("admin-pass-xyz".into());
    config.upstream.server_secret = Some("server-secret-xyz".into());
    config.auth.hs_secret = Some("jwt-secret-xyz".into());
    config.clusters.insert(
        "eu2".into(),
        ClusterSecrets {
            admin_password: Some(Secret::new("cluster-pass-xyz")),
        },
    );
    let printed = format!("{config:?} {:?}", config.describe());
    assert!(printed.contains("clusters.eu2.admin_password"), "{printed}");
    for secret in [
        "admin-pass-xyz",
        "server-secret-xyz",
        "jwt-secret-xyz",
        "cluster-pass-xyz",
    ] {
        assert!(!printed.contains(secret), "{secret} leaked into {printed}");
    }
}

#[test]
fn example_config_parses_and_validates() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pgtenant.toml");
    let text = std::fs::read_to_string(&path).expect("example config present");
    let mut config: Config = toml::from_str(&text).expect("example config parses");
    config.upstream.server_secret = Some("0123456789abcdef0123".into());
    config.validate().expect("example config validates");
    // The token-control keys are shown with their defaults.
    let defaults = Config::default();
    assert_eq!(
        format!("{:?}", config.login),
        format!("{:?}", defaults.login)
    );
    assert_eq!(
        config.server.max_session_secs,
        defaults.server.max_session_secs
    );
    assert_eq!(config.auth.session_expiry, defaults.auth.session_expiry);
    assert_eq!(
        config.auth.revocation_refresh_secs,
        defaults.auth.revocation_refresh_secs
    );
    // The limits section is shown with its defaults, every key of it.
    assert_eq!(config.limits, defaults.limits);
    let text_keys: Vec<&str> = text
        .lines()
        .skip_while(|l| l.trim() != "[limits]")
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .filter(|k| !k.starts_with('#'))
        .collect();
    let described: Vec<String> = config
        .describe()
        .into_iter()
        .filter_map(|(k, _)| k.strip_prefix("limits.").map(str::to_string))
        .collect();
    assert_eq!(text_keys, described, "config/pgtenant.toml [limits] keys");
}

#[test]
fn limits_are_read_and_checked() {
    let text = "[limits]\nstatement_timeout_ms = 5000\nqueue_notice_after_ms = 300\n";
    let mut config: Config = toml::from_str(text).expect("parses");
    assert_eq!(config.limits.statement_timeout_ms, 5_000);
    assert_eq!(config.limits.queue_notice_after_ms, 300);
    assert_eq!(config.limits.enforce_grace_ms, 1_000, "default kept");
    config.upstream.server_secret = Some("0123456789abcdef0123".into());
    config.validate().expect("valid");
    config.limits.transaction_timeout_ms = 3_000_000_000;
    assert!(
        matches!(config.validate(), Err(ConfigError::Invalid(m)) if m.contains("limits.transaction_timeout_ms"))
    );
    assert!(toml::from_str::<Config>("[limits]\nstatement_timeout = 5\n").is_err());
}

#[test]
fn cluster_passwords_come_from_the_environment_too() {
    std::env::set_var("PGTENANT_CLUSTER_ENV_TEST_7_ADMIN_PASSWORD", "from-env-xyz");
    let mut config = Config::default();
    config.apply_env();
    std::env::remove_var("PGTENANT_CLUSTER_ENV_TEST_7_ADMIN_PASSWORD");
    let secret = config
        .clusters
        .get("env_test_7")
        .and_then(|c| c.admin_password.as_ref())
        .map(|s| s.expose().to_string());
    assert_eq!(secret.as_deref(), Some("from-env-xyz"));
    config.upstream.server_secret = Some("0123456789abcdef0123".into());
    config.validate().expect("valid");
    config
        .clusters
        .insert("Bad-Name".into(), ClusterSecrets::default());
    assert!(config.validate().is_err());
}

#[test]
fn missing_server_secret_is_refused() {
    let config = Config::default();
    assert!(
        matches!(config.validate(), Err(ConfigError::Invalid(m)) if m.contains("server_secret"))
    );
}
