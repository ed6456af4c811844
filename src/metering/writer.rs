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
//! are retried until it returns.

use std::fs::File;
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

/// First wait before a failed import is tried again; it doubles up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    #[error("the ledger writer has stopped")]
    Stopped,
    #[error("the ledger could not be written: {0}")]
    Write(String),
}

impl From<LedgerError> for crate::error::ApiError {
    fn from(e: LedgerError) -> Self {
        crate::error::ApiError::Unavailable(format!("usage cannot be read now: {e}"))
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
        let writer = Writer {
            shared: shared.clone(),
            sink: Arc::new(sink),
            shipping: None,
            spare: Some(second),
            retired: None,
            publish,
            import_delay: Duration::from_millis(config.import_delay_ms),
            due: None,
            retry: RETRY_FIRST,
        };
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

    /// Appends `record` to the usage journal and returns once it is durable (as
    /// `synchronous` defines it).
    pub async fn commit(&self, record: UsageRecord) -> Result<(), LedgerError> {
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
            return Ok(());
        }
        shared.sync_wanted.notify_one();
        let mut resolved = shared.resolved.clone();
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

/// The writer thread's state.
struct Writer {
    shared: Arc<Shared>,
    /// Shared with the shipment in flight.
    sink: Arc<Sink>,
    /// The retired journal being imported beside the loop (so a slow database never holds
    /// up the `fdatasync`s that commits wait for).
    shipping: Option<tokio::task::JoinHandle<Shipment>>,
    /// The emptied journal the next import makes active.
    spare: Option<Journal>,
    /// A journal out of use and its records, until they are all in the database.
    retired: Option<(Journal, Vec<UsageRecord>)>,
    publish: watch::Sender<Resolved>,
    import_delay: Duration,
    /// When the active journal must be imported.
    due: Option<Instant>,
    /// Wait after the next failed import.
    retry: Duration,
}

impl Writer {
    async fn run(mut self, mut control: mpsc::Receiver<Control>) {
        let shared = self.shared.clone();
        loop {
            let due = self.due;
            let sleep = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into());
            let shipping = self.shipping.is_some();
            let shipped = async {
                match self.shipping.as_mut() {
                    Some(handle) => handle.await,
                    None => std::future::pending().await,
                }
            };
            // Not biased: under load there is always an fdatasync wanted, and imports and
            // flushes must not starve.
            tokio::select! {
                _ = shared.sync_wanted.notified(), if shared.sync => self.sync_active(),
                message = control.recv() => match message {
                    Some(Control::Flush(done)) => {
                        let _ = done.send(self.import_all().await);
                    }
                    Some(Control::Stop) | None => break,
                },
                shipment = shipped, if shipping => {
                    self.shipping = None;
                    let _ = self.landed(shipment);
                }
                _ = shared.import_wanted.notified() => self.schedule_import(),
                _ = sleep, if due.is_some() && !shipping => self.start_shipping(),
            }
            self.keep_shipping();
        }
        control.close();
        // No more appends; with `sync`, those not yet synced are settled.
        let last = self.take_active(None);
        // Every record answered is in a journal; the next start imports what fails here.
        let mut imported = Ok(());
        if self.retired.is_some() || self.shipping.is_some() {
            imported = self.import().await;
        }
        if imported.is_ok()
            && let Some(last) = last
        {
            self.retired = Some(last);
            imported = self.import().await;
        }
        while let Ok(Control::Flush(done)) = control.try_recv() {
            let _ = done.send(imported.clone());
        }
        tracing::debug!("ledger writer stopped");
    }

    /// Starts the import delay, or imports at once if `import_max` records wait.
    fn schedule_import(&mut self) {
        let waiting = self.shared.lock().records.len();
        if waiting >= self.shared.import_max {
            self.start_shipping();
        } else if waiting > 0 {
            self.due.get_or_insert(Instant::now() + self.import_delay);
        }
    }

    /// While the spool holds records, an import is always in flight or due: a journal whose
    /// import failed is tried again after the backoff, and records appended meanwhile (which
    /// asked for their import while another was due or in flight) after the import delay,
    /// or at once if `import_max` wait. Without this a failed import stalled shipping until
    /// the `import_max`th record of a new cycle or a reader's flush.
    fn keep_shipping(&mut self) {
        if self.shipping.is_some() || self.due.is_some() {
            return;
        }
        if self.retired.is_some() {
            self.due = Some(Instant::now() + self.retry);
            return;
        }
        let waiting = self.shared.lock().records.len();
        if waiting >= self.shared.import_max {
            self.start_shipping();
        } else if waiting > 0 {
            self.due = Some(Instant::now() + self.import_delay);
        }
    }

    /// Makes every record appended so far to the active journal durable, and tells the
    /// requests waiting for it. If the `fdatasync` fails, the records since the last one
    /// that succeeded are dropped from the journal and their requests fail.
    fn sync_active(&mut self) {
        let (file, mark) = {
            let active = self.shared.lock();
            let Some(journal) = &active.journal else {
                return;
            };
            let mark = Mark {
                seq: active.appended,
                records: active.records.len(),
                len: journal.len(),
            };
            (journal.file(), mark)
        };
        if mark.seq <= self.publish.borrow().upto {
            return;
        }
        if self.fdatasync(&file, mark.seq) {
            self.shared.lock().durable = mark;
            return;
        }
        let mut active = self.shared.lock();
        let durable = active.durable;
        let lost = (durable.seq, active.appended);
        active.records.truncate(durable.records);
        if active.records.is_empty() {
            active.since = None;
        }
        if let Some(journal) = &mut active.journal {
            rewind(journal, durable.len);
        }
        active.durable.seq = lost.1;
        drop(active);
        self.settle(lost.1, Some(lost));
    }

    /// `fdatasync`s `file`, which holds the appends up to `upto`, and on success tells
    /// the requests waiting for them.
    fn fdatasync(&self, file: &File, upto: u64) -> bool {
        let started = Instant::now();
        let synced = file.sync_data();
        let metrics = &self.shared.metrics;
        let records = upto.saturating_sub(self.publish.borrow().upto);
        metrics.ledger_batch_size.observe(records as f64);
        let elapsed = started.elapsed().as_secs_f64();
        metrics.ledger_commit_seconds.observe(elapsed);
        match synced {
            Ok(()) => {
                self.settle(upto, None);
                true
            }
            Err(e) => {
                tracing::error!(records, error = %e, "usage journal fdatasync failed; its requests fail and their records are dropped");
                false
            }
        }
    }

    fn settle(&self, upto: u64, lost: Option<(u64, u64)>) {
        self.publish.send_modify(|resolved| {
            resolved.upto = resolved.upto.max(upto);
            resolved.lost.extend(lost);
        });
    }

    /// Imports everything committed so far: a journal in flight or whose import failed,
    /// then the active one.
    async fn import_all(&mut self) -> Result<(), LedgerError> {
        if self.retired.is_some() || self.shipping.is_some() {
            self.import().await?;
        }
        self.import().await
    }

    /// Starts importing the retired journal beside the loop (retiring the active one first
    /// if none is); nothing if a shipment is in flight already.
    fn start_shipping(&mut self) {
        if self.shipping.is_some() {
            return;
        }
        if self.retired.is_none() {
            self.retire_active();
        }
        let Some((journal, records)) = self.retired.take() else {
            self.due = None;
            return;
        };
        self.shared.retired.store(records.len(), Ordering::Relaxed);
        self.due = None;
        self.shipping = Some(launch(self.sink.clone(), journal, records));
    }

    /// Imports the retired journal (after the shipment in flight, if any), or the active
    /// one, and waits for the outcome.
    async fn import(&mut self) -> Result<(), LedgerError> {
        if let Some(handle) = self.shipping.take() {
            let landed = self.landed(handle.await);
            if self.retired.is_none() {
                return landed;
            }
        }
        if self.retired.is_none() {
            self.retire_active();
        }
        let Some((journal, records)) = self.retired.take() else {
            self.due = None;
            return Ok(());
        };
        self.shared.retired.store(records.len(), Ordering::Relaxed);
        let shipment = launch(self.sink.clone(), journal, records).await;
        self.landed(shipment)
    }

    /// Takes in a shipment's outcome: on success the journal is emptied and becomes the
    /// spare; on failure its records stay in it and in memory, tried again later.
    fn landed(
        &mut self,
        shipment: Result<Shipment, tokio::task::JoinError>,
    ) -> Result<(), LedgerError> {
        let Shipment {
            mut journal,
            records,
            outcome,
            elapsed,
        } = shipment.map_err(|_| LedgerError::Stopped)?;
        let metrics = &self.shared.metrics;
        if let Err(e) = outcome {
            metrics.ledger_import_failures.inc();
            tracing::warn!(records = records.len(), error = %e, "ledger import failed; the records stay in the usage journal and are tried again");
            self.retired = Some((journal, records));
            self.due = Some(Instant::now() + self.retry);
            self.retry = (self.retry * 2).min(RETRY_MAX);
            return Err(LedgerError::Write(e));
        }
        metrics.ledger_import_size.observe(records.len() as f64);
        metrics.ledger_import_seconds.observe(elapsed.as_secs_f64());
        self.shared.retired.store(0, Ordering::Relaxed);
        *self.shared.retired_since.lock() = None;
        if let Err(e) = journal.clear() {
            // Harmless but for growth: imported records are skipped when imported again.
            tracing::error!(error = %e, "cannot empty the usage journal");
        }
        self.spare = Some(journal);
        self.retry = RETRY_FIRST;
        Ok(())
    }

    /// Makes the spare journal the active one, if the active one holds records.
    fn retire_active(&mut self) {
        if let Some(spare) = self.spare.take() {
            self.retired = self.take_active(Some(spare));
        }
    }

    /// Takes the active journal and its records, putting `replacement` in its place, or
    /// stopping appends if it is `None`. Leaves an active journal without records in place
    /// (unless stopping). With `sync`, the appends not yet synced are settled first.
    fn take_active(&mut self, replacement: Option<Journal>) -> Option<(Journal, Vec<UsageRecord>)> {
        let mut active = self.shared.lock();
        if active.journal.is_none() || (active.records.is_empty() && replacement.is_some()) {
            drop(active);
            self.spare = self.spare.take().or(replacement);
            return None;
        }
        let mut journal = std::mem::replace(&mut active.journal, replacement)?;
        let mut records = std::mem::take(&mut active.records);
        let since = active.since.take();
        let upto = active.appended;
        let next = Mark {
            seq: upto,
            ..Mark::default()
        };
        let durable = std::mem::replace(&mut active.durable, next);
        drop(active);
        let mut retired_since = self.shared.retired_since.lock();
        *retired_since = retired_since.or(since);
        drop(retired_since);
        if self.shared.sync && durable.seq < upto && !self.fdatasync(&journal.file(), upto) {
            records.truncate(durable.records);
            rewind(&mut journal, durable.len);
            self.settle(upto, Some((durable.seq, upto)));
        }
        Some((journal, records))
    }
}

/// Starts a retired journal's import beside the writer's loop. SQLite's inserts block (a
/// write lock held by another process makes them wait up to the busy timeout), so they run
/// on a blocking thread: the loop goes on syncing the active journal, and commits never
/// wait for an import.
fn launch(
    sink: Arc<Sink>,
    journal: Journal,
    records: Vec<UsageRecord>,
) -> tokio::task::JoinHandle<Shipment> {
    match *sink {
        Sink::Sqlite(_) => {
            let runtime = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || runtime.block_on(ship(sink, journal, records)))
        }
        Sink::Postgres(_) => tokio::spawn(ship(sink, journal, records)),
    }
}

/// A retired journal's import, run beside the writer's loop.
struct Shipment {
    journal: Journal,
    records: Vec<UsageRecord>,
    outcome: Result<(), String>,
    elapsed: Duration,
}

/// The longest a shipment may take before it counts as failed (a database that neither
/// answers nor refuses): tried again later, which skips whatever did arrive.
const SHIP_TIMEOUT: Duration = Duration::from_secs(30);

async fn ship(sink: Arc<Sink>, journal: Journal, records: Vec<UsageRecord>) -> Shipment {
    let started = Instant::now();
    let import = journal::import(&sink, &records, &journal);
    let outcome = match tokio::time::timeout(SHIP_TIMEOUT, import).await {
        Ok(imported) => imported.map_err(|e| format!("{e:#}")),
        Err(_) => Err(format!("no answer from the database in {SHIP_TIMEOUT:?}")),
    };
    Shipment {
        journal,
        records,
        outcome,
        elapsed: started.elapsed(),
    }
}

/// Drops the lines of a failed `fdatasync` from `journal`.
fn rewind(journal: &mut Journal, len: u64) {
    if let Err(e) = journal.rewind(len) {
        tracing::error!(error = %e, "cannot drop the records of a failed fdatasync from the usage journal");
    }
}
