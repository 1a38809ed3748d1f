//! End-to-end tests of the Bedrock Converse routes over real HTTP: SigV4 header checks,
//! model ids in the path, Converse validation, JSON answers, event-stream answers (decoded
//! with CRC checks), Bedrock error bodies and the scripted faults.

use std::time::Duration;

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::Message;
use bytes::BytesMut;
use flowgate_mock_upstream::MockUpstream;
use serde_json::{json, Value};

const AUTH: &str =
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/bedrock/aws4_request, \
                    SignedHeaders=content-type;host;x-amz-date, \
                    Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const CLAUDE: &str = "anthropic.claude-3-5-haiku-20241022-v1%3A0";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn url(mock: &MockUpstream, model: &str, stream: bool) -> String {
    let operation = if stream {
        "converse-stream"
    } else {
        "converse"
    };
    format!("{}/model/{model}/{operation}", mock.url())
}

async fn post(mock: &MockUpstream, model: &str, stream: bool, body: Value) -> reqwest::Response {
    client()
        .post(url(mock, model, stream))
        .header("authorization", AUTH)
        .header("x-amz-date", "20240101T000000Z")
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn hello(text: &str) -> Value {
    json!({
        "system": [{"text": "You are terse."}],
        "messages": [{"role": "user", "content": [{"text": text}]}]
    })
}

fn weather_tools(choice: Value) -> Value {
    json!({
        "tools": [{"toolSpec": {"name": "get_weather", "description": "Weather",
            "inputSchema": {"json": {"type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city", "days"]}}}}],
        "toolChoice": choice
    })
}

fn header<'a>(message: &'a Message, name: &str) -> &'a str {
    message
        .headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| h.value().as_string().ok())
        .map(|s| s.as_str())
        .unwrap_or_else(|| panic!("no {name} header"))
}

/// Decodes an event-stream body (CRCs checked); also says whether the body broke off.
async fn frames(mut response: reqwest::Response) -> (Vec<Message>, bool) {
    let mut buffer = BytesMut::new();
    let mut decoder = MessageFrameDecoder::new();
    let mut out = Vec::new();
    let broke = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => buffer.extend_from_slice(&chunk),
            Ok(None) => break false,
            Err(_) => break true,
        }
        while let DecodedFrame::Complete(message) = decoder.decode_frame(&mut buffer).unwrap() {
            out.push(message);
        }
    };
    assert!(buffer.is_empty() || broke, "trailing bytes");
    (out, broke)
}

fn event_types(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| match header(m, ":message-type") {
            "event" => header(m, ":event-type").to_string(),
            _ => format!("!{}", header(m, ":exception-type")),
        })
        .collect()
}

fn payload(message: &Message) -> Value {
    serde_json::from_slice(message.payload()).unwrap()
}

#[tokio::test]
async fn converse_answers_in_converse_shape() {
    let mock = MockUpstream::start();
    let response = post(&mock, CLAUDE, false, hello("Hello, Bedrock!")).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-amzn-requestid"));
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["output"]["message"]["role"], "assistant");
    assert_eq!(
        body["output"]["message"]["content"],
        json!([{"text": "Hello, Bedrock!"}])
    );
    assert_eq!(body["stopReason"], "end_turn");
    // "You are terse." (14) + "Hello, Bedrock!" (15) = 29 chars → 8 tokens; 15 → 4.
    assert_eq!(
        body["usage"],
        json!({"inputTokens": 8, "outputTokens": 4, "totalTokens": 12})
    );
    assert!(body["metrics"]["latencyMs"].is_u64());
    // The recorded path keeps the encoding.
    assert_eq!(
        mock.requests()[0].path,
        "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse"
    );
}

