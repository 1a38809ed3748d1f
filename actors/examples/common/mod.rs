//! What the benchmarks load: synthetic runs like the recorder writes (`search_bench`,
//! `ui_bench_load`).

use flowgate_actors::recorder::run::{CacheStatus, RunRecord, RunSource, RunStatus};
use serde_json::json;

pub const MODELS: [&str; 8] = [
    "gpt-4o-mini",
    "gpt-4o",
    "claude-sonnet-4-5",
    "claude-haiku-4-5",
    "gemini-2.5-flash",
    "gemini-2.5-pro",
    "llama-3.3-70b",
    "mistral-large",
];
const WORDS: [&str; 16] = [
    "invoice", "order", "refund", "shipping", "address", "delay", "package", "customer", "product",
    "warranty", "return", "payment", "card", "account", "support", "question",
];

/// A run like the recorder writes: ~1 KB of JSON with messages, output and metadata.
pub fn synthetic(i: u64, rng: &mut fastrand::Rng) -> RunRecord {
    // Most traffic on one agent, the rest spread over nine.
    let agent = if rng.u8(..10) < 7 {
        "support-bot".to_string()
    } else {
        format!("agent-{}", rng.u8(..9))
    };
    let model = MODELS[rng.usize(..MODELS.len())];
    let status = match rng.u8(..100) {
        0..=93 => RunStatus::Success,
        94..=98 => RunStatus::Error,
        _ => RunStatus::Cancelled,
    };
    let mut words: Vec<&str> = (0..24).map(|_| WORDS[rng.usize(..WORDS.len())]).collect();
    // A rare word: one run in 100,000.
    if i % 100_000 == 7 {
        words.push("xylophone");
    }
    let prompt = words.join(" ");
    let answer = format!("Thanks for your {} about the {}.", words[0], words[1]);
    serde_json::from_value(json!({
        "id": uuid::Uuid::now_v7(), "tenant": "default", "agent": agent,
        "created_at": "2026-12-01T00:00:00.000Z", "status": status.as_str(),
        "requested_model": model, "model": model, "provider": "p", "provider_model": model,
        "version_id": format!("v{}", rng.u8(..5)), "stream": false,
        "request": {"model": model, "messages": [
            {"role": "system", "content": "You are a helpful support agent for an online shop."},
            {"role": "user", "content": prompt}]},
        "input": null,
        "output": {"choices": [{"index": 0, "message": {"content": answer}, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 120, "completion_tokens": 30}},
        "attempts": [{"provider": "p", "model": model, "status": 200, "error": null,
                      "duration_seconds": 0.4, "reason": null}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 30},
        "cost_usd": 0.0001 * f64::from(rng.u8(..50)), "duration_seconds": 0.1 + f64::from(rng.u8(..40)) / 10.0,
        "cache": if rng.u8(..10) == 0 { CacheStatus::Hit.as_str() } else { CacheStatus::Miss.as_str() },
        "error": null, "metadata": {"customer": format!("c{}", rng.u16(..1000))},
        "feedback_token": "x", "source_run_id": null, "source": RunSource::Api.as_str()
    }))
    .expect("a synthetic run")
}

/// The process's resident set size in MB (`VmRSS`), 0 where it cannot be read.
// Not every example that includes this module prints it.
#[allow(dead_code)]
pub fn rss_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// The allocated bytes of every file under `dir` (`du -s`, in bytes).
// Not every example that includes this module reads it.
#[allow(dead_code)]
pub fn du(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            total += du(&entry.path());
        } else {
            total += meta.blocks() * 512;
        }
    }
    total
}
