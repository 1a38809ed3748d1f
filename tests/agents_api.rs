//! Agents through the real binary: templates rendered with `input` (and their 400s), versions
//! with usage, deployments that change what `agent/#1/production` callers get without a
//! restart, rollback, concurrent deploys, persistence across restarts, conversations and
//! feedback.

mod common;

use common::*;
use serde_json::{json, Value};

const ADMIN_KEY: &str = "admin-secret-key";

fn config(data_dir: &std::path::Path, upstream: &MockUpstream) -> String {
    let supports = "supports = { structured_output = true, json_mode = true, tools = true }";
    let model =
        |id: &str, model: &str| model_table(id, &[offer("upstream", model, 1.0, 2.0)], supports);
    base_config(data_dir, Some(upstream))
        + &format!("\n[admin]\napi_keys = [{{ key = \"{ADMIN_KEY}\", label = \"release-bot\" }}]\n")
        + &model("up-a", "gpt-4o-mini")
        + &model("up-b", "gpt-4o")
}

fn setup() -> Setup {
    Setup::start(config)
}

async fn post(gw: &Flowgate, path: &str, body: Value, bearer: Option<&str>) -> (u16, Value) {
    let mut request = client().post(format!("{}{path}", gw.url)).json(&body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    send(request).await
}

/// Sends `request`; returns the status and the body, JSON if it is.
async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn deploy(gw: &Flowgate, agent: &str, version: &str, env: &str) -> (u16, Value) {
    post(
        gw,
        &format!("/api/agents/{agent}/versions/{version}/deploy"),
        json!({ "environment": env }),
        Some(ADMIN_KEY),
    )
    .await
}

/// A templated run of `agent`; returns its version id.
async fn create_version(
    gw: &Flowgate,
    agent: &str,
    model: &str,
    template: &str,
    temperature: f64,
) -> String {
    let (status, _, body) = chat(
        gw,
        json!({
            "model": format!("{agent}/{model}"),
            "messages": [{"role": "system", "content": template}, {"role": "user", "content": "Go."}],
            "input": {"email": "first@example.com"},
            "temperature": temperature,
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["version_id"].as_str().unwrap().to_string()
}

/// The last chat request the upstream received.
fn last_upstream_body(upstream: &MockUpstream) -> Value {
    let requests = upstream.requests();
    let last = requests
        .iter()
        .rev()
        .find(|r| r.path.ends_with("/chat/completions"))
        .expect("an upstream chat request");
    last.body.clone()
}

async fn call_production(gw: &Flowgate, agent: &str, extra: Value) -> (reqwest::StatusCode, Value) {
    let mut body = json!({
        "model": format!("{agent}/#1/production"),
        "messages": [],
        "input": {"email": "caller@example.com"},
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let (status, _, body) = chat(gw, body).await;
    (status, body)
}

#[tokio::test]
async fn templates_render_input_and_share_a_version() {
    let s = setup();
    let greet = |input: Value| {
        json!({
            "model": "greeter/up-a",
            "messages": [
                {"role": "system", "content": "Greet {{ person.name | title }}{% if vip %}, a VIP{% endif %}.\n{% for t in tags %}- {{ t }}\n{% endfor %}"},
                {"role": "user", "content": "Hello"}
            ],
            "input": input,
        })
    };
    let (status, _, body) = chat(
        &s.gw,
        greet(json!({"person": {"name": "ada lovelace"}, "vip": true, "tags": ["math", "poetry"]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sent = last_upstream_body(&s.upstream);
    assert_eq!(
        sent["messages"][0]["content"],
        "Greet Ada Lovelace, a VIP.\n- math\n- poetry\n"
    );
    assert!(sent.get("input").is_none(), "{sent}");
    let version = body["version_id"].as_str().unwrap().to_string();

    // Another input, same templates: same version and schema.
    let (status, headers, again) = chat(
        &s.gw,
        greet(json!({"person": {"name": "alan"}, "vip": false, "tags": []})),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["version_id"], version.as_str());
    let run = run_of(&s.gw, &headers).await;
    assert_eq!(run["input"]["person"]["name"], "alan");
    assert_eq!(run["schema_id"], 1);
    assert_eq!(run["rendered_messages"][0]["content"], "Greet Alan.\n");
    // The request is kept as sent: templates and input.
    assert!(run["request"]["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("{{ person.name"));

    let (status, versions) = get_json(&s.gw, "/api/agents/greeter/versions").await;
    assert_eq!(status, 200, "{versions}");
    let items = versions["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{versions}");
    assert_eq!(items[0]["id"], version.as_str());
    assert_eq!(items[0]["properties"]["model"], "up-a");
    assert_eq!(items[0]["stats"]["run_count"], 2);
    assert!(items[0]["stats"]["cost_usd"].as_f64().unwrap() > 0.0);
    assert!(items[0]["average_duration_seconds"].as_f64().is_some());
    assert!(
        items[0]["stats"]["first_used_at"].as_str().unwrap()
            <= items[0]["stats"]["last_used_at"].as_str().unwrap()
    );
    let (_, schemas) = get_json(&s.gw, "/api/agents/greeter/schemas").await;
    assert_eq!(
        schemas["items"][0]["input_schema"]["properties"]["vip"]["type"],
        "boolean"
    );
}

#[tokio::test]
async fn each_template_error_is_a_400_that_helps() {
    let s = setup();
    let cases = [
        (
            json!({"messages": [{"role": "system", "content": "ok"}, {"role": "user", "content": "Line one\n  {% if x %}never closed"}], "input": {"x": 1}}),
            "template_syntax_error",
            "messages[1].content",
        ),
        (
            json!({"messages": [{"role": "user", "content": "Hi {{ name }}, you are {{ age }}"}], "input": {"name": "A"}}),
            "template_variable_missing",
            "messages[0].content",
        ),
        (
            json!({"messages": [{"role": "user", "content": "no placeholders here"}], "input": {"name": "A"}}),
            "input_without_template",
            "input",
        ),
        (
            json!({"messages": [{"role": "user", "content": "Hi {{ name }}"}]}),
            "template_without_input",
            "messages[0].content",
        ),
        (
            json!({"messages": [{"role": "user", "content": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}{{ x }}"}], "input": {"x": 1}}),
            "template_too_complex",
            "messages[0].content",
        ),
        (
            json!({"messages": [{"role": "user", "content": "{% for a in range(10000) %}{{ x }}{% endfor %}"}], "input": {"x": "y".repeat(10_000)}}),
            "template_too_large",
            "messages[0].content",
        ),
    ];
    for (mut body, code, param) in cases {
        body["model"] = json!("errors/up-a");
        let (status, headers, error) = chat(&s.gw, body.clone()).await;
        assert_eq!(status, 400, "{code}: {error}");
        assert_eq!(error["error"]["code"], code, "{error}");
        assert_eq!(error["error"]["param"], param, "{error}");
        assert_eq!(error["error"]["type"], "invalid_request_error");
        // Every failure is still a run.
        assert!(headers.contains_key("x-flowgate-run-id"));
    }
    // The syntax error says where; the missing variable is named.
    let (_, _, error) = chat(
        &s.gw,
        json!({"model": "errors/up-a", "messages": [{"role": "user", "content": "Line one\n  {% if x %}never closed"}], "input": {"x": 1}}),
    )
    .await;
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("line 2"), "{message}");
    assert_eq!(error["error"]["details"]["template"]["line"], 2);
    assert!(error["error"]["details"]["template"]["column"].is_number());
    let (_, _, error) = chat(
        &s.gw,
        json!({"model": "errors/up-a", "messages": [{"role": "user", "content": "Hi {{ name }}, you are {{ age }}"}], "input": {"name": "A"}}),
    )
    .await;
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`age`"),
        "{error}"
    );
    assert_eq!(
        error["error"]["details"]["template"]["variables"],
        json!(["age"])
    );
    // Nothing reached the provider.
    assert_eq!(s.upstream.count(), 0);
}

#[tokio::test]
async fn a_deployment_changes_what_the_upstream_receives_without_a_restart_and_rolls_back() {
    let s = setup();
    let v1 = create_version(
        &s.gw,
        "classifier",
        "up-a",
        "Classify {{ email }} (v1)",
        0.1,
    )
    .await;
    let v2 = create_version(&s.gw, "classifier", "up-b", "Label {{ email }} (v2)", 0.7).await;
    assert_ne!(v1, v2);

    // Nothing deployed yet.
    let (status, body) = call_production(&s.gw, "classifier", json!({})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "deployment_not_found");

    // Writes need an admin key; the tenant key is not one.
    let path = format!("/api/agents/classifier/versions/{v1}/deploy");
    let (status, body) = post(&s.gw, &path, json!({"environment": "production"}), None).await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = post(
        &s.gw,
        &path,
        json!({"environment": "production"}),
        Some("any"),
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = post(&s.gw, &path, json!({"environment": "qa"}), Some(ADMIN_KEY)).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = deploy(
        &s.gw,
        "classifier",
        "0123456789abcdef0123456789abcdef",
        "production",
    )
    .await;
    assert_eq!(status, 404, "{body}");

    let (status, record) = deploy(&s.gw, "classifier", &v1, "prod").await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["environment"], "production");
    assert_eq!(record["deployed_by"], "release-bot");
    assert!(!record.to_string().contains(ADMIN_KEY));

    let (status, body) = call_production(&s.gw, "classifier", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version_id"], v1.as_str());
    assert_eq!(body["model"], "up-a");
    let sent = last_upstream_body(&s.upstream);
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(
        sent["messages"][0]["content"],
        "Classify caller@example.com (v1)"
    );
    assert_eq!(sent["messages"][1]["content"], "Go.");
    assert_eq!(sent["temperature"], 0.1);

    // Deploy v2: the next call gets its model, template and temperature.
    let (status, _) = deploy(&s.gw, "classifier", &v2, "production").await;
    assert_eq!(status, 200);
    let (status, body) = call_production(&s.gw, "classifier", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version_id"], v2.as_str());
    let sent = last_upstream_body(&s.upstream);
    assert_eq!(sent["model"], "gpt-4o");
    assert_eq!(
        sent["messages"][0]["content"],
        "Label caller@example.com (v2)"
    );
    assert_eq!(sent["temperature"], 0.7);

    // Request parameters override; trailing messages follow the deployed ones.
    let (status, body) = call_production(
        &s.gw,
        "classifier",
        json!({"temperature": 0.3, "messages": [{"role": "user", "content": "And be quick."}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sent = last_upstream_body(&s.upstream);
    assert_eq!(sent["temperature"], 0.3);
    assert_eq!(
        strings_at(&sent["messages"], "content"),
        ["Label caller@example.com (v2)", "Go.", "And be quick."]
    );

    // Rollback: deploy the older version again.
    let (status, _) = deploy(&s.gw, "classifier", &v1, "production").await;
    assert_eq!(status, 200);
    let (_, body) = call_production(&s.gw, "classifier", json!({})).await;
    assert_eq!(body["version_id"], v1.as_str());
    assert_eq!(last_upstream_body(&s.upstream)["model"], "gpt-4o-mini");

    let (status, deployments) = get_json(&s.gw, "/api/agents/classifier/deployments").await;
    assert_eq!(status, 200, "{deployments}");
    assert_eq!(
        strings_at(&deployments["history"], "version_id"),
        [v1.as_str(), v2.as_str(), v1.as_str()]
    );
    assert_eq!(
        deployments["history"][0]["previous_version_id"],
        v2.as_str()
    );
    assert_eq!(deployments["deployments"][0]["version_id"], v1.as_str());
    assert!(deployments["history"][0]["deployed_at"].is_string());

    // Errors that explain: another environment, a wrong input, repeated messages, another output.
    let (_, _, body) = chat(
        &s.gw,
        json!({"model": "classifier/#1/staging", "messages": [], "input": {"email": "x"}}),
    )
    .await;
    assert_eq!(body["error"]["code"], "deployment_not_found", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("classifier/#1/production"),
        "{body}"
    );
    let (status, body) =
        call_production(&s.gw, "classifier", json!({"input": {"mail": "x"}})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "schema_mismatch", "{body}");
    let (status, body) = call_production(
        &s.gw,
        "classifier",
        json!({"messages": [{"role": "system", "content": "Classify {{ email }} (v1)"}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "duplicate_messages", "{body}");
    let (status, body) = call_production(
        &s.gw,
        "classifier",
        json!({"response_format": {"type": "json_object"}}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "response_format", "{body}");

    // The extra body fields name a deployment too.
    let (status, _, body) = chat(
        &s.gw,
        json!({"model": "classifier/anything", "environment": "production", "schema_id": 1,
               "messages": [], "input": {"email": "x@y.z"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version_id"], v1.as_str());
}

#[tokio::test]
async fn concurrent_deploys_leave_one_consistent_winner() {
    let s = setup();
    let v1 = create_version(&s.gw, "racer", "up-a", "Race {{ email }} one", 0.0).await;
    let v2 = create_version(&s.gw, "racer", "up-b", "Race {{ email }} two", 0.0).await;
    let deploys = (0..16).map(|i| {
        let version = if i % 2 == 0 { v1.clone() } else { v2.clone() };
        let gw = &s.gw;
        async move { deploy(gw, "racer", &version, "production").await.0 }
    });
    let statuses = futures::future::join_all(deploys).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    let (_, deployments) = get_json(&s.gw, "/api/agents/racer/deployments").await;
    let history = deployments["history"].as_array().unwrap();
    assert_eq!(history.len(), 16);
    let current = &deployments["deployments"][0];
    assert_eq!(&history[0], current);
    for pair in history.windows(2) {
        assert_eq!(pair[0]["previous_version_id"], pair[1]["version_id"]);
    }
    // Callers get the winner.
    let (status, body) = call_production(&s.gw, "racer", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version_id"], current["version_id"]);
}

#[tokio::test]
async fn versions_deployments_and_statistics_persist_across_restart() {
    let s = Setup::start(config);
    let v1 = create_version(&s.gw, "keeper", "up-a", "Keep {{ email }}", 0.2).await;
    let (status, _) = deploy(&s.gw, "keeper", &v1, "staging").await;
    assert_eq!(status, 200);
    let (_, before) = get_json(&s.gw, "/api/agents/keeper/versions").await;
    assert_eq!(before["items"][0]["stats"]["run_count"], 1);
    let config_path = s.gw.config_path.clone();
    s.gw.stop();

    let gw = Flowgate::start_with(&config_path);
    let (status, _, body) = chat(
        &gw,
        json!({"model": "keeper/#1/staging", "messages": [], "input": {"email": "back@example.com"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version_id"], v1.as_str());
    assert_eq!(
        last_upstream_body(&s.upstream)["messages"][0]["content"],
        "Keep back@example.com"
    );
    let (_, after) = get_json(&gw, "/api/agents/keeper/versions").await;
    assert_eq!(after["items"][0]["stats"]["run_count"], 2, "{after}");
    assert_eq!(
        after["items"][0]["stats"]["first_used_at"],
        before["items"][0]["stats"]["first_used_at"]
    );
    let (_, deployments) = get_json(&gw, "/api/agents/keeper/deployments").await;
    assert_eq!(deployments["history"].as_array().unwrap().len(), 1);
    assert_eq!(deployments["deployments"][0]["environment"], "staging");
    let (_, schemas) = get_json(&gw, "/api/agents/keeper/schemas").await;
    assert_eq!(schemas["items"].as_array().unwrap().len(), 1);
}

/// A client that sends its next turn the moment it has an answer (a tool loop with local tools,
/// an Instructor retry) reaches the gateway before the recorder has stored that answer (it
/// writes in batches, milliseconds later): every turn still joins the first one's
/// conversation, streamed or not.
#[tokio::test]
async fn turns_sent_the_moment_their_answer_arrives_stay_in_one_conversation() {
    let s = setup();
    let mut messages = vec![
        json!({"role": "system", "content": "Be brief."}),
        json!({"role": "user", "content": "Turn 0"}),
    ];
    let mut runs = Vec::new();
    for turn in 0..8 {
        let body = json!({"model": "looper/mock-echo", "messages": messages});
        let (headers, answer) = if turn % 2 == 1 {
            let (headers, chunks) = stream_ok(&s.gw, body).await;
            (headers, streamed_content(&chunks))
        } else {
            let (status, headers, answer) = chat(&s.gw, body).await;
            assert_eq!(status, 200, "{answer}");
            let text = answer["choices"][0]["message"]["content"].as_str();
            (headers, text.unwrap().to_string())
        };
        runs.push(run_id(&headers));
        messages.push(json!({"role": "assistant", "content": answer}));
        messages.push(json!({"role": "user", "content": format!("Turn {}", turn + 1)}));
    }
    for id in &runs {
        let run = get_run(&s.gw, id).await;
        assert_eq!(run["conversation_id"], runs[0].as_str(), "{run}");
    }
}

#[tokio::test]
async fn follow_up_runs_join_the_conversation_and_feedback_is_stored_on_the_run() {
    let s = setup();
    let first = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]);
    let (status, headers, answer) = chat(
        &s.gw,
        json!({"model": "talker/mock-echo", "messages": first}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let first_id = run_id(&headers);
    let reply = answer["choices"][0]["message"].clone();

    // Make sure the recorder has linked the answer.
    let run = get_run(&s.gw, &first_id).await;
    assert_eq!(run["conversation_id"], first_id.as_str());

    let mut follow_up = first.as_array().unwrap().clone();
    follow_up.push(reply);
    follow_up.push(json!({"role": "user", "content": "And again"}));
    let (status, headers, _) = chat(
        &s.gw,
        json!({"model": "talker/mock-echo", "messages": follow_up}),
    )
    .await;
    assert_eq!(status, 200);
    let run = run_of(&s.gw, &headers).await;
    assert_eq!(run["conversation_id"], first_id.as_str(), "{run}");

    // An unrelated run starts its own conversation.
    let (_, headers, _) = ask(&s.gw, "talker/mock-echo", "other").await;
    let run = run_of(&s.gw, &headers).await;
    assert_eq!(run["conversation_id"], run_id(&headers).as_str());

    // Feedback with the token of the answer, no API key needed.
    let feedback = |body: Value| post(&s.gw, "/v1/feedback", body, None);
    let token = answer["choices"][0]["feedback_token"]
        .as_str()
        .unwrap()
        .to_string();
    let positive = json!({"feedback_token": token, "outcome": "positive", "comment": "great", "user_id": "u1"});
    let (status, body) = feedback(positive).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["run_id"], first_id.as_str());
    let (status, _) =
        feedback(json!({"feedback_token": token, "outcome": "negative", "user_id": "u1"})).await;
    assert_eq!(status, 200);
    // A forged secret, a malformed token, a bad outcome.
    let forged = format!("{first_id}.0000000000000000ffffffffffffffff");
    let (status, body) = feedback(json!({"feedback_token": forged, "outcome": "positive"})).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) =
        feedback(json!({"feedback_token": "garbage", "outcome": "positive"})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "feedback_token");
    let (status, body) = feedback(json!({"feedback_token": token, "outcome": "meh"})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "outcome");

    let (status, feedback) = get_json(&s.gw, &format!("/api/runs/{first_id}/feedback")).await;
    assert_eq!(status, 200, "{feedback}");
    let items = feedback["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{feedback}");
    assert_eq!(items[0]["outcome"], "negative");
    assert_eq!(items[0]["user_id"], "u1");
}

#[tokio::test]
async fn tenants_see_only_their_own_agents_and_admins_name_the_tenant() {
    let s = Setup::start(|data, upstream| {
        config(data, upstream).replacen(
            "[admin]",
            "[auth]\napi_keys = [\"default-key\"]\n[auth.tenants.acme]\napi_keys = [\"acme-key\"]\n\n[admin]",
            1,
        )
    });
    let gw = &s.gw;
    // A request with `key`, for `tenant` if one is named.
    let request = |method: reqwest::Method, path: &str, key: &str, tenant: Option<&str>| {
        let request = client()
            .request(method, format!("{}{path}", gw.url))
            .bearer_auth(key);
        match tenant {
            Some(tenant) => request.header("x-flowgate-tenant", tenant),
            None => request,
        }
    };
    let get = |path: &str, key: &str, tenant: Option<&str>| {
        send(request(reqwest::Method::GET, path, key, tenant))
    };
    let call = json!({"model": "shared/up-a", "messages": [{"role": "system", "content": "Acme {{ email }}"}],
                      "input": {"email": "a@acme"}});
    let (status, _, body) = chat_as(gw, "acme-key", call).await;
    assert_eq!(status, 200, "{body}");
    let version = body["version_id"].as_str().unwrap().to_string();
    let deploy_path = format!("/api/agents/shared/versions/{version}/deploy");
    let deploy_as = |key: &str, tenant: Option<&str>, environment: &str| {
        let request = request(reqwest::Method::POST, &deploy_path, key, tenant);
        send(request.json(&json!({ "environment": environment })))
    };

    // The version is acme's: not found for the default tenant, deployed for acme when named.
    let (status, _) = deploy_as(ADMIN_KEY, None, "production").await;
    assert_eq!(status, 404);
    let (status, record) = deploy_as(ADMIN_KEY, Some("acme"), "production").await;
    assert_eq!(status, 200, "{record}");

    let deployed =
        json!({"model": "shared/#1/production", "messages": [], "input": {"email": "b@acme"}});
    let (status, _, body) = chat_as(gw, "acme-key", deployed.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        last_upstream_body(&s.upstream)["messages"][0]["content"],
        "Acme b@acme"
    );
    let (status, _, body) = chat_as(gw, "default-key", deployed).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "deployment_not_found");

    let (_, mine) = get("/api/agents/shared/deployments", "acme-key", None).await;
    assert_eq!(mine["deployments"].as_array().unwrap().len(), 1);
    let (_, theirs) = get("/api/agents/shared/deployments", "default-key", None).await;
    assert!(theirs["deployments"].as_array().unwrap().is_empty());
    let (_, admin) = get("/api/agents/shared/versions", ADMIN_KEY, Some("acme")).await;
    assert_eq!(admin["items"].as_array().unwrap().len(), 1);
    // A client key is not an admin key.
    let (status, _) = deploy_as("acme-key", Some("acme"), "dev").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn versions_list_newest_first_a_page_at_a_time() {
    let s = Setup::start(config);
    let mut made = Vec::new();
    for (i, template) in ["One {{ email }}", "Two {{ email }}", "Three {{ email }}"]
        .iter()
        .enumerate()
    {
        made.push(create_version(&s.gw, "pager", "up-a", template, 0.1 * i as f64).await);
        // Versions are ordered by their creation time, in milliseconds.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let (status, first) = get_json(&s.gw, "/api/agents/pager/versions?limit=2").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        strings_at(&first["items"], "id"),
        [made[2].as_str(), made[1].as_str()]
    );
    assert_eq!(first["items"][0]["stats"]["run_count"], 1, "{first}");
    let cursor = first["next_cursor"].as_str().unwrap();
    let (status, second) = get_json(
        &s.gw,
        &format!(
            "/api/agents/pager/versions?limit=2&cursor={}",
            cursor.replace('|', "%7C").replace(':', "%3A")
        ),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(strings_at(&second["items"], "id"), [made[0].as_str()]);
    assert!(second["next_cursor"].is_null(), "{second}");
    let (_, all) = get_json(&s.gw, "/api/agents/pager/versions").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 3);
    let (status, bad) = get_json(&s.gw, "/api/agents/pager/versions?cursor=nonsense").await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["error"]["param"], "cursor");
}
