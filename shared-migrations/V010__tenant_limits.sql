-- Per-tenant limits (issue 11, item 4), in milliseconds. NULL follows pgtenant's [limits] default; 0 turns the
-- limit off for this tenant whatever the default says.
-- - statement_timeout_ms, lock_timeout_ms, idle_in_transaction_timeout_ms: set on every server connection of
--   the tenant (startup parameters: RESET and DISCARD ALL come back to them), so PostgreSQL enforces them with
--   its own SQLSTATEs; pgtenant also enforces statement_timeout_ms and idle_in_transaction_timeout_ms itself,
--   as a ceiling a client cannot SET away.
-- - transaction_timeout_ms: enforced by pgtenant only (PostgreSQL 15 has no transaction_timeout).
ALTER TABLE pgtenant.organizations
    ADD COLUMN statement_timeout_ms integer CHECK (statement_timeout_ms >= 0),
    ADD COLUMN lock_timeout_ms integer CHECK (lock_timeout_ms >= 0),
    ADD COLUMN idle_in_transaction_timeout_ms integer CHECK (idle_in_transaction_timeout_ms >= 0),
    ADD COLUMN transaction_timeout_ms integer CHECK (transaction_timeout_ms >= 0);

-- A change to a tenant's limits, whoever writes it (pgtenant, its CLI or plain SQL), is announced on the
-- directory channel: every pgtenant forgets its cached lookups, so the tenant's next sessions get the new values.
CREATE FUNCTION pgtenant.announce_limits_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    PERFORM pg_notify('pgtenant_directory', 'changed');
    RETURN NULL;
END
$$;

CREATE TRIGGER organizations_limits_announce
    AFTER UPDATE OF statement_timeout_ms, lock_timeout_ms, idle_in_transaction_timeout_ms, transaction_timeout_ms
    ON pgtenant.organizations
    FOR EACH ROW
    WHEN (NEW.statement_timeout_ms IS DISTINCT FROM OLD.statement_timeout_ms
       OR NEW.lock_timeout_ms IS DISTINCT FROM OLD.lock_timeout_ms
       OR NEW.idle_in_transaction_timeout_ms IS DISTINCT FROM OLD.idle_in_transaction_timeout_ms
       OR NEW.transaction_timeout_ms IS DISTINCT FROM OLD.transaction_timeout_ms)
    EXECUTE FUNCTION pgtenant.announce_limits_changed();
