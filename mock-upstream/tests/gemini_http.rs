//! End-to-end tests of the Gemini API / Vertex AI routes and Google's token endpoints over
//! real HTTP.

use std::time::Duration;

use flowgate_mock_upstream::MockUpstream;
use serde_json::{json, Value};

const GEMINI_PATH: &str = "/v1beta/models";
const VERTEX_PATH: &str = "/v1/projects/my-project/locations/us-central1/publishers/google/models";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// `POST {root}{GEMINI_PATH}/{model}:{method}` with an API key.
async fn gemini(mock: &MockUpstream, model: &str, method: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}{GEMINI_PATH}/{model}:{method}", mock.url()))
        .header("x-goog-api-key", "gemini-test-key")
        .json(body)
        .send()
        .await
        .unwrap()
}

fn user(text: &str) -> Value {
    json!({
        "systemInstruction": {"parts": [{"text": "You are terse."}]},
        "contents": [{"role": "user", "parts": [{"text": text}]}]
    })
}

/// Reads a body chunk by chunk until it ends or fails; returns the text and whether it
/// failed.
async fn read_all(mut response: reqwest::Response) -> (String, bool) {
    let mut out = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => out.extend_from_slice(&chunk),
            Ok(None) => return (String::from_utf8(out).unwrap(), false),
            Err(_) => return (String::from_utf8(out).unwrap(), true),
        }
    }
}

/// The `data:` payloads of an SSE body framed with `\r\n\r\n`.
fn sse_data(body: &str) -> Vec<Value> {
    body.split("\r\n\r\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let data = e
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("bad event {e:?}"));
            serde_json::from_str(data).unwrap()
        })
        .collect()
}

fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

fn jwt(claims: &Value) -> String {
    format!(
        "{}.{}.{}",
        b64url(
            json!({"alg": "RS256", "typ": "JWT", "kid": "k1"})
                .to_string()
                .as_bytes()
        ),
        b64url(claims.to_string().as_bytes()),
        b64url(&[7u8; 256])
    )
}

#[tokio::test]
async fn generate_content_answers_in_geminis_shape() {
    let mock = MockUpstream::start();
    let response = gemini(
        &mock,
        "gemini-2.0-flash",
        "generateContent",
        &user("Hello there, mock!"),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: Value = response.json().await.unwrap();
    let candidate = &body["candidates"][0];
    assert_eq!(candidate["content"]["role"], "model");
    assert_eq!(
        candidate["content"]["parts"],
        json!([{"text": "Hello there, mock!"}])
    );
    assert_eq!(candidate["finishReason"], "STOP");
    assert_eq!(candidate["index"], 0);
    // "You are terse." + "Hello there, mock!" = 14 + 18 chars → 8 tokens; 18 chars → 5.
    assert_eq!(
        body["usageMetadata"],
        json!({"promptTokenCount": 8, "candidatesTokenCount": 5, "totalTokenCount": 13,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 8}]})
    );
    assert_eq!(body["modelVersion"], "gemini-2.0-flash");
    assert_eq!(body["responseId"].as_str().unwrap().len(), 24);
    assert!(body.get("createTime").is_none());

    let requests = mock.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].path,
        "/v1beta/models/gemini-2.0-flash:generateContent"
    );
    assert_eq!(requests[0].headers["x-goog-api-key"], "gemini-test-key");
    assert_eq!(requests[0].body, user("Hello there, mock!"));
}

