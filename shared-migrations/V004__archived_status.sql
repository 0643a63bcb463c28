-- DROP TENANT without confirmation archives a tenant: logins refused, role unable to log in, data kept.
ALTER TABLE pgtenant.organizations DROP CONSTRAINT organizations_status_check;
ALTER TABLE pgtenant.organizations ADD CONSTRAINT organizations_status_check
    CHECK (status IN ('active', 'suspended', 'provisioning', 'archived'));
