//! Test harness: starts the real `flowgate` binary on port 0 with a config of the test's own,
//! next to the project's mock upstream; builds config snippets; sends requests; and reads what
//! comes back (streams, tool calls, costs, runs) the same way for every test.
#![allow(dead_code)]

use std::fmt;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use flowgate_mock_upstream::MockUpstream;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};

pub mod postgres;
pub mod ui;

// ---- the gateway ----

/// A running flowgate process.
pub struct Flowgate {
    child: Option<Child>,
    pub url: String,
    pub config_path: PathBuf,
}

/// The config every test starts from: loopback port 0, the given data dir, quick flushes, the
/// built-in mock provider, and an `openai`-type provider `upstream` pointed at the mock upstream.
pub fn base_config(data_dir: &Path, upstream: Option<&MockUpstream>) -> String {
    let mut config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "{}"

[recorder]
flush_interval_ms = 50

[providers.mock]
type = "mock"
"#,
        data_dir.display()
    );
    if let Some(upstream) = upstream {
        config.push_str(&format!(
            r#"
[providers.upstream]
type = "openai"
base_url = "{}"
api_key = "upstream-secret"

[providers.backup]
type = "openai"
base_url = "{}"
api_key = "backup-secret"
"#,
            upstream.base_url(),
            upstream.base_url()
        ));
    }
    config
}

/// The flowgate binary, logging warnings only; the caller adds its arguments.
pub fn flowgate_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flowgate"));
    command.env("FLOWGATE_LOG", "warn");
    command
}

impl Flowgate {
    /// Writes `config` to `dir/flowgate.toml` and starts the binary with it.
    pub fn start(dir: &Path, config: &str) -> Flowgate {
        Self::start_by(flowgate_command(), dir, config)
    }

    /// Writes `config` to `dir/flowgate.toml` and serves it with `command` (the binary, with the
    /// environment the test wants).
    pub fn start_by(command: Command, dir: &Path, config: &str) -> Flowgate {
        let config_path = dir.join("flowgate.toml");
        std::fs::write(&config_path, config).expect("write config");
        Self::spawn(command, &config_path)
    }

    pub fn start_with(config_path: &Path) -> Flowgate {
        Self::spawn(flowgate_command(), config_path)
    }

    /// Runs `command serve --config <config_path>` and waits for its `listening on` line.
    pub fn spawn(command: Command, config_path: &Path) -> Flowgate {
        Self::spawn_logging_to(command, config_path, Stdio::inherit())
    }

    /// [`Flowgate::spawn`], with the gateway's log going to `stderr`.
    pub fn spawn_logging_to(mut command: Command, config_path: &Path, stderr: Stdio) -> Flowgate {
        let mut child = command
            .args(["serve", "--config"])
            .arg(config_path)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start flowgate");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).expect("read listening line");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("flowgate did not start: {line:?}"))
            .to_string();
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in reader.lines() {});
        Flowgate {
            child: Some(child),
            url,
            config_path: config_path.to_path_buf(),
        }
    }

    /// The process id of the gateway.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `host:port` of the gateway.
    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    /// A field of `/proc/<pid>/status` in kB (`VmRSS`, `VmHWM`).
    pub fn status_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the gateway process is gone");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/<pid>/status"))
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn chat_url(&self) -> String {
        format!("{}/v1/chat/completions", self.url)
    }

    /// SIGTERM, then wait: a graceful stop that drains the recorder.
    pub fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// SIGKILL: no chance to flush.
    pub fn kill9(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Flowgate {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A gateway next to a mock upstream, with its config and data in a temporary directory.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub upstream: MockUpstream,
    pub gw: Flowgate,
}

impl Setup {
    /// Starts the mock upstream, then flowgate with `config(data_dir, &upstream)`.
    pub fn start(config: impl FnOnce(&Path, &MockUpstream) -> String) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let upstream = MockUpstream::start();
        let config = config(&dir.path().join("data"), &upstream);
        let gw = Flowgate::start(dir.path(), &config);
        Setup { dir, upstream, gw }
    }

    /// [`Setup::start`] with the base config (its `upstream` and `backup` providers pointed at
    /// the mock upstream) followed by `models(&upstream)`.
    pub fn with_models(models: impl FnOnce(&MockUpstream) -> String) -> Setup {
        Self::start(|data, upstream| base_config(data, Some(upstream)) + &models(upstream))
    }
}

