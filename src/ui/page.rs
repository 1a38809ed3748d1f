//! What every page shares: the templates (one environment, HTML-escaped), the viewer (whose
//! session, which tenant), the layout's context and the security headers of every page.

use std::sync::OnceLock;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use minijinja::{context, Environment, Value};
use serde::Serialize;

use super::session;
use crate::http::AppState;

/// No inline script or style, nothing from elsewhere; forms and fetches go to this origin only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

const TEMPLATES: &[(&str, &str)] = &[
    ("layout.html", include_str!("layout.html")),
    ("error.html", include_str!("error.html")),
    ("signin.html", include_str!("signin.html")),
    ("agents.html", include_str!("agents.html")),
    ("runs.html", include_str!("runs.html")),
    ("run.html", include_str!("run.html")),
    ("playground.html", include_str!("playground.html")),
    ("versions.html", include_str!("versions.html")),
    ("agent_tabs.html", include_str!("agent_tabs.html")),
    ("benchmarks.html", include_str!("benchmarks.html")),
    ("benchmark.html", include_str!("benchmark.html")),
    ("reviews.html", include_str!("reviews.html")),
    ("cost.html", include_str!("cost.html")),
    ("providers.html", include_str!("providers.html")),
];

fn environment() -> &'static Environment<'static> {
    static ENVIRONMENT: OnceLock<Environment<'static>> = OnceLock::new();
    ENVIRONMENT.get_or_init(|| {
        // `.html` names turn on HTML escaping of every value.
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        for (name, source) in TEMPLATES {
            if let Err(e) = env.add_template(name, source) {
                tracing::error!(template = name, error = %e, "a UI template does not compile");
            }
        }
        env
    })
}

/// Who is looking at a page.
#[derive(Debug, Clone, Serialize)]
pub struct Viewer {
    pub tenant: String,
    /// The admin key's label, for an admin session.
    pub admin: Option<String>,
    /// The session's CSRF token (empty without a session: the no-key mode's browser guard
    /// checks the origin of every request instead).
    pub csrf: String,
    /// Signed in (else: the no-key mode, where the default tenant needs no sign-in).
    pub signed_in: bool,
}

impl Viewer {
    pub fn is_admin(&self) -> bool {
        self.admin.is_some()
    }
}

/// The viewer, or the redirect to the sign-in page (or, when the sessions cannot be read, an
/// error page).
pub async fn viewer(req: &HttpRequest, state: &AppState) -> Result<Viewer, Box<HttpResponse>> {
    match session::of_request(req, state).await {
        Ok(Some((_, s))) => {
            return Ok(Viewer {
                tenant: s.tenant,
                admin: s.admin,
                csrf: s.csrf,
                signed_in: true,
            })
        }
        Ok(None) => {}
        Err(e) => return Err(Box::new(error(None, &e))),
    }
    if state.auth.is_open() {
        return Ok(Viewer {
            tenant: crate::http::DEFAULT_TENANT.to_string(),
            admin: None,
            csrf: String::new(),
            signed_in: false,
        });
    }
    let next = match req.query_string() {
        "" => req.path().to_string(),
        q => format!("{}?{q}", req.path()),
    };
    let target = format!("/signin?next={}", encode(&next));
    Err(Box::new(
        HttpResponse::SeeOther()
            .insert_header((header::LOCATION, target))
            .finish(),
    ))
}

/// Percent-encodes a query value.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The headers every page carries.
pub fn secure(mut response: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    response
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "same-origin"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::CACHE_CONTROL, "private, no-store"));
    response
}

/// A page: the template rendered with the viewer and `ctx`, with the security headers.
pub fn render(
    status: actix_web::http::StatusCode,
    viewer: Option<&Viewer>,
    nav: &str,
    template: &str,
    ctx: Value,
) -> HttpResponse {
    let body = environment()
        .get_template(template)
        .and_then(|t| t.render(context! { viewer => viewer, nav => nav, ..ctx }));
    match body {
        Ok(body) => secure(HttpResponse::build(status))
            .content_type("text/html; charset=utf-8")
            .body(body),
        Err(e) => {
            tracing::error!(template, error = %e, "a UI page did not render");
            secure(HttpResponse::InternalServerError())
                .content_type("text/plain; charset=utf-8")
                .body("this page could not be shown")
        }
    }
}

/// A 200 page.
pub fn ok(viewer: &Viewer, nav: &str, template: &str, ctx: Value) -> HttpResponse {
    render(
        actix_web::http::StatusCode::OK,
        Some(viewer),
        nav,
        template,
        ctx,
    )
}

/// An error page with the status of the error.
pub fn error(viewer: Option<&Viewer>, e: &flowgate_actors::error::GatewayError) -> HttpResponse {
    render(
        e.status_code(),
        viewer,
        "",
        "error.html",
        context! { status => e.status_code().as_u16(), message => &e.message },
    )
}
