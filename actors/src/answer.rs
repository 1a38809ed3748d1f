//! What a run's upstream work yields: a whole [`Answer`], or a [`LiveStream`] whose first event
//! has arrived. The engine produces them; the cache shares and replays them; structured
//! outputs reshape them. They sit apart from all three so that none imports another for them.

use uuid::Uuid;

use crate::completion::{Completion, StreamEvent};
use crate::error::AttemptSummary;
use crate::provider::EventStream;

/// A successful answer, shared with coalesced followers.
#[derive(Debug, Clone)]
pub struct Answer {
    pub completion: Completion,
    /// Catalog id of the model that answered.
    pub model: String,
    pub provider: String,
    pub provider_model: String,
    pub cost_usd: f64,
    pub attempts: Vec<AttemptSummary>,
    /// The run that called the provider.
    pub run_id: Uuid,
}

/// A stream whose first event has arrived: the provider is committed.
pub struct LiveStream {
    pub first: StreamEvent,
    pub rest: EventStream,
    pub model: String,
}
