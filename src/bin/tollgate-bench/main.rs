//! `tollgate-bench`: tollgate's added latency, throughput, CPU and memory, as ratios against
//! calling the simulated backend directly and against nginx proxying to it, all measured in
//! one run on this machine. `cargo run --release --bin tollgate-bench` writes
//! `bench/results.md`; `phases` says what is measured and how. With `--ledger-scale` it
//! measures the read side at ledger sizes instead (`ledger_scale`).

mod cluster;
mod instructions;
mod ledger_scale;
mod load;
mod passthrough;
mod phases;
mod procs;
mod profile;
mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use hyper::header::HeaderValue;
use serde_json::json;
use tollgate::auth::keys::ApiKey;
use tollgate::store::{self, Db, keys::KeyLimits, keys::NewKey};

use load::Target;
use procs::Process;

#[derive(Parser)]
#[command(
    name = "tollgate-bench",
    about = "Benchmark tollgate against direct calls and nginx"
)]
struct Args {
    /// Where the Markdown results go (default `bench/results.md`, or
    /// `bench/ledger-scale.md` with `--ledger-scale`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A run of seconds, not minutes: checks that the benchmark works, measures little.
    #[arg(long)]
    quick: bool,
    /// SQLite `synchronous` settings to run tollgate with, one gateway each.
    #[arg(long, default_value = "full,normal", value_delimiter = ',')]
    synchronous: Vec<String>,
    /// Keys in the many-keys workload (default 10,000; 1,000 with --quick).
    #[arg(long)]
    keys: Option<usize>,
    /// Leave nginx out even where it is installed.
    #[arg(long)]
    no_nginx: bool,
    /// Another build's `tollgate` binary (with the same migrations), measured beside this
    /// build with each `--synchronous` setting: on a noisy machine, the way to tell whether
    /// a change helped is to compare both builds within one run.
    #[arg(long, value_name = "TOLLGATE_BINARY")]
    compare: Option<PathBuf>,
    /// Also measure a cluster: 2 replicas on PostgreSQL and Redis behind nginx (Debian's
    /// postgresql, redis-server and nginx must be installed; `scripts/bench` installs them).
    #[arg(long)]
    cluster: bool,
    /// Measure the read side instead (balances, reports, invoices, listings, an account's
    /// first request after a restart) on ledgers filled to each `--records` size, on
    /// SQLite and, with `--cluster`, on PostgreSQL.
    #[arg(long)]
    ledger_scale: bool,
    /// Ledger sizes for `--ledger-scale`.
    #[arg(long, default_value = "1000000,10000000", value_delimiter = ',')]
    records: Vec<u64>,
    /// With `--ledger-scale --cluster`, measure PostgreSQL only: at 10^8 records each
    /// ledger takes hours to fill.
    #[arg(long)]
    no_sqlite: bool,
    /// Run only these phases (latency, throughput, open-loop, streams, many-keys,
    /// open-streams, cluster: with `--cluster`, its CPU by process and PostgreSQL's
    /// ingest); the goals are judged only when all run.
    #[arg(long, value_delimiter = ',')]
    phases: Vec<String>,
    /// Words in the non-streamed answers of the latency, throughput and open-loop phases,
    /// `--profile` and `--instructions` (3: a short answer); e.g. 4000 (about 26 KB)
    /// measures reading and relaying a long one. With `--stream`, the chunks of the
    /// streams `--profile` and `--instructions` ask for.
    #[arg(long, default_value_t = 3)]
    answer_chunks: usize,
    /// Bytes of earlier conversation before the question in the non-streamed requests of
    /// the latency, throughput and open-loop phases, `--profile` and `--instructions` (0:
    /// the question alone); e.g. 10000 measures reading a chat's history.
    #[arg(long, default_value_t = 0)]
    prompt_bytes: usize,
    /// With `--profile` or `--instructions`: streamed completions of `--answer-chunks`
    /// chunks a millisecond apart (usage asked for), instead of short answers.
    #[arg(long)]
    stream: bool,
    /// Instead of the phases, profile each proxy with `perf` for this many seconds at
    /// `--profile-connections` connections: CPU µs per request by stage (written to
    /// `bench/profile.md`).
    #[arg(long, value_name = "SECONDS")]
    profile: Option<u64>,
    /// Closed-loop connections while `--profile` samples (e.g. 256, to see what more
    /// requests in flight cost).
    #[arg(long, value_name = "CONNECTIONS", default_value_t = 32, requires = "profile",
          value_parser = clap::value_parser!(u16).range(1..))]
    profile_connections: u16,
    /// Instead of the phases, count what this many requests cost each proxy in
    /// instructions, under valgrind's callgrind (written to `bench/instructions.md`):
    /// repeatable to about 0.1%, where CPU time moves by 10%.
    #[arg(long, value_name = "REQUESTS", conflicts_with_all = ["profile", "cluster"])]
    instructions: Option<usize>,
    /// Keep-alive connections the counted requests come over with `--instructions`
    /// (e.g. 256, to see what more requests in flight cost).
    #[arg(long, value_name = "CONNECTIONS", default_value_t = instructions::CONNECTIONS,
          requires = "instructions", value_parser = clap::value_parser!(u16).range(1..))]
    instruction_connections: u16,
    /// With `--instructions`: callgrind also simulates the caches, the last level sized as
    /// this machine's L2, and the report gives that cache's misses per request (slower).
    #[arg(long, requires = "instructions")]
    cache_sim: bool,
    /// Runtime worker threads for every proxy: each tollgate (`server.worker_threads`,
    /// the cluster's replicas too), the axum pass-through, and nginx's worker processes.
    /// By default each takes one per core, but the cluster's replicas share the cores.
    /// On a machine whose cores also run the simulator and the load generator, one worker
    /// cost less CPU a request at 32 connections but served less at 256 (bench/README.md).
    #[arg(long, value_name = "THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    worker_threads: Option<u16>,
    /// The open-loop phase's rate in requests a second, instead of half what this build's
    /// first tollgate served at 32 connections (which needs the throughput phase): to see
    /// how a subject's tail grows with its load.
    #[arg(long, value_name = "REQUESTS_PER_SECOND", value_parser = clap::value_parser!(u32).range(1..))]
    open_loop_rate: Option<u32>,
}

