-- The guards a cluster other than the default one needs for the tenants placed on it (applied by ADD CLUSTER
-- and `pgtenant cluster guards`, recorded in that cluster's pgtenant.shared_migrations). The directory
-- (organizations, users) is not here: it lives on the default cluster only. What the guards of shared
-- migrations V002, V003 and V006 read from the directory, they read here from pgtenant.tenant_roles, the row
-- onboarding writes on this cluster in the transaction that creates the tenant's role and schema.
-- Tenant roles can read none of this: the schema grants nothing to PUBLIC.

REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- The tenants whose role and schema live on this cluster. Written by pgtenant only, from the directory
-- (organizations.id, ddl_allowed at onboarding): the directory stays the source of truth.
CREATE TABLE pgtenant.tenant_roles (
    role_name       name PRIMARY KEY,
    organization_id uuid NOT NULL UNIQUE,
    ddl_allowed     boolean NOT NULL
);

-- A tenant's migration history lives where its schema is, so it is written in the same transaction as the
-- change (on the default cluster: the directory's own table of the same name).
CREATE TABLE pgtenant.tenant_migrations (
    organization_id uuid NOT NULL,
    version         integer NOT NULL,
    name            text NOT NULL,
    checksum        text NOT NULL,
    applied_at      timestamptz NOT NULL DEFAULT now(),
    duration_ms     integer NOT NULL,
    PRIMARY KEY (organization_id, version)
);

CREATE TABLE pgtenant.ddl_unlocks (
    role_name     name NOT NULL,
    backend_pid   integer NOT NULL,
    backend_start timestamptz,
    PRIMARY KEY (role_name, backend_pid)
);

CREATE TABLE pgtenant.migration_tickets (
    role_name     name NOT NULL,
    backend_pid   integer NOT NULL,
    backend_start timestamptz,
    version       integer NOT NULL,
    name          text NOT NULL,
    checksum      text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (role_name, backend_pid, version)
);

CREATE FUNCTION pgtenant.ddl_guard() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pgtenant.tenant_roles t
               WHERE t.role_name = session_user AND NOT t.ddl_allowed)
       AND NOT EXISTS (SELECT 1 FROM pgtenant.ddl_unlocks u
                       JOIN pg_catalog.pg_stat_activity a
                         ON a.pid = u.backend_pid AND a.backend_start = u.backend_start
                       WHERE u.role_name = session_user AND u.backend_pid = pg_backend_pid())
    THEN
        RAISE EXCEPTION 'DDL is not allowed for this organization (%)', tg_tag
            USING ERRCODE = '42501',
                  HINT = 'schema changes are made through pgtenant migrations';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION pgtenant.ddl_guard() FROM PUBLIC;

CREATE EVENT TRIGGER pgtenant_ddl_guard ON ddl_command_start
    EXECUTE FUNCTION pgtenant.ddl_guard();

CREATE SCHEMA pgtenant_api;
REVOKE ALL ON SCHEMA pgtenant_api FROM PUBLIC;
GRANT USAGE ON SCHEMA pgtenant_api TO PUBLIC;

CREATE FUNCTION pgtenant_api.record_migration(p_version integer, p_duration_ms integer) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ticket record;
    org uuid;
    started timestamptz;
BEGIN
    SELECT a.backend_start INTO started FROM pg_catalog.pg_stat_activity a WHERE a.pid = pg_backend_pid();
    DELETE FROM pgtenant.migration_tickets t
     WHERE t.role_name = session_user AND t.backend_pid = pg_backend_pid()
       AND t.backend_start = started AND t.version = p_version
    RETURNING t.name, t.checksum INTO ticket;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no migration ticket for version % in this session', p_version USING ERRCODE = '42501';
    END IF;
    SELECT t.organization_id INTO org FROM pgtenant.tenant_roles t WHERE t.role_name = session_user;
    INSERT INTO pgtenant.tenant_migrations (organization_id, version, name, checksum, duration_ms)
    VALUES (org, p_version, ticket.name, ticket.checksum, p_duration_ms);
END
$$;
REVOKE ALL ON FUNCTION pgtenant_api.record_migration(integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgtenant_api.record_migration(integer, integer) TO PUBLIC;
