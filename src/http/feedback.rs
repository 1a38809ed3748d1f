//! `POST /v1/feedback`: end-user feedback on a run, authenticated by the run's feedback token
//! (`<run_id>.<secret>`, handed out on each choice of the answer), so an app can send it from
//! its users' devices without a flowgate API key. Without a key the run is looked up in the
//! `default` tenant: another tenant's app sends its API key along (until the run store can read
//! a run by id alone). `GET /api/runs/{run_id}/feedback` reads a run's feedback.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use flowgate_actors::agents::feedback::{token_matches, token_run_id};
use flowgate_actors::agents::{FeedbackRecord, Outcome};
use flowgate_actors::error::GatewayError;
use flowgate_actors::recorder::run::RunRecord;
use flowgate_actors::recorder::Barrier;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::agents::{bearer, read_small_json};
use super::auth::DEFAULT_TENANT;
use super::AppState;

#[derive(Deserialize)]
struct FeedbackBody {
    feedback_token: String,
    outcome: Outcome,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
}

/// The run, once the recorder has written it (feedback may follow its answer at once).
async fn find_run(
    state: &AppState,
    tenant: &str,
    run_id: Uuid,
) -> Result<Option<RunRecord>, GatewayError> {
    let runs = &state.gateway.runs;
    if let Some(run) = runs.get(tenant, run_id).await? {
        return Ok(Some(run));
    }
    let _ = state
        .gateway
        .recorder
        .addr
        .send(Barrier)
        .timeout(Duration::from_secs(5))
        .await;
    Ok(runs.get(tenant, run_id).await?)
}

pub async fn post_feedback(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    // The token is the credential; a caller that also sends an API key must send a valid one.
    let tenant = match bearer(&req) {
        Some(_) => state.auth.tenant(&req)?,
        None => DEFAULT_TENANT.to_string(),
    };
    let body: FeedbackBody = read_small_json(&req, payload, &state).await?;
    let invalid_token = || {
        GatewayError::invalid(
            "`feedback_token` is not a feedback token: use the `feedback_token` of a choice of \
             the answer",
        )
        .with_param("feedback_token")
        .with_code("invalid_feedback_token")
    };
    let run_id = token_run_id(&body.feedback_token).ok_or_else(invalid_token)?;
    let run = find_run(&state, &tenant, run_id).await?;
    // An unknown run and a wrong secret look the same: a token cannot be probed for runs.
    let run = run
        .filter(|run| token_matches(&run.feedback_token, &body.feedback_token))
        .ok_or_else(|| {
            GatewayError::not_found("no run matches this feedback token")
                .with_param("feedback_token")
        })?;
    let record = FeedbackRecord::new(run.id, body.outcome, body.comment, body.user_id)?;
    state.gateway.feedback.put(&record).await?;
    Ok(HttpResponse::Ok().json(record))
}

pub async fn list_run_feedback(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = super::agents::reader_tenant(&req, &state)?;
    let raw = path.into_inner();
    let raw = raw.rsplit('/').next().unwrap_or(&raw).to_string();
    let run_id: Uuid = raw.parse().map_err(|_| {
        GatewayError::invalid(format!("`{raw}` is not a run id")).with_param("run_id")
    })?;
    if find_run(&state, &tenant, run_id).await?.is_none() {
        return Err(GatewayError::not_found(format!("no run `{run_id}`")));
    }
    let items = state.gateway.feedback.for_run(run_id).await?;
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}
