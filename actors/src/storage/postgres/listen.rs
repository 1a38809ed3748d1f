//! Hearing what other instances change: a connection of its own (not a pooled one: a
//! `LISTEN` belongs to its session) listens on the database's change channel and reports each
//! notification to the store's [`Changes`]. Writers notify inside their transaction
//! (`pg_notify`), so a notification arrives once the change is committed, and only then.
//!
//! A lost connection is made again (after 100 ms, then up to 5 s apart), with a log line
//! and `flowgate_storage_listener_reconnects_total`; meanwhile the feed is not live and
//! copies are not used. A silent loss (a dead peer that sends nothing) is found by a query
//! every few seconds that must answer in time.

use std::sync::Arc;
use std::time::Duration;

use futures::{stream, StreamExt};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use super::pg_error;
use crate::storage::{Change, Changes, StorageError};

/// How often the listening connection is checked, and how long the check may take.
const HEARTBEAT: Duration = Duration::from_secs(5);
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// The channel of the tables in `schema`: instances on other schemas of the same database
/// (tests, several deployments side by side) do not hear each other. A plain lower-case
/// identifier within PostgreSQL's 63 bytes, so `LISTEN` needs no quoting.
pub(super) fn channel_of(schema: Option<&str>) -> String {
    match schema {
        None => "flowgate_changes".into(),
        Some(schema) => {
            let digest = <sha2::Sha256 as sha2::Digest>::digest(schema.as_bytes());
            let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            format!("flowgate_changes_{hex}")
        }
    }
}

/// Tells the other instances (and this one) about a change, with the channel and
/// [`Change::as_str`] as parameters. Run inside the writer's transaction: sent at its
/// commit, dropped with its rollback.
pub(super) const NOTIFY: &str = "SELECT pg_notify($1, $2)";

/// Listens for as long as the backend's runtime runs.
pub(super) fn spawn(
    handle: &tokio::runtime::Handle,
    mut config: tokio_postgres::Config,
    channel: String,
    changes: Arc<Changes>,
) {
    // TCP keepalives find a dead peer even between heartbeats' queries.
    config.keepalives(true);
    // Found in `pg_stat_activity` as what it is (and which schema's channel it hears).
    config.application_name(format!("flowgate listener {channel}"));
    config.keepalives_idle(HEARTBEAT);
    handle.spawn(async move {
        let mut retry = FIRST_RETRY;
        let mut connected_before = false;
        loop {
            let e = listen(&config, &channel, &changes, connected_before).await;
            let was_live = changes.is_live();
            changes.set_live(false);
            if was_live {
                connected_before = true;
                retry = FIRST_RETRY;
                tracing::warn!(
                    error = %e,
                    "storage: lost the PostgreSQL change listener; deployments and keys are \
                     read from the database on every use until it is back"
                );
            } else {
                tracing::warn!(
                    error = %e,
                    retry_ms = retry.as_millis() as u64,
                    "storage: cannot listen for other instances' changes; trying again"
                );
            }
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(MAX_RETRY);
        }
    });
}

/// Connects, listens, and reports notifications until the connection is lost: why.
async fn listen(
    config: &tokio_postgres::Config,
    channel: &str,
    changes: &Changes,
    reconnecting: bool,
) -> StorageError {
    let (client, mut connection) = match config.connect(NoTls).await {
        Ok(connected) => connected,
        Err(e) => return pg_error(e),
    };
    let (sender, mut notifications) = mpsc::unbounded_channel();
    // The connection's messages: notifications go to the loop below; its end ends the loop.
    let driver = tokio::spawn(async move {
        let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if sender.send(n.payload().to_string()).is_err() {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    let result: Result<(), StorageError> = async {
        client
            .batch_execute(&format!("LISTEN {channel}"))
            .await
            .map_err(pg_error)?;
        changes.set_live(true);
        if reconnecting {
            changes.listener_reconnects.inc();
            tracing::info!("storage: listening for other instances' changes again");
        } else {
            tracing::debug!(channel, "storage: listening for other instances' changes");
        }
        loop {
            tokio::select! {
                payload = notifications.recv() => match payload {
                    Some(payload) => match Change::parse(&payload) {
                        Some(change) => changes.changed(change),
                        None => changes.everything_changed(),
                    },
                    None => {
                        return Err(StorageError::Unavailable(
                            "the server closed the change listener's connection".into(),
                        ))
                    }
                },
                () = tokio::time::sleep(HEARTBEAT) => {
                    match tokio::time::timeout(HEARTBEAT, client.simple_query("SELECT 1")).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(pg_error(e)),
                        Err(_) => {
                            return Err(StorageError::Unavailable(format!(
                                "the change listener's connection did not answer within {}s",
                                HEARTBEAT.as_secs()
                            )))
                        }
                    }
                }
            }
        }
    }
    .await;
    drop(client);
    driver.abort();
    match (driver.await, result) {
        // The connection's own error says best why it ended.
        (Ok(Err(e)), _) => pg_error(e),
        (_, Err(e)) => e,
        (_, Ok(())) => StorageError::Unavailable("the change listener stopped".into()),
    }
}
