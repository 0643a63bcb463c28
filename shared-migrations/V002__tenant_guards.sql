-- Guards that privileges alone cannot give on PostgreSQL 15.

-- Nobody but the owner creates objects in `public` (PostgreSQL 15's default; stated here on purpose).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- The per-tenant DDL switch. A tenant role owns its schema, and an owner can always grant itself CREATE
-- back, so "no DDL" is enforced by an event trigger instead: DDL by a tenant whose organization has
-- ddl_allowed = false is refused, unless the migrator unlocked that very backend (a row in ddl_unlocks
-- keyed by role and backend pid, written by the admin connection for the duration of a migration).
CREATE TABLE pgtenant.ddl_unlocks (
    role_name   name NOT NULL,
    backend_pid integer NOT NULL,
    PRIMARY KEY (role_name, backend_pid)
);

CREATE FUNCTION pgtenant.ddl_guard() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pgtenant.organizations o
               WHERE o.role_name = session_user AND NOT o.ddl_allowed)
       AND NOT EXISTS (SELECT 1 FROM pgtenant.ddl_unlocks u
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
