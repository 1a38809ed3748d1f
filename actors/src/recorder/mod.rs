//! The recorder actor: persists every run to sled and turns it into metrics. It runs on its own
//! arbiter, so store writes never delay a request; the request path hands it a finished run and
//! moves on.

pub mod metrics;
pub mod run;
pub mod store;

use std::time::Instant;

use actix::prelude::*;

use crate::agents::AgentStore;
use metrics::Metrics;
use run::{RunRecord, RunStatus};
use store::RunStore;

/// Persist this run. Sent with `do_send`: a run is data, not telemetry, and is never dropped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Record(pub Box<RunRecord>);

/// Answers once every run sent before it is written.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Barrier;

/// Writes everything to disk (on shutdown).
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct Flush;

pub struct Recorder {
    store: RunStore,
    metrics: Metrics,
    agents: Option<AgentStore>,
}

impl Recorder {
    pub fn new(store: RunStore, metrics: Metrics) -> Self {
        Recorder {
            store,
            metrics,
            agents: None,
        }
    }

    /// Also keeps the agents' version statistics and conversation links, from each stored run.
    pub fn with_agents(mut self, agents: AgentStore) -> Self {
        self.agents = Some(agents);
        self
    }

    fn observe(&self, run: &RunRecord) {
        let code = match (&run.status, &run.error) {
            (RunStatus::Success, _) => "ok",
            (RunStatus::Cancelled, _) => "cancelled",
            (RunStatus::Error, Some(error)) => error["error"]["code"].as_str().unwrap_or("error"),
            (RunStatus::Error, None) => "error",
        };
        let stream = if run.stream { "true" } else { "false" };
        self.metrics
            .requests
            .with_label_values(&[code, stream])
            .inc();
        self.metrics
            .request_duration
            .with_label_values(&[stream])
            .observe(run.duration_seconds);
        for attempt in &run.attempts {
            let outcome = attempt.error.as_deref().unwrap_or("ok");
            self.metrics
                .upstream_attempts
                .with_label_values(&[&attempt.provider, outcome])
                .inc();
            self.metrics
                .upstream_duration
                .with_label_values(&[&attempt.provider])
                .observe(attempt.duration_seconds);
        }
        if let Some(provider) = &run.provider {
            if run.cost_usd > 0.0 {
                self.metrics
                    .cost_usd
                    .with_label_values(&[provider])
                    .inc_by(run.cost_usd);
            }
            self.metrics
                .tokens
                .with_label_values(&[provider, "prompt"])
                .inc_by(run.usage.prompt_tokens);
            self.metrics
                .tokens
                .with_label_values(&[provider, "completion"])
                .inc_by(run.usage.completion_tokens);
        }
    }
}

impl Actor for Recorder {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "recorder: final flush failed");
        }
    }
}

impl Handler<Record> for Recorder {
    type Result = ();

    fn handle(&mut self, Record(run): Record, _: &mut Self::Context) {
        let started = Instant::now();
        match self.store.insert(&run) {
            Ok(()) => {
                self.metrics.runs_recorded.inc();
                if let Some(Err(e)) = self.agents.as_ref().map(|agents| agents.observe(&run)) {
                    self.metrics.recorder_errors.inc();
                    tracing::warn!(run_id = %run.id, error = %e, "recorder: cannot update the agent");
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
}

impl Handler<Barrier> for Recorder {
    type Result = ();

    fn handle(&mut self, _: Barrier, _: &mut Self::Context) {}
}

impl Handler<Flush> for Recorder {
    type Result = Result<(), String>;

    fn handle(&mut self, _: Flush, _: &mut Self::Context) -> Self::Result {
        self.store.flush()
    }
}
