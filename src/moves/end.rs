//! The two ends of a move other than the switch: `CANCEL MOVE` (before the switch: what the target got is
//! dropped, the tenant stays where it was) and `FINISH MOVE` (after it: the copy on the cluster it left is
//! dropped, with the replication).

use super::{load_move, replication, switch, target, MoveError, MoveReport, MoveState, Mover};
use crate::tenancy::ops::find_tenant;

impl Mover<'_> {
    /// `CANCEL MOVE x`: before the switch, drops what the target got and leaves the tenant where it was.
    pub async fn cancel(&self, selector: &str) -> Result<MoveReport, MoveError> {
        let tenant = find_tenant(self.directory, selector).await?;
        let Some(m) = load_move(self.directory, tenant.id).await? else {
            return Err(MoveError::Refused(format!(
                "tenant \"{}\" has no move on record",
                tenant.slug
            )));
        };
        if m.state == MoveState::Switched {
            return Err(MoveError::Refused(format!(
                "tenant \"{}\" is served from cluster {} already: FINISH MOVE {} drops the copy on {}, or \
                 MOVE TENANT {} TO {} moves it back",
                tenant.slug, m.target, tenant.slug, m.source, tenant.slug, m.source
            )));
        }
        if m.state.is_over() {
            return Err(MoveError::Refused(format!(
                "the move of tenant \"{}\" is {} already",
                tenant.slug,
                m.state.as_str()
            )));
        }
        if tenant.cluster != m.source {
            return Err(MoveError::Refused(format!(
                "the directory names cluster {} for tenant \"{}\", not the move's source {}: nothing is dropped",
                tenant.cluster, tenant.slug, m.source
            )));
        }
        let source_entry = self.entry(&m.source)?;
        let target_entry = self.entry(&m.target)?;
        if m.state == MoveState::Switching {
            switch::undo(self, &tenant, &source_entry).await?;
        }
        replication::drop_replication(self, &tenant, &source_entry, &target_entry).await?;
        target::drop_copy(self, &tenant, &target_entry).await?;
        self.set_state(&tenant, MoveState::Cancelled).await?;
        Ok(MoveReport {
            slug: tenant.slug.clone(),
            source: m.source,
            target: m.target.clone(),
            state: MoveState::Cancelled,
            lines: vec![format!(
                "the move was cancelled: tenant \"{}\" stays on cluster {}, nothing of it is left on {}",
                tenant.slug, tenant.cluster, m.target
            )],
            pause: None,
            dry_run: false,
        })
    }

    /// `FINISH MOVE x`: after the switch, drops the replication and the tenant's copy on the source.
    pub async fn finish(&self, selector: &str) -> Result<MoveReport, MoveError> {
        let tenant = find_tenant(self.directory, selector).await?;
        let Some(m) = load_move(self.directory, tenant.id).await? else {
            return Err(MoveError::Refused(format!(
                "tenant \"{}\" has no move on record",
                tenant.slug
            )));
        };
        if m.state != MoveState::Switched {
            return Err(MoveError::Refused(format!(
                "the move of tenant \"{}\" is {}: only a switched move can be finished",
                tenant.slug,
                m.state.as_str()
            )));
        }
        if tenant.cluster != m.target {
            return Err(MoveError::Refused(format!(
                "the directory names cluster {} for tenant \"{}\", not the move's target {}: nothing is dropped",
                tenant.cluster, tenant.slug, m.target
            )));
        }
        let source_entry = self.entry(&m.source)?;
        let target_entry = self.entry(&m.target)?;
        replication::drop_replication(self, &tenant, &source_entry, &target_entry).await?;
        target::drop_copy(self, &tenant, &source_entry).await?;
        self.set_state(&tenant, MoveState::Finished).await?;
        Ok(MoveReport {
            slug: tenant.slug.clone(),
            source: m.source.clone(),
            target: m.target,
            state: MoveState::Finished,
            lines: vec![format!(
                "tenant \"{}\": its copy on cluster {} was dropped",
                tenant.slug, m.source
            )],
            pause: None,
            dry_run: false,
        })
    }
}
