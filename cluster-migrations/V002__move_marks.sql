-- The mark a tenant move's switch writes on the source and waits for on the target (as shared migration V012
-- on the default cluster): logical replication applies changes in commit order, so once the target has a mark
-- written after the tenant's last write, it has all of them.
CREATE TABLE pgtenant.move_marks (
    organization_id uuid PRIMARY KEY,
    mark            bigint NOT NULL
);