/// What a request goes to and what stands in front of the simulator there.
pub struct Subject {
    pub target: Target,
    /// The processes standing in front of the simulator (none for direct calls): one
    /// proxy, or a cluster's balancer, replicas and databases.
    pub proxies: Vec<Process>,
    pub gateway: Option<Gateway>,
    pub auth: HeaderValue,
}

impl Subject {
    /// The processes of `proxies` and their children.
    pub fn pids(&self) -> Vec<u32> {
        self.proxies.iter().flat_map(Process::pids).collect()
    }
}

/// The parts of a tollgate under test that the phases need.
pub struct Gateway {
    pub synchronous: String,
    pub ledger: Db,
    /// Where the gateway's usage journals are (one per replica): once they are empty,
    /// every committed record is in `ledger`.
    pub journals: Vec<PathBuf>,
    /// Keys for the many-keys workload, by rank; every tenth may send one request a minute.
    pub keys: Vec<HeaderValue>,
    pub rss_at_start_kb: u64,
}

fn main() -> ExitCode {
    if std::env::var_os(procs::ROLE_ENV).is_some() {
        return tollgate::cli::main();
    }
    if let Ok(backend) = std::env::var(passthrough::ROLE_ENV) {
        return passthrough::main(&backend);
    }
    let args = Args::parse();
    procs::raise_open_files(65_536);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut plan = if args.quick {
        phases::Plan::quick()
    } else {
        phases::Plan::full()
    };
    if let Some(unknown) = args
        .phases
        .iter()
        .find(|p| !phases::PHASES.contains(&p.as_str()))
    {
        anyhow::bail!(
            "no phase '{unknown}': the phases are {}",
            phases::PHASES.join(", ")
        );
    }
    plan.only = args.phases.clone();
    plan.answer_chunks = args.answer_chunks;
    plan.prompt_bytes = args.prompt_bytes;
    plan.worker_threads = args.worker_threads;
    plan.open_rate = args.open_loop_rate.map(f64::from);
    let keys = args.keys.unwrap_or(if args.quick { 1_000 } else { 10_000 });
    let dir = std::env::temp_dir().join(format!("tollgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (result, out) = match args.ledger_scale {
        true => (
            ledger_scale::run(&dir, &args.records, args.cluster, !args.no_sqlite).await,
            "bench/ledger-scale.md",
        ),
        false if args.profile.is_some() => {
            (measure(&args, &plan, keys, &dir).await, "bench/profile.md")
        }
        false if args.instructions.is_some() => {
            instructions::check()?;
            let _ = procs::LAUNCHER.set(instructions::launcher(&dir, args.cache_sim)?);
            (
                measure(&args, &plan, keys, &dir).await,
                "bench/instructions.md",
            )
        }
        false => (measure(&args, &plan, keys, &dir).await, "bench/results.md"),
    };
    let _ = std::fs::remove_dir_all(&dir);
    let markdown = result?;
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from(out));
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, &markdown).with_context(|| format!("cannot write {}", out.display()))?;
    println!("{markdown}");
    eprintln!("written to {}", out.display());
    Ok(())
}

