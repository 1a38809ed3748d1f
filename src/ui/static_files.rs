//! The UI's stylesheet and scripts, embedded in the binary.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

const FILES: &[(&str, &str, &str)] = &[
    ("app.css", "text/css", include_str!("static/app.css")),
    ("app.js", "text/javascript", include_str!("static/app.js")),
    ("runs.js", "text/javascript", include_str!("static/runs.js")),
    ("run.js", "text/javascript", include_str!("static/run.js")),
    (
        "playground.js",
        "text/javascript",
        include_str!("static/playground.js"),
    ),
    (
        "versions.js",
        "text/javascript",
        include_str!("static/versions.js"),
    ),
    (
        "benchmarks.js",
        "text/javascript",
        include_str!("static/benchmarks.js"),
    ),
    (
        "benchmark.js",
        "text/javascript",
        include_str!("static/benchmark.js"),
    ),
    (
        "reviews.js",
        "text/javascript",
        include_str!("static/reviews.js"),
    ),
];

pub async fn serve(name: web::Path<String>) -> HttpResponse {
    match FILES.iter().find(|(n, _, _)| *n == name.as_str()) {
        Some((_, kind, body)) => HttpResponse::Ok()
            .content_type(format!("{kind}; charset=utf-8"))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            // Assets change with the binary: a short cache, revalidated after.
            .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
            .body(*body),
        None => HttpResponse::NotFound().finish(),
    }
}
