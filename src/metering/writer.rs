//! The single ledger writer. Requests hand it records and wait for the commit; it writes
//! whatever has queued up since its last commit in one transaction (group commit), so the
//! hot path never pays for a transaction of its own and every record is durable before
//! the client sees the end of its response.

use std::time::{Duration, Instant};

use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{Acquire, Sqlite};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::record::UsageRecord;
use crate::metrics::Metrics;
use crate::store::{self, Db};

/// Tries per batch before the requests in it are told their record could not be written.
const ATTEMPTS: u32 = 5;

struct Pending {
    record: UsageRecord,
    /// Answers the request once its record is committed (or definitely failed).
    done: oneshot::Sender<Result<(), LedgerError>>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    #[error("the ledger writer has stopped")]
    Stopped,
    #[error("the ledger could not be written: {0}")]
    Write(String),
}

/// A handle to the writer; cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    /// Bounded so a stalled disk slows requests down instead of growing memory.
    queue: mpsc::Sender<Pending>,
}

impl Ledger {
    /// Starts the writer task on `db`.
    pub fn spawn(
        db: Db,
        batch_max: usize,
        queue_capacity: usize,
        metrics: Arc<Metrics>,
    ) -> (Ledger, LedgerWriter) {
        let (queue, rx) = mpsc::channel(queue_capacity);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(db, rx, batch_max, stopped, metrics));
        (Ledger { queue }, LedgerWriter { stop, task })
    }

    /// Queues `record` and returns once it is committed to disk.
    pub async fn commit(&self, record: UsageRecord) -> Result<(), LedgerError> {
        let (done, committed) = oneshot::channel();
        self.queue
            .send(Pending { record, done })
            .await
            .map_err(|_| LedgerError::Stopped)?;
        committed.await.map_err(|_| LedgerError::Stopped)?
    }

    /// Whether the writer still accepts records.
    pub fn is_running(&self) -> bool {
        !self.queue.is_closed()
    }

    /// Records waiting for the writer.
    pub fn queue_depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}

/// The running writer, owned by the application for shutdown.
pub struct LedgerWriter {
    /// Tells the writer to refuse new records and finish the queued ones.
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl LedgerWriter {
    /// Commits everything already queued, then stops. Records offered afterwards are
    /// refused with `LedgerError::Stopped` rather than lost silently.
    pub async fn shutdown(self) -> Result<(), tokio::task::JoinError> {
        let _ = self.stop.send(());
        self.task.await
    }
}

async fn run(
    db: Db,
    mut rx: mpsc::Receiver<Pending>,
    batch_max: usize,
    mut stop: oneshot::Receiver<()>,
    metrics: Arc<Metrics>,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(batch_max);
    let mut records: Vec<UsageRecord> = Vec::with_capacity(batch_max);
    let mut stopping = false;
    let mut connection = None;
    loop {
        let received = if stopping {
            rx.recv_many(&mut batch, batch_max).await
        } else {
            // recv_many is cancel safe: nothing is lost when the stop signal wins.
            tokio::select! {
                n = rx.recv_many(&mut batch, batch_max) => n,
                _ = &mut stop => {
                    rx.close();
                    stopping = true;
                    continue;
                }
            }
        };
        if received == 0 {
            break;
        }
        records.extend(batch.iter().map(|p| p.record.clone()));
        let started = Instant::now();
        let outcome = write_with_retries(&db, &mut connection, &records).await;
        metrics.ledger_batch_size.observe(records.len() as f64);
        metrics
            .ledger_commit_seconds
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(
            records = records.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "ledger batch committed"
        );
        for pending in batch.drain(..) {
            // A request that has gone away no longer waits; its record is written all the same.
            let _ = pending.done.send(outcome.clone());
        }
        records.clear();
    }
    tracing::debug!("ledger writer stopped: queue closed and drained");
}

/// The writer's own connection, kept between batches so its page cache stays warm and no
/// batch waits for the pool; handed back after a failure, so a retry takes another.
type Connection = Option<PoolConnection<Sqlite>>;

async fn write_with_retries(
    db: &Db,
    connection: &mut Connection,
    records: &[UsageRecord],
) -> Result<(), LedgerError> {
    let mut delay = Duration::from_millis(20);
    let mut last_error = String::new();
    for attempt in 1..=ATTEMPTS {
        match write_batch(db, connection, records).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                *connection = None;
                last_error = e.to_string();
                tracing::warn!(attempt, error = %last_error, "ledger batch failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 4;
            }
        }
    }
    tracing::error!(records = records.len(), error = %last_error, "ledger batch failed for good");
    Err(LedgerError::Write(last_error))
}

async fn write_batch(
    db: &Db,
    connection: &mut Connection,
    records: &[UsageRecord],
) -> sqlx::Result<()> {
    // SQLite allows 32,766 bound parameters per statement; a record binds 23.
    const PER_STATEMENT: usize = 1_000;
    let connection = match connection {
        Some(c) => c,
        None => connection.insert(db.acquire().await?),
    };
    if records.len() <= PER_STATEMENT {
        // One statement is its own transaction: all its rows are committed, or none.
        return store::usage::insert_batch(connection, records).await;
    }
    let mut tx = connection.begin().await?;
    for chunk in records.chunks(PER_STATEMENT) {
        store::usage::insert_batch(&mut tx, chunk).await?;
    }
    tx.commit().await
}
