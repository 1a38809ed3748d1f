//! How pages write numbers and times: the handlers format, the templates only place.

use serde_json::Value;

/// `$0.000123`, with more digits for smaller amounts.
pub fn cost(usd: f64) -> String {
    if usd == 0.0 {
        "$0".to_string()
    } else if usd >= 1.0 {
        format!("${usd:.2}")
    } else if usd >= 0.01 {
        format!("${usd:.4}")
    } else {
        format!("${usd:.6}")
    }
}

/// `120 ms`, `1.52 s`.
pub fn seconds(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

/// An RFC 3339 time as `2026-12-05 00:20:01` (UTC).
pub fn time(rfc3339: &str) -> String {
    let t = rfc3339.replace('T', " ");
    let t = t.split('.').next().unwrap_or(&t).trim_end_matches('Z');
    format!("{t} UTC")
}

/// Milliseconds since the epoch as `2026-12-05 00:20:01 UTC`.
pub fn time_ms(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    time(&humantime::format_rfc3339_seconds(at).to_string())
}

/// A share as `80.0%`.
pub fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

/// JSON, indented.
pub fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// The text of a message's `content`: itself when a string, its text parts, else its JSON.
pub fn content_text(content: Option<&Value>) -> String {
    match content {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|part| match part.get("text").and_then(Value::as_str) {
                Some(text) => text.to_string(),
                None => part.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Some(other) => other.to_string(),
    }
}

/// A polyline's points for a sparkline of `values` in a `width` × `height` box.
pub fn sparkline(values: &[f64], width: f64, height: f64) -> String {
    let max = values.iter().cloned().fold(0.0_f64, f64::max);
    let n = values.len().max(2) - 1;
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let x = width * i as f64 / n as f64;
            let y = if max > 0.0 {
                height - 1.0 - (height - 2.0) * v / max
            } else {
                height - 1.0
            };
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_and_durations_read_naturally() {
        assert_eq!(cost(0.0), "$0");
        assert_eq!(cost(0.000123), "$0.000123");
        assert_eq!(cost(2.5), "$2.50");
        assert_eq!(seconds(0.1204), "120 ms");
        assert_eq!(seconds(1.519), "1.52 s");
        assert_eq!(time("2026-12-05T00:20:01.123Z"), "2026-12-05 00:20:01 UTC");
        assert_eq!(time_ms(1_764_894_001_123), "2025-12-05 00:20:01 UTC");
        assert_eq!(percent(0.8), "80.0%");
        assert_eq!(sparkline(&[0.0, 2.0], 10.0, 10.0), "0.0,9.0 10.0,1.0");
    }
}
