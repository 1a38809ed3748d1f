//! Share links: `POST /api/runs/{run_id}/share` makes one (or answers with the run's existing
//! one), `DELETE /api/runs/{run_id}/share` revokes it, and `GET /share/{token}` shows that one
//! run to anyone holding the link, without an API key: JSON when the client asks for
//! `application/json`, otherwise a read-only HTML page (`src/ui/shared_run.rs`).
//!
//! Only the run's owner (its tenant's key) shares or revokes. A token that is malformed, was
//! never issued or was revoked is a 404 that says nothing more, and the link shows only
//! [`SharedRunView`]: no tenant, metadata, feedback token or attempts.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use flowgate_actors::error::GatewayError;
use flowgate_actors::share::{is_well_formed, new_token, SharedRunView};
use serde_json::json;

use super::runs::{find_run, parse_run_id};
use super::AppState;

/// The public link of a share.
fn share_url(public_url: &str, token: &str) -> String {
    format!("{public_url}/share/{token}")
}

pub async fn share_run(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = state.auth.tenant(&req)?;
    let id = parse_run_id(&path.into_inner())?;
    find_run(&state, &tenant, id).await?;
    let offered = new_token()?;
    let share = state.gateway.shares.share(&tenant, id, &offered).await?;
    let mut response = if share.token == offered {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(response.json(json!({
        "url": share_url(&state.gateway.public_url, &share.token),
        "token": share.token,
        "run_id": id,
        "created_at": share.created_at,
    })))
}

pub async fn revoke_share(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let tenant = state.auth.tenant(&req)?;
    let id = parse_run_id(&path.into_inner())?;
    if state.gateway.shares.revoke(&tenant, id).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(GatewayError::not_found(format!("run `{id}` is not shared")))
    }
}

pub async fn shared_run(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let gone = || GatewayError::not_found("no shared run at this link (it may have been revoked)");
    let token = path.into_inner();
    if !is_well_formed(&token) {
        return Err(gone());
    }
    let share = state.gateway.shares.get(&token).await?.ok_or_else(gone)?;
    let run = state
        .gateway
        .runs
        .get(&share.tenant, share.run_id)
        .await?
        .ok_or_else(gone)?;
    let view = SharedRunView::of(run);
    let mut response = HttpResponse::Ok();
    // The token is the secret: never sent on to a page the viewer follows a link to.
    response
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "private, no-store"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    if wants_json(&req) {
        return Ok(response.json(view));
    }
    let page = crate::ui::shared_run::page(&view)?;
    Ok(response
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            crate::ui::page::CONTENT_SECURITY_POLICY,
        ))
        .content_type("text/html; charset=utf-8")
        .body(page))
}

/// Whether the client's `Accept` asks for JSON (a browser's asks for HTML).
fn wants_json(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/json"))
}
