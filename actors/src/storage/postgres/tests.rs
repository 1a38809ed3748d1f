//! The conformance suite on PostgreSQL, the same bodies as sled's, each test on a schema of
//! its own (created by the migrations, dropped afterwards) so that tests run in parallel.
//!
//! The server is `FLOWGATE_TEST_DATABASE_URL`, by default the one `tests/run.sh` makes sure
//! of (`postgres://postgres@127.0.0.1:5432/test`). An unreachable server fails the tests: a
//! backend that was never tested must not pass for one that was.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::storage::conformance;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub(crate) fn database_url() -> String {
    std::env::var("FLOWGATE_TEST_DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| DEFAULT_URL.to_string())
}

/// A schema of the test's own on the test server, dropped with it.
pub(crate) struct TestSchema {
    pub name: String,
    pub storage: PostgresStorage,
}

impl TestSchema {
    pub(crate) fn new() -> TestSchema {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "flowgate_test_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            fastrand::u32(..)
        );
        let storage = PostgresStorage::open(&settings(&name)).unwrap_or_else(|e| {
            panic!(
                "cannot open the PostgreSQL test database ({e}); set FLOWGATE_TEST_DATABASE_URL \
                 or run tests/run.sh, which starts a server"
            )
        });
        TestSchema { name, storage }
    }

    pub(crate) fn stores(&self) -> Storage {
        self.storage.storage()
    }
}

fn settings(schema: &str) -> PostgresSettings {
    PostgresSettings::new(&database_url(), 4, Some(schema.to_string())).unwrap()
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let (url, name) = (database_url(), self.name.clone());
        // On a thread of its own: the test's runtime may be the caller.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("cannot drop the test schema: {e}");
        }
    }
}

#[actix_rt::test]
async fn postgres_passes_the_run_store_conformance_suite() {
    let db = TestSchema::new();
    conformance::run_store(db.stores().runs.as_ref()).await;
}

#[actix_rt::test]
async fn postgres_passes_the_run_search_conformance_suite() {
    let db = TestSchema::new();
    let stores = db.stores();
    conformance::run_search(stores.runs.as_ref(), stores.feedback.as_ref()).await;
}

#[actix_rt::test]
async fn postgres_passes_the_feedback_store_conformance_suite() {
    let db = TestSchema::new();
    conformance::feedback_store(db.stores().feedback.as_ref()).await;
}

#[actix_rt::test]
async fn postgres_passes_the_share_store_conformance_suite() {
    let db = TestSchema::new();
    conformance::share_store(db.stores().shares.as_ref()).await;
}

#[actix_rt::test]
async fn postgres_passes_the_stats_store_conformance_suite() {
    let db = TestSchema::new();
    conformance::stats_store(db.stores().stats.as_ref()).await;
}

conformance::storage_tests!({
    let db = TestSchema::new();
    let stores = db.stores();
    (db, stores)
});

/// A batch that holds a run twice keeps the last (as two writes would), and a run reads
/// back with its raw request byte for byte (stored as `json`, not re-encoded).
#[actix_rt::test]
async fn a_batch_keeps_the_last_of_a_run_and_its_raw_request_as_written() {
    let db = TestSchema::new();
    let runs = db.stores().runs;
    let mut first = conformance::run("t", "a");
    let raw = r#"{ "model":"m",  "messages": [ {"role":"user","content":"hi"} ], "a": 1.50 }"#;
    first.request = Some(serde_json::value::RawValue::from_string(raw.into()).unwrap());
    let mut second = first.clone();
    second.cost_usd = 9.0;
    let other = conformance::run("t", "a");
    runs.insert_batch(&[Box::new(first.clone()), Box::new(other), Box::new(second)])
        .await
        .unwrap();
    let back = runs.get("t", first.id).await.unwrap().unwrap();
    assert_eq!(back.cost_usd, 9.0);
    assert_eq!(back.request.as_ref().map(|r| r.get()), Some(raw));
    assert_eq!(
        runs.list_agent("t", "a", None, 10)
            .await
            .unwrap()
            .items
            .len(),
        2
    );
}

