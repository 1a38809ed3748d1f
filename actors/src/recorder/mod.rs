//! The recorder actor: persists every run to sled and turns it into metrics. It runs on its own
//! arbiter, so store writes never delay a request; the request path hands it a finished run
//! through its [`Outbox`] ([`RecorderHandle::record`]) and moves on.

pub mod metrics;
pub mod run;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use prometheus::{Counter, Histogram, IntCounter};

use crate::agents::AgentStore;
use crate::outbox::{self, Drains, Outbox, Pending, Pushed};
use metrics::Metrics;
use run::{RunRecord, RunStatus};
use store::RunStore;

/// How the request path hands runs to the recorder: queued in its outbox, written in batches
/// (see [`crate::outbox`]). A run is data, not telemetry: the outbox has no bound and nothing
/// in it is dropped. Cheap to clone.
#[derive(Clone)]
pub struct RecorderHandle {
    pub addr: Addr<Recorder>,
    outbox: Arc<Outbox<Box<RunRecord>>>,
}

impl RecorderHandle {
    pub fn new(addr: Addr<Recorder>, outbox: Arc<Outbox<Box<RunRecord>>>) -> Self {
        RecorderHandle { addr, outbox }
    }

    /// Queues a finished run; the recorder writes it within [`BATCH_WINDOW`](outbox::BATCH_WINDOW).
    pub fn record(&self, run: Box<RunRecord>) {
        if self.outbox.push(run) == Pushed::First {
            self.addr.do_send(Pending { now: false });
        }
    }
}

/// Answers once every run recorded before it is written.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Barrier;

/// Writes everything to disk (on shutdown).
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct Flush;

pub struct Recorder {
    outbox: Arc<Outbox<Box<RunRecord>>>,
    /// A drain of the outbox is scheduled.
    drain_scheduled: bool,
    store: RunStore,
    metrics: Metrics,
    agents: Option<AgentStore>,
    /// The text of the run being written, kept between runs.
    buf: Vec<u8>,
    /// A write of the agents' statistics is scheduled.
    stats_write_scheduled: bool,
    handles: Handles,
}

/// A buffer grown larger than this by an exceptional run is not kept.
const MAX_KEPT_BUFFER: usize = 1 << 20;

impl Recorder {
    pub fn new(store: RunStore, metrics: Metrics) -> Self {
        Recorder {
            outbox: Arc::new(Outbox::new()),
            drain_scheduled: false,
            store,
            metrics,
            agents: None,
            buf: Vec::with_capacity(4096),
            stats_write_scheduled: false,
            handles: Handles::default(),
        }
    }

    /// Where [`RecorderHandle`]s queue runs for this recorder.
    pub fn outbox(&self) -> Arc<Outbox<Box<RunRecord>>> {
        self.outbox.clone()
    }

    /// Persists one run, updates its agent and the metrics.
    fn write(&mut self, run: Box<RunRecord>, ctx: &mut Context<Self>) {
        let started = Instant::now();
        let inserted = self.store.insert_with(&run, &mut self.buf);
        if self.buf.capacity() > MAX_KEPT_BUFFER {
            self.buf = Vec::with_capacity(4096);
        }
        match inserted {
            Ok(()) => {
                self.metrics.runs_recorded.inc();
                if let Some(agents) = &self.agents {
                    if let Err(e) = agents.observe(&run) {
                        self.metrics.recorder_errors.inc();
                        tracing::warn!(run_id = %run.id, error = %e, "recorder: cannot update the agent");
                    }
                    if run.version_id.is_some() {
                        self.schedule_stats_write(ctx);
                    }
                }
            }
            Err(e) => {
                self.metrics.recorder_errors.inc();
                tracing::error!(run_id = %run.id, error = %e, "recorder: cannot write run");
            }
        }
        self.metrics
            .recorder_write_seconds
            .observe(started.elapsed().as_secs_f64());
        self.observe(&run);
    }

    /// Also keeps the agents' version statistics and conversation links, from each stored run.
    pub fn with_agents(mut self, agents: AgentStore) -> Self {
        self.agents = Some(agents);
        self
    }

    /// Statistics are batched in memory and written half a flush interval after the first run
    /// that changed them, then flushed: on disk within the flush interval, like the runs.
    fn schedule_stats_write(&mut self, ctx: &mut Context<Self>) {
        if self.stats_write_scheduled {
            return;
        }
        self.stats_write_scheduled = true;
        ctx.run_later(self.store.flush_every() / 2, |recorder, ctx| {
            recorder.stats_write_scheduled = false;
            if recorder.write_stats() {
                // sled flushes on its own thread pool; the recorder does not wait for it.
                let db = recorder.store.db().clone();
                ctx.spawn(
                    async move {
                        if let Err(e) = db.flush_async().await {
                            tracing::warn!(error = %e, "recorder: flush after statistics failed");
                        }
                    }
                    .into_actor(recorder),
                );
            }
        });
    }

