//! The shipped catalog and config: flowgate started with `config/flowgate.toml` as shipped (only
//! the listen address and data directory changed, and no provider key in its environment)
//! lists every catalog model complete and consistent, declares every provider the catalog
//! names (each disabled without its key), and resolves aliases and reasoning-effort suffixes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

const SHIPPED_CONFIG: &str = include_str!("../config/flowgate.toml");
const SHIPPED_CATALOG: &str = include_str!("../config/catalog.toml");

/// The environment variables the shipped config reads (`${VAR}`).
fn config_variables(text: &str) -> BTreeSet<String> {
    let mut vars = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        vars.insert(after[..end].to_string());
        rest = &after[end + 1..];
    }
    vars
}

/// flowgate running the shipped config, with every variable it reads removed from its
/// environment: no provider key, so only `mock` is enabled, whatever the test's environment.
fn start_shipped(dir: &Path) -> Flowgate {
    let listen = "listen = \"127.0.0.1:8080\"";
    let data_dir = "data_dir = \"data\"";
    assert!(
        SHIPPED_CONFIG.contains(listen) && SHIPPED_CONFIG.contains(data_dir),
        "the shipped config no longer has `{listen}` and `{data_dir}`"
    );
    let config = SHIPPED_CONFIG
        .replace(listen, "listen = \"127.0.0.1:0\"")
        .replace(
            data_dir,
            &format!("data_dir = \"{}\"", dir.join("data").display()),
        );
    let mut command = flowgate_command();
    command.env("FLOWGATE_LOG", "error");
    for var in config_variables(SHIPPED_CONFIG) {
        command.env_remove(var);
    }
    Flowgate::start_by(command, dir, &config)
}

fn is_date(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    parts.len() == 3
        && [4, 2, 2]
            .iter()
            .zip(&parts)
            .all(|(n, p)| p.len() == *n && p.bytes().all(|b| b.is_ascii_digit()))
        && (1..=12).contains(&parts[1].parse::<u32>().unwrap())
        && (1..=31).contains(&parts[2].parse::<u32>().unwrap())
}

