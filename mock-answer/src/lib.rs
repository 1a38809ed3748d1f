//! `flowgate-mock-answer`: what a mock model answers, independent of any transport.
//!
//! The shipped gateway's built-in `mock` provider calls it in-process; the test server
//! `flowgate-mock-upstream` wraps it in each provider's wire format. Keeping it in a crate of
//! its own means the shipped binary does not link the test server.
//!
//! * [`answer`](mod@answer) — what to answer (echo, forced tool calls, structured outputs);
//! * [`schema_instance`] — building a value that validates against a JSON Schema;
//! * [`directives`] — scripting through the `model` string (`gpt-4o;status=429;retry_after=2`);
//! * [`ids`] — ids in the providers' formats.

pub mod answer;
pub mod directives;
pub mod ids;
pub mod schema_instance;

pub use answer::{answer, MockAnswer, MockToolCall};
pub use directives::Directives;
