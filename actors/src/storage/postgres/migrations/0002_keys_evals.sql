-- Virtual API keys and their usage (issue 13), evaluations (issue 14).
CREATE TABLE keys (
    id text PRIMARY KEY,
    record json NOT NULL
);
CREATE TABLE key_usage (
    subject text PRIMARY KEY,
    usage json NOT NULL
);
CREATE TABLE eval_datasets (
    tenant text NOT NULL,
    agent text NOT NULL,
    name text NOT NULL,
    record json NOT NULL,
    PRIMARY KEY (tenant, agent, name)
);
CREATE TABLE eval_items (
    tenant text NOT NULL,
    agent text NOT NULL,
    dataset text NOT NULL,
    seq integer NOT NULL,
    input_hash text NOT NULL,
    item json NOT NULL,
    PRIMARY KEY (tenant, agent, dataset, seq),
    UNIQUE (tenant, agent, dataset, input_hash)
);
CREATE TABLE eval_reviews (
    tenant text NOT NULL,
    agent text NOT NULL,
    input_hash text NOT NULL,
    output_hash text NOT NULL,
    by_user boolean NOT NULL,
    record json NOT NULL,
    PRIMARY KEY (tenant, agent, input_hash, output_hash)
);
CREATE TABLE eval_reviewers (
    tenant text NOT NULL,
    agent text NOT NULL,
    record json NOT NULL,
    PRIMARY KEY (tenant, agent)
);
CREATE TABLE eval_benchmarks (
    id uuid PRIMARY KEY,
    tenant text NOT NULL,
    agent text NOT NULL,
    running boolean NOT NULL,
    record json NOT NULL
);
CREATE INDEX eval_benchmarks_by_agent ON eval_benchmarks (tenant, agent, id DESC);
CREATE TABLE eval_results (
    benchmark uuid NOT NULL,
    candidate integer NOT NULL,
    item integer NOT NULL,
    record json NOT NULL,
    PRIMARY KEY (benchmark, candidate, item)
);
