//! The run store on sled. Run ids are UUIDv7, so byte order is time order and an agent's runs
//! list newest first by a reverse range scan of its index.
//!
//! Writes go through the recorder actor only; reads may come from any thread (sled is
//! concurrent), off the request arbiters via `web::block`.

use std::path::Path;
use std::time::Duration;

use uuid::Uuid;

use super::run::{RunRecord, RunSummary};

/// Handle to the store. Cheap to clone.
#[derive(Clone)]
pub struct RunStore {
    db: sled::Db,
    runs: sled::Tree,
    by_agent: sled::Tree,
    flush_every: Duration,
}

/// One page of runs, newest first.
#[derive(Debug, serde::Serialize)]
pub struct RunPage {
    pub items: Vec<RunSummary>,
    /// Pass as `cursor` for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

fn agent_prefix(tenant: &str, agent: &str) -> Vec<u8> {
    // Room for the run id that usually follows.
    let mut key = Vec::with_capacity(tenant.len() + agent.len() + 2 + 16);
    key.extend_from_slice(tenant.as_bytes());
    key.push(0);
    key.extend_from_slice(agent.as_bytes());
    key.push(0);
    key
}

impl RunStore {
    /// Opens (or creates) the store in `dir`. sled flushes its log every `flush_every`, so runs
    /// survive `kill -9` once that much time has passed.
    pub fn open(dir: &Path, flush_every: Duration) -> sled::Result<RunStore> {
        let db = sled::Config::new()
            .path(dir)
            // Writes are the store's main work (a run per request); it trades disk space for
            // less compaction work on them.
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(Some(flush_every.as_millis().max(1) as u64))
            .open()?;
        let runs = db.open_tree("runs")?;
        let by_agent = db.open_tree("runs_by_agent")?;
        Ok(RunStore {
            db,
            runs,
            by_agent,
            flush_every,
        })
    }

    /// How often sled writes the log to disk: what a write waits at most to survive `kill -9`.
    pub fn flush_every(&self) -> Duration {
        self.flush_every
    }

    pub fn insert(&self, run: &RunRecord) -> Result<(), String> {
        self.insert_with(run, &mut Vec::new())
    }

    /// [`RunStore::insert`], serializing into `buf` (cleared first): a writer that keeps its
    /// buffer between runs allocates nothing for the text.
    pub fn insert_with(&self, run: &RunRecord, buf: &mut Vec<u8>) -> Result<(), String> {
        buf.clear();
        serde_json::to_writer(&mut *buf, run).map_err(|e| e.to_string())?;
        self.runs
            .insert(run.id.as_bytes(), buf.as_slice())
            .map_err(|e| e.to_string())?;
        let mut key = agent_prefix(&run.tenant, &run.agent);
        key.extend_from_slice(run.id.as_bytes());
        self.by_agent
            .insert(key, &[] as &[u8])
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The run, if it exists and belongs to `tenant`.
    pub fn get(&self, tenant: &str, id: Uuid) -> Result<Option<RunRecord>, String> {
        let Some(bytes) = self.runs.get(id.as_bytes()).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let run: RunRecord = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        Ok((run.tenant == tenant).then_some(run))
    }

    /// A page of an agent's runs, newest first, strictly older than `cursor`.
    pub fn list_agent(
        &self,
        tenant: &str,
        agent: &str,
        cursor: Option<Uuid>,
        limit: usize,
    ) -> Result<RunPage, String> {
        let prefix = agent_prefix(tenant, agent);
        let mut end = prefix.clone();
        match cursor {
            Some(cursor) => end.extend_from_slice(cursor.as_bytes()),
            None => end.extend_from_slice(&[0xff; 17]),
        }
        let mut items = Vec::with_capacity(limit);
        let mut more = false;
        for entry in self.by_agent.range(prefix.clone()..end).rev() {
            let (key, _) = entry.map_err(|e| e.to_string())?;
            if items.len() == limit {
                more = true;
                break;
            }
            let Ok(id) = Uuid::from_slice(&key[prefix.len()..]) else {
                continue;
            };
            if let Some(run) = self.get(tenant, id)? {
                items.push(RunSummary::from(&run));
            }
        }
        let next_cursor = if more {
            items.last().map(|r| r.id.to_string())
        } else {
            None
        };
        Ok(RunPage { items, next_cursor })
    }

    /// The sled database the runs live in, for other stores that share its file and flushes
    /// (the answer cache keeps its own trees in it).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    pub fn flush(&self) -> Result<(), String> {
        self.db.flush().map(|_| ()).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::completion::Usage;
    use crate::recorder::run::{CacheStatus, RunStatus};

    fn run(agent: &str) -> RunRecord {
        RunRecord {
            id: Uuid::now_v7(),
            tenant: "default".into(),
            agent: agent.into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            status: RunStatus::Success,
            requested_model: "m".into(),
            model: Some("m".into()),
            provider: None,
            provider_model: None,
            version_id: None,
            stream: false,
            request: None,
            input: None,
            output: None,
            attempts: vec![],
            usage: Usage::default(),
            cost_usd: 0.0,
            duration_seconds: 0.0,
            cache: CacheStatus::Bypass,
            error: None,
            metadata: None,
            feedback_token: String::new(),
            source_run_id: None,
            structured: None,
            schema_id: None,
            conversation_id: None,
            rendered_messages: None,
        }
    }

    #[test]
    fn lists_newest_first_with_cursor_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<Uuid> = {
            let store = RunStore::open(dir.path(), Duration::from_millis(100)).unwrap();
            let mut ids = vec![];
            for _ in 0..5 {
                let r = run("a");
                ids.push(r.id);
                store.insert(&r).unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            store.insert(&run("ab")).unwrap();
            store.flush().unwrap();
            ids
        };
        let store = RunStore::open(dir.path(), Duration::from_millis(100)).unwrap();
        let page = store.list_agent("default", "a", None, 3).unwrap();
        let got: Vec<Uuid> = page.items.iter().map(|r| r.id).collect();
        assert_eq!(got, vec![ids[4], ids[3], ids[2]]);
        let cursor = page.next_cursor.unwrap().parse().unwrap();
        let page = store.list_agent("default", "a", Some(cursor), 3).unwrap();
        let got: Vec<Uuid> = page.items.iter().map(|r| r.id).collect();
        assert_eq!(got, vec![ids[1], ids[0]]);
        assert!(page.next_cursor.is_none());
        // Tenants do not see each other's runs.
        assert!(store.get("other", ids[0]).unwrap().is_none());
        assert!(store.get("default", ids[0]).unwrap().is_some());
    }
}
