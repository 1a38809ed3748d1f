//! Evaluations on PostgreSQL: `eval_datasets`, `eval_items` (distinct by input hash, ordered by
//! a sequence per dataset), `eval_reviews` (a person's review never replaced by the AI's),
//! `eval_reviewers`, `eval_benchmarks` and `eval_results` (one row per item and candidate).

use std::sync::Arc;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::{corrupt, pg_error, to_json, Db};
use crate::evals::{
    BenchResult, BenchStatus, Benchmark, Dataset, DatasetItem, Review, Reviewer, ReviewerConfig,
};
use crate::storage::{EvalStore, StorageError};

pub struct PgEvalStore {
    db: Arc<Db>,
}

impl PgEvalStore {
    pub(super) fn new(db: Arc<Db>) -> PgEvalStore {
        PgEvalStore { db }
    }
}

fn parse<T: DeserializeOwned>(text: &str) -> Result<T, StorageError> {
    serde_json::from_str(text).map_err(corrupt("evaluation"))
}

fn parse_all<T: DeserializeOwned>(rows: &[tokio_postgres::Row]) -> Result<Vec<T>, StorageError> {
    rows.iter().map(|r| parse(r.get::<_, &str>(0))).collect()
}

impl EvalStore for PgEvalStore {
    fn put_dataset<'a>(&'a self, dataset: &'a Dataset) -> BoxFuture<'a, Result<(), StorageError>> {
        let json = to_json("dataset", dataset);
        let d = dataset.clone();
        self.db.run(move |client| async move {
            let json = json?;
            client
                .execute(
                    "INSERT INTO eval_datasets (tenant, agent, name, record)
                     VALUES ($1, $2, $3, $4::text::json)
                     ON CONFLICT (tenant, agent, name) DO UPDATE SET record = EXCLUDED.record",
                    &[&d.tenant, &d.agent, &d.name, &json],
                )
                .await
                .map_err(pg_error)?;
            Ok(())
        })
    }

    fn dataset<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Dataset>, StorageError>> {
        let (t, a, n) = (tenant.to_string(), agent.to_string(), name.to_string());
        self.db.run(move |client| async move {
            let row = client
                .query_opt(
                    "SELECT record::text FROM eval_datasets
                     WHERE tenant = $1 AND agent = $2 AND name = $3",
                    &[&t, &a, &n],
                )
                .await
                .map_err(pg_error)?;
            row.map(|r| parse(r.get::<_, &str>(0))).transpose()
        })
    }

    fn datasets<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Dataset>, StorageError>> {
        let (t, a) = (tenant.to_string(), agent.to_string());
        self.db.run(move |client| async move {
            let rows = client
                .query(
                    "SELECT record::text FROM eval_datasets WHERE tenant = $1 AND agent = $2
                     ORDER BY name LIMIT 1000",
                    &[&t, &a],
                )
                .await
                .map_err(pg_error)?;
            parse_all(&rows)
        })
    }

