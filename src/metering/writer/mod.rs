//! The ledger: how a usage record becomes durable before its client sees the end of its
//! response, and how it reaches the database (SQLite, or PostgreSQL shared by replicas).
//!
//! A request commits its own record: it encodes it, then appends it to the active usage
//! journal (`store::journal`) under a short lock, with no hop to another thread. With
//! `synchronous = "full"` it then waits for the writer thread's next `fdatasync`, which
//! covers every record appended before it began (group commit).
//!
//! The writer thread imports the journal into the database, many records to a transaction:
//! after `ledger.import_delay_ms`, once `ledger.import_max` records wait, when a reader
//! of usage asks (`Ledger::flush`), and at shutdown. At an import the two journal files
//! change roles, so appends go on while the database works. The writer has its own
//! connection (`store::Sink`); everything else in the store goes through the pool. While
//! the database is unreachable the journal is the spool: records wait there, and imports
//! are retried until it returns. This file is the handle requests use; the writer thread
//! is `thread`.

mod thread;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::billing::record::UsageRecord;
use crate::config::{DatabaseConfig, LedgerConfig, Synchronous};
use crate::metrics::Metrics;
use crate::store::Sink;
use crate::store::journal::{self, Journal, Line};
use thread::Writer;

#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    #[error("the ledger writer has stopped")]
    Stopped,
    #[error("the ledger could not be written: {0}")]
    Write(String),
}

impl From<LedgerError> for crate::error::Error {
    fn from(e: LedgerError) -> Self {
        crate::error::Error::Unavailable(format!("usage cannot be read now: {e}"))
    }
}

/// A handle to the ledger; cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    shared: Arc<Shared>,
    control: mpsc::Sender<Control>,
}

enum Control {
    /// Import everything committed so far into the database, then answer.
    Flush(oneshot::Sender<Result<(), LedgerError>>),
    /// Refuse new records, import those committed, then stop.
    Stop,
}

/// What requests and the writer thread share.
struct Shared {
    active: Mutex<Active>,
    /// With `sync`: records were appended that wait for an `fdatasync`.
    sync_wanted: Notify,
    /// The first record of a cycle was appended (the import delay starts), or the
    /// `import_max`th.
    import_wanted: Notify,
    /// Which appends an `fdatasync` has settled (with `sync`).
    resolved: watch::Receiver<Resolved>,
    /// `synchronous = "full"`: a commit waits for an `fdatasync`.
    sync: bool,
    import_max: usize,
    /// Records of a journal out of use whose import has not succeeded yet.
    retired: AtomicUsize,
    /// When the oldest of those records was appended.
    retired_since: Mutex<Option<Instant>>,
    metrics: Arc<Metrics>,
}

/// The journal requests append to.
struct Active {
    /// `None` once the ledger has stopped: nothing more is appended.
    journal: Option<Journal>,
    /// The records appended to `journal` in this cycle, oldest first.
    records: Vec<UsageRecord>,
    /// The number of the last record appended, counted over all cycles.
    appended: u64,
    /// When the first record of this cycle was appended.
    since: Option<Instant>,
    /// How much of this cycle an `fdatasync` has made durable (with `sync`).
    durable: Mark,
}

/// A point in the active cycle: the last record number, records and bytes up to it.
#[derive(Clone, Copy, Default)]
struct Mark {
    seq: u64,
    records: usize,
    len: u64,
}

/// Published by the writer (with `sync`): every append numbered up to `upto` is durable,
/// but for the ranges in `lost` (`(after, upto]`), which an `fdatasync` failed to make
/// durable: they were dropped from the journal, and their requests fail.
#[derive(Default)]
struct Resolved {
    upto: u64,
    lost: Vec<(u64, u64)>,
}