async fn measure(
    args: &Args,
    plan: &phases::Plan,
    keys: usize,
    dir: &Path,
) -> anyhow::Result<String> {
    let (sim, simulator) = procs::simulator(dir).await?;
    let sim_path = "/openai/chat/completions".to_string();
    let no_key = HeaderValue::from_static("Bearer not-needed");
    let mut subjects = vec![Subject {
        target: Target {
            name: "direct".into(),
            addr: sim,
            path: sim_path.clone(),
        },
        proxies: Vec::new(),
        gateway: None,
        auth: no_key.clone(),
    }];
    let nginx = !args.no_nginx && args.instructions.is_none();
    match procs::nginx_binary().filter(|_| nginx) {
        Some(binary) => {
            let (addr, process) =
                procs::nginx(&binary, &dir.join("nginx"), &[sim], args.worker_threads).await?;
            subjects.push(Subject {
                target: Target {
                    name: "nginx".into(),
                    addr,
                    path: sim_path.clone(),
                },
                proxies: vec![process],
                gateway: None,
                auth: no_key.clone(),
            });
        }
        None => eprintln!("nginx is not installed: measuring without it"),
    }
    let (addr, process) = procs::passthrough(sim, args.worker_threads).await?;
    subjects.push(Subject {
        target: Target {
            name: "axum pass-through".into(),
            addr,
            path: sim_path,
        },
        proxies: vec![process],
        gateway: None,
        auth: no_key,
    });
    let this_build = std::env::current_exe()?;
    let builds = std::iter::once((&this_build, None)).chain(
        args.compare
            .iter()
            .map(|other| (other, Some("compared build"))),
    );
    for (binary, label) in builds {
        for synchronous in &args.synchronous {
            let build = Build {
                binary,
                label,
                worker_threads: args.worker_threads,
            };
            let of = label.map_or(String::new(), |label| format!(", {label}"));
            eprintln!("preparing tollgate (synchronous={synchronous}, {keys} keys{of})");
            subjects.push(gateway(dir, sim, synchronous, keys, build).await?);
        }
    }
    let mut cluster = None;
    if args.cluster {
        let nginx = procs::nginx_binary().context("--cluster needs nginx")?;
        let postgres = procs::postgres_bin().context("--cluster needs PostgreSQL's server")?;
        eprintln!("preparing the cluster (2 replicas, {keys} keys)");
        let (subject, started) =
            cluster::start(dir, sim, keys, &nginx, &postgres, args.worker_threads).await?;
        subjects.push(subject);
        cluster = Some(started);
    }
    // What `--profile` and `--instructions` repeat.
    let ask = phases::Ask {
        chunks: args.answer_chunks,
        stream: args.stream,
        prompt_bytes: args.prompt_bytes,
    };
    match (args.profile, args.instructions) {
        (Some(seconds), _) => {
            let load = profile::Load {
                seconds,
                connections: args.profile_connections.into(),
            };
            profile::run(&subjects, &simulator, load, ask, dir).await
        }
        (_, Some(requests)) => {
            let connections = usize::from(args.instruction_connections);
            instructions::run(&subjects, requests, connections, args.cache_sim, ask, dir).await
        }
        _ => phases::run_all(plan, &subjects, &simulator, cluster.as_ref()).await,
    }
}