/// Instances that start at once on one database apply each migration once, and a second
/// start finds nothing to do.
#[actix_rt::test]
async fn concurrent_starts_apply_each_migration_once() {
    let db = TestSchema::new();
    let name = db.name.clone();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let name = name.clone();
            std::thread::spawn(move || PostgresStorage::open(&settings(&name)).map(drop))
        })
        .collect();
    for handle in handles {
        handle.join().unwrap().unwrap();
    }
    let applied = {
        let settings = settings(&name);
        std::thread::spawn(move || migrate_blocking(&settings))
            .join()
            .unwrap()
            .unwrap()
    };
    assert!(applied.is_empty(), "applied again: {applied:?}");
    let versions: Vec<i32> = db
        .storage
        .db()
        .run(|client| async move {
            let rows = client
                .query(
                    "SELECT version FROM flowgate_migrations ORDER BY version",
                    &[],
                )
                .await
                .map_err(pg_error)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .await
        .unwrap();
    let known: Vec<i32> = MIGRATIONS.iter().map(|m| m.0).collect();
    assert_eq!(versions, known);
}

/// A server that does not answer is `Unavailable` (a 503 the client may retry), never a
/// hang.
#[actix_rt::test]
async fn an_unreachable_server_is_unavailable() {
    // Port 9 (discard) on loopback: nothing listens there in the test environment.
    let settings = PostgresSettings::new("postgres://postgres@127.0.0.1:9/test", 1, None).unwrap();
    match PostgresStorage::open(&settings) {
        Err(StorageError::Unavailable(_)) => {}
        Err(other) => panic!("not unavailable: {other}"),
        Ok(_) => panic!("opened a store on a closed port"),
    }
}

#[test]
fn settings_refuse_bad_urls_pool_sizes_and_schemas_without_echoing_the_url() {
    let bad = PostgresSettings::new("mysql://u:hunter2@h/db", 4, None).unwrap_err();
    assert!(!bad.contains("hunter2"), "{bad}");
    assert!(PostgresSettings::new("postgres://h/db", 0, None).is_err());
    assert!(PostgresSettings::new("postgres://h/db", 4, Some("Bad-Name".into())).is_err());
    assert!(PostgresSettings::new("postgres://h/db", 4, Some("flowgate".into())).is_ok());
    let debug = format!(
        "{:?}",
        PostgresSettings::new("postgres://u:hunter2@h/db", 4, None).unwrap()
    );
    assert!(!debug.contains("hunter2"), "{debug}");
}

/// Waits up to `within` for `done`, checking every 10 ms; how long it took.
async fn within(
    within: std::time::Duration,
    mut done: impl FnMut() -> bool,
) -> std::time::Duration {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "not within {within:?}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    started.elapsed()
}

/// Two instances on one database: each keeps a copy of the deployment it serves, and a
/// deploy (or a rollback) through one is what the other serves well before the copies'
/// safety refresh, because the commit notifies it. A key written through one wakes the
/// other's key registry.
#[actix_rt::test]
async fn a_deploy_through_one_instance_is_served_by_another_at_once() {
    use crate::agents::{AgentStore, VersionProperties};
    use crate::model_ref::Environment;
    use std::time::Duration;

    let db = TestSchema::new();
    let other = PostgresStorage::open(&settings(&db.name)).unwrap();
    let (here, there) = (db.stores(), other.storage());
    let listening = |s: &Storage| s.changes.is_live();
    within(Duration::from_secs(5), || {
        listening(&here) && listening(&there)
    })
    .await;
    let (a, b) = (AgentStore::open(&here), AgentStore::open(&there));
    let schema = a
        .schema_id("t", "agent", None, &serde_json::Value::Null)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for prompt in ["first", "second"] {
        let request: crate::wire::ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "m", "messages": [{"role": "system", "content": prompt}]
        }))
        .unwrap();
        let properties = VersionProperties::of("m", &request);
        ids.push(
            a.ensure_version("t", "agent", &properties, schema)
                .await
                .unwrap(),
        );
    }
    let prod = Environment::Production;
    let served = |store: &AgentStore| {
        let store = store.clone();
        async move {
            store
                .deployment("t", "agent", schema, prod)
                .await
                .unwrap()
                .map(|d| d.version_id.clone())
        }
    };
    // B keeps "nothing deployed" as its copy, then A deploys; B deploys another; A rolls
    // back. Each instance holds a fresh copy when the other deploys.
    assert_eq!(served(&b).await, None);
    let mut keys = there.changes.watch_keys();
    for (version, through) in [(&ids[0], &a), (&ids[1], &b), (&ids[0], &a)] {
        through
            .deploy("t", "agent", version, None, prod, "ops")
            .await
            .unwrap();
        // Well within a second, and so not the copies' 5 s safety refresh.
        let started = std::time::Instant::now();
        loop {
            let (on_a, on_b) = (served(&a).await, served(&b).await);
            if on_a.as_ref() == Some(version) && on_b.as_ref() == Some(version) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "after 1 s: A serves {on_a:?}, B serves {on_b:?}, deployed {version}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // A key written through A wakes B's watchers.
    let key: crate::keys::KeyRecord = serde_json::from_value(serde_json::json!({
        "id": "k1", "name": "n", "tenant": "t", "digest": "d", "prefix": "p",
        "created_ms": 1
    }))
    .unwrap();
    here.keys.put(&key).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), keys.changed())
        .await
        .expect("B heard of the key within a second")
        .unwrap();
}

