//! The HTTP transport every provider adapter calls through: HTTP/1.1 over TCP or rustls
//! (ring, the webpki roots), with keep-alive connections kept per worker thread, and a small
//! request builder in front.
//!
//! It replaced hyper's pooled client on the request path (which had replaced reqwest's). That
//! client runs each connection as a task of its own and hands the request, the response head
//! and every body chunk between that task and the caller through channels: several task
//! switches a request, and a streamed body delivered one chunk per switch. Here the caller's
//! task writes the request and reads the response itself, so a stream's events that have
//! already arrived are all there at once. The adapters need nothing more: no redirects (a
//! provider API does not redirect, and following one would send the key elsewhere), no
//! cookies, timeouts of their own. What they need is here: a builder (`header`,
//! `bearer_auth`, `json`, `form`, `body`), `send`, and a response read whole or as a stream.
//! Outbound proxies are honoured as curl does (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`,
//! `NO_PROXY`), through a CONNECT tunnel.
//!
//! - `h1`: the request and response as bytes (RFC 9112), no I/O;
//! - `conn`: a connection, its read buffer, and the idle connections kept for reuse.

mod conn;
mod h1;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, StatusCode, Uri};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;

use conn::{Conn, Destination, PoolSettings};
use h1::Framing;

/// What clones of a [`Client`] share.
struct Inner {
    /// Names this client's idle connections (clients differ in proxy settings).
    id: u64,
    connector: ProxyConnector,
    tls: Arc<rustls::ClientConfig>,
    pool: PoolSettings,
}

/// A client keeping its connections alive between requests. Cheap to clone: clones share
/// its idle connections.
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
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        Client::with_roots(settings, roots)
    }

    /// A client that trusts the certificates `roots` holds (the webpki roots for [`new`]).
    fn with_roots(settings: ClientSettings, roots: rustls::RootCertStore) -> Result<Client, Error> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.set_nodelay(true);
        // https:// URLs are connected to here, then given TLS.
        http.enforce_http(false);
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(Kind::Builder, e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Client {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                connector: ProxyConnector {
                    direct: http,
                    matcher: Arc::new(settings.proxy.matcher()),
                },
                tls: Arc::new(tls),
                pool: PoolSettings {
                    idle_timeout: settings.pool_idle_timeout,
                    max_idle_per_host: settings.pool_max_idle_per_host,
                },
            }),
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
        let uri = self.uri?;
        let dest = Destination::of(client.id, &uri)
            .ok_or_else(|| Error::new(Kind::Builder, "not an absolute http:// or https:// URL"))?;
        let mut head = h1::encode_head(&self.method, &uri, &self.headers, self.body.len());
        // A small body goes out in the same write as the head.
        let body_apart = self.body.len() > SAME_WRITE_BODY;
        if !body_apart {
            head.extend_from_slice(&self.body);
        }
        // A pooled connection the upstream closed as it was taken fails the write: the request
        // did not reach the upstream, and goes once more, on a new connection.
        let mut fresh = false;
        let (mut conn, answered_early) = loop {
            let pooled = if fresh { None } else { conn::checkout(&dest) };
            let reused = pooled.is_some();
            let mut conn = match pooled {
                Some(conn) => conn,
                None => {
                    let mut connector = client.connector.clone();
                    conn::open(&mut connector, &client.tls, &dest)
                        .await
                        .map_err(|e| Error::new(Kind::Connect, e))?
                }
            };
            let mut written = conn.write_all(&head).await.map(|()| false);
            if matches!(written, Ok(false)) && body_apart {
                written = conn.write_body(&self.body).await;
            }
            match written {
                Ok(answered_early) => break (conn, answered_early),
                Err(_) if reused => fresh = true,
                Err(e) => return Err(Error::new(Kind::Request, e)),
            }
        };
        let mut informational = 0;
        let head = loop {
            match h1::parse_head(&mut conn.buf, &mut informational) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(e) => return Err(Error::new(Kind::Request, e)),
            }
            match conn.read_more().await {
                Ok(0) => {
                    return Err(Error::new(
                        Kind::Request,
                        "the connection closed before the response head arrived",
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(Error::new(Kind::Request, e)),
            }
        };
        let mut head = head;
        let framing =
            Framing::of(&self.method, &mut head).map_err(|e| Error::new(Kind::Request, e))?;
        let mut body = BodyReader {
            conn: Some(conn),
            framing,
            // Part of the body was not sent: the connection is not in a state to reuse.
            keep_alive: head.keep_alive && !answered_early,
            dest,
            pool: client.pool,
        };
        if body.framing.is_none() {
            body.finish();
        }
        Ok(Response {
            status: head.status,
            headers: head.headers,
            body,
        })
    }
}

