//! The HTTP transport every provider adapter calls through: hyper's pooled client (HTTP/1.1
//! and HTTP/2 over rustls, ring, the webpki roots) with a small request builder in front.
//!
//! It replaced reqwest on the request path: reqwest re-parses the URL twice per call (its
//! redirect layer and its response), stacks tower layers, and cost about a tenth of the
//! request path's CPU. The adapters need none of that: no redirects (a provider API does not
//! redirect, and following one would send the key elsewhere), no cookies, timeouts of their
//! own. What they need is here: a builder (`header`, `bearer_auth`, `json`, `form`, `body`),
//! `send`, and a response read whole or as a stream. Outbound proxies are honoured as curl
//! does (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`), through a CONNECT tunnel.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use http_body_util::{BodyDataStream, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

type Inner = hyper_util::client::legacy::Client<HttpsConnector<ProxyConnector>, Full<Bytes>>;

/// A pooled client. Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

/// How a [`Client`] connects.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub proxy: Proxy,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            connect_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 1024,
            proxy: Proxy::FromEnv,
        }
    }
}

/// Which outbound proxy a client goes through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proxy {
    /// As curl reads the environment: `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`.
    FromEnv,
    /// This proxy for every destination (`http://[user:password@]host:port`).
    All(String),
    /// Always direct.
    None,
}

impl Proxy {
    fn matcher(&self) -> Matcher {
        match self {
            Proxy::FromEnv => Matcher::from_env(),
            Proxy::All(url) => Matcher::builder().all(url.clone()).build(),
            Proxy::None => Matcher::builder().build(),
        }
    }
}

/// Connects directly, or through a CONNECT tunnel when the proxy settings name a proxy for
/// the destination (TLS then runs inside the tunnel).
#[derive(Clone)]
pub struct ProxyConnector {
    direct: HttpConnector,
    matcher: Arc<Matcher>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for ProxyConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let direct = self.direct.clone();
        match self.matcher.intercept(&dst) {
            Some(proxy) => {
                let mut tunnel = Tunnel::new(proxy.uri().clone(), direct);
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                Box::pin(async move { tunnel.call(dst).await.map_err(Into::into) })
            }
            None => {
                let mut direct = direct;
                Box::pin(async move { direct.call(dst).await.map_err(Into::into) })
            }
        }
    }
}

impl Client {
    pub fn new(settings: ClientSettings) -> Result<Client, Error> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.set_nodelay(true);
        // https:// URLs are handed to the TLS layer.
        http.enforce_http(false);
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(Kind::Builder, e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = ProxyConnector {
            direct: http,
            matcher: Arc::new(settings.proxy.matcher()),
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(connector);
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(settings.pool_idle_timeout)
            .pool_max_idle_per_host(settings.pool_max_idle_per_host)
            .build(https);
        Ok(Client {
            inner: Arc::new(inner),
        })
    }

    pub fn post(&self, uri: impl IntoUri) -> RequestBuilder<'_> {
        self.request(Method::POST, uri)
    }

    pub fn get(&self, uri: impl IntoUri) -> RequestBuilder<'_> {
        self.request(Method::GET, uri)
    }

    fn request(&self, method: Method, uri: impl IntoUri) -> RequestBuilder<'_> {
        RequestBuilder {
            client: &self.inner,
            method,
            uri: uri.into_uri(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }
}

/// What a request may be addressed with: a parsed [`Uri`] (cheap to clone: parse it once) or
/// a string parsed on use.
pub trait IntoUri {
    fn into_uri(self) -> Result<Uri, Error>;
}

impl IntoUri for Uri {
    fn into_uri(self) -> Result<Uri, Error> {
        Ok(self)
    }
}

impl IntoUri for &Uri {
    fn into_uri(self) -> Result<Uri, Error> {
        Ok(self.clone())
    }
}

impl IntoUri for &str {
    fn into_uri(self) -> Result<Uri, Error> {
        parse_uri(self)
    }
}

impl IntoUri for String {
    fn into_uri(self) -> Result<Uri, Error> {
        parse_uri(&self)
    }
}

impl IntoUri for &String {
    fn into_uri(self) -> Result<Uri, Error> {
        parse_uri(self)
    }
}

