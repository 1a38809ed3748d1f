//! The HTTP edge: actix-web handlers parse and validate, then hand the work to the actors.

pub(crate) mod agents;
mod auth;
mod body;
mod browser_guard;
mod chat;
mod completion;
mod connection;
mod doors;
mod embeddings;
pub(crate) mod evals;
mod feedback;
mod keys;
mod messages;
mod models;
pub(crate) mod ops;
pub(crate) mod playground;
mod replay;
mod responses;
pub(crate) mod runs;
pub(crate) mod search;
mod share;
mod sse;
pub(crate) mod stats;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use flowgate_actors::engine::Gateway;
use flowgate_actors::error::GatewayError;
use flowgate_actors::supervisor::{Drain, Supervisor};
use flowgate_actors::templates::sandbox::{Sandbox, SandboxSettings};
use flowgate_actors::templates::Renderer;

use crate::config::{Config, RequestLimits};

pub use auth::{Auth, DEFAULT_TENANT};

/// Shared by every worker.
#[derive(Clone)]
pub struct AppState {
    /// Shared: each run holds it (one reference count, not a copy of its handles).
    pub gateway: Arc<Gateway>,
    pub auth: Arc<Auth>,
    /// Who may deploy.
    pub admin: Arc<agents::AdminAuth>,
    pub max_body_bytes: usize,
    pub limits: RequestLimits,
    /// Renders message templates in worker processes.
    pub renderer: Renderer,
    /// Who may read the operations endpoints (empty: anyone).
    pub ops: Arc<ops::OpsAuth>,
    /// Request body bytes held by all requests in flight.
    pub body_budget: body::BodyBudget,
    /// The web UI's sign-in sessions.
    pub sessions: Arc<crate::ui::session::Sessions>,
}

