//! Tenants: onboarding (organization row, role, schema, grants, all tenant migrations, admin user, in one
//! transaction) and operations on existing tenants (status, limits).

pub mod limits;
mod onboard;
pub mod ops;
pub mod revoke;
mod user_token;

pub use onboard::{
    create_tenant_role, find_user_by_email, grant_database_access, onboard, onboard_with,
    OnboardError, OnboardRequest, Onboarded,
};
pub use user_token::{mint_token_for, MintForError};
