//! What the mock server keeps between requests: the requests it received (for tests to
//! inspect) and the attempt counters behind `fail_first` and friends. Every route reads it; it
//! reads none of them.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use actix_web::HttpRequest;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One request received by the mock (control endpoints under `/_mock/` excluded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// HTTP method, e.g. `"POST"`.
    pub method: String,
    /// Request path without the query string, e.g. `"/v1/chat/completions"`.
    pub path: String,
    /// Headers by lowercase name; repeated headers are joined with `", "`.
    pub headers: BTreeMap<String, String>,
    /// The body parsed as JSON, or `Null` when it is empty or not JSON.
    pub body: Value,
}

/// Server state shared by all workers.
#[derive(Debug)]
pub(crate) struct State {
    record: bool,
    requests: Mutex<Vec<RecordedRequest>>,
    received: AtomicUsize,
    attempts: Mutex<HashMap<String, u64>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    pub(crate) fn new(record: bool) -> Self {
        State {
            record,
            requests: Mutex::new(Vec::new()),
            received: AtomicUsize::new(0),
            attempts: Mutex::new(HashMap::new()),
        }
    }

    /// Counts an attempt for `model` (a full model string) and returns how many attempts
    /// came before it.
    pub(crate) fn next_attempt(&self, model: &str) -> u64 {
        let mut attempts = lock(&self.attempts);
        match attempts.get_mut(model) {
            Some(count) => {
                let before = *count;
                *count += 1;
                before
            }
            None => {
                attempts.insert(model.to_string(), 1);
                0
            }
        }
    }

    pub(crate) fn record(&self, req: &HttpRequest, body: &Value) {
        self.received.fetch_add(1, Ordering::Relaxed);
        if !self.record {
            return;
        }
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in req.headers() {
            let value = String::from_utf8_lossy(value.as_bytes());
            headers
                .entry(name.as_str().to_ascii_lowercase())
                .and_modify(|existing| {
                    existing.push_str(", ");
                    existing.push_str(&value);
                })
                .or_insert_with(|| value.into_owned());
        }
        let recorded = RecordedRequest {
            method: req.method().as_str().to_string(),
            path: req.path().to_string(),
            headers,
            body: body.clone(),
        };
        lock(&self.requests).push(recorded);
    }

    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.requests).clone()
    }

    /// Requests received since the last clear, recorded or not.
    pub(crate) fn received(&self) -> usize {
        self.received.load(Ordering::Relaxed)
    }

    pub(crate) fn clear(&self) -> usize {
        self.received.store(0, Ordering::Relaxed);
        std::mem::take(&mut *lock(&self.requests)).len()
    }
}
