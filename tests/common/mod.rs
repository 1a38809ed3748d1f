//! Test harness: starts the real `flowgate` binary on port 0 with a config of the test's own,
//! next to the project's mock upstream.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use flowgate_mock_upstream::MockUpstream;
use serde_json::Value;

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

impl Flowgate {
    /// Writes `config` to `dir/flowgate.toml` and starts the binary with it.
    pub fn start(dir: &Path, config: &str) -> Flowgate {
        let config_path = dir.join("flowgate.toml");
        std::fs::write(&config_path, config).expect("write config");
        Self::start_with(&config_path)
    }

    pub fn start_with(config_path: &Path) -> Flowgate {
        let mut child = Command::new(env!("CARGO_BIN_EXE_flowgate"))
            .args(["serve", "--config"])
            .arg(config_path)
            .env("FLOWGATE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
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

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// POSTs a chat request; returns status, headers and JSON body.
pub async fn chat(
    gw: &Flowgate,
    body: Value,
) -> (reqwest::StatusCode, reqwest::header::HeaderMap, Value) {
    let response = client()
        .post(gw.chat_url())
        .bearer_auth("any")
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, headers, json)
}

/// POSTs a streaming chat request; returns status, headers and the `data:` payloads.
pub async fn chat_stream(
    gw: &Flowgate,
    body: Value,
) -> (reqwest::StatusCode, reqwest::header::HeaderMap, Vec<String>) {
    let response = client()
        .post(gw.chat_url())
        .bearer_auth("any")
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let events = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect();
    (status, headers, events)
}

pub async fn get_json(gw: &Flowgate, path: &str) -> (reqwest::StatusCode, Value) {
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
    serde_json::json!([{ "role": "user", "content": text }])
}