    /// Writes the agents' statistics kept in memory; whether there were any.
    fn write_stats(&mut self) -> bool {
        let Some(agents) = &self.agents else {
            return false;
        };
        if !agents.has_pending_stats() {
            return false;
        }
        if let Err(e) = agents.write_stats() {
            self.metrics.recorder_errors.inc();
            tracing::error!(error = %e, "recorder: cannot write version statistics");
        }
        true
    }

    fn observe(&mut self, run: &RunRecord) {
        let metrics = &self.metrics;
        let stream = if run.stream { "true" } else { "false" };
        let per_stream = &mut self.handles.streams[usize::from(run.stream)];
        let code = match (&run.status, &run.error) {
            (RunStatus::Success, _) => None,
            (RunStatus::Cancelled, _) => Some("cancelled"),
            (RunStatus::Error, Some(error)) => {
                Some(error["error"]["code"].as_str().unwrap_or("error"))
            }
            (RunStatus::Error, None) => Some("error"),
        };
        match code {
            None => cached(&mut per_stream.requests_ok, || {
                metrics.requests.with_label_values(&["ok", stream])
            })
            .inc(),
            Some(code) => metrics.requests.with_label_values(&[code, stream]).inc(),
        }
        cached(&mut per_stream.request_duration, || {
            metrics.request_duration.with_label_values(&[stream])
        })
        .observe(run.duration_seconds);
        for attempt in &run.attempts {
            let provider = self.handles.provider(&attempt.provider);
            match attempt.error.as_deref() {
                None => cached(&mut provider.attempts_ok, || {
                    metrics
                        .upstream_attempts
                        .with_label_values(&[&attempt.provider, "ok"])
                })
                .inc(),
                Some(outcome) => metrics
                    .upstream_attempts
                    .with_label_values(&[&attempt.provider, outcome])
                    .inc(),
            }
            cached(&mut provider.upstream_duration, || {
                metrics
                    .upstream_duration
                    .with_label_values(&[&attempt.provider])
            })
            .observe(attempt.duration_seconds);
        }
        if let Some(name) = &run.provider {
            let provider = self.handles.provider(name);
            if run.cost_usd > 0.0 {
                cached(&mut provider.cost_usd, || {
                    metrics.cost_usd.with_label_values(&[name])
                })
                .inc_by(run.cost_usd);
            }
            cached(&mut provider.prompt_tokens, || {
                metrics.tokens.with_label_values(&[name, "prompt"])
            })
            .inc_by(run.usage.prompt_tokens);
            cached(&mut provider.completion_tokens, || {
                metrics.tokens.with_label_values(&[name, "completion"])
            })
            .inc_by(run.usage.completion_tokens);
        }
    }
}

/// The labelled metrics the recorder updates for every run, looked up once (a lookup hashes
/// the label values). Each is taken on its first use, so `/metrics` shows the same series.
#[derive(Default)]
struct Handles {
    /// By `stream` (false, true).
    streams: [StreamHandles; 2],
    providers: HashMap<String, ProviderHandles>,
}

#[derive(Default)]
struct StreamHandles {
    requests_ok: Option<IntCounter>,
    request_duration: Option<Histogram>,
}

#[derive(Default)]
struct ProviderHandles {
    attempts_ok: Option<IntCounter>,
    upstream_duration: Option<Histogram>,
    cost_usd: Option<Counter>,
    prompt_tokens: Option<IntCounter>,
    completion_tokens: Option<IntCounter>,
}

/// Providers kept at most (they come from the config, so this is only a bound).
const MAX_PROVIDER_HANDLES: usize = 1024;

impl Handles {
    fn provider(&mut self, name: &str) -> &mut ProviderHandles {
        if !self.providers.contains_key(name) {
            if self.providers.len() >= MAX_PROVIDER_HANDLES {
                self.providers.clear();
            }
            self.providers
                .insert(name.to_string(), ProviderHandles::default());
        }
        self.providers.get_mut(name).expect("inserted above")
    }
}

fn cached<T>(slot: &mut Option<T>, make: impl FnOnce() -> T) -> &T {
    slot.get_or_insert_with(make)
}

impl Actor for Recorder {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Also after a restart, which drops the timers of the previous run of the actor.
        self.stats_write_scheduled = false;
        outbox::on_started(self, ctx);
        if self.agents.as_ref().is_some_and(|a| a.has_pending_stats()) {
            self.schedule_stats_write(ctx);
        }
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        self.drain(ctx);
        self.write_stats();
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "recorder: final flush failed");
        }
    }
}

