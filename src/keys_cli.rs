//! `flowgate keys create|list|revoke`: manages virtual keys through a running flowgate's admin
//! API, for operators without the web UI. Prints the API's JSON answers.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Args)]
pub struct KeysCommand {
    #[command(subcommand)]
    action: KeysAction,
    /// The running flowgate.
    #[arg(long, env = "FLOWGATE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An admin key of that flowgate.
    #[arg(long, env = "FLOWGATE_ADMIN_KEY", hide_env_values = true)]
    admin_key: String,
    /// The tenant acted for (the default tenant without it).
    #[arg(long)]
    tenant: Option<String>,
}

#[derive(Subcommand)]
enum KeysAction {
    /// Makes a key; its secret is printed this once.
    Create {
        name: String,
        #[arg(long)]
        rpm: Option<u32>,
        #[arg(long)]
        tpm: Option<u64>,
        #[arg(long)]
        max_parallel: Option<u32>,
        /// Budgets in USD per day, week or month.
        #[arg(long)]
        daily_usd: Option<f64>,
        #[arg(long)]
        weekly_usd: Option<f64>,
        #[arg(long)]
        monthly_usd: Option<f64>,
        /// Allowed models (ids or globs), comma-separated.
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Allowed agents (names or globs), comma-separated.
        #[arg(long, value_delimiter = ',')]
        agents: Vec<String>,
        /// RFC 3339 time after which the key stops working.
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// Lists the tenant's keys.
    List,
    /// Revokes a key for good.
    Revoke { id: String },
}

/// Runs the command; the exit code is 0 when the API answered 2xx.
pub fn run(command: KeysCommand) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    runtime.block_on(send(command))
}

async fn send(command: KeysCommand) -> Result<(), String> {
    let base = command.url.trim_end_matches('/');
    let client = reqwest::Client::new();
    let request = match command.action {
        KeysAction::Create {
            name,
            rpm,
            tpm,
            max_parallel,
            daily_usd,
            weekly_usd,
            monthly_usd,
            models,
            agents,
            expires_at,
        } => {
            let budgets: Vec<Value> = [
                ("day", daily_usd),
                ("week", weekly_usd),
                ("month", monthly_usd),
            ]
            .into_iter()
            .filter_map(|(period, usd)| usd.map(|usd| json!({"period": period, "usd": usd})))
            .collect();
            let mut body =
                json!({"name": name, "models": models, "agents": agents, "budgets": budgets});
            for (field, value) in [
                ("rpm", rpm.map(u64::from)),
                ("tpm", tpm),
                ("max_parallel", max_parallel.map(u64::from)),
            ] {
                if let Some(v) = value {
                    body[field] = v.into();
                }
            }
            if let Some(at) = expires_at {
                body["expires_at"] = at.into();
            }
            client.post(format!("{base}/api/admin/keys")).json(&body)
        }
        KeysAction::List => client.get(format!("{base}/api/admin/keys")),
        KeysAction::Revoke { id } => client.delete(format!("{base}/api/admin/keys/{id}")),
    };
    let mut request = request.bearer_auth(&command.admin_key);
    if let Some(tenant) = &command.tenant {
        request = request.header("x-flowgate-tenant", tenant);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("cannot reach flowgate at {base}: {e}"))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| format!("cannot read flowgate's answer: {e}"))?;
    let pretty = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(text);
    if status.is_success() {
        println!("{pretty}");
        Ok(())
    } else {
        Err(format!("flowgate answered {status}:\n{pretty}"))
    }
}
