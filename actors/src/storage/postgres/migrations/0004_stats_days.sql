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

-- The runs stored before it: their hourly aggregates do not know the model, so they count
-- under "(before upgrade)" (retention takes deleted runs from that row first: they are the
-- oldest). Instances of an earlier release still running after this migration add hours
-- without days: upgrade them all.
INSERT INTO stats_days (tenant, day, agent, source, model, runs, errors, cost_usd)
SELECT tenant, (hour / 24)::integer, agent, source, '(before upgrade)',
       SUM(COALESCE((sums->>'runs')::bigint, 0)),
       SUM(COALESCE((sums->>'errors')::bigint, 0)),
       SUM(COALESCE((sums->>'cost_usd')::double precision, 0))
FROM stats_hours
GROUP BY 1, 2, 3, 4
HAVING SUM(COALESCE((sums->>'runs')::bigint, 0)) > 0;
