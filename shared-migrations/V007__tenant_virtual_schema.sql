-- A tenant's own virtual schema: the schema name its applications write that means the tenant's schema.
-- NULL follows pgtenant's tenancy.virtual_schema; '' turns it off for this tenant (an app that really uses
-- PostgreSQL's public schema).
ALTER TABLE pgtenant.organizations
    ADD COLUMN virtual_schema text CHECK (virtual_schema ~ '^[a-z_][a-z0-9_$]*$' OR virtual_schema = '');
