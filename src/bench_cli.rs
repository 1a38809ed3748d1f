//! `flowgate bench --agent A --dataset D --candidates v1,v1@gpt-4o,model:gpt-4.1-mini`: starts a
//! benchmark on a running flowgate (`POST /api/agents/{agent}/benchmarks`), shows its progress
//! on stderr until it stops (Ctrl-C cancels it), then prints its table (the best of each column
//! marked `*`) or, with `--json`, the API's final answer.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use crate::ui::format;

/// How often the progress is read.
const POLL: Duration = Duration::from_millis(500);
/// Width of the progress bar, in characters.
const BAR: usize = 30;

#[derive(Args)]
pub struct BenchCommand {
    /// The agent benchmarked.
    #[arg(long)]
    agent: String,
    /// The agent's dataset to run.
    #[arg(long)]
    dataset: String,
    /// Comma-separated: `VERSION` (a version on its own model), `VERSION@MODEL` (re-targeted)
    /// or `model:MODEL` (the model alone).
    #[arg(long, value_delimiter = ',', required = true)]
    candidates: Vec<String>,
    /// Items run at once (1 to 16; the server's default, 4, without it).
    #[arg(long)]
    concurrency: Option<u32>,
    /// Lets the benchmark answer from the cache.
    #[arg(long)]
    use_cache: bool,
    /// Prints the final JSON (`GET …/benchmarks/{id}`) instead of the table.
    #[arg(long)]
    json: bool,
    /// The running flowgate.
    #[arg(long, env = "FLOWGATE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An API key of the tenant (or an admin key, with `--tenant`).
    #[arg(long, env = "FLOWGATE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The tenant acted for, with an admin key.
    #[arg(long)]
    tenant: Option<String>,
}

/// A candidate as the API takes it.
pub fn candidate(spec: &str) -> Result<Value, String> {
    let spec = spec.trim();
    let bad = || format!("`{spec}` is not a candidate: VERSION, VERSION@MODEL or model:MODEL");
    if let Some(model) = spec.strip_prefix("model:") {
        return match model.trim() {
            "" => Err(bad()),
            model => Ok(json!({"model": model})),
        };
    }
    match spec.split_once('@') {
        Some((version, model)) if !version.is_empty() && !model.is_empty() => {
            Ok(json!({"version_id": version, "model": model}))
        }
        Some(_) => Err(bad()),
        None if spec.is_empty() => Err(bad()),
        None => Ok(json!({"version_id": spec})),
    }
}

/// Runs the command; `Err` is the message for stderr (exit code 1).
pub fn run(command: BenchCommand) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    runtime.block_on(bench(command))
}

struct Api {
    base: String,
    client: reqwest::Client,
    key: Option<String>,
    tenant: Option<String>,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .timeout(Duration::from_secs(30));
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        if let Some(tenant) = &self.tenant {
            request = request.header("x-flowgate-tenant", tenant);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("cannot reach flowgate at {}: {e}", self.base))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| format!("cannot read flowgate's answer: {e}"))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            Ok(value)
        } else {
            let message = value["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            Err(format!("flowgate answered {status}: {message}"))
        }
    }
}

fn path_segment(text: &str) -> String {
    crate::ui::page::encode(text)
}

async fn bench(command: BenchCommand) -> Result<(), String> {
    let candidates = command
        .candidates
        .iter()
        .map(|c| candidate(c))
        .collect::<Result<Vec<_>, _>>()?;
    let api = Api {
        base: command.url.trim_end_matches('/').to_string(),
        client: reqwest::Client::new(),
        key: command.api_key.clone(),
        tenant: command.tenant.clone(),
    };
    let mut body = json!({"dataset": command.dataset, "candidates": candidates, "use_cache": command.use_cache});
    if let Some(n) = command.concurrency {
        body["concurrency"] = n.into();
    }
    let base = format!("/api/agents/{}/benchmarks", path_segment(&command.agent));
    let created = api.call(reqwest::Method::POST, &base, Some(&body)).await?;
    let id = created["benchmark"]["id"]
        .as_str()
        .ok_or("flowgate's answer has no benchmark id")?
        .to_string();
    let path = format!("{base}/{id}");
    eprintln!("benchmark {id} started");
    let terminal = std::io::stderr().is_terminal();
    let mut last_shown = None;
    let mut cancelled = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let last = loop {
        let state = api.call(reqwest::Method::GET, &path, None).await?;
        let done = state["done"].as_u64().unwrap_or(0);
        let total = state["total"].as_u64().unwrap_or(0);
        let status = state["benchmark"]["status"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        if last_shown != Some((done, status.clone())) {
            let line = progress(done, total, &status);
            if terminal {
                eprint!("\r{line}");
            } else {
                eprintln!("{line}");
            }
            let _ = std::io::stderr().flush();
            last_shown = Some((done, status.clone()));
        }
        if status != "running" {
            if terminal {
                eprintln!();
            }
            break state;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = &mut ctrl_c, if !cancelled => {
                cancelled = true;
                eprintln!("\ncancelling {id}…");
                api.call(reqwest::Method::POST, &format!("{path}/cancel"), Some(&json!({}))).await?;
            }
        }
    };
    if command.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&last).unwrap_or_else(|_| last.to_string())
        );
    } else {
        print!("{}", table_text(&last));
    }
    match last["benchmark"]["status"].as_str() {
        Some("done") => Ok(()),
        Some(status) => Err(format!(
            "the benchmark is {status}{}",
            last["benchmark"]["error"]
                .as_str()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )),
        None => Err("flowgate's answer has no status".into()),
    }
}

