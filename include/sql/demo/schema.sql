-- Demo target schema for database "appdb" (PostgreSQL 13+; developed on 18).
-- Sources: MACAS (seed 000), ELARO user_events (001), partitioned learning_sessions (002),
-- multi-tenant orders/payments/audit_logs/user_sessions (003).
-- Run as one transaction: psql -1 -v ON_ERROR_STOP=1 -f schema.sql
-- learning_sessions gets monthly partitions for the 12 months before the reference month, the
-- reference month and the 2 after it, plus a DEFAULT partition. The reference date is the setting
-- dbops.demo_now (YYYY-MM-DD) when set, else current_date:
--   PGOPTIONS='-c dbops.demo_now=2025-06-15' psql -1 -f schema.sql
-- Re-runnable: it drops its own objects first (and nothing else).

-- Partition-management demo tables (pg_partitions__appdb), with what earlier runs detached or archived.
DROP SCHEMA IF EXISTS partition_archive CASCADE;
DO $$
DECLARE t record;
BEGIN
    FOR t IN SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind = 'r' AND NOT c.relispartition
               AND c.relname ~ '^(learning_sessions|assessment_attempts|page_views)_[0-9]'
    LOOP
        EXECUTE format('DROP TABLE %I', t.relname);
    END LOOP;
END
$$;
DROP TABLE IF EXISTS assessment_attempts, page_views CASCADE;
DROP TABLE IF EXISTS
    reports, analysis_results, documents, programs,
    user_events, learning_sessions,
    audit_logs, user_sessions, payments, orders, tenants,
    users
    CASCADE;
DROP TYPE IF EXISTS
    user_role, education_level, document_status, analysis_type, analysis_status, report_type,
    order_status, payment_status, payment_method, audit_action;

-- MACAS enums (seed 000)
CREATE TYPE user_role AS ENUM ('admin', 'faculty', 'user');
CREATE TYPE education_level AS ENUM ('bachelor', 'master', 'phd', 'certificate', 'diploma');
CREATE TYPE document_status AS ENUM ('pending', 'processing', 'completed', 'failed');
CREATE TYPE analysis_type AS ENUM (
    'curriculum_alignment', 'gap_analysis', 'competency_mapping',
    'learning_outcomes', 'assessment_alignment');
CREATE TYPE analysis_status AS ENUM ('pending', 'running', 'completed', 'failed', 'cancelled');
CREATE TYPE report_type AS ENUM (
    'alignment_report', 'gap_analysis_report', 'competency_report',
    'summary_report', 'detailed_report');

-- Multi-tenant enums (seed 003)
CREATE TYPE order_status AS ENUM (
    'pending', 'confirmed', 'preparing', 'delivered', 'cancelled', 'refunded');
CREATE TYPE payment_status AS ENUM ('pending', 'authorized', 'captured', 'failed', 'refunded');
CREATE TYPE payment_method AS ENUM ('card', 'paypal', 'apple_pay', 'google_pay', 'cash');
CREATE TYPE audit_action AS ENUM ('insert', 'update', 'delete', 'login', 'logout', 'anonymize');

-- MACAS tables (seed 000)
CREATE TABLE users (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email       varchar(255) NOT NULL UNIQUE,
    name        varchar(255) NOT NULL,
    role        user_role NOT NULL DEFAULT 'user',
    sso_id      varchar(255),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    last_login  timestamptz,
    is_active   boolean NOT NULL DEFAULT true
);

