-- Token revocation (issue 7, item 5): one token by its `jti`, or every token of a user issued before a time
-- (`iat` < revoked_before). pgtenant keeps the table in memory; the triggers below announce every change on the
-- directory channel, so every running pgtenant refuses a revoked token at once whoever wrote the row (pgtenant,
-- its CLI or the application's own SQL), and ends the sessions when end_sessions is set. Disabling a user
-- (users.disabled) is announced the same way and ends the user's sessions.

CREATE TABLE pgtenant.revoked_tokens (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    jti            text UNIQUE CHECK (length(jti) BETWEEN 1 AND 256),
    user_id        uuid UNIQUE REFERENCES pgtenant.users (id) ON DELETE CASCADE,
    revoked_before timestamptz,
    end_sessions   boolean NOT NULL DEFAULT false,
    revoked_at     timestamptz NOT NULL DEFAULT now(),
    revoked_by     text,
    CHECK ((jti IS NULL) <> (user_id IS NULL)),
    CHECK (user_id IS NULL OR revoked_before IS NOT NULL)
);

CREATE FUNCTION pgtenant.announce_revocation() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('pgtenant_directory', 'revocations changed');
    ELSIF NEW.jti IS NOT NULL THEN
        PERFORM pg_notify('pgtenant_directory',
            format('revoked jti %s %s', NEW.end_sessions::text, NEW.jti));
    ELSE
        -- Whole seconds, rounded up: a token issued in the second of the revocation is refused too.
        PERFORM pg_notify('pgtenant_directory',
            format('revoked user %s %s %s', NEW.end_sessions::text, NEW.user_id,
                   ceil(extract(epoch FROM NEW.revoked_before))::bigint));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER revoked_tokens_announce
    AFTER INSERT OR UPDATE OR DELETE ON pgtenant.revoked_tokens
    FOR EACH ROW EXECUTE FUNCTION pgtenant.announce_revocation();

CREATE FUNCTION pgtenant.announce_user_disabled() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF NEW.disabled THEN
        PERFORM pg_notify('pgtenant_directory', format('user_disabled %s', NEW.id));
    ELSE
        PERFORM pg_notify('pgtenant_directory', 'changed');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER users_disabled_announce
    AFTER UPDATE OF disabled ON pgtenant.users
    FOR EACH ROW WHEN (NEW.disabled IS DISTINCT FROM OLD.disabled)
    EXECUTE FUNCTION pgtenant.announce_user_disabled();
