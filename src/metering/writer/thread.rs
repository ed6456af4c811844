//! The writer thread: it syncs the active journal for the commits waiting on it, ships
//! retired journals to the database beside its loop (retrying failed imports with a
//! backoff, and keeping an import due while records wait), and imports what is left at
//! shutdown.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::{Control, LedgerError, Mark, Resolved, Shared};
use crate::billing::record::UsageRecord;
use crate::store::Sink;
use crate::store::journal::{self, Journal};

/// First wait before a failed import is tried again; it doubles up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The writer thread's state.
pub(super) struct Writer {
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
    pub(super) fn new(
        shared: Arc<Shared>,
        sink: Sink,
        spare: Journal,
        publish: watch::Sender<Resolved>,
        import_delay: Duration,
    ) -> Writer {
        Writer {
            shared,
            sink: Arc::new(sink),
            shipping: None,
            spare: Some(spare),
            retired: None,
            publish,
            import_delay,
            due: None,
            retry: RETRY_FIRST,
        }
    }

    pub(super) async fn run(mut self, mut control: mpsc::Receiver<Control>) {
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
            journal.rewind(durable.len);
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
        // Counted as retired before the active ones are seen empty: the backlog
        // (`queue_depth`, `spool_age`) never reads nothing while they are on their way.
        self.shared.retired.store(records.len(), Ordering::Relaxed);
        let mut retired_since = self.shared.retired_since.lock();
        *retired_since = retired_since.or(since);
        drop(retired_since);
        drop(active);
        if self.shared.sync && durable.seq < upto && !self.fdatasync(&journal.file(), upto) {
            records.truncate(durable.records);
            self.shared.retired.store(records.len(), Ordering::Relaxed);
            journal.rewind(durable.len);
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
        Sink::Sqlite(..) => {
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
