//! The HTTP server: lifecycle ([`MockUpstream`]), request recording and routing to the
//! provider modules.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;

use actix_web::dev::ServerHandle;
use actix_web::http::Method;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;
use serde_json::Value;

use crate::state::{RecordedRequest, State};
use crate::{anthropic, bedrock, embeddings, gemini, openai};

/// Largest request body accepted (benchmarks send big prompts).
const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;
/// Path of the control endpoint listing (`GET`) or clearing (`DELETE`) recorded requests.
pub const CONTROL_REQUESTS_PATH: &str = "/_mock/requests";

/// Options for [`MockUpstream::start_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Number of actix worker threads (at least 1).
    pub workers: usize,
    /// Whether to record every request (method, path, headers, body). Disable it for
    /// benchmarks; [`MockUpstream::count`] keeps counting either way.
    pub record: bool,
}

impl Default for Options {
    /// Two workers, recording on.
    fn default() -> Self {
        Options {
            workers: 2,
            record: true,
        }
    }
}

/// A running mock upstream server (see the [crate documentation](crate)).
///
/// The server runs on its own thread with its own actix system; dropping the value stops
/// it (abruptly: in-flight requests, including `hang`ing ones, are dropped).
#[derive(Debug)]
pub struct MockUpstream {
    /// The TCP port the server is bound to.
    pub port: u16,
    addr: SocketAddr,
    state: Arc<State>,
    handle: Option<ServerHandle>,
    thread: Option<JoinHandle<()>>,
}

impl MockUpstream {
    /// Starts a server on `127.0.0.1:0` with [`Options::default`] (2 workers, recording).
    ///
    /// # Panics
    /// If the server cannot be started (no free port, thread spawn failure).
    pub fn start() -> MockUpstream {
        MockUpstream::start_with(Options::default())
    }

    /// Starts a server on `127.0.0.1:0` with `workers` worker threads, recording on.
    ///
    /// # Panics
    /// If the server cannot be started.
    pub fn start_with_workers(workers: usize) -> MockUpstream {
        MockUpstream::start_with(Options {
            workers,
            record: true,
        })
    }

    /// Starts a server on `127.0.0.1:0` with the given options.
    ///
    /// # Panics
    /// If the server cannot be started.
    pub fn start_with(options: Options) -> MockUpstream {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        match MockUpstream::start_on(addr, options) {
            Ok(server) => server,
            Err(e) => panic!("cannot start the mock upstream on {addr}: {e}"),
        }
    }

