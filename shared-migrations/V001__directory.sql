-- The directory: organizations (tenants), their users, and each tenant's migration history.
-- Tenant roles can read none of this: the schema grants nothing to PUBLIC.

CREATE TABLE pgtenant.organizations (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL,
    slug        text NOT NULL UNIQUE,
    schema_name name NOT NULL UNIQUE,
    role_name   name NOT NULL UNIQUE,
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'provisioning')),
    ddl_allowed boolean NOT NULL DEFAULT true,
    cluster     text NOT NULL DEFAULT 'default',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pgtenant.users (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email           text NOT NULL,
    organization_id uuid NOT NULL REFERENCES pgtenant.organizations (id) ON DELETE CASCADE,
    role            text NOT NULL DEFAULT 'member',
    disabled        boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON pgtenant.users (lower(email));
CREATE INDEX users_organization_idx ON pgtenant.users (organization_id);

CREATE TABLE pgtenant.tenant_migrations (
    organization_id uuid NOT NULL REFERENCES pgtenant.organizations (id) ON DELETE CASCADE,
    version         integer NOT NULL,
    name            text NOT NULL,
    checksum        text NOT NULL,
    applied_at      timestamptz NOT NULL DEFAULT now(),
    duration_ms     integer NOT NULL,
    PRIMARY KEY (organization_id, version)
);