fn price(value: &Value, key: &str, model: &str) -> f64 {
    let p = value[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{model}: `{key}` is not a number: {value}"));
    assert!(p.is_finite() && p >= 0.0, "{model}: `{key}` = {p}");
    p
}

/// The fallback lists of the shipped catalog, by model id (`GET /v1/models` does not show them).
fn shipped_fallbacks() -> BTreeMap<String, Vec<(String, String)>> {
    let catalog: toml::Value = toml::from_str(SHIPPED_CATALOG).expect("catalog is TOML");
    let models = catalog["models"].as_table().expect("[models]");
    models
        .iter()
        .map(|(id, model)| {
            let mut out = Vec::new();
            if let Some(fallback) = model.get("fallback").and_then(|f| f.as_table()) {
                for (class, ids) in fallback {
                    for target in ids.as_array().expect("fallback list") {
                        out.push((class.clone(), target.as_str().unwrap().to_string()));
                    }
                }
            }
            (id.clone(), out)
        })
        .collect()
}

#[tokio::test]
async fn the_shipped_catalog_is_complete_and_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_shipped(dir.path());

    let (status, ready) = get_json(&gw, "/readyz").await;
    assert_eq!(status, 200, "{ready}");
    let providers = ready["providers"].as_object().expect("providers");
    for (name, provider) in providers {
        if name == "mock" {
            assert_eq!(provider["enabled"], true);
        } else {
            assert_eq!(
                provider["enabled"], false,
                "{name} has no key here: {provider}"
            );
            assert!(
                provider["disabled_reason"].is_string(),
                "{name}: {provider}"
            );
        }
    }
    for (name, kind) in [
        ("openai", "openai"),
        ("azure", "azure"),
        ("anthropic", "anthropic"),
        ("gemini", "gemini"),
        ("vertex", "vertex"),
        ("bedrock", "bedrock"),
        ("groq", "openai"),
        ("mistral", "openai"),
        ("xai", "openai"),
        ("fireworks", "openai"),
        ("together", "openai"),
        ("deepseek", "openai"),
        ("openrouter", "openai"),
        ("ollama", "openai"),
    ] {
        assert_eq!(providers[name]["type"], kind, "{name}");
    }
    assert_eq!(
        providers["anthropic"]["disabled_reason"],
        "ANTHROPIC_API_KEY is not set"
    );

    let (status, list) = get_json(&gw, "/v1/models").await;
    assert_eq!(status, 200, "{list}");
    let models = list["data"].as_array().expect("data");
    assert!(models.len() >= 100, "only {} models", models.len());

    let mut ids = BTreeSet::new();
    let mut names = BTreeSet::new();
    let mut catalog_providers = BTreeSet::new();
    for model in models {
        let id = model["id"].as_str().expect("id");
        assert!(ids.insert(id.to_string()), "duplicate id {id}");
        assert!(names.insert(id.to_string()), "{id} is also an alias");
        for alias in model["aliases"].as_array().expect("aliases") {
            let alias = alias.as_str().unwrap();
            assert!(
                names.insert(alias.to_string()),
                "{id}: alias {alias} is taken"
            );
            assert!(
                !alias.contains('/'),
                "{id}: alias {alias} reads as <agent>/<model>"
            );
        }

        let display = model["display_name"].as_str().unwrap_or_default();
        assert!(!display.is_empty(), "{id}: display_name {display:?}");
        let date = model["release_date"].as_str().unwrap_or_default();
        assert!(is_date(date), "{id}: release_date {date:?}");
        assert!(model["created"].as_u64().unwrap() > 0, "{id}");
        let context = model["context_window"].as_u64().unwrap_or(0);
        // Embedding models read shorter texts (Gemini's take 2,048 tokens) and write nothing.
        let embedding = !model["embedding"].is_null();
        assert!(
            context >= if embedding { 512 } else { 4096 },
            "{id}: context_window {}",
            model["context_window"]
        );
        if embedding {
            assert!(
                model["embedding"]["dimensions"].as_u64().unwrap() > 0,
                "{id}"
            );
        }
        if let Some(out) = model["max_output_tokens"].as_u64() {
            assert!(out > 0 && out <= context, "{id}: max_output_tokens {out}");
        }
        let supports = model["supports"].as_object().expect("supports");
        for key in [
            "structured_output",
            "json_mode",
            "tools",
            "parallel_tools",
            "images",
            "pdf",
            "audio",
            "reasoning",
        ] {
            assert!(supports[key].is_boolean(), "{id}: supports.{key}");
        }
        if supports["parallel_tools"] == true {
            assert_eq!(
                supports["tools"], true,
                "{id}: parallel tools without tools"
            );
        }

        // The headline price is the first provider's, and no model is free there.
        let pricing = &model["pricing"];
        let input = price(pricing, "input_per_mtok", id);
        let output = price(pricing, "output_per_mtok", id);
        // Embeddings have no output; Google gives text-embedding-004 away on the Gemini API.
        match id {
            "mock-echo" | "text-embedding-004" => {}
            _ if embedding => assert!(input > 0.0 && output == 0.0, "{id}: pricing {pricing}"),
            _ => assert!(input > 0.0 && output > 0.0, "{id}: pricing {pricing}"),
        }

        let offers = model["providers"].as_array().expect("providers");
        assert!(!offers.is_empty(), "{id}: no provider");
        assert_eq!(model["owned_by"], offers[0]["provider"], "{id}");
        let mut any_enabled = false;
        for offer in offers {
            let provider = offer["provider"].as_str().unwrap();
            catalog_providers.insert(provider.to_string());
            let declared = providers
                .get(provider)
                .unwrap_or_else(|| panic!("{id}: provider `{provider}` is not in the config"));
            assert_eq!(offer["enabled"], declared["enabled"], "{id} on {provider}");
            any_enabled |= offer["enabled"] == true;
            assert!(
                !offer["model"].as_str().unwrap().is_empty(),
                "{id} on {provider}"
            );
            let prices = &offer["pricing"];
            let input = price(prices, "input_per_mtok", id);
            price(prices, "output_per_mtok", id);
            if !prices["cached_input_per_mtok"].is_null() {
                let cached = price(prices, "cached_input_per_mtok", id);
                assert!(
                    cached <= input,
                    "{id} on {provider}: cached {cached} > {input}"
                );
            }
            if !prices["cache_write_per_mtok"].is_null() {
                let write = price(prices, "cache_write_per_mtok", id);
                assert!(write >= input, "{id} on {provider}: cache write {write}");
            }
            let long = &prices["long_context"];
            if !long.is_null() {
                let threshold = long["threshold_tokens"].as_u64().unwrap();
                assert!(threshold > 0 && threshold < context, "{id} on {provider}");
                assert!(
                    price(long, "input_per_mtok", id) >= input,
                    "{id} on {provider}"
                );
            }
        }
        assert_eq!(model["available"], any_enabled, "{id}");
    }

    // Every provider the catalog names is declared; every declared provider is used.
    let declared: BTreeSet<String> = providers.keys().cloned().collect();
    assert_eq!(catalog_providers, declared);

    // The API lists the whole catalog, and every fallback names a listed model.
    let fallbacks = shipped_fallbacks();
    let in_file: BTreeSet<String> = fallbacks.keys().cloned().collect();
    assert_eq!(in_file, ids);
    for (id, targets) in &fallbacks {
        for (class, target) in targets {
            assert!(
                ids.contains(target),
                "{id}: fallback.{class} names `{target}`"
            );
            assert_ne!(target, id, "{id}: falls back to itself");
        }
    }

    let by_id = |id: &str| {
        models
            .iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("{id} is not listed"))
            .clone()
    };
    assert_eq!(by_id("mock-echo")["available"], true);
    let claude = by_id("claude-3-7-sonnet-latest");
    assert_eq!(
        claude["available"], false,
        "no Anthropic, AWS or GCP key here"
    );
    let claude_providers = strings_at(&claude["providers"], "provider");
    assert!(
        ["anthropic", "bedrock", "vertex"]
            .iter()
            .all(|p| claude_providers.contains(p)),
        "{claude_providers:?}"
    );
    let pro = by_id("gemini-2.5-pro");
    assert_eq!(pro["pricing"]["long_context"]["threshold_tokens"], 200000);
    assert_eq!(pro["supports"]["reasoning"], true);
    assert_eq!(by_id("o3-mini-latest")["supports"]["reasoning"], true);
}