#[tokio::test]
async fn credentials_are_required_per_api() {
    let mock = MockUpstream::start();
    let url = format!(
        "{}{GEMINI_PATH}/gemini-2.0-flash:generateContent",
        mock.url()
    );
    let response = client().post(&url).json(&user("x")).send().await.unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], 403);
    assert_eq!(body["error"]["status"], "PERMISSION_DENIED");
    // Google also accepts the key as a query parameter.
    let response = client()
        .post(format!("{url}?key=abc"))
        .json(&user("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let vertex = format!("{}{VERTEX_PATH}/gemini-2.5-pro:generateContent", mock.url());
    let response = client()
        .post(&vertex)
        .json(&user("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
    // An API key is no bearer token.
    let response = client()
        .post(&vertex)
        .header("x-goog-api-key", "k")
        .json(&user("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = client()
        .post(&vertex)
        .bearer_auth("ya29.token")
        .json(&user("Vertex says hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["candidates"][0]["content"]["parts"][0]["text"],
        "Vertex says hi"
    );
    assert_eq!(body["modelVersion"], "gemini-2.5-pro");
    assert!(body["createTime"].as_str().unwrap().ends_with('Z'));

    let response = client()
        .post(format!("{}/v1beta/nothing:generateContent", mock.url()))
        .header("x-goog-api-key", "k")
        .json(&user("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["status"], "NOT_FOUND");
}

#[tokio::test]
async fn invalid_requests_get_googles_400() {
    let mock = MockUpstream::start();
    for (body, expected) in [
        (json!({"contents": []}), "contents is not specified"),
        (
            json!({"contents": [{"role": "user", "parts": [{"text": "x"}]}], "messages": []}),
            "Unknown name \"messages\"",
        ),
        (
            json!({"contents": [{"role": "user", "parts": [{"text": "x"}]}],
                "tools": [{"functionDeclarations": [{"name": "f", "parameters": {
                    "type": "object", "properties": {"a": {"type": "string"}}, "$schema": "x"}}]}]}),
            "Unknown name \"$schema\"",
        ),
        (json!("not an object"), "Expected an object"),
    ] {
        let response = gemini(&mock, "gemini-2.0-flash", "generateContent", &body).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["status"], "INVALID_ARGUMENT");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains(expected),
            "{error}"
        );
    }
}

#[tokio::test]
async fn forced_function_calls_and_response_schemas() {
    let mock = MockUpstream::start();
    let tools = json!([{"functionDeclarations": [
        {"name": "get_weather", "description": "Weather", "parameters": {"type": "OBJECT",
            "properties": {"city": {"type": "STRING"}, "days": {"type": "INTEGER"}}, "required": ["city", "days"]}},
        {"name": "noop"}
    ]}]);
    let mut body = user("Weather in Paris?");
    body["tools"] = tools.clone();
    body["toolConfig"] =
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}});
    let response: Value = gemini(&mock, "gemini-2.0-flash", "generateContent", &body)
        .await
        .json()
        .await
        .unwrap();
    let parts = response["candidates"][0]["content"]["parts"]
        .as_array()
        .unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(
        parts[0],
        json!({"functionCall": {"name": "get_weather", "args": {"city": "string", "days": 0}}})
    );
    // Gemini has no tool-call finish reason.
    assert_eq!(response["candidates"][0]["finishReason"], "STOP");

    // ANY without names: every function.
    body["toolConfig"] = json!({"functionCallingConfig": {"mode": "ANY"}});
    let response: Value = gemini(&mock, "gemini-2.0-flash", "generateContent", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        response["candidates"][0]["content"]["parts"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // AUTO: text.
    body["toolConfig"] = json!({"functionCallingConfig": {"mode": "AUTO"}});
    let response: Value = gemini(&mock, "gemini-2.0-flash", "generateContent", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        response["candidates"][0]["content"]["parts"][0]["text"],
        "Weather in Paris?"
    );

    // A function result turn, then a structured answer over two candidates.
    let body = json!({
        "contents": [
            {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris", "days": 1}},
                "thoughtSignature": "skip_thought_signature_validator"}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp": 21}}}]}
        ],
        "tools": tools,
        "generationConfig": {"responseMimeType": "application/json", "candidateCount": 2,
            "responseSchema": {"type": "OBJECT", "properties": {"temp": {"type": "INTEGER"}, "sky": {"type": "STRING", "enum": ["clear", "cloudy"]}},
                "required": ["temp", "sky"]}}
    });
    let response: Value = gemini(&mock, "gemini-2.0-flash", "generateContent", &body)
        .await
        .json()
        .await
        .unwrap();
    let candidates = response["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 2);
    assert_eq!(candidates[1]["index"], 1);
    let text = candidates[0]["content"]["parts"][0]["text"]
        .as_str()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(text).unwrap(),
        json!({"temp": 0, "sky": "clear"})
    );
    let single = response["usageMetadata"]["candidatesTokenCount"]
        .as_u64()
        .unwrap();
    assert_eq!(single % 2, 0, "both candidates are counted");

    // responseJsonSchema (JSON Schema as it is) works too.
    let mut body = user("x");
    body["generationConfig"] = json!({"responseMimeType": "application/json",
        "responseJsonSchema": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": false}});
    let response: Value = gemini(&mock, "gemini-2.0-flash", "generateContent", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        response["candidates"][0]["content"]["parts"][0]["text"],
        "{\"ok\":true}"
    );
}

#[tokio::test]
async fn streams_are_sse_with_alt_sse_and_a_json_array_without() {
    let mock = MockUpstream::start();
    let text = "The quick brown fox jumps over the lazy dog";
    let response = gemini(
        &mock,
        "gemini-2.0-flash;chunk_chars=10",
        "streamGenerateContent?alt=sse",
        &user(text),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let (body, failed) = read_all(response).await;
    assert!(!failed);
    let chunks = sse_data(&body);
    assert_eq!(chunks.len(), 6, "5 text chunks and the closing one");
    let mut streamed = String::new();
    for chunk in &chunks {
        assert_eq!(chunk["modelVersion"], "gemini-2.0-flash");
        assert_eq!(chunk["responseId"], chunks[0]["responseId"]);
        streamed.push_str(
            chunk["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap(),
        );
    }
    assert_eq!(streamed, text);
    assert!(chunks[0]["candidates"][0].get("finishReason").is_none());
    assert!(chunks[0]["usageMetadata"]
        .get("candidatesTokenCount")
        .is_none());
    let last = chunks.last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(last["usageMetadata"]["candidatesTokenCount"], 11);

    // Without alt=sse: one JSON array of the same chunks.
    let response = gemini(
        &mock,
        "gemini-2.0-flash;chunk_chars=10",
        "streamGenerateContent",
        &user(text),
    )
    .await;
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let array: Vec<Value> = response.json().await.unwrap();
    assert_eq!(array.len(), 6);

    // Function calls stream whole, one chunk each.
    let mut body = user("x");
    body["tools"] = json!([{"functionDeclarations": [{"name": "a"}, {"name": "b"}]}]);
    body["toolConfig"] = json!({"functionCallingConfig": {"mode": "ANY"}});
    let response = gemini(
        &mock,
        "gemini-2.0-flash",
        "streamGenerateContent?alt=sse",
        &body,
    )
    .await;
    let chunks = sse_data(&read_all(response).await.0);
    assert_eq!(chunks.len(), 3);
    assert_eq!(
        chunks[1]["candidates"][0]["content"]["parts"][0]["functionCall"],
        json!({"name": "b", "args": {}})
    );

    // cut_after: the connection breaks before the closing chunk.
    let response = gemini(
        &mock,
        "gemini-2.0-flash;chunk_chars=10;cut_after=2",
        "streamGenerateContent?alt=sse",
        &user(text),
    )
    .await;
    let (body, failed) = read_all(response).await;
    assert!(failed);
    assert_eq!(sse_data(&body).len(), 2);
}

#[tokio::test]
async fn directives_script_failures_in_googles_format() {
    let mock = MockUpstream::start();
    let response = gemini(
        &mock,
        "gemini-2.0-flash;status=429;retry_after=7",
        "generateContent",
        &user("x"),
    )
    .await;
    assert_eq!(response.status(), 429);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(body["error"]["code"], 429);
    let details = body["error"]["details"].as_array().unwrap();
    assert!(details.iter().any(
        |d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo" && d["retryDelay"] == "7s"
    ));

    // URL-encoded directives are decoded.
    let response = gemini(
        &mock,
        "gemini-2.0-flash%3Bstatus%3D503",
        "generateContent",
        &user("x"),
    )
    .await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["status"], "UNAVAILABLE");

    for _ in 0..2 {
        let response = gemini(
            &mock,
            "gemini-2.0-flash;fail_first=2",
            "generateContent",
            &user("x"),
        )
        .await;
        assert_eq!(response.status(), 500);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["status"], "INTERNAL");
    }
    let response = gemini(
        &mock,
        "gemini-2.0-flash;fail_first=2",
        "generateContent",
        &user("x"),
    )
    .await;
    assert_eq!(response.status(), 200);

    let response = gemini(
        &mock,
        "gemini-2.0-flash;too_long",
        "generateContent",
        &user("x"),
    )
    .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("input token count"));

    let response = gemini(
        &mock,
        "gemini-2.0-flash;malformed",
        "generateContent",
        &user("x"),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(serde_json::from_str::<Value>(&response.text().await.unwrap()).is_err());

    let body: Value = gemini(
        &mock,
        "gemini-2.0-flash;block=SAFETY",
        "generateContent",
        &user("x"),
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(body.get("candidates").is_none());
    assert_eq!(body["promptFeedback"]["blockReason"], "SAFETY");

    let body: Value = gemini(
        &mock,
        "gemini-2.5-flash;thoughts=12;cached=4;finish=MAX_TOKENS",
        "generateContent",
        &user("Think about it"),
    )
    .await
    .json()
    .await
    .unwrap();
    let parts = body["candidates"][0]["content"]["parts"]
        .as_array()
        .unwrap();
    assert_eq!(parts[0]["thought"], true);
    assert_eq!(parts[1]["text"], "Think about it");
    assert_eq!(body["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert_eq!(body["usageMetadata"]["thoughtsTokenCount"], 12);
    assert_eq!(body["usageMetadata"]["cachedContentTokenCount"], 4);
}

#[tokio::test]
async fn token_endpoint_exchanges_service_account_jwts() {
    let mock = MockUpstream::start();
    let token_url = format!("{}/token", mock.url());
    let claims = json!({
        "iss": "sa@project.iam.gserviceaccount.com",
        "scope": "https://www.googleapis.com/auth/cloud-platform",
        "aud": token_url,
        "iat": 1_700_000_000u64,
        "exp": 1_700_003_600u64,
    });
    let exchange = |form: Vec<(&'static str, String)>| {
        let url = token_url.clone();
        async move { client().post(url).form(&form).send().await.unwrap() }
    };
    let grant = "urn:ietf:params:oauth:grant-type:jwt-bearer";
    let response = exchange(vec![
        ("grant_type", grant.into()),
        ("assertion", jwt(&claims)),
    ])
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body["access_token"]
        .as_str()
        .unwrap()
        .starts_with("mock-token-"));
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["token_type"], "Bearer");

    let response = exchange(vec![
        ("grant_type", "password".into()),
        ("assertion", jwt(&claims)),
    ])
    .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "unsupported_grant_type");

    let mut no_scope = claims.clone();
    no_scope.as_object_mut().unwrap().remove("scope");
    let response = exchange(vec![
        ("grant_type", grant.into()),
        ("assertion", jwt(&no_scope)),
    ])
    .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");

    let mut elsewhere = claims.clone();
    elsewhere["aud"] = json!("https://oauth2.googleapis.com/elsewhere");
    let response = exchange(vec![
        ("grant_type", grant.into()),
        ("assertion", jwt(&elsewhere)),
    ])
    .await;
    assert_eq!(response.status(), 400);

    let response = client()
        .post(&token_url)
        .json(&json!({"grant_type": grant}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    let requests = mock.requests();
    assert!(requests.iter().all(|r| r.path == "/token"));
    assert_eq!(requests.len(), 5);
}

#[tokio::test]
async fn metadata_server_requires_its_flavor_header() {
    let mock = MockUpstream::start();
    let url = format!(
        "{}/computeMetadata/v1/instance/service-accounts/default/token",
        mock.url()
    );
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 403);
    let response = client()
        .get(&url)
        .header("Metadata-Flavor", "Google")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["metadata-flavor"], "Google");
    let body: Value = response.json().await.unwrap();
    assert!(body["access_token"]
        .as_str()
        .unwrap()
        .starts_with("mock-token-"));
    assert_eq!(body["expires_in"], 3599);
    let response = client()
        .get(format!(
            "{}/computeMetadata/v1/project/project-id",
            mock.url()
        ))
        .header("Metadata-Flavor", "Google")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}