CREATE TABLE programs (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name            varchar(500) NOT NULL,
    description     text,
    institution     varchar(255),
    level           education_level NOT NULL,
    duration_years  integer CHECK (duration_years > 0),
    created_by      uuid REFERENCES users (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    is_active       boolean NOT NULL DEFAULT true
);

CREATE TABLE documents (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name               varchar(255) NOT NULL,
    file_path          varchar(1000) NOT NULL,
    file_size          bigint NOT NULL CHECK (file_size >= 0),
    mime_type          varchar(100) NOT NULL,
    program_id         uuid REFERENCES programs (id) ON DELETE CASCADE,
    uploaded_by        uuid REFERENCES users (id),
    upload_date        timestamptz NOT NULL DEFAULT now(),
    processing_status  document_status NOT NULL DEFAULT 'pending',
    extracted_text     text,
    metadata           jsonb
);

CREATE TABLE analysis_results (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    program_id         uuid REFERENCES programs (id) ON DELETE CASCADE,
    analysis_type      analysis_type NOT NULL,
    parameters         jsonb,
    results            jsonb NOT NULL,
    status             analysis_status NOT NULL DEFAULT 'pending',
    created_by         uuid REFERENCES users (id),
    created_at         timestamptz NOT NULL DEFAULT now(),
    completed_at       timestamptz,
    execution_time_ms  integer,
    error_message      text
);

CREATE TABLE reports (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name          varchar(255) NOT NULL,
    type          report_type NOT NULL,
    program_id    uuid REFERENCES programs (id) ON DELETE CASCADE,
    analysis_id   uuid REFERENCES analysis_results (id),
    content       jsonb NOT NULL,
    file_path     varchar(1000),
    created_by    uuid REFERENCES users (id),
    created_at    timestamptz NOT NULL DEFAULT now(),
    generated_at  timestamptz,
    is_public     boolean NOT NULL DEFAULT false
);

-- MACAS indexes (seed 000; its idx_users_email is left out: UNIQUE already indexes email)
CREATE INDEX idx_users_sso_id ON users (sso_id);
CREATE INDEX idx_users_role ON users (role);
CREATE INDEX idx_users_active ON users (is_active);

CREATE INDEX idx_programs_institution ON programs (institution);
CREATE INDEX idx_programs_level ON programs (level);
CREATE INDEX idx_programs_created_by ON programs (created_by);
CREATE INDEX idx_programs_active ON programs (is_active);
CREATE INDEX idx_programs_created_at ON programs (created_at DESC);
CREATE INDEX idx_programs_user_active ON programs (created_by, is_active, created_at DESC);

CREATE INDEX idx_documents_program_id ON documents (program_id);
CREATE INDEX idx_documents_uploaded_by ON documents (uploaded_by);
CREATE INDEX idx_documents_upload_date ON documents (upload_date DESC);
CREATE INDEX idx_documents_processing_status ON documents (processing_status);
CREATE INDEX idx_documents_name ON documents USING gin (to_tsvector('english', name));
CREATE INDEX idx_documents_text_search ON documents USING gin (to_tsvector('english', extracted_text));
CREATE INDEX idx_documents_program_status ON documents (program_id, processing_status);

CREATE INDEX idx_analysis_program_id ON analysis_results (program_id);
CREATE INDEX idx_analysis_type ON analysis_results (analysis_type);
CREATE INDEX idx_analysis_status ON analysis_results (status);
CREATE INDEX idx_analysis_created_at ON analysis_results (created_at DESC);
CREATE INDEX idx_analysis_created_by ON analysis_results (created_by);
CREATE INDEX idx_analysis_parameters ON analysis_results USING gin (parameters);
CREATE INDEX idx_analysis_results ON analysis_results USING gin (results);
CREATE INDEX idx_analysis_program_type_status ON analysis_results (program_id, analysis_type, status);

CREATE INDEX idx_reports_program_id ON reports (program_id);
CREATE INDEX idx_reports_analysis_id ON reports (analysis_id);
CREATE INDEX idx_reports_type ON reports (type);
CREATE INDEX idx_reports_created_by ON reports (created_by);
CREATE INDEX idx_reports_created_at ON reports (created_at DESC);
CREATE INDEX idx_reports_public ON reports (is_public);

-- ELARO event audit trail (seed 001); retention 30 days
CREATE TABLE user_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    event_type  varchar(50) NOT NULL,
    entity_type varchar(50),
    entity_id   uuid,
    event_data  jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_user_events_user_created ON user_events (user_id, created_at DESC);
CREATE INDEX idx_user_events_type ON user_events (event_type);
CREATE INDEX idx_user_events_created_at ON user_events (created_at);

-- Learning sessions, monthly RANGE partitions on start_time (seed 002)
CREATE TABLE learning_sessions (
    id                bigint GENERATED ALWAYS AS IDENTITY,
    user_id           uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    program_id        uuid REFERENCES programs (id) ON DELETE SET NULL,
    activity_type     varchar(50) NOT NULL,
    start_time        timestamptz NOT NULL,
    end_time          timestamptz,
    duration_seconds  integer,
    score             numeric(5, 2),
    completed         boolean NOT NULL DEFAULT false,
    metadata          jsonb,
    PRIMARY KEY (id, start_time),
    CHECK (end_time IS NULL OR end_time >= start_time)
) PARTITION BY RANGE (start_time);
CREATE INDEX idx_learning_sessions_user_start ON learning_sessions (user_id, start_time DESC);
CREATE INDEX idx_learning_sessions_program ON learning_sessions (program_id);

DO $$
DECLARE
    ref   date := coalesce(nullif(current_setting('dbops.demo_now', true), '')::date, current_date);
    month0 date := make_date(extract(year FROM ref)::int, extract(month FROM ref)::int, 1);
    m     date;
BEGIN
    FOR i IN -12..2 LOOP
        m := (month0 + make_interval(months => i))::date;
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF learning_sessions FOR VALUES FROM (%L) TO (%L)',
            'learning_sessions_' || to_char(m, 'YYYY_MM'),
            m::timestamp AT TIME ZONE 'UTC',
            (m + interval '1 month') AT TIME ZONE 'UTC');
    END LOOP;
END
$$;
CREATE TABLE learning_sessions_default PARTITION OF learning_sessions DEFAULT;