impl Handler<Pending> for Recorder {
    type Result = ();

    fn handle(&mut self, pending: Pending, ctx: &mut Self::Context) {
        outbox::on_pending(self, pending, ctx);
    }
}

impl Drains for Recorder {
    /// Writes every queued run, oldest first.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        for run in self.outbox.take() {
            self.write(run, ctx);
        }
    }

    fn drain_scheduled(&mut self) -> &mut bool {
        &mut self.drain_scheduled
    }

    fn has_queued(&self) -> bool {
        !self.outbox.is_empty()
    }
}

impl Handler<Barrier> for Recorder {
    type Result = ();

    fn handle(&mut self, _: Barrier, ctx: &mut Self::Context) {
        self.drain(ctx);
    }
}

impl Handler<Flush> for Recorder {
    type Result = Result<(), String>;

    fn handle(&mut self, _: Flush, ctx: &mut Self::Context) -> Self::Result {
        self.drain(ctx);
        let stats = match &self.agents {
            Some(agents) => agents.write_stats(),
            None => Ok(()),
        };
        let flushed = self.store.flush();
        stats.and(flushed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn run(version_id: &str) -> RunRecord {
        // From text: the request is kept as raw JSON, which a `Value` cannot give.
        serde_json::from_str(&serde_json::json!({
            "id": uuid::Uuid::now_v7(), "tenant": "t", "agent": "a",
            "created_at": "2026-01-01T00:00:00.000Z", "status": "success",
            "requested_model": "m", "model": "m", "provider": "p", "provider_model": "pm",
            "version_id": version_id, "stream": false,
            "request": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            "input": null,
            "output": {"choices": [{"index": 0, "message": {"content": "hello"}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 1, "completion_tokens": 1}},
            "attempts": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1},
            "cost_usd": 0.5, "duration_seconds": 1.0, "cache": "bypass", "error": null,
            "metadata": null, "feedback_token": "x", "source_run_id": null
        })
        .to_string())
        .unwrap()
    }

    #[actix_rt::test]
    async fn queued_runs_are_written_in_a_batch_and_a_barrier_writes_them_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(dir.path(), Duration::from_millis(40)).unwrap();
        let runs = store.db().open_tree("runs").unwrap();
        let recorder = Recorder::new(store.clone(), Metrics::new().unwrap());
        let outbox = recorder.outbox();
        let handle = RecorderHandle::new(recorder.start(), outbox.clone());
        for _ in 0..5 {
            handle.record(Box::new(run("v1")));
        }
        // Queued: the recorder has not run yet (same thread, no await so far).
        assert_eq!(outbox.len(), 5);
        handle.addr.send(Barrier).await.unwrap();
        assert_eq!(runs.len(), 5);
        assert!(outbox.is_empty());

        // Without a barrier, a batch is written within the window.
        handle.record(Box::new(run("v1")));
        handle.record(Box::new(run("v1")));
        tokio::time::sleep(outbox::BATCH_WINDOW * 20).await;
        assert_eq!(runs.len(), 7);
        assert!(outbox.is_empty());
    }

    #[actix_rt::test]
    async fn version_statistics_reach_the_store_within_the_flush_interval() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(dir.path(), Duration::from_millis(40)).unwrap();
        let agents = AgentStore::open(store.db()).unwrap();
        let stats = store.db().open_tree("agent_version_stats").unwrap();
        let recorder =
            Recorder::new(store.clone(), Metrics::new().unwrap()).with_agents(agents.clone());
        let outbox = recorder.outbox();
        let handle = RecorderHandle::new(recorder.start(), outbox);
        let recorder = handle.addr.clone();
        for _ in 0..3 {
            handle.record(Box::new(run("v1")));
        }
        recorder.send(Barrier).await.unwrap();
        // Counted at once, written shortly after.
        assert_eq!(agents.version_stats("t", "a", "v1").unwrap().run_count, 3);
        assert!(stats.is_empty());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(stats.len(), 1);
        assert!(!agents.has_pending_stats());

        // `Flush` writes them at once.
        handle.record(Box::new(run("v1")));
        recorder.send(Flush).await.unwrap().unwrap();
        assert!(!agents.has_pending_stats());
        let stored: crate::agents::VersionStats =
            serde_json::from_slice(&stats.iter().next().unwrap().unwrap().1).unwrap();
        assert_eq!(stored.run_count, 4);
        // The answered runs are linked for their next turn at once (identical runs: one link).
        assert_eq!(
            store.db().open_tree("agent_conversations").unwrap().len(),
            1
        );
    }
}