// ---- config snippets ----

/// An offer's prices per million tokens; the cache prices are left out of the config when
/// `None`.
#[derive(Clone, Copy, Debug)]
pub struct Prices {
    pub input: f64,
    pub output: f64,
    pub cached_input: Option<f64>,
    pub cache_write: Option<f64>,
}

/// Claude Sonnet's list prices, cache reads and writes included.
pub const CLAUDE_PRICES: Prices = Prices::new(3.0, 15.0).cached(0.30).cache_write(3.75);

impl Prices {
    pub const fn new(input: f64, output: f64) -> Prices {
        Prices {
            input,
            output,
            cached_input: None,
            cache_write: None,
        }
    }

    pub const fn cached(self, cached_input: f64) -> Prices {
        Prices {
            cached_input: Some(cached_input),
            ..self
        }
    }

    pub const fn cache_write(self, cache_write: f64) -> Prices {
        Prices {
            cache_write: Some(cache_write),
            ..self
        }
    }

    /// The cost of `usage` at these prices: the cached prompt tokens it reports at the cached
    /// price, `cache_written` more prompt tokens at the cache-write price, the rest of the prompt
    /// at the input price.
    pub fn cost(&self, usage: &Value, cache_written: f64) -> f64 {
        let prompt = usage["prompt_tokens"].as_f64().unwrap();
        let cached = usage["prompt_tokens_details"]["cached_tokens"]
            .as_f64()
            .unwrap_or(0.0);
        let completion = usage["completion_tokens"].as_f64().unwrap();
        ((prompt - cached - cache_written) * self.input
            + cached * self.cached_input.unwrap_or(self.input)
            + cache_written * self.cache_write.unwrap_or(self.input)
            + completion * self.output)
            / 1e6
    }
}

/// The price fields of an offer: `input_per_mtok = …, output_per_mtok = …[, …]`.
impl fmt::Display for Prices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "input_per_mtok = {:?}, output_per_mtok = {:?}",
            self.input, self.output
        )?;
        if let Some(cached) = self.cached_input {
            write!(f, ", cached_input_per_mtok = {cached:?}")?;
        }
        if let Some(write) = self.cache_write {
            write!(f, ", cache_write_per_mtok = {write:?}")?;
        }
        Ok(())
    }
}

/// One offer of a model: `{ provider = "…", model = "…", input_per_mtok = …, output_per_mtok = … }`.
pub fn offer(provider: &str, model: &str, input_per_mtok: f64, output_per_mtok: f64) -> String {
    priced_offer(
        provider,
        model,
        Prices::new(input_per_mtok, output_per_mtok),
    )
}

