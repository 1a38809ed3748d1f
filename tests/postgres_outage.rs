//! flowgate keeps serving while PostgreSQL is away: runs finished meanwhile wait in the local
//! spool and reach the database when it answers again, once each — also across a `kill -9`,
//! and before a graceful stop exits. `/readyz` and `/metrics` tell the spool's depth.
//!
//! The real binary on the real test database, reached through a TCP relay the test cuts: the
//! database stays up for the other tests, only this flowgate loses it.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::postgres::*;
use common::*;
use serde_json::Value;

const MODEL: &str = "outage-agent/pg-model";

fn config(data: &std::path::Path, upstream: &MockUpstream, url: &str, schema: &str) -> String {
    base_config(data, Some(upstream))
        + &storage_config_at(url, schema)
        + &model_table(
            "pg-model",
            &[offer("upstream", "gpt-4o-mini", 1.0, 2.0)],
            "",
        )
}

/// Sends `n` requests; every one must be answered. The run ids answered.
async fn answered(gw: &Flowgate, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let (status, headers, body) = ask(gw, MODEL, &format!("outage {i}")).await;
        assert_eq!(status, 200, "{body}");
        ids.push(run_id(&headers));
    }
    ids
}

async fn readyz(gw: &Flowgate) -> (u16, Value) {
    let (status, body) = get_json(gw, "/readyz").await;
    (status.as_u16(), body)
}

/// Polls `/readyz` until the spool holds `runs` (10 s at most).
async fn spool_holds(gw: &Flowgate, runs: u64) -> Value {
    let (_, body) = poll_until(
        500,
        || readyz(gw),
        |(_, b)| b["storage"]["spool"]["runs"] == runs,
    )
    .await;
    assert_eq!(body["storage"]["spool"]["runs"], runs, "{body}");
    body
}

/// The ids of the runs in the schema, read from the database itself.
async fn stored_ids(schema: &str) -> Vec<String> {
    connect()
        .await
        .query(
            &format!("SELECT id::text FROM {schema}.runs ORDER BY id"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect()
}

/// Waits until the database holds exactly `expected` (10 s at most) and asserts it.
async fn database_holds(schema: &str, expected: &BTreeSet<String>) {
    let mut ids = stored_ids(schema).await;
    for _ in 0..200 {
        if ids.len() >= expected.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        ids = stored_ids(schema).await;
    }
    let distinct: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(distinct.len(), ids.len(), "a run stored twice");
    assert_eq!(&distinct, expected, "the runs stored are the runs answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_answered_while_postgres_is_away_reach_it_once_it_is_back() {
    let schema = schema_name("outage");
    let _cleanup = DropSchema(schema.clone());
    let relay = Relay::start();
    let setup = Setup::start(|data, upstream| config(data, upstream, &relay.url, &schema));
    let mut answered_ids: BTreeSet<String> = answered(&setup.gw, 5).await.into_iter().collect();
    // Written before the database goes (else the last of them would be spooled too).
    database_holds(&schema, &answered_ids).await;
    let (status, ready) = readyz(&setup.gw).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["storage"]["backend"], "postgres");
    assert_eq!(ready["storage"]["reachable"], true, "{ready}");

    // The database goes away: answers keep coming, their runs wait in the spool, and the
    // instance stays ready (its runs are kept).
    relay.cut();
    answered_ids.extend(answered(&setup.gw, 20).await);
    let ready = spool_holds(&setup.gw, 20).await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["storage"]["reachable"], false, "{ready}");
    assert_eq!(ready["storage"]["spool"]["full"], false, "{ready}");
    let metrics = metrics(&setup.gw).await;
    assert_sample(&metrics, "flowgate_spool_runs 20");
    assert_sample(&metrics, "flowgate_spool_spooled_runs_total 20");
    assert_sample(&metrics, "flowgate_storage_reachable 0");

    // Back: the spool is replayed, every run once.
    relay.restore();
    let ready = spool_holds(&setup.gw, 0).await;
    assert_eq!(ready["storage"]["reachable"], true, "{ready}");
    database_holds(&schema, &answered_ids).await;
    assert_sample(
        &metrics_of(&setup.gw).await,
        "flowgate_spool_replayed_runs_total 20",
    );

    // Away again, and the process is killed with runs in the spool: the next process on the
    // same data directory replays them.
    relay.cut();
    answered_ids.extend(answered(&setup.gw, 5).await);
    spool_holds(&setup.gw, 5).await;
    // On disk within the flush interval (50 ms in the tests).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let config_path = setup.gw.config_path.clone();
    setup.gw.kill9();
    relay.restore();
    let gw = Flowgate::start_with(&config_path);
    database_holds(&schema, &answered_ids).await;
    // An instance answers an agent through an outage once it has seen it (its schema ids are
    // numbered by the database): this one has not yet.
    answered_ids.extend(answered(&gw, 1).await);
    database_holds(&schema, &answered_ids).await;

    // Away, then back just as a graceful stop begins: the stop waits for the spool to reach
    // the database before the process exits.
    relay.cut();
    answered_ids.extend(answered(&gw, 5).await);
    spool_holds(&gw, 5).await;
    relay.restore();
    gw.stop();
    let ids = stored_ids(&schema).await;
    let distinct: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(distinct.len(), ids.len(), "a run stored twice");
    assert_eq!(distinct, answered_ids, "stored before the process exited");
}

async fn metrics_of(gw: &Flowgate) -> String {
    poll_until(
        100,
        || metrics(gw),
        |m| m.contains("flowgate_spool_replayed_runs_total 20"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_takes_the_instance_out_of_the_load_balancer() {
    let schema = schema_name("spoolfull");
    let _cleanup = DropSchema(schema.clone());
    let relay = Relay::start();
    let setup = Setup::start(|data, upstream| {
        config(data, upstream, &relay.url, &schema)
            .replace("pool_size = 4\n", "pool_size = 4\nspool_max_mb = 1\n")
    });
    answered(&setup.gw, 1).await;
    relay.cut();
    // Runs of ~300 KB each: a 1 MB spool holds three.
    let big = "x".repeat(300_000);
    let mut refused = false;
    for _ in 0..8 {
        let (status, _, body) = ask(&setup.gw, MODEL, &big).await;
        assert_eq!(status, 200, "answers still come: {body}");
        let (status, ready) = poll_until(
            100,
            || readyz(&setup.gw),
            |(_, b)| b["storage"]["spool"]["runs"].as_u64() > Some(0),
        )
        .await;
        if status == 503 {
            assert_eq!(ready["status"], "not_ready");
            assert_eq!(ready["storage"]["spool"]["full"], true, "{ready}");
            refused = true;
            break;
        }
    }
    assert!(refused, "the spool never reported full");
    let metrics = metrics(&setup.gw).await;
    assert!(
        !metrics.contains("flowgate_spool_refused_runs_total 0"),
        "refused runs are counted"
    );
    // Back: the spool empties and the instance is ready again.
    relay.restore();
    let (status, ready) = poll_until(500, || readyz(&setup.gw), |(s, _)| *s == 200).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["storage"]["spool"]["full"], false, "{ready}");
}
