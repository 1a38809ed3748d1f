-- The number of stored runs, kept by the statements that add and delete them, so that
-- retention weighs the runs without counting the table after every batch it deletes (a
-- count(*) over millions of rows each time). One row.
CREATE TABLE run_count (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    runs bigint NOT NULL
);
INSERT INTO run_count (one, runs) SELECT true, count(*) FROM runs;
