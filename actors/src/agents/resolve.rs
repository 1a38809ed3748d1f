//! Resolving a chat request against its agent, before routing: the deployment it targets, its
//! templates rendered with `input`, and the ids the run is filed under (version, schema,
//! conversation).
//!
//! * `agent/<model>`: the messages are the templates; with `input` they are rendered, without
//!   it a message that uses variables is an error.
//! * `agent/#<schema_id>/<environment>`: the deployed version brings the model, the templates and
//!   the parameters; the request brings `input`, optional trailing messages, and parameters that
//!   override the version's. Its input must match the schema, its `response_format`/`tools`
//!   (if any) the schema's output, and it must not repeat the deployed messages.

use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::conversation::message_hashes;
use super::schema::{self, SchemaRecord};
use super::AgentStore;
use crate::catalog::Catalog;
use crate::error::GatewayError;
use crate::model_ref::{Environment, Target};
use crate::templates::Renderer;
use crate::wire::{ChatRequest, Message};

/// A request resolved against its agent.
#[derive(Debug, Clone)]
pub struct Resolution {
    /// What goes upstream: rendered messages, the deployed model and parameters.
    pub request: ChatRequest,
    /// The catalog name to route.
    pub target_model: String,
    /// `None` when the model is not in the catalog (routing then fails with a 404).
    pub version_id: Option<String>,
    pub schema_id: u32,
    /// The conversation the request continues, or the run's own id for a new one.
    pub conversation_id: Uuid,
    /// The messages as sent, when they differ from the request's (templates were rendered or a
    /// deployment supplied them).
    pub rendered_messages: Option<Vec<Message>>,
    /// The hash of the messages as sent, which the answer extends into its conversation link
    /// ([`super::conversation::continuation_of`]).
    pub messages_hash: [u8; 32],
}

/// The request's target: the `model` string's, or a deployment named by the `environment` and
/// `schema_id` extra body fields.
pub fn target_of(
    model_target: Target,
    environment: Option<&str>,
    schema_id: Option<u32>,
) -> Result<Target, GatewayError> {
    match (environment, schema_id) {
        (None, None) => Ok(model_target),
        (Some(env), Some(schema_id)) => {
            let environment = Environment::parse(env).ok_or_else(|| {
                GatewayError::invalid(format!(
                    "`{env}` is not an environment: use dev, staging or production"
                ))
                .with_param("environment")
            })?;
            Ok(Target::Deployment {
                schema_id,
                environment,
            })
        }
        (Some(_), None) => Err(GatewayError::invalid(
            "`environment` targets a deployment and needs `schema_id` too",
        )
        .with_param("schema_id")),
        (None, Some(_)) => Err(GatewayError::invalid(
            "`schema_id` targets a deployment and needs `environment` too (dev, staging or production)",
        )
        .with_param("environment")),
    }
}

/// The model as a version records it: the catalog id, with the reasoning-effort suffix the
/// request asked for.
fn version_model(catalog: &Catalog, name: &str) -> Option<String> {
    let resolved = catalog.resolve(name).ok()?;
    Some(match resolved.reasoning_effort {
        Some(effort) => format!("{}-{effort}", resolved.entry.id),
        None => resolved.entry.id.clone(),
    })
}

fn empty_input() -> &'static Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Map::new)
}

/// Runs the input's validation and rendering on a blocking thread: rendering waits for a
/// render worker (bounded by the template limits), which must not hold up the caller's
/// thread. What they work on moves in and back out, uncopied.
async fn off_thread<T: Send + 'static>(
    render: impl FnOnce() -> T + Send + 'static,
) -> Result<T, GatewayError> {
    tokio::task::spawn_blocking(render)
        .await
        .map_err(|e| GatewayError::internal(format!("template rendering failed: {e}")))
}

impl AgentStore {
    /// Resolves `request` for `agent`. `run_id` names a new conversation. Templates are
    /// rendered on a blocking thread.
    #[allow(clippy::too_many_arguments)]
    pub async fn resolve(
        &self,
        catalog: &Catalog,
        tenant: &str,
        agent: &str,
        run_id: Uuid,
        target: Target,
        request: ChatRequest,
        renderer: &Renderer,
    ) -> Result<Resolution, GatewayError> {
        let mut resolution = match target {
            Target::Model(model) => {
                self.resolve_model(catalog, tenant, agent, model, request, renderer)
                    .await?
            }
            Target::Deployment {
                schema_id,
                environment,
            } => {
                self.resolve_deployment(tenant, agent, schema_id, environment, request, renderer)
                    .await?
            }
        };
        let hashes = message_hashes(&resolution.request.messages);
        resolution.messages_hash = hashes.all;
        resolution.conversation_id = self
            .conversation_by(tenant, agent, hashes.lookup.as_ref())
            .await?
            .unwrap_or(run_id);
        Ok(resolution)
    }