/// Serves until SIGINT/SIGTERM, then drains the recorder.
pub async fn serve(config: Config) -> Result<(), String> {
    let listener = TcpListener::bind(config.server.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    let mut gateway_config = config.gateway;
    if config.server.public_url.is_none() {
        gateway_config.public_url = format!("http://{bound}");
    }
    raise_open_files_limit();
    let (gateway, supervisor) = Supervisor::start(gateway_config)?;
    // `/proc/self/exe` still runs this binary after a package upgrade replaced the file.
    let program = match std::path::Path::new("/proc/self/exe") {
        proc_exe if proc_exe.exists() => proc_exe.to_path_buf(),
        _ => std::env::current_exe()
            .map_err(|e| format!("cannot find the flowgate binary to start render workers: {e}"))?,
    };
    let sandbox = Sandbox::new(SandboxSettings {
        program,
        args: vec!["render-worker".into()],
        workers: config.limits.template_workers,
        memory_bytes: config.limits.templates.max_memory_bytes,
    });
    let clock: Arc<dyn flowgate_actors::keys::WallClock> =
        Arc::new(flowgate_actors::keys::SystemWallClock);
    // With `[redis]`, limits hold across instances; without, this process counts alone.
    let limiter: Arc<dyn flowgate_actors::keys::Limiter> = match config.redis.clone() {
        Some(settings) => {
            let on_unavailable = settings.on_unavailable;
            let limiter =
                flowgate_actors::keys::redis::RedisLimiter::connect(settings, clock.clone())
                    .await
                    .map_err(|e| format!("cannot start the limits on Redis (`redis.url`): {e}"))?;
            tracing::info!(
                ?on_unavailable,
                "keys' and tenants' limits are counted in Redis, across instances"
            );
            Arc::new(limiter)
        }
        None => Arc::new(flowgate_actors::keys::LocalLimiter::new(clock.clone())),
    };
    let registry = flowgate_actors::keys::KeyRegistry::load(
        gateway.key_store.clone(),
        clock,
        config.auth.tenant_limits.clone(),
        limiter,
    )
    .await
    .map_err(|e| format!("cannot read the API keys from the store: {e}"))?;
    // Spend and last use reach the store about once a second (and once more at shutdown).
    // The keys are read again as soon as another instance on the same database changed one
    // (a revocation holds everywhere at once), and as a safety net every 5 s, or every half
    // second while the store's change listener is down.
    {
        let registry = registry.clone();
        // Held by the task: the watch's sender lives as long as it does.
        let changes = gateway.changes.clone();
        let mut key_changes = changes.watch_keys();
        actix_rt::spawn(async move {
            let mut ticks = actix_rt::time::interval(Duration::from_millis(500));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut tick = 0u64;
            loop {
                let heard = tokio::select! {
                    _ = ticks.tick() => false,
                    changed = key_changes.changed() => changed.is_ok(),
                };
                if !heard {
                    tick += 1;
                    if tick.is_multiple_of(2) {
                        if let Err(e) = registry.persist_usage().await {
                            tracing::warn!(error = %e, "cannot write the keys' spend; trying again");
                        }
                    }
                    if changes.is_live() && !tick.is_multiple_of(10) {
                        continue;
                    }
                }
                // Keys made or revoked through another instance on the same database.
                if let Err(e) = registry.refresh().await {
                    tracing::warn!(error = %e, "cannot read the keys again; trying again");
                }
            }
        });
    }
    let auth = Auth::new(
        &config.auth.api_keys,
        &config.auth.tenants,
        registry.clone(),
    );
    // With no key, anything that reaches the port is trusted: only what a local program
    // sends, not what a web page makes a browser send.
    let browser_guard = auth.is_open();
    let body_budget = body::BodyBudget::new(
        config.limits.max_inflight_body_bytes,
        gateway.metrics.body_bytes_in_flight.clone(),
    );
    let gateway_sessions_store = gateway.sessions.clone();
    let state = AppState {
        gateway: Arc::new(gateway),
        auth: Arc::new(auth),
        admin: Arc::new(agents::AdminAuth::new(&config.admin.api_keys)),
        max_body_bytes: config.server.max_body_bytes,
        renderer: Renderer::sandboxed(config.limits.templates, Arc::new(sandbox)),
        ops: Arc::new(ops::OpsAuth::new(&config.ops_keys)),
        body_budget,
        limits: config.limits.clone(),
        sessions: Arc::new(crate::ui::session::Sessions::new(
            gateway_sessions_store.clone(),
        )),
    };
    // Benchmarks a previous process left running go on.
    crate::evals::resume(&state).await;
    let workers = config.server.workers;
    // Per worker, rounded up.
    let max_connections = config.limits.max_connections.div_ceil(workers.max(1));
    let server = HttpServer::new(move || {
        App::new()
            .wrap(actix_web::middleware::Condition::new(
                browser_guard,
                browser_guard::BrowserGuard,
            ))
            .wrap(crate::ui::session::SessionBridge {
                state: state.clone(),
            })
            .app_data(web::Data::new(state.clone()))
            .configure(routes)
    })
    .on_connect(connection::on_connect)
    .workers(workers)
    .max_connections(max_connections)
    .backlog(4096)
    .max_connection_rate(4096)
    .keep_alive(Duration::from_secs(75))
    .shutdown_timeout(30)
    // Signals are ours: stop the server, then drain the recorder, in that order.
    .disable_signals()
    .listen(listener)
    .map_err(|e| format!("cannot serve on {bound}: {e}"))?
    .run();
    let handle = server.handle();
    actix_rt::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing requests in flight");
        handle.stop(true).await;
    });
    // Tests and scripts read this line to find the port.
    println!("listening on http://{bound}");
    tracing::info!(address = %bound, "flowgate listening");
    server.await.map_err(|e| format!("server error: {e}"))?;
    // Benchmark items in flight are finished and written; the rest resumes at the next start.
    crate::evals::drain(Duration::from_secs(30)).await;
    registry.drain(Duration::from_secs(5)).await;
    if let Err(e) = registry.persist_usage().await {
        tracing::error!(error = %e, "cannot write the keys' spend at shutdown");
    }
    tracing::info!("draining the recorder");
    // The drain waits for the recorder (30 s) and the flush (30 s) at most; past this the
    // supervisor itself is stuck.
    supervisor
        .send(Drain)
        .timeout(std::time::Duration::from_secs(90))
        .await
        .map_err(|e| format!("supervisor did not drain: {e}"))??;
    Ok(())
}

