//! One connection to an upstream (TCP, TLS over TCP, either through a CONNECT tunnel) with
//! its read buffer, and the idle connections kept for reuse.
//!
//! Idle connections are kept per thread: a connection is registered with the I/O driver of
//! the thread that opened it (each actix worker has its own), so another worker using it would
//! wait for that worker's driver to see its readiness. Each worker keeps its own, as nginx's
//! workers keep their own upstream keep-alive connections. One thread for the process lets go
//! of those idle past their timeout, whether or not their worker is still sending.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hyper::Uri;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Where a connection goes: the client it belongs to (clients differ in proxy and TLS
/// settings), the scheme, and the host and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    pub client: u64,
    pub https: bool,
    pub host: String,
    pub port: u16,
}

impl Destination {
    pub fn of(client: u64, uri: &Uri) -> Option<Destination> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return None,
        };
        let host = uri.host()?;
        // `[::1]` in a URL is `::1` to connect to and to name in TLS.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        Some(Destination {
            client,
            https,
            host,
            port,
        })
    }
}

/// The byte stream of a connection.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An open connection: its stream and what was read from it and not yet taken.
pub struct Conn {
    pub stream: Stream,
    pub buf: BytesMut,
}

impl Conn {
    pub fn new(stream: Stream) -> Conn {
        Conn {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    /// Reads what the upstream has sent into the buffer: the count, 0 at the end.
    pub async fn read_more(&mut self) -> io::Result<usize> {
        use tokio::io::AsyncReadExt;
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        self.stream.read_buf(&mut self.buf).await
    }

    /// Reads into the buffer if the upstream has sent something, without waiting: `Ready`
    /// with the count (0 at the end), `Pending` when nothing is there yet.
    pub fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        use std::future::Future;
        use tokio::io::AsyncReadExt;
        // `read_buf` keeps no state between polls: one poll is one attempt to read.
        let read = self.stream.read_buf(&mut self.buf);
        std::pin::pin!(read).poll(cx)
    }

    /// Writes `bytes` whole and flushes them.
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Writes a request's body after its head. If the upstream answers before it has taken
    /// all of it (a 413 for a body too large, a 401), writing stops there: `Ok(true)`, the
    /// answer is in the buffer, and the connection cannot carry another request.
    pub async fn write_body(&mut self, body: &[u8]) -> io::Result<bool> {
        let mut sent = 0;
        let written = std::future::poll_fn(|cx| loop {
            // Over TLS a write may only fill rustls's buffer: the flush is where a blocked
            // upstream shows, so it is waited for here too.
            let step = if sent < body.len() {
                match Pin::new(&mut self.stream).poll_write(cx, &body[sent..]) {
                    Poll::Ready(Ok(0)) => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        sent += n;
                        Poll::Ready(Ok(()))
                    }
                    other => other.map_ok(|_| ()),
                }
            } else {
                match Pin::new(&mut self.stream).poll_flush(cx) {
                    Poll::Ready(Ok(())) => return Poll::Ready(Ok(false)),
                    other => other,
                }
            };
            match step {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // The upstream is not taking more: has it answered?
                Poll::Pending => match self.poll_read_more(cx) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the connection closed while the request was being sent",
                        )))
                    }
                    // Only a final answer stops the body: a 100 Continue or a 103 does not.
                    Poll::Ready(Ok(_)) if self.holds_answer() => return Poll::Ready(Ok(true)),
                    Poll::Ready(Ok(_)) => continue,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                },
            }
        })
        .await;
        match written {
            Ok(answered) => Ok(answered),
            // The upstream may have answered, then closed: its answer is what counts. A
            // broken connection answers a read at once; the bound is for one that is not.
            Err(e) => {
                let read = tokio::time::timeout(Duration::from_secs(1), self.read_more()).await;
                match read {
                    Ok(Ok(_)) if self.holds_answer() => Ok(true),
                    _ => Err(e),
                }
            }
        }
    }

    /// The buffer holds the head of a final (not 1xx) answer, or bytes that are no HTTP.
    fn holds_answer(&self) -> bool {
        let mut informational = 0;
        !matches!(
            super::h1::parse_head(&mut self.buf.clone(), &mut informational),
            Ok(None)
        )
    }

    /// Still open and silent: the upstream has neither closed it (nor, over TLS, sent its
    /// `close_notify`) nor sent anything unasked. Costs no system call unless the I/O driver
    /// saw something arrive.
    fn still_open(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        let mut noop = Context::from_waker(std::task::Waker::noop());
        Pin::new(&mut self.stream)
            .poll_read(&mut noop, &mut probe)
            .is_pending()
    }
}

/// Bytes a read asks for at least.
const READ_CHUNK: usize = 8 * 1024;

/// How long idle connections are kept, and how many to a destination.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub idle_timeout: Duration,
    pub max_idle_per_host: usize,
}

struct Idle {
    conn: Conn,
    expires: Instant,
}

/// A thread's idle connections, oldest first.
struct Pool {
    idle: HashMap<Destination, VecDeque<Idle>>,
    /// When this thread last swept its own pool (only while there is no sweeper thread).
    last_sweep: Instant,
}

