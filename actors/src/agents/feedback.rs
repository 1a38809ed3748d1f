//! End-user feedback on runs. The feedback token handed out with each answer is
//! `<run_id>.<secret>`: it names the run and proves the caller received its answer, so it can
//! be sent from an end user's device without a flowgate API key. A token is one vote: the run
//! keeps one feedback, and a later post with the same token replaces the earlier one (a token
//! posted in a loop does not grow the store).

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
/// Longest `user_id`.
pub const MAX_USER_ID_CHARS: usize = 256;

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
        if user_id
            .as_ref()
            .is_some_and(|u| u.chars().count() > MAX_USER_ID_CHARS)
        {
            return Err(GatewayError::invalid(format!(
                "`user_id` is longer than {MAX_USER_ID_CHARS} characters"
            ))
            .with_param("user_id"));
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
    /// Stores feedback on its run, replacing any earlier feedback on it (one token, one vote).
    pub fn put_feedback(&self, record: &FeedbackRecord) -> Result<(), GatewayError> {
        let key = record.run_id.as_bytes();
        let bytes = serde_json::to_vec(record).map_err(store_error)?;
        // Earlier releases kept one entry per user (and per anonymous post) under the run's
        // prefix: they go too.
        for old in self.inner.feedback.scan_prefix(key).keys() {
            let old = old.map_err(store_error)?;
            if old.as_ref() != key {
                self.inner.feedback.remove(old).map_err(store_error)?;
            }
        }
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
    fn a_token_is_one_vote_later_posts_replace_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let store = AgentStore::open(&db).unwrap();
        let run = Uuid::now_v7();
        // An entry as an earlier release kept it: one per user under the run's prefix.
        let mut old_key = run.as_bytes().to_vec();
        old_key.push(0);
        old_key.extend_from_slice(b"u0");
        let old = FeedbackRecord::new(run, Outcome::Positive, None, Some("u0".into())).unwrap();
        store
            .inner
            .feedback
            .insert(old_key, serde_json::to_vec(&old).unwrap())
            .unwrap();
        assert_eq!(store.feedback_for(run).unwrap().len(), 1);

        let put = |outcome, user: Option<&str>| {
            let record =
                FeedbackRecord::new(run, outcome, Some("c".into()), user.map(str::to_string))
                    .unwrap();
            store.put_feedback(&record).unwrap();
        };
        put(Outcome::Positive, Some("u1"));
        for i in 0..100 {
            put(Outcome::Positive, Some(&format!("user-{i}")));
            put(Outcome::Positive, None);
        }
        put(Outcome::Negative, Some("u2"));
        let all = store.feedback_for(run).unwrap();
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(all[0].outcome, Outcome::Negative);
        assert_eq!(all[0].user_id.as_deref(), Some("u2"));
        assert_eq!(store.inner.feedback.len(), 1);
        assert!(store.feedback_for(Uuid::now_v7()).unwrap().is_empty());
        assert!(
            FeedbackRecord::new(run, Outcome::Positive, Some("x".repeat(10_001)), None).is_err()
        );
        assert!(FeedbackRecord::new(run, Outcome::Positive, None, Some("u".repeat(257))).is_err());
    }
}
