//! The single ledger writer. Requests hand it records and wait for the commit; it commits
//! whatever has queued up since its last commit at once (group commit), so the hot path
//! never pays for a transaction of its own and every record is durable before the client
//! sees the end of its response.
//!
//! A commit is one append to the usage journal (`store::journal`). The records are
//! imported into SQLite afterwards, many to a transaction: after `ledger.import_delay_ms`,
//! once `ledger.import_max` are waiting, when a reader of usage asks (`Ledger::flush`), and
//! at shutdown. The writer is an OS thread with its own blocking SQLite connection;
//! everything else in the store goes through sqlx.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::record::UsageRecord;
use crate::config::{DatabaseConfig, LedgerConfig};
use crate::metrics::Metrics;
use crate::store;
use crate::store::journal::Journal;

/// First wait before a failed import is tried again; it doubles up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

type Reply = oneshot::Sender<Result<(), LedgerError>>;

// `Stop` and `Flush` are rare; boxing `Record` would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Message {
    Record(UsageRecord, Reply),
    /// Import everything committed so far into SQLite, then answer.
    Flush(Reply),
    /// Refuse new records, commit and import those already queued, then stop.
    Stop,
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
    /// Opens the writer's connection to the (already migrated) database, takes its usage
    /// journal, imports what a previous run left there, and starts the writer thread.
    pub fn spawn(
        database: &DatabaseConfig,
        config: &LedgerConfig,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<(Ledger, LedgerWriter)> {
        let conn = store::open_for_ledger_writer(database)?;
        let mut journal = Journal::open(database)?;
        let mut writer = Writer {
            backlog: journal.records(),
            conn,
            journal,
            import_delay: Duration::from_millis(config.import_delay_ms),
            import_max: config.import_max,
            due: None,
            retry: RETRY_FIRST,
            metrics,
        };
        writer.import()?;
        let clock = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        let (queue, rx) = mpsc::channel(config.queue_capacity);
        let (finished, stopped) = oneshot::channel();
        let batch_max = config.batch_max;
        std::thread::Builder::new()
            .name("tollgate-ledger".into())
            .spawn(move || {
                writer.run(&clock, rx, batch_max);
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
        self.ask(|done| Message::Record(record, done)).await
    }

    /// Returns once every record committed before the call is in SQLite: call it before
    /// reading usage from the database.
    pub async fn flush(&self) -> Result<(), LedgerError> {
        self.ask(Message::Flush).await
    }

    async fn ask(&self, message: impl FnOnce(Reply) -> Message) -> Result<(), LedgerError> {
        let (done, answered) = oneshot::channel();
        self.queue
            .send(message(done))
            .await
            .map_err(|_| LedgerError::Stopped)?;
        answered.await.map_err(|_| LedgerError::Stopped)?
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
    /// Commits and imports everything already queued, then stops. Records offered
    /// afterwards are refused with `LedgerError::Stopped` rather than lost silently.
    /// Fails if the thread panicked (and so may have left records unanswered).
    pub async fn shutdown(self) -> Result<(), LedgerError> {
        // If the send fails the thread is gone already, and `stopped` resolves at once.
        let _ = self.queue.send(Message::Stop).await;
        self.stopped.await.map_err(|_| LedgerError::Stopped)
    }
}

/// The writer thread's state.
struct Writer {
    conn: rusqlite::Connection,
    journal: Journal,
    /// Committed (journaled) records not yet in SQLite, oldest first.
    backlog: Vec<UsageRecord>,
    import_delay: Duration,
    import_max: usize,
    /// When the backlog must be imported.
    due: Option<Instant>,
    /// Wait after the next failed import.
    retry: Duration,
    metrics: Arc<Metrics>,
}

#[allow(clippy::large_enum_variant)] // as `Message`
enum Next {
    Message(Message),
    /// An import is due.
    Due,
    /// Stopped (or every handle is gone), and the queue is drained.
    Closed,
}

impl Writer {
    fn run(
        mut self,
        clock: &tokio::runtime::Runtime,
        mut rx: mpsc::Receiver<Message>,
        batch_max: usize,
    ) {
        let mut batch: Vec<(UsageRecord, Reply)> = Vec::with_capacity(batch_max);
        let mut flushes: Vec<Reply> = Vec::new();
        loop {
            let first = match clock.block_on(next(&mut rx, self.due)) {
                Next::Message(message) => message,
                Next::Due => {
                    let _ = self.import();
                    continue;
                }
                Next::Closed => break,
            };
            let mut next = Some(first);
            while let Some(message) = next.take() {
                match message {
                    Message::Record(record, done) => batch.push((record, done)),
                    Message::Flush(done) => flushes.push(done),
                    // Nothing can be queued after this; what is queued already is still taken.
                    Message::Stop => rx.close(),
                }
                if batch.len() < batch_max {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit(&mut batch);
            }
            let overdue = self.due.is_some_and(|due| Instant::now() >= due);
            if !flushes.is_empty() || overdue || self.backlog.len() >= self.import_max {
                let imported = self.import();
                for done in flushes.drain(..) {
                    let _ = done.send(imported.clone());
                }
            }
        }
        // Every record answered is in the journal; the next start imports what fails here.
        let _ = self.import();
        tracing::debug!("ledger writer stopped: queue closed and drained");
    }

    /// Appends the batch to the journal and answers its requests.
    fn commit(&mut self, batch: &mut Vec<(UsageRecord, Reply)>) {
        let started = Instant::now();
        let appended = self.journal.append(batch.iter().map(|(record, _)| record));
        self.metrics.ledger_batch_size.observe(batch.len() as f64);
        self.metrics
            .ledger_commit_seconds
            .observe(started.elapsed().as_secs_f64());
        let outcome = appended.map_err(|e| {
            tracing::error!(records = batch.len(), error = %e, "usage journal append failed");
            LedgerError::Write(e.to_string())
        });
        let committed = outcome.is_ok();
        for (record, done) in batch.drain(..) {
            // A request that has gone away no longer waits; its record is kept all the same.
            let _ = done.send(outcome.clone());
            if committed {
                self.backlog.push(record);
            }
        }
        if committed {
            self.due.get_or_insert(started + self.import_delay);
        }
    }

    /// Imports the backlog into SQLite in one transaction and empties the journal. On
    /// failure the records stay in both, and the import is tried again later.
    fn import(&mut self) -> Result<(), LedgerError> {
        if self.backlog.is_empty() {
            self.due = None;
            return Ok(());
        }
        let started = Instant::now();
        let inserted = match store::usage::insert(&self.conn, &self.backlog) {
            Err(e) if is_refusal(&e) => self.import_one_by_one(),
            other => other.map_err(anyhow::Error::from),
        };
        if let Err(e) = inserted {
            tracing::warn!(records = self.backlog.len(), error = %e, "ledger import failed; the records stay in the usage journal and are tried again");
            self.due = Some(Instant::now() + self.retry);
            self.retry = (self.retry * 2).min(RETRY_MAX);
            return Err(LedgerError::Write(e.to_string()));
        }
        self.metrics
            .ledger_import_size
            .observe(self.backlog.len() as f64);
        self.metrics
            .ledger_import_seconds
            .observe(started.elapsed().as_secs_f64());
        self.backlog.clear();
        self.due = None;
        self.retry = RETRY_FIRST;
        if let Err(e) = self.journal.clear() {
            // Harmless but for growth: imported records are skipped when imported again.
            tracing::error!(error = %e, "cannot empty the usage journal");
        }
        Ok(())
    }
}

impl Writer {
    /// Imports the backlog record by record, setting aside those SQLite refuses (a
    /// constraint: they would fail every import) so they cannot hold up the others.
    fn import_one_by_one(&mut self) -> anyhow::Result<()> {
        for record in &self.backlog {
            match store::usage::insert(&self.conn, [record]) {
                Err(e) if is_refusal(&e) => {
                    tracing::error!(request_id = %record.request_id, error = %e, "the ledger refuses a usage record; it is kept in the refused-records file beside the journal");
                    self.journal.set_aside(record)?;
                }
                other => other?,
            }
        }
        Ok(())
    }
}

fn is_refusal(error: &rusqlite::Error) -> bool {
    error.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation)
}

/// The next message, or `Due` once `due` passes first.
async fn next(rx: &mut mpsc::Receiver<Message>, due: Option<Instant>) -> Next {
    let received = match due {
        None => rx.recv().await,
        Some(due) => match tokio::time::timeout_at(due.into(), rx.recv()).await {
            Ok(received) => received,
            Err(_) => return Next::Due,
        },
    };
    received.map_or(Next::Closed, Next::Message)
}
