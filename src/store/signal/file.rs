//! The SQLite ledger's change signal: a small file beside it, replaced atomically (a new
//! inode) on every change, that readers `stat` to notice.

use std::path::PathBuf;

use super::Stamp;

#[derive(Debug, Clone)]
pub struct FileSignal {
    /// `None` for an in-memory database: no other process can change its keys.
    path: Option<PathBuf>,
}

impl FileSignal {
    /// The signal for `what` changes beside the SQLite file of `url`.
    pub fn for_database(url: &str, what: &str) -> FileSignal {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .map(|p| p.split('?').next().unwrap_or(p))
            .filter(|p| !p.is_empty() && !p.contains(":memory:"))
            .map(|p| PathBuf::from(format!("{p}-{what}-changed")));
        FileSignal { path }
    }

    /// Replaces the signal file atomically.
    pub fn announce(&self) {
        let Some(path) = &self.path else { return };
        let temp = path.with_extension(format!("tmp{}", std::process::id()));
        let stamp = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let result =
            std::fs::write(&temp, stamp.to_string()).and_then(|()| std::fs::rename(&temp, path));
        if let Err(e) = result {
            tracing::error!(path = %path.display(), error = %e, "cannot announce a change");
        }
    }

    pub fn stamp(&self) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        let Some(path) = &self.path else {
            return Stamp::Never;
        };
        match std::fs::metadata(path) {
            Ok(meta) => Stamp::File(meta.dev(), meta.ino(), meta.mtime(), meta.mtime_nsec()),
            // Nothing was ever announced.
            Err(_) => Stamp::File(0, 0, 0, 0),
        }
    }
}
