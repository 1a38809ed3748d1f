//! Browser sessions of the web UI.
//!
//! Signing in with a tenant API key or an admin key makes a session: a random id (256 bits) in
//! a cookie that is `HttpOnly` (no script reads it), `SameSite=Strict` (no other site's page
//! sends it) and `Secure` when the UI is reached over TLS. The session is kept by the storage
//! layer ([`SessionStore`]: sled, or PostgreSQL shared by every instance), under the digest of
//! its id and with its key sealed ([`flowgate_actors::sessions`]), and lasts [`SESSION_TTL`].
//! With several instances behind a load balancer, a session made on one is known to all and a
//! sign-out on one ends it everywhere. A session whose key was revoked, has expired or is no
//! longer configured ends at its next use.
//!
//! Pages read the session to know the viewer's tenant. The page scripts call the same JSON
//! API under `/api/` as any client: [`SessionBridge`] lets such a call that carries the
//! session cookie (and no `Authorization` header) act with the session's key, and refuses a
//! state-changing one that lacks the session's CSRF token in [`CSRF_HEADER`].

use std::future::{ready, Ready};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::HttpRequest;
use flowgate_actors::error::{ErrorKind, GatewayError};
use flowgate_actors::sessions::{self, OpenSession};
use flowgate_actors::storage::SessionStore;
use futures::future::{Either, LocalBoxFuture};

use super::csrf;
use crate::http::AppState;

/// The session cookie.
pub const COOKIE: &str = "flowgate_session";
/// The header a page script sends its session's CSRF token in.
pub const CSRF_HEADER: &str = "x-flowgate-csrf";
/// How long a session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// How often a sign-in also clears the expired sessions from the store.
const PURGE_EVERY_MS: u64 = 10 * 60 * 1000;

/// Who a session is.
pub type Session = OpenSession;

/// The sessions, in the storage layer.
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    /// When this process last cleared the expired sessions (milliseconds since the epoch).
    last_purge_ms: AtomicU64,
}

fn now_ms() -> u64 {
    crate::http::stats::now_ms()
}

impl Sessions {
    pub fn new(store: Arc<dyn SessionStore>) -> Sessions {
        Sessions {
            store,
            last_purge_ms: AtomicU64::new(0),
        }
    }

    /// A new session; its id for the cookie.
    pub async fn create(
        &self,
        key: &str,
        tenant: String,
        admin: Option<String>,
    ) -> Result<String, GatewayError> {
        let now = now_ms();
        let last = self.last_purge_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= PURGE_EVERY_MS
            && self
                .last_purge_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            match self.store.delete_expired(now).await {
                Ok(n) if n > 0 => tracing::debug!(sessions = n, "cleared expired UI sessions"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot clear the expired UI sessions"),
            }
        }
        let made = sessions::new_session(key, tenant, admin, now, SESSION_TTL.as_millis() as u64)?;
        self.store.put(&made.record).await?;
        Ok(made.id)
    }

    /// The live session of this id (not checked against the keys: see [`of_request`]).
    pub async fn get(&self, id: &str) -> Result<Option<Session>, GatewayError> {
        if !sessions::is_well_formed(id) {
            return Ok(None);
        }
        let digest = sessions::id_digest(id);
        let Some(record) = self.store.get(&digest, now_ms()).await? else {
            return Ok(None);
        };
        Ok(sessions::open(id, &record))
    }

    /// Ends the session of this id, on every instance.
    pub async fn remove(&self, id: &str) -> Result<(), GatewayError> {
        if sessions::is_well_formed(id) {
            self.store.delete(&sessions::id_digest(id)).await?;
        }
        Ok(())
    }

    /// Ends every session signed in with the key of this digest (a revoked key).
    pub async fn end_for_key(&self, key_digest: &str) -> Result<u64, GatewayError> {
        Ok(self.store.delete_for_key(key_digest).await?)
    }
}

/// Whether the key a session signed in with still signs in as that session: an admin key
/// still configured; a tenant key still of that tenant, not revoked, not expired.
fn key_still_valid(state: &AppState, session: &Session) -> bool {
    match &session.admin {
        Some(_) => state.admin.who(&session.key).is_some(),
        None => state.auth.tenant_of_key(&session.key).as_deref() == Some(session.tenant.as_str()),
    }
}

/// The session of a request, with its id: `None` without a cookie, or when the session is
/// unknown, expired, or its key no longer valid (then it is ended, everywhere).
pub async fn of_request(
    req: &HttpRequest,
    state: &AppState,
) -> Result<Option<(String, Session)>, GatewayError> {
    let Some(id) = cookie_of(req.headers()) else {
        return Ok(None);
    };
    session_of_id(id, state).await
}

