//! End-user feedback on runs. The feedback token handed out with each answer is
//! `<run_id>.<secret>`: it names the run and proves the caller received its answer, so it can
//! be sent from an end user's device without a flowgate API key. A user's new feedback on a
//! run replaces their earlier one; anonymous feedback accumulates.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{now_rfc3339, store_error, AgentStore};
use crate::error::GatewayError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Positive,
    Negative,
}

/// One piece of feedback, as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FeedbackRecord {
    pub run_id: Uuid,
    pub outcome: Outcome,
    #[serde(default)]
    pub comment: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    pub created_at: String,
}

/// Longest comment kept.
pub const MAX_COMMENT_CHARS: usize = 10_000;

/// The run a feedback token names, if it is well formed.
pub fn token_run_id(token: &str) -> Option<Uuid> {
    let (run_id, secret) = token.split_once('.')?;
    if secret.is_empty() {
        return None;
    }
    run_id.parse().ok()
}

/// Whether `given` is the run's token, compared in constant time.
pub fn token_matches(stored: &str, given: &str) -> bool {
    let (a, b) = (stored.as_bytes(), given.as_bytes());
    if a.len() != b.len() || a.is_empty() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FeedbackRecord {
    pub fn new(
        run_id: Uuid,
        outcome: Outcome,
        comment: Option<String>,
        user_id: Option<String>,
    ) -> Result<FeedbackRecord, GatewayError> {
        if comment
            .as_ref()
            .is_some_and(|c| c.chars().count() > MAX_COMMENT_CHARS)
        {
            return Err(GatewayError::invalid(format!(
                "`comment` is longer than {MAX_COMMENT_CHARS} characters"
            ))
            .with_param("comment"));
        }
        Ok(FeedbackRecord {
            run_id,
            outcome,
            comment: comment.filter(|c| !c.is_empty()),
            user_id: user_id.filter(|u| !u.is_empty()),
            created_at: now_rfc3339(),
        })
    }
}

impl AgentStore {
    /// Stores feedback on its run; a user's earlier feedback on the run is replaced.
    pub fn put_feedback(&self, record: &FeedbackRecord) -> Result<(), GatewayError> {
        let mut key = record.run_id.as_bytes().to_vec();
        match &record.user_id {
            Some(user) => {
                key.push(0);
                key.extend_from_slice(user.as_bytes());
            }
            None => {
                key.push(1);
                let id = self.inner.db.generate_id().map_err(store_error)?;
                key.extend_from_slice(&id.to_be_bytes());
            }
        }
        let bytes = serde_json::to_vec(record).map_err(store_error)?;
        self.inner
            .feedback
            .insert(key, bytes)
            .map_err(store_error)?;
        Ok(())
    }

    /// Every feedback on the run.
    pub fn feedback_for(&self, run_id: Uuid) -> Result<Vec<FeedbackRecord>, GatewayError> {
        self.inner
            .feedback
            .scan_prefix(run_id.as_bytes())
            .map(|entry| {
                let (_, bytes) = entry.map_err(store_error)?;
                serde_json::from_slice(&bytes).map_err(store_error)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::run::feedback_token;

    #[test]
    fn tokens_name_their_run_and_compare_exactly() {
        let id = Uuid::now_v7();
        let token = feedback_token(id);
        assert_eq!(token_run_id(&token), Some(id));
        assert!(token_matches(&token, &token));
        assert!(!token_matches(&token, &feedback_token(id)));
        assert!(!token_matches(&token, &token[..token.len() - 1]));
        assert_eq!(token_run_id("nope"), None);
        assert_eq!(token_run_id(&format!("{id}.")), None);
    }

    #[test]
    fn a_user_replaces_their_feedback_anonymous_ones_accumulate() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let store = AgentStore::open(&db).unwrap();
        let run = Uuid::now_v7();
        let put = |outcome, user: Option<&str>| {
            let record =
                FeedbackRecord::new(run, outcome, Some("c".into()), user.map(str::to_string))
                    .unwrap();
            store.put_feedback(&record).unwrap();
        };
        put(Outcome::Positive, Some("u1"));
        put(Outcome::Negative, Some("u1"));
        put(Outcome::Positive, None);
        put(Outcome::Positive, None);
        let all = store.feedback_for(run).unwrap();
        assert_eq!(all.len(), 3);
        let u1 = all
            .iter()
            .find(|f| f.user_id.as_deref() == Some("u1"))
            .unwrap();
        assert_eq!(u1.outcome, Outcome::Negative);
        assert!(store.feedback_for(Uuid::now_v7()).unwrap().is_empty());
        assert!(
            FeedbackRecord::new(run, Outcome::Positive, Some("x".repeat(10_001)), None).is_err()
        );
    }
}
