//! Evaluations: datasets and their items, reviews, AI reviewer settings, benchmarks and their
//! results ([`EvalStore`]).

use futures::future::BoxFuture;
use uuid::Uuid;

use super::StorageError;
use crate::evals::{BenchResult, Benchmark, Dataset, DatasetItem, Review, ReviewerConfig};

/// Everything is scoped to a tenant (and an agent): no call reads across tenants.
pub trait EvalStore: Send + Sync + 'static {
    /// Creates or replaces a dataset's description.
    fn put_dataset<'a>(&'a self, dataset: &'a Dataset) -> BoxFuture<'a, Result<(), StorageError>>;

    fn dataset<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Dataset>, StorageError>>;

    fn datasets<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Dataset>, StorageError>>;

    /// Adds items in order, skipping those whose `input_hash` the dataset already holds, and
    /// none past `max` items in all; returns how many were added.
    fn add_items<'a>(
        &'a self,
        dataset: &'a Dataset,
        items: &'a [DatasetItem],
        max: usize,
    ) -> BoxFuture<'a, Result<usize, StorageError>>;

    /// A dataset's items, in the order they were added.
    fn items<'a>(
        &'a self,
        dataset: &'a Dataset,
    ) -> BoxFuture<'a, Result<Vec<DatasetItem>, StorageError>>;

    /// Writes a review; a person's replaces any review of the pair, an AI's never replaces a
    /// person's. Returns the review kept.
    fn put_review<'a>(&'a self, review: &'a Review) -> BoxFuture<'a, Result<Review, StorageError>>;

    fn review<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        input_hash: &'a str,
        output_hash: &'a str,
    ) -> BoxFuture<'a, Result<Option<Review>, StorageError>>;

    /// An agent's reviews, at most `limit`.
    fn reviews<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Review>, StorageError>>;

    fn put_reviewer<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
        reviewer: &'a ReviewerConfig,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    fn reviewer<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
    ) -> BoxFuture<'a, Result<Option<ReviewerConfig>, StorageError>>;

    /// Creates or replaces a benchmark's state.
    fn put_benchmark<'a>(
        &'a self,
        benchmark: &'a Benchmark,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    fn benchmark<'a>(
        &'a self,
        tenant: &'a str,
        id: Uuid,
    ) -> BoxFuture<'a, Result<Option<Benchmark>, StorageError>>;

    /// A tenant's benchmarks of an agent, newest first.
    fn benchmarks<'a>(
        &'a self,
        tenant: &'a str,
        agent: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Benchmark>, StorageError>>;

    /// Every tenant's benchmarks still running (to resume them after a restart).
    fn running(&self) -> BoxFuture<'_, Result<Vec<Benchmark>, StorageError>>;

    /// Writes one item's result on one candidate (idempotent on the pair).
    fn put_result<'a>(
        &'a self,
        benchmark: Uuid,
        result: &'a BenchResult,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// A benchmark's results, by candidate then item.
    fn results(&self, benchmark: Uuid) -> BoxFuture<'_, Result<Vec<BenchResult>, StorageError>>;
}
