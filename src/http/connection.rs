//! Per-connection setup: `TCP_NODELAY` (streamed chunks must not wait for the client's
//! delayed ACK), and noticing that a client went away while a non-streaming answer is being
//! computed, so the upstream call is cancelled at once instead of running for nobody.
//!
//! actix-web keeps polling a handler after its client closed the connection, so each
//! connection's descriptor number is kept in the connection data, and a request that runs
//! longer than [`WATCH_AFTER`] duplicates it and waits for the socket to report end-of-file. A
//! client waiting for its answer sends nothing, so any readiness with no bytes to read means
//! the peer closed. Idle connections hold no second descriptor: only watched requests do.

use std::any::Any;
use std::os::fd::{BorrowedFd, RawFd};

use actix_web::dev::Extensions;
use actix_web::HttpRequest;

/// The connection's socket descriptor (not owned: actix-web owns the socket).
#[derive(Clone, Copy)]
pub struct ClientSocket(RawFd);

/// `HttpServer::on_connect` hook: disables Nagle's algorithm and remembers the descriptor of
/// each plain TCP connection.
pub fn on_connect(connection: &dyn Any, data: &mut Extensions) {
    if let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        use std::os::fd::AsRawFd;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        data.insert(ClientSocket(stream.as_raw_fd()));
    }
}

/// How long a request runs before its connection is watched: most answers come sooner, and
/// watching costs a descriptor and a few system calls.
const WATCH_AFTER: std::time::Duration = std::time::Duration::from_millis(50);

/// Resolves when the client of `req` has closed its connection; never, if that cannot be
/// known. Starts watching only after [`WATCH_AFTER`].
pub async fn client_gone(req: &HttpRequest) {
    tokio::time::sleep(WATCH_AFTER).await;
    let Some(ClientSocket(fd)) = req.conn_data::<ClientSocket>().copied() else {
        return std::future::pending().await;
    };
    // SAFETY: the descriptor is the socket of this request's connection. actix-web closes it
    // only when it drops the connection's dispatcher, which owns (and drops) this request's
    // handler future first; this runs inside that future, on the dispatcher's thread, so the
    // descriptor is open and still this connection's. The duplicate is owned here.
    let owned = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned();
    let watched = owned
        .map(std::net::TcpStream::from)
        .and_then(|s| {
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .and_then(tokio::net::TcpStream::from_std);
    let Ok(stream) = watched else {
        return std::future::pending().await;
    };
    let mut probe = [0u8; 1];
    match stream.peek(&mut probe).await {
        // End of file: the client closed its side.
        Ok(0) => {}
        // The client sent more (a pipelined request): it is still there; stop watching.
        Ok(_) => std::future::pending().await,
        // Reset or another error: the connection is gone.
        Err(_) => {}
    }
}
