//! The recorder actor: persists every run to the run store and turns it into metrics. It runs
//! on its own arbiter, so store writes never delay a request; the request path hands it a
//! finished run through its [`Outbox`] ([`RecorderHandle::record`]) and moves on. Runs are
//! written in batches: everything queued when the recorder wakes up.

pub mod metrics;
pub mod retention;
pub mod run;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::FutureExt;
use prometheus::{Counter, Histogram, IntCounter};

use crate::agents::AgentStore;
use crate::outbox::{self, Drains, Outbox, Pending, Pushed};
use crate::stats::RunStats;
use crate::storage::{RunStore, StorageError};
use metrics::{LabelBound, Metrics};
use run::{RunRecord, RunStatus};

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

    /// Runs queued and not yet taken for writing.
    pub fn queued(&self) -> usize {
        self.outbox.len()
    }

    /// Queues a finished run; the recorder writes it within its batch window
    /// ([`Recorder`]'s [`Drains::batch_window`]).
    /// Under load a batch goes as soon as it holds [`FULL_BATCH`] runs.
    pub fn record(&self, run: Box<RunRecord>) {
        match self.outbox.push(run) {
            Pushed::First => self.addr.do_send(Pending { now: false }),
            Pushed::FullBatch => self.addr.do_send(Pending { now: true }),
            Pushed::Queued | Pushed::Full => {}
        }
    }
}

/// The longest a run waits in the outbox for its batch to be written.
pub const MAX_BATCH_WINDOW: Duration = Duration::from_millis(20);

/// A queue this long is taken at once, before its window ends (a write under way on a network
/// store still lets it grow until that write is done): at a moderate rate the window gathers
/// tens of runs a batch (fewer wake-ups and pack reads a run), but at saturation it would
/// gather hundreds, a burst of the recorder's work and of memory held that the bench measured
/// as −7% throughput and +30% p99 (22,000 req/s: ~440 runs a 20 ms window).
pub const FULL_BATCH: usize = 64;

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
    store: Arc<dyn RunStore>,
    /// How long a write may wait to be durable (the store's flush interval).
    flush_every: Duration,
    metrics: Metrics,
    agents: Option<AgentStore>,
    /// A write of the agents' statistics is scheduled.
    stats_write_scheduled: bool,
    /// The runs' stats per agent and hour ([`crate::stats`]).
    run_stats: Option<RunStats>,
    /// A write of the runs' stats is scheduled.
    run_stats_write_scheduled: bool,
    handles: Handles,
    /// Failures to write what the recorder derives from runs (stats, agents), logged once
    /// per outage rather than once per try.
    derived_failures: Arc<FailureLog>,
    /// Other instances read the store (PostgreSQL behind a load balancer): batches are
    /// written within [`outbox::BATCH_WINDOW`], so a run answered here is found there at once.
    shared_store: bool,
}

/// Logs the first failure of a kind of write and its recovery, and the tries in between only
/// at debug level: while a database is away, the retries would otherwise flood the log.
#[derive(Default)]
pub struct FailureLog {
    failing: std::sync::Mutex<std::collections::HashSet<&'static str>>,
}

impl FailureLog {
    pub fn failed(&self, what: &'static str, error: &dyn std::fmt::Display) {
        let first = self
            .failing
            .lock()
            .map(|mut failing| failing.insert(what))
            .unwrap_or(true);
        if first {
            tracing::error!(%error, "recorder: cannot write {what}; retrying (further failures at debug level)");
        } else {
            tracing::debug!(%error, "recorder: cannot write {what}");
        }
    }

    pub fn succeeded(&self, what: &'static str) {
        let was = self
            .failing
            .lock()
            .map(|mut failing| failing.remove(what))
            .unwrap_or(false);
        if was {
            tracing::info!("recorder: {what} written again");
        }
    }
}

/// A batch of runs being written, and what happens once it is.
type BatchWrite = std::pin::Pin<Box<dyn ActorFuture<Recorder, Output = ()>>>;

impl Recorder {
    /// Writes to `store`, whose writes are durable within `flush_every`.
    pub fn new(store: Arc<dyn RunStore>, flush_every: Duration, metrics: Metrics) -> Self {
        Recorder {
            outbox: Arc::new(Outbox::new().with_full_batch(FULL_BATCH)),
            drain_scheduled: false,
            store,
            flush_every,
            metrics,
            agents: None,
            stats_write_scheduled: false,
            run_stats: None,
            run_stats_write_scheduled: false,
            handles: Handles::default(),
            derived_failures: Arc::default(),
            shared_store: false,
        }
    }

    /// Other instances read what it writes: see [`Drains::batch_window`].
    pub fn with_shared_store(mut self, shared: bool) -> Self {
        self.shared_store = shared;
        self
    }

