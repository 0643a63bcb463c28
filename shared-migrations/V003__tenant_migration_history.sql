-- Tenant migrations run on a connection logged in as the tenant's role (never as a superuser), and the
-- history row is written in the same transaction as the change. The tenant must not be able to forge its
-- own history nor read anyone else's, so the row is written by a SECURITY DEFINER function that accepts
-- only a ticket the migrator issued, over its admin connection, for that very backend (role + pid) and
-- version. A tenant's own sessions have other pids and hold no tickets.

CREATE TABLE pgtenant.migration_tickets (
    role_name   name NOT NULL,
    backend_pid integer NOT NULL,
    version     integer NOT NULL,
    name        text NOT NULL,
    checksum    text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (role_name, backend_pid, version)
);

-- A schema tenant roles may use, holding only this function.
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
BEGIN
    DELETE FROM pgtenant.migration_tickets t
     WHERE t.role_name = session_user AND t.backend_pid = pg_backend_pid() AND t.version = p_version
    RETURNING t.name, t.checksum INTO ticket;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no migration ticket for version % in this session', p_version USING ERRCODE = '42501';
    END IF;
    SELECT o.id INTO org FROM pgtenant.organizations o WHERE o.role_name = session_user;
    INSERT INTO pgtenant.tenant_migrations (organization_id, version, name, checksum, duration_ms)
    VALUES (org, p_version, ticket.name, ticket.checksum, p_duration_ms);
END
$$;
REVOKE ALL ON FUNCTION pgtenant_api.record_migration(integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgtenant_api.record_migration(integer, integer) TO PUBLIC;
