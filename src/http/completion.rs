//! Writing an answer as the OpenAI `chat.completion` body, with flowgate's additions: each
//! choice repeats the run's `cost_usd`, `duration_seconds`, `feedback_token` and `url`, and the
//! body carries the run's `version_id` and `metadata` (and, for the gateway's own runs, its id,
//! source and what it replays).
//!
//! The body is written straight as bytes, its keys as literals, the way the stream's chunks are
//! (`sse.rs`): serde's derived structs had serde_json scan each key for characters to escape,
//! and that scan and the per-field calls were ~3% of a plain request's worker time. Every value
//! that comes from the answer or the run is written by serde_json, so escaping and number
//! formatting are serde_json's own.

use std::io::Write as _;

use flowgate_actors::answer::Answer;
use flowgate_actors::completion::Choice;
use flowgate_actors::engine::Run;
use flowgate_actors::recorder::run::RunSource;

use super::sse::write_json as json;

/// The `chat.completion` body of `answer`, for the run that answered it.
pub(super) fn completion_body(run: &Run, answer: &Answer, public_url: &str) -> Vec<u8> {
    let ctx = run.context();
    let cost_usd = run.cost_of(answer);
    let duration = run.duration_seconds();
    let choices = &answer.completion.choices;
    let usage = &answer.completion.usage;
    let url = run_url(public_url, &ctx.run_id);
    let mut out = Vec::with_capacity(
        512 + answer.model.len()
            + choices
                .iter()
                .map(|c| choice_len(c) + url.len() + ctx.feedback_token.len())
                .sum::<usize>(),
    );
    out.extend_from_slice(b"{\"id\":");
    json(&mut out, &ctx.response_id());
    out.extend_from_slice(b",\"object\":\"chat.completion\",\"created\":");
    let _ = write!(out, "{}", ctx.created_unix());
    out.extend_from_slice(b",\"model\":");
    json(&mut out, &answer.model);
    out.extend_from_slice(b",\"choices\":[");
    let per_choice = cost_usd / choices.len().max(1) as f64;
    for (i, choice) in choices.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_choice(&mut out, choice);
        cost_and_duration(&mut out, per_choice, duration);
        out.extend_from_slice(b",\"feedback_token\":");
        json(&mut out, &ctx.feedback_token);
        out.extend_from_slice(b",\"url\":");
        json(&mut out, &url);
        out.push(b'}');
    }
    let _ = write!(
        out,
        "],\"usage\":{{\"prompt_tokens\":{},\"completion_tokens\":{},\"total_tokens\":{},\
         \"prompt_tokens_details\":{{\"cached_tokens\":{}}},\
         \"completion_tokens_details\":{{\"reasoning_tokens\":{}}}}}",
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.total_tokens(),
        usage.cached_tokens,
        usage.reasoning_tokens,
    );
    cost_and_duration(&mut out, cost_usd, duration);
    out.extend_from_slice(b",\"version_id\":");
    json(&mut out, &ctx.version_id);
    out.extend_from_slice(b",\"metadata\":");
    json(&mut out, &ctx.metadata);
    // The app's own answers keep the OpenAI shape; the gateway's own runs name themselves.
    if ctx.source != RunSource::Api {
        out.extend_from_slice(b",\"run_id\":");
        json(&mut out, &ctx.run_id);
        out.extend_from_slice(b",\"source\":");
        json(&mut out, &ctx.source);
    }
    if let Some(replay_of) = &ctx.replay_of {
        out.extend_from_slice(b",\"replay_of\":");
        json(&mut out, replay_of);
    }
    out.push(b'}');
    out
}

/// A choice up to its `finish_reason`, left open for what the run adds:
/// `{"index":…,"message":{"role":"assistant","content":…,"refusal":…[,"tool_calls":[…]]},
/// "logprobs":null,"finish_reason":…`.
fn write_choice(out: &mut Vec<u8>, choice: &Choice) {
    let message = &choice.message;
    let _ = write!(
        out,
        "{{\"index\":{},\"message\":{{\"role\":\"assistant\",\"content\":",
        choice.index
    );
    json(out, &message.content);
    out.extend_from_slice(b",\"refusal\":");
    json(out, &message.refusal);
    if !message.tool_calls.is_empty() {
        out.extend_from_slice(b",\"tool_calls\":[");
        for (i, call) in message.tool_calls.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"id\":");
            json(out, &call.id);
            out.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
            json(out, &call.name);
            out.extend_from_slice(b",\"arguments\":");
            json(out, &call.arguments);
            out.extend_from_slice(b"}}");
        }
        out.push(b']');
    }
    out.extend_from_slice(b"},\"logprobs\":null,\"finish_reason\":");
    json(out, choice.finish_reason.as_str());
}

/// What a choice's text takes, for the body's first allocation.
fn choice_len(choice: &Choice) -> usize {
    let message = &choice.message;
    256 + message.content.as_ref().map_or(0, String::len)
        + message.refusal.as_ref().map_or(0, String::len)
        + message
            .tool_calls
            .iter()
            .map(|t| 96 + t.id.len() + t.name.len() + t.arguments.len())
            .sum::<usize>()
}

/// The link to a run in the web UI.
pub fn run_url(public_url: &str, run_id: &uuid::Uuid) -> String {
    format!("{public_url}/runs/{run_id}")
}

/// `,"cost_usd":…,"duration_seconds":…`, as the body and each of its choices end.
fn cost_and_duration(out: &mut Vec<u8>, cost_usd: f64, duration_seconds: f64) {
    out.extend_from_slice(b",\"cost_usd\":");
    json(out, &cost_usd);
    out.extend_from_slice(b",\"duration_seconds\":");
    json(out, &duration_seconds);
}
