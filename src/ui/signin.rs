//! `GET /signin`, `POST /signin` (a tenant API key or an admin key → a session cookie),
//! `POST /signout`.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use flowgate_actors::error::GatewayError;
use flowgate_actors::model_ref::is_slug;
use minijinja::context;
use serde::Deserialize;

use super::page::{self, Viewer};
use super::{csrf, session};
use crate::http::{AppState, DEFAULT_TENANT};

/// Longest key accepted (keys are far shorter; this bounds the hashing).
const MAX_KEY_BYTES: usize = 1024;

#[derive(Deserialize)]
pub struct NextQuery {
    #[serde(default)]
    next: Option<String>,
}

/// Where to go after signing in: a path of this site only.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_string(),
        _ => "/agents".to_string(),
    }
}

fn form_page(status: StatusCode, next: &str, error: Option<&str>) -> HttpResponse {
    page::render(
        status,
        None,
        "",
        "signin.html",
        context! { next => next, error => error },
    )
}

pub async fn form(
    req: HttpRequest,
    query: web::Query<NextQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let next = safe_next(query.next.as_deref());
    if let Ok(Some(_)) = session::of_request(&req, &state).await {
        return redirect(&next);
    }
    form_page(StatusCode::OK, &next, None)
}

#[derive(Deserialize)]
pub struct SignInForm {
    key: String,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    next: Option<String>,
}

fn redirect(to: &str) -> HttpResponse {
    page::secure(HttpResponse::SeeOther())
        .insert_header((header::LOCATION, to))
        .finish()
}

/// A form posted from another site is refused (login CSRF): a browser sends `Origin` with
/// every form post.
fn same_origin(req: &HttpRequest) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    let origin = origin.to_str().unwrap_or("");
    let host = req.connection_info().host().to_string();
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|authority| authority.eq_ignore_ascii_case(&host))
}

/// A form, or the same fields as JSON (what `static/app.js` sends: the no-key mode's browser
/// guard lets only JSON posts through).
type FormOrJson<T> = web::Either<web::Form<T>, web::Json<T>>;

fn fields<T>(body: FormOrJson<T>) -> T {
    match body {
        web::Either::Left(form) => form.into_inner(),
        web::Either::Right(json) => json.into_inner(),
    }
}

pub async fn sign_in(
    req: HttpRequest,
    form: FormOrJson<SignInForm>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let form = fields(form);
    let next = safe_next(form.next.as_deref());
    if !same_origin(&req) {
        return form_page(
            StatusCode::FORBIDDEN,
            &next,
            Some("sign-in from another site is refused"),
        );
    }
    let key = form.key.trim();
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return form_page(StatusCode::UNAUTHORIZED, &next, Some("enter a key"));
    }
    let (tenant, admin) = if let Some(who) = state.admin.who(key) {
        let tenant = match form.tenant.trim() {
            "" => DEFAULT_TENANT.to_string(),
            t if is_slug(t) => t.to_string(),
            _ => {
                return form_page(
                    StatusCode::BAD_REQUEST,
                    &next,
                    Some("the tenant is a name of lowercase letters, digits, - and _"),
                )
            }
        };
        (tenant, Some(who))
    } else if let Some(tenant) = state.auth.tenant_of_key(key) {
        (tenant, None)
    } else {
        tracing::info!("web UI sign-in with an unknown key");
        return form_page(
            StatusCode::UNAUTHORIZED,
            &next,
            Some("this key is not a flowgate API key or admin key"),
        );
    };
    let id = match state.sessions.create(key, tenant, admin).await {
        Ok(id) => id,
        Err(e) => return page::error(None, &e),
    };
    page::secure(HttpResponse::SeeOther())
        .insert_header((header::LOCATION, next))
        .insert_header((header::SET_COOKIE, session::set_cookie(&req, &id)))
        .finish()
}

#[derive(Deserialize)]
pub struct SignOutForm {
    #[serde(default)]
    csrf: String,
}

pub async fn sign_out(
    req: HttpRequest,
    form: FormOrJson<SignOutForm>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let form = fields(form);
    let session = match session::of_request(&req, &state).await {
        Ok(session) => session,
        Err(e) => return page::error(None, &e),
    };
    if let Some((id, s)) = session {
        if !csrf::same(&form.csrf, &s.csrf) {
            let viewer = Viewer {
                tenant: s.tenant.clone(),
                admin: s.admin.clone(),
                csrf: s.csrf.clone(),
                signed_in: true,
            };
            return page::error(
                Some(&viewer),
                &GatewayError::new(
                    flowgate_actors::error::ErrorKind::Forbidden,
                    "the sign-out form's CSRF token does not match: reload the page",
                ),
            );
        }
        if let Err(e) = state.sessions.remove(&id).await {
            return page::error(None, &e);
        }
    }
    page::secure(HttpResponse::SeeOther())
        .insert_header((header::LOCATION, "/signin"))
        .insert_header((header::SET_COOKIE, session::clear_cookie(&req)))
        .finish()
}
