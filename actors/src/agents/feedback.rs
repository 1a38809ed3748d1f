//! End-user feedback on runs. The feedback token handed out with each answer is
//! `<run_id>.<secret>`: it names the run and proves the caller received its answer, so it can
//! be sent from an end user's device without a flowgate API key. A token is one vote: the run
//! keeps one feedback, and a later post with the same token replaces the earlier one (a token
//! posted in a loop does not grow the store). Stored by the [`crate::storage::FeedbackStore`].

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::now_rfc3339;
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
    fn comments_and_user_ids_are_bounded() {
        let run = Uuid::now_v7();
        assert!(
            FeedbackRecord::new(run, Outcome::Positive, Some("x".repeat(10_000)), None).is_ok()
        );
        assert!(
            FeedbackRecord::new(run, Outcome::Positive, Some("x".repeat(10_001)), None).is_err()
        );
        assert!(FeedbackRecord::new(run, Outcome::Positive, None, Some("u".repeat(257))).is_err());
    }
}
