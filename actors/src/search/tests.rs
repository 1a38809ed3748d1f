use serde_json::json;

use super::*;
use crate::recorder::run::RunRecord;
use crate::storage::conformance;

fn body(value: serde_json::Value) -> SearchBody {
    serde_json::from_value(value).unwrap()
}

fn query(queries: serde_json::Value) -> Result<RunQuery, GatewayError> {
    RunQuery::parse(body(json!({ "field_queries": queries })), false)
}

fn one(field: &str, operator: &str, values: serde_json::Value) -> Filter {
    query(json!([{"field": field, "operator": operator, "values": values}]))
        .unwrap()
        .filters
        .remove(0)
}

fn matches(filter: &Filter, run: &RunRecord) -> bool {
    filter.matches(&RunFacts {
        run,
        feedback: None,
    })
}

#[test]
fn every_operator_is_spelled_as_documented() {
    let spelled: Vec<&str> = Operator::ALL.iter().map(|o| o.as_str()).collect();
    assert_eq!(
        spelled,
        [
            "is",
            "is not",
            "contains",
            "does not contain",
            "greater than",
            "greater than or equal to",
            "less than",
            "less than or equal to",
            "between",
            "before",
            "after",
            "is empty",
            "is not empty"
        ]
    );
    for op in Operator::ALL {
        assert_eq!(Operator::parse(op.as_str()), Some(op));
    }
    assert_eq!(Operator::parse("IS"), None);
    assert_eq!(Operator::parse("equals"), None);
}

#[test]
fn a_refused_operator_lists_the_ones_the_field_accepts() {
    let e =
        query(json!([{"field": "status", "operator": "greater than", "values": [1]}])).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("operator"));
    assert!(e.message.contains("`is`, `is not`"), "{}", e.message);
    let e = query(json!([{"field": "cost_usd", "operator": "like", "values": [1]}])).unwrap_err();
    assert!(
        e.message.contains("unknown operator `like`"),
        "{}",
        e.message
    );
    assert!(e.message.contains("`between`"), "{}", e.message);
    let e = query(json!([{"field": "colour", "operator": "is", "values": ["red"]}])).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("field"));
    assert!(e.message.contains("`metadata.<key>`"), "{}", e.message);
    // `agent` is a field only across agents.
    assert!(query(json!([{"field": "agent", "operator": "is", "values": ["a"]}])).is_err());
    assert!(RunQuery::parse(
        body(json!({"field_queries": [{"field": "agent", "operator": "is", "values": ["a"]}]})),
        true
    )
    .is_ok());
}

#[test]
fn values_of_the_wrong_type_or_count_are_refused() {
    for (q, param) in [
        (
            json!({"field": "status", "operator": "is", "values": ["done"]}),
            "values",
        ),
        (
            json!({"field": "cost_usd", "operator": "greater than", "values": ["a lot"]}),
            "values",
        ),
        (
            json!({"field": "cost_usd", "operator": "between", "values": [1]}),
            "values",
        ),
        (
            json!({"field": "created_at", "operator": "after", "values": ["yesterday"]}),
            "values",
        ),
        (
            json!({"field": "model", "operator": "is empty", "values": ["x"]}),
            "values",
        ),
        (
            json!({"field": "model", "operator": "is", "values": []}),
            "values",
        ),
        (
            json!({"field": "text", "operator": "contains", "values": [" "]}),
            "values",
        ),
        (
            json!({"field": "input.a[x]", "operator": "is", "values": [1]}),
            "field",
        ),
        (
            json!({"field": "input.", "operator": "is", "values": [1]}),
            "field",
        ),
        (
            json!({"field": "metadata.", "operator": "is", "values": [1]}),
            "field",
        ),
    ] {
        let e = query(json!([q])).unwrap_err();
        assert_eq!(e.status_code(), actix_web::http::StatusCode::BAD_REQUEST);
        assert_eq!(e.param.as_deref(), Some(param), "{q}: {}", e.message);
    }
}

#[test]
fn every_input_is_bounded() {
    let many: Vec<_> = (0..=MAX_FIELD_QUERIES)
        .map(|_| json!({"field": "status", "operator": "is", "values": ["error"]}))
        .collect();
    assert!(query(json!(many)).is_err());
    let values: Vec<_> = (0..=MAX_VALUES).map(|i| json!(format!("m{i}"))).collect();
    assert!(query(json!([{"field": "model", "operator": "is", "values": values}])).is_err());
    let long = "x".repeat(MAX_VALUE_BYTES + 1);
    assert!(query(json!([{"field": "text", "operator": "contains", "values": [long]}])).is_err());
    let deep = vec!["a"; MAX_PATH_STEPS + 1].join(".");
    assert!(
        query(json!([{"field": format!("input.{deep}"), "operator": "is", "values": [1]}]))
            .is_err()
    );
    for limit in [0, MAX_LIMIT + 1] {
        let e = RunQuery::parse(body(json!({ "limit": limit })), false).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("limit"));
    }
    let e = RunQuery::parse(body(json!({ "cursor": "not-a-cursor" })), false).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("cursor"));
    assert!(serde_json::from_value::<SearchBody>(json!({"filters": []})).is_err());
}