-- Assessment attempts, monthly RANGE partitions on started_at (seed 002): partitions from 15 months
-- before the reference month to the one after it (the 3 oldest are past the 12 months' retention), and a
-- DEFAULT partition. Daily page views (RANGE on viewed_at): 40 days back to tomorrow (10 past the 30
-- days' retention), and a DEFAULT. scripts/demo_data.py puts rows in both DEFAULT partitions.
CREATE TABLE assessment_attempts (
    id            bigint GENERATED ALWAYS AS IDENTITY,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    assessment    varchar(100) NOT NULL,
    started_at    timestamptz NOT NULL,
    submitted_at  timestamptz,
    score         numeric(5, 2),
    PRIMARY KEY (id, started_at),
    CHECK (submitted_at IS NULL OR submitted_at >= started_at)
) PARTITION BY RANGE (started_at);
CREATE INDEX idx_assessment_attempts_user ON assessment_attempts (user_id, started_at DESC);
CREATE TABLE page_views (
    id         bigint GENERATED ALWAYS AS IDENTITY,
    viewed_at  timestamptz NOT NULL,
    path       text NOT NULL,
    PRIMARY KEY (id, viewed_at)
) PARTITION BY RANGE (viewed_at);

DO $$
DECLARE
    ref    date := coalesce(nullif(current_setting('dbops.demo_now', true), '')::date, current_date);
    month0 date := make_date(extract(year FROM ref)::int, extract(month FROM ref)::int, 1);
    m      date;
BEGIN
    FOR i IN -15..1 LOOP
        m := (month0 + make_interval(months => i))::date;
        EXECUTE format('CREATE TABLE %I PARTITION OF assessment_attempts FOR VALUES FROM (%L) TO (%L)',
            'assessment_attempts_' || to_char(m, 'YYYY_MM'), m::timestamp AT TIME ZONE 'UTC',
            (m + interval '1 month') AT TIME ZONE 'UTC');
    END LOOP;
    FOR i IN -40..1 LOOP
        m := ref + i;
        EXECUTE format('CREATE TABLE %I PARTITION OF page_views FOR VALUES FROM (%L) TO (%L)',
            'page_views_' || to_char(m, 'YYYYMMDD'), m::timestamp AT TIME ZONE 'UTC',
            (m + 1)::timestamp AT TIME ZONE 'UTC');
    END LOOP;
END
$$;
CREATE TABLE assessment_attempts_default PARTITION OF assessment_attempts DEFAULT;
CREATE TABLE page_views_default PARTITION OF page_views DEFAULT;

-- Multi-tenant tables (seed 003); lifecycle policies in include/config/dbops.yaml (archive and retention)
CREATE TABLE tenants (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug        varchar(63) NOT NULL UNIQUE,
    name        varchar(255) NOT NULL,
    plan        varchar(20) NOT NULL DEFAULT 'standard',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    user_id       uuid REFERENCES users (id) ON DELETE SET NULL,
    order_number  varchar(32) NOT NULL,
    status        order_status NOT NULL DEFAULT 'pending',
    currency      char(3) NOT NULL DEFAULT 'USD',
    subtotal      numeric(12, 2) NOT NULL CHECK (subtotal >= 0),
    tax           numeric(12, 2) NOT NULL DEFAULT 0 CHECK (tax >= 0),
    total         numeric(12, 2) NOT NULL CHECK (total >= 0),
    items         jsonb NOT NULL DEFAULT '[]',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, order_number)
);
CREATE INDEX idx_orders_user ON orders (user_id);
CREATE INDEX idx_orders_tenant_created ON orders (tenant_id, created_at DESC);
CREATE INDEX idx_orders_status ON orders (status);
CREATE INDEX idx_orders_created_at ON orders (created_at);  -- archive batches walk it (data lifecycle)

CREATE TABLE payments (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    order_id      uuid NOT NULL REFERENCES orders (id),
    amount        numeric(12, 2) NOT NULL,
    currency      char(3) NOT NULL DEFAULT 'USD',
    method        payment_method NOT NULL,
    status        payment_status NOT NULL DEFAULT 'pending',
    provider_ref  varchar(64),
    created_at    timestamptz NOT NULL DEFAULT now(),
    processed_at  timestamptz
);
CREATE INDEX idx_payments_order ON payments (order_id);
CREATE INDEX idx_payments_tenant_created ON payments (tenant_id, created_at DESC);
CREATE INDEX idx_payments_status ON payments (status);
CREATE INDEX idx_payments_created_at ON payments (created_at);  -- archive batches walk it (data lifecycle)

CREATE TABLE audit_logs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    user_id     uuid REFERENCES users (id) ON DELETE SET NULL,
    table_name  varchar(63) NOT NULL,
    record_id   uuid,
    action      audit_action NOT NULL,
    old_values  jsonb,
    new_values  jsonb,
    ip_address  inet,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_audit_logs_tenant_created ON audit_logs (tenant_id, created_at DESC);
CREATE INDEX idx_audit_logs_user ON audit_logs (user_id);
CREATE INDEX idx_audit_logs_created_at ON audit_logs (created_at);

CREATE TABLE user_sessions (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash    char(64) NOT NULL UNIQUE,
    ip_address    inet,
    user_agent    varchar(255),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    revoked_at    timestamptz
);
CREATE INDEX idx_user_sessions_user ON user_sessions (user_id);
CREATE INDEX idx_user_sessions_tenant ON user_sessions (tenant_id);
CREATE INDEX idx_user_sessions_expires_at ON user_sessions (expires_at);
