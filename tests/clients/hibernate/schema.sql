-- What the Hibernate app expects to find in its schema (created by the test; Hibernate only validates).
CREATE TABLE widgets (id bigserial PRIMARY KEY, name text NOT NULL, price numeric(10, 2));
CREATE SEQUENCE gadget_ids;
CREATE TABLE gadgets (id bigint PRIMARY KEY, label varchar(100));