#[test]
fn fields_match_what_the_run_holds() {
    let mut run = conformance::run("t", "a");
    run.metadata = Some(
        json!({"customer": "acme", "tier": 3})
            .as_object()
            .unwrap()
            .clone(),
    );
    run.input = Some(json!({"order": {"items": [{"sku": "A-1"}]}}));
    run.output = Some(
        serde_json::from_value(json!({
            "choices": [{"index": 0, "message": {"content": "{\"city\": \"Paris\", \"score\": 7}"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1}
        }))
        .unwrap(),
    );
    let yes = |f: &str, op: &str, v: serde_json::Value| {
        assert!(matches(&one(f, op, v.clone()), &run), "{f} {op} {v}")
    };
    let no = |f: &str, op: &str, v: serde_json::Value| {
        assert!(!matches(&one(f, op, v.clone()), &run), "{f} {op} {v}")
    };
    yes("status", "is", json!(["error", "success"]));
    no("status", "is not", json!(["success"]));
    yes("model", "is", json!(["m"]));
    yes("model", "contains", json!(["M"]));
    yes("version", "is empty", json!([]));
    no("provider", "is empty", json!([]));
    yes("cost_usd", "between", json!([0.2, 0.3]));
    no("cost_usd", "greater than", json!([0.25]));
    yes("duration_seconds", "less than or equal to", json!([0.5]));
    yes("cache", "is", json!(["bypass"]));
    yes("source", "is", json!(["api"]));
    yes("feedback", "is", json!(["none"]));
    yes("metadata.customer", "is", json!(["acme"]));
    yes("metadata.tier", "greater than", json!([2]));
    no("metadata.missing", "is not empty", json!([]));
    yes("input.order.items[0].sku", "is", json!(["A-1"]));
    yes("output.city", "contains", json!(["par"]));
    yes("output.score", "between", json!([5, 10]));
    yes("text", "contains", json!(["PARIS"]));
    no("text", "does not contain", json!(["paris"]));
    let now = id_millis(&run.id) / 1000;
    yes("created_at", "after", json!([now - 60]));
    no("created_at", "before", json!(["2020-01-01T00:00:00Z"]));
    let positive = one("feedback", "is", json!(["positive"]));
    assert!(positive.matches(&RunFacts {
        run: &run,
        feedback: Some("positive")
    }));
}

#[test]
fn time_filters_bound_the_ids_a_store_scans() {
    let q = query(json!([
        {"field": "created_at", "operator": "after", "values": [1000]},
        {"field": "created_at", "operator": "before", "values": ["2001-09-09T01:46:40Z"]}
    ]))
    .unwrap();
    assert_eq!(q.time_range(), (1_000_000, 1_000_000_000_000));
    let id = uuid::Uuid::now_v7();
    let (low, high) = id_bounds(id_millis(&id));
    assert!(low <= id && id <= high);
}

#[test]
fn text_search_ignores_ascii_case() {
    let needle = TextNeedle::new("HeLLo");
    assert!(needle.is_in("say hello there"));
    assert!(needle.is_in_bytes(b"HELLO"));
    assert!(!needle.is_in("hell o"));
    assert!(!needle.is_in("hell"));
}

#[test]
fn an_environment_stands_for_the_version_deployed_there_when_the_run_ran() {
    use crate::agents::DeploymentRecord;
    use crate::model_ref::Environment;
    let deployed = |version: &str, env: Environment, at: &str, sequence: u64| DeploymentRecord {
        agent: "a".into(),
        schema_id: 1,
        environment: env,
        version_id: version.into(),
        previous_version_id: None,
        deployed_at: at.into(),
        deployed_by: "ops".into(),
        sequence,
    };
    let history = vec![
        deployed("v2", Environment::Production, "2026-01-02T00:00:00Z", 2),
        deployed("v1", Environment::Production, "2026-01-01T00:00:00Z", 1),
        deployed("v3", Environment::Staging, "2026-01-01T12:00:00Z", 3),
    ];
    let mut q =
        query(json!([{"field": "version", "operator": "is", "values": ["production"]}])).unwrap();
    assert!(q.names_environments());
    q.resolve_environments(&history);
    assert!(!q.names_environments());
    let filter = &q.filters[0];
    let (_, values) = filter.indexed().unwrap();
    assert_eq!(values, vec!["v1", "v2"]);
    let at = |version: &str, when: &str| {
        let ms = humantime::parse_rfc3339(when)
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let mut run = conformance::run("t", "a");
        run.id = id_bounds(ms).0;
        run.version_id = Some(version.into());
        matches(filter, &run)
    };
    // v1 while it was in production, not before nor after v2 replaced it.
    assert!(!at("v1", "2025-12-31T23:00:00Z"));
    assert!(at("v1", "2026-01-01T06:00:00Z"));
    assert!(!at("v1", "2026-01-03T00:00:00Z"));
    assert!(at("v2", "2026-01-03T00:00:00Z"));
    // Staging's version was never in production.
    assert!(!at("v3", "2026-01-01T13:00:00Z"));
    // `is not`: the complement.
    let mut not =
        query(json!([{"field": "version", "operator": "is not", "values": ["production"]}]))
            .unwrap();
    not.resolve_environments(&history);
    let mut run = conformance::run("t", "a");
    run.version_id = Some("v3".into());
    assert!(matches(&not.filters[0], &run));
}