#[tokio::test]
async fn aliases_and_reasoning_effort_suffixes_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_shipped(dir.path());

    for (name, id) in [
        ("gpt-4o-mini", "gpt-4o-mini-latest"),
        ("claude-3-7-sonnet-20250219", "claude-3-7-sonnet-latest"),
        ("gemini-2.5-pro-preview-05-06", "gemini-2.5-pro"),
        ("gemini-2.0-flash", "gemini-2.0-flash-001"),
        ("grok-3-mini-fast", "grok-3-mini-fast-beta"),
        ("deepseek-chat", "deepseek-v3-latest"),
    ] {
        let (status, model) = get_json(&gw, &format!("/v1/models/{name}")).await;
        assert_eq!(status, 200, "{name}: {model}");
        assert_eq!(model["id"], id, "{name}");
    }

    // Every alias of the list resolves to its model.
    let (_, list) = get_json(&gw, "/v1/models").await;
    for model in list["data"].as_array().unwrap() {
        for alias in model["aliases"].as_array().unwrap() {
            let alias = alias.as_str().unwrap();
            let (status, found) = get_json(&gw, &format!("/v1/models/{alias}")).await;
            assert_eq!(status, 200, "{alias}: {found}");
            assert_eq!(found["id"], model["id"], "{alias}");
        }
    }

    // An effort suffix on a reasoning model resolves: the request reaches routing and finds
    // no enabled provider (503), rather than an unknown model (404).
    for name in ["o3-mini-latest-high", "o3-mini-low", "gpt-5-mini-minimal"] {
        let (status, _, body) = ask(&gw, name, "hello").await;
        assert_eq!(status, 503, "{name}: {body}");
        assert_eq!(body["error"]["code"], "no_provider_available", "{name}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("OPENAI_API_KEY is not set"),
            "{name}: {body}"
        );
    }
    // Not on a model without reasoning.
    let (status, _, body) = ask(&gw, "gpt-4o-mini-latest-high", "hello").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found");

    // The built-in mock still answers with the shipped config.
    let (status, _, body) = ask(&gw, "mock-echo", "hello").await;
    assert_eq!(status, 200, "{body}");
}

#[test]
fn check_config_accepts_the_shipped_config() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut command = Command::new(env!("CARGO_BIN_EXE_flowgate"));
    command
        .args(["check-config", "--config"])
        .arg(format!("{root}/config/flowgate.toml"));
    for var in config_variables(SHIPPED_CONFIG) {
        command.env_remove(var);
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `<path>: ok (<n> providers, <m> models)`
    let counts: Vec<usize> = stdout
        .rsplit_once("ok (")
        .map(|(_, rest)| rest)
        .unwrap_or_default()
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(counts.len(), 2, "{stdout}");
    assert!(counts[0] >= 15, "{stdout}");
    assert!(counts[1] >= 100, "{stdout}");
}
