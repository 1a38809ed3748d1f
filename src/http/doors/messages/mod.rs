//! The Anthropic Messages door: its request (`request.rs`), its answer and error shapes
//! (`response.rs`) and its stream events (`stream.rs`).

mod request;
mod response;
mod stream;

use flowgate_actors::answer::Answer;
use flowgate_actors::engine::Run;
use serde_json::{json, Value};

pub(in crate::http) use request::MessagesRequest;
pub(in crate::http) use response::error_body;
pub(in crate::http) use stream::MessageStream;

/// The `message` object of a whole answer, with flowgate's additions (`cost_usd`,
/// `duration_seconds`, `version_id`, `feedback_token`, `url`) beside Anthropic's fields.
pub(in crate::http) fn render(run: &Run, answer: &Answer, id: String, url: String) -> Value {
    let ctx = run.context();
    let choice = answer.completion.choices.first();
    let content = choice
        .map(|c| response::content_blocks(&c.message))
        .unwrap_or_default();
    let stop = choice.map_or("end_turn", |c| response::stop_reason(c.finish_reason));
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": null,
        "usage": response::usage(&answer.completion.usage),
        "cost_usd": run.cost_of(answer),
        "duration_seconds": run.duration_seconds(),
        "version_id": ctx.version_id,
        "feedback_token": ctx.feedback_token,
        "url": url,
    })
}
