//! Unit tests of the session stages.

use super::login::plaintext_password_refused;
use super::settings::parse_options;

#[test]
fn plaintext_tokens_only_from_loopback_unless_allowed() {
    let lan: std::net::IpAddr = "10.1.2.3".parse().expect("ip");
    let mapped_loopback: std::net::IpAddr = "::ffff:127.0.0.1".parse().expect("ip");
    assert!(plaintext_password_refused(false, lan, false));
    assert!(!plaintext_password_refused(true, lan, false));
    assert!(!plaintext_password_refused(false, lan, true));
    assert!(!plaintext_password_refused(
        false,
        "127.0.0.1".parse().expect("ip"),
        false
    ));
    assert!(!plaintext_password_refused(
        false,
        "::1".parse().expect("ip"),
        false
    ));
    assert!(!plaintext_password_refused(false, mapped_loopback, false));
}

#[test]
fn options_are_parsed_like_postgres() {
    let parsed =
        parse_options("-c search_path=a,b --statement-timeout=5s -cwork_mem=4MB -c x=with\\ space")
            .expect("parses");
    assert_eq!(
        parsed,
        vec![
            ("search_path".to_string(), "a,b".to_string()),
            ("statement_timeout".to_string(), "5s".to_string()),
            ("work_mem".to_string(), "4MB".to_string()),
            ("x".to_string(), "with space".to_string()),
        ]
    );
    assert!(parse_options("-c novalue").is_err());
}
