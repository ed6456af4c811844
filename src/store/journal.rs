//! The usage journal: an append-only file beside the SQLite ledger. The ledger writer
//! appends each batch of records to it before it answers the requests (one `write`, plus
//! one `fdatasync` with `synchronous = "full"`), and imports the records into SQLite later,
//! many to a transaction, then empties it. A commit so costs one append instead of one
//! SQLite transaction.
//!
//! The running gateway holds a lock on the journal. Records it left behind (a crash, a
//! failed import) are imported by the next process that opens the ledger and can take the
//! lock; an import skips request ids already stored, so no record is ever written twice.
//!
//! One JSON line per record. A last line cut short by a crash was never acknowledged to
//! its request, and is dropped.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::usage;
use crate::config::DatabaseConfig;
use crate::metering::record::UsageRecord;

/// The locked journal of a ledger, owned by its writer.
pub struct Journal {
    file: File,
    path: PathBuf,
    /// Bytes of whole lines in the file.
    len: u64,
    /// `fdatasync` after each append (`synchronous = "full"`).
    sync: bool,
    /// Reused for encoding a batch.
    buffer: Vec<u8>,
}

/// The journal's path: beside the SQLite file, like its `-wal` and `-shm`.
pub fn path_of(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push("-usage-journal");
    PathBuf::from(name)
}

impl Journal {
    /// Opens (creating if needed) and locks the journal of `config`'s SQLite file.
    /// Fails if another process holds it: one gateway writes one SQLite ledger.
    pub fn open(config: &DatabaseConfig) -> anyhow::Result<Journal> {
        match Journal::try_open(config)? {
            Some(journal) => Ok(journal),
            None => bail!(
                "another tollgate is writing the ledger {} (its usage journal is locked)",
                super::sqlite_path(config)?.display()
            ),
        }
    }

    /// `open`, or `None` if another process holds the journal.
    fn try_open(config: &DatabaseConfig) -> anyhow::Result<Option<Journal>> {
        let path = path_of(&super::sqlite_path(config)?);
        let Some(file) = try_lock(&path)? else {
            return Ok(None);
        };
        let sync = config.synchronous == "full";
        if sync {
            // The journal's directory entry must survive power loss as its records do.
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            File::open(dir.unwrap_or(Path::new(".")))?.sync_all()?;
        }
        let len = file.metadata()?.len();
        Ok(Some(Journal {
            file,
            path,
            len,
            sync,
            buffer: Vec::new(),
        }))
    }

    /// The records in the journal, oldest first. Drops a last line cut short by a crash.
    pub fn records(&mut self) -> anyhow::Result<Vec<UsageRecord>> {
        let (records, whole) = read_records(&mut self.file, &self.path)?;
        if whole < self.len {
            tracing::warn!(journal = %self.path.display(), "dropping an unfinished last line of the usage journal");
            self.file.set_len(whole)?;
            self.len = whole;
        }
        Ok(records)
    }

    /// Appends `records` durably (as `synchronous` defines it). On failure the journal is
    /// cut back to what it held before, so a record whose request is told it failed is
    /// never imported later.
    pub fn append<'a>(&mut self, records: impl Iterator<Item = &'a UsageRecord>) -> io::Result<()> {
        self.buffer.clear();
        for record in records {
            serde_json::to_writer(&mut self.buffer, record)?;
            self.buffer.push(b'\n');
        }
        let written = self
            .file
            .write_all(&self.buffer)
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
                if let Err(cut) = self.file.set_len(self.len) {
                    tracing::error!(journal = %self.path.display(), error = %cut, "cannot cut a failed append back out of the usage journal");
                }
                Err(e)
            }
        }
    }

    /// Empties the journal once its records are all in SQLite. If the emptying is lost
    /// (a crash, power loss), the records are imported again and skipped as duplicates.
    pub fn clear(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.len = 0;
        Ok(())
    }

    /// Keeps a record SQLite refuses in a file of its own beside the journal, with the
    /// same format, for an operator to look at.
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
    let records = journal.records()?;
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

/// Opens `path` (creating it) for appending and takes its lock; `None` if it is held.
fn try_lock(path: &Path) -> anyhow::Result<Option<File>> {
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
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

/// The whole lines of the journal, and where they end.
fn read_records(file: &mut File, path: &Path) -> anyhow::Result<(Vec<UsageRecord>, u64)> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    file.read_to_end(&mut bytes)?;
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let records = bytes[..whole]
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .enumerate()
        .map(|(n, line)| {
            serde_json::from_slice(line).with_context(|| {
                format!(
                    "the usage journal {} is damaged at line {}; move it aside to start without its records",
                    path.display(),
                    n + 1
                )
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((records, whole as u64))
}
