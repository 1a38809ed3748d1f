//! A data directory written by an earlier release opens and reads back: runs, their agents'
//! lists, feedback. `tests/fixtures/data-dir-3075f04.tar.gz` was written by the release at commit
//! 3075f04 (before the storage layer), with three requests and one feedback:
//!
//! * `legacy/mock-echo` "first answer" with `metadata: {"case": "one"}`, rated positive
//!   ("kept");
//! * `legacy/mock-echo` "Hello {{ name }}" with `input: {"name": "Ada"}`;
//! * `other/mock-echo` "third".
//!
//! Besides the runs, the agents' records of those requests read back: two schemas and two
//! versions of `legacy` with their statistics, and the conversation link of the first answer.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

const FIRST: &str = "01a2426c-5679-70fb-8842-ed1d4eda392f";
const SECOND: &str = "01a2426c-5683-7522-8a2f-e934be4d2193";
const THIRD: &str = "01a2426c-568d-707e-b7ff-27c0915fcf7f";
const ADMIN_KEY: &str = "admin-key-of-the-test";
/// The versions of `legacy`: the first request's, and the templated one's.
const FIRST_VERSION: &str = "b21aaf592e259ae68df606a3877e5cda";
const TEMPLATED_VERSION: &str = "e76d682b16e00ceef005a5822856120f";

#[tokio::test]
async fn a_data_dir_of_the_previous_release_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/data-dir-3075f04.tar.gz"
    );
    let status = Command::new("tar")
        .args(["xzf", fixture, "-C"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let config = base_config(&dir.path().join("data"), None)
        + &format!("\n[admin]\napi_keys = [{{ key = \"{ADMIN_KEY}\", label = \"ops\" }}]\n");
    let gw = Flowgate::start(dir.path(), &config);

    let run = get_run(&gw, FIRST).await;
    assert_eq!(run["agent"], "legacy");
    assert_eq!(run["status"], "success");
    assert_eq!(run["metadata"]["case"], "one");
    assert_eq!(
        run["output"]["choices"][0]["message"]["content"],
        "first answer"
    );
    let run = get_run(&gw, SECOND).await;
    assert_eq!(run["input"]["name"], "Ada");
    assert_eq!(run["rendered_messages"][0]["content"], "Hello Ada");

    let (status, page) = get_json(&gw, "/api/agents/legacy/runs").await;
    assert_eq!(status, 200, "{page}");
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![SECOND, FIRST]);
    let (_, other) = get_json(&gw, "/api/agents/other/runs").await;
    assert_eq!(other["items"][0]["id"], THIRD);

    let (status, feedback) = get_json(&gw, &format!("/api/runs/{FIRST}/feedback")).await;
    assert_eq!(status, 200, "{feedback}");
    assert_eq!(feedback["items"][0]["comment"], "kept");
    assert_eq!(feedback["items"][0]["outcome"], "positive");

    // New runs join the old ones.
    let (status, _, _) = ask(&gw, "legacy/mock-echo", "a new one").await;
    assert_eq!(status, 200);
    let (_, page) = get_json(&gw, "/api/agents/legacy/runs").await;
    let items: &Vec<Value> = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[2]["id"], FIRST);

    // The agents' records: versions with their statistics, schemas.
    let (status, versions) = get_json(&gw, "/api/agents/legacy/versions").await;
    assert_eq!(status, 200, "{versions}");
    let versions = versions["items"].as_array().unwrap();
    // The previous release's two, and the new run's.
    assert_eq!(versions.len(), 3, "{versions:?}");
    let version = |id: &str| versions.iter().find(|v| v["id"] == id).unwrap();
    let first = version(FIRST_VERSION);
    assert_eq!(first["schema_id"], 1);
    assert_eq!(first["properties"]["model"], "mock-echo");
    assert_eq!(
        first["properties"]["messages"][0]["content"],
        "first answer"
    );
    assert_eq!(first["stats"]["run_count"], 1);
    assert_eq!(first["stats"]["error_count"], 0);
    let templated = version(TEMPLATED_VERSION);
    assert_eq!(templated["schema_id"], 2);
    assert_eq!(
        templated["properties"]["messages"][0]["content"],
        "Hello {{ name }}"
    );
    assert_eq!(templated["stats"]["run_count"], 1);
    let (status, schemas) = get_json(&gw, "/api/agents/legacy/schemas").await;
    assert_eq!(status, 200, "{schemas}");
    let schemas = schemas["items"].as_array().unwrap();
    assert_eq!(schemas.len(), 2);
    assert_eq!(schemas[0]["id"], 1);
    assert_eq!(schemas[0]["input_schema"], Value::Null);
    assert_eq!(
        schemas[1]["input_schema"]["properties"]["name"]["type"],
        "string"
    );

    // The first answer's conversation continues.
    let (status, headers, _) = chat(
        &gw,
        serde_json::json!({"model": "legacy/mock-echo", "messages": [
            {"role": "user", "content": "first answer"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": "and then?"}
        ]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(run_of(&gw, &headers).await["conversation_id"], FIRST);

    // A version of the previous release deploys, and its deployment serves.
    let response = client()
        .post(format!(
            "{}/api/agents/legacy/versions/{FIRST_VERSION}/deploy",
            gw.url
        ))
        .bearer_auth(ADMIN_KEY)
        .json(&serde_json::json!({"environment": "production"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, _, answer) = chat(
        &gw,
        serde_json::json!({"model": "legacy/#1/production", "messages": []}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"][0]["message"]["content"], "first answer");
}
