//! A data directory written by an earlier release opens and reads back: runs, their agents'
//! lists, feedback. `tests/fixtures/data-dir-3075f04.tar.gz` was written by the release at commit
//! 3075f04 (before the storage layer), with three requests and one feedback:
//!
//! * `legacy/mock-echo` "first answer" with `metadata: {"case": "one"}`, rated positive
//!   ("kept");
//! * `legacy/mock-echo` "Hello {{ name }}" with `input: {"name": "Ada"}`;
//! * `other/mock-echo` "third".

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

const FIRST: &str = "01a2426c-5679-70fb-8842-ed1d4eda392f";
const SECOND: &str = "01a2426c-5683-7522-8a2f-e934be4d2193";
const THIRD: &str = "01a2426c-568d-707e-b7ff-27c0915fcf7f";

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
    let config = base_config(&dir.path().join("data"), None);
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
}
