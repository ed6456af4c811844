//! The usage journal: a file beside the SQLite ledger. The ledger writer appends each
//! batch of records to it before it answers the requests (one `write`, plus one
//! `fdatasync` with `synchronous = "full"`), and imports the records into SQLite later,
//! many to a transaction. A commit so costs one append instead of one SQLite transaction.
//!
//! Like SQLite's own WAL, the file is reused rather than truncated: after an import the
//! next records overwrite it from the start, so an `fdatasync` has no file size to
//! update. Each line carries the number of its cycle (the span between two imports); the
//! journal is the lines at its start that belong to the cycle of the first one. Older
//! lines after them were imported already, and a line cut short by a crash was never
//! acknowledged to its request.
//!
//! The running gateway holds a lock on the journal. Records it left behind (a crash, a
//! failed import) are imported by the next process that opens the ledger and can take the
//! lock; an import skips request ids already stored, so no record is ever written twice.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::usage;
use crate::config::DatabaseConfig;
use crate::metering::record::UsageRecord;

/// The locked journal of a ledger, owned by its writer.
pub struct Journal {
    file: File,
    path: PathBuf,
    /// Where the current cycle's lines end: the next append goes here.
    len: u64,
    /// The current cycle; lines of other cycles are not part of the journal.
    cycle: u64,
    /// `fdatasync` after each append (`synchronous = "full"`).
    sync: bool,
    /// Records found at opening, until taken.
    left: Vec<UsageRecord>,
    /// Reused for encoding a batch.
    buffer: Vec<u8>,
}

/// Files above this size are given back to the file system when the journal empties.
const KEEP_MAX: u64 = 64 << 20;

/// The journal's path: beside the SQLite file, like its `-wal` and `-shm`.
pub fn path_of(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push("-usage-journal");
    PathBuf::from(name)
}

impl Journal {
    /// Opens (creating if needed) and locks the journal of `config`'s SQLite file.
    /// Fails if another process holds it for a second: one gateway writes one SQLite
    /// ledger (a CLI command holds it only for a moment, to check for records left).
    pub fn open(config: &DatabaseConfig) -> anyhow::Result<Journal> {
        for _ in 0..10 {
            if let Some(journal) = Journal::try_open(config)? {
                return Ok(journal);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        bail!(
            "another tollgate is writing the ledger {} (its usage journal is locked)",
            super::sqlite_path(config)?.display()
        )
    }

    /// `open`, or `None` if another process holds the journal.
    fn try_open(config: &DatabaseConfig) -> anyhow::Result<Option<Journal>> {
        let path = path_of(&super::sqlite_path(config)?);
        let Some(mut file) = try_lock(&path)? else {
            return Ok(None);
        };
        let sync = config.synchronous == "full";
        if sync {
            // The journal's directory entry must survive power loss as its records do.
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            File::open(dir.unwrap_or(Path::new(".")))?.sync_all()?;
        }
        let (left, len, cycle) = read_cycle(&mut file, &path)?;
        Ok(Some(Journal {
            file,
            path,
            len,
            cycle: cycle.unwrap_or_else(rand::random),
            sync,
            left,
            buffer: Vec::new(),
        }))
    }

    /// The records a previous process left in the journal (once).
    pub fn records(&mut self) -> Vec<UsageRecord> {
        std::mem::take(&mut self.left)
    }

    /// Appends `records` durably (as `synchronous` defines it). On failure what was
    /// written is marked invalid, so a record whose request is told it failed is never
    /// imported later.
    pub fn append<'a>(&mut self, records: impl Iterator<Item = &'a UsageRecord>) -> io::Result<()> {
        self.buffer.clear();
        for record in records {
            write!(self.buffer, "{:016x} ", self.cycle)?;
            serde_json::to_writer(&mut self.buffer, record)?;
            self.buffer.push(b'\n');
        }
        let written = self
            .file
            .write_all_at(&self.buffer, self.len)
            .and_then(|()| match self.sync {
                true => self.file.sync_data(),
                false => Ok(()),
            });
        match written {
            Ok(()) => {
                self.len += self.buffer.len() as u64;
                Ok(())
            }
            Err(e) => {
                if let Err(mark) = self.end_at(self.len) {
                    tracing::error!(journal = %self.path.display(), error = %mark, "cannot mark a failed append invalid in the usage journal");
                }
                Err(e)
            }
        }
    }

    /// Empties the journal once its records are all in SQLite: the next cycle starts at
    /// the beginning. If this is lost (a crash, power loss), the records are imported
    /// again and skipped as duplicates.
    pub fn clear(&mut self) -> io::Result<()> {
        self.cycle = self.cycle.wrapping_add(1);
        self.len = 0;
        if self.file.metadata()?.len() > KEEP_MAX {
            self.file.set_len(0)?;
        }
        self.end_at(0)
    }

    /// Makes the journal end at `offset` (a byte no line can start with).
    fn end_at(&self, offset: u64) -> io::Result<()> {
        self.file.write_all_at(b"\0", offset)
    }

    /// Keeps a record SQLite refuses in a file of its own beside the journal, as one JSON
    /// line, for an operator to look at.
    pub fn set_aside(&self, record: &UsageRecord) -> io::Result<()> {
        let mut name = self.path.as_os_str().to_owned();
        name.push("-refused");
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        let mut file = OpenOptions::new().append(true).create(true).open(name)?;
        file.write_all(&line)?;
        file.sync_data()
    }
}

/// Whether the journal at `path` holds no records (every committed record is in SQLite).
pub fn is_empty(path: &Path) -> io::Result<bool> {
    let mut first = [0u8; 1];
    match File::open(path) {
        Ok(file) => Ok(file.read_at(&mut first, 0)? == 0 || first[0] == 0),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

/// Imports the records of a journal no gateway holds, then empties it. Returns how many
/// records were new to the ledger, or `None` if a running gateway holds the journal (it
/// imports its own records within `ledger.import_delay_ms`).
pub fn recover(config: &DatabaseConfig) -> anyhow::Result<Option<usize>> {
    if !path_of(&super::sqlite_path(config)?).exists() {
        return Ok(Some(0));
    }
    let Some(mut journal) = Journal::try_open(config)? else {
        return Ok(None);
    };
    let records = journal.records();
    if records.is_empty() {
        return Ok(Some(0));
    }
    let conn = super::open_for_ledger_writer(config)?;
    let count = || -> rusqlite::Result<i64> {
        conn.query_row("SELECT count(*) FROM usage_records", [], |row| row.get(0))
    };
    let before = count()?;
    for chunk in records.chunks(1000) {
        usage::insert(&conn, chunk).with_context(|| {
            format!("cannot import the usage journal {}", journal.path.display())
        })?;
    }
    let new = (count()? - before) as usize;
    journal.clear()?;
    tracing::info!(journal = %journal.path.display(), records = records.len(), new, "usage journal imported");
    Ok(Some(new))
}

/// Opens `path` (creating it) and takes its lock; `None` if it is held.
fn try_lock(path: &Path) -> anyhow::Result<Option<File>> {
    // Not in append mode: appends go to the end of the current cycle, not of the file.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("cannot open the usage journal {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
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
