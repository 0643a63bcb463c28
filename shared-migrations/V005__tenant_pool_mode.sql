-- A tenant's own pooling mode ('session' or 'transaction'); NULL follows pgtenant's pool.mode.
ALTER TABLE pgtenant.organizations
    ADD COLUMN pool_mode text CHECK (pool_mode IN ('session', 'transaction'));
