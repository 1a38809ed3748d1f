//! Schema migrations, embedded in the binary: each is applied once, in order, in a
//! transaction of its own, and recorded in `flowgate_migrations`. Instances that start at once
//! take turns under a session advisory lock, so each migration runs exactly once; a database
//! already migrated by a newer release is left alone (its extra migrations are not ours).

use tokio_postgres::NoTls;

use super::{pg_error, PostgresSettings};
use crate::storage::StorageError;

/// Every migration this binary knows: version, name, SQL. Append only: a released migration
/// never changes.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("migrations/0001_init.sql")),
    (
        2,
        "keys_evals",
        include_str!("migrations/0002_keys_evals.sql"),
    ),
    (
        3,
        "ui_sessions_version_order",
        include_str!("migrations/0003_ui_sessions_version_order.sql"),
    ),
    (
        4,
        "stats_days",
        include_str!("migrations/0004_stats_days.sql"),
    ),
    (
        5,
        "run_count",
        include_str!("migrations/0005_run_count.sql"),
    ),
];

/// The advisory lock key of migrations (any fixed number: "flowgate" in ASCII).
const LOCK_KEY: i64 = 0x666c_6f77_6761_7465;

/// Applies the migrations the database lacks; the versions it applied.
pub async fn migrate(settings: &PostgresSettings) -> Result<Vec<i32>, StorageError> {
    // A connection of its own, not a pooled one: the session lock goes with it, whatever
    // happens here.
    let (mut client, connection) = settings.config.connect(NoTls).await.map_err(pg_error)?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "migration connection closed");
        }
    });
    let applied = async {
        // `IF NOT EXISTS` notices are expected on every start: not worth a log line each.
        client
            .batch_execute("SET client_min_messages = warning")
            .await
            .map_err(pg_error)?;
        if let Some(schema) = &settings.schema {
            // Checked to be a plain identifier (`PostgresSettings::new`).
            client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await
                .map_err(pg_error)?;
        }
        client
            .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(pg_error)?;
        let result = apply(&mut client).await;
        // Released on the way out, error or not (and by the server if the connection drops).
        let unlocked = client
            .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
            .await
            .map_err(pg_error);
        let applied = result?;
        unlocked?;
        Ok(applied)
    }
    .await;
    drop(client);
    let _ = driver.await;
    applied
}

async fn apply(client: &mut tokio_postgres::Client) -> Result<Vec<i32>, StorageError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS flowgate_migrations (
                 version integer PRIMARY KEY,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(pg_error)?;
    let done: Vec<i32> = client
        .query("SELECT version FROM flowgate_migrations", &[])
        .await
        .map_err(pg_error)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        if done.contains(&version) {
            continue;
        }
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.batch_execute(sql).await.map_err(|e| {
            let e = pg_error(e);
            StorageError::Backend(format!("migration {version} ({name}) failed: {e}"))
        })?;
        tx.execute(
            "INSERT INTO flowgate_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        tracing::info!(version, name, "storage: applied a PostgreSQL migration");
        applied.push(version);
    }
    Ok(applied)
}
