//! Authenticated keys kept in memory, without a stale window: every key change (here, in
//! another gateway, or by the CLI) replaces a signal file beside the SQLite ledger, and every
//! lookup first checks that file's identity (one `stat`), dropping the cache if it changed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use crate::store::{self, Db, keys::KeyRow};

/// Announces key changes to every process sharing the ledger.
#[derive(Debug, Clone)]
pub struct ChangeSignal {
    /// `None` for an in-memory database: no other process can change its keys.
    path: Option<PathBuf>,
}

/// Identity of the signal file: a new file (new inode) on every change.
type Stamp = Option<(u64, u64, i64, i64)>;

impl ChangeSignal {
    pub fn for_database(url: &str) -> ChangeSignal {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .map(|p| p.split('?').next().unwrap_or(p))
            .filter(|p| !p.is_empty() && !p.contains(":memory:"))
            .map(|p| PathBuf::from(format!("{p}-keys-changed")));
        ChangeSignal { path }
    }

    /// Replaces the signal file atomically. Call after the change is committed.
    pub fn announce(&self) {
        let Some(path) = &self.path else { return };
        let temp = path.with_extension(format!("tmp{}", std::process::id()));
        let stamp = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let result =
            std::fs::write(&temp, stamp.to_string()).and_then(|()| std::fs::rename(&temp, path));
        if let Err(e) = result {
            tracing::error!(path = %path.display(), error = %e, "cannot announce a key change");
        }
    }

    fn stamp(&self) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(self.path.as_ref()?).ok()?;
        Some((meta.dev(), meta.ino(), meta.mtime(), meta.mtime_nsec()))
    }
}

pub struct KeyCache {
    signal: ChangeSignal,
    state: Mutex<CacheState>,
    entries: RwLock<HashMap<[u8; 32], Arc<KeyRow>>>,
}

struct CacheState {
    seen: Stamp,
    /// Bumped on every clear, so a lookup that raced a change does not re-insert a stale row.
    generation: u64,
}

impl KeyCache {
    pub fn new(signal: ChangeSignal) -> KeyCache {
        let seen = signal.stamp();
        KeyCache {
            signal,
            state: Mutex::new(CacheState {
                seen,
                generation: 0,
            }),
            entries: RwLock::new(HashMap::new()),
        }
    }

    pub fn signal(&self) -> &ChangeSignal {
        &self.signal
    }

    /// The key whose secret hashes to `hash`, from memory if unchanged since it was read.
    pub async fn lookup(&self, db: &Db, hash: &[u8; 32]) -> anyhow::Result<Option<Arc<KeyRow>>> {
        let generation = self.refresh();
        if let Some(row) = self.entries.read().expect("not poisoned").get(hash) {
            return Ok(Some(row.clone()));
        }
        let Some(row) = store::keys::find_by_hash(db, hash).await? else {
            return Ok(None);
        };
        let row = Arc::new(row);
        let state = self.state.lock().expect("not poisoned");
        if state.generation == generation {
            self.entries
                .write()
                .expect("not poisoned")
                .insert(*hash, row.clone());
        }
        Ok(Some(row))
    }

    /// A key changed in this process: forget everything and tell the other processes.
    pub fn changed(&self) {
        self.signal.announce();
        self.refresh();
        // The stamp may not have moved (in-memory database): clear regardless.
        self.clear(&mut self.state.lock().expect("not poisoned"));
    }

    /// Clears the cache if the signal file changed; returns the current generation.
    fn refresh(&self) -> u64 {
        let stamp = self.signal.stamp();
        let mut state = self.state.lock().expect("not poisoned");
        if state.seen != stamp {
            state.seen = stamp;
            self.clear(&mut state);
        }
        state.generation
    }

    fn clear(&self, state: &mut CacheState) {
        state.generation += 1;
        self.entries.write().expect("not poisoned").clear();
    }

    pub fn len(&self) -> usize {
        self.entries.read().expect("not poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
