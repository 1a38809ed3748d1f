//! flowgate's actors and the engine they run: wire types, provider adapters, routing, cache,
//! recorder. The HTTP edge (the `flowgate` binary) parses and validates requests and hands them
//! to these.
#![deny(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod agents;
pub mod answer;
pub mod breaker;
pub mod cache;
pub mod capabilities;
pub mod catalog;
pub mod completion;
pub mod embeddings;
pub mod engine;
pub mod error;
pub mod evals;
pub mod keys;
pub mod model_ref;
pub mod outbox;
pub mod provider;
pub mod recorder;
pub mod retry;
pub mod router;
pub mod search;
pub mod sessions;
pub mod share;
pub mod stats;
pub mod storage;
pub mod structured;
pub mod supervisor;
pub mod templates;
pub mod version;
pub mod wire;