/// `[##########----------] 10/20 running`
fn progress(done: u64, total: u64, status: &str) -> String {
    let filled = if total == 0 {
        0
    } else {
        ((done as usize) * BAR / total as usize).min(BAR)
    };
    format!(
        "[{}{}] {done}/{total} {status}",
        "#".repeat(filled),
        "-".repeat(BAR - filled)
    )
}

/// The table of a benchmark (`GET …/benchmarks/{id}`), aligned, the best of each column
/// followed by `*`.
pub fn table_text(state: &Value) -> String {
    let headers = [
        "candidate",
        "accuracy",
        "+/-/?",
        "avg latency",
        "p90 latency",
        "avg cost",
        "total cost",
        "errors",
    ];
    let mut lines: Vec<Vec<String>> = vec![headers.iter().map(|h| h.to_string()).collect()];
    for row in state["table"].as_array().into_iter().flatten() {
        let best = |column: &str| {
            row["best"]
                .as_array()
                .is_some_and(|b| b.iter().any(|c| c == column))
        };
        let mark = |text: Option<String>, column: &str| match text {
            Some(text) if best(column) => format!("{text}*"),
            Some(text) => text,
            None => "-".into(),
        };
        let number = |key: &str| row[key].as_f64();
        let count = |key: &str| row[key].as_u64().unwrap_or(0);
        lines.push(vec![
            row["label"].as_str().unwrap_or("?").to_string(),
            mark(number("accuracy").map(format::percent), "accuracy"),
            format!(
                "{}/{}/{}",
                count("positive"),
                count("negative"),
                count("unsure")
            ),
            mark(
                number("avg_latency_seconds").map(format::seconds),
                "avg_latency_seconds",
            ),
            mark(
                number("p90_latency_seconds").map(format::seconds),
                "p90_latency_seconds",
            ),
            mark(number("avg_cost_usd").map(format::cost), "avg_cost_usd"),
            // The same items for every candidate: the cheapest on average is the cheapest.
            mark(
                (count("items") > 0)
                    .then(|| number("total_cost_usd").map(format::cost))
                    .flatten(),
                "avg_cost_usd",
            ),
            mark(
                (count("items") > 0).then(|| count("errors").to_string()),
                "errors",
            ),
        ]);
    }
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = format!(
        "benchmark {} of {} on {}: {} ({}/{})\n\n",
        state["benchmark"]["id"].as_str().unwrap_or("?"),
        state["benchmark"]["agent"].as_str().unwrap_or("?"),
        state["benchmark"]["dataset"].as_str().unwrap_or("?"),
        state["benchmark"]["status"].as_str().unwrap_or("?"),
        state["done"],
        state["total"],
    );
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                let pad = widths[i] - cell.chars().count();
                if i == 0 {
                    format!("{cell}{}", " ".repeat(pad))
                } else {
                    format!("{}{cell}", " ".repeat(pad))
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str("\n* best on the column\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_versions_retargeted_versions_or_models() {
        assert_eq!(candidate("v1").unwrap(), json!({"version_id": "v1"}));
        assert_eq!(
            candidate("v1@gpt-4o").unwrap(),
            json!({"version_id": "v1", "model": "gpt-4o"})
        );
        assert_eq!(
            candidate("model:gpt-4.1-mini").unwrap(),
            json!({"model": "gpt-4.1-mini"})
        );
        for bad in ["", "model:", "@m", "v1@"] {
            assert!(candidate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_table_is_aligned_and_marks_the_best() {
        let state = json!({
            "benchmark": {"id": "b1", "agent": "geo", "dataset": "capitals", "status": "done"},
            "done": 4, "total": 4,
            "table": [
                {"label": "v1", "items": 2, "positive": 2, "negative": 0, "unsure": 0, "errors": 0,
                 "accuracy": 1.0, "avg_latency_seconds": 0.5, "p90_latency_seconds": 0.6,
                 "avg_cost_usd": 0.002, "total_cost_usd": 0.004, "best": ["accuracy", "errors"]},
                {"label": "v1 on cheap", "items": 2, "positive": 1, "negative": 1, "unsure": 0, "errors": 0,
                 "accuracy": 0.5, "avg_latency_seconds": 0.1, "p90_latency_seconds": 0.1,
                 "avg_cost_usd": 0.001, "total_cost_usd": 0.002,
                 "best": ["avg_latency_seconds", "p90_latency_seconds", "avg_cost_usd", "errors"]}
            ]
        });
        let text = table_text(&state);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("capitals: done (4/4)"), "{text}");
        assert!(lines[2].starts_with("candidate    "), "{text}");
        assert!(lines[3].contains("100.0%*"), "{text}");
        assert!(lines[4].contains(" 50.0% "), "{text}");
        assert!(lines[4].contains("$0.001000*"), "{text}");
        assert!(lines[4].contains("100 ms*"), "{text}");
        // Columns line up: every row is as wide as the header.
        assert_eq!(lines[2].len(), lines[3].len());
        assert_eq!(
            progress(5, 20, "running"),
            format!("[{}{}] 5/20 running", "#".repeat(7), "-".repeat(23))
        );
    }
}
