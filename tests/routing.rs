//! Routing that learns: with `[routing] strategy = "fastest"`, a model's providers are tried
//! lowest learned cost first (peak-EWMA latency, failures), and `/api/providers` shows what was
//! learned; the default keeps the catalog's order.

mod common;

use common::*;

fn config(dir: &std::path::Path, strategy: Option<&str>) -> String {
    let mut config = base_config(&dir.join("data"), None)
        + r#"
[providers.slow]
type = "mock"
latency_ms = 80

[providers.quick]
type = "mock"

[models."routed"]
providers = [{ provider = "slow", model = "mock-echo", input_per_mtok = 1.0, output_per_mtok = 1.0 },
             { provider = "quick", model = "mock-echo", input_per_mtok = 1.0, output_per_mtok = 1.0 }]
"#;
    if let Some(strategy) = strategy {
        config += &format!("\n[routing]\nstrategy = \"{strategy}\"\n");
    }
    config
}

async fn providers_in_turn(gw: &Flowgate, n: usize) -> Vec<String> {
    let mut answered = Vec::new();
    for i in 0..n {
        let (status, headers, body) = ask(gw, "routed", &format!("turn {i}")).await;
        assert_eq!(status, 200, "{body}");
        answered.push(headers["x-flowgate-provider"].to_str().unwrap().to_string());
        // The router learns in batches, a few milliseconds apart: wait until it has.
        let learned = poll_until(
            250,
            || async { samples(&get_json(gw, "/api/providers").await.1) },
            |&samples| samples > i as u64,
        )
        .await;
        assert_eq!(
            learned,
            i as u64 + 1,
            "the router did not learn of call {i}"
        );
    }
    answered
}

/// Calls routing has learned of, over every provider and model.
fn samples(providers: &serde_json::Value) -> u64 {
    providers["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["routing"].as_object())
        .flat_map(|models| models.values())
        .filter_map(|score| score["samples"].as_u64())
        .sum()
}

#[tokio::test]
async fn the_fastest_strategy_sends_requests_to_the_provider_that_answers_sooner() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Flowgate::start(dir.path(), &config(dir.path(), Some("fastest")));
    let answered = providers_in_turn(&gw, 5).await;
    assert_eq!(answered, vec!["slow", "quick", "quick", "quick", "quick"]);
    let (status, providers) = get_json(&gw, "/api/providers").await;
    assert_eq!(status, 200, "{providers}");
    let routing = |name: &str| {
        providers["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["routing"]["mock-echo"]
            .clone()
    };
    assert!(routing("slow")["latency_ms"].as_f64().unwrap() >= 80.0);
    assert_eq!(routing("quick")["samples"], 4);
    assert_eq!(routing("quick")["error_rate"], 0.0);
}

#[tokio::test]
async fn the_default_keeps_the_catalog_order() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Flowgate::start(dir.path(), &config(dir.path(), None));
    assert_eq!(providers_in_turn(&gw, 3).await, vec!["slow"; 3]);
    // A typo in the strategy is refused at start, with the key's path.
    let output = flowgate_command()
        .args(["check-config", "--config"])
        .arg({
            let path = dir.path().join("bad.toml");
            std::fs::write(&path, config(dir.path(), Some("fastets"))).unwrap();
            path
        })
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("routing.strategy"), "{stderr}");
}
