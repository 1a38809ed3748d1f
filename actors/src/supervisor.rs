//! The supervisor: starts every actor from the compiled config, restarts the ones that stop,
//! and drains them on shutdown.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use arc_swap::ArcSwap;

use crate::agents::AgentStore;
use crate::cache::{Cache, CacheSettings};
use crate::catalog::Catalog;
use crate::engine::{Gateway, HedgingPolicy};
use crate::provider::actor::{Clock, SystemClock};
use crate::provider::media::{MediaFetcher, MediaSettings};
use crate::provider::{ProviderActor, ProviderClient, ProviderHandle, ProviderSettings};
use crate::recorder::metrics::Metrics;
use crate::recorder::retention::{Retention, RetentionPolicy};
use crate::recorder::{Barrier, Flush, Recorder, RecorderHandle};
use crate::retry::RetryPolicy;
use crate::router::ProviderRegistry;
use crate::router::{Router, Strategy};
use crate::stats::RunStats;
use crate::storage::postgres::PostgresStorage;
use crate::storage::sled::SledStorage;
use crate::storage::spool::{Spool, SpooledRunStore};
use crate::storage::{Backend, Storage};

/// The runtime configuration the actors need, compiled from the TOML config.
#[derive(Debug)]
pub struct GatewayConfig {
    pub providers: Vec<ProviderSettings>,
    pub catalog: Catalog,
    /// Which backend keeps what the gateway stores.
    pub storage: Backend,
    /// Where the embedded store (sled) keeps what the gateway stores.
    pub data_dir: PathBuf,
    /// How often the store is flushed to disk (the `kill -9` loss window).
    pub flush_interval: Duration,
    /// The most memory sled's page cache takes (`[storage] sled_cache_mb`).
    pub sled_cache_bytes: u64,
    /// How long runs are kept and how much room they may take.
    pub retention: RetentionPolicy,
    /// Shards of the in-flight coalescing table.
    /// Stored answers (TTL, size bound) and the shards of the in-flight table.
    pub cache: CacheSettings,
    /// Base URL of the web UI, for the run links.
    pub public_url: String,
    /// How adapters download media for providers that cannot fetch URLs.
    pub media: MediaSettings,
    /// Retries of transient upstream failures.
    pub retry: RetryPolicy,
    /// Hedged requests for the agents that opted in.
    pub hedging: HedgingPolicy,
    /// How plans order a model's providers.
    pub routing: Strategy,
}

impl Supervised for Recorder {}
impl Supervised for ProviderActor {
    fn restarting(&mut self, _: &mut Self::Context) {
        tracing::warn!("provider actor restarting");
    }
}

/// Owns the actors' lifecycle.
pub struct Supervisor {
    gateway: Gateway,
}

impl Actor for Supervisor {
    type Context = Context<Self>;
}

/// How long a shutdown waits for the spool to reach PostgreSQL.
const SPOOL_DRAIN: Duration = Duration::from_secs(10);

/// Waits until every run sent so far is written and flushed to disk.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct Drain;

impl Handler<Drain> for Supervisor {
    type Result = ResponseFuture<Result<(), String>>;

    fn handle(&mut self, _: Drain, _: &mut Self::Context) -> Self::Result {
        let recorder = self.gateway.recorder.addr.clone();
        let cache = self.gateway.cache.clone();
        let spool = self.gateway.spool.clone();
        Box::pin(async move {
            // Answers queued for the cache are written before the store is flushed.
            if let Err(e) = cache.settle().await {
                tracing::warn!(error = %e, "cache did not settle");
            }
            recorder
                .send(Barrier)
                .timeout(Duration::from_secs(30))
                .await
                .map_err(|e| format!("recorder did not drain: {e}"))?;
            recorder
                .send(Flush)
                .timeout(Duration::from_secs(30))
                .await
                .map_err(|e| format!("recorder did not flush: {e}"))??;
            if let Some(spool) = spool {
                // What the database can take now goes there; the rest waits on disk for the
                // next start.
                let left = spool.drained(SPOOL_DRAIN).await;
                if left > 0 {
                    tracing::warn!(
                        runs = left,
                        "spool: PostgreSQL did not take every spooled run before exit; they stay in the spool and are replayed at the next start"
                    );
                }
            }
            Ok(())
        })
    }
}

impl Supervisor {
    /// Opens the store and starts the recorder, the provider actors and the cache shards.
    /// Must run inside an actix system.
    pub fn start(config: GatewayConfig) -> Result<(Gateway, Addr<Supervisor>), String> {
        Self::start_with_clock(config, Arc::new(SystemClock))
    }

