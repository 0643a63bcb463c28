//! Credentials of tenant roles. A role's password is derived from the server secret and the role name, so
//! it is never stored anywhere; PostgreSQL is given only its SCRAM verifier. [`secret_check`]: whether this
//! pgtenant's server secret is the one the tenant roles' passwords were made with.

pub mod secret_check;

use aws_lc_rs::hmac;

/// SCRAM iterations of tenant role verifiers (see [`RolePasswords::verifier_for`]).
pub const ROLE_VERIFIER_ITERATIONS: u32 = 16;

/// Derives tenant role passwords from the server secret.
#[derive(Clone)]
pub struct RolePasswords {
    key: hmac::Key,
}

impl RolePasswords {
    pub fn new(server_secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, server_secret),
        }
    }

    /// The password of `role`: hex of HMAC-SHA-256(server secret, "pgtenant role password:" + role).
    pub fn password_for(&self, role: &str) -> String {
        let mut msg = b"pgtenant role password:".to_vec();
        msg.extend_from_slice(role.as_bytes());
        hex::encode(hmac::sign(&self.key, &msg).as_ref())
    }

    /// The SCRAM-SHA-256 verifier to store for `role`, with a fresh salt.
    ///
    /// Iterations exist to slow down guessing of passwords people choose. A derived password is 256 random
    /// bits, beyond any guessing, so the verifier uses few iterations: every upstream login of a new tenant
    /// role (the migrator logs in as each of thousands) would otherwise cost a 4096-round PBKDF2.
    pub fn verifier_for(&self, role: &str) -> String {
        crate::scram::verifier(
            &self.password_for(role),
            &crate::scram::random_salt(),
            std::num::NonZeroU32::new(ROLE_VERIFIER_ITERATIONS).expect("nonzero constant"),
        )
    }
}

impl std::fmt::Debug for RolePasswords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RolePasswords(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_stable_per_role_and_differ_between_roles_and_secrets() {
        let a = RolePasswords::new(b"secret-one-0123456789");
        let b = RolePasswords::new(b"secret-two-0123456789");
        assert_eq!(a.password_for("tenant_x"), a.password_for("tenant_x"));
        assert_ne!(a.password_for("tenant_x"), a.password_for("tenant_y"));
        assert_ne!(a.password_for("tenant_x"), b.password_for("tenant_x"));
        assert!(a.verifier_for("tenant_x").starts_with("SCRAM-SHA-256$16:"));
        assert!(!a
            .verifier_for("tenant_x")
            .contains(&a.password_for("tenant_x")));
    }
}
