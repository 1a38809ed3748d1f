//! Parsing the `model` string: `<model>`, `<agent>/<model>` or `<agent>/#<schema_id>/<env>`.

use crate::error::GatewayError;

pub const DEFAULT_AGENT: &str = "default";

/// A deployment environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Dev,
    Staging,
    Production,
}

impl Environment {
    pub fn parse(value: &str) -> Option<Environment> {
        match value.to_ascii_lowercase().as_str() {
            "dev" | "development" => Some(Environment::Dev),
            "staging" => Some(Environment::Staging),
            "production" | "prod" => Some(Environment::Production),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Dev => "dev",
            Environment::Staging => "staging",
            Environment::Production => "production",
        }
    }
}

/// What the `model` string asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A catalog model id or alias (maybe with a reasoning-effort suffix).
    Model(String),
    /// The version deployed to an environment for a schema of the agent.
    Deployment {
        schema_id: u32,
        environment: Environment,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    pub agent: String,
    pub target: Target,
}

/// Agent names are slugs: lowercase letters, digits, `-` and `_`, up to 128 characters.
pub fn is_slug(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl ModelRef {
    /// Parses the `model` field. `agent_override` comes from `agent_id` or `metadata.agent_id`
    /// and is used when the model string names no agent.
    pub fn parse(model: &str, agent_override: Option<&str>) -> Result<ModelRef, GatewayError> {
        let model = model.trim();
        if model.is_empty() {
            return Err(GatewayError::invalid("`model` must not be empty").with_param("model"));
        }
        let (agent, rest) = match model.split_once('/') {
            Some((agent, rest)) => (Some(agent), rest),
            None => (None, model),
        };
        let target = if let Some(deployment) = rest.strip_prefix('#') {
            let (schema, env) = deployment.split_once('/').ok_or_else(|| {
                GatewayError::invalid(format!(
                    "`{model}` names a deployment but no environment: use `<agent>/#<schema_id>/<dev|staging|production>`"
                ))
                .with_param("model")
            })?;
            let schema_id = schema.parse::<u32>().map_err(|_| {
                GatewayError::invalid(format!(
                    "`{schema}` in `{model}` is not a schema id (a positive integer)"
                ))
                .with_param("model")
            })?;
            let environment = Environment::parse(env).ok_or_else(|| {
                GatewayError::invalid(format!(
                    "`{env}` is not an environment: use dev, staging or production"
                ))
                .with_param("model")
            })?;
            if agent.is_none() {
                return Err(GatewayError::invalid(
                    "a deployment needs an agent: `<agent>/#<schema_id>/<environment>`",
                )
                .with_param("model"));
            }
            Target::Deployment {
                schema_id,
                environment,
            }
        } else {
            // The last segment is the model id (`agent/vendor/model` keeps `agent`).
            let id = rest.rsplit('/').next().unwrap_or(rest);
            if id.is_empty() {
                return Err(
                    GatewayError::invalid(format!("`{model}` has no model id")).with_param("model")
                );
            }
            Target::Model(id.to_string())
        };
        let agent = agent
            .or(agent_override)
            .unwrap_or(DEFAULT_AGENT)
            .to_string();
        if !is_slug(&agent) {
            return Err(GatewayError::invalid(format!(
                "agent name `{agent}` must be a slug: lowercase letters, digits, `-` and `_`"
            ))
            .with_param("model"));
        }
        Ok(ModelRef { agent, target })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        let r = ModelRef::parse("gpt-4o-mini", None).unwrap();
        assert_eq!(r.agent, "default");
        assert_eq!(r.target, Target::Model("gpt-4o-mini".into()));

        let r = ModelRef::parse("user-info-extraction-agent/gpt-4o-mini-latest", None).unwrap();
        assert_eq!(r.agent, "user-info-extraction-agent");
        assert_eq!(r.target, Target::Model("gpt-4o-mini-latest".into()));

        let r = ModelRef::parse("my-agent/#3/prod", None).unwrap();
        assert_eq!(
            r.target,
            Target::Deployment {
                schema_id: 3,
                environment: Environment::Production
            }
        );
    }

    #[test]
    fn agent_override_applies_only_without_prefix() {
        assert_eq!(ModelRef::parse("m", Some("x")).unwrap().agent, "x");
        assert_eq!(ModelRef::parse("a/m", Some("x")).unwrap().agent, "a");
    }

    #[test]
    fn rejects_bad_forms() {
        assert!(ModelRef::parse("", None).is_err());
        assert!(ModelRef::parse("Bad Agent/m", None).is_err());
        assert!(ModelRef::parse("a/#x/prod", None).is_err());
        assert!(ModelRef::parse("a/#1/qa", None).is_err());
        assert!(ModelRef::parse("a/", None).is_err());
    }

    mod properties {
        use super::*;
        use crate::error::ErrorKind;
        use proptest::prelude::*;

        proptest! {
            // Any string: parsed into a slug agent and a target, or a 400 naming `model`.
            #[test]
            fn any_model_string_parses_or_is_a_400(
                model in prop_oneof![
                    ".{0,300}",
                    "[a-z0-9#/_ -]{0,40}",
                    "([a-z]{1,6}/){0,3}#?[0-9]{0,3}/?[a-z]{0,12}",
                ],
                agent in proptest::option::of("[a-zA-Z_-]{0,10}"),
            ) {
                match ModelRef::parse(&model, agent.as_deref()) {
                    Ok(r) => {
                        prop_assert!(is_slug(&r.agent), "{r:?}");
                        if let Target::Model(id) = &r.target {
                            prop_assert!(!id.is_empty() && !id.contains('/'));
                        }
                    }
                    Err(e) => {
                        prop_assert_eq!(e.kind, ErrorKind::InvalidRequest);
                        prop_assert_eq!(e.param.as_deref(), Some("model"));
                    }
                }
            }
        }
    }
}