/// [`offer`] at `prices`, cache prices included.
pub fn priced_offer(provider: &str, model: &str, prices: Prices) -> String {
    format!(r#"{{ provider = "{provider}", model = "{model}", {prices} }}"#)
}

/// `gpt-4o-mini` on the base config's `backup` provider.
pub fn backup_offer(input_per_mtok: f64, output_per_mtok: f64) -> String {
    offer("backup", "gpt-4o-mini", input_per_mtok, output_per_mtok)
}

/// A `[models."<id>"]` table served by `offers` in order, then `rest` (`supports = …`,
/// `fallback = …`, or nothing).
pub fn model_table(id: &str, offers: &[String], rest: &str) -> String {
    format!(
        "\n[models.\"{id}\"]\nproviders = [{}]\n{rest}\n",
        offers.join(", ")
    )
}

/// `[models]` tables of Claude `model` on `provider` at [`CLAUDE_PRICES`], one per `(id,
/// directives, falls_back)`: the model with the mock's `directives` appended, then, if
/// `falls_back`, `backup`'s `gpt-4o-mini`. Each table ends with `supports`.
pub fn claude_models(
    provider: &str,
    model: &str,
    cases: &[(&str, &str, bool)],
    supports: &str,
) -> String {
    let backup = backup_offer(0.15, 0.60);
    cases
        .iter()
        .map(|(id, directives, falls_back)| {
            let claude = priced_offer(provider, &format!("{model}{directives}"), CLAUDE_PRICES);
            let offers = if *falls_back {
                vec![claude, backup.clone()]
            } else {
                vec![claude]
            };
            model_table(id, &offers, supports)
        })
        .collect()
}

/// The throwaway RSA key of the test service account.
pub const TEST_KEY: &str = include_str!("../fixtures/gcp-test-key.pem");

/// The test service account's JSON key, its token URI on the mock upstream.
pub fn service_account(upstream: &MockUpstream) -> String {
    serde_json::to_string_pretty(&json!({
        "type": "service_account",
        "project_id": "flowgate-test",
        "private_key_id": "0123456789abcdef",
        "private_key": TEST_KEY,
        "client_email": "flowgate@flowgate-test.iam.gserviceaccount.com",
        "client_id": "1",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": format!("{}/token", upstream.url()),
    }))
    .unwrap()
}

// ---- requests ----

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// POSTs a chat request with the given API key; returns status, headers and the body text.
async fn post_chat(gw: &Flowgate, key: &str, body: &Value) -> (StatusCode, HeaderMap, String) {
    let response = client()
        .post(gw.chat_url())
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("request");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    (status, headers, text)
}

/// POSTs a chat request with the given API key; returns status, headers and JSON body.
pub async fn chat_as(gw: &Flowgate, key: &str, body: Value) -> (StatusCode, HeaderMap, Value) {
    let (status, headers, text) = post_chat(gw, key, &body).await;
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, headers, json)
}

/// POSTs a chat request; returns status, headers and JSON body.
pub async fn chat(gw: &Flowgate, body: Value) -> (StatusCode, HeaderMap, Value) {
    chat_as(gw, "any", body).await
}

/// Sends `body` `n` times at once; returns the answers in order.
pub async fn chat_at_once(
    gw: &Flowgate,
    body: &Value,
    n: usize,
) -> Vec<(StatusCode, HeaderMap, Value)> {
    futures::future::join_all((0..n).map(|_| chat(gw, body.clone()))).await
}

/// Asks `model` the one user message `text`.
pub async fn ask(gw: &Flowgate, model: &str, text: &str) -> (StatusCode, HeaderMap, Value) {
    chat(gw, json!({"model": model, "messages": user(text)})).await
}

/// POSTs a streaming chat request; returns status, headers and the `data:` payloads.
pub async fn chat_stream(gw: &Flowgate, body: Value) -> (StatusCode, HeaderMap, Vec<String>) {
    let (status, headers, text) = post_chat(gw, "any", &body).await;
    (status, headers, sse_events(&text))
}

/// The `data:` payloads of an event stream.
pub fn sse_events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

pub async fn get_json(gw: &Flowgate, path: &str) -> (StatusCode, Value) {
    let response = client()
        .get(format!("{}{path}", gw.url))
        .bearer_auth("any")
        .send()
        .await
        .expect("request");
    let status = response.status();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub fn user(text: &str) -> Value {
    json!([{ "role": "user", "content": text }])
}

/// The string `key` of each item of the array `list`.
pub fn strings_at<'a>(list: &'a Value, key: &str) -> Vec<&'a str> {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .map(|item| {
            item[key]
                .as_str()
                .unwrap_or_else(|| panic!("no string `{key}`: {item}"))
        })
        .collect()
}

/// Asks `model` `text`; asserts a 200 and returns the provider that answered.
pub async fn answering_provider(gw: &Flowgate, model: &str, text: &str) -> String {
    let (status, headers, body) = ask(gw, model, text).await;
    assert_eq!(status, 200, "{model}: {body}");
    headers["x-flowgate-provider"].to_str().unwrap().to_string()
}

/// The text of `/metrics`.
pub async fn metrics(gw: &Flowgate) -> String {
    let (status, metrics) = get_json(gw, "/metrics").await;
    assert_eq!(status, 200, "{metrics}");
    metrics.as_str().unwrap().to_string()
}

/// Asserts the `/metrics` text has the line `sample` (a series and its value).
pub fn assert_sample(metrics: &str, sample: &str) {
    assert!(
        metrics.lines().any(|line| line == sample),
        "no `{sample}` in:\n{metrics}"
    );
}

// ---- runs ----