    pub fn start_with_clock(
        config: GatewayConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<(Gateway, Addr<Supervisor>), String> {
        let metrics = Metrics::new().map_err(|e| format!("metrics: {e}"))?;
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            format!(
                "cannot create data_dir `{}`: {e}",
                config.data_dir.display()
            )
        })?;
        let mut spool = None;
        let storage = match &config.storage {
            Backend::Sled => SledStorage::open_with_cache(
                &config.data_dir,
                config.flush_interval,
                config.sled_cache_bytes,
            )
            .map_err(|e| {
                format!(
                    "cannot open the store in `{}`: {e}",
                    config.data_dir.display()
                )
            })?
            .storage(),
            Backend::Postgres(settings) => {
                let storage = PostgresStorage::open(settings)
                    .map_err(|e| format!("cannot open the PostgreSQL store: {e}"))?;
                tracing::info!(?settings, "storage: PostgreSQL");
                let mut storage = storage.storage();
                // Runs outlive an unreachable database in a local spool, replayed when it
                // answers again.
                let dir = config.data_dir.join("spool");
                let opened = Spool::open(
                    &dir,
                    settings.spool_max_bytes,
                    config.flush_interval,
                    metrics.spool.clone(),
                )
                .map_err(|e| format!("cannot open the spool in `{}`: {e}", dir.display()))?;
                storage.runs = Arc::new(
                    SpooledRunStore::start(storage.runs, opened.clone())
                        .map_err(|e| e.to_string())?,
                );
                spool = Some(opened);
                storage
            }
        };
        let listener_metrics: [Box<dyn prometheus::core::Collector>; 2] = [
            Box::new(storage.changes.listener_connected.clone()),
            Box::new(storage.changes.listener_reconnects.clone()),
        ];
        for metric in listener_metrics {
            metrics
                .register(metric)
                .map_err(|e| format!("metrics: {e}"))?;
        }
        let agents = AgentStore::open(&storage);
        let Storage {
            runs,
            feedback,
            answers,
            shares,
            stats,
            keys,
            evals,
            changes,
            sessions,
            ..
        } = storage;
        let run_stats = RunStats::new(stats);

        // The recorder gets its own thread: store writes never run on a request arbiter.
        let recorder = {
            let recorder = Recorder::new(runs.clone(), config.flush_interval, metrics.clone())
                .with_agents(agents.clone())
                .with_run_stats(run_stats.clone())
                .with_shared_store(matches!(config.storage, Backend::Postgres(_)));
            let outbox = recorder.outbox();
            let addr =
                actix::Supervisor::start_in_arbiter(&Arbiter::new().handle(), move |_| recorder);
            RecorderHandle::new(addr, outbox)
        };

        // Retention on a thread of its own too: its passes wait on the store.
        if !config.retention.keeps_everything() {
            let retention = Retention::new(runs.clone(), config.retention, metrics.clone());
            Retention::start_in_arbiter(&Arbiter::new().handle(), move |_| retention);
        }

        // Before the providers: their actors hand their outcomes on to it.
        let router = Router::start(config.routing);
        let media = MediaFetcher::new(config.media);
        let mut providers: ProviderRegistry = HashMap::new();
        for settings in config.providers {
            let client = ProviderClient::new(&settings, &media)?;
            let (actor, health) = ProviderActor::new(
                settings.name.clone(),
                settings.breaker,
                clock.clone(),
                metrics.clone(),
            );
            let actor = actor.with_learner(router.learner());
            let outcomes = actor.outcomes();
            let actor = actix::Supervisor::start(move |_| actor);
            if !settings.enabled {
                tracing::warn!(
                    provider = %settings.name,
                    reason = settings.disabled_reason.as_deref().unwrap_or(""),
                    "provider disabled"
                );
            }
            providers.insert(
                settings.name.clone(),
                ProviderHandle {
                    settings: Arc::new(settings),
                    client: Arc::new(client),
                    health,
                    actor,
                    outcomes,
                },
            );
        }

        let gateway = Gateway {
            providers: Arc::new(providers),
            catalog: Arc::new(ArcSwap::from_pointee(config.catalog)),
            cache: Cache::open(answers, config.cache, &metrics)?,
            recorder,
            runs,
            spool,
            feedback,
            shares,
            key_store: keys,
            eval_store: evals,
            changes,
            sessions,
            agents,
            stats: run_stats,
            metrics,
            public_url: config.public_url.trim_end_matches('/').into(),
            validators: Default::default(),
            retry: config.retry,
            hedging: Arc::new(config.hedging),
            router,
        };
        let supervisor = Supervisor {
            gateway: gateway.clone(),
        }
        .start();
        Ok((gateway, supervisor))
    }
}
