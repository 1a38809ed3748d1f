//! The keys' and tenants' metrics, made at each scrape from their counters: requests refused
//! by reason, budget alerts, spend and remaining budget per period. Labelled by key name or
//! tenant (`subject`), never by secret. Refusals and alerts are this instance's (Prometheus
//! sums them over instances); spend is read from where it is counted (with Redis: every
//! instance's, the same on each). The Redis limiter adds its calls, errors and latency.

use std::sync::atomic::Ordering;

use prometheus::{Encoder, GaugeVec, IntCounterVec, Opts, Registry, TextEncoder};

use super::KeyRegistry;

/// The families in Prometheus's text format (empty when no key or tenant has limits and no
/// shared limiter is configured).
pub async fn render(keys: &KeyRegistry) -> String {
    let usages = keys.usages().await;
    let build = || -> Result<String, prometheus::Error> {
        let registry = Registry::new();
        let refused = IntCounterVec::new(
            Opts::new(
                "flowgate_key_requests_refused_total",
                "Requests refused by a key's or tenant's limits, by reason (rate, quota)",
            ),
            &["subject", "reason"],
        )?;
        let alerts = IntCounterVec::new(
            Opts::new(
                "flowgate_key_budget_alerts_total",
                "Budget soft thresholds passed",
            ),
            &["subject"],
        )?;
        let spend = GaugeVec::new(
            Opts::new(
                "flowgate_key_spend_usd",
                "Spend in the current period of each budget",
            ),
            &["subject", "period"],
        )?;
        let remaining = GaugeVec::new(
            Opts::new(
                "flowgate_key_budget_remaining_usd",
                "What is left of each budget in its current period",
            ),
            &["subject", "period"],
        )?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(alerts.clone()))?;
        registry.register(Box::new(spend.clone()))?;
        registry.register(Box::new(remaining.clone()))?;
        keys.limiter().register_metrics(&registry)?;
        let now = keys.now_ms();
        for (subject, usage) in &usages {
            let label = subject.label.replace('`', "");
            let label = label.as_str();
            refused
                .with_label_values(&[label, "rate"])
                .inc_by(subject.refused_rate.load(Ordering::Relaxed));
            refused
                .with_label_values(&[label, "quota"])
                .inc_by(subject.refused_quota.load(Ordering::Relaxed));
            alerts
                .with_label_values(&[label])
                .inc_by(subject.soft_alerts.load(Ordering::Relaxed));
            let usage = usage.view(&subject.limits(), now);
            for budget in usage["budgets"].as_array().into_iter().flatten() {
                let period = budget["period"].as_str().unwrap_or("");
                spend
                    .with_label_values(&[label, period])
                    .set(budget["spent_usd"].as_f64().unwrap_or(0.0));
                remaining
                    .with_label_values(&[label, period])
                    .set(budget["remaining_usd"].as_f64().unwrap_or(0.0));
            }
        }
        let mut out = Vec::new();
        TextEncoder::new().encode(&registry.gather(), &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    };
    build().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot render the keys' metrics");
        String::new()
    })
}