/// Raises the soft limit of open files to the hard limit, as nginx does: each client
/// connection holds a descriptor, and the common soft limit of 1,024 would turn away clients
/// long before `limits.max_connections`.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit for the duration of each call.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let before = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                tracing::debug!(
                    from = before,
                    to = limit.rlim_max,
                    "raised the open files limit"
                );
            }
        }
    }
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops flowgate");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/v1/chat/completions",
        web::post().to(chat::chat_completions),
    )
    .route("/chat/completions", web::post().to(chat::chat_completions))
    .route("/v1/responses", web::post().to(responses::responses))
    .route("/v1/messages", web::post().to(messages::messages))
    .route("/v1/embeddings", web::post().to(embeddings::embeddings))
    .route("/v1/models", web::get().to(models::list_models))
    .route("/v1/models/{model:.*}", web::get().to(models::get_model))
    .route("/metrics", web::get().to(ops::metrics))
    .route("/healthz", web::get().to(ops::healthz))
    .route("/readyz", web::get().to(ops::readyz))
    .route("/api/providers", web::get().to(ops::providers))
    // Before `/api/runs/{run_id}`: a path that names a resource answers 405 to other methods.
    .route("/api/runs/search", web::post().to(search::search_all_runs))
    .route("/api/runs/search/fields", web::get().to(search::all_fields))
    .route(
        "/api/agents/{agent}/runs/search",
        web::post().to(search::search_agent_runs),
    )
    .route(
        "/api/agents/{agent}/runs/search/fields",
        web::get().to(search::agent_fields),
    )
    .route("/api/runs/{run_id}", web::get().to(runs::get_run))
    .route("/api/runs/{run_id}/share", web::post().to(share::share_run))
    .route(
        "/api/runs/{run_id}/share",
        web::delete().to(share::revoke_share),
    )
    .route("/share/{token}", web::get().to(share::shared_run))
    .route(
        "/api/runs/{run_id}/replay",
        web::post().to(replay::replay_run),
    )
    .route("/api/playground", web::post().to(playground::playground))
    .route("/api/keys/self", web::get().to(keys::own_key))
    .route(
        "/api/agents/{agent}/datasets",
        web::post().to(evals::create_dataset),
    )
    .route(
        "/api/agents/{agent}/datasets",
        web::get().to(evals::list_datasets),
    )
    .route(
        "/api/agents/{agent}/datasets/{name}",
        web::get().to(evals::get_dataset),
    )
    .route(
        "/api/agents/{agent}/datasets/{name}/items",
        web::post().to(evals::add_items),
    )
    .route(
        "/api/agents/{agent}/datasets/{name}/export",
        web::get().to(evals::export_dataset),
    )
    .route(
        "/api/agents/{agent}/reviews",
        web::post().to(evals::review_run),
    )
    .route(
        "/api/agents/{agent}/reviews",
        web::get().to(evals::list_reviews),
    )
    .route(
        "/api/agents/{agent}/reviewer",
        web::put().to(evals::put_reviewer),
    )
    .route(
        "/api/agents/{agent}/benchmarks",
        web::post().to(evals::create_benchmark),
    )
    .route(
        "/api/agents/{agent}/benchmarks",
        web::get().to(evals::list_benchmarks),
    )
    .route(
        "/api/agents/{agent}/benchmarks/{id}",
        web::get().to(evals::get_benchmark),
    )
    .route(
        "/api/agents/{agent}/benchmarks/{id}/compare",
        web::get().to(evals::compare),
    )
    .route(
        "/api/agents/{agent}/benchmarks/{id}/cancel",
        web::post().to(evals::cancel_benchmark),
    )
    .route("/api/admin/keys", web::post().to(keys::create_key))
    .route("/api/admin/keys", web::get().to(keys::list_keys))
    .route("/api/admin/keys/{id}", web::get().to(keys::get_key))
    .route("/api/admin/keys/{id}", web::patch().to(keys::update_key))
    .route("/api/admin/keys/{id}", web::delete().to(keys::revoke_key))
    .route("/api/agents", web::get().to(stats::list_agents))
    .route("/api/cost", web::get().to(stats::cost))
    .route(
        "/api/agents/{agent}/stats",
        web::get().to(stats::agent_stats),
    )
    .route(
        "/api/agents/{agent}/runs",
        web::get().to(runs::list_agent_runs),
    )
    .route("/v1/feedback", web::post().to(feedback::post_feedback))
    .route(
        "/api/runs/{run_id}/feedback",
        web::get().to(feedback::list_run_feedback),
    )
    .route(
        "/api/agents/{agent}/versions",
        web::get().to(agents::list_versions),
    )
    .route(
        "/api/agents/{agent}/versions/{version_id}",
        web::get().to(agents::get_version),
    )
    .route(
        "/api/agents/{agent}/versions/{version_id}/deploy",
        web::post().to(agents::deploy),
    )
    .route(
        "/api/agents/{agent}/deployments",
        web::get().to(agents::list_deployments),
    )
    .route(
        "/api/agents/{agent}/schemas",
        web::get().to(agents::list_schemas),
    )
    .configure(crate::ui::routes)
    .default_service(web::to(not_found));
}

/// An unknown path answers 404 only to a caller with a valid key (a 401 otherwise), so the
/// gateway's routes cannot be probed without one.
async fn not_found(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    use actix_web::ResponseError;
    if let Err(e) = state.auth.caller(&req) {
        // The Anthropic SDKs send their key in `x-api-key`; admins have keys of their own.
        if state.auth.anthropic_caller(&req).is_err() && !state.admin.is_admin(&req) {
            return e.error_response();
        }
    }
    GatewayError::not_found(format!("no route for {} {}", req.method(), req.path()))
        .error_response()
}