    async fn resolve_model(
        &self,
        catalog: &Catalog,
        tenant: &str,
        agent: &str,
        model: String,
        request: ChatRequest,
        renderer: &Renderer,
    ) -> Result<Resolution, GatewayError> {
        let (mut request, rendered) = if request.input.is_some() {
            let renderer = renderer.clone();
            let (request, rendered) = off_thread(move || {
                let rendered = request
                    .input
                    .as_ref()
                    .map(|input| renderer.render(&request.messages, input, true))
                    .transpose();
                (request, rendered)
            })
            .await?;
            (request, rendered?)
        } else {
            renderer.check_without_input(&request.messages)?;
            (request, None)
        };
        let output_schema = schema::output_schema(&request);
        let schema_id = self
            .schema_id(tenant, agent, request.input.as_ref(), &output_schema)
            .await?;
        // The version hashes the templates: taken before the messages are replaced.
        let version_id = match version_model(catalog, &model) {
            Some(versioned) => Some(
                self.version_of_request(tenant, agent, &versioned, &request, schema_id)
                    .await?,
            ),
            None => None,
        };
        if let Some(messages) = &rendered {
            request.messages = messages.clone();
        }
        Ok(Resolution {
            request,
            target_model: model,
            version_id,
            schema_id,
            conversation_id: Uuid::nil(),
            rendered_messages: rendered,
            messages_hash: [0; 32],
        })
    }

    async fn resolve_deployment(
        &self,
        tenant: &str,
        agent: &str,
        schema_id: u32,
        environment: Environment,
        request: ChatRequest,
        renderer: &Renderer,
    ) -> Result<Resolution, GatewayError> {
        let Some(deployment) = self
            .deployment(tenant, agent, schema_id, environment)
            .await?
        else {
            return Err(self
                .no_deployment_error(tenant, agent, schema_id, environment)
                .await);
        };
        let version = self
            .version(tenant, agent, &deployment.version_id)
            .await?
            .ok_or_else(|| {
                GatewayError::internal(format!(
                    "the deployed version `{}` of agent `{agent}` is missing from the store",
                    deployment.version_id
                ))
            })?;
        let schema = self
            .schema(tenant, agent, schema_id)
            .await?
            .ok_or_else(|| {
                GatewayError::internal(format!(
                    "schema #{schema_id} of agent `{agent}` is missing from the store"
                ))
            })?;
        let properties = version.properties.overridden_by(&request);
        let (properties, mut request, deployed) = if schema.input_schema.is_null() {
            // Nothing to validate against or render with: at once.
            self.check_input(agent, &schema, request.input.as_ref())?;
            check_output(agent, &schema, &request)?;
            let deployed = properties.messages.clone();
            (properties, request, deployed)
        } else {
            // Validating the input and rendering with it is the CPU-heavy part (and rendering
            // waits for a render worker): both off the caller's thread.
            let (store, renderer, agent) = (self.clone(), renderer.clone(), agent.to_string());
            let (properties, request, deployed) = off_thread(move || {
                let deployed = store
                    .check_input(&agent, &schema, request.input.as_ref())
                    .and_then(|()| check_output(&agent, &schema, &request))
                    .and_then(|()| {
                        let input = request.input.as_ref().unwrap_or_else(|| empty_input());
                        Ok(renderer.render(&properties.messages, input, false)?)
                    });
                (properties, request, deployed)
            })
            .await?;
            (properties, request, deployed?)
        };
        check_duplicates(
            agent,
            schema_id,
            environment,
            &properties.messages,
            &deployed,
            &request.messages,
        )?;
        let version_id = if properties == version.properties {
            version.id.clone()
        } else {
            self.ensure_version(tenant, agent, &properties, schema_id)
                .await?
        };
        properties.apply_to(&mut request);
        let trailing = std::mem::take(&mut request.messages);
        request.messages = deployed;
        request.messages.extend(trailing);
        Ok(Resolution {
            rendered_messages: Some(request.messages.clone()),
            request,
            target_model: properties.model,
            version_id: Some(version_id),
            schema_id,
            conversation_id: Uuid::nil(),
            messages_hash: [0; 32],
        })
    }
}

