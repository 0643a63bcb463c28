-- The starting business schema of every tenant. Runs with search_path set to the tenant's schema, as the
-- tenant's role: tables are created in, and owned by, the tenant.

CREATE TABLE employees (
    id         bigserial PRIMARY KEY,
    email      text NOT NULL UNIQUE,
    full_name  text NOT NULL,
    role       text NOT NULL DEFAULT 'staff',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE doctors (
    id          bigserial PRIMARY KEY,
    employee_id bigint REFERENCES employees (id),
    full_name   text NOT NULL,
    specialty   text,
    license_no  text UNIQUE
);

CREATE TABLE patients (
    id            bigserial PRIMARY KEY,
    full_name     text NOT NULL,
    date_of_birth date,
    email         text,
    doctor_id     bigint REFERENCES doctors (id),
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    id          bigserial PRIMARY KEY,
    patient_id  bigint NOT NULL REFERENCES patients (id),
    description text NOT NULL,
    amount      numeric(12, 2) NOT NULL CHECK (amount >= 0),
    status      text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'paid', 'cancelled')),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_patient_idx ON orders (patient_id);