async fn session_of_id(
    id: &str,
    state: &AppState,
) -> Result<Option<(String, Session)>, GatewayError> {
    let Some(session) = state.sessions.get(id).await? else {
        return Ok(None);
    };
    if !key_still_valid(state, &session) {
        tracing::info!(tenant = %session.tenant, "a UI session ended: its key is no longer valid");
        state.sessions.remove(id).await?;
        return Ok(None);
    }
    Ok(Some((id.to_string(), session)))
}

/// The value of the session cookie among the request's cookies.
pub fn cookie_of(headers: &header::HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
}

/// Whether the browser reached us over TLS (directly or through a proxy that says so).
fn is_tls(req: &HttpRequest) -> bool {
    req.connection_info().scheme() == "https"
}

/// The `Set-Cookie` value that stores `id`.
pub fn set_cookie(req: &HttpRequest, id: &str) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if is_tls(req) { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that removes the cookie.
pub fn clear_cookie(req: &HttpRequest) -> String {
    format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if is_tls(req) { "; Secure" } else { "" }
    )
}

/// Whether a method changes state (and so needs the CSRF token).
pub fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The middleware that lets the UI's scripts call `/api/` with the session. Hand-written, as
/// `BrowserGuard`, so that other paths pay one prefix test and no allocation.
pub struct SessionBridge {
    pub state: AppState,
}

impl<S, B> Transform<S, ServiceRequest> for SessionBridge
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Transform = SessionBridgeService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(SessionBridgeService {
            service: Rc::new(service),
            state: self.state.clone(),
        }))
    }
}

pub struct SessionBridgeService<S> {
    service: Rc<S>,
    state: AppState,
}

impl<S, B> Service<ServiceRequest> for SessionBridgeService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Future = Either<S::Future, LocalBoxFuture<'static, Result<Self::Response, Self::Error>>>;

    forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        let bridged = req.path().starts_with("/api/")
            && !req.headers().contains_key(header::AUTHORIZATION)
            && cookie_of(req.headers()).is_some();
        if !bridged {
            return Either::Left(self.service.call(req));
        }
        let (service, state) = (self.service.clone(), self.state.clone());
        Either::Right(Box::pin(async move {
            bridge(&mut req, &state).await?;
            service.call(req).await
        }))
    }
}

/// Attaches the session's key to an API call that carries the session cookie; refuses a
/// state-changing one without the session's CSRF token. A call without a (live) session is
/// left as it is: the endpoint answers it as any call without a key.
async fn bridge(req: &mut ServiceRequest, state: &AppState) -> Result<(), GatewayError> {
    let Some(id) = cookie_of(req.headers()).map(str::to_string) else {
        return Ok(());
    };
    let Some((_, session)) = session_of_id(&id, state).await? else {
        return Ok(());
    };
    if changes_state(req.method()) {
        let sent = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !csrf::same(sent, &session.csrf) {
            return Err(GatewayError::new(
                ErrorKind::Forbidden,
                "this request needs the page's CSRF token: reload the page and try again",
            )
            .with_code("csrf_token_missing"));
        }
    }
    let bearer = HeaderValue::from_str(&format!("Bearer {}", session.key))
        .map_err(|_| GatewayError::internal("the session's key is not a header value"))?;
    let headers = req.headers_mut();
    headers.insert(header::AUTHORIZATION, bearer);
    if session.admin.is_some() {
        let tenant = HeaderValue::from_str(&session.tenant)
            .map_err(|_| GatewayError::internal("the session's tenant is not a header value"))?;
        headers.insert(header::HeaderName::from_static("x-flowgate-tenant"), tenant);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[actix_rt::test]
    async fn a_session_is_found_by_its_id_and_gone_once_removed() {
        let dir = tempfile::tempdir().unwrap();
        let storage = flowgate_actors::storage::sled::SledStorage::open(
            dir.path(),
            std::time::Duration::from_millis(50),
        )
        .unwrap();
        let sessions = Sessions::new(storage.storage().sessions);
        let id = sessions.create("k", "acme".into(), None).await.unwrap();
        let req = TestRequest::default()
            .insert_header((header::COOKIE, format!("a=b; {COOKIE}={id}")))
            .to_http_request();
        assert_eq!(cookie_of(req.headers()), Some(id.as_str()));
        let session = sessions.get(&id).await.unwrap().unwrap();
        assert_eq!(session.tenant, "acme");
        assert_eq!(session.key, "k");
        assert!(sessions.get("not-an-id").await.unwrap().is_none());
        sessions.remove(&id).await.unwrap();
        assert!(sessions.get(&id).await.unwrap().is_none());
    }

    #[test]
    fn the_cookie_is_http_only_and_strict() {
        let req = TestRequest::default().to_http_request();
        let cookie = set_cookie(&req, "abc");
        assert!(cookie.contains("HttpOnly"));
        assert!(cookie.contains("SameSite=Strict"));
        assert!(!cookie.contains("Secure"));
        let tls = TestRequest::default()
            .insert_header(("x-forwarded-proto", "https"))
            .to_http_request();
        assert!(set_cookie(&tls, "abc").contains("; Secure"));
    }
}