    /// Starts a server bound to `addr` (port 0 picks a free port) and returns once it is
    /// bound and accepting connections.
    pub fn start_on(addr: SocketAddr, options: Options) -> io::Result<MockUpstream> {
        let state = Arc::new(State::new(options.record));
        let workers = options.workers.max(1);
        let (tx, rx) = std::sync::mpsc::channel::<io::Result<(SocketAddr, ServerHandle)>>();
        let data = web::Data::from(Arc::clone(&state));
        let thread = std::thread::Builder::new()
            .name("mock-upstream".to_string())
            .spawn(move || {
                let system = actix_rt::System::new();
                system.block_on(async move {
                    let server = HttpServer::new(move || {
                        App::new()
                            .app_data(data.clone())
                            .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
                            .default_service(web::to(dispatch))
                    })
                    .workers(workers)
                    // Longer than flowgate's pool keeps an idle connection (90 s): with
                    // actix's 5 s, a request sent on a pooled connection as the mock closed it
                    // failed now and then as a connection error (an extra attempt in a test).
                    .keep_alive(std::time::Duration::from_secs(300))
                    // As a provider's edge does: a paced stream's chunks go out as written,
                    // not held by Nagle's algorithm until the client's delayed ACK (~40 ms on
                    // a reused connection), which `bench/run.sh`'s `ttft` scenario measured.
                    .tcp_nodelay(true)
                    .disable_signals()
                    .bind(addr);
                    let server = match server {
                        Ok(server) => server,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let Some(bound) = server.addrs().first().copied() else {
                        let _ = tx.send(Err(io::Error::other("no address bound")));
                        return;
                    };
                    let server = server.run();
                    let _ = tx.send(Ok((bound, server.handle())));
                    let _ = server.await;
                });
            })?;
        let (addr, handle) = rx
            .recv()
            .map_err(|_| io::Error::other("the mock upstream thread exited during startup"))??;
        Ok(MockUpstream {
            port: addr.port(),
            addr,
            state,
            handle: Some(handle),
            thread: Some(thread),
        })
    }

    /// The bound socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The OpenAI-style base URL, `http://127.0.0.1:PORT/v1` (the bound IP is used).
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.url())
    }

    /// The server root, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in arrival order (empty when recording is off).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests()
    }

    /// Forgets the recorded requests and resets [`count`](Self::count). `fail_first`
    /// counters are kept.
    pub fn clear(&self) {
        self.state.clear();
    }

    /// Number of requests received since start or the last [`clear`](Self::clear)
    /// (counted even when recording is off).
    pub fn count(&self) -> usize {
        self.state.received()
    }

    /// Blocks until the server stops (it only stops when dropped, so this serves forever;
    /// used by the binary).
    pub fn wait(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            // The stop command is sent right away; the returned future only reports
            // completion, which joining the thread below waits for anyway.
            drop(handle.stop(false));
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The single actix handler: control endpoints, recording, then routing by method/path.
async fn dispatch(req: HttpRequest, body: Bytes, state: web::Data<State>) -> HttpResponse {
    if req.path() == CONTROL_REQUESTS_PATH {
        return match *req.method() {
            Method::GET => HttpResponse::Ok().json(state.requests()),
            Method::DELETE => {
                let cleared = state.clear();
                HttpResponse::Ok().json(serde_json::json!({ "cleared": cleared }))
            }
            _ => HttpResponse::MethodNotAllowed()
                .insert_header(("allow", "GET, DELETE"))
                .finish(),
        };
    }
    let json: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    state.record(&req, &json);
    let path = req.path();
    match req.method().as_str() {
        "POST" if path == "/v1/chat/completions" || path == "/chat/completions" => {
            openai::chat_completions(&req, json, &state).await
        }
        // Azure OpenAI: /openai/deployments/{deployment}/chat/completions?api-version=…
        "POST"
            if path.starts_with("/openai/deployments/") && path.ends_with("/chat/completions") =>
        {
            openai::chat_completions(&req, json, &state).await
        }
        "GET" if path == "/v1/models" || path == "/models" => openai::models(),
        // Embeddings: OpenAI's (and its copies'), and the Gemini API's batch.
        "POST" if path == "/v1/embeddings" || path == "/embeddings" => {
            embeddings::openai(&req, &json)
        }
        "POST" if path.ends_with(":batchEmbedContents") => embeddings::gemini_batch(&req, &json),
        "POST" if path.starts_with("/model/") && path.ends_with("/invoke") => {
            embeddings::bedrock_invoke(&req, &json)
        }
        // Anthropic Messages API.
        "POST" if path == "/v1/messages" => anthropic::messages(&req, json, &state).await,
        // Gemini API (/v1beta/models/{m}:generateContent) and Vertex AI
        // (/v1/projects/{p}/locations/{l}/publishers/google/models/{m}:generateContent).
        "POST" if path.contains(":generateContent") || path.contains(":streamGenerateContent") => {
            gemini::generate(&req, json, &state).await
        }
        // Claude on Vertex AI: …/publishers/anthropic/models/{m}:rawPredict (:streamRawPredict).
        "POST" if path.ends_with(":rawPredict") || path.ends_with(":streamRawPredict") => {
            anthropic::raw_predict(&req, json, &state).await
        }
        // Google OAuth token endpoint (service-account JWT exchange) and metadata server.
        "POST" if path == "/token" => gemini::token(&req, &body),
        "GET" if path.starts_with("/computeMetadata/") => gemini::metadata_token(&req),
        // Bedrock Converse: /model/{modelId}/converse and /converse-stream.
        "POST"
            if path.starts_with("/model/")
                && (path.ends_with("/converse") || path.ends_with("/converse-stream")) =>
        {
            bedrock::converse(&req, &body, &state).await
        }
        _ => openai::not_found(&req),
    }
}