#[tokio::test]
async fn requests_without_a_sigv4_header_are_denied() {
    let mock = MockUpstream::start();
    let send = |auth: Option<&'static str>, date: Option<&'static str>, token: bool| {
        let mut request = client().post(url(&mock, CLAUDE, false)).json(&hello("x"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        if let Some(date) = date {
            request = request.header("x-amz-date", date);
        }
        if token {
            request = request.header("x-amz-security-token", "tok");
        }
        request.send()
    };
    for (auth, date, token, error_type) in [
        (None, None, false, "AccessDeniedException"),
        (Some("Bearer sk-1"), None, false, "AccessDeniedException"),
        (
            Some("AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=00"),
            Some("20240101T000000Z"),
            false,
            "IncompleteSignatureException",
        ),
        (Some(AUTH), None, false, "IncompleteSignatureException"),
        (Some(AUTH), Some("20240102T000000Z"), false, "IncompleteSignatureException"),
        (Some(AUTH), Some("20240101T000000Z"), true, "IncompleteSignatureException"),
    ] {
        let response = send(auth, date, token).await.unwrap();
        assert_eq!(response.status(), 403, "{auth:?} {date:?}");
        let header = response.headers()["x-amzn-errortype"].to_str().unwrap();
        assert!(header.starts_with(&format!("{error_type}:")), "{header}");
        let body: Value = response.json().await.unwrap();
        assert!(body["message"].is_string());
    }
    let response = send(Some(AUTH), Some("20240101T000000Z"), false)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn forced_tool_choice_answers_with_tool_use() {
    let mock = MockUpstream::start();
    let mut body = hello("Weather in Paris for 3 days?");
    body["toolConfig"] = weather_tools(json!({"tool": {"name": "get_weather"}}));
    let response = post(&mock, CLAUDE, false, body.clone()).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["stopReason"], "tool_use");
    let block = &answer["output"]["message"]["content"][0]["toolUse"];
    assert!(block["toolUseId"].as_str().unwrap().starts_with("tooluse_"));
    assert_eq!(block["name"], "get_weather");
    assert_eq!(block["input"], json!({"city": "string", "days": 0}));

    // A follow-up turn with the tool result answers with text.
    let id = block["toolUseId"].clone();
    body["messages"] = json!([
        {"role": "user", "content": [{"text": "Weather in Paris?"}]},
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": id, "name": "get_weather", "input": {"city": "Paris", "days": 3}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": id, "content": [{"json": {"temp": 21}}]}}, {"text": "Summarize"}]}
    ]);
    body["toolConfig"]["toolChoice"] = json!({"auto": {}});
    let answer: Value = post(&mock, CLAUDE, false, body).await.json().await.unwrap();
    assert_eq!(
        answer["output"]["message"]["content"][0]["text"],
        "Summarize"
    );
    assert_eq!(answer["stopReason"], "end_turn");

    // `any` calls every tool.
    let mut body = hello("x");
    body["toolConfig"] = weather_tools(json!({"any": {}}));
    let answer: Value = post(&mock, "amazon.nova-lite-v1%3A0", false, body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["stopReason"], "tool_use");
}

