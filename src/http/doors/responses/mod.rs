//! The OpenAI Responses door: its request (`request.rs`), `previous_response_id`
//! (`previous.rs`), its `response` object (`response.rs`) and its stream events
//! (`stream.rs`).

mod previous;
mod request;
mod response;
mod stream;

use flowgate_actors::answer::Answer;
use flowgate_actors::engine::Run;
use serde_json::{json, Map, Value};

pub(in crate::http) use previous::{conversation, run_id_of};
pub(in crate::http) use request::ResponsesRequest;
pub(in crate::http) use response::echo;
pub(in crate::http) use stream::ResponseStream;

/// The `response` object of a whole answer, with flowgate's additions (`cost_usd`,
/// `duration_seconds`, `version_id`, `feedback_token`, `url`).
pub(in crate::http) fn render(
    run: &Run,
    answer: &Answer,
    echo: &Map<String, Value>,
    id: &str,
    url: String,
) -> Value {
    let ctx = run.context();
    let hex = ctx.run_id.simple().to_string();
    let choice = answer.completion.choices.first();
    let output = choice
        .map(|c| response::output_items(&c.message, &hex))
        .unwrap_or_default();
    let (status, incomplete) =
        response::status(choice.map(|c| c.finish_reason).unwrap_or_default());
    let mut body = response::response(
        echo,
        response::ResponseState {
            id,
            created_at: ctx.created_unix(),
            model: &answer.model,
            status,
            incomplete_details: incomplete,
            error: Value::Null,
            output,
            usage: response::usage(&answer.completion.usage),
        },
    );
    body["cost_usd"] = json!(run.cost_of(answer));
    body["duration_seconds"] = json!(run.duration_seconds());
    body["version_id"] = json!(ctx.version_id);
    body["feedback_token"] = json!(ctx.feedback_token);
    body["url"] = json!(url);
    body
}
