//! Browser sessions of the web UI.
//!
//! Signing in with a tenant API key or an admin key makes a session: a random id (256 bits) in
//! a cookie that is `HttpOnly` (no script reads it), `SameSite=Strict` (no other site's page
//! sends it) and `Secure` when the UI is reached over TLS. The session stays in this process's
//! memory (a restart signs everyone out) and lasts [`SESSION_TTL`].
//!
//! Pages read the session to know the viewer's tenant. The page scripts call the same JSON
//! API under `/api/` as any client: [`SessionBridge`] lets such a call that carries the
//! session cookie (and no `Authorization` header) act with the session's key, and refuses a
//! state-changing one that lacks the session's CSRF token in [`CSRF_HEADER`].

use std::collections::HashMap;
use std::future::{ready, Ready};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::HttpRequest;
use flowgate_actors::error::{ErrorKind, GatewayError};
use futures::future::Either;

use super::csrf;

/// The session cookie.
pub const COOKIE: &str = "flowgate_session";
/// The header a page script sends its session's CSRF token in.
pub const CSRF_HEADER: &str = "x-flowgate-csrf";
/// How long a session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions held at once: past it, the oldest are dropped.
const MAX_SESSIONS: usize = 10_000;

/// Who a session is.
#[derive(Debug)]
pub struct Session {
    /// The key signed in with, attached to the API calls the session's pages make.
    key: String,
    /// The tenant whose data the session sees (for an admin, the one chosen at sign-in).
    pub tenant: String,
    /// The admin key's label, for an admin session.
    pub admin: Option<String>,
    /// The token every state-changing request of the session must carry.
    pub csrf: String,
    expires: Instant,
}

/// The sessions of this process.
#[derive(Default)]
pub struct Sessions {
    by_id: RwLock<HashMap<String, Arc<Session>>>,
}

impl Sessions {
    /// A new session; its id for the cookie.
    pub fn create(
        &self,
        key: &str,
        tenant: String,
        admin: Option<String>,
    ) -> Result<String, GatewayError> {
        let id = csrf::random_token()?;
        let session = Arc::new(Session {
            key: key.to_string(),
            tenant,
            admin,
            csrf: csrf::random_token()?,
            expires: Instant::now() + SESSION_TTL,
        });
        let mut map = self.by_id.write().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(id.clone(), session);
        Ok(id)
    }

    /// The live session of this id.
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        let map = self.by_id.read().unwrap_or_else(|p| p.into_inner());
        map.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    pub fn remove(&self, id: &str) {
        let mut map = self.by_id.write().unwrap_or_else(|p| p.into_inner());
        map.remove(id);
    }
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

/// The session of a page request.
pub fn of_request(req: &HttpRequest, sessions: &Sessions) -> Option<(String, Arc<Session>)> {
    let id = cookie_of(req.headers())?;
    sessions.get(id).map(|s| (id.to_string(), s))
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
    pub sessions: Arc<Sessions>,
}

impl<S, B> Transform<S, ServiceRequest> for SessionBridge
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Transform = SessionBridgeService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(SessionBridgeService {
            service,
            sessions: self.sessions.clone(),
        }))
    }
}

pub struct SessionBridgeService<S> {
    service: S,
    sessions: Arc<Sessions>,
}

impl<S, B> Service<ServiceRequest> for SessionBridgeService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Future = Either<S::Future, Ready<Result<Self::Response, Self::Error>>>;

    forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        if req.path().starts_with("/api/") && !req.headers().contains_key(header::AUTHORIZATION) {
            if let Err(e) = bridge(&mut req, &self.sessions) {
                return Either::Right(ready(Err(e.into())));
            }
        }
        Either::Left(self.service.call(req))
    }
}

/// Attaches the session's key to an API call that carries the session cookie; refuses a
/// state-changing one without the session's CSRF token. A call without a (live) session is
/// left as it is: the endpoint answers it as any call without a key.
fn bridge(req: &mut ServiceRequest, sessions: &Sessions) -> Result<(), GatewayError> {
    let Some(session) = cookie_of(req.headers()).and_then(|id| sessions.get(id)) else {
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

    #[test]
    fn a_session_is_found_by_its_cookie_and_gone_once_removed() {
        let sessions = Sessions::default();
        let id = sessions.create("k", "acme".into(), None).unwrap();
        let req = TestRequest::default()
            .insert_header((header::COOKIE, format!("a=b; {COOKIE}={id}")))
            .to_http_request();
        let (found, session) = of_request(&req, &sessions).unwrap();
        assert_eq!(found, id);
        assert_eq!(session.tenant, "acme");
        sessions.remove(&id);
        assert!(of_request(&req, &sessions).is_none());
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
