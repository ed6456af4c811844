//! The cluster subject: two tollgate replicas on one PostgreSQL ledger, counting rate limits
//! in one Redis, behind nginx, all started here on loopback (PostgreSQL and Redis from
//! Debian's packages). Also what only a cluster has: PostgreSQL's ingest rate for usage
//! records, and Redis round trips per request.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use tollgate::billing::TokenCounts;
use tollgate::billing::record::{Status, UsageRecord, UsageSource};
use tollgate::store::{self, Db, Sink};

use crate::load::{self, Stop, Target};
use crate::{Gateway, Subject, procs};

/// Replicas behind the balancer.
const REPLICAS: usize = 2;

/// What the cluster section needs besides the subject.
pub struct Cluster {
    pub redis_url: String,
    /// The first replica's config: its ledger and sink.
    pub database: tollgate::config::DatabaseConfig,
}

/// Starts PostgreSQL, Redis, `REPLICAS` replicas with `keys` keys and nginx in front.
pub async fn start(
    dir: &Path,
    sim: SocketAddr,
    keys: usize,
    nginx: &Path,
    postgres_bin: &Path,
    worker_threads: Option<u16>,
) -> anyhow::Result<(Subject, Cluster)> {
    let dir = dir.join("cluster");
    std::fs::create_dir_all(&dir)?;
    let (postgres_url, postgres) = procs::postgres(postgres_bin, &dir).await?;
    let (redis_url, redis) = procs::redis(&dir).await?;
    // The replicas share the host's cores between them, as an operator running several on
    // one small host would set them (bench/README.md measures the difference), unless
    // `--worker-threads` says otherwise.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = worker_threads.map_or((cores / REPLICAS).max(1), usize::from);
    let server = format!("worker_threads = {threads}\n");
    let mut configs = Vec::new();
    for n in 0..REPLICAS {
        let replica = dir.join(format!("replica-{n}"));
        let database = format!(
            "url = \"{postgres_url}\"\nsynchronous = \"normal\"\nspool = \"{}\"\n",
            replica.join("spool").display()
        );
        let limits = format!("store = \"redis\"\n[redis]\nurl = \"{redis_url}\"\n");
        configs.push(crate::write_config(
            &replica, sim, &server, &database, &limits,
        )?);
    }
    let config = tollgate::Config::load(&configs[0])?;
    let ledger = store::connect(&config.database).await?;
    let account = store::accounts::create(&ledger, "bench").await?;
    let mut secrets = crate::bench_keys(&ledger, account.id, keys).await?;
    let mut proxies = Vec::new();
    let mut addrs = Vec::new();
    let mut journals = Vec::new();
    for (n, config_path) in configs.iter().enumerate() {
        let log = dir.join(format!("replica-{n}.log"));
        let binary = std::env::current_exe()?;
        let (addr, process) = procs::gateway(&binary, config_path, &log).await?;
        addrs.push(addr);
        proxies.push(process);
        journals.push(store::journal_base(
            &tollgate::Config::load(config_path)?.database,
        )?);
    }
    let rss_at_start_kb = procs::memory_kb(
        &proxies.iter().map(procs::Process::pid).collect::<Vec<_>>(),
        "VmRSS",
    );
    let (addr, balancer) = procs::nginx(nginx, &dir.join("nginx"), &addrs, worker_threads).await?;
    proxies.insert(0, balancer);
    proxies.extend([redis, postgres]);
    let auth = secrets.remove(0);
    let subject = Subject {
        target: Target {
            name: format!("tollgate cluster ({REPLICAS} replicas, PostgreSQL + Redis, nginx)"),
            addr,
            path: "/v1/chat/completions".into(),
        },
        proxies,
        gateway: Some(Gateway {
            synchronous: "normal".into(),
            ledger,
            journals,
            keys: secrets,
            rss_at_start_kb,
        }),
        auth,
    };
    let cluster = Cluster {
        redis_url,
        database: config.database,
    };
    Ok((subject, cluster))
}

