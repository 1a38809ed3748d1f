//! Reading request bodies within bounds: a size limit per body, a time limit per body (a client
//! that trickles its body holds a connection and a buffer), and a budget of body bytes held by
//! all requests in flight together, so that many large bodies at once cannot bloat the
//! gateway either: past it, a 503 with `Retry-After` until earlier requests finish.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest};
use bytes::{Bytes, BytesMut};
use flowgate_actors::error::{ErrorKind, GatewayError};
use futures::StreamExt;

/// Body bytes held by the requests in flight, against a limit. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BodyBudget {
    inner: Arc<BudgetInner>,
}

#[derive(Debug)]
struct BudgetInner {
    used: AtomicUsize,
    limit: usize,
    /// `flowgate_request_body_bytes_in_flight`.
    gauge: prometheus::IntGauge,
}

/// Bytes of the budget held by one request, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: BodyBudget,
    bytes: usize,
}

impl BodyBudget {
    pub fn new(limit: usize, gauge: prometheus::IntGauge) -> BodyBudget {
        BodyBudget {
            inner: Arc::new(BudgetInner {
                used: AtomicUsize::new(0),
                limit,
                gauge,
            }),
        }
    }

    /// An empty reservation, grown as a body arrives.
    pub fn reserve(&self) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes: 0,
        }
    }
}

impl Reservation {
    /// Takes `bytes` more of the budget, or refuses when that would pass its limit.
    fn grow(&mut self, bytes: usize) -> Result<(), GatewayError> {
        let inner = &self.budget.inner;
        let before = inner.used.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes > inner.limit {
            inner.used.fetch_sub(bytes, Ordering::Relaxed);
            return Err(GatewayError::new(
                ErrorKind::Overloaded,
                format!(
                    "the gateway holds {} MiB of request bodies in flight, its limit: retry shortly",
                    inner.limit / (1024 * 1024)
                ),
            )
            .with_code("too_many_bodies_in_flight")
            .with_retry_after(Some(Duration::from_secs(1))));
        }
        self.bytes += bytes;
        inner.gauge.add(bytes as i64);
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let inner = &self.budget.inner;
        inner.used.fetch_sub(self.bytes, Ordering::Relaxed);
        inner.gauge.sub(self.bytes as i64);
    }
}

/// The request body, within `limit` bytes, `timeout` and the in-flight budget. The reservation
/// holds the body's bytes against the budget until it is dropped: keep it while the request
/// (and what it parsed from the body) is alive.
pub async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    timeout: Duration,
    budget: &BodyBudget,
) -> Result<(Bytes, Reservation), GatewayError> {
    let mut reservation = budget.reserve();
    let body = {
        let read = read_within(req, payload, limit, &mut reservation);
        let mut read = std::pin::pin!(read);
        // A body that came with its head is read at once: no timer for it.
        let first = std::future::poll_fn(|cx| match std::future::Future::poll(read.as_mut(), cx) {
            std::task::Poll::Ready(body) => std::task::Poll::Ready(Some(body)),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        })
        .await;
        match first {
            Some(body) => Ok(body),
            None => tokio::time::timeout(timeout, read).await,
        }
    };
    match body {
        Ok(body) => body.map(|body| (body, reservation)),
        Err(_) => Err(GatewayError::new(
            ErrorKind::RequestTimeout,
            format!(
                "the request body did not arrive within {} s",
                timeout.as_secs_f64()
            ),
        )
        .with_code("body_timeout")),
    }
}

async fn read_within(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    reservation: &mut Reservation,
) -> Result<Bytes, GatewayError> {
    let too_large = || {
        GatewayError::new(
            ErrorKind::PayloadTooLarge,
            format!("the body is larger than the limit of {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit).min(64 * 1024));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| GatewayError::invalid(format!("cannot read the request body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        reservation.grow(chunk.len())?;
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_past_its_limit_and_is_given_back() {
        let gauge = prometheus::IntGauge::new("g", "g").unwrap();
        let budget = BodyBudget::new(100, gauge.clone());
        let mut a = budget.reserve();
        a.grow(60).unwrap();
        assert_eq!(gauge.get(), 60);
        let mut b = budget.reserve();
        let e = b.grow(50).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Overloaded);
        assert!(e.retry_after.is_some());
        b.grow(40).unwrap();
        drop(a);
        let mut c = budget.reserve();
        c.grow(60).unwrap();
        drop((b, c));
        assert_eq!(budget.inner.used.load(Ordering::Relaxed), 0);
        assert_eq!(gauge.get(), 0);
    }
}
