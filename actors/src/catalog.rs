//! The model catalog: which models exist, under which names, which providers serve them and at
//! what price. Compiled once from `config/catalog.toml` plus the user's `[models.*]` entries.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, GatewayError};

/// Prices per million tokens.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
pub struct Prices {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    /// Prompt tokens read from the provider's prompt cache (default: the input price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_mtok: Option<f64>,
    /// Prompt tokens written to the provider's prompt cache (Anthropic; default: input price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_mtok: Option<f64>,
    /// Prices that apply to the whole call once its prompt exceeds a size (e.g. >200k tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_context: Option<LongContextPrices>,
}

/// A long-context price tier.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
pub struct LongContextPrices {
    /// The tier applies when prompt tokens are above this.
    pub threshold_tokens: u64,
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_mtok: Option<f64>,
}

/// Fallback models by error class, tried in order when `use_fallback` is `auto`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Fallbacks {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limit: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub structured_output: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub context_exceeded: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content_moderation: Vec<String>,
    /// Any other provider failure (server errors, timeouts, overload).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unavailable: Vec<String>,
}

/// What a model can do.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Supports {
    #[serde(default)]
    pub structured_output: bool,
    #[serde(default)]
    pub json_mode: bool,
    #[serde(default)]
    pub tools: bool,
    #[serde(default)]
    pub parallel_tools: bool,
    #[serde(default)]
    pub images: bool,
    #[serde(default)]
    pub pdf: bool,
    #[serde(default)]
    pub audio: bool,
    #[serde(default)]
    pub reasoning: bool,
}

/// One provider serving a model.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProviderOffer {
    /// Name of the provider in config (`[providers.<name>]`).
    pub provider: String,
    /// The provider's id for the model.
    pub model: String,
    pub prices: Prices,
}

/// A model of the catalog.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelEntry {
    pub id: String,
    pub display_name: String,
    pub aliases: Vec<String>,
    pub context_window: Option<u64>,
    pub max_output_tokens: Option<u64>,
    pub release_date: Option<String>,
    pub supports: Supports,
    /// In order of preference.
    pub providers: Vec<ProviderOffer>,
    pub fallbacks: Fallbacks,
    /// For an embedding model (answers `/v1/embeddings`, not chat): its vectors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding: Option<EmbeddingSpec>,
}

/// What an embedding model's vectors are.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingSpec {
    /// The length of its vectors.
    pub dimensions: u32,
    /// Whether a request's `dimensions` may ask for shorter vectors.
    #[serde(default)]
    pub shortens: bool,
}

/// A `model` string resolved to a catalog entry.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    pub entry: Arc<ModelEntry>,
    /// From a `-low`/`-medium`/`-high` suffix on the model id.
    pub reasoning_effort: Option<String>,
}

const EFFORT_SUFFIXES: [&str; 4] = ["minimal", "low", "medium", "high"];

/// All models, indexed by id and alias.
#[derive(Debug, Default)]
pub struct Catalog {
    models: Vec<Arc<ModelEntry>>,
    by_name: HashMap<String, usize>,
}

/// Longest name [`Catalog::suggest`] compares with the catalog.
const MAX_SUGGESTED_NAME_BYTES: usize = 128;

impl Catalog {
    /// Builds the catalog; an alias that collides with another model's id or alias is an error.
    pub fn new(models: Vec<ModelEntry>) -> Result<Catalog, String> {
        let mut catalog = Catalog::default();
        for model in models {
            let index = catalog.models.len();
            for name in std::iter::once(&model.id).chain(model.aliases.iter()) {
                if let Some(previous) = catalog.by_name.insert(name.clone(), index) {
                    if previous != index {
                        return Err(format!(
                            "model name `{name}` is used by both `{}` and `{}`",
                            catalog.models[previous].id, model.id
                        ));
                    }
                }
            }
            catalog.models.push(Arc::new(model));
        }
        Ok(catalog)
    }

    pub fn models(&self) -> &[Arc<ModelEntry>] {
        &self.models
    }

    pub fn get(&self, name: &str) -> Option<&Arc<ModelEntry>> {
        self.by_name.get(name).map(|&i| &self.models[i])
    }