impl Resolved {
    fn outcome(&self, seq: u64) -> Result<(), LedgerError> {
        match self
            .lost
            .iter()
            .any(|&(after, upto)| after < seq && seq <= upto)
        {
            true => Err(LedgerError::Write(
                "the usage journal could not be synced to disk".into(),
            )),
            false => Ok(()),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Active> {
        // Nothing under the lock panics halfway through a change of state.
        self.active.lock()
    }
}

impl Ledger {
    /// Opens the writer's connection to the (already migrated) database, takes the usage
    /// journals, imports what a previous run left there, and starts the writer thread.
    pub async fn spawn(
        database: &DatabaseConfig,
        config: &LedgerConfig,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<(Ledger, LedgerWriter)> {
        let sink = Sink::open(database).await?;
        let opening = database.clone();
        let [mut first, mut second] =
            tokio::task::spawn_blocking(move || journal::open(&opening)).await??;
        let left: Vec<UsageRecord> = first
            .records()
            .into_iter()
            .chain(second.records())
            .collect();
        if !left.is_empty() {
            journal::import(&sink, &left, &first).await?;
            first.clear()?;
            second.clear()?;
            tracing::info!(
                records = left.len(),
                "usage records a previous run left in the journal imported"
            );
        }
        let (publish, resolved) = watch::channel(Resolved::default());
        let shared = Arc::new(Shared {
            active: Mutex::new(Active {
                journal: Some(first),
                records: Vec::new(),
                appended: 0,
                since: None,
                durable: Mark::default(),
            }),
            sync_wanted: Notify::new(),
            import_wanted: Notify::new(),
            resolved,
            sync: database.synchronous == Synchronous::Full,
            import_max: config.import_max,
            retired: AtomicUsize::new(0),
            retired_since: Mutex::new(None),
            metrics,
        });
        let import_delay = Duration::from_millis(config.import_delay_ms);
        let writer = Writer::new(shared.clone(), sink, second, publish, import_delay);
        // Time for the import delay; I/O for a PostgreSQL sink's connections.
        let clock = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (control, rx) = mpsc::channel(64);
        let (finished, stopped) = oneshot::channel();
        std::thread::Builder::new()
            .name("tollgate-ledger".into())
            .spawn(move || {
                clock.block_on(writer.run(rx));
                let _ = finished.send(());
            })?;
        let writer = LedgerWriter {
            control: control.clone(),
            stopped,
        };
        Ok((Ledger { shared, control }, writer))
    }

    /// Appends `record` to the usage journal at once; the future is ready when the record
    /// is durable (as `synchronous` defines it). Not an `async fn`, so that the record is
    /// not part of its caller's future: with `normal` the future is ready as it is made.
    pub fn commit(
        &self,
        record: UsageRecord,
    ) -> impl Future<Output = Result<(), LedgerError>> + Send + '_ {
        let appended = self.append(record);
        async move {
            match appended? {
                Some(seq) => self.synced(seq).await,
                None => Ok(()),
            }
        }
    }

    /// Appends `record` to the active journal: the sequence number to wait for with
    /// `sync`, or `None` when it is durable already.
    fn append(&self, record: UsageRecord) -> Result<Option<u64>, LedgerError> {
        let shared = &*self.shared;
        let started = Instant::now();
        let mut line = Line::encode(&record).map_err(|e| LedgerError::Write(e.to_string()))?;
        let seq = {
            let mut active = shared.lock();
            let Some(journal) = active.journal.as_mut() else {
                return Err(LedgerError::Stopped);
            };
            if let Err(e) = journal.append(&mut line) {
                tracing::error!(error = %e, "usage journal append failed");
                return Err(LedgerError::Write(e.to_string()));
            }
            active.records.push(record);
            active.appended += 1;
            let waiting = active.records.len();
            if waiting == 1 {
                active.since = Some(started);
            }
            if waiting == 1 || waiting == shared.import_max {
                shared.import_wanted.notify_one();
            }
            active.appended
        };
        if !shared.sync {
            shared.metrics.ledger_batch_size.observe(1.0);
            let elapsed = started.elapsed().as_secs_f64();
            shared.metrics.ledger_commit_seconds.observe(elapsed);
            return Ok(None);
        }
        shared.sync_wanted.notify_one();
        Ok(Some(seq))
    }

    /// Waits until an `fdatasync` has settled append `seq`.
    async fn synced(&self, seq: u64) -> Result<(), LedgerError> {
        let mut resolved = self.shared.resolved.clone();
        match resolved.wait_for(|r| r.upto >= seq).await {
            Ok(resolved) => resolved.outcome(seq),
            // The writer is gone without settling this append (it panicked).
            Err(_) => Err(LedgerError::Stopped),
        }
    }

    /// Returns once every record committed before the call is in the database: call it before
    /// reading usage from the database.
    pub async fn flush(&self) -> Result<(), LedgerError> {
        let (done, answered) = oneshot::channel();
        self.control
            .send(Control::Flush(done))
            .await
            .map_err(|_| LedgerError::Stopped)?;
        answered.await.map_err(|_| LedgerError::Stopped)?
    }

    /// Whether the ledger still accepts records.
    pub fn is_running(&self) -> bool {
        !self.control.is_closed() && self.shared.lock().journal.is_some()
    }

    /// Records committed to the journal and not yet imported into the database: the
    /// spool's backlog.
    pub fn queue_depth(&self) -> usize {
        self.shared.lock().records.len() + self.shared.retired.load(Ordering::Relaxed)
    }

    /// How long the oldest record not yet imported into the database has waited (zero
    /// when the spool is empty): what `/readyz` and `tollgate_ledger_spool_age_seconds`
    /// report, so an operator sees shipping stall, not only the backlog grow.
    pub fn spool_age(&self) -> Duration {
        let active = self.shared.lock().since;
        let retired = *self.shared.retired_since.lock();
        [active, retired]
            .into_iter()
            .flatten()
            .min()
            .map_or(Duration::ZERO, |since| since.elapsed())
    }
}

/// The running writer, owned by the application for shutdown.
pub struct LedgerWriter {
    control: mpsc::Sender<Control>,
    /// Resolves when the thread has imported its last records.
    stopped: oneshot::Receiver<()>,
}

impl LedgerWriter {
    /// Stops the ledger: records offered afterwards are refused with
    /// `LedgerError::Stopped` rather than lost silently, and every record committed is
    /// imported. Fails if the thread panicked.
    pub async fn shutdown(self) -> Result<(), LedgerError> {
        // If the send fails the thread is gone already, and `stopped` resolves at once.
        let _ = self.control.send(Control::Stop).await;
        self.stopped.await.map_err(|_| LedgerError::Stopped)
    }
}
