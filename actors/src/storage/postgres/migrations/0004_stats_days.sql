-- The daily roll-up of the run stats (crate::stats::daily): runs, errors and cost per tenant,
-- day (days since the epoch, UTC), agent, source and model, so that the cost page reads one
-- small row per day instead of 24 hourly aggregates that are mostly latency histograms.
CREATE TABLE stats_days (
    tenant text NOT NULL,
    day integer NOT NULL,
    agent text NOT NULL,
    source text NOT NULL,
    model text NOT NULL,
    runs bigint NOT NULL,
    errors bigint NOT NULL,
    cost_usd double precision NOT NULL,
    PRIMARY KEY (tenant, day, agent, source, model)
);

-- The runs stored before it, from their columns (one pass over the table: seconds at 1M
-- runs, while this migration holds the others back). The model as the stats key it: the one
-- that answered, else the one asked for, at most 128 characters; a cost that is not a number
-- counts as none. Instances of an earlier release still running after this migration add
-- runs without days: upgrade them all.
INSERT INTO stats_days (tenant, day, agent, source, model, runs, errors, cost_usd)
SELECT tenant, (created_ms / 86400000)::integer, agent, source, left(COALESCE(model, ''), 128),
       count(*),
       count(*) FILTER (WHERE status = 'error'),
       COALESCE(SUM(cost_usd) FILTER (
           WHERE cost_usd NOT IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8)), 0)
FROM runs
GROUP BY 1, 2, 3, 4, 5;