/// An absolute http(s) URL.
pub fn parse_uri(text: &str) -> Result<Uri, Error> {
    let uri: Uri = text.parse().map_err(|e| Error::new(Kind::Builder, e))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err(Error::new(
            Kind::Builder,
            "not an absolute http:// or https:// URL",
        )),
    }
}

/// A request being built. A bad header or URL is reported by [`RequestBuilder::send`].
pub struct RequestBuilder<'c> {
    client: &'c Inner,
    method: Method,
    uri: Result<Uri, Error>,
    headers: HeaderMap,
    body: Bytes,
}

impl RequestBuilder<'_> {
    /// Adds a header; an invalid name or value fails the request when it is sent.
    pub fn header<K, V>(mut self, name: K, value: V) -> Self
    where
        HeaderName: TryFrom<K>,
        <HeaderName as TryFrom<K>>::Error: Into<hyper::http::Error>,
        HeaderValue: TryFrom<V>,
        <HeaderValue as TryFrom<V>>::Error: Into<hyper::http::Error>,
    {
        let header = HeaderName::try_from(name)
            .map_err(Into::into)
            .and_then(|name| Ok((name, HeaderValue::try_from(value).map_err(Into::into)?)));
        match header {
            Ok((name, value)) => {
                self.headers.append(name, value);
            }
            Err(e) => self.fail(e),
        }
        self
    }

    /// `Authorization: Bearer <token>`, marked sensitive (never logged by hyper).
    pub fn bearer_auth(mut self, token: impl fmt::Display) -> Self {
        match HeaderValue::try_from(format!("Bearer {token}")) {
            Ok(mut value) => {
                value.set_sensitive(true);
                self.headers.insert(AUTHORIZATION, value);
            }
            Err(e) => self.fail(e.into()),
        }
        self
    }

    /// A JSON body, with its content type unless one was set.
    pub fn json<T: serde::Serialize + ?Sized>(mut self, body: &T) -> Self {
        match serde_json::to_vec(body) {
            Ok(bytes) => {
                self.body = Bytes::from(bytes);
                self.default_content_type("application/json");
            }
            Err(e) => {
                self.uri = Err(Error::new(Kind::Builder, e));
            }
        }
        self
    }

    /// An `application/x-www-form-urlencoded` body.
    pub fn form(mut self, fields: &[(&str, &str)]) -> Self {
        let mut form = form_urlencoded::Serializer::new(String::new());
        for (name, value) in fields {
            form.append_pair(name, value);
        }
        self.body = Bytes::from(form.finish());
        self.default_content_type("application/x-www-form-urlencoded");
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    fn default_content_type(&mut self, value: &'static str) {
        if !self.headers.contains_key(CONTENT_TYPE) {
            self.headers
                .insert(CONTENT_TYPE, HeaderValue::from_static(value));
        }
    }

    fn fail(&mut self, error: hyper::http::Error) {
        if self.uri.is_ok() {
            self.uri = Err(Error::new(Kind::Builder, error));
        }
    }

    /// The request as it will be sent.
    pub fn build(self) -> Result<hyper::Request<Bytes>, Error> {
        let mut request = hyper::Request::new(self.body);
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri?;
        *request.headers_mut() = self.headers;
        Ok(request)
    }

    /// Sends the request; answers when the response head has arrived.
    pub async fn send(self) -> Result<Response, Error> {
        let client = self.client;
        let request = self.build()?.map(Full::new);
        let response = client.request(request).await.map_err(|e| {
            let kind = if e.is_connect() {
                Kind::Connect
            } else {
                Kind::Request
            };
            Error::new(kind, e)
        })?;
        let (head, body) = response.into_parts();
        Ok(Response {
            status: head.status,
            headers: head.headers,
            body,
        })
    }
}

/// A response whose head has arrived; the body is read with [`Response::bytes`] or
/// [`Response::bytes_stream`].
pub struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: Incoming,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .finish()
    }
}

impl Response {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The whole body.
    pub async fn bytes(self) -> Result<Bytes, Error> {
        self.body
            .collect()
            .await
            .map(|body| body.to_bytes())
            .map_err(|e| Error::new(Kind::Body, e))
    }