    /// Where [`RecorderHandle`]s queue runs for this recorder.
    pub fn outbox(&self) -> Arc<Outbox<Box<RunRecord>>> {
        self.outbox.clone()
    }

    /// Writes the queued runs in one batch. An embedded store answers at once, and the
    /// batch is done when this returns; a network store's write is returned, to run before the
    /// recorder takes its next message (so runs stay in order and a [`Barrier`] waits for it).
    fn write_queued(&mut self, ctx: &mut Context<Self>) -> Option<BatchWrite> {
        let runs = self.outbox.take();
        if runs.is_empty() {
            return None;
        }
        let started = Instant::now();
        let store = self.store.clone();
        let mut write = Box::pin(async move {
            let result = store.insert_batch(&runs).await;
            (runs, result)
        });
        if let Some((runs, result)) = (&mut write).now_or_never() {
            self.written(runs, result, started, ctx);
            return None;
        }
        Some(Box::pin(write.into_actor(self).map(
            move |(runs, result), recorder, ctx| recorder.written(runs, result, started, ctx),
        )))
    }

    /// Writes the queued runs before the recorder takes its next message or timer, as a drain
    /// does; the receiver answers once they are written. (Returned as a handler's response
    /// instead, a network store's write would run beside the recorder's next drain, which
    /// could then write a later batch first.)
    fn write_in_turn(
        &mut self,
        ctx: &mut Context<Self>,
    ) -> futures::channel::oneshot::Receiver<()> {
        let (done, written) = futures::channel::oneshot::channel();
        match self.write_queued(ctx) {
            Some(write) => {
                ctx.wait(write.map(move |(), _, _| {
                    let _ = done.send(());
                }));
            }
            None => {
                let _ = done.send(());
            }
        }
        written
    }

    /// After a batch: the metrics and the agents learn of each run.
    // Runs travel boxed from the request path: the outbox moves pointers, not records.
    #[allow(clippy::vec_box)]
    fn written(
        &mut self,
        runs: Vec<Box<RunRecord>>,
        result: Result<(), StorageError>,
        started: Instant,
        ctx: &mut Context<Self>,
    ) {
        let per_run = started.elapsed().as_secs_f64() / runs.len().max(1) as f64;
        for run in &runs {
            self.metrics.recorder_write_seconds.observe(per_run);
            self.observe(run);
        }
        match result {
            Ok(()) => {
                self.metrics.runs_recorded.inc_by(runs.len() as u64);
                if let Some(stats) = &self.run_stats {
                    stats.observe(runs.iter().map(|run| run.as_ref()));
                    self.schedule_run_stats_write(ctx);
                }
                self.observe_agents(runs, ctx);
            }
            Err(e) => {
                self.metrics.recorder_errors.inc_by(runs.len() as u64);
                tracing::error!(runs = runs.len(), error = %e, "recorder: cannot write runs");
                if let Some(agents) = &self.agents {
                    agents.forget_links(&runs);
                }
            }
        }
    }

    /// The agents learn of the stored runs (version statistics, conversation links) before
    /// the recorder takes its next message.
    #[allow(clippy::vec_box)]
    fn observe_agents(&mut self, runs: Vec<Box<RunRecord>>, ctx: &mut Context<Self>) {
        let Some(agents) = self.agents.clone() else {
            return;
        };
        let versioned = runs.iter().any(|run| run.version_id.is_some());
        let observing = async move { agents.observe(&runs).await }.boxed();
        self.now_or_in_turn(ctx, observing, move |recorder, failures, ctx| {
            match failures.first() {
                Some(first) => recorder.derived_failures.failed(
                    "the agents' conversation links and version records",
                    &format!("{first} ({} failures in this batch)", failures.len()),
                ),
                None => recorder
                    .derived_failures
                    .succeeded("the agents' conversation links and version records"),
            }
            if versioned {
                recorder.schedule_stats_write(ctx);
            }
        });
    }

