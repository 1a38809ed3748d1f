//! `flowgate-mock-upstream`: a scriptable mock of LLM provider HTTP APIs, used by
//! flowgate's integration tests and benchmarks.
//!
//! Currently it speaks the OpenAI Chat Completions API ([`openai`]), with the exact wire
//! format the official SDKs send and accept. The pieces are layered so that more provider
//! formats can be added as more routes:
//!
//! * [`answer`](mod@answer), [`schema_instance`], [`directives`] — what to answer, from the
//!   crate `flowgate-mock-answer`, which the gateway's built-in `mock` provider uses too (the
//!   shipped binary links that small crate, not this server);
//! * [`MockUpstream`] — the actix-web server on its own thread, recording requests;
//! * [`raw`] — upstreams written by hand on raw TCP (an answer without end) and a request-head
//!   reader, for tests that need what no well-behaved server sends.
//!
//! ```no_run
//! use flowgate_mock_upstream::MockUpstream;
//!
//! let mock = MockUpstream::start();
//! let base_url = mock.base_url(); // http://127.0.0.1:PORT/v1
//! // ... point a client at base_url, then:
//! assert!(mock.requests().iter().all(|r| r.path.starts_with("/v1/")));
//! ```
//!
//! HTTP routes: `POST /v1/chat/completions` (and `/chat/completions`), `GET /v1/models`,
//! and the control endpoints `GET /_mock/requests` (recorded requests as JSON) and
//! `DELETE /_mock/requests` (clear), which are not recorded themselves.

mod anthropic;
mod bedrock;
mod embeddings;
mod gemini;
pub mod openai;
pub mod raw;
mod script;
mod server;
mod state;

pub use flowgate_mock_answer::{
    answer, directives, ids, schema_instance, Directives, MockAnswer, MockToolCall,
};
pub use server::{MockUpstream, Options, CONTROL_REQUESTS_PATH};
pub use state::RecordedRequest;
