//! REVOKE TOKEN | USER and DISABLE | ENABLE USER: the same functions as `pgtenant token revoke` and
//! `pgtenant user disable | enable`.

use super::{db_error, Reply};
use crate::directory::events::DirectoryEvent;
use crate::error::UserFacing;
use crate::protocol::PgError;
use crate::proxy::Proxy;
use crate::tenancy::revoke::{self, RevokeError};

fn revoke_error(e: RevokeError) -> PgError {
    e.to_error()
}

pub async fn revoke_token(proxy: &Proxy, jti: &str, sessions: bool) -> Result<Reply, PgError> {
    let admin = proxy.directory.admin().await.map_err(db_error)?;
    let revocation = revoke::revoke_token(&*admin, jti, sessions, "admin channel")
        .await
        .map_err(revoke_error)?;
    // The announcement reaches every pgtenant, this one too; act at once here all the same.
    proxy.on_directory_event(DirectoryEvent::Revoked(revocation));
    Ok(Reply::Done {
        tag: "REVOKE TOKEN".into(),
    })
}

pub async fn revoke_user(proxy: &Proxy, email: &str, sessions: bool) -> Result<Reply, PgError> {
    let admin = proxy.directory.admin().await.map_err(db_error)?;
    let revocations = revoke::revoke_user(&*admin, email, sessions, "admin channel")
        .await
        .map_err(revoke_error)?;
    for revocation in revocations {
        proxy.on_directory_event(DirectoryEvent::Revoked(revocation));
    }
    Ok(Reply::Done {
        tag: "REVOKE USER".into(),
    })
}

pub async fn set_disabled(proxy: &Proxy, email: &str, disabled: bool) -> Result<Reply, PgError> {
    let admin = proxy.directory.admin().await.map_err(db_error)?;
    let changed = revoke::set_user_disabled(&*admin, email, disabled)
        .await
        .map_err(revoke_error)?;
    proxy.directory.invalidate();
    if disabled {
        for user_id in changed {
            proxy.on_directory_event(DirectoryEvent::UserDisabled { user_id });
        }
    }
    Ok(Reply::Done {
        tag: if disabled {
            "DISABLE USER"
        } else {
            "ENABLE USER"
        }
        .into(),
    })
}