impl Drop for BodyReader {
    fn drop(&mut self) {
        if self.conn.is_some() && self.keep_alive {
            self.drain();
        }
    }
}

/// The most of an unread body a dropped reader takes off its connection to keep it.
const DRAIN_BYTES: usize = 64 * 1024;

/// Bodies up to this size are written with the request head, in one write.
const SAME_WRITE_BODY: usize = 64 * 1024;

/// A response whose head has arrived; the body is read with [`Response::bytes`] (bounded),
/// [`Response::prefix`] or [`Response::bytes_stream`].
pub struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: BodyReader,
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

    /// The whole body, if it is `limit` bytes at most. Past it (by its `content-length`, or
    /// as it arrives) the body is an error ([`Error::is_too_large`]) and is read no further:
    /// an upstream that sends without end cannot grow the gateway's memory.
    pub async fn bytes(self, limit: usize) -> Result<Bytes, Error> {
        let too_large = || {
            Error::new(
                Kind::TooLarge,
                format!("the body is larger than {limit} bytes"),
            )
        };
        // The length the framing took (not a bodiless answer's, nor one chunked encoding
        // overrides).
        let mut whole = match self.body.framing {
            Some(Framing::Length(length)) if length > limit as u64 => return Err(too_large()),
            // Within the bound: the buffer is made once, of the body's size.
            Some(Framing::Length(length)) => h1::Joined::sized(length as usize),
            _ => h1::Joined::default(),
        };
        let mut body = self.body;
        let mut read = 0usize;
        while let Some(piece) = futures::future::poll_fn(|cx| body.poll_piece(cx)).await {
            let piece = piece?;
            read = read.saturating_add(piece.len());
            if read > limit {
                return Err(too_large());
            }
            whole.push(piece);
        }
        Ok(whole.finish())
    }

    /// The body's first `limit` bytes at most (an error answer, read for its message); the
    /// rest is not read. A connection that breaks after some of it gives what came.
    pub async fn prefix(self, limit: usize) -> Result<Bytes, Error> {
        let mut body = self.body;
        let mut whole = h1::Joined::sized(limit);
        let mut read = 0usize;
        while read < limit {
            let Some(piece) = futures::future::poll_fn(|cx| body.poll_piece(cx)).await else {
                break;
            };
            let piece = match piece {
                Ok(piece) => piece,
                Err(_) if read > 0 => break,
                Err(e) => return Err(e),
            };
            let take = piece.len().min(limit - read);
            read += take;
            whole.push(piece.slice(..take));
        }
        Ok(whole.finish())
    }

    /// The body as it arrives: each item is all of the body the connection has delivered.
    pub fn bytes_stream(self) -> BoxStream<'static, Result<Bytes, Error>> {
        let mut body = self.body;
        futures::stream::poll_fn(move |cx| body.poll_piece(cx)).boxed()
    }
}

/// Reads a response's body off its connection, and keeps the connection for the next request
/// once the body is whole (unless the upstream said it closes it). Dropped before, it closes
/// the connection.
struct BodyReader {
    conn: Option<Conn>,
    /// `None`: no body, or no more of it.
    framing: Option<Framing>,
    keep_alive: bool,
    dest: Destination,
    pool: PoolSettings,
}

impl BodyReader {
    /// The body is whole: the connection is kept for the next request if it can be.
    fn finish(&mut self) {
        self.framing = None;
        if let Some(conn) = self.conn.take() {
            if self.keep_alive {
                conn::checkin(&self.dest, conn, &self.pool);
            }
        }
    }

