//! Unit tests of `parse`.

use super::*;

#[test]
fn every_form_parses() {
    assert_eq!(
        parse("show tenants;").expect("ok"),
        vec![Command::ShowTenants]
    );
    assert_eq!(
        parse("SHOW MIGRATIONS acme").expect("ok"),
        vec![Command::ShowMigrations {
            tenant: Some("acme".into())
        }]
    );
    assert_eq!(
        parse("CREATE TENANT 'Acme ''Corp''' ADMIN 'a@b.c' NO DDL").expect("ok"),
        vec![Command::CreateTenant {
            name: "Acme 'Corp'".into(),
            admin_email: "a@b.c".into(),
            ddl: false,
            cluster: None,
        }]
    );
    assert_eq!(
        parse("create tenant x admin 'a@b.c' on cluster eu2; SHOW CLUSTERS").expect("ok"),
        vec![
            Command::CreateTenant {
                name: "x".into(),
                admin_email: "a@b.c".into(),
                ddl: true,
                cluster: Some("eu2".into()),
            },
            Command::ShowClusters
        ]
    );
    assert_eq!(
        parse("ADD CLUSTER eu2_r1 HOST '10.0.0.3' PORT 5433 REPLICA OF eu2 SSLMODE verify-full SSLROOTCERT '/etc/ca.crt'")
            .expect("ok"),
        vec![Command::AddCluster(crate::clusters::ops::AddCluster {
            name: "eu2_r1".into(),
            host: "10.0.0.3".into(),
            port: 5433,
            database: None,
            admin_user: None,
            sslmode: Some(crate::config::SslMode::VerifyFull),
            sslrootcert: Some("/etc/ca.crt".into()),
            sslcert: None,
            sslkey: None,
            replica_of: Some("eu2".into()),
        })]
    );
    for bad in [
        "ADD CLUSTER eu2",
        "ADD CLUSTER eu2 HOST h PORT x",
        "ADD CLUSTER eu2 HOST h SSLMODE sometimes",
        "ADD CLUSTER eu2 HOST h REPLICA",
        "CREATE TENANT x ADMIN 'a@b.c' ON CLUSTER",
    ] {
        let err = parse(bad).expect_err(bad);
        assert!(err.hint.contains("CLUSTER"), "{bad}: {err:?}");
    }
    assert_eq!(
        parse("migrate tenants dry run").expect("ok"),
        vec![Command::Migrate {
            tenant: None,
            dry_run: true
        }]
    );
    assert_eq!(
        parse("MIGRATE TENANT \"acme\"").expect("ok"),
        vec![Command::Migrate {
            tenant: Some("acme".into()),
            dry_run: false
        }]
    );
    assert_eq!(
        parse("DROP TENANT acme CONFIRM 'acme'; RELOAD; -- done\nHELP").expect("ok"),
        vec![
            Command::DropTenant {
                tenant: "acme".into(),
                confirm: Some("acme".into())
            },
            Command::Reload,
            Command::Help
        ]
    );
    assert_eq!(parse("  ;  ").expect("ok"), vec![]);
    assert_eq!(
        parse("PAUSE").expect("ok"),
        vec![Command::Pause { tenant: None }]
    );
    assert_eq!(
        parse("pause acme; resume acme; RESUME; RESUME TENANT acme; SHOW STATS; SHUTDOWN")
            .expect("ok"),
        vec![
            Command::Pause {
                tenant: Some("acme".into())
            },
            Command::Unpause {
                tenant: Some("acme".into())
            },
            Command::Unpause { tenant: None },
            Command::ResumeTenant {
                tenant: "acme".into()
            },
            Command::ShowStats,
            Command::Shutdown
        ]
    );
}

#[test]
fn malformed_commands_get_a_hint() {
    let err = parse("SHOW TENANT").expect_err("bad");
    assert!(err.hint.contains("SHOW TENANTS"), "{err:?}");
    let err = parse("CREATE TENANT 'x'").expect_err("bad");
    assert!(err.hint.contains("ADMIN"), "{err:?}");
    let err = parse("SELECT 1").expect_err("bad");
    assert!(err.message.contains("unknown admin command"));
    assert!(err.hint.contains("HELP"));
    let err = parse("SHOW TENANTS extra").expect_err("bad");
    assert!(err.hint.contains("SHOW"), "{err:?}");
    assert!(parse("CREATE TENANT 'unterminated").is_err());
}

#[test]
fn token_and_user_commands_parse() {
    assert_eq!(
        parse("show logins; REVOKE TOKEN 'a-b c' ; revoke token j1 sessions").expect("ok"),
        vec![
            Command::ShowLogins,
            Command::RevokeToken {
                jti: "a-b c".into(),
                sessions: false
            },
            Command::RevokeToken {
                jti: "j1".into(),
                sessions: true
            },
        ]
    );
    assert_eq!(
        parse("REVOKE USER 'o''brien@x.com' SESSIONS; REVOKE USER \"a@b.c\"").expect("ok"),
        vec![
            Command::RevokeUser {
                email: "o'brien@x.com".into(),
                sessions: true
            },
            Command::RevokeUser {
                email: "a@b.c".into(),
                sessions: false
            },
        ]
    );
    assert_eq!(
        parse("disable user 'a@b.c'; ENABLE USER 'a@b.c'").expect("ok"),
        vec![
            Command::DisableUser {
                email: "a@b.c".into()
            },
            Command::EnableUser {
                email: "a@b.c".into()
            },
        ]
    );
}