/// A deployment caller's own `response_format`/`tools` must describe the schema's output.
fn check_output(
    agent: &str,
    schema: &SchemaRecord,
    request: &ChatRequest,
) -> Result<(), GatewayError> {
    if request.response_format.is_none() && request.tools.is_none() {
        return Ok(());
    }
    let requested = schema::output_schema(request);
    if schema::same(&requested, &schema.output_schema) {
        return Ok(());
    }
    let param = if request.response_format.is_some() {
        "response_format"
    } else {
        "tools"
    };
    Err(GatewayError::invalid(format!(
        "the request's `{param}` does not match the output schema of schema #{} of agent \
         `{agent}`: a different output is a different schema; call it with `{agent}/<model>` \
         to create one, or drop `{param}` to get the deployed one",
        schema.id
    ))
    .with_param(param)
    .with_code("schema_mismatch")
    .with_extra(json!({
        "expected_output_schema": schema.output_schema,
        "requested_output_schema": requested,
    })))
}

/// A deployment supplies its messages: a request that sends them again (the templates or
/// their rendering) gets a 400 that says so, rather than a prompt that says everything twice.
fn check_duplicates(
    agent: &str,
    schema_id: u32,
    environment: Environment,
    templates: &[Message],
    rendered: &[Message],
    sent: &[Message],
) -> Result<(), GatewayError> {
    for (i, message) in sent.iter().enumerate() {
        let text = message.text();
        if text.trim().is_empty() {
            continue;
        }
        let repeats = templates
            .iter()
            .chain(rendered)
            .any(|d| d.role == message.role && d.text() == text);
        if repeats {
            return Err(GatewayError::invalid(format!(
                "`messages[{i}]` repeats a message of the version deployed to `{agent}/#{schema_id}/{}`: \
                 a deployment supplies its own messages, so send only `input` (and any new \
                 messages that follow them)",
                environment.as_str()
            ))
            .with_param(format!("messages[{i}]"))
            .with_code("duplicate_messages"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{ModelEntry, ProviderOffer};

    fn catalog() -> Catalog {
        let model = |id: &str| ModelEntry {
            id: id.to_string(),
            display_name: id.to_string(),
            aliases: vec![format!("{id}-alias")],
            context_window: None,
            max_output_tokens: None,
            release_date: None,
            supports: Default::default(),
            fallbacks: Default::default(),
            embedding: None,
            providers: vec![ProviderOffer {
                provider: "p".into(),
                model: id.into(),
                prices: Default::default(),
            }],
        };
        Catalog::new(vec![model("m1"), model("m2")]).unwrap()
    }

    fn request(body: Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    fn setup() -> (tempfile::TempDir, AgentStore) {
        let (dir, storage) = crate::storage::temporary();
        (dir, AgentStore::open(&storage))
    }

    async fn resolve(
        store: &AgentStore,
        target: Target,
        body: Value,
    ) -> Result<Resolution, GatewayError> {
        store
            .resolve(
                &catalog(),
                "t",
                "a",
                Uuid::now_v7(),
                target,
                request(body),
                &Renderer::default(),
            )
            .await
    }

    fn prod(schema_id: u32) -> Target {
        Target::Deployment {
            schema_id,
            environment: Environment::Production,
        }
    }

    #[actix_rt::test]
    async fn templated_runs_share_a_version_whatever_the_input() {
        let (_dir, store) = setup();
        let body = |name: &str| {
            json!({"model": "a/m1-alias", "messages": [{"role": "system", "content": "Greet {{ name }}"}],
                   "input": {"name": name}})
        };
        let a = resolve(&store, Target::Model("m1-alias".into()), body("Ann"))
            .await
            .unwrap();
        let b = resolve(&store, Target::Model("m1-alias".into()), body("Bob"))
            .await
            .unwrap();
        assert_eq!(a.request.messages[0].text(), "Greet Ann");
        assert_eq!(b.request.messages[0].text(), "Greet Bob");
        assert_eq!(a.version_id, b.version_id);
        assert_eq!((a.schema_id, b.schema_id), (1, 1));
        let version = store
            .version("t", "a", a.version_id.as_ref().unwrap())
            .await
            .unwrap()
            .unwrap();
        // The version keeps the template and the canonical model id.
        assert_eq!(version.properties.messages[0].text(), "Greet {{ name }}");
        assert_eq!(version.properties.model, "m1");
        // Another input type: another schema.
        let c = resolve(&store, Target::Model("m1".into()),
            json!({"model": "m1", "messages": [{"role": "system", "content": "Greet {{ name }}"}], "input": {"name": 3}}))
            .await
            .unwrap();
        assert_eq!(c.schema_id, 2);
        // Unknown model: no version, routing will say why.
        let d = resolve(
            &store,
            Target::Model("nope".into()),
            json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await
        .unwrap();
        assert_eq!(d.version_id, None);
    }

    #[actix_rt::test]
    async fn a_deployment_brings_model_templates_and_parameters_and_requests_override() {
        let (_dir, store) = setup();
        let created = resolve(
            &store,
            Target::Model("m1".into()),
            json!({
                "model": "m1", "temperature": 0.2,
                "messages": [{"role": "system", "content": "Classify {{ email }}"}],
                "input": {"email": "a@b.c"}
            }),
        )
        .await
        .unwrap();
        let version_id = created.version_id.unwrap();
        let e = resolve(
            &store,
            prod(1),
            json!({"model": "a/#1/production", "messages": [], "input": {"email": "x@y.z"}}),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code.as_deref(), Some("deployment_not_found"));
        store
            .deploy("t", "a", &version_id, None, Environment::Production, "me")
            .await
            .unwrap();

        let r = resolve(&store, prod(1), json!({
            "model": "a/#1/production", "messages": [{"role": "user", "content": "{{ not rendered }}"}],
            "input": {"email": "x@y.z"}
        }))
        .await
        .unwrap();
        assert_eq!(r.target_model, "m1");
        assert_eq!(r.request.model, "m1");
        assert_eq!(r.request.temperature, Some(0.2));
        assert_eq!(r.request.messages.len(), 2);
        assert_eq!(r.request.messages[0].text(), "Classify x@y.z");
        assert_eq!(r.request.messages[1].text(), "{{ not rendered }}");
        assert_eq!(r.version_id.as_deref(), Some(version_id.as_str()));
        assert_eq!(r.schema_id, 1);

        // An override is a version of its own.
        let o = resolve(&store, prod(1), json!({
            "model": "a/#1/production", "messages": [], "input": {"email": "x@y.z"}, "temperature": 0.9
        }))
        .await
        .unwrap();
        assert_eq!(o.request.temperature, Some(0.9));
        assert_ne!(o.version_id.as_deref(), Some(version_id.as_str()));
        assert!(store
            .version("t", "a", o.version_id.as_ref().unwrap())
            .await
            .unwrap()
            .is_some());
    }

    #[actix_rt::test]
    async fn deployment_callers_get_400s_that_explain() {
        let (_dir, store) = setup();
        let created = resolve(
            &store,
            Target::Model("m1".into()),
            json!({
                "model": "m1", "messages": [{"role": "system", "content": "Classify {{ email }}"}],
                "input": {"email": "a@b.c"}
            }),
        )
        .await
        .unwrap();
        store
            .deploy(
                "t",
                "a",
                &created.version_id.unwrap(),
                None,
                Environment::Production,
                "me",
            )
            .await
            .unwrap();
        // Wrong input.
        let e = resolve(
            &store,
            prod(1),
            json!({"model": "a/#1/prod", "messages": [], "input": {"email": 5}}),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code.as_deref(), Some("schema_mismatch"));
        let e = resolve(
            &store,
            prod(1),
            json!({"model": "a/#1/prod", "messages": []}),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code.as_deref(), Some("schema_mismatch"));
        // Another output schema.
        let e = resolve(
            &store,
            prod(1),
            json!({"model": "a/#1/prod", "messages": [], "input": {"email": "x"},
            "response_format": {"type": "json_object"}}),
        )
        .await
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("response_format"));
        // The deployed messages sent again, as templates or rendered.
        for content in ["Classify {{ email }}", "Classify x"] {
            let e = resolve(
                &store,
                prod(1),
                json!({"model": "a/#1/prod",
                "messages": [{"role": "system", "content": content}], "input": {"email": "x"}}),
            )
            .await
            .unwrap_err();
            assert_eq!(e.code.as_deref(), Some("duplicate_messages"), "{content}");
            assert_eq!(e.param.as_deref(), Some("messages[0]"));
        }
        // Another schema id or environment.
        let e = resolve(
            &store,
            prod(2),
            json!({"model": "a/#2/prod", "messages": [], "input": {"email": "x"}}),
        )
        .await
        .unwrap_err();
        assert!(e.message.contains("a/#1/production"), "{}", e.message);
    }

    #[test]
    fn extra_body_environment_and_schema_id_name_a_deployment() {
        let model = Target::Model("m".into());
        assert_eq!(target_of(model.clone(), None, None).unwrap(), model);
        assert_eq!(
            target_of(model.clone(), Some("prod"), Some(3)).unwrap(),
            prod(3)
        );
        assert!(target_of(model.clone(), Some("prod"), None).is_err());
        assert!(target_of(model.clone(), None, Some(1)).is_err());
        assert!(target_of(model, Some("qa"), Some(1)).is_err());
    }
}
