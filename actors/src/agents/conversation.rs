//! Conversations: a run whose messages extend an earlier run's messages and answer joins that
//! run's conversation.
//!
//! Each message list is hashed as a chain (the hash of a prefix extends the hash of the prefix
//! before it), over a normal form of each message that ignores what SDKs add or drop when they
//! send an answer back (`refusal: null`, `content: ""` next to tool calls, …). When the recorder
//! stores an answered run, it files `hash(messages + answer)` under the run's conversation; a
//! new request looks up the hash of its messages up to its last assistant turn.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{hash_json, AgentStore};
use crate::completion::AssistantMessage;
use crate::error::GatewayError;
use crate::recorder::run::{RunRecord, RunStatus};
use crate::storage::{ConversationLink, StorageError};
use crate::wire::{ContentPart, Message, MessageContent, Role};

/// What of a message counts for the conversation, borrowed from it.
#[derive(Serialize)]
struct Normal<'a> {
    role: &'static str,
    content: NormalContent<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<(&'a str, &'a str)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

/// Text as text however it is sent (a string, text parts, nothing); other parts as they are.
#[derive(Serialize)]
#[serde(untagged)]
enum NormalContent<'a> {
    Text(Cow<'a, str>),
    Parts(&'a [ContentPart]),
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::Developer => "developer",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
        Role::Function => "function",
    }
}

fn normal_content(content: Option<&MessageContent>) -> NormalContent<'_> {
    match content {
        None => NormalContent::Text(Cow::Borrowed("")),
        Some(MessageContent::Text(text)) => NormalContent::Text(Cow::Borrowed(text)),
        Some(MessageContent::Parts(parts)) => {
            let texts: Option<Vec<&str>> = parts
                .iter()
                .map(|p| match p {
                    ContentPart::Text { text } => Some(text.as_str()),
                    _ => None,
                })
                .collect();
            match texts {
                Some(texts) if texts.len() == 1 => NormalContent::Text(Cow::Borrowed(texts[0])),
                Some(texts) => NormalContent::Text(Cow::Owned(texts.join("\n"))),
                None => NormalContent::Parts(parts),
            }
        }
    }
}

fn normal(message: &Message) -> Normal<'_> {
    Normal {
        role: role_name(message.role),
        content: normal_content(message.content.as_ref()),
        tool_calls: message
            .tool_calls
            .iter()
            .flatten()
            .map(|c| (c.function.name.as_str(), c.function.arguments.as_str()))
            .collect(),
        tool_call_id: message.tool_call_id.as_deref(),
    }
}

fn normal_answer(answer: &AssistantMessage) -> Normal<'_> {
    Normal {
        role: "assistant",
        content: NormalContent::Text(Cow::Borrowed(answer.content.as_deref().unwrap_or(""))),
        tool_calls: answer
            .tool_calls
            .iter()
            .map(|c| (c.name.as_str(), c.arguments.as_str()))
            .collect(),
        tool_call_id: None,
    }
}

/// The next link of the chain: JSON is self-delimiting, so the message needs no length.
fn chain(previous: &[u8; 32], message: &Normal<'_>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hash_json(&mut hasher, message);
    hasher.finalize().into()
}

fn hash_messages(messages: &[Message]) -> [u8; 32] {
    messages
        .iter()
        .fold([0u8; 32], |h, m| chain(&h, &normal(m)))
}

/// The hash under which an answered run's conversation is filed: its messages, then its answer.
pub fn continuation_hash(messages: &[Message], answer: &AssistantMessage) -> [u8; 32] {
    chain(&hash_messages(messages), &normal_answer(answer))
}

/// The hash of the messages up to the last assistant turn, which an earlier run's messages and
/// answer must match; `None` when the messages have no assistant turn.
pub fn lookup_hash(messages: &[Message]) -> Option<[u8; 32]> {
    let last = messages.iter().rposition(|m| m.role == Role::Assistant)?;
    Some(hash_messages(&messages[..=last]))
}

impl AgentStore {
    /// The conversation the messages continue, if an earlier run of the agent answered their
    /// beginning.
    pub async fn conversation_of(
        &self,
        tenant: &str,
        agent: &str,
        messages: &[Message],
    ) -> Result<Option<Uuid>, GatewayError> {
        let Some(hash) = lookup_hash(messages) else {
            return Ok(None);
        };
        match self.inner.conversations.find(tenant, agent, &hash).await {
            Ok(found) => Ok(found),
            // The store is away: the turn starts a conversation of its own rather than fail.
            Err(StorageError::Unavailable(e)) => {
                tracing::warn!(agent, error = %e, "conversation lookup skipped: the store is away");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The link that lets an answered run's next turn find its conversation; `None` for a run
/// without an answer (or whose messages cannot be read).
pub(crate) fn link_of(run: &RunRecord) -> Option<ConversationLink> {
    if run.status != RunStatus::Success {
        return None;
    }
    let answer = run
        .output
        .as_ref()
        .and_then(|o| o.choices.first())
        .map(|c| &c.message)?;
    // The messages as sent: rendered ones when templates were, else the request's.
    let parsed: Vec<Message>;
    let messages: &[Message] = match &run.rendered_messages {
        Some(messages) => messages,
        None => {
            #[derive(Deserialize)]
            struct Messages {
                messages: Vec<Message>,
            }
            match run
                .request
                .as_ref()
                .map(|r| serde_json::from_str::<Messages>(r.get()))
            {
                Some(Ok(request)) => {
                    parsed = request.messages;
                    &parsed
                }
                _ => return None,
            }
        }
    };
    Some(ConversationLink {
        tenant: run.tenant.clone(),
        agent: run.agent.clone(),
        hash: continuation_hash(messages, answer),
        conversation_id: run.conversation_id.unwrap_or(run.id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn messages(value: Value) -> Vec<Message> {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_follow_up_matches_the_earlier_messages_and_answer() {
        let first = messages(json!([
            {"role": "system", "content": "Be brief"},
            {"role": "user", "content": "Hi"}
        ]));
        let answer = AssistantMessage {
            content: Some("Hello!".into()),
            ..Default::default()
        };
        // The SDK sends the answer back with extra null fields, and a new user turn.
        let follow_up = messages(json!([
            {"role": "system", "content": "Be brief"},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": "Hello!", "refusal": null, "tool_calls": null},
            {"role": "user", "content": "How are you?"}
        ]));
        assert_eq!(
            lookup_hash(&follow_up),
            Some(continuation_hash(&first, &answer))
        );
        // An edited history does not match.
        let edited = messages(json!([
            {"role": "system", "content": "Be brief"},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "How are you?"}
        ]));
        assert_ne!(
            lookup_hash(&edited),
            Some(continuation_hash(&first, &answer))
        );
        assert_eq!(lookup_hash(&first), None);
    }

    #[test]
    fn tool_call_answers_match_with_ids_and_empty_content() {
        let first = messages(json!([{"role": "user", "content": "weather?"}]));
        let answer = AssistantMessage {
            content: None,
            tool_calls: vec![crate::completion::ToolCallOut {
                id: "call_1".into(),
                name: "weather".into(),
                arguments: "{\"city\":\"Paris\"}".into(),
            }],
            refusal: None,
        };
        let follow_up = messages(json!([
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
        ]));
        assert_eq!(
            lookup_hash(&follow_up),
            Some(continuation_hash(&first, &answer))
        );
    }
}
