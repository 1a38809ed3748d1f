//! The no-key mode's guard against web pages. With no API key configured (the laptop default),
//! flowgate trusts whatever reaches its loopback port, so it must make sure that a *browser*
//! cannot be that caller on behalf of a page the user happens to visit:
//!
//! * a cross-site `POST` with a "simple" content type (`text/plain`, a form) is sent without
//!   a CORS preflight: it would spend the user's provider keys. Every `POST` must be
//!   `application/json`, which a page can only send after a preflight that flowgate never
//!   grants, and a foreign `Origin` (or `Sec-Fetch-Site: cross-site`) is refused outright;
//! * DNS rebinding points a hostile name at 127.0.0.1, making the browser treat flowgate as
//!   that page's own origin, able to read `/api/…/runs` (every prompt): the `Host` must be a
//!   loopback name or address.
//!
//! With keys configured none of this applies: a page cannot attach the user's bearer key.

use std::future::{ready, Ready};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::{header, Method};
use actix_web::ResponseError;
use flowgate_actors::error::{excerpt, ErrorKind, GatewayError};
use futures::future::{Either, MapOk, TryFutureExt};

/// The middleware: answers 403/415 instead of running the handler. Hand-written rather than
/// `from_fn`, which boxes two futures per request: in `bench/run.sh` the `from_fn` version
/// cost about 3 µs of CPU per request over no middleware at all.
pub struct BrowserGuard;

impl<S, B> Transform<S, ServiceRequest> for BrowserGuard
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = BrowserGuardService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(BrowserGuardService { service }))
    }
}

pub struct BrowserGuardService<S> {
    service: S,
}

type Passed<B> = fn(ServiceResponse<B>) -> ServiceResponse<EitherBody<B>>;

impl<S, B> Service<ServiceRequest> for BrowserGuardService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = Either<Ready<Result<Self::Response, Self::Error>>, MapOk<S::Future, Passed<B>>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        if let Err(e) = check(&req) {
            let response = req.into_response(e.error_response()).map_into_right_body();
            return Either::Left(ready(Ok(response)));
        }
        let passed: Passed<B> = ServiceResponse::map_into_left_body;
        Either::Right(self.service.call(req).map_ok(passed))
    }
}

fn check(req: &ServiceRequest) -> Result<(), GatewayError> {
    let headers = req.headers();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(host) = host {
        if !is_loopback_authority(host) {
            return Err(forbidden(format!(
                "`Host: {}` is not a loopback name: with no API key configured, flowgate only \
                 answers requests addressed to localhost or a loopback address",
                excerpt(host, 64)
            )));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("?");
        let same = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|authority| host.is_some_and(|h| h.eq_ignore_ascii_case(authority)));
        if !same {
            return Err(forbidden(format!(
                "requests from web pages (`Origin: {}`) are refused: with no API key \
                 configured, only local programs may call flowgate",
                excerpt(origin, 64)
            )));
        }
    }
    if headers
        .get(&SEC_FETCH_SITE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
    {
        return Err(forbidden(
            "cross-site requests are refused: with no API key configured, only local programs \
             may call flowgate"
                .to_string(),
        ));
    }
    if req.method() == Method::POST && !is_json(headers.get(header::CONTENT_TYPE)) {
        return Err(GatewayError::new(
            ErrorKind::UnsupportedMediaType,
            "send the body as JSON with `Content-Type: application/json`",
        )
        .with_param("content-type"));
    }
    Ok(())
}

static SEC_FETCH_SITE: header::HeaderName = header::HeaderName::from_static("sec-fetch-site");

fn forbidden(message: String) -> GatewayError {
    GatewayError::new(ErrorKind::Forbidden, message).with_code("foreign_origin")
}

/// `application/json`, with parameters or not.
fn is_json(value: Option<&header::HeaderValue>) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// `localhost`, `*.localhost`, `127.x.y.z` or `[::1]`, with an optional port. Checked on every
/// request of the no-key mode: no allocation.
fn is_loopback_authority(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        match rest.split_once(']') {
            Some((inside, "")) => inside,
            Some((inside, after)) if after.strip_prefix(':').is_some_and(valid_port) => inside,
            _ => return false,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) if valid_port(port) => host,
            Some(_) => return false,
            None => authority,
        }
    };
    let suffix = ".localhost";
    if host.eq_ignore_ascii_case("localhost")
        || (host.len() > suffix.len()
            && host.is_char_boundary(host.len() - suffix.len())
            && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix))
    {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => false,
    }
}

fn valid_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_authorities() {
        for ok in [
            "localhost",
            "localhost:8080",
            "LOCALHOST:1",
            "app.localhost:3000",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.1.2.3:9",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback_authority(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "10.0.0.1:80",
            "[::ffff:7f00:1]:80x",
            "[::2]:80",
            "0.0.0.0:8080",
            "localhost:",
            "localhost:abc",
            "",
        ] {
            assert!(!is_loopback_authority(bad), "{bad}");
        }
    }

    #[test]
    fn json_content_types() {
        let v = |s: &'static str| header::HeaderValue::from_static(s);
        assert!(is_json(Some(&v("application/json"))));
        assert!(is_json(Some(&v("application/json; charset=utf-8"))));
        assert!(is_json(Some(&v("Application/JSON"))));
        assert!(!is_json(Some(&v("text/plain"))));
        assert!(!is_json(Some(&v("application/x-www-form-urlencoded"))));
        assert!(!is_json(Some(&v("multipart/form-data; boundary=x"))));
        assert!(!is_json(None));
    }
}
