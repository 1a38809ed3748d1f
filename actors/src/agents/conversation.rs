//! Conversations: a run whose messages extend an earlier run's messages and answer joins that
//! run's conversation.
//!
//! Each message list is hashed as a chain (the hash of a prefix extends the hash of the prefix
//! before it), over a normal form of each message that ignores what SDKs add or drop when they
//! send an answer back (`refusal: null`, `content: ""` next to tool calls, …). When the recorder
//! stores an answered run, it files `hash(messages + answer)` under the run's conversation; a
//! new request looks up the hash of its messages up to its last assistant turn.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{hash_json, AgentStore};
use crate::completion::{AssistantMessage, Completion};
use crate::error::GatewayError;
use crate::recorder::run::{RunRecord, RunSource, RunStatus};
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
    continuation_of(&hash_messages(messages), answer)
}

/// [`continuation_hash`] from the hash of the messages ([`MessageHashes::all`]).
pub fn continuation_of(messages: &[u8; 32], answer: &AssistantMessage) -> [u8; 32] {
    chain(messages, &normal_answer(answer))
}

/// The hash of the messages up to the last assistant turn, which an earlier run's messages and
/// answer must match; `None` when the messages have no assistant turn.
pub fn lookup_hash(messages: &[Message]) -> Option<[u8; 32]> {
    message_hashes(messages).lookup
}

/// A request's messages hashed once: what its conversation is looked up by, and what its
/// answer extends into the hash the next turn will look up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHashes {
    /// Up to the last assistant turn ([`lookup_hash`]).
    pub lookup: Option<[u8; 32]>,
    /// All of them.
    pub all: [u8; 32],
}

/// [`MessageHashes`] in one pass over the messages (the chain passes the lookup on its way).
pub fn message_hashes(messages: &[Message]) -> MessageHashes {
    let last = messages.iter().rposition(|m| m.role == Role::Assistant);
    let mut hash = [0u8; 32];
    let mut lookup = None;
    for (i, message) in messages.iter().enumerate() {
        hash = chain(&hash, &normal(message));
        if Some(i) == last {
            lookup = Some(hash);
        }
    }
    MessageHashes { lookup, all: hash }
}

/// Most links held in memory while they wait for the recorder; past it a run's link is only
/// found once stored (as before there was this map).
const MAX_PENDING: usize = 65_536;

/// One answered run's link, waiting to be stored.
struct Pending {
    tenant: Box<str>,
    agent: Box<str>,
    conversation: Uuid,
}

/// The conversation links of answered runs not yet stored. The request path adds a run's link
/// before its answer leaves ([`AgentStore::link_pending`]); the recorder stores links in
/// batches, a few milliseconds later, and takes them out once stored ([`AgentStore::observe`])
/// or once their runs failed to be. A follow-up sent in between (a tool loop answering at
/// once, an Instructor retry) finds its conversation here rather than starting a new one.
#[derive(Default)]
pub(super) struct PendingLinks {
    /// By continuation hash; the few runs of other agents or tenants with the same messages
    /// and answer share its entry.
    links: Mutex<HashMap<[u8; 32], Vec<Pending>>>,
}

