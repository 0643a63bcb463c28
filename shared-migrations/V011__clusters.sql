-- Clusters (issue 9): the PostgreSQL clusters tenants are placed on, and their read replicas. The directory
-- (this schema) stays on the default cluster, the one `[upstream]` of pgtenant's config names; its row holds no
-- connection settings. Every other row holds how to reach its cluster, without the password: that comes from
-- each pgtenant's config (`[clusters.<name>] admin_password`) or environment
-- (`PGTENANT_CLUSTER_<NAME>_ADMIN_PASSWORD`). TLS file paths name files every pgtenant must have.
--
-- Numbered V011: V010 is the limits branch's.

CREATE TABLE pgtenant.clusters (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,39}$'),
    role        text NOT NULL DEFAULT 'primary' CHECK (role IN ('primary', 'replica')),
    primary_of  text REFERENCES pgtenant.clusters (name),
    host        text,
    port        integer CHECK (port BETWEEN 1 AND 65535),
    database    text,
    admin_user  text,
    sslmode     text NOT NULL DEFAULT 'disable'
                CHECK (sslmode IN ('disable', 'prefer', 'require', 'verify-ca', 'verify-full')),
    sslrootcert text,
    sslcert     text,
    sslkey      text,
    -- active: served, and onboarding may place tenants on it (a replica: reads may go to it);
    -- draining: served, no new tenants placed on it; disabled: a replica no reads go to.
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'draining', 'disabled')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((role = 'replica') = (primary_of IS NOT NULL)),
    CHECK (primary_of IS DISTINCT FROM name),
    CHECK ((name = 'default') = (host IS NULL)),
    CHECK (name <> 'default' OR role = 'primary'),
    CHECK (host IS NULL OR (port IS NOT NULL AND database IS NOT NULL AND admin_user IS NOT NULL)),
    CHECK ((sslcert IS NULL) = (sslkey IS NULL))
);

INSERT INTO pgtenant.clusters (name) VALUES ('default');

-- organizations.cluster has existed since V001 (default 'default'); it now names a row.
ALTER TABLE pgtenant.organizations
    ADD CONSTRAINT organizations_cluster_fkey FOREIGN KEY (cluster) REFERENCES pgtenant.clusters (name);
CREATE INDEX organizations_cluster_idx ON pgtenant.organizations (cluster);

-- Every change reaches every pgtenant (it reloads its clusters), whoever wrote the row.
CREATE FUNCTION pgtenant.announce_clusters_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    PERFORM pg_notify('pgtenant_directory', 'clusters changed');
    RETURN NULL;
END
$$;

CREATE TRIGGER clusters_announce
    AFTER INSERT OR UPDATE OR DELETE ON pgtenant.clusters
    FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.announce_clusters_changed();

-- Moving a tenant between clusters (issue 9, item 3): designed, not built yet (see the design in
-- src/clusters/mod.rs). A move's state lives here, in the directory, so any pgtenant (or the CLI) can resume
-- or cancel it after a crash; one move per tenant at a time. Nothing writes this table yet.
CREATE TABLE pgtenant.tenant_moves (
    organization_id uuid PRIMARY KEY REFERENCES pgtenant.organizations (id) ON DELETE CASCADE,
    source          text NOT NULL REFERENCES pgtenant.clusters (name),
    target          text NOT NULL REFERENCES pgtenant.clusters (name),
    state           text NOT NULL DEFAULT 'preparing'
                    CHECK (state IN ('preparing', 'copying', 'catching_up', 'switching', 'done', 'cancelled',
                                     'failed')),
    publication     name,
    subscription    name,
    slot            name,
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    error           text,
    CHECK (source <> target)
);