    fn add_items<'a>(
        &'a self,
        dataset: &'a Dataset,
        items: &'a [DatasetItem],
        max: usize,
    ) -> BoxFuture<'a, Result<usize, StorageError>> {
        let d = dataset.clone();
        let items: Result<Vec<(String, String)>, StorageError> = items
            .iter()
            .map(|i| Ok((i.input_hash.clone(), to_json("dataset item", i)?)))
            .collect();
        self.db.run(move |mut client| async move {
            let items = items?;
            let tx = client.transaction().await.map_err(pg_error)?;
            // One writer per dataset at a time: the sequence and the bound hold.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1 || '/' || $2 || '/' || $3))",
                &[&d.tenant, &d.agent, &d.name],
            )
            .await
            .map_err(pg_error)?;
            let next: i32 = tx
                .query_one(
                    "SELECT COALESCE(MAX(seq) + 1, 0) FROM eval_items
                     WHERE tenant = $1 AND agent = $2 AND dataset = $3",
                    &[&d.tenant, &d.agent, &d.name],
                )
                .await
                .map_err(pg_error)?
                .get(0);
            let mut next = next;
            let mut added = 0;
            for (hash, json) in &items {
                if next as usize >= max {
                    break;
                }
                let n = tx
                    .execute(
                        "INSERT INTO eval_items (tenant, agent, dataset, seq, input_hash, item)
                         VALUES ($1, $2, $3, $4, $5, $6::text::json)
                         ON CONFLICT (tenant, agent, dataset, input_hash) DO NOTHING",
                        &[&d.tenant, &d.agent, &d.name, &next, hash, json],
                    )
                    .await
                    .map_err(pg_error)?;
                if n == 1 {
                    next += 1;
                    added += 1;
                }
            }
            tx.commit().await.map_err(pg_error)?;
            Ok(added)
        })
    }

    fn items<'a>(
        &'a self,
        dataset: &'a Dataset,
    ) -> BoxFuture<'a, Result<Vec<DatasetItem>, StorageError>> {
        let d = dataset.clone();
        self.db.run(move |client| async move {
            let rows = client
                .query(
                    "SELECT item::text FROM eval_items
                     WHERE tenant = $1 AND agent = $2 AND dataset = $3 ORDER BY seq",
                    &[&d.tenant, &d.agent, &d.name],
                )
                .await
                .map_err(pg_error)?;
            parse_all(&rows)
        })
    }

    fn put_review<'a>(&'a self, review: &'a Review) -> BoxFuture<'a, Result<Review, StorageError>> {
        let json = to_json("review", review);
        let r = review.clone();
        self.db.run(move |client| async move {
            let json = json?;
            let by_user = matches!(r.reviewer, Reviewer::User { .. });
            let written = client
                .query_opt(
                    "INSERT INTO eval_reviews
                         (tenant, agent, input_hash, output_hash, by_user, record)
                     VALUES ($1, $2, $3, $4, $5, $6::text::json)
                     ON CONFLICT (tenant, agent, input_hash, output_hash) DO UPDATE
                         SET by_user = EXCLUDED.by_user, record = EXCLUDED.record
                         WHERE EXCLUDED.by_user OR NOT eval_reviews.by_user
                     RETURNING record::text",
                    &[
                        &r.tenant,
                        &r.agent,
                        &r.input_hash,
                        &r.output_hash,
                        &by_user,
                        &json,
                    ],
                )
                .await
                .map_err(pg_error)?;
            if let Some(row) = written {
                return parse(row.get::<_, &str>(0));
            }
            // A person's review stood.
            let row = client
                .query_one(
                    "SELECT record::text FROM eval_reviews
                     WHERE tenant = $1 AND agent = $2 AND input_hash = $3 AND output_hash = $4",
                    &[&r.tenant, &r.agent, &r.input_hash, &r.output_hash],
                )
                .await
                .map_err(pg_error)?;
            parse(row.get::<_, &str>(0))
        })
    }

    fn review<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        input_hash: &'a str,
        output_hash: &'a str,
    ) -> BoxFuture<'a, Result<Option<Review>, StorageError>> {
        let args = [tenant, agent, input_hash, output_hash].map(str::to_string);
        self.db.run(move |client| async move {
            let row = client
                .query_opt(
                    "SELECT record::text FROM eval_reviews
                     WHERE tenant = $1 AND agent = $2 AND input_hash = $3 AND output_hash = $4",
                    &[&args[0], &args[1], &args[2], &args[3]],
                )
                .await
                .map_err(pg_error)?;
            row.map(|r| parse(r.get::<_, &str>(0))).transpose()
        })
    }

    fn reviews<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Review>, StorageError>> {
        let (t, a) = (tenant.to_string(), agent.to_string());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db.run(move |client| async move {
            let rows = client
                .query(
                    "SELECT record::text FROM eval_reviews WHERE tenant = $1 AND agent = $2
                     ORDER BY input_hash, output_hash LIMIT $3",
                    &[&t, &a, &limit],
                )
                .await
                .map_err(pg_error)?;
            parse_all(&rows)
        })
    }

    fn put_reviewer<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        reviewer: &'a ReviewerConfig,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        let json = to_json("reviewer", reviewer);
        let (t, a) = (tenant.to_string(), agent.to_string());
        self.db.run(move |client| async move {
            let json = json?;
            client
                .execute(
                    "INSERT INTO eval_reviewers (tenant, agent, record) VALUES ($1, $2, $3::text::json)
                     ON CONFLICT (tenant, agent) DO UPDATE SET record = EXCLUDED.record",
                    &[&t, &a, &json],
                )
                .await
                .map_err(pg_error)?;
            Ok(())
        })
    }

    fn reviewer<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
    ) -> BoxFuture<'a, Result<Option<ReviewerConfig>, StorageError>> {
        let (t, a) = (tenant.to_string(), agent.to_string());
        self.db.run(move |client| async move {
            let row = client
                .query_opt(
                    "SELECT record::text FROM eval_reviewers WHERE tenant = $1 AND agent = $2",
                    &[&t, &a],
                )
                .await
                .map_err(pg_error)?;
            row.map(|r| parse(r.get::<_, &str>(0))).transpose()
        })
    }

    fn put_benchmark<'a>(
        &'a self,
        benchmark: &'a Benchmark,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        let json = to_json("benchmark", benchmark);
        let b = benchmark.clone();
        self.db.run(move |client| async move {
            let json = json?;
            let running = b.status == BenchStatus::Running;
            client
                .execute(
                    "INSERT INTO eval_benchmarks (id, tenant, agent, running, record)
                     VALUES ($1, $2, $3, $4, $5::text::json)
                     ON CONFLICT (id) DO UPDATE
                         SET running = EXCLUDED.running, record = EXCLUDED.record",
                    &[&b.id, &b.tenant, &b.agent, &running, &json],
                )
                .await
                .map_err(pg_error)?;
            Ok(())
        })
    }

    fn benchmark<'a>(
        &'a self,
        tenant: &'a str,
        id: Uuid,
    ) -> BoxFuture<'a, Result<Option<Benchmark>, StorageError>> {
        let t = tenant.to_string();
        self.db.run(move |client| async move {
            let row = client
                .query_opt(
                    "SELECT record::text FROM eval_benchmarks WHERE tenant = $1 AND id = $2",
                    &[&t, &id],
                )
                .await
                .map_err(pg_error)?;
            row.map(|r| parse(r.get::<_, &str>(0))).transpose()
        })
    }

    fn benchmarks<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Benchmark>, StorageError>> {
        let (t, a) = (tenant.to_string(), agent.to_string());
        self.db.run(move |client| async move {
            let rows = client
                .query(
                    "SELECT record::text FROM eval_benchmarks WHERE tenant = $1 AND agent = $2
                     ORDER BY id DESC LIMIT 1000",
                    &[&t, &a],
                )
                .await
                .map_err(pg_error)?;
            parse_all(&rows)
        })
    }

    fn running(&self) -> BoxFuture<'_, Result<Vec<Benchmark>, StorageError>> {
        self.db.run(move |client| async move {
            let rows = client
                .query(
                    "SELECT record::text FROM eval_benchmarks WHERE running",
                    &[],
                )
                .await
                .map_err(pg_error)?;
            parse_all(&rows)
        })
    }

    fn put_result<'a>(
        &'a self,
        benchmark: Uuid,
        result: &'a BenchResult,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        let json = to_json("benchmark result", result);
        let (candidate, item) = (i32::from(result.candidate), result.item as i32);
        self.db.run(move |client| async move {
            let json = json?;
            client
                .execute(
                    "INSERT INTO eval_results (benchmark, candidate, item, record)
                     VALUES ($1, $2, $3, $4::text::json)
                     ON CONFLICT (benchmark, candidate, item) DO UPDATE SET record = EXCLUDED.record",
                    &[&benchmark, &candidate, &item, &json],
                )
                .await
                .map_err(pg_error)?;
            Ok(())
        })
    }

    fn results(&self, benchmark: Uuid) -> BoxFuture<'_, Result<Vec<BenchResult>, StorageError>> {
        self.db.run(move |client| async move {
            let rows = client
                .query(
                    "SELECT record::text FROM eval_results WHERE benchmark = $1
                     ORDER BY candidate, item",
                    &[&benchmark],
                )
                .await
                .map_err(pg_error)?;
            parse_all(&rows)
        })
    }
}
