//! Unit tests of `ops`.

use super::*;
use crate::auth::revocation::Revocation;

#[test]
fn move_announcements_round_trip() {
    for event in [
        DirectoryEvent::MovePause {
            role: "org_ab12".into(),
            lease_ms: 35_000,
        },
        DirectoryEvent::MoveSwitched {
            role: "org_ab12".into(),
            from: crate::names::ClusterName::new("default"),
            to: crate::names::ClusterName::new("b"),
        },
        DirectoryEvent::MoveResume {
            role: "org_ab12".into(),
        },
    ] {
        assert_eq!(DirectoryEvent::parse(&event.payload()), event);
    }
    assert_eq!(
        DirectoryEvent::parse("move pause soon org_x"),
        DirectoryEvent::Changed
    );
    assert_eq!(
        DirectoryEvent::parse("move resume "),
        DirectoryEvent::Changed
    );
}

#[test]
fn directory_events_round_trip() {
    let id = Uuid::new_v4();
    let closed = DirectoryEvent::Closed {
        tenant_id: id,
        role: "tenant_abc".into(),
        why: "suspended".into(),
    };
    assert_eq!(DirectoryEvent::parse(&closed.payload()), closed);
    assert_eq!(DirectoryEvent::parse("changed"), DirectoryEvent::Changed);
    assert_eq!(
        DirectoryEvent::parse("closed not-a-uuid x"),
        DirectoryEvent::Changed
    );
}

#[test]
fn revocation_events_round_trip() {
    let user_id = Uuid::new_v4();
    for event in [
        DirectoryEvent::Revoked(Revocation::Token {
            jti: "a jti with spaces".into(),
            end_sessions: true,
        }),
        DirectoryEvent::Revoked(Revocation::User {
            user_id,
            before: 1_800_000_000,
            end_sessions: false,
        }),
        DirectoryEvent::RevocationsChanged,
        DirectoryEvent::UserDisabled { user_id },
        DirectoryEvent::ClustersChanged,
    ] {
        assert_eq!(DirectoryEvent::parse(&event.payload()), event);
    }
    // What the trigger of shared migration V009 sends.
    assert_eq!(
        DirectoryEvent::parse(&format!("revoked user true {user_id} 1800000000")),
        DirectoryEvent::Revoked(Revocation::User {
            user_id,
            before: 1_800_000_000,
            end_sessions: true
        })
    );
    // Garbled revocations reload rather than pass unnoticed.
    assert_eq!(
        DirectoryEvent::parse("revoked user true nope 12"),
        DirectoryEvent::RevocationsChanged
    );
    assert_eq!(
        DirectoryEvent::parse("revoked jti true "),
        DirectoryEvent::RevocationsChanged
    );
}