/// The executable a gateway runs, how its subjects are told apart from this build's, and
/// its worker threads when `--worker-threads` sets them.
struct Build<'a> {
    binary: &'a Path,
    label: Option<&'a str>,
    worker_threads: Option<u16>,
}

/// A tollgate on its own SQLite ledger, with one account, a key for the single-key phases
/// and `keys` more for the many-keys workload, its rate limits set out of the way.
async fn gateway(
    dir: &Path,
    sim: SocketAddr,
    synchronous: &str,
    keys: usize,
    build: Build<'_>,
) -> anyhow::Result<Subject> {
    let (name, dir) = match build.label {
        None => (
            format!("tollgate ({synchronous})"),
            dir.join(format!("tollgate-{synchronous}")),
        ),
        Some(label) => (
            format!("tollgate ({synchronous}, {label})"),
            dir.join(format!("tollgate-{synchronous}-compared")),
        ),
    };
    let database = format!(
        "url = \"sqlite://{}\"\nsynchronous = \"{synchronous}\"\n",
        dir.join("ledger.db").display()
    );
    let server = build
        .worker_threads
        .map_or(String::new(), |n| format!("worker_threads = {n}\n"));
    let config_path = write_config(&dir, sim, &server, &database, "")?;
    let config = tollgate::Config::load(&config_path)?;
    let (ledger, account) = match build.label {
        None => {
            let ledger = store::connect(&config.database).await?;
            let account = store::accounts::create(&ledger, "bench").await?;
            (ledger, account)
        }
        Some(_) => {
            // The compared build makes its ledger with its own schema (this build's
            // migrations would be unknown to it, and it would refuse to start); the keys
            // then go in without migrating.
            let created = std::process::Command::new(build.binary)
                .arg("--config")
                .arg(&config_path)
                .args(["accounts", "create", "bench"])
                .stdout(std::process::Stdio::null())
                .status()?;
            anyhow::ensure!(
                created.success(),
                "the compared build cannot create its ledger"
            );
            let ledger = store::Db::Sqlite(sqlx::SqlitePool::connect(&config.database.url).await?);
            let account = store::accounts::find_by_name(&ledger, "bench")
                .await?
                .context("the compared build's account")?;
            (ledger, account)
        }
    };
    let mut secrets = bench_keys(&ledger, account.id, keys).await?;
    let log = dir.join("tollgate.log");
    let (addr, process) = procs::gateway(build.binary, &config_path, &log).await?;
    let auth = secrets.remove(0);
    let rss_at_start_kb = procs::memory_kb(&[process.pid()], "VmRSS");
    Ok(Subject {
        target: Target {
            name,
            addr,
            path: "/v1/chat/completions".into(),
        },
        proxies: vec![process],
        gateway: Some(Gateway {
            synchronous: synchronous.to_string(),
            ledger,
            journals: vec![store::journal_base(&config.database)?],
            keys: secrets,
            rss_at_start_kb,
        }),
        auth,
    })
}