/// The run id an answer names in `x-flowgate-run-id`.
pub fn run_id(headers: &HeaderMap) -> String {
    headers["x-flowgate-run-id"].to_str().unwrap().to_string()
}

/// The recorded run `run_id`.
pub async fn get_run(gw: &Flowgate, run_id: &str) -> Value {
    let (status, run) = get_json(gw, &format!("/api/runs/{run_id}")).await;
    assert_eq!(status, 200, "run {run_id}: {run}");
    run
}

/// The recorded run of the answer with these headers.
pub async fn run_of(gw: &Flowgate, headers: &HeaderMap) -> Value {
    get_run(gw, &run_id(headers)).await
}

/// Calls `probe` until `done` holds for its answer or it has been called `tries` times, 20 ms
/// apart; returns its last answer.
pub async fn poll_until<T, F: Future<Output = T>>(
    tries: usize,
    mut probe: impl FnMut() -> F,
    done: impl Fn(&T) -> bool,
) -> T {
    let mut answer = probe().await;
    for _ in 1..tries {
        if done(&answer) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        answer = probe().await;
    }
    answer
}

// ---- request pieces ----

/// `get_weather(city)`, a function tool.
pub fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
}

/// `User(name)`, a function tool.
pub fn user_name_tool() -> Value {
    json!({"type": "function", "function": {"name": "User", "parameters": {"type": "object",
        "properties": {"name": {"type": "string"}}, "required": ["name"]}}})
}

