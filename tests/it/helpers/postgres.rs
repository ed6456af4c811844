//! A real PostgreSQL server for a test, from Debian's packages (`scripts/test` installs
//! them): its own cluster in a temporary directory, on a free loopback port, started as the
//! `postgres` user when the tests run as root (PostgreSQL refuses root), and stopped when
//! dropped. Never the system's service, never a fixed port.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Postgres {
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
    port: u16,
    /// `pg_ctl start`'s arguments, for a restart.
    start_args: Vec<String>,
    bin: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

/// The newest installed server's `bin` folder.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (scripts/test installs Debian's postgresql)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL server with initdb")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `program args...`, as the `postgres` user when we are root.
fn run(program: &Path, args: &[&str]) {
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    let out = command.args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{} {args:?}: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown to postgres");
        }
        let data = dir.path().join("data");
        let data_arg = data.to_str().unwrap();
        run(
            &bin.join("initdb"),
            &[
                "-D",
                data_arg,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let port = free_port();
        let options = format!(
            "-p {port} -h 127.0.0.1 -k {} -F -c fsync=off",
            dir.path().display()
        );
        let log = dir.path().join("server.log");
        let start_args: Vec<String> = [
            "-D",
            data_arg,
            "-o",
            &options,
            "-l",
            log.to_str().unwrap(),
            "-w",
            "start",
        ]
        .map(String::from)
        .into();
        let args: Vec<&str> = start_args.iter().map(String::as_str).collect();
        run(&bin.join("pg_ctl"), &args);
        Postgres {
            start_args,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            port,
            bin,
            data,
            _dir: dir,
        }
    }
}

impl Postgres {
    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        let port = self.port.to_string();
        let args = ["-h", "127.0.0.1", "-p", &port, "-U", "postgres", name];
        let out = Command::new(self.bin.join("createdb"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "createdb {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("postgres://postgres@127.0.0.1:{port}/{name}")
    }

    /// Starts the server again after `stop`, on the same port and data.
    pub fn restart(&self) {
        let args: Vec<&str> = self.start_args.iter().map(String::as_str).collect();
        run(&self.bin.join("pg_ctl"), &args);
    }

    /// Freezes every process of the server (SIGSTOP): it neither answers nor refuses, as
    /// behind a network partition.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = std::fs::read_to_string(self.data.join("postmaster.pid")).unwrap();
        let pid = pid.lines().next().unwrap().trim().to_owned();
        // The server's processes are the postmaster's children.
        let children = Command::new("pkill").args([signal, "-P", &pid]).status();
        assert!(
            children.is_ok_and(|s| s.success()),
            "pkill {signal} -P {pid}"
        );
        let postmaster = Command::new("kill").args([signal, &pid]).status();
        assert!(postmaster.is_ok_and(|s| s.success()), "kill {signal} {pid}");
    }

    /// Stops the server and removes its files (at the test process's exit).
    pub fn remove(&self) {
        self.stop();
        let _ = std::fs::remove_dir_all(self._dir.path());
    }

    /// Stops the server at once (as a crash would).
    pub fn stop(&self) {
        let data = self.data.to_str().unwrap().to_owned();
        let stop = self.bin.join("pg_ctl");
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&stop);
            c
        } else {
            Command::new(&stop)
        };
        let _ = command
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