    /// Resolves an id or alias, with an optional reasoning-effort suffix
    /// (`o3-mini-latest-medium`). Unknown names are a 404 `model_not_found` with suggestions.
    pub fn resolve(&self, name: &str) -> Result<ResolvedModel, GatewayError> {
        if let Some(entry) = self.get(name) {
            return Ok(ResolvedModel {
                entry: entry.clone(),
                reasoning_effort: None,
            });
        }
        for effort in EFFORT_SUFFIXES {
            if let Some(base) = name.strip_suffix(effort).and_then(|b| b.strip_suffix('-')) {
                if let Some(entry) = self.get(base).filter(|e| e.supports.reasoning) {
                    return Ok(ResolvedModel {
                        entry: entry.clone(),
                        reasoning_effort: Some(effort.to_string()),
                    });
                }
            }
        }
        let suggestions = self.suggest(name, 3);
        let hint = if suggestions.is_empty() {
            String::new()
        } else {
            format!(" Did you mean {}?", suggestions.join(", "))
        };
        Err(GatewayError::new(
            ErrorKind::ModelNotFound,
            format!(
                "The model `{}` does not exist in the catalog.{hint} GET /v1/models lists every model.",
                crate::error::excerpt(name, 64)
            ),
        )
        .with_param("model")
        .with_extra(serde_json::json!({ "suggestions": suggestions })))
    }

    /// The closest known names, best first. Names longer than any model id could be get none:
    /// comparing costs time in proportion to the name's length, for every id of the catalog.
    pub fn suggest(&self, name: &str, limit: usize) -> Vec<String> {
        if name.len() > MAX_SUGGESTED_NAME_BYTES {
            return Vec::new();
        }
        let lowered = name.to_ascii_lowercase();
        let mut scored: Vec<(f64, &str)> = self
            .by_name
            .keys()
            .map(|candidate| {
                let mut score = strsim::jaro_winkler(&lowered, candidate);
                if candidate.contains(&lowered) {
                    score += 0.2;
                }
                (score, candidate.as_str())
            })
            .filter(|(score, _)| *score > 0.7)
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
        let mut out: Vec<String> = Vec::new();
        for (_, candidate) in scored {
            // Suggest the canonical id, once.
            let id = self
                .get(candidate)
                .map(|m| m.id.clone())
                .unwrap_or_default();
            if !out.contains(&id) {
                out.push(id);
            }
            if out.len() == limit {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, aliases: &[&str], reasoning: bool) -> ModelEntry {
        ModelEntry {
            id: id.into(),
            display_name: id.into(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            context_window: None,
            max_output_tokens: None,
            release_date: None,
            supports: Supports {
                reasoning,
                ..Supports::default()
            },
            providers: vec![],
            fallbacks: Fallbacks::default(),
            embedding: None,
        }
    }

    fn catalog() -> Catalog {
        Catalog::new(vec![
            entry("gpt-4o-mini-latest", &["gpt-4o-mini"], false),
            entry("o3-mini-latest", &["o3-mini"], true),
            entry("mock-echo", &[], false),
        ])
        .unwrap()
    }

    #[test]
    fn resolves_alias_and_effort_suffix() {
        let c = catalog();
        assert_eq!(
            c.resolve("gpt-4o-mini").unwrap().entry.id,
            "gpt-4o-mini-latest"
        );
        let r = c.resolve("o3-mini-latest-medium").unwrap();
        assert_eq!(r.entry.id, "o3-mini-latest");
        assert_eq!(r.reasoning_effort.as_deref(), Some("medium"));
        // No effort suffix on a model without reasoning.
        assert!(c.resolve("gpt-4o-mini-latest-high").is_err());
    }

    #[test]
    fn unknown_model_suggests_closest() {
        let err = catalog().resolve("gpt-4o-mni").unwrap_err();
        assert_eq!(err.kind, ErrorKind::ModelNotFound);
        assert_eq!(
            err.extra.as_ref().unwrap()["suggestions"][0],
            "gpt-4o-mini-latest"
        );
    }

    #[test]
    fn a_huge_unknown_name_is_neither_compared_nor_echoed() {
        let name = "gpt-4o-mini".repeat(100_000);
        let err = catalog().resolve(&name).unwrap_err();
        assert_eq!(err.kind, ErrorKind::ModelNotFound);
        assert_eq!(
            err.extra.as_ref().unwrap()["suggestions"],
            serde_json::json!([])
        );
        assert!(err.message.len() < 400, "{}", err.message.len());
    }

    #[test]
    fn alias_collision_is_an_error() {
        let err = Catalog::new(vec![entry("a", &["x"], false), entry("b", &["x"], false)]);
        assert!(err.is_err());
    }
}
