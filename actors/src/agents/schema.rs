//! Schemas: the input schema is inferred from the `input` variables and their values, the
//! output schema comes from `response_format` and `tools`. Each agent numbers its distinct
//! (input, output) pairs 1, 2, 3… in order of first use; a deployment is per schema id, so a
//! client that calls `agent/#1/production` keeps getting answers of the shape it expects.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::{agent_prefix, bounded_insert, now_rfc3339, AgentStore};
use crate::error::GatewayError;
use crate::storage::SchemaAssignment;
use crate::wire::{ChatRequest, ResponseFormat};

/// One schema of an agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SchemaRecord {
    pub id: u32,
    /// JSON Schema of `input`; `null` for runs without input.
    pub input_schema: Value,
    /// JSON Schema of the answer (`response_format`), with `tools` when the request has tools;
    /// `null` for plain text.
    pub output_schema: Value,
    pub created_at: String,
}

/// Infers a JSON Schema from a value: types, object properties (all required) and the merged
/// schema of array items.
pub fn infer(value: &Value) -> Value {
    match value {
        Value::Null => json!({}),
        Value::Bool(_) => json!({"type": "boolean"}),
        Value::Number(n) if n.is_f64() => json!({"type": "number"}),
        Value::Number(_) => json!({"type": "integer"}),
        Value::String(_) => json!({"type": "string"}),
        Value::Array(items) => {
            let mut schema = json!({"type": "array"});
            let merged = items.iter().map(infer).reduce(|a, b| merge(&a, &b));
            if let Some(items) = merged {
                schema["items"] = items;
            }
            schema
        }
        Value::Object(map) => object_schema(map),
    }
}

fn object_schema(map: &Map<String, Value>) -> Value {
    let properties: Map<String, Value> = map.iter().map(|(k, v)| (k.clone(), infer(v))).collect();
    let required: Vec<&String> = map.keys().collect();
    json!({"type": "object", "properties": properties, "required": required})
}

/// The schema that admits what either admits, as narrow as this simple inference allows.
fn merge(a: &Value, b: &Value) -> Value {
    if a == b {
        return a.clone();
    }
    let (ta, tb) = (a.get("type"), b.get("type"));
    match (ta.and_then(Value::as_str), tb.and_then(Value::as_str)) {
        (Some("integer"), Some("number")) | (Some("number"), Some("integer")) => {
            json!({"type": "number"})
        }
        (Some("object"), Some("object")) => {
            let empty = Map::new();
            let pa = a["properties"].as_object().unwrap_or(&empty);
            let pb = b["properties"].as_object().unwrap_or(&empty);
            let mut properties = pa.clone();
            for (k, v) in pb {
                let merged = match pa.get(k) {
                    Some(existing) => merge(existing, v),
                    None => v.clone(),
                };
                properties.insert(k.clone(), merged);
            }
            // Required: what both have.
            let required: Vec<&String> = pa.keys().filter(|k| pb.contains_key(*k)).collect();
            json!({"type": "object", "properties": properties, "required": required})
        }
        (Some("array"), Some("array")) => match (a.get("items"), b.get("items")) {
            (Some(ia), Some(ib)) => json!({"type": "array", "items": merge(ia, ib)}),
            (Some(i), None) | (None, Some(i)) => json!({"type": "array", "items": i}),
            (None, None) => json!({"type": "array"}),
        },
        _ => json!({}),
    }
}

/// The input schema of a request: `null` without `input`.
pub fn input_schema(input: Option<&Map<String, Value>>) -> Value {
    match input {
        Some(input) => object_schema(input),
        None => Value::Null,
    }
}

/// The output schema of a request: the `response_format` schema (`{"type": "object"}` for JSON
/// mode, `null` for text), and with tools `{"response": …, "tools": {name: parameters}}`.
pub fn output_schema(request: &ChatRequest) -> Value {
    let response = match &request.response_format {
        Some(ResponseFormat::JsonSchema { json_schema }) => json_schema
            .schema
            .clone()
            .unwrap_or_else(|| json!({"type": "object"})),
        Some(ResponseFormat::JsonObject) => json!({"type": "object"}),
        Some(ResponseFormat::Text) | None => Value::Null,
    };
    match request.tools.as_deref() {
        Some(tools) if !tools.is_empty() => {
            let tools: Map<String, Value> = tools
                .iter()
                .map(|t| {
                    (
                        t.function.name.clone(),
                        t.function.parameters.clone().unwrap_or(Value::Null),
                    )
                })
                .collect();
            json!({"response": response, "tools": tools})
        }
        _ => response,
    }
}

