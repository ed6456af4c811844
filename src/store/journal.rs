//! The usage journal: two files beside the SQLite ledger, or in the replica's spool
//! directory when the ledger is PostgreSQL. A request appends its record to the active one
//! before it answers (a copy into the file's mapped pages, `mapped`; with `synchronous =
//! "full"` the ledger writer also makes it durable with a group `fdatasync`). The writer
//! imports the records into the ledger later, many to a transaction, from the other file:
//! at an import the files change roles, so appends never wait for the database.
//!
//! Like SQLite's own WAL, a file is reused rather than truncated: after its import the
//! next records overwrite it from the start, so an `fdatasync` has no file size to
//! update. Each line carries the number of its cycle (the span between two imports); a
//! file's journal is the lines at its start that belong to the cycle of the first one.
//! Older lines after them were imported already, and a line cut short by a crash was
//! never acknowledged to its request.
//!
//! The running gateway holds a lock on both files. Records it left behind (a crash, a
//! failed import) are imported by the next process that opens the ledger and can take the
//! locks; an import skips request ids already stored, so no record is ever written twice.

mod line;
mod mapped;

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};

use super::{InsertError, Sink};
use crate::billing::record::UsageRecord;
use crate::config::{DatabaseConfig, Synchronous};
use mapped::Mapped;

/// One locked journal file, owned by the ledger.
pub struct Journal {
    /// Shared with the writer, which `fdatasync`s it while requests go on appending.
    file: Arc<File>,
    /// The file's pages, which appends are copied into.
    mapped: Mapped,
    /// Where records the ledger refuses are kept (one file for both journals).
    refused: PathBuf,
    /// Where the current cycle's lines end: the next append goes here.
    len: u64,
    /// The current cycle; lines of other cycles are not part of the journal.
    cycle: u64,
    /// Records found at opening, until taken.
    left: Vec<UsageRecord>,
}

/// A record encoded as a journal line, before its cycle is known. Encoding happens
/// outside the ledger's lock; only the cycle is filled in under it.
pub struct Line(Vec<u8>);

/// `<16 hex digits of the cycle> `: filled in by `Journal::append`.
const CYCLE_PREFIX: &[u8] = b"0000000000000000 ";

/// Files above this size are given back to the file system when their journal empties.
const KEEP_MAX: u64 = 64 << 20;

/// The journal files' paths: beside the SQLite file, like its `-wal` and `-shm` (`base` is
/// `store::journal_base`).
pub fn paths(base: &Path) -> [PathBuf; 2] {
    ["-usage-journal", "-usage-journal-2"].map(|suffix| {
        let mut name = base.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    })
}

/// Where records the ledger refused at an import are kept, one JSON line each.
pub fn refused_path(base: &Path) -> PathBuf {
    let [first, _] = paths(base);
    let mut name = first.into_os_string();
    name.push("-refused");
    PathBuf::from(name)
}

/// Opens (creating if needed) and locks both journal files of `config`'s ledger. Fails if
/// another process holds them for a second: one gateway writes one journal (a CLI command
/// holds them only for a moment, to check for records left).
pub fn open(config: &DatabaseConfig) -> anyhow::Result<[Journal; 2]> {
    for _ in 0..10 {
        if let Some(journals) = try_open(config)? {
            return Ok(journals);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    bail!(
        "another tollgate is writing the usage journal {} (it is locked)",
        super::journal_base(config)?.display()
    )
}

/// `open`, or `None` if another process holds either file. Files are always locked in the
/// same order, so two processes cannot each hold one.
fn try_open(config: &DatabaseConfig) -> anyhow::Result<Option<[Journal; 2]>> {
    let database = super::journal_base(config)?;
    let [first, second] = paths(&database);
    let Some(first) = try_lock(first)? else {
        return Ok(None);
    };
    let Some(second) = try_lock(second)? else {
        return Ok(None);
    };
    if config.synchronous == Synchronous::Full {
        // The journals' directory entries must survive power loss as their records do.
        let dir = database.parent().filter(|d| !d.as_os_str().is_empty());
        File::open(dir.unwrap_or(Path::new(".")))?.sync_all()?;
    }
    let refused = refused_path(&database);
    let journals = [first, second].map(|(file, path)| (file, path, refused.clone()));
    let [first, second] = journals.map(Journal::read);
    Ok(Some([first?, second?]))
}

impl Journal {
    /// Reads the records a previous process left in a freshly locked file.
    fn read((mut file, path, refused): (File, PathBuf, PathBuf)) -> io::Result<Journal> {
        let (left, len, cycle) = read_cycle(&mut file, &path)?;
        Ok(Journal {
            mapped: Mapped::new(&file)?,
            file: Arc::new(file),
            refused,
            len,
            cycle: cycle.unwrap_or_else(rand::random),
            left,
        })
    }

    /// The records a previous process left in the journal (once).
    pub fn records(&mut self) -> Vec<UsageRecord> {
        std::mem::take(&mut self.left)
    }

    /// Appends `line` after the current cycle's lines. Durable against a crash of this
    /// process once it returns; against power loss only after an `fdatasync` of `file()`.
    /// On failure nothing was written, so a record whose request is told it failed is never
    /// imported later.
    pub fn append(&mut self, line: &mut Line) -> io::Result<()> {
        write!(&mut line.0[..16], "{:016x}", self.cycle)?;
        // The cycle is copied last: until it is, the line is not part of the journal.
        self.mapped
            .write(&self.file, self.len, &line.0, CYCLE_PREFIX.len())?;
        self.len += line.0.len() as u64;
        Ok(())
    }

    /// Where the current cycle's lines end.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the current cycle holds no lines.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file, for an `fdatasync` that does not hold up appends.
    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    /// Drops the lines after `len` (appends an `fdatasync` failed to make durable): the
    /// journal ends there, and the next append overwrites them.
    pub fn rewind(&mut self, len: u64) {
        self.len = len;
        self.end_at(len);
    }

    /// Empties the journal once its records are all in the ledger: the next cycle starts at
    /// the beginning. If this is lost (a crash, power loss), the records are imported
    /// again and skipped as duplicates.
    pub fn clear(&mut self) -> io::Result<()> {
        self.cycle = self.cycle.wrapping_add(1);
        self.len = 0;
        if self.mapped.len() > KEEP_MAX {
            self.mapped.shrink(&self.file)?;
        }
        self.end_at(0);
        Ok(())
    }

    /// Makes the journal end at `offset` (a byte no line can start with).
    fn end_at(&mut self, offset: u64) {
        self.mapped.mark(offset, 0);
    }

    /// Keeps a record the ledger refuses in a file of its own beside the journal, as one JSON
    /// line, for an operator to look at.
    pub fn set_aside(&self, record: &UsageRecord) -> io::Result<()> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.refused)?;
        file.write_all(&line)?;
        file.sync_data()
    }
}

