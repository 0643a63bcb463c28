-- A person may belong to several organizations: one users row per membership, so an email is unique within an
-- organization, no longer across all of them. A token that names the user by email then picks the membership
-- by its organization claim (auth.org_claim) or by the database name (the organization's slug or schema).
DROP INDEX pgtenant.users_email_key;
CREATE UNIQUE INDEX users_email_organization_key ON pgtenant.users (lower(email), organization_id);