/// Records per second one replica's writer ships into PostgreSQL: `batches` statements of
/// 1,000 records each (a millisecond apart), one after the other, as the writer sends a
/// backlog.
pub async fn ingest(cluster: &Cluster, ledger: &Db, batches: usize) -> anyhow::Result<f64> {
    let key = store::keys::list(ledger, None)
        .await?
        .into_iter()
        .next()
        .context("a key")?;
    let version = store::prices::all(ledger).await?.pop().context("a price")?;
    let now = Utc::now();
    let template = UsageRecord {
        request_id: String::new(),
        account_id: key.account_id,
        key_id: key.id,
        model: version.entry.model.clone(),
        chip: version.entry.chip.clone(),
        deployment: None,
        endpoint: "chat".into(),
        stream: false,
        status: Status::Ok,
        http_status: 200,
        error: None,
        tokens: TokenCounts {
            prompt: 12,
            completion: 30,
            ..TokenCounts::default()
        },
        units: Default::default(),
        usage_source: UsageSource::Reported,
        price_version_id: version.id,
        cost: rust_decimal::Decimal::new(864, 7),
        blocked: false,
        moderation: None,
        started_at: now,
        ended_at: now,
        latency_ms: 3,
        ttft_ms: None,
        attempts: Vec::new(),
        reported: None,
    };
    let sink = Sink::open(&cluster.database).await?;
    let started = Instant::now();
    for batch in 0..batches {
        // A millisecond apart, as a busy gateway's records are, not all at one instant.
        let records: Vec<UsageRecord> = (0..1000)
            .map(|i| {
                let at = now - chrono::Duration::milliseconds(1000 - i);
                UsageRecord {
                    request_id: format!("req_ingest_{batch}_{i}"),
                    started_at: at,
                    ended_at: at + chrono::Duration::milliseconds(3),
                    ..template.clone()
                }
            })
            .collect();
        let refs: Vec<&UsageRecord> = records.iter().collect();
        sink.insert(&refs)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok((batches * 1000) as f64 / started.elapsed().as_secs_f64())
}

/// What one closed-loop run through the cluster cost per request: Redis round trips, and
/// CPU time of each kind of process.
pub struct PerRequest {
    pub redis_round_trips: f64,
    /// (process name, CPU µs per request), in the order the processes were started.
    pub cpu_us: Vec<(&'static str, f64)>,
}

/// Non-streamed completions through the cluster for `time` at 32 connections: the script
/// calls (`EVAL`, `EVALSHA`) Redis counted meanwhile per request (the commands a script
/// runs inside Redis are no round trips), and each process's CPU time per request.
pub async fn per_request(
    cluster: &Cluster,
    subject: &Subject,
    body: crate::load::Workload,
    time: Duration,
) -> anyhow::Result<PerRequest> {
    let client = redis::Client::open(cluster.redis_url.as_str())?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let mut calls = async || -> anyhow::Result<u64> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut connection)
            .await?;
        Ok(info
            .lines()
            .filter(|l| l.starts_with("cmdstat_eval:") || l.starts_with("cmdstat_evalsha:"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum())
    };
    let cpu = || -> Vec<Duration> {
        subject
            .proxies
            .iter()
            .map(|p| procs::cpu_time(&p.pids()))
            .collect()
    };
    let (before, cpu_before) = (calls().await?, cpu());
    let (outcomes, _) = load::closed_loop(&subject.target, &body, 32, Stop::After(time)).await?;
    // Settlements go to Redis just after the answers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (after, cpu_after) = (calls().await?, cpu());
    let requests = outcomes.len().max(1) as f64;
    let mut cpu_us: Vec<(&'static str, f64)> = Vec::new();
    for ((process, a), b) in subject.proxies.iter().zip(cpu_after).zip(cpu_before) {
        let us = a.saturating_sub(b).as_secs_f64() * 1e6 / requests;
        match cpu_us.iter_mut().find(|(name, _)| *name == process.name) {
            Some((_, total)) => *total += us,
            None => cpu_us.push((process.name, us)),
        }
    }
    Ok(PerRequest {
        redis_round_trips: (after - before) as f64 / requests,
        cpu_us,
    })
}
