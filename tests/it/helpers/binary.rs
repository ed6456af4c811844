//! Drives the real `tollgate` binary: a config file, CLI commands, and `serve` as a child
//! process whose log is kept.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// A config for `dir` with megrez on two simulated chips and a high default rate limit;
/// its price tables are a copy of the repository's, in `dir/pricing`.
pub fn write_config(dir: &Path, sim: SocketAddr) -> PathBuf {
    let database = super::ledger::fresh(dir, Default::default());
    write_config_on(dir, sim, &database)
}

/// `write_config`, on the ledger `database`.
pub fn write_config_on(
    dir: &Path,
    sim: SocketAddr,
    database: &tollgate::config::DatabaseConfig,
) -> PathBuf {
    let pricing = dir.join("pricing");
    std::fs::create_dir_all(&pricing).unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("pricing/sample/sample.toml");
    std::fs::copy(sample, pricing.join("sample.toml")).unwrap();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
{database}
[pricing]
dir = "{pricing}"
[limits]
default_rpm = 100000
[[upstreams]]
model = "megrez-7b-instruct"
chip = "nvidia"
base_url = "http://{sim}/genstudio"
[[upstreams]]
model = "megrez-7b-instruct"
chip = "chip3"
base_url = "http://{sim}/bare"
[[upstreams]]
model = "glm-4.6"
chip = "zhipu"
dialect = "anthropic"
base_url = "http://{sim}/anthropic"
"#,
        database = super::ledger::toml(database),
        pricing = pricing.display(),
    );
    let path = dir.join("tollgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs a CLI command and returns its standard output.
pub fn cli(config: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .env("TOLLGATE_ADMIN_SECRET", super::ADMIN_SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    /// Everything the gateway logged so far.
    pub log: Arc<Mutex<String>>,
}

/// Starts `tollgate serve` (log level from `log_filter`) and waits for its address.
pub fn serve(config: &Path, log_filter: &str) -> Gateway {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("serve")
        .env("TOLLGATE_LOG", log_filter)
        .env("TOLLGATE_ADMIN_SECRET", super::ADMIN_SECRET)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    let kept = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("addr=").nth(1) {
                let _ = tx.send(
                    addr.split_whitespace()
                        .next()
                        .unwrap()
                        .parse::<SocketAddr>()
                        .unwrap(),
                );
            }
            let mut log = kept.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("tollgate serve starts");
    Gateway { child, addr, log }
}
