-- Moving a tenant between clusters (issue 9, item 3): `MOVE TENANT x TO c`, `CANCEL MOVE x`, `FINISH MOVE x`.
-- A move's state lives here, in the directory, so any pgtenant or CLI can resume or cancel it after a crash;
-- one move per tenant at a time. The steps are in src/moves/mod.rs. V011 made a first draft of this table
-- that nothing wrote; it is replaced.
DROP TABLE pgtenant.tenant_moves;

CREATE TABLE pgtenant.tenant_moves (
    organization_id uuid PRIMARY KEY REFERENCES pgtenant.organizations (id) ON DELETE CASCADE,
    source          text NOT NULL REFERENCES pgtenant.clusters (name),
    target          text NOT NULL REFERENCES pgtenant.clusters (name),
    -- logical: copied by logical replication while served, a short switch; offline: copied with COPY during
    -- the switch (for tables logical replication cannot carry), the tenant held for the whole copy.
    mode            text NOT NULL DEFAULT 'logical' CHECK (mode IN ('logical', 'offline')),
    -- preparing: role, schema and history made on the target; copying: publication and subscription made,
    -- tables copied; catching_up: the subscription follows the source; switching: the tenant is paused, its
    -- source role cannot log in, the last changes and the sequences are being carried over; switched: the
    -- directory names the target (the source's copy is kept until FINISH MOVE); finished, cancelled: done.
    state           text NOT NULL DEFAULT 'preparing'
                    CHECK (state IN ('preparing', 'copying', 'catching_up', 'switching', 'switched', 'finished',
                                     'cancelled')),
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- The last step's outcome for people (`SHOW MOVES`): an error a resumed move may clear.
    note            text,
    -- Measured while switching: how long the tenant's new transactions were held, in milliseconds.
    pause_ms        integer,
    CHECK (source <> target)
);

-- The mark the switch writes on the source and waits for on the target: logical replication applies changes
-- in commit order, so once the target has a mark written after the tenant's last write, it has all of them.
-- The row of a moving tenant is in its move's publication (row filter on organization_id).
CREATE TABLE pgtenant.move_marks (
    organization_id uuid PRIMARY KEY,
    mark            bigint NOT NULL
);
