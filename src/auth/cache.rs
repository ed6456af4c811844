//! Authenticated keys kept in memory, without a stale window: every key change (here, in
//! another gateway, or by the CLI) is announced on the ledger's change signal (a file beside
//! SQLite, a version and `NOTIFY` in PostgreSQL), and a lookup checks the signal's stamp
//! unless it was checked less than `RECHECK` ago, dropping the cache if it moved. A change
//! returns only after the announcement has travelled and twice that time, so once a
//! revocation has returned, no process accepts the key.

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::store::signal::{ChangeSignal, Stamp};
use crate::store::{self, Db, keys::KeyRow};

pub struct KeyCache {
    signal: ChangeSignal,
    state: Mutex<CacheState>,
    entries: RwLock<HashMap<[u8; 32], Arc<KeyRow>>>,
}

/// How long a lookup trusts the last look at the signal file: under load, one `stat` serves
/// many requests.
pub const RECHECK: Duration = Duration::from_millis(1);

struct CacheState {
    seen: Stamp,
    /// When `seen` was read.
    checked: Instant,
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
                checked: Instant::now(),
                generation: 0,
            }),
            entries: RwLock::new(HashMap::new()),
        }
    }

    pub fn signal(&self) -> &ChangeSignal {
        &self.signal
    }

    /// The key whose secret hashes to `hash`, from memory if unchanged since it was read;
    /// and whether memory had it.
    pub async fn lookup(
        &self,
        db: &Db,
        hash: &[u8; 32],
    ) -> store::Result<(Option<Arc<KeyRow>>, bool)> {
        let generation = self.refresh();
        if let Some(row) = self.entries.read().get(hash) {
            return Ok((Some(row.clone()), true));
        }
        let Some(row) = store::keys::find_by_hash(db, hash).await? else {
            return Ok((None, false));
        };
        let row = Arc::new(row);
        let state = self.state.lock();
        if state.generation == generation {
            self.entries.write().insert(*hash, row.clone());
        }
        Ok((Some(row), false))
    }

    /// A key changed in this process: forget everything and tell the other processes. Returns
    /// once every other process's next lookup is sure to see the change.
    pub async fn changed(&self) {
        self.signal.announce().await;
        {
            let mut state = self.state.lock();
            state.seen = self.signal.stamp();
            state.checked = Instant::now();
            // The stamp may not have moved (in-memory database): clear regardless.
            self.clear(&mut state);
        }
        tokio::time::sleep(2 * RECHECK).await;
    }

    /// Clears the cache if the signal file changed (looking at most once per `RECHECK`);
    /// returns the current generation.
    fn refresh(&self) -> u64 {
        {
            let state = self.state.lock();
            if state.checked.elapsed() < RECHECK {
                return state.generation;
            }
        }
        let checked = Instant::now();
        let stamp = self.signal.stamp();
        let mut state = self.state.lock();
        if checked > state.checked {
            state.checked = checked;
            if state.seen != stamp {
                state.seen = stamp;
                self.clear(&mut state);
            }
        }
        state.generation
    }

    fn clear(&self, state: &mut CacheState) {
        state.generation += 1;
        self.entries.write().clear();
    }

    pub fn len(&self) -> usize {
        self.entries.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
