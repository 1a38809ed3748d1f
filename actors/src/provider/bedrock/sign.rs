//! Request paths and AWS Signature Version 4 headers.

use std::time::SystemTime;

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;

/// The signing name of Bedrock's runtime API.
pub(super) const SERVICE: &str = "bedrock";

/// AWS credentials, borrowed from the settings.
#[derive(Clone, Copy)]
pub(super) struct Credentials<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub session_token: Option<&'a str>,
}

/// Percent-encodes one path segment: everything but `A-Z a-z 0-9 - _ . ~` (so a model id's
/// `:` becomes `%3A`, an ARN's `/` becomes `%2F`).
pub(super) fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len() * 3 / 2);
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `/model/{modelId}/converse` or `/model/{modelId}/converse-stream`, the id encoded.
pub(super) fn model_path(model: &str, stream: bool) -> String {
    let operation = if stream {
        "converse-stream"
    } else {
        "converse"
    };
    format!("/model/{}/{operation}", encode_segment(model))
}

/// `/model/{id}/invoke`: a model's own request format (the embedding models').
pub(super) fn invoke_path(model: &str) -> String {
    format!("/model/{}/invoke", encode_segment(model))
}

/// The SigV4 headers (`x-amz-date`, `authorization`, and `x-amz-security-token` with a
/// session token) for a request with these `headers` (besides `host`, which is taken from the
/// URL) and `body`. The URL must already be percent-encoded.
pub(super) fn sigv4_headers(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    credentials: Credentials<'_>,
    region: &str,
    time: SystemTime,
) -> Result<Vec<(String, String)>, String> {
    let identity = aws_credential_types::Credentials::new(
        credentials.access_key_id,
        credentials.secret_access_key,
        credentials.session_token.map(str::to_string),
        None,
        "flowgate",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| format!("cannot sign the request: {e}"))?
        .into();
    let signable = SignableRequest::new(
        method,
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| format!("cannot sign the request: {e}"))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| format!("cannot sign the request: {e}"))?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect())
}
