-- flowgate's schema, version 1. Applied once per database (or schema) by `flowgate migrate`
-- or at start, under an advisory lock; recorded in flowgate_migrations.
--
-- Records are kept as JSON (`json`, not `jsonb`: the text is kept as written, so a run's raw
-- request reads back byte for byte, as on sled) beside the columns that queries filter on.

-- Runs: the record, plus what a search narrows with. Run ids are UUIDv7 (time ordered), and
-- PostgreSQL compares uuids byte by byte, so `ORDER BY id DESC` is newest first.
CREATE TABLE runs (
    id uuid PRIMARY KEY,
    tenant text NOT NULL,
    agent text NOT NULL,
    created_ms bigint NOT NULL,           -- from the id
    status text NOT NULL,
    model text,                           -- the model answered, else the one asked; NULL: none
    provider text,
    version_id text,
    cache text NOT NULL,
    source text NOT NULL,
    cost_usd double precision NOT NULL,
    duration_seconds double precision NOT NULL,
    search_text text NOT NULL,            -- the run's texts, ASCII-lowercased (free-text search)
    record json NOT NULL
);
CREATE INDEX runs_by_agent ON runs (tenant, agent, id DESC);
CREATE INDEX runs_by_tenant ON runs (tenant, id DESC);
CREATE INDEX runs_by_status ON runs (tenant, agent, status, id DESC);
CREATE INDEX runs_by_model ON runs (tenant, agent, model, id DESC);
CREATE INDEX runs_by_provider ON runs (tenant, agent, provider, id DESC);
CREATE INDEX runs_by_version ON runs (tenant, agent, version_id, id DESC);
CREATE INDEX runs_by_cache ON runs (tenant, agent, cache, id DESC);
CREATE INDEX runs_by_source ON runs (tenant, agent, source, id DESC);

-- Free text with trigram indexes when the server has pg_trgm (Debian's postgresql package
-- does); without it, free-text search reads the candidate runs instead.
DO $$
DECLARE
    trgm_schema text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
        BEGIN
            -- In `public`, never in flowgate's own schema: dropping that schema must not drop
            -- an extension other schemas use.
            CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public;
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'pg_trgm is not available (%): free text is searched without an index', SQLERRM;
        END;
    END IF;
    SELECT n.nspname INTO trgm_schema
        FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
        WHERE e.extname = 'pg_trgm';
    IF trgm_schema IS NOT NULL THEN
        EXECUTE format('CREATE INDEX runs_text ON runs USING gin (search_text %I.gin_trgm_ops)',
                       trgm_schema);
    END IF;
END $$;

-- The categorical values that exist, for a search UI (written with the runs, once each).
CREATE TABLE run_values (
    tenant text NOT NULL,
    agent text NOT NULL,
    field text NOT NULL,
    value text NOT NULL,
    PRIMARY KEY (tenant, agent, field, value)
);

-- Feedback: one per run (a feedback token is one vote).
CREATE TABLE feedback (
    run_id uuid PRIMARY KEY,
    outcome text NOT NULL,
    record json NOT NULL
);

-- Share links: one live token per (tenant, run).
CREATE TABLE shares (
    token text PRIMARY KEY,
    tenant text NOT NULL,
    run_id uuid NOT NULL,
    created_at text NOT NULL,
    UNIQUE (tenant, run_id)
);

-- Agents: schemas numbered per agent, the digests that lead to them, versions and their
-- statistics, deployments and their history, conversation links.
CREATE TABLE schema_counters (
    tenant text NOT NULL,
    agent text NOT NULL,
    last_id integer NOT NULL,
    PRIMARY KEY (tenant, agent)
);
CREATE TABLE schemas (
    tenant text NOT NULL,
    agent text NOT NULL,
    id integer NOT NULL,
    record json NOT NULL,
    PRIMARY KEY (tenant, agent, id)
);
CREATE TABLE schema_digests (
    tenant text NOT NULL,
    agent text NOT NULL,
    digest bytea NOT NULL,
    schema_id integer NOT NULL,
    PRIMARY KEY (tenant, agent, digest)
);
CREATE TABLE versions (
    tenant text NOT NULL,
    agent text NOT NULL,
    id text NOT NULL,
    record json NOT NULL,
    PRIMARY KEY (tenant, agent, id)
);
CREATE TABLE version_stats (
    tenant text NOT NULL,
    agent text NOT NULL,
    version_id text NOT NULL,
    stats json NOT NULL,
    PRIMARY KEY (tenant, agent, version_id)
);
CREATE SEQUENCE deployment_sequence;
CREATE TABLE deployments (
    tenant text NOT NULL,
    agent text NOT NULL,
    schema_id integer NOT NULL,
    environment text NOT NULL,
    record json NOT NULL,
    PRIMARY KEY (tenant, agent, schema_id, environment)
);
CREATE TABLE deployment_history (
    tenant text NOT NULL,
    agent text NOT NULL,
    sequence bigint NOT NULL,
    record json NOT NULL,
    PRIMARY KEY (tenant, agent, sequence)
);
CREATE TABLE conversations (
    tenant text NOT NULL,
    agent text NOT NULL,
    hash bytea NOT NULL,
    conversation_id uuid NOT NULL,
    PRIMARY KEY (tenant, agent, hash)
);

-- Cached answers, with their size and last use (the eviction order).
CREATE TABLE answers (
    key bytea PRIMARY KEY,
    stored_at_ms bigint NOT NULL,
    last_use_ms bigint NOT NULL,
    size bigint NOT NULL,
    answer json NOT NULL
);
CREATE INDEX answers_by_use ON answers (last_use_ms, key);

-- Run stats per tenant, agent, source and hour, and each agent's latest run per source.
CREATE TABLE stats_hours (
    tenant text NOT NULL,
    agent text NOT NULL,
    source text NOT NULL,
    hour bigint NOT NULL,
    sums json NOT NULL,
    PRIMARY KEY (tenant, agent, source, hour)
);
CREATE TABLE stats_agents (
    tenant text NOT NULL,
    agent text NOT NULL,
    source text NOT NULL,
    last_run_ms bigint NOT NULL,
    PRIMARY KEY (tenant, agent, source)
);
