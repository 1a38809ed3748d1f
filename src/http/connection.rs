//! Per-connection setup: `TCP_NODELAY` (streamed chunks must not wait for the client's
//! delayed ACK), and noticing that a client went away while a non-streaming answer is being
//! computed, so the upstream call is cancelled at once instead of running for nobody.
//!
//! actix-web keeps polling a handler after its client closed the connection, so each
//! connection's socket is kept (duplicated) in the connection data, and a request waits for the
//! socket to report end-of-file. A client waiting for its answer sends nothing, so any
//! readiness with no bytes to read means the peer closed.

use std::any::Any;
use std::sync::Arc;

use actix_web::dev::Extensions;
use actix_web::HttpRequest;

/// The connection's socket, duplicated at accept time.
#[derive(Clone)]
pub struct ClientSocket(Arc<std::net::TcpStream>);

/// `HttpServer::on_connect` hook: disables Nagle's algorithm and remembers the socket of each
/// plain TCP connection.
pub fn on_connect(connection: &dyn Any, data: &mut Extensions) {
    if let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        use std::os::fd::AsFd;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        if let Ok(owned) = stream.as_fd().try_clone_to_owned() {
            data.insert(ClientSocket(Arc::new(std::net::TcpStream::from(owned))));
        }
    }
}

/// How long a request runs before its connection is watched: most answers come sooner, and
/// watching costs a few system calls.
const WATCH_AFTER: std::time::Duration = std::time::Duration::from_millis(50);

/// Resolves when the client of `req` has closed its connection; never, if that cannot be
/// known. Starts watching only after [`WATCH_AFTER`].
pub async fn client_gone(req: &HttpRequest) {
    tokio::time::sleep(WATCH_AFTER).await;
    let Some(socket) = req.conn_data::<ClientSocket>().cloned() else {
        return std::future::pending().await;
    };
    let watched = socket
        .0
        .try_clone()
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
