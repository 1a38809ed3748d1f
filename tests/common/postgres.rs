//! The PostgreSQL server of the tests (`FLOWGATE_TEST_DATABASE_URL`, which `tests/run.sh`
//! makes sure of), a schema per test dropped when it ends, and a TCP relay to the server that
//! a test can cut and restore to make the database unreachable for flowgate alone.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};

pub fn database_url() -> String {
    std::env::var("FLOWGATE_TEST_DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema name of the test's own.
pub fn schema_name(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("flowgate_it_{test}_{}_{nanos}", std::process::id())
}

/// `[storage]` on the database at `url`, in `schema`.
pub fn storage_config_at(url: &str, schema: &str) -> String {
    format!("\n[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\npool_size = 4\nschema = \"{schema}\"\n")
}

/// `[storage]` on the test database, in `schema`.
pub fn storage_config(schema: &str) -> String {
    storage_config_at(&database_url(), schema)
}

/// A client of the test database, its connection driven on the caller's runtime.
pub async fn connect() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the test PostgreSQL at {} does not answer: {e}",
                database_url()
            )
        });
    tokio::spawn(connection);
    client
}

/// Drops the schema when the test ends, however it ends.
pub struct DropSchema(pub String);

impl Drop for DropSchema {
    fn drop(&mut self) {
        let name = self.0.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                connect()
                    .await
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("cannot drop test schema {}: {e}", self.0);
        }
    }
}

/// A TCP relay to the test database on a port of its own. [`Relay::cut`] closes every
/// connection through it and refuses new ones (as a database that went away), until
/// [`Relay::restore`].
pub struct Relay {
    pub url: String,
    cut: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    /// The relay's own runtime: it serves even while the test's thread blocks (starting a
    /// flowgate waits for its first line, and flowgate connects through the relay first).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Relay {
    pub fn start() -> Relay {
        let config = tokio_postgres::Config::from_str(&database_url()).unwrap();
        let target = match (config.get_hosts().first(), config.get_ports().first()) {
            (Some(tokio_postgres::config::Host::Tcp(host)), port) => {
                format!("{host}:{}", port.copied().unwrap_or(5432))
            }
            _ => panic!("the test database URL must name a TCP host"),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = format!(
            "postgres://{}@127.0.0.1:{port}/{}",
            config.get_user().unwrap_or("postgres"),
            config.get_dbname().unwrap_or("test")
        );
        let cut = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Default::default();
        {
            let (cut, connections) = (cut.clone(), connections.clone());
            let spawner = runtime.handle().clone();
            runtime.spawn(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                while let Ok((mut client, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        continue; // dropped: the connection is closed at once
                    }
                    let target = target.clone();
                    let task = spawner.spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(&target).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    connections.lock().unwrap().push(task.abort_handle());
                }
            });
        }
        Relay {
            url,
            cut,
            connections,
            runtime: Some(runtime),
        }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
