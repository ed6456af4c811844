//! The single ledger writer. Requests hand it records and wait for the commit; it writes
//! whatever has queued up since its last commit in one transaction (group commit), so the
//! hot path never pays for a transaction of its own and every record is durable before
//! the client sees the end of its response.
//!
//! The writer is an OS thread with its own blocking SQLite connection: a commit costs one
//! wake-up of this thread and one of the waiting request, where going through sqlx's
//! connection worker cost two more (about 0.2 ms per commit at concurrency 1, measured by
//! `tollgate-bench`). Everything else in the store still goes through sqlx.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::record::UsageRecord;
use crate::config::DatabaseConfig;
use crate::metrics::Metrics;
use crate::store;

/// Tries per batch before the requests in it are told their record could not be written.
const ATTEMPTS: u32 = 5;

// `Stop` is sent once; boxing `Record` would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Message {
    Record(Pending),
    /// Refuse new records, commit those already queued, then stop.
    Stop,
}

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
    queue: mpsc::Sender<Message>,
}

impl Ledger {
    /// Opens the writer's connection to the (already migrated) database and starts the
    /// writer thread.
    pub fn spawn(
        database: &DatabaseConfig,
        batch_max: usize,
        queue_capacity: usize,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<(Ledger, LedgerWriter)> {
        let conn = store::open_for_ledger_writer(database)?;
        let (queue, rx) = mpsc::channel(queue_capacity);
        let (finished, stopped) = oneshot::channel();
        std::thread::Builder::new()
            .name("tollgate-ledger".into())
            .spawn(move || {
                run(conn, rx, batch_max, &metrics);
                let _ = finished.send(());
            })?;
        let writer = LedgerWriter {
            queue: queue.clone(),
            stopped,
        };
        Ok((Ledger { queue }, writer))
    }

    /// Queues `record` and returns once it is committed to disk.
    pub async fn commit(&self, record: UsageRecord) -> Result<(), LedgerError> {
        let (done, committed) = oneshot::channel();
        self.queue
            .send(Message::Record(Pending { record, done }))
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
    /// Carries the stop message, behind any records already queued.
    queue: mpsc::Sender<Message>,
    /// Resolves when the thread has committed its last batch.
    stopped: oneshot::Receiver<()>,
}

impl LedgerWriter {
    /// Commits everything already queued, then stops. Records offered afterwards are
    /// refused with `LedgerError::Stopped` rather than lost silently.
    /// Fails if the thread panicked (and so may have left records unanswered).
    pub async fn shutdown(self) -> Result<(), LedgerError> {
        // If the send fails the thread is gone already, and `stopped` resolves at once.
        let _ = self.queue.send(Message::Stop).await;
        self.stopped.await.map_err(|_| LedgerError::Stopped)
    }
}

fn run(
    conn: rusqlite::Connection,
    mut rx: mpsc::Receiver<Message>,
    batch_max: usize,
    metrics: &Metrics,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(batch_max);
    // Blocks until there is work; `None` once stopped (or every handle is gone) and drained.
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Record(pending) => batch.push(pending),
                // Nothing can be queued after this; what is queued already is still taken.
                Message::Stop => rx.close(),
            }
            if batch.len() < batch_max {
                next = rx.try_recv().ok();
            }
        }
        if batch.is_empty() {
            continue;
        }
        let batch_had_others = batch.len() > 1;
        let started = Instant::now();
        let outcome = write_with_retries(&conn, &batch);
        metrics.ledger_batch_size.observe(batch.len() as f64);
        metrics
            .ledger_commit_seconds
            .observe(started.elapsed().as_secs_f64());
        for pending in batch.drain(..) {
            let outcome = match &outcome {
                // One record the database refuses must not cost the others in its batch
                // their charge: each is tried on its own once more.
                Err(_) if batch_had_others => store::usage::insert(&conn, [&pending.record])
                    .map_err(|e| LedgerError::Write(e.to_string())),
                outcome => outcome.clone(),
            };
            // A request that has gone away no longer waits; its record is written all the same.
            let _ = pending.done.send(outcome);
        }
    }
    tracing::debug!("ledger writer stopped: queue closed and drained");
}

fn write_with_retries(conn: &rusqlite::Connection, batch: &[Pending]) -> Result<(), LedgerError> {
    let mut delay = Duration::from_millis(20);
    let mut attempt = 1;
    loop {
        let error = match store::usage::insert(conn, batch.iter().map(|p| &p.record)) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        // A refused record (a constraint) fails the same way every time; a busy or failing
        // disk may recover. Every other request waits on this thread meanwhile.
        let refused = error.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation);
        if refused || attempt == ATTEMPTS {
            tracing::error!(records = batch.len(), error = %error, "ledger batch failed for good");
            return Err(LedgerError::Write(error.to_string()));
        }
        tracing::warn!(attempt, error = %error, "ledger batch failed; retrying");
        std::thread::sleep(delay);
        delay *= 4;
        attempt += 1;
    }
}
