//! Web pages: one handler file per page, its template beside it. Pages format what their
//! handler gathered from the same data the JSON endpoints serve; the page scripts
//! (`static/`) call those JSON endpoints with the session ([`session::SessionBridge`]).

pub mod agents;
pub mod benchmark;
pub mod benchmarks;
pub mod cost;
pub mod csrf;
pub mod format;
pub mod page;
pub mod playground;
pub mod providers;
pub mod reviews;
pub mod run;
pub mod runs;
pub mod session;
pub mod shared_run;
pub mod signin;
pub mod static_files;
pub mod versions;

use actix_web::http::header;
use actix_web::{web, HttpResponse};

/// The pages' routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(home))
        .route("/signin", web::get().to(signin::form))
        .route("/signin", web::post().to(signin::sign_in))
        .route("/signout", web::post().to(signin::sign_out))
        .route("/static/{name}", web::get().to(static_files::serve))
        .route("/agents", web::get().to(agents::page))
        .route("/runs", web::get().to(runs::all_runs))
        .route("/runs/{run_id}", web::get().to(run::page))
        .route("/agents/{agent}/runs", web::get().to(runs::agent_runs))
        .route("/agents/{agent}/versions", web::get().to(versions::page))
        .route(
            "/agents/{agent}/benchmarks",
            web::get().to(benchmarks::page),
        )
        .route(
            "/agents/{agent}/benchmarks/{id}",
            web::get().to(benchmark::page),
        )
        .route("/agents/{agent}/reviews", web::get().to(reviews::page))
        .route("/playground", web::get().to(playground::page))
        .route("/cost", web::get().to(cost::page))
        .route("/providers", web::get().to(providers::page));
}

async fn home() -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/agents"))
        .finish()
}