/// JSON text with object keys sorted at every level: equal values, equal text.
pub fn canonical(value: &Value) -> String {
    fn write(value: &Value, out: &mut String) {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, key) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(key.clone()).to_string());
                    out.push(':');
                    write(&map[key], out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// Whether two schemas are the same, whatever the order of their keys.
pub fn same(a: &Value, b: &Value) -> bool {
    canonical(a) == canonical(b)
}

fn pair_digest(input: &Value, output: &Value) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(canonical(input).as_bytes());
    hasher.update([0]);
    hasher.update(canonical(output).as_bytes());
    hasher.finalize().into()
}

/// The in-memory key of a pair digest's schema id, or of a schema record.
fn memo_key(tenant: &str, agent: &str, kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = agent_prefix(tenant, agent);
    key.push(kind);
    key.extend_from_slice(rest);
    key
}

const BY_DIGEST: u8 = b'd';
const BY_ID: u8 = b's';

impl AgentStore {
    /// The agent's schema id for a request's input and output schema, assigned (the next
    /// integer) on first use. An input that an existing schema with the same output already
    /// admits (an empty list where items were strings, an extra variable) keeps that schema's
    /// id; concurrent first uses of one pair agree on one id, with no gap.
    pub async fn schema_id(
        &self,
        tenant: &str,
        agent: &str,
        input: Option<&Map<String, Value>>,
        output: &Value,
    ) -> Result<u32, GatewayError> {
        let inferred = input_schema(input);
        let digest = if inferred.is_null() && output.is_null() {
            // Plain text without input, the most common pair: its digest is a constant.
            static PLAIN: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
            *PLAIN.get_or_init(|| pair_digest(&Value::Null, &Value::Null))
        } else {
            pair_digest(&inferred, output)
        };
        let digest_key = memo_key(tenant, agent, BY_DIGEST, &digest);
        if let Some(id) = self.inner.cache.schema_ids.get(&digest_key) {
            return Ok(*id);
        }
        let schemas = &self.inner.schemas;
        let id = match schemas.id_of(tenant, agent, &digest).await? {
            Some(id) => id,
            None => {
                let created_at = now_rfc3339();
                let assignment = match self.admitting_schema(tenant, agent, input, output).await? {
                    Some(id) => SchemaAssignment::Existing(id),
                    None => SchemaAssignment::New {
                        input_schema: &inferred,
                        output_schema: output,
                        created_at: &created_at,
                    },
                };
                schemas.assign(tenant, agent, &digest, assignment).await?
            }
        };
        bounded_insert(&self.inner.cache.schema_ids, digest_key, id);
        Ok(id)
    }

    /// The first schema of the agent with this output whose input schema admits `input`.
    async fn admitting_schema(
        &self,
        tenant: &str,
        agent: &str,
        input: Option<&Map<String, Value>>,
        output: &Value,
    ) -> Result<Option<u32>, GatewayError> {
        for schema in self.schemas(tenant, agent).await? {
            if !same(&schema.output_schema, output) {
                continue;
            }
            let admits = match (&schema.input_schema, input) {
                (Value::Null, None) => true,
                (Value::Null, Some(_)) | (_, None) => false,
                (expected, Some(input)) => self
                    .inner
                    .cache
                    .validators
                    .validate(expected, &Value::Object(input.clone()))
                    .is_ok(),
            };
            if admits {
                return Ok(Some(schema.id));
            }
        }
        Ok(None)
    }

    /// Schema `id` of the agent.
    pub async fn schema(
        &self,
        tenant: &str,
        agent: &str,
        id: u32,
    ) -> Result<Option<Arc<SchemaRecord>>, GatewayError> {
        let record_key = memo_key(tenant, agent, BY_ID, &id.to_be_bytes());
        if let Some(record) = self.inner.cache.schemas.get(&record_key) {
            return Ok(Some(record.clone()));
        }
        let Some(record) = self.inner.schemas.get(tenant, agent, id).await? else {
            return Ok(None);
        };
        let record = Arc::new(record);
        bounded_insert(&self.inner.cache.schemas, record_key, record.clone());
        Ok(Some(record))
    }

