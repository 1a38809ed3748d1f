//! `POST /api/runs/{run_id}/replay` `{"model": …}` or `{"version_id": …}`: runs a recorded run
//! again through the normal engine and answers with the new run's `chat.completion` (its
//! `run_id`, `source: "replay"` and `replay_of` included). The new run is recorded with
//! `source: replay` and `replay_of: <run_id>`.
//!
//! What is replayed: the run's stored request (messages, `input`, parameters, metadata), on
//! * `model`: another catalog model, with the same templates rendered with the same input (a
//!   deployment's run keeps its version's templates and parameters);
//! * `version_id`: a version of the run's agent, which brings its model and parameters, and
//!   its templates when the run had `input` (otherwise the run's own messages are kept).
//!
//! A replay calls the model again: the answer cache is not used. Only the run's tenant replays
//! it; another tenant's run is a 404 and nothing runs.

use actix_web::{web, HttpRequest, HttpResponse};
use flowgate_actors::agents::resolve::target_of;
use flowgate_actors::agents::VersionRecord;
use flowgate_actors::engine::RunContext;
use flowgate_actors::error::{excerpt, GatewayError};
use flowgate_actors::model_ref::ModelRef;
use flowgate_actors::recorder::run::{RunRecord, RunSource};
use flowgate_actors::wire::{ChatRequest, UseCache};
use serde::Deserialize;

use super::agents::read_small_json;
use super::chat::{failed, prepare_raw, respond};
use super::runs::{find_run, parse_run_id};
use super::AppState;

/// Longest version id accepted (ids are 32 hex digits).
const MAX_VERSION_ID_BYTES: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    version_id: Option<String>,
}

/// What the replay runs on.
enum On {
    Model(String),
    Version(String),
}

impl ReplayBody {
    fn target(self, state: &AppState) -> Result<On, GatewayError> {
        match (self.model, self.version_id) {
            (Some(model), None) => {
                check_model(state, &model, "model")?;
                Ok(On::Model(model))
            }
            (None, Some(version_id)) => Ok(On::Version(checked_version_id(version_id)?)),
            _ => Err(GatewayError::invalid(
                "a replay names either `model` (a catalog model) or `version_id` (a version of \
                 the run's agent)",
            )),
        }
    }
}

/// A catalog model the gateway knows, or a 400 that names `param`.
pub(super) fn check_model(state: &AppState, model: &str, param: &str) -> Result<(), GatewayError> {
    if model.len() > state.limits.max_model_bytes {
        return Err(
            super::chat::model_too_long(model, state.limits.max_model_bytes).with_param(param),
        );
    }
    state
        .gateway
        .catalog
        .load()
        .resolve(model)
        .map(|_| ())
        .map_err(|_| {
            GatewayError::invalid(format!(
                "`{}` is not a model of the catalog (see GET /v1/models)",
                excerpt(model, 64)
            ))
            .with_param(param)
            .with_code("model_not_found")
        })
}

/// A version id within bounds, or a 400.
pub(super) fn checked_version_id(version_id: String) -> Result<String, GatewayError> {
    if version_id.is_empty()
        || version_id.len() > MAX_VERSION_ID_BYTES
        || !version_id.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(GatewayError::invalid(format!(
            "`{}` is not a version id",
            excerpt(&version_id, 64)
        ))
        .with_param("version_id"));
    }
    Ok(version_id)
}

/// A version of the tenant's agent, or a 404.
pub(super) async fn load_version(
    state: &AppState,
    tenant: &str,
    agent: &str,
    version_id: &str,
) -> Result<std::sync::Arc<VersionRecord>, GatewayError> {
    state
        .gateway
        .agents
        .version(tenant, agent, version_id)
        .await?
        .ok_or_else(|| {
            GatewayError::not_found(format!("agent `{agent}` has no version `{version_id}`"))
        })
}

pub async fn replay_run(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = state.auth.tenant(&req)?;
    let id = parse_run_id(&path.into_inner())?;
    let body: ReplayBody = read_small_json(&req, payload, &state).await?;
    let on = body.target(&state)?;
    let original = find_run(&state, &tenant, id).await?;
    let chat = replayed_request(&state, &tenant, &original, on).await?;
    let raw = serde_json::value::to_raw_value(&chat)
        .map_err(|e| GatewayError::internal(format!("cannot write the replayed request: {e}")))?;

    let mut ctx = RunContext::new(&tenant, &original.agent, "", false);
    ctx.source = RunSource::Replay;
    ctx.replay_of = Some(id);
    let mut run = state.gateway.start(ctx);
    let prepared = match prepare_raw(raw, None, &state, run.context_mut()).await {
        Ok(prepared) => prepared,
        Err(e) => return Ok(failed(run, e)),
    };
    Ok(respond(&req, &state, run, prepared).await)
}

/// The request that replays `run` on `on`.
async fn replayed_request(
    state: &AppState,
    tenant: &str,
    run: &RunRecord,
    on: On,
) -> Result<ChatRequest, GatewayError> {
    let not_replayable = || {
        GatewayError::invalid(format!(
            "run `{}` has no valid request to replay (it failed before its body was read)",
            run.id
        ))
        .with_code("not_replayable")
    };
    let raw = run.request.as_ref().ok_or_else(not_replayable)?;
    let mut chat: ChatRequest = serde_json::from_str(raw.get()).map_err(|_| not_replayable())?;
    let agent = run.agent.as_str();

    // A deployment's run: its version held the templates and parameters.
    let deployed = matches!(
        ModelRef::parse(&chat.model, None).and_then(|r| target_of(
            r.target,
            chat.environment.as_deref(),
            chat.schema_id
        )),
        Ok(flowgate_actors::model_ref::Target::Deployment { .. })
    );
    if deployed {
        let version_id = run.version_id.as_deref().ok_or_else(not_replayable)?;
        let version = load_version(state, tenant, agent, version_id).await?;
        version.properties.template_onto(&mut chat);
    }
    chat.environment = None;
    chat.schema_id = None;
    chat.stream = None;
    chat.stream_options = None;
    chat.use_cache = Some(UseCache::Never);
    match on {
        On::Model(model) => chat.model = format!("{agent}/{model}"),
        On::Version(version_id) => {
            let version = load_version(state, tenant, agent, &version_id).await?;
            let properties = &version.properties;
            properties.apply_to(&mut chat);
            if chat.input.is_some() {
                chat.messages = properties.messages.clone();
            } else if let Some(sent) = &run.rendered_messages {
                chat.messages = sent.clone();
            }
            chat.model = format!("{agent}/{}", properties.model);
        }
    }
    Ok(chat)
}
