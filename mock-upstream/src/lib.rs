//! `flowgate-mock-upstream`: a scriptable mock of LLM provider HTTP APIs, used by
//! flowgate's integration tests and benchmarks.
//!
//! Currently it speaks the OpenAI Chat Completions API ([`openai`]), with the exact wire
//! format the official SDKs send and accept. The pieces are layered so that more provider
//! formats can be added as more routes:
//!
//! * [`answer`](mod@answer) — what to answer (echo, forced tool calls, structured outputs), independent
//!   of any transport; reused in-process by flowgate's built-in `mock` provider;
//! * [`schema_instance`] — building a value that validates against a JSON Schema;
//! * [`directives`] — scripting through the `model` string (`gpt-4o;status=429;retry_after=2`);
//! * [`MockUpstream`] — the actix-web server on its own thread, recording requests.
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

pub mod answer;
mod anthropic;
mod bedrock;
pub mod directives;
mod gemini;
mod ids;
pub mod openai;
pub mod schema_instance;
mod script;
mod server;

pub use answer::{answer, MockAnswer, MockToolCall};
pub use directives::Directives;
pub use server::{MockUpstream, Options, RecordedRequest, CONTROL_REQUESTS_PATH};