#[tokio::test]
async fn invalid_conversations_get_validation_errors() {
    let mock = MockUpstream::start();
    let cases = [
        (json!({"messages": []}), "start with a user message"),
        (
            json!({"messages": [{"role": "assistant", "content": [{"text": "hi"}]}]}),
            "start with a user message",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"text": "a"}]}, {"role": "user", "content": [{"text": "b"}]}]}),
            "alternate",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"text": "  "}]}]}),
            "is blank",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"text": "a"}]},
                {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t", "name": "f", "input": {}}}]},
                {"role": "user", "content": [{"toolResult": {"toolUseId": "t", "content": [{"text": "1"}]}}]}]}),
            "toolConfig field must be defined",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"text": "a"},
                {"document": {"format": "pdf", "name": "report.pdf", "source": {"bytes": "JVBERg=="}}}]}]}),
            "document.name",
        ),
        (
            json!({"messages": [{"role": "user", "content": [
                {"image": {"format": "bmp", "source": {"bytes": "Qk0="}}}]}]}),
            "image.format",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"text": "a"}]}],
                "inferenceConfig": {"temperature": 1.5}}),
            "temperature",
        ),
    ];
    for (body, needle) in cases {
        let response = post(&mock, CLAUDE, false, body.clone()).await;
        assert_eq!(response.status(), 400, "{body}");
        assert!(response.headers()["x-amzn-errortype"]
            .to_str()
            .unwrap()
            .starts_with("ValidationException:"));
        let answer: Value = response.json().await.unwrap();
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message} / {needle}");
    }
    let response = client()
        .post(url(&mock, CLAUDE, false))
        .header("authorization", AUTH)
        .header("x-amz-date", "20240101T000000Z")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn scripted_statuses_use_bedrock_error_types() {
    let mock = MockUpstream::start();
    for (status, error_type) in [
        (400, "ValidationException"),
        (403, "AccessDeniedException"),
        (404, "ResourceNotFoundException"),
        (413, "ValidationException"),
        (424, "ModelErrorException"),
        (429, "ThrottlingException"),
        (500, "InternalServerException"),
        (503, "ServiceUnavailableException"),
    ] {
        let model = format!("{CLAUDE}%3Bstatus%3D{status}%3Bretry_after%3D2");
        for stream in [false, true] {
            let response = post(&mock, &model, stream, hello("x")).await;
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(response.headers()["retry-after"], "2");
            let header = response.headers()["x-amzn-errortype"].to_str().unwrap();
            assert!(header.starts_with(&format!("{error_type}:")), "{header}");
            let body: Value = response.json().await.unwrap();
            assert!(body["message"].as_str().unwrap().contains("mock upstream"));
        }
    }
    let body: Value = post(
        &mock,
        &format!("{CLAUDE}%3Bstatus%3D413"),
        false,
        hello("x"),
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(body["message"].as_str().unwrap().contains("too long"));
    // fail_first counts per decoded model string.
    let model = format!("{CLAUDE}%3Bfail_first%3D1");
    assert_eq!(post(&mock, &model, false, hello("x")).await.status(), 500);
    assert_eq!(post(&mock, &model, false, hello("x")).await.status(), 200);
}

#[tokio::test]
async fn max_tokens_cuts_the_answer() {
    let mock = MockUpstream::start();
    let mut body = hello("abcdefghijklmnopqrstuvwxyz");
    body["inferenceConfig"] = json!({"maxTokens": 2});
    let answer: Value = post(&mock, CLAUDE, false, body).await.json().await.unwrap();
    assert_eq!(answer["stopReason"], "max_tokens");
    assert_eq!(
        answer["output"]["message"]["content"][0]["text"],
        "abcdefgh"
    );
    assert_eq!(answer["usage"]["outputTokens"], 2);
}

#[tokio::test]
async fn converse_stream_sends_framed_events() {
    let mock = MockUpstream::start();
    let model = format!("{CLAUDE}%3Bchunk_chars%3D5");
    let response = post(&mock, &model, true, hello("The quick brown fox")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.amazon.eventstream"
    );
    let (messages, broke) = frames(response).await;
    assert!(!broke);
    assert_eq!(
        event_types(&messages),
        [
            "messageStart",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockStop",
            "messageStop",
            "metadata"
        ]
    );
    for message in &messages {
        assert_eq!(header(message, ":content-type"), "application/json");
    }
    let text: String = messages[1..5]
        .iter()
        .map(|m| payload(m)["delta"]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, "The quick brown fox");
    assert_eq!(payload(&messages[6])["stopReason"], "end_turn");
    let metadata = payload(&messages[7]);
    assert_eq!(metadata["usage"]["outputTokens"], 5);
    assert!(metadata["metrics"]["latencyMs"].is_u64());

    // Tool use: a start event with the id and name, then input fragments.
    let mut body = hello("x");
    body["toolConfig"] = weather_tools(json!({"tool": {"name": "get_weather"}}));
    let (messages, _) = frames(post(&mock, CLAUDE, true, body).await).await;
    let types = event_types(&messages);
    assert_eq!(types[1], "contentBlockStart");
    let start = payload(&messages[1]);
    assert_eq!(start["start"]["toolUse"]["name"], "get_weather");
    assert!(start["start"]["toolUse"]["toolUseId"]
        .as_str()
        .unwrap()
        .starts_with("tooluse_"));
    let input: String = messages
        .iter()
        .map(payload)
        .filter_map(|p| {
            p.pointer("/delta/toolUse/input")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .collect();
    let input: Value = serde_json::from_str(&input).unwrap();
    assert_eq!(input, json!({"city": "string", "days": 0}));
    assert_eq!(
        payload(&messages[messages.len() - 2])["stopReason"],
        "tool_use"
    );
}

#[tokio::test]
async fn stream_faults_exceptions_cuts_and_bad_frames() {
    let mock = MockUpstream::start();
    // An exception frame after one content frame; the stream then ends cleanly.
    let model =
        format!("{CLAUDE}%3Bchunk_chars%3D2%3Bcut_after%3D1%3Bexception%3DthrottlingException");
    let (messages, broke) = frames(post(&mock, &model, true, hello("abcdef")).await).await;
    assert!(!broke);
    assert_eq!(
        event_types(&messages),
        ["messageStart", "contentBlockDelta", "!throttlingException"]
    );
    assert_eq!(header(&messages[2], ":message-type"), "exception");
    assert!(payload(&messages[2])["message"]
        .as_str()
        .unwrap()
        .contains("throttlingException"));
    // Converse answers the exception's HTTP error instead.
    let model = format!("{CLAUDE}%3Bexception%3DserviceUnavailableException");
    let response = post(&mock, &model, false, hello("x")).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers()["x-amzn-errortype"]
        .to_str()
        .unwrap()
        .starts_with("ServiceUnavailableException:"));

    // cut_after aborts the connection after N content frames.
    let model = format!("{CLAUDE}%3Bchunk_chars%3D2%3Bcut_after%3D2");
    let (messages, broke) = frames(post(&mock, &model, true, hello("abcdefgh")).await).await;
    assert!(broke);
    assert_eq!(
        event_types(&messages),
        ["messageStart", "contentBlockDelta", "contentBlockDelta"]
    );

    // malformed: the second frame's CRC is wrong.
    let model = format!("{CLAUDE}%3Bmalformed");
    let response = post(&mock, &model, true, hello("x")).await;
    assert_eq!(response.status(), 200);
    let mut buffer = BytesMut::from(&response.bytes().await.unwrap()[..]);
    let mut decoder = MessageFrameDecoder::new();
    assert!(matches!(
        decoder.decode_frame(&mut buffer),
        Ok(DecodedFrame::Complete(_))
    ));
    assert!(decoder.decode_frame(&mut buffer).is_err());
    let response = post(&mock, &model, false, hello("x")).await;
    assert!(serde_json::from_slice::<Value>(&response.bytes().await.unwrap()).is_err());
}