impl Line {
    pub fn encode(record: &UsageRecord) -> io::Result<Line> {
        let mut line = Vec::with_capacity(512);
        line.extend_from_slice(CYCLE_PREFIX);
        self::line::encode(&mut line, record)?;
        line.push(b'\n');
        Ok(Line(line))
    }
}

/// Whether the journals at `base` hold no records (every committed record is in the
/// ledger).
pub fn is_empty(base: &Path) -> io::Result<bool> {
    for path in paths(base) {
        let mut first = [0u8; 1];
        match File::open(path) {
            Ok(file) if file.read_at(&mut first, 0)? == 1 && first[0] != 0 => return Ok(false),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Imports the records of journals no gateway holds, then empties them. Returns how many
/// records were new to the ledger, or `None` if a running gateway holds the journals (it
/// imports its own records within `ledger.import_delay_ms`).
pub async fn recover(config: &DatabaseConfig) -> anyhow::Result<Option<usize>> {
    let base = super::journal_base(config)?;
    if !paths(&base).iter().any(|path| path.exists()) {
        return Ok(Some(0));
    }
    let opening = config.clone();
    let Some(mut journals) = tokio::task::spawn_blocking(move || try_open(&opening)).await?? else {
        return Ok(None);
    };
    let records: Vec<UsageRecord> = journals.iter_mut().flat_map(Journal::records).collect();
    if records.is_empty() {
        return Ok(Some(0));
    }
    let sink = Sink::open(config).await?;
    let before = sink.count().await?;
    import(&sink, &records, &journals[0])
        .await
        .with_context(|| format!("cannot import the usage journal {}", base.display()))?;
    let new = (sink.count().await? - before) as usize;
    for journal in &mut journals {
        journal.clear()?;
    }
    tracing::info!(journal = %base.display(), records = records.len(), new, "usage journal imported");
    Ok(Some(new))
}

/// Imports `records` into the ledger in one transaction; a request id already stored is
/// skipped. If the ledger refuses a record (a constraint: it would fail every import), the
/// records are imported one by one and those refused are set aside beside the journal.
pub async fn import(sink: &Sink, records: &[UsageRecord], journal: &Journal) -> anyhow::Result<()> {
    let all: Vec<&UsageRecord> = records.iter().collect();
    match sink.insert(&all).await {
        Err(InsertError::Refused(_)) => {}
        other => return Ok(other?),
    }
    for record in records {
        match sink.insert(&[record]).await {
            Err(InsertError::Refused(e)) => {
                tracing::error!(request_id = %record.request_id, error = %e, "the ledger refuses a usage record; it is kept in the refused-records file beside the journal");
                journal.set_aside(record)?;
            }
            other => other?,
        }
    }
    Ok(())
}

/// Opens `path` (creating it) and takes its lock; `None` if it is held.
fn try_lock(path: PathBuf) -> anyhow::Result<Option<(File, PathBuf)>> {
    // Not in append mode: appends go to the end of the current cycle, not of the file.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open the usage journal {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some((file, path))),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock the usage journal {}", path.display()))
        }
    }
}
/// The lines at the start of the file that belong to the cycle of the first: their
/// records, where they end, and the cycle.
fn read_cycle(file: &mut File, path: &Path) -> io::Result<(Vec<UsageRecord>, u64, Option<u64>)> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    file.read_to_end(&mut bytes)?;
    let (mut records, mut end, mut cycle) = (Vec::new(), 0, None);
    // A line without its newline is an append cut short: never acknowledged.
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let Some((line_cycle, json)) = line.strip_suffix(b"\n").and_then(split_line) else {
            break;
        };
        if *cycle.get_or_insert(line_cycle) != line_cycle {
            break;
        }
        match serde_json::from_slice(json) {
            Ok(record) => records.push(record),
            Err(_) => {
                tracing::warn!(journal = %path.display(), records = records.len(), "the usage journal ends in an append a crash cut short; it was never acknowledged");
                break;
            }
        }
        end += line.len() as u64;
    }
    Ok((records, end, cycle))
}

/// A line's cycle and record text: `<16 hex digits> <json>`.
fn split_line(line: &[u8]) -> Option<(u64, &[u8])> {
    let (cycle, json) = (line.get(..16)?, line.get(17..)?);
    if line[16] != b' ' {
        return None;
    }
    let cycle = u64::from_str_radix(std::str::from_utf8(cycle).ok()?, 16).ok()?;
    Some((cycle, json))
}
