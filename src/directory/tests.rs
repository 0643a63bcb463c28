//! Unit tests of `directory`.

use super::*;

fn member(slug: &str) -> User {
    User {
        id: Uuid::new_v4(),
        email: "a@example.com".into(),
        disabled: false,
        role: "member".into(),
        tenant: std::sync::Arc::new(Tenant {
            id: Uuid::new_v4(),
            name: slug.to_uppercase(),
            slug: slug.into(),
            schema: SchemaName::new(format!("org_{slug}")),
            role: RoleName::new(format!("tenant_{slug}")),
            status: TenantStatus::Active,
            cluster: ClusterName::default_cluster(),
            ddl_allowed: true,
            pool_mode: None,
            virtual_schema: None,
            limits: Default::default(),
        }),
    }
}

#[test]
fn one_membership_needs_no_choice() {
    let user = choose_membership(vec![member("acme")], &OrgClaim::NotConfigured, "", "app")
        .expect("chosen");
    assert_eq!(user.tenant.slug, "acme");
    assert_eq!(
        choose_membership(Vec::new(), &OrgClaim::NotConfigured, "", "app").unwrap_err(),
        MembershipError::NoSuchUser
    );
}

#[test]
fn several_memberships_are_told_apart_by_database_name() {
    let both = || vec![member("acme"), member("globex")];
    let by_slug = choose_membership(both(), &OrgClaim::NotConfigured, "", "globex").unwrap();
    assert_eq!(by_slug.tenant.slug, "globex");
    let by_schema = choose_membership(both(), &OrgClaim::NotConfigured, "", "org_acme").unwrap();
    assert_eq!(by_schema.tenant.slug, "acme");
    let err = choose_membership(both(), &OrgClaim::NotConfigured, "", "app").unwrap_err();
    assert_eq!(
        err,
        MembershipError::Ambiguous {
            slugs: vec!["acme".into(), "globex".into()]
        }
    );
    assert_eq!(err.sqlstate(), "28000");
}

#[test]
fn the_org_claim_picks_by_id_or_slug_and_must_match() {
    let users = vec![member("acme"), member("globex")];
    let globex_id = users[1].tenant.id.to_string().to_uppercase();
    let chosen =
        choose_membership(users.clone(), &OrgClaim::Named(globex_id), "org_id", "app").unwrap();
    assert_eq!(chosen.tenant.slug, "globex");
    let chosen = choose_membership(
        users.clone(),
        &OrgClaim::Named("acme".into()),
        "org_id",
        "globex",
    )
    .unwrap();
    assert_eq!(
        chosen.tenant.slug, "acme",
        "the claim wins over the database name"
    );
    assert_eq!(
        choose_membership(
            users.clone(),
            &OrgClaim::Named("initech".into()),
            "org_id",
            "app"
        )
        .unwrap_err(),
        MembershipError::NotAMember
    );
    let missing = choose_membership(users, &OrgClaim::Missing, "org_id", "acme").unwrap_err();
    assert_eq!(missing.sqlstate(), "28P01");
    assert!(missing.to_string().contains("\"org_id\""), "{missing}");
}
