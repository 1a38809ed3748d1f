//! Evaluations on sled, JSON values under keys that start with the tenant (and agent):
//!
//! * `eval_datasets`: `tenant \0 agent \0 name` → [`Dataset`];
//! * `eval_items`: `tenant \0 agent \0 name \0 seq` (u32, big-endian) → [`DatasetItem`], and
//!   `eval_item_hashes`: `tenant \0 agent \0 name \0 input hash` → seq (distinct inputs);
//! * `eval_reviews`: `tenant \0 agent \0 input hash \0 output hash` → [`Review`];
//! * `eval_reviewers`: `tenant \0 agent` → [`ReviewerConfig`];
//! * `eval_benchmarks`: `tenant \0 id` → [`Benchmark`];
//! * `eval_results`: `id ++ candidate (u16) ++ item (u32)` → [`BenchResult`].

use futures::future::{BoxFuture, FutureExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use super::{agent_prefix, backend, off_thread};
use crate::evals::{
    BenchResult, BenchStatus, Benchmark, Dataset, DatasetItem, Review, Reviewer, ReviewerConfig,
};
use crate::storage::{EvalStore, StorageError};

#[derive(Clone)]
pub struct SledEvalStore {
    datasets: ::sled::Tree,
    items: ::sled::Tree,
    hashes: ::sled::Tree,
    reviews: ::sled::Tree,
    reviewers: ::sled::Tree,
    benchmarks: ::sled::Tree,
    results: ::sled::Tree,
}

fn corrupt(e: serde_json::Error) -> StorageError {
    StorageError::Corrupt {
        what: "evaluation",
        detail: e.to_string(),
    }
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(value).map_err(corrupt)
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    serde_json::from_slice(bytes).map_err(corrupt)
}

fn dataset_prefix(dataset: &Dataset) -> Vec<u8> {
    let mut key = agent_prefix(&dataset.tenant, &dataset.agent);
    key.extend_from_slice(dataset.name.as_bytes());
    key.push(0);
    key
}

fn benchmark_key(tenant: &str, id: Uuid) -> Vec<u8> {
    let mut key = tenant.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}

impl SledEvalStore {
    pub(super) fn open(db: &::sled::Db) -> Result<SledEvalStore, StorageError> {
        let tree = |name: &str| db.open_tree(name).map_err(backend);
        Ok(SledEvalStore {
            datasets: tree("eval_datasets")?,
            items: tree("eval_items")?,
            hashes: tree("eval_item_hashes")?,
            reviews: tree("eval_reviews")?,
            reviewers: tree("eval_reviewers")?,
            benchmarks: tree("eval_benchmarks")?,
            results: tree("eval_results")?,
        })
    }

    fn list<T: DeserializeOwned>(
        tree: &::sled::Tree,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<T>, StorageError> {
        tree.scan_prefix(prefix)
            .values()
            .take(limit)
            .map(|v| parse(&v.map_err(backend)?))
            .collect()
    }

    fn get<T: DeserializeOwned>(
        tree: &::sled::Tree,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        tree.get(key)
            .map_err(backend)?
            .map(|v| parse(&v))
            .transpose()
    }

    fn add_items_now(
        &self,
        dataset: &Dataset,
        items: &[DatasetItem],
        max: usize,
    ) -> Result<usize, StorageError> {
        let prefix = dataset_prefix(dataset);
        // The next sequence number: one past the last item's.
        let mut next = match self.items.scan_prefix(&prefix).keys().next_back() {
            Some(key) => {
                let key = key.map_err(backend)?;
                let tail: [u8; 4] = key[prefix.len()..].try_into().unwrap_or([0; 4]);
                u32::from_be_bytes(tail) + 1
            }
            None => 0,
        };
        let mut added = 0;
        for item in items {
            if next as usize >= max {
                break;
            }
            let mut hash_key = prefix.clone();
            hash_key.extend_from_slice(item.input_hash.as_bytes());
            let fresh = self
                .hashes
                .compare_and_swap(&hash_key, None as Option<&[u8]>, Some(&next.to_be_bytes()))
                .map_err(backend)?
                .is_ok();
            if !fresh {
                continue;
            }
            let mut key = prefix.clone();
            key.extend_from_slice(&next.to_be_bytes());
            self.items.insert(key, json(item)?).map_err(backend)?;
            next += 1;
            added += 1;
        }
        Ok(added)
    }

    fn put_review_now(&self, review: &Review) -> Result<Review, StorageError> {
        let mut key = agent_prefix(&review.tenant, &review.agent);
        key.extend_from_slice(review.input_hash.as_bytes());
        key.push(0);
        key.extend_from_slice(review.output_hash.as_bytes());
        loop {
            let old = self.reviews.get(&key).map_err(backend)?;
            if let Some(bytes) = &old {
                let kept: Review = parse(bytes)?;
                // A person's review is never replaced by the AI's.
                if matches!(kept.reviewer, Reviewer::User { .. })
                    && matches!(review.reviewer, Reviewer::Ai { .. })
                {
                    return Ok(kept);
                }
            }
            let swapped = self
                .reviews
                .compare_and_swap(&key, old, Some(json(review)?))
                .map_err(backend)?;
            if swapped.is_ok() {
                return Ok(review.clone());
            }
        }
    }
}

impl EvalStore for SledEvalStore {
    fn put_dataset<'a>(&'a self, dataset: &'a Dataset) -> BoxFuture<'a, Result<(), StorageError>> {
        let mut key = agent_prefix(&dataset.tenant, &dataset.agent);
        key.extend_from_slice(dataset.name.as_bytes());
        let result = json(dataset).and_then(|v| self.datasets.insert(key, v).map_err(backend));
        futures::future::ready(result.map(drop)).boxed()
    }

    fn dataset<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Dataset>, StorageError>> {
        let mut key = agent_prefix(tenant, agent);
        key.extend_from_slice(name.as_bytes());
        futures::future::ready(Self::get(&self.datasets, &key)).boxed()
    }

    fn datasets<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Dataset>, StorageError>> {
        let prefix = agent_prefix(tenant, agent);
        futures::future::ready(Self::list(&self.datasets, &prefix, 1000)).boxed()
    }

    fn add_items<'a>(
        &'a self,
        dataset: &'a Dataset,
        items: &'a [DatasetItem],
        max: usize,
    ) -> BoxFuture<'a, Result<usize, StorageError>> {
        let store = self.clone();
        let (dataset, items) = (dataset.clone(), items.to_vec());
        off_thread(move || store.add_items_now(&dataset, &items, max))
    }

    fn items<'a>(
        &'a self,
        dataset: &'a Dataset,
    ) -> BoxFuture<'a, Result<Vec<DatasetItem>, StorageError>> {
        let store = self.clone();
        let prefix = dataset_prefix(dataset);
        off_thread(move || Self::list(&store.items, &prefix, usize::MAX))
    }

    fn put_review<'a>(&'a self, review: &'a Review) -> BoxFuture<'a, Result<Review, StorageError>> {
        futures::future::ready(self.put_review_now(review)).boxed()
    }

    fn review<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        input_hash: &'a str,
        output_hash: &'a str,
    ) -> BoxFuture<'a, Result<Option<Review>, StorageError>> {
        let mut key = agent_prefix(tenant, agent);
        key.extend_from_slice(input_hash.as_bytes());
        key.push(0);
        key.extend_from_slice(output_hash.as_bytes());
        futures::future::ready(Self::get(&self.reviews, &key)).boxed()
    }

    fn reviews<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Review>, StorageError>> {
        let store = self.clone();
        let prefix = agent_prefix(tenant, agent);
        off_thread(move || Self::list(&store.reviews, &prefix, limit))
    }

    fn put_reviewer<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        reviewer: &'a ReviewerConfig,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        let key = agent_prefix(tenant, agent);
        let result = json(reviewer).and_then(|v| self.reviewers.insert(key, v).map_err(backend));
        futures::future::ready(result.map(drop)).boxed()
    }

    fn reviewer<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
    ) -> BoxFuture<'a, Result<Option<ReviewerConfig>, StorageError>> {
        let key = agent_prefix(tenant, agent);
        futures::future::ready(Self::get(&self.reviewers, &key)).boxed()
    }

    fn put_benchmark<'a>(
        &'a self,
        benchmark: &'a Benchmark,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        let key = benchmark_key(&benchmark.tenant, benchmark.id);
        let result = json(benchmark).and_then(|v| {
            self.benchmarks.insert(key, v).map_err(backend)?;
            // A benchmark's state is what a restart resumes from.
            self.benchmarks.flush().map_err(backend)
        });
        futures::future::ready(result.map(drop)).boxed()
    }

    fn benchmark<'a>(
        &'a self,
        tenant: &'a str,
        id: Uuid,
    ) -> BoxFuture<'a, Result<Option<Benchmark>, StorageError>> {
        let key = benchmark_key(tenant, id);
        futures::future::ready(Self::get(&self.benchmarks, &key)).boxed()
    }

    fn benchmarks<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Benchmark>, StorageError>> {
        let store = self.clone();
        let (tenant, agent) = (tenant.to_string(), agent.to_string());
        off_thread(move || {
            let mut prefix = tenant.as_bytes().to_vec();
            prefix.push(0);
            let all: Vec<Benchmark> = Self::list(&store.benchmarks, &prefix, usize::MAX)?;
            let mut mine: Vec<Benchmark> = all.into_iter().filter(|b| b.agent == agent).collect();
            mine.sort_by_key(|b| std::cmp::Reverse(b.id));
            Ok(mine)
        })
    }

    fn running(&self) -> BoxFuture<'_, Result<Vec<Benchmark>, StorageError>> {
        let store = self.clone();
        off_thread(move || {
            let all: Vec<Benchmark> = Self::list(&store.benchmarks, &[], usize::MAX)?;
            Ok(all
                .into_iter()
                .filter(|b| b.status == BenchStatus::Running)
                .collect())
        })
    }

    fn put_result<'a>(
        &'a self,
        benchmark: Uuid,
        result: &'a BenchResult,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        let mut key = benchmark.as_bytes().to_vec();
        key.extend_from_slice(&result.candidate.to_be_bytes());
        key.extend_from_slice(&result.item.to_be_bytes());
        let written = json(result).and_then(|v| self.results.insert(key, v).map_err(backend));
        futures::future::ready(written.map(drop)).boxed()
    }

    fn results(&self, benchmark: Uuid) -> BoxFuture<'_, Result<Vec<BenchResult>, StorageError>> {
        let store = self.clone();
        off_thread(move || Self::list(&store.results, benchmark.as_bytes(), usize::MAX))
    }
}
