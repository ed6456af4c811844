//! A journal file mapped into memory, so that an append is a copy into the file's pages
//! and not a `write` call. The pages are the kernel's page cache: what is copied into them
//! outlives a crash of this process as a `write` does, and `fdatasync` of the file makes
//! it durable as it does a write's. The file's blocks are allocated before they are
//! mapped (`posix_fallocate`), so that no copy can meet a full disk, which through a map
//! would be a `SIGBUS` instead of an error.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{Ordering, compiler_fence};

use memmap2::{MmapMut, MmapOptions};

/// The file starts at this length, and grows by at least this much at a time...
const GROW: u64 = 1 << 20;
/// ...doubling, but by no more than this (a spool that waits long for its database does
/// not take twice its size on disk).
const GROW_MAX: u64 = 64 << 20;

pub struct Mapped {
    /// The whole file, which is allocated: its length is the map's. `None` between an
    /// unmapping and a mapping that failed: the next write maps the file again.
    map: Option<MmapMut>,
}

impl Mapped {
    /// Maps `file`, first allocating it to at least `GROW` bytes (a longer file keeps its
    /// length, and any holes in it are allocated).
    pub fn new(file: &File) -> io::Result<Mapped> {
        let len = file.metadata()?.len().max(GROW);
        Ok(Mapped {
            map: Some(allocate_and_map(file, len)?),
        })
    }

    /// The file's length.
    pub fn len(&self) -> u64 {
        self.map.as_ref().map_or(0, |map| map.len() as u64)
    }

    /// Copies `bytes` to `offset`, growing the file if they do not fit, and ends them
    /// with a zero byte (when the file goes on after them), so that what follows (lines a
    /// rewind dropped) is not read as their continuation. The first `visible` bytes are
    /// copied last: if this process dies before, the bytes at `offset` are still what
    /// they were (a line's start that another cycle wrote, or the end mark), so the
    /// journal ends where it did.
    pub fn write(
        &mut self,
        file: &File,
        offset: u64,
        bytes: &[u8],
        visible: usize,
    ) -> io::Result<()> {
        let end = offset + bytes.len() as u64;
        let map = match &mut self.map {
            Some(map) if end <= map.len() as u64 => map,
            _ => {
                let len = self.len();
                let len = end
                    .max(len + len.clamp(GROW, GROW_MAX))
                    .next_multiple_of(GROW);
                self.map = None;
                self.map.insert(allocate_and_map(file, len)?)
            }
        };
        let at = usize::try_from(offset).map_err(io::Error::other)?;
        let target = &mut map[at..at + bytes.len()];
        target[visible..].copy_from_slice(&bytes[visible..]);
        if let Some(after) = map.get_mut(at + bytes.len()) {
            *after = 0;
        }
        compiler_fence(Ordering::Release);
        map[at..at + visible].copy_from_slice(&bytes[..visible]);
        Ok(())
    }

    /// Writes `byte` at `offset`, if the file reaches that far (past its end, there is
    /// nothing to mark).
    pub fn mark(&mut self, offset: u64, byte: u8) {
        if let (Some(map), Ok(at)) = (&mut self.map, usize::try_from(offset))
            && at < map.len()
        {
            map[at] = byte;
        }
    }

    /// Shrinks the file to `GROW` bytes (unmapping it first: a map past a file's end
    /// faults).
    pub fn shrink(&mut self, file: &File) -> io::Result<()> {
        self.map = None;
        file.set_len(0)?;
        self.map = Some(allocate_and_map(file, GROW)?);
        Ok(())
    }
}