#[test]
fn moves_are_parsed_with_their_forms_as_hints() {
    assert_eq!(
        parse("MOVE TENANT acme TO b DRY RUN; move tenant 'Acme Co' to b offline; SHOW MOVES")
            .expect("ok"),
        vec![
            Command::MoveTenant {
                tenant: "acme".into(),
                cluster: "b".into(),
                offline: false,
                dry_run: true
            },
            Command::MoveTenant {
                tenant: "Acme Co".into(),
                cluster: "b".into(),
                offline: true,
                dry_run: false
            },
            Command::ShowMoves,
        ]
    );
    assert_eq!(
        parse("CANCEL MOVE acme; FINISH MOVE acme").expect("ok"),
        vec![
            Command::CancelMove {
                tenant: "acme".into()
            },
            Command::FinishMove {
                tenant: "acme".into()
            },
        ]
    );
    for bad in [
        "MOVE TENANT acme",
        "MOVE acme TO b",
        "CANCEL acme",
        "FINISH MOVE",
    ] {
        let e = parse(bad).expect_err(bad);
        assert!(e.hint.contains("MOVE"), "{bad}: {e:?}");
    }
}

#[test]
fn tenant_limits_are_set_and_reset() {
    let set = |tenant: &str, limit, ms| Command::AlterTenantLimits {
        tenant: tenant.into(),
        changes: vec![(limit, ms)],
    };
    for text in [
        "ALTER TENANT acme SET statement_timeout = '5s'",
        "alter tenant acme set statement_timeout='5s'",
        "ALTER TENANT acme SET statement_timeout=5s",
        "ALTER TENANT acme SET statement_timeout TO 5000",
        "ALTER TENANT acme SET STATEMENT_TIMEOUT = '5 s'",
    ] {
        assert_eq!(
            parse(text).expect(text),
            vec![set("acme", Limit::StatementTimeout, Some(5_000))],
            "{text}"
        );
    }
    assert_eq!(
        parse("ALTER TENANT 'Acme Co' SET idle_in_transaction_session_timeout = 0; SHOW LIMITS")
            .expect("ok"),
        vec![
            set("Acme Co", Limit::IdleInTransactionTimeout, Some(0)),
            Command::ShowLimits
        ]
    );
    assert_eq!(
        parse("ALTER TENANT acme SET transaction_timeout TO DEFAULT").expect("ok"),
        vec![set("acme", Limit::TransactionTimeout, None)]
    );
    assert_eq!(
        parse("ALTER TENANT acme RESET lock_timeout").expect("ok"),
        vec![set("acme", Limit::LockTimeout, None)]
    );
    assert_eq!(
        parse("ALTER TENANT acme RESET ALL").expect("ok"),
        vec![Command::AlterTenantLimits {
            tenant: "acme".into(),
            changes: Limit::ALL.iter().map(|l| (*l, None)).collect()
        }]
    );
    for (bad, hint) in [
        (
            "ALTER TENANT acme SET work_mem = '4MB'",
            "statement_timeout",
        ),
        ("ALTER TENANT acme SET statement_timeout = '5 sec'", "'5s'"),
        ("ALTER TENANT acme SET statement_timeout = '-1'", "'5s'"),
        ("ALTER TENANT acme SET statement_timeout", "ALTER TENANT"),
        ("ALTER TENANT acme SET", "ALTER TENANT"),
        ("ALTER TENANT acme RESET", "ALTER TENANT"),
        ("ALTER TENANT acme", "ALTER TENANT"),
        ("ALTER ROLE acme SET x = 1", "ALTER TENANT"),
        ("ALTER TENANT acme RESET lock_timeout now", "ALTER"),
        ("ALTER TENANT acme SET x ñé", "ALTER TENANT"),
    ] {
        let err = parse(bad).expect_err(bad);
        assert!(err.hint.contains(hint), "{bad}: {err:?}");
    }
}

#[test]
fn malformed_token_and_user_commands_get_a_hint() {
    for (bad, hint) in [
        ("REVOKE", "REVOKE TOKEN"),
        ("REVOKE TOKEN", "REVOKE TOKEN"),
        ("REVOKE TOKEN ''", "REVOKE TOKEN"),
        ("REVOKE SESSION x", "REVOKE USER"),
        ("REVOKE USER a@b.c SESSIONS NOW", "REVOKE"),
        ("DISABLE a@b.c", "DISABLE USER"),
        ("ENABLE USER", "ENABLE USER"),
        ("SHOW LOGIN", "LOGINS"),
    ] {
        let err = parse(bad).expect_err(bad);
        assert!(err.hint.contains(hint), "{bad}: {err:?}");
    }
}