/// How often the idle connections of every thread past their timeout are let go of.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl Pool {
    /// Takes out the connections idle past their timeout, to every destination.
    fn expired(&mut self, now: Instant) -> Vec<Idle> {
        let mut expired = Vec::new();
        self.idle.retain(|_, conns| {
            expired.extend(expire(conns, now));
            !conns.is_empty()
        });
        expired
    }

    /// Where the sweeper thread could not start, each thread sweeps its own pool as it uses
    /// it (at most every [`SWEEP_EVERY`]).
    fn sweep_without_sweeper(&mut self, now: Instant) {
        if SWEEPER_RUNNING.load(Ordering::Relaxed)
            || now.duration_since(self.last_sweep) < SWEEP_EVERY
        {
            return;
        }
        self.last_sweep = now;
        drop(self.expired(now));
    }
}

/// Takes out the connections of `conns` idle past their timeout (the oldest come first).
fn expire(
    conns: &mut VecDeque<Idle>,
    now: Instant,
) -> std::collections::vec_deque::Drain<'_, Idle> {
    let expired = conns.iter().take_while(|c| c.expires <= now).count();
    conns.drain(..expired)
}

/// Every thread's pool, for the sweeper. A worker that stops sending requests (a quiet hour,
/// a burst on another worker) would otherwise keep its idle connections, up to
/// `pool_max_idle_per_host` to each upstream, and their sockets after the upstream closed its
/// end, until it sent a request again.
static POOLS: Mutex<Vec<Weak<Mutex<Pool>>>> = Mutex::new(Vec::new());
static SWEEPER_RUNNING: AtomicBool = AtomicBool::new(false);

thread_local! {
    static POOL: Arc<Mutex<Pool>> = register();
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// This thread's pool, known to the sweeper (started with the first pool).
fn register() -> Arc<Mutex<Pool>> {
    static SWEEPER: Once = Once::new();
    let pool = Arc::new(Mutex::new(Pool {
        idle: HashMap::new(),
        last_sweep: Instant::now(),
    }));
    lock(&POOLS).push(Arc::downgrade(&pool));
    SWEEPER.call_once(|| {
        let started = std::thread::Builder::new()
            .name("upstream-idle".into())
            .spawn(|| loop {
                std::thread::sleep(SWEEP_EVERY);
                sweep_every_pool(Instant::now());
            });
        match started {
            Ok(_) => SWEEPER_RUNNING.store(true, Ordering::Relaxed),
            Err(e) => tracing::error!(
                error = %e,
                "transport: cannot start the idle connections' sweeper; each worker sweeps its own"
            ),
        }
    });
    pool
}

/// Lets go of the connections idle past their timeout in every thread's pool. They are
/// closed here, out of the pool's lock: a tokio socket deregisters from its thread's I/O
/// driver from any thread.
fn sweep_every_pool(now: Instant) {
    let pools: Vec<Arc<Mutex<Pool>>> = {
        let mut pools = lock(&POOLS);
        pools.retain(|pool| pool.strong_count() > 0);
        pools.iter().filter_map(Weak::upgrade).collect()
    };
    for pool in pools {
        let expired = lock(&pool).expired(now);
        drop(expired);
    }
}

/// An idle connection to `dest` that is still open, if this thread has one.
pub fn checkout(dest: &Destination) -> Option<Conn> {
    POOL.try_with(|pool| {
        let mut pool = lock(pool);
        let now = Instant::now();
        pool.sweep_without_sweeper(now);
        let conns = pool.idle.get_mut(dest)?;
        drop(expire(conns, now));
        while let Some(mut entry) = conns.pop_back() {
            if entry.conn.still_open() {
                return Some(entry.conn);
            }
        }
        pool.idle.remove(dest);
        None
    })
    .ok()
    .flatten()
}

/// Keeps `conn` for the next request to `dest` (the oldest goes past the bound). A connection
/// holding bytes past its last response is not kept.
pub fn checkin(dest: &Destination, conn: Conn, settings: &PoolSettings) {
    if settings.max_idle_per_host == 0 || settings.idle_timeout.is_zero() || !conn.buf.is_empty() {
        return;
    }
    let _ = POOL.try_with(|pool| {
        let mut pool = lock(pool);
        let now = Instant::now();
        pool.sweep_without_sweeper(now);
        let conns = pool.idle.entry(dest.clone()).or_default();
        drop(expire(conns, now));
        if conns.len() >= settings.max_idle_per_host {
            conns.pop_front();
        }
        conns.push_back(Idle {
            conn,
            expires: now + settings.idle_timeout,
        });
    });
}

/// Opens a TCP connection (directly or through the proxy's tunnel, by `connector`) and, for
/// https, TLS over it.
pub async fn open(
    connector: &mut super::ProxyConnector,
    tls: &Arc<rustls::ClientConfig>,
    dest: &Destination,
) -> Result<Conn, super::BoxError> {
    use tower_service::Service;
    // The connector is given the origin only.
    let scheme = if dest.https { "https" } else { "http" };
    let host = if dest.host.contains(':') {
        format!("[{}]", dest.host)
    } else {
        dest.host.clone()
    };
    let origin: Uri = format!("{scheme}://{host}:{}/", dest.port).parse()?;
    let tcp = connector.call(origin).await?.into_inner();
    if !dest.https {
        return Ok(Conn::new(Stream::Plain(tcp)));
    }
    let name = rustls::pki_types::ServerName::try_from(dest.host.clone())
        .map_err(|e| format!("`{}` is not a name TLS can check: {e}", dest.host))?;
    let tls = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await?;
    Ok(Conn::new(Stream::Tls(Box::new(tls))))
}