    /// Runs `work`, then `done`: at once when `work` is ready at once (an embedded store),
    /// else before the recorder takes its next message.
    fn now_or_in_turn<T: 'static>(
        &mut self,
        ctx: &mut Context<Self>,
        mut work: futures::future::BoxFuture<'static, T>,
        done: impl FnOnce(&mut Self, T, &mut Context<Self>) + 'static,
    ) {
        match (&mut work).now_or_never() {
            Some(output) => done(self, output, ctx),
            None => ctx.wait(
                work.into_actor(self)
                    .map(move |output, recorder, ctx| done(recorder, output, ctx)),
            ),
        }
    }

    /// Also keeps the agents' version statistics and conversation links, from each stored run.
    pub fn with_agents(mut self, agents: AgentStore) -> Self {
        self.agents = Some(agents);
        self
    }

    /// Also sums the runs' stats per agent and hour, and writes them like the version
    /// statistics.
    pub fn with_run_stats(mut self, stats: RunStats) -> Self {
        self.run_stats = Some(stats);
        self
    }

    /// The runs' stats are summed in memory and written as one batch half a flush interval
    /// after the first run that changed them: on disk within the flush interval, like the
    /// runs. The write runs beside the recorder's work, not in its way.
    fn schedule_run_stats_write(&mut self, ctx: &mut Context<Self>) {
        if self.run_stats_write_scheduled {
            return;
        }
        self.run_stats_write_scheduled = true;
        ctx.run_later(self.flush_every / 2, |recorder, ctx| {
            recorder.run_stats_write_scheduled = false;
            let Some(stats) = recorder.run_stats.clone() else {
                return;
            };
            let (store, failures) = (recorder.store.clone(), recorder.derived_failures.clone());
            ctx.spawn(
                async move {
                    // Sums that cannot be written stay in memory for the next try: none lost.
                    match stats.write_pending().await {
                        Ok(()) => {
                            failures.succeeded("the run stats");
                            if let Err(e) = store.flush().await {
                                tracing::warn!(error = %e, "recorder: flush after run stats failed");
                            }
                        }
                        Err(e) => failures.failed("the run stats", &e),
                    }
                }
                .into_actor(recorder)
                .map(|(), recorder, ctx| {
                    // Sums that could not be written, or arrived meanwhile, go with the next.
                    if recorder.run_stats.as_ref().is_some_and(RunStats::has_pending) {
                        recorder.schedule_run_stats_write(ctx);
                    }
                }),
            );
        });
    }

    /// Statistics are batched in memory and written half a flush interval after the first run
    /// that changed them, then flushed: on disk within the flush interval, like the runs.
    fn schedule_stats_write(&mut self, ctx: &mut Context<Self>) {
        if self.stats_write_scheduled {
            return;
        }
        self.stats_write_scheduled = true;
        ctx.run_later(self.flush_every / 2, |recorder, ctx| {
            recorder.stats_write_scheduled = false;
            if let Some(write) = recorder.stats_write() {
                recorder.now_or_in_turn(ctx, write, |recorder, (), ctx| {
                    // The store flushes on its own; the recorder does not wait for it.
                    let store = recorder.store.clone();
                    ctx.spawn(
                        async move {
                            if let Err(e) = store.flush().await {
                                tracing::warn!(error = %e, "recorder: flush after statistics failed");
                            }
                        }
                        .into_actor(recorder),
                    );
                });
            }
        });
    }

    /// The write of the agents' statistics kept in memory, if there are any; it counts and
    /// logs its failure.
    fn stats_write(&self) -> Option<futures::future::BoxFuture<'static, ()>> {
        let agents = self.agents.clone()?;
        if !agents.has_pending_stats() {
            return None;
        }
        let failures = self.derived_failures.clone();
        Some(
            async move {
                // Statistics that cannot be written stay in memory for the next try.
                match agents.write_stats().await {
                    Ok(()) => failures.succeeded("version statistics"),
                    Err(e) => failures.failed("version statistics", &e),
                }
            }
            .boxed(),
        )
    }

    fn observe(&mut self, run: &RunRecord) {
        let metrics = &self.metrics;
        let handles = &mut self.handles;
        let stream = if run.stream { "true" } else { "false" };
        let per_stream = &mut handles.streams[usize::from(run.stream)];
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
                metrics.requests.with_label_values(&["200", "ok", stream])
            })
            .inc(),
            Some(code) => metrics
                .requests
                .with_label_values(&[status_label(run.telemetry.http_status), code, stream])
                .inc(),
        }
        cached(&mut per_stream.request_duration, || {
            metrics.request_duration.with_label_values(&[stream])
        })
        .observe(run.duration_seconds);
        cached(&mut per_stream.gateway_overhead, || {
            metrics.gateway_overhead.with_label_values(&[stream])
        })
        .observe(run.telemetry.overhead_seconds);
        for attempt in &run.attempts {
            match attempt.error.as_deref() {
                None => handles
                    .attempts_ok
                    .get(&attempt.provider, || {
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
            handles
                .upstream_duration
                .get2(&attempt.provider, &attempt.model, || {
                    metrics
                        .upstream_duration
                        .with_label_values(&[&attempt.provider, &attempt.model])
                })
                .observe(attempt.duration_seconds);
        }
        let Some(provider) = &run.provider else {
            return;
        };
        // A run that failed before a model was planned has no provider either.
        let model = run.model.as_deref().unwrap_or("");
        if let Some(seconds) = run.telemetry.first_token_seconds {
            handles
                .first_token
                .get2(provider, model, || {
                    metrics
                        .time_to_first_token
                        .with_label_values(&[provider, model])
                })
                .observe(seconds);
        }
        let agent = handles.agents.label(&run.agent);
        let usage = handles.usage.get4(provider, model, &run.tenant, agent, || {
            let labels = [provider.as_str(), model, run.tenant.as_str(), agent];
            UsageHandles {
                cost_usd: metrics.cost_usd.with_label_values(&labels),
                prompt_tokens: metrics
                    .tokens
                    .with_label_values(&[labels[0], labels[1], labels[2], labels[3], "prompt"]),
                completion_tokens: metrics.tokens.with_label_values(&[
                    labels[0],
                    labels[1],
                    labels[2],
                    labels[3],
                    "completion",
                ]),
            }
        });
        if run.cost_usd > 0.0 {
            usage.cost_usd.inc_by(run.cost_usd);
        }
        usage.prompt_tokens.inc_by(run.usage.prompt_tokens);
        usage.completion_tokens.inc_by(run.usage.completion_tokens);
    }
}

/// The `status` label of an HTTP status: the statuses the gateway answers with, by name, any
/// other by its class (so the label stays bounded whatever an error carries).
fn status_label(status: u16) -> &'static str {
    const NAMED: &[(u16, &str)] = &[
        (200, "200"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (408, "408"),
        (413, "413"),
        (415, "415"),
        (429, "429"),
        (499, "499"),
        (500, "500"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
    ];
    if let Some((_, name)) = NAMED.iter().find(|(named, _)| *named == status) {
        return name;
    }
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// The labelled metrics the recorder updates for every run, looked up once (a lookup hashes
/// the label values). Each is taken on its first use, so `/metrics` shows the same series.
struct Handles {
    /// By `stream` (false, true).
    streams: [StreamHandles; 2],
    /// By provider.
    attempts_ok: HandleMap<IntCounter>,
    /// By provider and the provider's model id.
    upstream_duration: HandleMap<Histogram>,
    /// By provider and catalog model.
    first_token: HandleMap<Histogram>,
    /// By provider, catalog model, tenant and (bounded) agent.
    usage: HandleMap<UsageHandles>,
    /// Agent names are the clients' to choose: past this many, the metrics say `_other`.
    agents: LabelBound,
}

impl Default for Handles {
    fn default() -> Self {
        Handles {
            streams: Default::default(),
            attempts_ok: HandleMap::default(),
            upstream_duration: HandleMap::default(),
            first_token: HandleMap::default(),
            usage: HandleMap::default(),
            agents: LabelBound::new(MAX_AGENT_LABELS),
        }
    }
}

/// Distinct agent names the cost and token metrics name; later ones are `_other`.
const MAX_AGENT_LABELS: usize = 200;

#[derive(Default)]
struct StreamHandles {
    requests_ok: Option<IntCounter>,
    request_duration: Option<Histogram>,
    gateway_overhead: Option<Histogram>,
}

struct UsageHandles {
    cost_usd: Counter,
    prompt_tokens: IntCounter,
    completion_tokens: IntCounter,
}

/// Handles kept at most per map (their labels come from the config and the bounded agent
/// label, so this is only a bound on memory).
const MAX_HANDLES: usize = 4096;

/// Handles by their label values, joined with NUL into a key built in a reused buffer.
struct HandleMap<T> {
    handles: HashMap<String, T>,
    key: String,
}

impl<T> Default for HandleMap<T> {
    fn default() -> Self {
        HandleMap {
            handles: HashMap::new(),
            key: String::new(),
        }
    }
}

impl<T> HandleMap<T> {
    fn get(&mut self, a: &str, make: impl FnOnce() -> T) -> &T {
        self.get_parts(&[a], make)
    }

    fn get2(&mut self, a: &str, b: &str, make: impl FnOnce() -> T) -> &T {
        self.get_parts(&[a, b], make)
    }

    fn get4(&mut self, a: &str, b: &str, c: &str, d: &str, make: impl FnOnce() -> T) -> &T {
        self.get_parts(&[a, b, c, d], make)
    }

    fn get_parts(&mut self, parts: &[&str], make: impl FnOnce() -> T) -> &T {
        self.key.clear();
        for part in parts {
            self.key.push_str(part);
            self.key.push('\0');
        }
        if !self.handles.contains_key(self.key.as_str()) {
            if self.handles.len() >= MAX_HANDLES {
                self.handles.clear();
            }
            let handle = make();
            self.handles.insert(self.key.clone(), handle);
        }
        &self.handles[self.key.as_str()]
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
        self.run_stats_write_scheduled = false;
        if self.run_stats.as_ref().is_some_and(RunStats::has_pending) {
            self.schedule_run_stats_write(ctx);
        }
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        // `Flush` (sent by the supervisor's drain) has written everything by now; this is the
        // last resort of an actor stopped otherwise.
        if self.write_queued(ctx).is_some() {
            tracing::error!("recorder: stopped while runs were still being written");
        }
        if let Some(write) = self.stats_write() {
            futures::executor::block_on(write);
        }
        if let Some(stats) = &self.run_stats {
            if let Err(e) = futures::executor::block_on(stats.write_pending()) {
                tracing::error!(error = %e, "recorder: cannot write the run stats");
            }
        }
        if let Err(e) = futures::executor::block_on(self.store.flush()) {
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
    /// Writes every queued run, oldest first; the next message waits for a write under way.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        if let Some(write) = self.write_queued(ctx) {
            ctx.wait(write);
        }
    }

    fn drain_scheduled(&mut self) -> &mut bool {
        &mut self.drain_scheduled
    }

    fn has_queued(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// A tenth of the store's flush interval, within [`outbox::BATCH_WINDOW`] and
    /// [`MAX_BATCH_WINDOW`]: a run waits for its batch a small part of what it waits to be
    /// durable anyway, and at a moderate rate a batch holds tens of runs rather than two or
    /// three (each batch costs the same reads of the packs it adds to, and wakes this thread).
    /// This instance's readers wait for the recorder ([`Barrier`]) and its follow-ups find
    /// their conversation in memory, but other instances of a shared store do neither: for
    /// them the batch goes out within [`outbox::BATCH_WINDOW`].
    fn batch_window(&self) -> Duration {
        if self.shared_store {
            return outbox::BATCH_WINDOW;
        }
        (self.flush_every / 10).clamp(outbox::BATCH_WINDOW, MAX_BATCH_WINDOW)
    }
}

impl Handler<Barrier> for Recorder {
    type Result = ResponseActFuture<Self, ()>;

    /// Answers once the runs queued before it are written.
    fn handle(&mut self, _: Barrier, ctx: &mut Self::Context) -> Self::Result {
        let written = self.write_in_turn(ctx);
        Box::pin(
            async move {
                let _ = written.await;
            }
            .into_actor(self),
        )
    }
}

impl Handler<Flush> for Recorder {
    type Result = ResponseActFuture<Self, Result<(), String>>;

    fn handle(&mut self, _: Flush, ctx: &mut Self::Context) -> Self::Result {
        let written = self.write_in_turn(ctx);
        // Cancelled only with the actor's context (its caller then hears that the mailbox
        // closed); never reported as written.
        let written = async move { written.await.is_ok() };
        Box::pin(written.into_actor(self).then(|written, recorder, _| {
            let agents = recorder.agents.clone();
            let run_stats = recorder.run_stats.clone();
            let store = recorder.store.clone();
            async move {
                if !written {
                    return Err("the batch write was cancelled".to_string());
                }
                let run_stats = match run_stats {
                    Some(run_stats) => run_stats.write_pending().await.map_err(|e| e.to_string()),
                    None => Ok(()),
                };
                let stats = match &agents {
                    Some(agents) => agents.write_stats().await.map_err(|e| e.to_string()),
                    None => Ok(()),
                };
                let flushed = store.flush().await.map_err(|e| e.to_string());
                stats.and(run_stats).and(flushed)
            }
            .into_actor(recorder)
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::recorder::run::RunTelemetry;
    use crate::storage::VersionKey;

    /// Yields a few times: the recorder, on this thread, takes what it was sent.
    async fn let_the_recorder_run() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// How many runs of agent `a` the store has.
    async fn stored_runs(store: &dyn RunStore) -> usize {
        store
            .list_agent("t", "a", None, 1000)
            .await
            .unwrap()
            .items
            .len()
    }

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

    #[test]
    fn every_status_the_gateway_sends_is_a_label_of_its_own_and_others_their_class() {
        use crate::error::ErrorKind;
        for status in [200, 400, 401, 404, 413, 429, 499, 502, 503, 504] {
            assert_eq!(status_label(status), status.to_string());
        }
        assert_eq!(
            status_label(ErrorKind::Cancelled.status_code().as_u16()),
            "499"
        );
        assert_eq!(status_label(418), "4xx");
        assert_eq!(status_label(507), "5xx");
        assert_eq!(status_label(204), "2xx");
    }

    #[actix_rt::test]
    async fn queued_runs_are_written_in_a_batch_and_a_barrier_writes_them_at_once() {
        let (_dir, storage) = crate::storage::temporary();
        let runs = storage.runs.clone();
        let recorder = Recorder::new(
            storage.runs,
            Duration::from_millis(40),
            Metrics::new().unwrap(),
        );
        let outbox = recorder.outbox();
        let handle = RecorderHandle::new(recorder.start(), outbox.clone());
        for _ in 0..5 {
            handle.record(Box::new(run("v1")));
        }
        // Queued: the recorder has not run yet (same thread, no await so far).
        assert_eq!(outbox.len(), 5);
        handle.addr.send(Barrier).await.unwrap();
        assert_eq!(stored_runs(runs.as_ref()).await, 5);
        assert!(outbox.is_empty());

        // Without a barrier, a batch is written within the window.
        handle.record(Box::new(run("v1")));
        handle.record(Box::new(run("v1")));
        tokio::time::sleep(outbox::BATCH_WINDOW * 20).await;
        assert_eq!(stored_runs(runs.as_ref()).await, 7);
        assert!(outbox.is_empty());
    }

    /// A network store's stand-in: each write takes a while; it counts the writes under way
    /// and keeps the ids in the order it wrote them.
    #[derive(Default)]
    struct SlowStore {
        in_flight: std::sync::atomic::AtomicUsize,
        most_in_flight: std::sync::atomic::AtomicUsize,
        written: std::sync::Mutex<Vec<uuid::Uuid>>,
    }

    impl RunStore for SlowStore {
        fn insert_batch<'a>(
            &'a self,
            runs: &'a [Box<RunRecord>],
        ) -> futures::future::BoxFuture<'a, Result<(), StorageError>> {
            use std::sync::atomic::Ordering::SeqCst;
            Box::pin(async move {
                let now = self.in_flight.fetch_add(1, SeqCst) + 1;
                self.most_in_flight.fetch_max(now, SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                self.written
                    .lock()
                    .unwrap()
                    .extend(runs.iter().map(|run| run.id));
                self.in_flight.fetch_sub(1, SeqCst);
                Ok(())
            })
        }
        fn get<'a>(
            &'a self,
            _: &'a str,
            _: uuid::Uuid,
        ) -> futures::future::BoxFuture<'a, Result<Option<RunRecord>, StorageError>> {
            unimplemented!()
        }
        fn list_agent<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: Option<uuid::Uuid>,
            _: usize,
        ) -> futures::future::BoxFuture<'a, Result<crate::storage::RunPage, StorageError>> {
            unimplemented!()
        }
        fn search<'a>(
            &'a self,
            _: &'a crate::storage::SearchScope,
            _: &'a crate::search::RunQuery,
        ) -> futures::future::BoxFuture<'a, Result<crate::storage::SearchPage, StorageError>>
        {
            unimplemented!()
        }
        fn field_values<'a>(
            &'a self,
            _: &'a crate::storage::SearchScope,
            _: usize,
        ) -> futures::future::BoxFuture<
            'a,
            Result<HashMap<crate::search::IndexedField, Vec<String>>, StorageError>,
        > {
            unimplemented!()
        }
        fn flush(&self) -> futures::future::BoxFuture<'_, Result<(), StorageError>> {
            Box::pin(async { Ok(()) })
        }
        fn ping(&self) -> futures::future::BoxFuture<'_, Result<(), StorageError>> {
            Box::pin(async { Ok(()) })
        }
        fn size_on_disk(&self) -> futures::future::BoxFuture<'_, Result<u64, StorageError>> {
            Box::pin(async { Ok(0) })
        }
        fn prune(
            &self,
            _: crate::storage::PruneBatch,
        ) -> futures::future::BoxFuture<'_, Result<crate::storage::Pruned, StorageError>> {
            unimplemented!()
        }
        fn footprint(
            &self,
        ) -> futures::future::BoxFuture<'_, Result<crate::storage::Footprint, StorageError>>
        {
            unimplemented!()
        }
    }

    /// On a network store, the batch a `Barrier` writes is written before the recorder takes
    /// anything else: a full batch queued meanwhile waits for it, so batches never overlap and
    /// reach the store in order.
    #[actix_rt::test]
    async fn a_barriers_write_is_done_before_the_next_batch_starts() {
        let store = Arc::new(SlowStore::default());
        let recorder = Recorder::new(
            store.clone(),
            Duration::from_secs(60),
            Metrics::new().unwrap(),
        );
        let outbox = recorder.outbox();
        let handle = RecorderHandle::new(recorder.start(), outbox);
        let_the_recorder_run().await;
        // The stand-in's write lasts until the clock moves, which it does only when nothing is
        // left to run (in `barrier.await`): however slow this machine, the full batch below is
        // queued while the first write is under way.
        tokio::time::pause();
        let first = run("v1");
        let mut order = vec![first.id];
        handle.record(Box::new(first));
        let barrier = handle.addr.send(Barrier);
        // The recorder takes the barrier and starts its write.
        let_the_recorder_run().await;
        assert_eq!(store.in_flight.load(std::sync::atomic::Ordering::SeqCst), 1);
        for _ in 0..FULL_BATCH {
            let run = run("v1");
            order.push(run.id);
            handle.record(Box::new(run));
        }
        barrier.await.unwrap();
        handle.addr.send(Barrier).await.unwrap();
        assert_eq!(
            store
                .most_in_flight
                .load(std::sync::atomic::Ordering::SeqCst),
            1
        );
        assert_eq!(*store.written.lock().unwrap(), order);
    }

    #[actix_rt::test]
    async fn a_full_batch_is_written_before_its_window_ends() {
        let (_dir, storage) = crate::storage::temporary();
        let runs = storage.runs.clone();
        // The longest window.
        let recorder = Recorder::new(
            storage.runs,
            Duration::from_secs(60),
            Metrics::new().unwrap(),
        );
        assert_eq!(recorder.batch_window(), MAX_BATCH_WINDOW);
        let outbox = recorder.outbox();
        let handle = RecorderHandle::new(recorder.start(), outbox.clone());
        // Started (an actor that starts with runs queued takes them at once).
        let_the_recorder_run().await;
        // The window's timer cannot fire from here on: the clock moves only when told to (or
        // when nothing is left to run, which the yields below never let happen).
        tokio::time::pause();
        for _ in 0..FULL_BATCH - 1 {
            handle.record(Box::new(run("v1")));
        }
        let_the_recorder_run().await;
        // Short of a full batch: it waits for its window.
        assert_eq!(outbox.len(), FULL_BATCH - 1);
        handle.record(Box::new(run("v1")));
        let_the_recorder_run().await;
        // Taken at once, with the window's timer still pending.
        assert!(outbox.is_empty());
        assert_eq!(stored_runs(runs.as_ref()).await, FULL_BATCH);
    }

    #[actix_rt::test]
    async fn a_batch_gathers_for_a_tenth_of_the_flush_interval_within_bounds() {
        let window = |flush_ms| {
            let (_dir, storage) = crate::storage::temporary();
            let recorder = Recorder::new(
                storage.runs,
                Duration::from_millis(flush_ms),
                Metrics::new().unwrap(),
            );
            recorder.batch_window()
        };
        // The shipped flush interval (200 ms): batches of 20 ms.
        assert_eq!(window(200), Duration::from_millis(20));
        assert_eq!(window(40), Duration::from_millis(4));
        // Never shorter than the other actors' window, never longer than the cap.
        assert_eq!(window(5), outbox::BATCH_WINDOW);
        assert_eq!(window(0), outbox::BATCH_WINDOW);
        assert_eq!(window(60_000), MAX_BATCH_WINDOW);
        // A store other instances read: written as soon as the other actors' batches.
        let (_dir, storage) = crate::storage::temporary();
        let shared = Recorder::new(
            storage.runs,
            Duration::from_millis(200),
            Metrics::new().unwrap(),
        )
        .with_shared_store(true);
        assert_eq!(shared.batch_window(), outbox::BATCH_WINDOW);
    }

    #[actix_rt::test]
    async fn runs_become_metrics_by_tenant_agent_and_model_with_agents_bounded() {
        let (_dir, storage) = crate::storage::temporary();
        let metrics = Metrics::new().unwrap();
        let recorder = Recorder::new(storage.runs, Duration::from_millis(40), metrics.clone());
        let outbox = recorder.outbox();
        let handle = RecorderHandle::new(recorder.start(), outbox);
        let agents = MAX_AGENT_LABELS + 5;
        for i in 0..agents {
            let mut run = run("v1");
            run.agent = format!("agent-{i}");
            run.stream = i == 0;
            run.telemetry = RunTelemetry {
                http_status: 200,
                overhead_seconds: 0.002,
                first_token_seconds: (i == 0).then_some(0.75),
            };
            handle.record(Box::new(run));
        }
        handle.addr.send(Barrier).await.unwrap();
        let text = metrics.render();
        let cost_lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("flowgate_cost_usd_total{"))
            .collect();
        // One series per agent up to the bound, then one for all the others.
        assert_eq!(cost_lines.len(), MAX_AGENT_LABELS + 1, "{text}");
        assert!(
            text.contains(
                "flowgate_cost_usd_total{agent=\"agent-0\",model=\"m\",provider=\"p\",tenant=\"t\"} 0.5"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "flowgate_cost_usd_total{agent=\"_other\",model=\"m\",provider=\"p\",tenant=\"t\"} 2.5"
            ),
            "{text}"
        );
        assert!(text.contains(
            "flowgate_tokens_total{agent=\"_other\",kind=\"prompt\",model=\"m\",provider=\"p\",tenant=\"t\"} 5"
        ));
        let overhead = metrics.gateway_overhead.with_label_values(&["false"]);
        assert_eq!(overhead.get_sample_count(), agents as u64 - 1);
        assert!((overhead.get_sample_sum() - 0.002 * (agents - 1) as f64).abs() < 1e-9);
        let first_token = metrics.time_to_first_token.with_label_values(&["p", "m"]);
        assert_eq!(first_token.get_sample_count(), 1);
        assert_eq!(first_token.get_sample_sum(), 0.75);
        assert!(
            text.contains("flowgate_requests_total{code=\"ok\",status=\"200\",stream=\"true\"} 1")
        );
    }

    #[actix_rt::test]
    async fn version_statistics_reach_the_store_within_the_flush_interval() {
        let (_dir, storage) = crate::storage::temporary();
        let agents = AgentStore::open(&storage);
        let key = VersionKey {
            tenant: "t".into(),
            agent: "a".into(),
            version_id: "v1".into(),
        };
        let stored = || async { storage.versions.stats(&key).await.unwrap() };
        let recorder = Recorder::new(
            storage.runs.clone(),
            Duration::from_millis(40),
            Metrics::new().unwrap(),
        )
        .with_agents(agents.clone());
        let outbox = recorder.outbox();
        let handle = RecorderHandle::new(recorder.start(), outbox);
        let recorder = handle.addr.clone();
        for _ in 0..3 {
            handle.record(Box::new(run("v1")));
        }
        recorder.send(Barrier).await.unwrap();
        // Counted at once, written shortly after.
        assert_eq!(
            agents
                .version_stats("t", "a", "v1")
                .await
                .unwrap()
                .run_count,
            3
        );
        assert_eq!(stored().await, None);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(stored().await.map(|s| s.run_count), Some(3));
        assert!(!agents.has_pending_stats());

        // `Flush` writes them at once.
        let mut last = run("v1");
        let last_id = last.id;
        // As the request path does: the link waits in memory until the recorder stores it.
        let messages: Vec<crate::wire::Message> =
            serde_json::from_value(serde_json::json!([{"role": "user", "content": "hi"}])).unwrap();
        let answer = &last.output.as_ref().unwrap().choices[0].message;
        let hash = crate::agents::conversation::continuation_hash(&messages, answer);
        last.continuation = Some(hash);
        agents.link_pending("t", "a", hash, last_id);
        assert_eq!(agents.pending_links(), 1);
        handle.record(Box::new(last));
        recorder.send(Flush).await.unwrap().unwrap();
        assert!(!agents.has_pending_stats());
        assert_eq!(stored().await.map(|s| s.run_count), Some(4));
        // The answered runs are linked for their next turn at once (identical runs: one link,
        // to the latest).
        let follow_up: Vec<crate::wire::Message> = serde_json::from_value(serde_json::json!([
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "and?"}
        ]))
        .unwrap();
        assert_eq!(
            agents.conversation_of("t", "a", &follow_up).await.unwrap(),
            Some(last_id)
        );
        // Stored: no longer held in memory.
        assert_eq!(agents.pending_links(), 0);
    }

    #[actix_rt::test]
    async fn run_stats_count_at_once_and_reach_the_store_within_the_flush_interval() {
        use crate::recorder::run::RunSource;
        use crate::stats::{hour_of, RunStats};
        use crate::storage::StatsQuery;

        let (_dir, storage) = crate::storage::temporary();
        let store = storage.stats.clone();
        let run_stats = RunStats::new(store.clone());
        let recorder = Recorder::new(
            storage.runs.clone(),
            Duration::from_millis(40),
            Metrics::new().unwrap(),
        )
        .with_run_stats(run_stats.clone());
        let outbox = recorder.outbox();
        let handle = RecorderHandle::new(recorder.start(), outbox);
        let first = run("v1");
        let hour = hour_of(crate::search::id_millis(&first.id));
        let query = StatsQuery {
            tenant: "t".into(),
            agents: vec!["a".into()],
            sources: vec![RunSource::Api],
            hours: hour - 1..hour + 2,
            latency: true,
        };
        let stored = || async {
            let found = store.read(&query).await.unwrap();
            found.iter().map(|(_, sums)| sums.runs).sum::<u64>()
        };
        handle.record(Box::new(first));
        handle.record(Box::new(run("v1")));
        handle.addr.send(Barrier).await.unwrap();
        // Summed at once, written shortly after.
        assert!(run_stats.has_pending());
        assert_eq!(stored().await, 0);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(stored().await, 2);
        assert!(!run_stats.has_pending());

        // `Flush` writes them at once.
        handle.record(Box::new(run("v1")));
        handle.addr.send(Flush).await.unwrap().unwrap();
        assert_eq!(stored().await, 3);
    }
}