/// A chat completion request body; `chunks` and `stream` steer the simulator's answer, which
/// comes after `prompt_bytes` (or a little more) of earlier conversation.
pub fn chat_body(chunks: usize, stream: bool, prompt_bytes: usize) -> Bytes {
    // Earlier turns of plain text, with the quotes and newlines a chat's history has.
    const TURN: &str = "The operator asked for a \"monthly\" report of usage by model and \
                        chip.\nIt lists each model's tokens first, then what they cost. ";
    let mut messages = Vec::new();
    let mut bytes = 0;
    while bytes < prompt_bytes {
        let role = ["user", "assistant"][messages.len() % 2];
        let content = TURN.repeat(8);
        bytes += content.len() + 32;
        messages.push(json!({"role": role, "content": content}));
    }
    messages.push(json!({"role": "user", "content": "Say hello in one short sentence."}));
    let mut body = json!({
        "model": phases::MODEL,
        "messages": messages,
        "max_tokens": chunks + 8,
        "x_sim": {"chunks": chunks},
    });
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        body["x_sim"]["chunk_delay_ms"] = json!(1);
    }
    Bytes::from(body.to_string())
}

/// Writes the benchmark's price table and a gateway config in `dir` on the simulator at
/// `sim`: `database` is the body of its `[database]` section, `extra` more sections.
/// A gateway's config in `dir`: `server`, `database` and `limits` are lines added to those
/// sections.
pub fn write_config(
    dir: &Path,
    sim: SocketAddr,
    server: &str,
    database: &str,
    limits: &str,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir.join("pricing"))?;
    std::fs::write(
        dir.join("pricing/bench.toml"),
        format!(
            "# A sample price for the benchmark, not a real tariff.\n[[prices]]\n\
             model = \"{model}\"\nchip = \"nvidia\"\neffective_from = 2026-01-01T00:00:00+08:00\n\
             input_per_1k = \"0.0012\"\ncached_input_per_1k = \"0.0003\"\noutput_per_1k = \"0.0024\"\n",
            model = phases::MODEL,
        ),
    )?;
    let config_path = dir.join("tollgate.toml");
    std::fs::write(
        &config_path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmax_connections = 20000\n{server}\
             [database]\n{database}\
             [pricing]\ndir = \"{pricing}\"\n\
             [limits]\ndefault_rpm = 1000000000\n{limits}\n\
             [[upstreams]]\nmodel = \"{model}\"\nchip = \"nvidia\"\nbase_url = \"http://{sim}/openai\"\n",
            pricing = dir.join("pricing").display(),
            model = phases::MODEL,
        ),
    )?;
    Ok(config_path)
}

/// `keys` + 1 keys of `account_id` in `ledger`, as `Authorization` values: the first for
/// the single-key phases, the rest ranked for the many-keys workload (every tenth rank may
/// send one request a minute).
pub async fn bench_keys(
    ledger: &Db,
    account_id: i64,
    keys: usize,
) -> anyhow::Result<Vec<HeaderValue>> {
    let secrets: Vec<ApiKey> = (0..=keys).map(|_| ApiKey::generate()).collect();
    let hashes: Vec<_> = secrets.iter().map(ApiKey::hash).collect();
    let names: Vec<String> = (0..=keys).map(|n| format!("bench-{n}")).collect();
    let new_keys: Vec<NewKey> = (0..=keys)
        .map(|n| NewKey {
            account_id,
            name: &names[n],
            prefix: secrets[n].prefix(),
            secret_hash: &hashes[n],
            expires_at: None,
            limits: KeyLimits {
                rpm: (n > 0 && n % 10 == 0).then_some(1),
                tpm: None,
                allowed_models: None,
            },
        })
        .collect();
    store::keys::insert_all(ledger, &new_keys).await?;
    Ok(secrets
        .iter()
        .map(|s| HeaderValue::from_str(&format!("Bearer {}", s.expose_secret())))
        .collect::<Result<Vec<_>, _>>()?)
}