    /// The body as it arrives.
    pub fn bytes_stream(self) -> BoxStream<'static, Result<Bytes, Error>> {
        BodyDataStream::new(self.body)
            .map(|chunk| chunk.map_err(|e| Error::new(Kind::Body, e)))
            .boxed()
    }
}

/// A failed call: no HTTP status (for those, see [`Response::status`]).
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    source: Box<dyn std::error::Error + Send + Sync>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The request could not be built (a bad URL or header).
    Builder,
    /// No connection could be made.
    Connect,
    /// The connection failed while sending or waiting for the response head.
    Request,
    /// The connection failed while reading the body.
    Body,
}

impl Error {
    fn new(kind: Kind, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        Error {
            kind,
            source: source.into(),
        }
    }

    pub fn is_connect(&self) -> bool {
        self.kind == Kind::Connect
    }

    /// A connect or I/O timeout (the adapters time whole calls themselves).
    pub fn is_timeout(&self) -> bool {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&*self.source);
        while let Some(error) = source {
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::TimedOut {
                    return true;
                }
            }
            if error.to_string().contains("timed out") {
                return true;
            }
            source = error.source();
        }
        false
    }
}

impl fmt::Display for Error {
    /// The error and its causes, on one line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            Kind::Builder => "invalid request",
            Kind::Connect => "connection failed",
            Kind::Request => "request failed",
            Kind::Body => "reading the body failed",
        };
        write!(f, "{what}: {}", self.source)?;
        let mut source = self.source.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_http_urls_are_accepted() {
        assert!(parse_uri("https://api.openai.com/v1/chat/completions").is_ok());
        assert!(parse_uri("http://127.0.0.1:8080/v1").is_ok());
        assert!(parse_uri("ftp://example.com/").is_err());
        assert!(parse_uri("/v1/chat/completions").is_err());
        assert!(parse_uri("not a url").is_err());
    }

    #[actix_rt::test]
    async fn a_bad_header_fails_the_send_not_the_builder() {
        let client = Client::new(ClientSettings::default()).unwrap();
        let error = client
            .post("http://127.0.0.1:9/")
            .header("x-bad", "line\nbreak")
            .send()
            .await
            .unwrap_err();
        assert!(error.to_string().starts_with("invalid request"), "{error}");
    }

    /// A CONNECT proxy on loopback that counts its tunnels.
    async fn connect_proxy() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let tunnels = Arc::new(AtomicUsize::new(0));
        let counted = tunnels.clone();
        tokio::spawn(async move {
            loop {
                let (mut client, _) = listener.accept().await.unwrap();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        client.read_exact(&mut byte).await.unwrap();
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8(head).unwrap();
                    let target = head
                        .strip_prefix("CONNECT ")
                        .and_then(|rest| rest.split(' ').next())
                        .unwrap()
                        .to_string();
                    let mut upstream = tokio::net::TcpStream::connect(target).await.unwrap();
                    counted.fetch_add(1, Ordering::SeqCst);
                    client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        });
        (url, tunnels)
    }

    /// An HTTP server on loopback that answers every request with `ok`.
    async fn ok_server() -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/ping", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = socket.read(&mut buf).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                    }
                    socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await
                        .unwrap();
                });
            }
        });
        url
    }

    #[actix_rt::test]
    async fn calls_go_through_the_configured_proxy() {
        let (proxy, tunnels) = connect_proxy().await;
        let target = ok_server().await;
        let client = Client::new(ClientSettings {
            proxy: Proxy::All(proxy),
            ..ClientSettings::default()
        })
        .unwrap();
        let response = client.get(&target).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(&response.bytes().await.unwrap()[..], b"ok");
        assert_eq!(tunnels.load(std::sync::atomic::Ordering::SeqCst), 1);

        // Without a proxy, the same call goes straight to the server.
        let direct = Client::new(ClientSettings {
            proxy: Proxy::None,
            ..ClientSettings::default()
        })
        .unwrap();
        let response = direct.get(&target).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(tunnels.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[actix_rt::test]
    async fn a_refused_connection_is_a_connect_error() {
        // A port nobody listens on.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let client = Client::new(ClientSettings::default()).unwrap();
        let error = client
            .post(format!("http://127.0.0.1:{port}/"))
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap_err();
        assert!(error.is_connect(), "{error}");
    }
}