/// A strict object schema of a user's `name` and `age`.
pub fn user_schema() -> Value {
    json!({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"], "additionalProperties": false})
}

// ---- answers ----

/// The first tool call of an answer that finished with `tool_calls`: asserts it is a function
/// call; returns it and its arguments, parsed.
pub fn answered_tool_call(body: &Value) -> (Value, Value) {
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{body}");
    let call = choice["message"]["tool_calls"][0].clone();
    assert_eq!(call["type"], "function", "{call}");
    let arguments = call["function"]["arguments"]
        .as_str()
        .unwrap_or_else(|| panic!("no arguments: {call}"));
    let args = serde_json::from_str(arguments).unwrap_or_else(|e| panic!("{e}: {arguments}"));
    (call, args)
}

/// Asks `model`, a Claude model, for the weather in Paris with `get_weather` forced; asserts
/// the answer is that tool call alone (no content): a `toolu_` id and a `city`. Returns the
/// answer.
pub async fn assert_claude_forced_tool_call(gw: &Flowgate, model: &str) -> Value {
    let (status, _, body) = chat(
        gw,
        json!({
            "model": model,
            "messages": user("Weather in Paris?"),
            "tools": [weather_tool()],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "max_completion_tokens": 200
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], Value::Null);
    let (call, args) = answered_tool_call(&body);
    assert!(call["id"].as_str().unwrap().starts_with("toolu_"), "{call}");
    assert_eq!(call["function"]["name"], "get_weather");
    assert!(args["city"].is_string(), "{args}");
    body
}

// ---- streams ----

/// The chunks of a stream that ended well: asserts its last event is `[DONE]` and parses the
/// others.
pub fn stream_chunks(events: &[String]) -> Vec<Value> {
    let (done, chunks) = events
        .split_last()
        .unwrap_or_else(|| panic!("an empty stream"));
    assert_eq!(done, "[DONE]", "{events:?}");
    chunks.iter().map(|e| parse_chunk(e)).collect()
}

/// A stream that broke off: asserts it has no `[DONE]`; returns the chunks before its last
/// event and that last event (the error).
pub fn errored_stream(events: &[String]) -> (Vec<Value>, Value) {
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    let (error, chunks) = events
        .split_last()
        .unwrap_or_else(|| panic!("an empty stream"));
    (
        chunks.iter().map(|e| parse_chunk(e)).collect(),
        parse_chunk(error),
    )
}

fn parse_chunk(event: &str) -> Value {
    serde_json::from_str(event).unwrap_or_else(|e| panic!("{e}: {event}"))
}

/// The content deltas of a stream's chunks, in order.
pub fn content_deltas(chunks: &[Value]) -> Vec<String> {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .map(String::from)
        .collect()
}

/// The content a stream carried, its deltas concatenated.
pub fn streamed_content(chunks: &[Value]) -> String {
    content_deltas(chunks).concat()
}

/// The finish reasons a stream's chunks carried, in order.
pub fn finish_reasons(chunks: &[Value]) -> Vec<String> {
    chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .map(|f| {
            f.as_str()
                .unwrap_or_else(|| panic!("finish_reason {f}"))
                .to_string()
        })
        .collect()
}

/// One tool call of a stream, reassembled from its deltas.
#[derive(Debug)]
pub struct StreamedCall {
    /// The id its first delta (the one with the name) carried; empty if none.
    pub id: String,
    pub name: String,
    /// The argument fragments of all its deltas, concatenated.
    pub arguments: String,
    /// How many deltas it arrived in.
    pub deltas: usize,
}

/// The tool calls of a stream's chunks. A call starts with a delta that names it, at the next
/// index; further deltas at its index add argument fragments.
pub fn streamed_tool_calls(chunks: &[Value]) -> Vec<StreamedCall> {
    let mut calls: Vec<StreamedCall> = Vec::new();
    for chunk in chunks {
        for delta in chunk["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let index = delta["index"]
                .as_u64()
                .unwrap_or_else(|| panic!("a tool call delta without an index: {delta}"))
                as usize;
            if let Some(name) = delta["function"]["name"].as_str() {
                assert_eq!(index, calls.len(), "a new call at the next index: {delta}");
                calls.push(StreamedCall {
                    id: delta["id"].as_str().unwrap_or_default().to_string(),
                    name: name.to_string(),
                    arguments: String::new(),
                    deltas: 0,
                });
            }
            let call = calls
                .get_mut(index)
                .unwrap_or_else(|| panic!("a delta of a call never named: {delta}"));
            call.arguments
                .push_str(delta["function"]["arguments"].as_str().unwrap_or(""));
            call.deltas += 1;
        }
    }
    calls
}

/// The one tool call of a stream's chunks.
pub fn streamed_tool_call(chunks: &[Value]) -> StreamedCall {
    let mut calls = streamed_tool_calls(chunks);
    assert_eq!(calls.len(), 1, "one tool call: {calls:?}");
    calls.remove(0)
}

/// Streams `request` (`stream: true` added); asserts a 200 stream that ended well; returns the
/// headers and the chunks.
pub async fn stream_ok(gw: &Flowgate, mut request: Value) -> (HeaderMap, Vec<Value>) {
    request["stream"] = json!(true);
    let (status, headers, events) = chat_stream(gw, request).await;
    assert_eq!(status, 200, "{events:?}");
    (headers, stream_chunks(&events))
}

/// Streams the user message `text` to `model`; asserts `provider` answered with a 200 stream;
/// returns the headers and the events.
async fn stream_ask(
    gw: &Flowgate,
    model: &str,
    text: &str,
    provider: &str,
) -> (HeaderMap, Vec<String>) {
    let (status, headers, events) = chat_stream(
        gw,
        json!({"model": model, "stream": true, "messages": user(text)}),
    )
    .await;
    assert_eq!(status, 200, "{model}: {events:?}");
    assert_eq!(headers["x-flowgate-provider"], provider, "{model}");
    (headers, events)
}

/// Streams the user message `text` to `model`; asserts `provider` answered it with a stream
/// that ended well; returns the events.
pub async fn stream_from(gw: &Flowgate, model: &str, text: &str, provider: &str) -> Vec<String> {
    let (_, events) = stream_ask(gw, model, text, provider).await;
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{model}: {events:?}"
    );
    events
}

/// Streams the user message `text` to `model`; asserts `provider` answered it with a stream
/// that broke off (see [`errored_stream`]). Returns the headers, the chunks before the error and
/// the error event.
pub async fn stream_cut(
    gw: &Flowgate,
    model: &str,
    text: &str,
    provider: &str,
) -> (HeaderMap, Vec<Value>, Value) {
    let (headers, events) = stream_ask(gw, model, text, provider).await;
    let (chunks, error) = errored_stream(&events);
    (headers, chunks, error)
}

/// Streams `request` (a model and any further fields) with `text` as its user message; asserts
/// `provider` answered with an event stream that carries the text back in several chunks, then
/// `[DONE]`. Returns the headers and the chunks.
pub async fn stream_text(
    gw: &Flowgate,
    mut request: Value,
    text: &str,
    provider: &str,
) -> (HeaderMap, Vec<Value>) {
    request["messages"] = user(text);
    let (headers, chunks) = stream_ok(gw, request).await;
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["x-flowgate-provider"], provider);
    assert!(chunks.len() > 3, "content arrives in several chunks");
    assert_eq!(streamed_content(&chunks), text);
    (headers, chunks)
}

/// Streams to `model`, a Claude model, a request that requires one of two tools; asserts both
/// calls came back as OpenAI deltas, id and name first, then argument fragments: `get_weather`
/// (a `toolu_` id, a `city`), then `now` (`{}`), and that the stream finished with `tool_calls`.
pub async fn assert_claude_streams_two_tool_calls(gw: &Flowgate, model: &str) {
    let (_, chunks) = stream_ok(
        gw,
        json!({"model": model, "messages": user("Weather in Paris and Rome?"),
            "tools": [weather_tool(), {"type": "function", "function": {"name": "now"}}],
            "tool_choice": "required"}),
    )
    .await;
    assert_eq!(finish_reasons(&chunks).last().unwrap(), "tool_calls");
    let calls = streamed_tool_calls(&chunks);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[0].id.starts_with("toolu_"), "{calls:?}");
    assert_eq!(calls[0].name, "get_weather");
    assert!(serde_json::from_str::<Value>(&calls[0].arguments).unwrap()["city"].is_string());
    assert_eq!(calls[1].name, "now");
    assert_eq!(calls[1].arguments, "{}");
}