    /// The next piece of the body: everything the connection has delivered that is body.
    fn poll_piece(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        loop {
            let (Some(framing), Some(conn)) = (self.framing.as_mut(), self.conn.as_mut()) else {
                return Poll::Ready(None);
            };
            let (data, whole) = match framing.decode(&mut conn.buf, false) {
                Ok(decoded) => decoded,
                Err(e) => return Poll::Ready(Some(Err(self.fail(e)))),
            };
            if whole {
                self.finish();
                return Poll::Ready((!data.is_empty()).then_some(Ok(data)));
            }
            if !data.is_empty() {
                return Poll::Ready(Some(Ok(data)));
            }
            match conn.poll_read_more(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    // The connection's end is the body's only if its framing says so.
                    self.keep_alive = false;
                    return match framing.decode(&mut conn.buf, true) {
                        Ok((data, _)) => {
                            self.finish();
                            Poll::Ready((!data.is_empty()).then_some(Ok(data)))
                        }
                        Err(e) => Poll::Ready(Some(Err(self.fail(e)))),
                    };
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(self.fail(e)))),
            }
        }
    }

    /// Reads what has already arrived of the body, without waiting: a reader dropped once
    /// the caller has what it wanted (a stream's last event) keeps its connection if the
    /// body's end had arrived too.
    fn drain(&mut self) {
        let mut noop = Context::from_waker(std::task::Waker::noop());
        let mut budget = DRAIN_BYTES;
        while let Poll::Ready(Some(Ok(piece))) = self.poll_piece(&mut noop) {
            budget = budget.saturating_sub(piece.len());
            if budget == 0 {
                // More than the end of a stream: not worth the connection.
                self.conn = None;
                return;
            }
        }
    }

    /// The body cannot be read on: the connection is closed, the error returned.
    fn fail(&mut self, error: impl Into<BoxError>) -> Error {
        self.conn = None;
        self.framing = None;
        Error::new(Kind::Body, error)
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
    /// The body is larger than the caller's bound.
    TooLarge,
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

    /// A body past the bound [`Response::bytes`] was given.
    pub fn is_too_large(&self) -> bool {
        self.kind == Kind::TooLarge
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
            Kind::TooLarge => "the answer is too large",
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
    use flowgate_mock_upstream::raw::{chunk, endless_server, read_head};

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
        assert_eq!(&response.bytes(1 << 20).await.unwrap()[..], b"ok");
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

    /// A server on loopback that answers each request on a connection with the next of
    /// `answers` (written in the pieces given, a short pause between them); after the last
    /// answer of a connection's turn it keeps the connection open unless `close_after` says
    /// otherwise. Returns its URL and the count of connections it accepted.
    async fn scripted_server(
        answers: Vec<Vec<&'static [u8]>>,
        close_after: bool,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let (url, accepted, _) = scripted_server_closing(answers, close_after).await;
        (url, accepted)
    }

    /// [`scripted_server`], and how many connections it has closed.
    async fn scripted_server_closing(
        answers: Vec<Vec<&'static [u8]>>,
        close_after: bool,
    ) -> (
        String,
        Arc<std::sync::atomic::AtomicUsize>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/x", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (counted, closes) = (accepted.clone(), closed.clone());
        let answers = Arc::new(std::sync::Mutex::new(answers.into_iter()));
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                let answers = answers.clone();
                let closes = closes.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = vec![0u8; 4096];
                    loop {
                        // One request: its head, then its content-length's bytes.
                        let Some(head_end) = read_head(&mut socket, &mut seen).await else {
                            return;
                        };
                        let head = String::from_utf8_lossy(&seen[..head_end]).to_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        while seen.len() < head_end + length {
                            let n = socket.read(&mut buf).await.unwrap();
                            seen.extend_from_slice(&buf[..n]);
                        }
                        seen.drain(..head_end + length);
                        let Some(pieces) = answers.lock().unwrap().next() else {
                            return;
                        };
                        for piece in pieces {
                            socket.write_all(piece).await.unwrap();
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        if close_after {
                            drop(socket);
                            closes.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                });
            }
        });
        (url, accepted, closed)
    }

    fn plain_client() -> Client {
        Client::new(ClientSettings {
            proxy: Proxy::None,
            ..ClientSettings::default()
        })
        .unwrap()
    }

    /// Requests one after another share one connection, whatever framed the body before.
    #[actix_rt::test]
    async fn a_connection_carries_the_next_request_once_the_body_is_read() {
        let (url, accepted) = scripted_server(
            vec![
                vec![b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst"],
                vec![
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nsec\r\n",
                    b"3\r\nond\r\n0\r\n\r\n",
                ],
                vec![b"HTTP/1.1 204 No Content\r\n\r\n"],
                vec![b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nfou", b"rth"],
            ],
            false,
        )
        .await;
        let client = plain_client();
        let mut bodies = Vec::new();
        for _ in 0..4 {
            let response = client
                .post(&url)
                .json(&serde_json::json!({"a": 1}))
                .send()
                .await
                .unwrap();
            bodies.push(response.bytes(1 << 20).await.unwrap());
        }
        assert_eq!(bodies, ["first", "second", "", "fourth"]);
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// A streamed body gives what has arrived as it arrives, the chunks of one read in one
    /// piece; its end is the chunked body's end.
    #[actix_rt::test]
    async fn a_streamed_body_arrives_in_the_pieces_the_upstream_sent() {
        let (url, _) = scripted_server(
            vec![vec![
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                // Four chunks in one write: one piece.
                b"6\r\ndata: \r\n2\r\na\n\r\n7\r\ndata: b\r\n1\r\n\n\r\n",
                b"0\r\n\r\n",
            ]],
            false,
        )
        .await;
        let response = plain_client().post(&url).send().await.unwrap();
        let pieces: Vec<Bytes> = response
            .bytes_stream()
            .map(|piece| piece.unwrap())
            .collect()
            .await;
        assert_eq!(pieces, [Bytes::from_static(b"data: a\ndata: b\n")]);
    }

    /// A connection the upstream said it closes (`connection: close`, HTTP/1.0) is not used
    /// again, even if the upstream leaves it open.
    #[actix_rt::test]
    async fn a_connection_the_upstream_closes_is_not_used_again() {
        let (url, accepted) = scripted_server(
            vec![
                vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: close\r\n\r\na"],
                vec![b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\nb"],
                vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nc"],
                vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nd"],
            ],
            false,
        )
        .await;
        let client = plain_client();
        for expected in ["a", "b", "c", "d"] {
            let response = client.get(&url).send().await.unwrap();
            assert_eq!(response.bytes(1 << 20).await.unwrap(), expected);
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    /// A connection the upstream closed while it was idle is not used again: the next request
    /// opens a new one and succeeds.
    #[actix_rt::test]
    async fn a_connection_closed_while_idle_is_not_used_again() {
        let (url, accepted, closed) = scripted_server_closing(
            vec![
                vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na"],
                vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb"],
                vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nc"],
            ],
            true,
        )
        .await;
        let client = plain_client();
        for (i, expected) in ["a", "b", "c"].into_iter().enumerate() {
            let response = client.get(&url).send().await.unwrap();
            assert_eq!(response.bytes(1 << 20).await.unwrap(), expected);
            // The server closes its side after each answer: wait until it has (on loopback
            // the close has then reached this side), however slow the machine.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while closed.load(std::sync::atomic::Ordering::SeqCst) <= i {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the server never closed"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    /// A thread that sends no more requests lets go of its idle connections at their
    /// timeout (before, they stayed until its next request, past the upstream's close).
    #[actix_rt::test]
    async fn an_idle_connection_is_closed_at_its_timeout_without_another_request() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/x", listener.local_addr().unwrap());
        let (closed, gone) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            read_head(&mut socket, &mut Vec::new()).await;
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            // The client's close reads as the end of the stream.
            let mut buf = [0u8; 64];
            while socket.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            let _ = closed.send(());
        });
        let client = Client::new(ClientSettings {
            proxy: Proxy::None,
            pool_idle_timeout: Duration::from_millis(100),
            ..ClientSettings::default()
        })
        .unwrap();
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.bytes(1 << 20).await.unwrap(), "ok");
        tokio::time::timeout(Duration::from_secs(30), gone)
            .await
            .expect("the idle connection is closed")
            .unwrap();
    }

    /// A body cut short of its length, or a head past its bound, is an error, not a short
    /// answer.
    #[actix_rt::test]
    async fn a_cut_body_or_an_endless_head_is_an_error() {
        let (url, _) = scripted_server(
            vec![vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"]],
            true,
        )
        .await;
        let error = plain_client()
            .get(&url)
            .send()
            .await
            .unwrap()
            .bytes(1 << 20)
            .await
            .unwrap_err();
        assert!(
            error.to_string().starts_with("reading the body failed"),
            "{error}"
        );

        let endless: &'static [u8] = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\nx-a: {}\r\n\r\n",
                "a".repeat(h1::MAX_HEAD_BYTES)
            )
            .into_bytes()
            .into_boxed_slice(),
        );
        let (url, _) = scripted_server(vec![vec![endless]], true).await;
        let error = plain_client().get(&url).send().await.unwrap_err();
        assert!(error.to_string().contains("longer than"), "{error}");
    }

    /// An upstream that answers before taking the whole body (a 413) is heard: its answer is
    /// the response, not a broken pipe or a wait for the body to be taken.
    #[actix_rt::test]
    async fn an_answer_before_the_body_is_taken_is_the_response() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/upload", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            read_head(&mut socket, &mut Vec::new()).await.unwrap();
            socket
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo big!")
                .await
                .unwrap();
            // Reads no more of the body, and keeps the connection open.
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(socket);
        });
        // Far more than the socket buffers hold, so the write cannot finish unread.
        let body = vec![b'x'; 64 * 1024 * 1024];
        let client = plain_client();
        let call = client.post(&url).body(body).send();
        let response = tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .expect("the answer is heard though the body is not taken")
            .unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(response.bytes(1 << 20).await.unwrap(), "too big!");
    }

    const CHUNKED_200: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";

    /// 4096 bytes of data, not all alike.
    fn data_4k() -> Vec<u8> {
        (0..4096u32).map(|i| b'a' + (i % 26) as u8).collect()
    }

    /// [`data_4k`] as one chunk (0x1000 bytes).
    fn chunk_4k() -> Vec<u8> {
        chunk(&data_4k())
    }

    #[actix_rt::test]
    async fn a_body_past_its_bound_is_an_error_not_a_bigger_buffer() {
        // Said by its content-length: refused before any of it is read.
        let url = endless_server(
            b"HTTP/1.1 200 OK\r\ncontent-length: 10485760\r\n\r\n",
            Vec::new(),
        )
        .await;
        let response = plain_client().get(&url).send().await.unwrap();
        let error = response.bytes(1 << 20).await.unwrap_err();
        assert!(error.is_too_large(), "{error}");
        assert!(
            error.to_string().contains("larger than 1048576 bytes"),
            "{error}"
        );

        // A chunked body without end: cut once past the bound (it would never end otherwise).
        let url = endless_server(CHUNKED_200, chunk_4k()).await;
        let response = plain_client().get(&url).send().await.unwrap();
        let read = tokio::time::timeout(Duration::from_secs(30), response.bytes(1 << 20))
            .await
            .expect("an endless body ends at the bound");
        assert!(read.unwrap_err().is_too_large());

        // A chunked body of the bound exactly is whole (the server then closes: the chunk
        // that ends the body is written with the last data).
        let mut body = chunk_4k();
        body.extend_from_slice(b"0\r\n\r\n");
        let url = endless_server(CHUNKED_200, body).await;
        let response = plain_client().get(&url).send().await.unwrap();
        assert_eq!(response.bytes(4096).await.unwrap(), data_4k());

        // At the bound exactly, the body is whole.
        let url = endless_server(
            b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nfour",
            Vec::new(),
        )
        .await;
        let response = plain_client().get(&url).send().await.unwrap();
        assert_eq!(response.bytes(4).await.unwrap(), "four");
    }

    /// A body in many pieces is copied once into a buffer of its size, not grown as it comes
    /// (a buffer that doubled as pieces came ended up to twice the answer's size, and held
    /// up to three times it while it moved).
    #[actix_rt::test]
    async fn a_body_in_pieces_ends_in_one_buffer_of_its_size() {
        const SIZE: usize = 1_000_000;
        let piece: Vec<u8> = data_4k()[..4000].to_vec();
        let expected = piece.repeat(SIZE / 4000);
        // Said by its content-length: the buffer is made once, of that size.
        let url = endless_server(
            b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n",
            piece.clone(),
        )
        .await;
        let response = plain_client().get(&url).send().await.unwrap();
        let body = response.bytes(1 << 20).await.unwrap();
        assert_eq!(body, expected);
        let buffer = body.try_into_mut().expect("the body owns its buffer");
        assert_eq!(buffer.capacity(), SIZE);

        // Chunked, its size unknown until its end: joined once at the end.
        let mut chunked = chunk(&piece).repeat(SIZE / 4000);
        chunked.extend_from_slice(b"0\r\n\r\n");
        let url = endless_server(CHUNKED_200, chunked).await;
        let response = plain_client().get(&url).send().await.unwrap();
        let body = response.bytes(1 << 20).await.unwrap();
        assert_eq!(body, expected);
        let buffer = body.try_into_mut().expect("the body owns its buffer");
        assert_eq!(buffer.capacity(), SIZE);
    }

    #[actix_rt::test]
    async fn a_prefix_reads_no_more_than_asked() {
        let url = endless_server(CHUNKED_200, chunk_4k()).await;
        let response = plain_client().get(&url).send().await.unwrap();
        let prefix = tokio::time::timeout(Duration::from_secs(30), response.prefix(10_000))
            .await
            .expect("a prefix of an endless body ends")
            .unwrap();
        assert_eq!(prefix.len(), 10_000);
        assert_eq!(&prefix[..], &data_4k().repeat(3)[..10_000]);
    }

    /// A stream dropped once its caller has what it wanted (its last event) keeps its
    /// connection when the body's end has arrived: the next request uses it.
    #[actix_rt::test]
    async fn a_stream_dropped_at_its_last_event_keeps_its_connection() {
        let (url, accepted) = scripted_server(
            vec![
                vec![
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n8\r\n[DONE]\n\n\r\n",
                    b"0\r\n\r\n",
                ],
                vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"],
            ],
            false,
        )
        .await;
        let client = plain_client();
        let mut stream = client.post(&url).send().await.unwrap().bytes_stream();
        assert_eq!(stream.next().await.unwrap().unwrap(), "[DONE]\n\n");
        // The body's end follows the last event (the server writes it 5 ms later).
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(stream);
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.bytes(1 << 20).await.unwrap(), "ok");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// https goes over TLS (ALPN http/1.1) to a server whose certificate holds the URL's host,
    /// and keeps its connection between requests; a certificate for another name is refused.
    #[actix_rt::test]
    async fn https_goes_over_tls_to_the_named_host_and_keeps_its_connection() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::AsyncWriteExt;

        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let cert_der = cert.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key)
        .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // The same server on another loopback address, which the certificate does not hold.
        let other = tokio::net::TcpListener::bind(("127.0.0.2", port))
            .await
            .unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    accepted = listener.accept() => accepted.unwrap(),
                    accepted = other.accept() => accepted.unwrap(),
                };
                let acceptor = acceptor.clone();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    counted.fetch_add(1, Ordering::SeqCst);
                    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                    let mut seen = Vec::new();
                    loop {
                        if read_head(&mut tls, &mut seen).await.is_none() {
                            return;
                        }
                        seen.clear();
                        let body = format!(
                            "alpn={}",
                            String::from_utf8_lossy(&alpn.clone().unwrap_or_default())
                        );
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        tls.write_all(answer.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert_der).unwrap();
        let settings = ClientSettings {
            proxy: Proxy::None,
            ..ClientSettings::default()
        };
        let client = Client::with_roots(settings, roots).unwrap();
        for _ in 0..2 {
            let response = client
                .get(format!("https://127.0.0.1:{port}/v1/x"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.bytes(1 << 20).await.unwrap(), "alpn=http/1.1");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        // The certificate holds 127.0.0.1 only.
        let error = client
            .get(format!("https://127.0.0.2:{port}/v1/x"))
            .send()
            .await
            .unwrap_err();
        assert!(error.is_connect(), "{error}");
        assert!(error.to_string().contains("certificate"), "{error}");
    }

    /// A 100 Continue (or any 1xx) while a large body is being sent is not the answer: the
    /// body is sent whole and the final answer read.
    #[actix_rt::test]
    async fn an_interim_answer_does_not_stop_the_body() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const BODY: usize = 64 * 1024 * 1024;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/upload", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            let head_end = read_head(&mut socket, &mut seen).await.unwrap();
            socket
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .unwrap();
            // Let the client's write fill the socket and wait, then take the whole body.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut got = seen.len() - head_end;
            while got < BODY {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "the body was cut at {got} bytes");
                got += n;
            }
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{got}",
                got.to_string().len()
            );
            socket.write_all(answer.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let client = plain_client();
        let call = client.post(&url).body(vec![b'x'; BODY]).send();
        let response = tokio::time::timeout(Duration::from_secs(60), call)
            .await
            .expect("the whole body is sent and answered")
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.bytes(1 << 20).await.unwrap(), BODY.to_string());
    }
}
