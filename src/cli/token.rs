//! `pgtenant token revoke`: refusing a token, or every token of a user, on every pgtenant.

use anyhow::{bail, Result};

pub(crate) async fn revoke(
    client: &tokio_postgres::Client,
    jti: Option<String>,
    user: Option<String>,
    sessions: bool,
) -> Result<()> {
    use pgtenant::tenancy::revoke::{revoke_token, revoke_user};
    let ended = if sessions { "; its sessions end" } else { "" };
    match (jti, user) {
        (Some(jti), _) => {
            revoke_token(client, &jti, sessions, "cli").await?;
            println!("token revoked on every pgtenant{ended}");
        }
        (None, Some(email)) => {
            let revoked = revoke_user(client, &email, sessions, "cli").await?;
            println!(
                "tokens of {email} issued until now revoked ({} memberships){ended}",
                revoked.len()
            );
        }
        (None, None) => bail!("give --jti or --user"),
    }
    Ok(())
}