// ---- costs ----

/// `(prompt * input + completion * output) / 1e6` from a usage object.
pub fn expected_cost(usage: &Value, input_per_mtok: f64, output_per_mtok: f64) -> f64 {
    (usage["prompt_tokens"].as_f64().unwrap() * input_per_mtok
        + usage["completion_tokens"].as_f64().unwrap() * output_per_mtok)
        / 1e6
}

/// Asserts the `cost_usd` of an answer (or chunk, or choice) is `expected`.
pub fn assert_cost(answer: &Value, expected: f64) {
    let cost = answer["cost_usd"]
        .as_f64()
        .unwrap_or_else(|| panic!("no cost_usd: {answer}"));
    assert!(
        (cost - expected).abs() < 1e-15,
        "cost {cost} != expected {expected}: {answer}"
    );
}

// ---- errors and fallback ----

/// Asks `model` "hi"; asserts the base config's `backup` answered it after one failed attempt
/// at `first`, with `status` and `error`. Returns the answer and its run.
pub async fn answered_by_backup(
    gw: &Flowgate,
    model: &str,
    first: &str,
    status: u16,
    error: &str,
) -> (Value, Value) {
    let (code, headers, body) = ask(gw, model, "hi").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(headers["x-flowgate-provider"], "backup");
    assert_eq!(body["choices"][0]["message"]["content"], "hi");
    let run = run_of(gw, &headers).await;
    let attempts = run["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{run}");
    assert_eq!(attempts[0]["provider"], first, "{run}");
    assert_eq!(attempts[0]["status"], status);
    assert_eq!(attempts[0]["error"], error);
    assert_eq!(attempts[1]["provider"], "backup");
    (body, run)
}

/// Asks `model` "hi"; asserts the answer is a 429 rate-limit error with `retry-after:
/// retry_after` whose first attempt got a 429. Returns the error body.
pub async fn assert_rate_limited(gw: &Flowgate, model: &str, retry_after: &str) -> Value {
    let (status, headers, body) = ask(gw, model, "hi").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(headers["retry-after"], retry_after);
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["details"]["attempts"][0]["status"], 429);
    body
}

/// Asks `model` "hi"; asserts the provider's 400 came back as the client's fault, not retried
/// nor fallen back from: a 400 `upstream_bad_request` after one attempt. Returns the error body.
pub async fn assert_bad_request(gw: &Flowgate, model: &str) -> Value {
    let (status, _, body) = ask(gw, model, "hi").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "upstream_bad_request");
    assert_eq!(
        body["error"]["details"]["attempts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    body
}
