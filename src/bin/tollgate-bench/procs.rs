//! The processes under test: the simulated backend, nginx in front of it, and tollgate,
//! each a child process, and what the kernel says they used (`/proc`).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Set in the environment of a child that should run as `tollgate` itself: the benchmark
/// binary carries the whole gateway, so `cargo run --bin tollgate-bench` measures the
/// code it was built from.
pub const ROLE_ENV: &str = "TOLLGATE_BENCH_AS_TOLLGATE";

/// A child process, stopped with SIGTERM (PostgreSQL: SIGINT, its fast shutdown; then
/// SIGKILL) when dropped.
pub struct Process {
    pub name: &'static str,
    child: Child,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// This process and its children (nginx's workers).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.pid()];
        pids.extend(children(self.pid()));
        pids
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let signal = if self.name == "postgres" {
            "-INT"
        } else {
            "-TERM"
        };
        let _ = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Raises this process's open-file limit, hard and soft, to `want` where it may (as root
/// with the capability), else the soft one to the hard one (as `tollgate serve` does), and
/// returns the limit now: the processes it starts inherit it, and thousands of open
/// streams need a descriptor each at the client, two at a proxy (client and backend) and
/// one at the simulator.
pub fn raise_open_files(want: u64) -> u64 {
    let wanted = libc::rlimit {
        rlim_cur: want as libc::rlim_t,
        rlim_max: want as libc::rlim_t,
    };
    // SAFETY: setrlimit only reads the struct passed to it. It refuses to lower the hard
    // limit below the soft one, or to raise it without the capability.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) };
    tollgate::server::raise_open_file_limit()
}

/// A loopback port nobody listens on (yet).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// With `--instructions`: the command line the proxies under test (the pass-through, each
/// tollgate) start under (`instructions::launcher`).
pub static LAUNCHER: OnceLock<Vec<String>> = OnceLock::new();

/// `binary`, a proxy under test, started as `LAUNCHER` says.
fn proxy_command(binary: &Path) -> Command {
    match LAUNCHER.get() {
        Some(launcher) => {
            let mut command = Command::new(&launcher[0]);
            command.args(&launcher[1..]).arg(binary);
            command
        }
        None => Command::new(binary),
    }
}

/// `command` (this build's own executable, or another build's `tollgate`) with `args`.
fn tollgate(mut command: Command, args: &[&str], log: &Path) -> anyhow::Result<Child> {
    command
        .args(args)
        .env(ROLE_ENV, "1")
        .env("TOLLGATE_LOG", "tollgate=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("cannot start tollgate")
}

async fn wait_until_listening(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("{what} did not start listening on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub async fn simulator(dir: &Path) -> anyhow::Result<(SocketAddr, Process)> {
    let addr = free_addr()?;
    let child = tollgate(
        Command::new(std::env::current_exe()?),
        &["simulate", "--listen", &addr.to_string()],
        &dir.join("simulator.log"),
    )?;
    let process = Process {
        name: "simulator",
        child,
    };
    wait_until_listening(addr, "the simulator").await?;
    Ok((addr, process))
}

/// `tollgate serve` run by `binary` with `config`; its address is read from its log.
pub async fn gateway(
    binary: &Path,
    config: &Path,
    log: &Path,
) -> anyhow::Result<(SocketAddr, Process)> {
    let config = config.display().to_string();
    let child = tollgate(proxy_command(binary), &["--config", &config, "serve"], log)?;
    let mut process = Process {
        name: "tollgate",
        child,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(addr) = text.split("addr=").nth(1) {
            let addr = addr.split_whitespace().next().unwrap_or_default();
            return Ok((addr.parse().context("tollgate's address")?, process));
        }
        if let Ok(Some(status)) = process.child.try_wait() {
            bail!("tollgate exited ({status}): {text}");
        }
        if Instant::now() > deadline {
            bail!("tollgate did not start: {text}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The pass-through proxy of `passthrough.rs` in front of `backend`, with `worker_threads`
/// (or one per core).
pub async fn passthrough(
    backend: SocketAddr,
    worker_threads: Option<u16>,
) -> anyhow::Result<(SocketAddr, Process)> {
    let addr = free_addr()?;
    let mut command = proxy_command(&std::env::current_exe()?);
    if let Some(n) = worker_threads {
        command.env(crate::passthrough::WORKERS_ENV, n.to_string());
    }
    let child = command
        .arg(addr.to_string())
        .env(crate::passthrough::ROLE_ENV, backend.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the pass-through proxy")?;
    let process = Process {
        name: "pass-through",
        child,
    };
    wait_until_listening(addr, "the pass-through proxy").await?;
    Ok((addr, process))
}

/// Debian's nginx binary, if installed.
pub fn nginx_binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// nginx as a plain reverse proxy in front of `backends` (round robin), its files in
/// `root`: keep-alive upstream connections, no buffering (so streams flow), no access log;
/// `workers` worker processes, or one per core.
pub async fn nginx(
    binary: &Path,
    root: &Path,
    backends: &[SocketAddr],
    workers: Option<u16>,
) -> anyhow::Result<(SocketAddr, Process)> {
    let addr = free_addr()?;
    std::fs::create_dir_all(root)?;
    let servers: String = backends.iter().map(|b| format!("server {b}; ")).collect();
    let conf = root.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes {workers};\npid {root}/nginx.pid;\n\
             error_log {root}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 1000000;\n  client_body_temp_path {root}/body;\n\
             proxy_temp_path {root}/proxy;\n  fastcgi_temp_path {root}/fastcgi;\n\
             uwsgi_temp_path {root}/uwsgi;\n  scgi_temp_path {root}/scgi;\n\
             upstream backend {{ {servers}keepalive 512; }}\n\
             server {{\n    listen {addr} backlog=8192;\n    location / {{\n\
             proxy_pass http://backend;\n      proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\";\n      proxy_buffering off;\n    }}\n  }}\n}}\n",
            root = root.display(),
            workers = workers.map_or("auto".to_string(), |n| n.to_string()),
        ),
    )?;
    let child = Command::new(binary)
        .arg("-p")
        .arg(root)
        .arg("-e")
        .arg(root.join("error.log"))
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start nginx")?;
    let process = Process {
        name: "nginx",
        child,
    };
    wait_until_listening(addr, "nginx").await?;
    Ok((addr, process))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The newest installed PostgreSQL server's `bin` folder (Debian's layout), if any.
pub fn postgres_bin() -> Option<PathBuf> {
    let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    bins.sort();
    bins.pop()
}

/// `program` as the `postgres` user when we are root (PostgreSQL refuses root).
fn as_postgres(program: &Path) -> anyhow::Result<Command> {
    let mut command = Command::new(program);
    if is_root() {
        use std::os::unix::process::CommandExt;
        let id = |flag: &str| -> anyhow::Result<u32> {
            let out = Command::new("id").args([flag, "postgres"]).output()?;
            Ok(String::from_utf8(out.stdout)?.trim().parse()?)
        };
        command.uid(id("-u")?).gid(id("-g")?);
    }
    Ok(command)
}

/// A PostgreSQL server of its own in `dir` on a free loopback port, as the `postgres`
/// user when we are root; stopped with the process. Returns its URL (database `postgres`).
pub async fn postgres(bin: &Path, dir: &Path) -> anyhow::Result<(String, Process)> {
    let data = dir.join("postgres");
    std::fs::create_dir_all(&data)?;
    if is_root() {
        let owned = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&data)
            .status()?;
        anyhow::ensure!(
            owned.success(),
            "cannot give {} to postgres",
            data.display()
        );
    }
    let init = as_postgres(&bin.join("initdb"))?
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "-E", "UTF8"])
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(init.success(), "initdb failed");
    let addr = free_addr()?;
    let child = as_postgres(&bin.join("postgres"))?
        .arg("-D")
        .arg(&data)
        .args(["-p", &addr.port().to_string(), "-h", "127.0.0.1", "-k"])
        .arg(&data)
        .args(["-c", "max_connections=200"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("postgres.log"))?)
        .spawn()
        .context("cannot start postgres")?;
    let process = Process {
        name: "postgres",
        child,
    };
    wait_until_listening(addr, "PostgreSQL").await?;
    Ok((format!("postgres://postgres@{addr}/postgres"), process))
}

/// Debian's redis-server on a free loopback port, nothing saved to disk.
pub async fn redis(dir: &Path) -> anyhow::Result<(String, Process)> {
    let addr = free_addr()?;
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &addr.port().to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start redis-server")?;
    let process = Process {
        name: "redis",
        child,
    };
    wait_until_listening(addr, "Redis").await?;
    Ok((format!("redis://{addr}"), process))
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| {
            stat_fields(child).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(pid)
        })
        .collect()
}

/// The fields of `/proc/PID/stat` after the command name (field 3 onwards).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU time (user + system) the processes have used so far.
pub fn cpu_time(pids: &[u32]) -> Duration {
    let ticks = clock_ticks();
    let used: f64 = pids
        .iter()
        .filter_map(|&pid| {
            let fields = stat_fields(pid)?;
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((user + system) / ticks)
        })
        .sum();
    Duration::from_secs_f64(used)
}

/// Sets each process's peak RSS (`VmHWM`) back to its RSS now (`/proc/PID/clear_refs`, 5),
/// so that the next reading of the peak is of what came after. Whether every one was reset.
pub fn reset_peak_rss(pids: &[u32]) -> bool {
    // Every one tried, even after one fails.
    let failed = pids
        .iter()
        .filter(|pid| std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_err())
        .count();
    failed == 0
}

/// A `/proc/PID/status` figure in kB, summed over the processes (`VmRSS`, `VmHWM`).
pub fn memory_kb(pids: &[u32], field: &str) -> u64 {
    pids.iter()
        .filter_map(|pid| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = text.lines().find(|l| l.starts_with(field))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}