/// The listening connection, lost (its backend terminated), is made again: the feed is not
/// live meanwhile (no copies used), the reconnection is counted, and what changed while it
/// was away is not served from a stale copy.
#[actix_rt::test]
async fn the_change_listener_reconnects_after_losing_its_connection() {
    use std::time::Duration;

    let db = TestSchema::new();
    let stores = db.stores();
    let changes = stores.changes.clone();
    within(Duration::from_secs(5), || changes.is_live()).await;
    let epoch = changes.deployments_epoch().unwrap();
    assert_eq!(changes.listener_reconnects.get(), 0);
    let name = format!("flowgate listener {}", listen::channel_of(Some(&db.name)));
    let terminated: i64 = db
        .storage
        .db()
        .run(move |client| async move {
            let rows = client
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE application_name = $1",
                    &[&name],
                )
                .await
                .map_err(pg_error)?;
            Ok(rows.len() as i64)
        })
        .await
        .unwrap();
    assert_eq!(terminated, 1, "one listener per store");
    within(Duration::from_secs(5), || {
        changes.listener_reconnects.get() == 1
    })
    .await;
    assert!(changes.is_live());
    assert_eq!(changes.listener_connected.get(), 1);
    assert!(
        changes.deployments_epoch().unwrap() > epoch,
        "copies taken before the loss are stale"
    );
}

/// A database of a release without the daily roll-up gets it from its stored runs when the
/// migration that adds it runs: per day, agent, source and model, as the recorder would have.
#[actix_rt::test]
async fn the_roll_up_migration_fills_it_from_the_stored_runs() {
    use crate::recorder::run::{RunSource, RunStatus};
    use crate::stats::{DAY_MS, HOUR_MS};

    let db = TestSchema::new();
    let stores = db.stores();
    let day0 = 20_000 * DAY_MS;
    let at = |ms: u64, agent: &str, model: Option<&str>| {
        let mut run = conformance::run_at("t", agent, ms, "x");
        run.model = model.map(str::to_string);
        run.requested_model = "asked".into();
        run
    };
    let mut runs = vec![
        at(day0, "a", Some("gpt")),
        at(day0 + HOUR_MS, "a", Some("gpt")),
        at(day0 + 2 * HOUR_MS, "a", Some("claude")),
        at(day0 + DAY_MS, "a", None),
        at(day0 + 3 * HOUR_MS, "b", Some("gpt")),
    ];
    runs[1].status = RunStatus::Error;
    runs[1].cost_usd = f64::NAN;
    runs[4].source = RunSource::Playground;
    let runs: Vec<Box<_>> = runs.into_iter().map(Box::new).collect();
    stores.runs.insert_batch(&runs).await.unwrap();
    stores
        .stats
        .add_batch(&conformance::increments(&runs))
        .await
        .unwrap();
    let read = || async {
        let mut rows: Vec<(u32, String, &str, String, u64, u64, f64)> = stores
            .stats
            .days(
                "t",
                &[RunSource::Api, RunSource::Playground],
                0..30_000,
                100,
            )
            .await
            .unwrap()
            .into_iter()
            .map(|(k, t)| {
                (
                    k.day,
                    k.agent,
                    k.source.as_str(),
                    k.model,
                    t.runs,
                    t.errors,
                    t.cost_usd,
                )
            })
            .collect();
        rows.sort_by(|a, b| (a.0, &a.1, &a.3).cmp(&(b.0, &b.1, &b.3)));
        rows
    };
    let recorded = read().await;
    assert_eq!(
        recorded,
        vec![
            (20_000, "a".into(), "api", "claude".into(), 1, 0, 0.25),
            (20_000, "a".into(), "api", "gpt".into(), 2, 1, 0.25),
            (20_000, "b".into(), "playground", "gpt".into(), 1, 0, 0.25),
            (20_001, "a".into(), "api", "asked".into(), 1, 0, 0.25),
        ]
    );
    // What an earlier release left: the runs and hours, no roll-up; then the migration.
    let sql = MIGRATIONS.iter().find(|m| m.1 == "stats_days").unwrap().2;
    db.storage
        .db()
        .run(move |client| async move {
            client
                .batch_execute("DROP TABLE stats_days")
                .await
                .map_err(pg_error)?;
            client.batch_execute(sql).await.map_err(pg_error)
        })
        .await
        .unwrap();
    assert_eq!(read().await, recorded);
}
