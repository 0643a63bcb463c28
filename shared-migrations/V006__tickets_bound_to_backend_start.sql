-- Migration tickets and DDL unlocks name a backend by pid and start time: a pid alone can be reused by a
-- later backend (of the same tenant role) once the migrator's backend is gone.

ALTER TABLE pgtenant.migration_tickets ADD COLUMN backend_start timestamptz;
ALTER TABLE pgtenant.ddl_unlocks ADD COLUMN backend_start timestamptz;

CREATE OR REPLACE FUNCTION pgtenant_api.record_migration(p_version integer, p_duration_ms integer) RETURNS void
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
    SELECT o.id INTO org FROM pgtenant.organizations o WHERE o.role_name = session_user;
    INSERT INTO pgtenant.tenant_migrations (organization_id, version, name, checksum, duration_ms)
    VALUES (org, p_version, ticket.name, ticket.checksum, p_duration_ms);
END
$$;

CREATE OR REPLACE FUNCTION pgtenant.ddl_guard() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pgtenant.organizations o
               WHERE o.role_name = session_user AND NOT o.ddl_allowed)
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