/// Allocates the first `len` bytes of `file` (its length becomes at least `len`) and maps
/// them.
fn allocate_and_map(file: &File, len: u64) -> io::Result<MmapMut> {
    let signed = libc::off_t::try_from(len).map_err(io::Error::other)?;
    // SAFETY: a plain call on an open descriptor; it returns an error number, not -1.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, signed) } {
        0 => {}
        error => return Err(io::Error::from_raw_os_error(error)),
    }
    let len = usize::try_from(len).map_err(io::Error::other)?;
    // SAFETY: the map covers allocated bytes of a file this process holds locked, which
    // only it writes (through this map) and never shrinks while the map is alive.
    unsafe { MmapOptions::new().len(len).map_mut(file) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_file(path: &std::path::Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .unwrap()
    }

    #[test]
    fn writes_land_in_the_file_which_grows_as_needed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let file = new_file(&path);
        let mut mapped = Mapped::new(&file).unwrap();
        assert_eq!(mapped.len(), GROW);
        mapped.write(&file, 0, b"0001 a longer line\n", 4).unwrap();
        // A shorter one over it ends with a zero byte.
        mapped.write(&file, 0, b"0001 hello\n", 4).unwrap();
        // Past the end: the file grows to hold it, doubling at least.
        let far = GROW - 3;
        mapped.write(&file, far, b"0001 far\n", 4).unwrap();
        assert_eq!(mapped.len(), 2 * GROW);
        // Past the file's end there is nothing to mark.
        mapped.mark(10 * GROW, 0);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, 2 * GROW);
        assert_eq!(&bytes[..19], b"0001 hello\n\0r line\n");
        assert_eq!(&bytes[far as usize..far as usize + 9], b"0001 far\n");
        mapped.shrink(&file).unwrap();
        assert_eq!(file.metadata().unwrap().len(), GROW);
        assert_eq!(mapped.len(), GROW);
    }

    /// A file that cannot grow, as on a full disk: the write that needs more room fails
    /// and writes nothing, what was written stays, writes that fit go on, and once there is
    /// room the file grows. The file-size limit makes `posix_fallocate` fail as a full disk
    /// does (`EFBIG` instead of `ENOSPC`), without a filesystem of its own; it is set in a
    /// process of its own, so that no other test meets it.
    #[test]
    fn a_file_that_cannot_grow_fails_the_write_that_needs_room_and_keeps_the_rest() {
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "--nocapture", CANNOT_GROW])
            .env("TOLLGATE_TEST_CANNOT_GROW", "1")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&child.stdout);
        let err = String::from_utf8_lossy(&child.stderr);
        assert!(child.status.success(), "{out}{err}");
        assert!(out.contains("1 passed"), "{out}");
    }

    const CANNOT_GROW: &str = "store::journal::mapped::tests::cannot_grow_in_a_process_of_its_own";

    #[test]
    #[ignore = "run by a_file_that_cannot_grow_fails_the_write_that_needs_room_and_keeps_the_rest"]
    fn cannot_grow_in_a_process_of_its_own() {
        assert!(
            std::env::var_os("TOLLGATE_TEST_CANNOT_GROW").is_some(),
            "it sets a limit on the whole process: run by its parent test only"
        );
        let limit = |bytes: libc::rlim_t| {
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: libc::RLIM_INFINITY,
            };
            // SAFETY: a plain call with a valid pointer.
            assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) }, 0);
        };
        // SAFETY: a plain call; past the limit the kernel would otherwise end the process.
        unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let file = new_file(&path);
        limit(GROW + GROW / 2);
        let mut mapped = Mapped::new(&file).unwrap();
        mapped.write(&file, 0, b"0001 kept\n", 4).unwrap();
        let far = GROW - 3;
        let error = mapped.write(&file, far, b"0001 far\n", 4).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EFBIG), "{error}");
        assert_eq!(file.metadata().unwrap().len(), GROW);
        // What fits still goes in.
        mapped.write(&file, 10, b"0001 next\n", 4).unwrap();
        // With room again, the write that failed succeeds.
        limit(libc::RLIM_INFINITY);
        mapped.write(&file, far, b"0001 far\n", 4).unwrap();
        assert_eq!(mapped.len(), 2 * GROW);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, 2 * GROW);
        assert_eq!(&bytes[..21], b"0001 kept\n0001 next\n\0");
        assert_eq!(&bytes[far as usize..far as usize + 9], b"0001 far\n");
    }
}