impl PendingLinks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Vec<Pending>>> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, tenant: &str, agent: &str, hash: [u8; 32], conversation: Uuid) {
        let mut links = self.lock();
        if links.len() >= MAX_PENDING && !links.contains_key(&hash) {
            return;
        }
        let same = links.entry(hash).or_default();
        match same
            .iter_mut()
            .find(|p| &*p.tenant == tenant && &*p.agent == agent)
        {
            // The same messages and answer again: the latest run's conversation, as the store
            // keeps it.
            Some(pending) => pending.conversation = conversation,
            None => same.push(Pending {
                tenant: tenant.into(),
                agent: agent.into(),
                conversation,
            }),
        }
    }

    fn find(&self, tenant: &str, agent: &str, hash: &[u8; 32]) -> Option<Uuid> {
        self.lock()
            .get(hash)?
            .iter()
            .find(|p| &*p.tenant == tenant && &*p.agent == agent)
            .map(|p| p.conversation)
    }

    /// Takes out `links` (stored, or never to be), unless a later run replaced one.
    pub(super) fn remove(&self, links: &[ConversationLink]) {
        if links.is_empty() {
            return;
        }
        let mut pending = self.lock();
        if pending.is_empty() {
            return;
        }
        for link in links {
            let Some(same) = pending.get_mut(&link.hash) else {
                continue;
            };
            same.retain(|p| {
                !(*p.tenant == link.tenant
                    && *p.agent == link.agent
                    && p.conversation == link.conversation_id)
            });
            if same.is_empty() {
                pending.remove(&link.hash);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }
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
        self.conversation_by(tenant, agent, lookup_hash(messages).as_ref())
            .await
    }

    /// [`AgentStore::conversation_of`] by the messages' lookup hash: an answer not yet stored
    /// is found in memory, the others in the store.
    pub async fn conversation_by(
        &self,
        tenant: &str,
        agent: &str,
        lookup: Option<&[u8; 32]>,
    ) -> Result<Option<Uuid>, GatewayError> {
        let Some(hash) = lookup else {
            return Ok(None);
        };
        if let Some(pending) = self.inner.pending_links.find(tenant, agent, hash) {
            return Ok(Some(pending));
        }
        match self.inner.conversations.find(tenant, agent, hash).await {
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

impl AgentStore {
    /// Keeps an answered run's link (its [`continuation_of`] hash) in memory until the
    /// recorder has stored it: called by the request path before the answer leaves.
    pub fn link_pending(&self, tenant: &str, agent: &str, hash: [u8; 32], conversation: Uuid) {
        self.inner
            .pending_links
            .add(tenant, agent, hash, conversation);
    }

    /// How many links wait in memory for the recorder.
    #[cfg(test)]
    pub(crate) fn pending_links(&self) -> usize {
        self.inner.pending_links.len()
    }

    /// Forgets the links of runs that were not stored (their batch failed): no one stores them.
    pub fn forget_links(&self, runs: &[Box<RunRecord>]) {
        let links: Vec<_> = runs.iter().filter_map(|run| link_of(run)).collect();
        self.inner.pending_links.remove(&links);
    }
}

/// The answer a successful run gave, which its conversation's next turn sends back.
pub(crate) fn answer_of(
    status: RunStatus,
    output: Option<&Completion>,
) -> Option<&AssistantMessage> {
    if status != RunStatus::Success {
        return None;
    }
    output.and_then(|o| o.choices.first()).map(|c| &c.message)
}

/// The link that lets an answered run's next turn find its conversation, for the app's own
/// runs (see `Run::record`); `None` for a run without an answer (or whose messages cannot be
/// read). The request path hashed a run's messages already ([`RunRecord::continuation`]);
/// runs from elsewhere are read again.
pub(crate) fn link_of(run: &RunRecord) -> Option<ConversationLink> {
    if run.source != RunSource::Api {
        return None;
    }
    filed_link_of(run)
}

/// The link a stored run may have filed, whatever its source (earlier releases linked replays
/// and playground runs too): what retention deletes with the run.
pub(crate) fn filed_link_of(run: &RunRecord) -> Option<ConversationLink> {
    let answer = answer_of(run.status, run.output.as_ref())?;
    if let Some(hash) = run.continuation {
        return Some(ConversationLink {
            tenant: run.tenant.clone(),
            agent: run.agent.clone(),
            hash,
            conversation_id: run.conversation_id.unwrap_or(run.id),
        });
    }
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
    fn one_pass_gives_the_lookup_and_the_continuation() {
        let follow_up = messages(json!([
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "And?"}
        ]));
        let hashes = message_hashes(&follow_up);
        assert_eq!(hashes.lookup, lookup_hash(&follow_up));
        assert!(hashes.lookup.is_some());
        assert_eq!(hashes.all, hash_messages(&follow_up));
        let answer = AssistantMessage {
            content: Some("Fine.".into()),
            ..Default::default()
        };
        assert_eq!(
            continuation_of(&hashes.all, &answer),
            continuation_hash(&follow_up, &answer)
        );
        assert_eq!(message_hashes(&follow_up[..1]).lookup, None);
    }

    #[test]
    fn pending_links_are_found_by_tenant_and_agent_until_stored() {
        let pending = PendingLinks::default();
        let (hash, other_hash) = ([1u8; 32], [2u8; 32]);
        let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
        let link = |agent: &str, hash: [u8; 32], conversation: Uuid| ConversationLink {
            tenant: "t".into(),
            agent: agent.into(),
            hash,
            conversation_id: conversation,
        };
        pending.add("t", "a", hash, first);
        // Another agent's run with the same messages and answer has its own conversation.
        pending.add("t", "b", hash, second);
        assert_eq!(pending.find("t", "a", &hash), Some(first));
        assert_eq!(pending.find("t", "b", &hash), Some(second));
        assert_eq!(pending.find("u", "a", &hash), None);
        assert_eq!(pending.find("t", "a", &other_hash), None);
        // The same messages and answer again: the latest run's conversation, and storing the
        // earlier link does not take out the later one.
        pending.add("t", "a", hash, second);
        pending.remove(&[link("a", hash, first)]);
        assert_eq!(pending.find("t", "a", &hash), Some(second));
        pending.remove(&[link("a", hash, second), link("b", hash, second)]);
        assert_eq!(pending.len(), 0);
        assert!(pending.lock().is_empty());
        // Bounded: past the limit a link waits in the store only.
        for i in 0..MAX_PENDING as u32 + 10 {
            let mut hash = [0u8; 32];
            hash[..4].copy_from_slice(&i.to_be_bytes());
            pending.add("t", "a", hash, first);
        }
        assert_eq!(pending.len(), MAX_PENDING);
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