    /// Every schema of the agent, by id.
    pub async fn schemas(
        &self,
        tenant: &str,
        agent: &str,
    ) -> Result<Vec<SchemaRecord>, GatewayError> {
        Ok(self.inner.schemas.list(tenant, agent).await?)
    }

    /// Checks `input` against the schema's input schema: the 400 a deployment caller gets when
    /// its input is not what the deployed version was made for.
    pub fn check_input(
        &self,
        agent: &str,
        schema: &SchemaRecord,
        input: Option<&Map<String, Value>>,
    ) -> Result<(), GatewayError> {
        let mismatch = |message: String| {
            GatewayError::invalid(message)
                .with_param("input")
                .with_code("schema_mismatch")
                .with_extra(json!({"expected_input_schema": schema.input_schema}))
        };
        match (&schema.input_schema, input) {
            (Value::Null, None) => Ok(()),
            (Value::Null, Some(input)) if input.is_empty() => Ok(()),
            (Value::Null, Some(_)) => Err(mismatch(format!(
                "schema #{} of agent `{agent}` takes no `input`, but the request sends some",
                schema.id
            ))),
            (_, None) => Err(mismatch(format!(
                "schema #{} of agent `{agent}` expects `input` (the variables of its templates); \
                 send it in the request body (the OpenAI SDK's extra_body={{\"input\": {{…}}}})",
                schema.id
            ))),
            (expected, Some(input)) => self
                .inner
                .cache
                .validators
                .validate(expected, &Value::Object(input.clone()))
                .map_err(|problems| {
                    mismatch(format!(
                        "`input` does not match schema #{} of agent `{agent}`: {problems}",
                        schema.id
                    ))
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, AgentStore) {
        let (dir, storage) = crate::storage::temporary();
        (dir, AgentStore::open(&storage))
    }

    /// Runs `work` on a runtime of this thread's own.
    fn block_on<F: std::future::Future>(work: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(work)
    }

    #[test]
    fn infers_types_properties_and_items() {
        let schema = infer(&json!({
            "name": "Ann", "age": 31, "score": 0.5, "ok": true, "none": null,
            "tags": ["a", "b"], "points": [1, 2.5], "people": [{"n": "a", "x": 1}, {"n": "b"}]
        }));
        assert_eq!(schema["properties"]["name"], json!({"type": "string"}));
        assert_eq!(schema["properties"]["age"], json!({"type": "integer"}));
        assert_eq!(schema["properties"]["score"], json!({"type": "number"}));
        assert_eq!(schema["properties"]["ok"], json!({"type": "boolean"}));
        assert_eq!(schema["properties"]["none"], json!({}));
        assert_eq!(
            schema["properties"]["tags"]["items"],
            json!({"type": "string"})
        );
        assert_eq!(
            schema["properties"]["points"]["items"],
            json!({"type": "number"})
        );
        assert_eq!(
            schema["properties"]["people"]["items"]["required"],
            json!(["n"])
        );
        assert_eq!(schema["required"].as_array().unwrap().len(), 8);
    }

    #[test]
    fn output_schema_from_response_format_and_tools() {
        let request: ChatRequest = serde_json::from_value(json!({
            "model": "m", "messages": [],
            "response_format": {"type": "json_schema", "json_schema": {"name": "A", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}}
        }))
        .unwrap();
        assert_eq!(output_schema(&request)["properties"]["a"]["type"], "string");
        let request: ChatRequest = serde_json::from_value(json!({
            "model": "m", "messages": [],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
        }))
        .unwrap();
        assert_eq!(
            output_schema(&request)["tools"]["f"],
            json!({"type": "object"})
        );
        let plain: ChatRequest =
            serde_json::from_value(json!({"model": "m", "messages": []})).unwrap();
        assert_eq!(output_schema(&plain), Value::Null);
    }

    #[test]
    fn canonical_ignores_key_order() {
        let a: Value =
            serde_json::from_str(r#"{"b": 1, "a": {"d": [1, {"y": 1, "x": 2}], "c": 2}}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a": {"c": 2, "d": [1, {"x": 2, "y": 1}]}, "b": 1}"#).unwrap();
        assert!(same(&a, &b));
        assert_eq!(
            canonical(&a),
            r#"{"a":{"c":2,"d":[1,{"x":2,"y":1}]},"b":1}"#
        );
    }

    fn obj(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[actix_rt::test]
    async fn ids_are_per_agent_sequential_and_stable_across_reopen() {
        let (dir, store) = store();
        let a = obj(json!({"x": 1}));
        let b = obj(json!({"x": "s"}));
        let null = Value::Null;
        assert_eq!(
            store
                .schema_id("t", "agent", Some(&a), &null)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .schema_id("t", "agent", Some(&b), &null)
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            store
                .schema_id("t", "agent", Some(&a), &null)
                .await
                .unwrap(),
            1
        );
        // No input, another output: other schemas.
        assert_eq!(store.schema_id("t", "agent", None, &null).await.unwrap(), 3);
        let object = json!({"type": "object"});
        assert_eq!(
            store
                .schema_id("t", "agent", Some(&a), &object)
                .await
                .unwrap(),
            4
        );
        // Another agent, another tenant: their own numbering.
        assert_eq!(
            store
                .schema_id("t", "other", Some(&b), &null)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .schema_id("u", "agent", Some(&b), &null)
                .await
                .unwrap(),
            1
        );
        let record = store.schema("t", "agent", 2).await.unwrap().unwrap();
        assert_eq!(record.input_schema, input_schema(Some(&b)));
        drop(store);
        let store = AgentStore::open(&crate::storage::in_dir(dir.path()));
        assert_eq!(
            store
                .schema_id("t", "agent", Some(&b), &null)
                .await
                .unwrap(),
            2
        );
        assert_eq!(store.schemas("t", "agent").await.unwrap().len(), 4);
    }

    #[actix_rt::test]
    async fn an_input_an_existing_schema_admits_keeps_its_id() {
        let (_dir, store) = store();
        let null = Value::Null;
        let first = obj(json!({"name": "a", "tags": ["x"]}));
        assert_eq!(
            store
                .schema_id("t", "a", Some(&first), &null)
                .await
                .unwrap(),
            1
        );
        // An empty list, an extra variable: still schema 1.
        let empty = obj(json!({"name": "b", "tags": []}));
        assert_eq!(
            store
                .schema_id("t", "a", Some(&empty), &null)
                .await
                .unwrap(),
            1
        );
        let extra = obj(json!({"name": "b", "tags": [], "more": 1}));
        assert_eq!(
            store
                .schema_id("t", "a", Some(&extra), &null)
                .await
                .unwrap(),
            1
        );
        // A variable of another type, or one missing: a new schema.
        let other = obj(json!({"name": 3, "tags": []}));
        assert_eq!(
            store
                .schema_id("t", "a", Some(&other), &null)
                .await
                .unwrap(),
            2
        );
        let missing = obj(json!({"tags": []}));
        assert_eq!(
            store
                .schema_id("t", "a", Some(&missing), &null)
                .await
                .unwrap(),
            3
        );
        assert_eq!(store.schemas("t", "a").await.unwrap().len(), 3);
    }

    #[test]
    fn concurrent_first_uses_agree_without_gaps() {
        let (_dir, store) = store();
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let output = json!({"n": i % 4});
                    block_on(store.schema_id("t", "a", None, &output)).unwrap()
                })
            })
            .collect();
        let mut ids: Vec<u32> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids, vec![1, 2, 3, 4]);
    }

    #[actix_rt::test]
    async fn input_is_checked_against_the_schema() {
        let (_dir, store) = store();
        let schema = SchemaRecord {
            id: 1,
            input_schema: input_schema(Some(json!({"name": "a", "age": 1}).as_object().unwrap())),
            output_schema: Value::Null,
            created_at: String::new(),
        };
        let ok = json!({"name": "b", "age": 2, "extra": true});
        assert!(store.check_input("a", &schema, ok.as_object()).is_ok());
        let bad = json!({"name": "b", "age": "old"});
        let e = store
            .check_input("a", &schema, bad.as_object())
            .unwrap_err();
        assert_eq!(e.code.as_deref(), Some("schema_mismatch"));
        assert!(e.message.contains("age"), "{}", e.message);
        let e = store.check_input("a", &schema, None).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input"));
    }
}
