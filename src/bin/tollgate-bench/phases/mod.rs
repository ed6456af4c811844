//! What is measured, in order. Each phase runs every subject in turn (direct, nginx, each
//! tollgate), so drift on a shared machine touches all of them alike.
//!
//! 1. Latency at concurrency 1: open loop, small non-streamed completions.
//! 2. Throughput: closed loop at 32 and 256 connections; CPU time per request of the proxy
//!    and of the simulator (`/proc`), and ledger rows per second (counted in the ledger).
//! 3. Streams of 20 and 200 chunks (one every millisecond), one at a time: time to first
//!    token and the gap between chunks.
//! 4. Many keys (tollgate only): each key once, then keys drawn Zipf-like (s = 1) at 32
//!    connections, with every tenth key limited to one request a minute; peak memory.

use std::time::Duration;

use crate::load::{self, Outcome, Stop, Workload};
use crate::procs::{self, Process};
use crate::report::{Stats, Table, added_ms, ms, ratio, spread};
use crate::{Subject, chat_body};

mod open_rate;
mod open_streams;
mod streams;
mod summary;

use open_rate::open_rate;
use open_streams::open_streams;
use streams::{many_keys, streams};
use summary::{cluster_section, goals, memory};

pub const MODEL: &str = "megrez-7b-instruct";

/// How much of each phase.
pub struct Plan {
    name: &'static str,
    latency_requests: usize,
    latency_rate: f64,
    latency_rounds: usize,
    /// Throughput time per subject and connection count, split into rounds.
    throughput: Duration,
    throughput_rounds: usize,
    short_streams: usize,
    long_streams: usize,
    zipf: Duration,
    /// Streams open at once in the open-streams phase.
    open_streams: usize,
    /// Time per subject of the open-loop phase, split into `throughput_rounds`.
    open_rate_time: Duration,
    /// The phases to run (`PHASES`); all when empty.
    pub only: Vec<String>,
    /// Content chunks (words) of the non-streamed answers the latency, throughput and
    /// open-loop phases ask for.
    pub answer_chunks: usize,
    /// Bytes of earlier conversation in those requests (`chat_body`).
    pub prompt_bytes: usize,
    /// `--worker-threads`: every proxy's, when set.
    pub worker_threads: Option<u16>,
    /// `--open-loop-rate`: the open-loop phase's rate, when set.
    pub open_rate: Option<f64>,
}

/// The phases by name, in the order they run (`--phases`).
pub const PHASES: &[&str] = &[
    "latency",
    "throughput",
    "open-loop",
    "streams",
    "many-keys",
    "open-streams",
    "cluster",
];

impl Plan {
    fn runs(&self, phase: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == phase)
    }

    /// The non-streamed completion of the latency, throughput and open-loop phases.
    fn fixed(&self, subject: &Subject) -> Workload {
        fixed(subject, self.answer_chunks, self.prompt_bytes, false)
    }
}

/// A completion a workload repeats (`chat_body`): the chunks of its answer, whether it
/// streams, and the bytes of history before its question.
#[derive(Clone, Copy)]
pub struct Ask {
    pub chunks: usize,
    pub stream: bool,
    pub prompt_bytes: usize,
}

impl Ask {
    pub fn workload(&self, subject: &Subject) -> Workload {
        fixed(subject, self.chunks, self.prompt_bytes, self.stream)
    }

    /// The completions, in words.
    pub fn described(&self) -> String {
        let what = match self.stream {
            true => format!("streamed completions of {} chunks", self.chunks),
            false if self.chunks == 3 => "small non-streamed completions".into(),
            false => format!("non-streamed completions of {} words", self.chunks),
        };
        match self.prompt_bytes {
            0 => what,
            n => format!("{what} after {n} bytes of earlier conversation"),
        }
    }
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            name: "full",
            latency_requests: 3000,
            latency_rate: 200.0,
            latency_rounds: 3,
            throughput: Duration::from_secs(12),
            throughput_rounds: 3,
            short_streams: 150,
            long_streams: 25,
            zipf: Duration::from_secs(10),
            open_streams: 10_000,
            open_rate_time: Duration::from_secs(9),
            only: Vec::new(),
            answer_chunks: 3,
            prompt_bytes: 0,
            worker_threads: None,
            open_rate: None,
        }
    }

    pub fn quick() -> Plan {
        Plan {
            name: "quick (a check of the benchmark, not a measurement)",
            latency_requests: 100,
            latency_rate: 200.0,
            latency_rounds: 1,
            throughput: Duration::from_millis(500),
            throughput_rounds: 1,
            short_streams: 5,
            long_streams: 2,
            zipf: Duration::from_secs(1),
            open_streams: 100,
            open_rate_time: Duration::from_millis(500),
            only: Vec::new(),
            answer_chunks: 3,
            prompt_bytes: 0,
            worker_threads: None,
            open_rate: None,
        }
    }
}

/// The figures the goals are judged by, per subject.
#[derive(Default)]
struct Findings {
    latency: Vec<Stats>,
    throughput_32: Vec<f64>,
    throughput_256: Vec<f64>,
    /// Proxy CPU µs per request at 32 connections.
    cpu_32: Vec<f64>,
    p99_32: Vec<Duration>,
    /// Open loop: added p99 over direct, and CPU µs per request (all of a subject's
    /// processes).
    open_p99: Vec<Duration>,
    open_cpu: Vec<f64>,
    /// Open streams, by subject: KB per open stream, streams failed, peak RSS (KB).
    open_streams: Vec<Option<(f64, usize, u64)>>,
    peak_rss_kb: Vec<u64>,
    /// With a cluster: PostgreSQL's ingest rate, records/s.
    ingest: Option<f64>,
}

pub async fn run_all(
    plan: &Plan,
    subjects: &[Subject],
    simulator: &Process,
    cluster: Option<&crate::cluster::Cluster>,
) -> anyhow::Result<String> {
    let mut findings = Findings::default();
    let names: Vec<&str> = subjects.iter().map(|s| s.target.name.as_str()).collect();
    let mut out = format!(
        "# tollgate benchmark\n\n\
         Machine: {}. Plan: {}. Subjects: {}. The simulated backend, nginx, each tollgate and \
         the load generator (one thread) share this machine. Non-streamed answers: {} \
         words.{}\n\n",
        crate::report::machine(),
        plan.name,
        names.join(", "),
        plan.answer_chunks,
        plan.worker_threads.map_or(String::new(), |n| format!(
            " Worker threads: {n} in every proxy (`--worker-threads`; nginx's worker processes)."
        )),
    );
    for subject in subjects {
        let warmup = plan.fixed(subject);
        load::closed_loop(&subject.target, &warmup, 4, Stop::Requests(300)).await?;
    }
    if plan.runs("latency") {
        eprintln!("latency at concurrency 1");
        out += &latency(plan, subjects, &mut findings).await?;
    }
    if plan.runs("throughput") {
        eprintln!("throughput");
        out += &throughput(plan, subjects, simulator, &mut findings).await?;
    }
    if plan.runs("open-loop") {
        eprintln!("open loop");
        out += &open_rate(plan, subjects, &mut findings).await?;
    }
    if plan.runs("streams") {
        eprintln!("streams");
        out += &streams(plan, subjects).await?;
    }
    if plan.runs("many-keys") {
        eprintln!("many keys");
        out += &many_keys(plan, subjects).await?;
    }
    out += &memory(subjects, simulator, &mut findings);
    if plan.runs("open-streams") {
        eprintln!("open streams");
        out += &open_streams(plan, subjects, simulator, &mut findings).await?;
    }
    if plan.runs("cluster")
        && let (Some(cluster), Some(subject)) = (cluster, subjects.last())
    {
        eprintln!("cluster");
        out += &cluster_section(plan, cluster, subject, &mut findings).await?;
    }
    if !plan.only.is_empty() || plan.open_rate.is_some() {
        // The goals need every phase's figures, and the open loop at its own rate.
        return Ok(out);
    }
    out += &goals(subjects, &findings);
    Ok(out)
}

/// The small non-streamed completion of the latency and throughput phases.
fn fixed(subject: &Subject, chunks: usize, prompt_bytes: usize, stream: bool) -> Workload {
    Workload::Fixed {
        auth: subject.auth.clone(),
        body: chat_body(chunks, stream, prompt_bytes),
    }
}

fn failures(outcomes: &[Outcome]) -> usize {
    outcomes.iter().filter(|o| o.status != 200).count()
}

async fn latency(
    plan: &Plan,
    subjects: &[Subject],
    findings: &mut Findings,
) -> anyhow::Result<String> {
    let mut table = Table::new(&[
        "subject",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "added p50 ms (rounds: lowest to highest)",
        "added p99 ms",
        "p50 ratio",
        "commit ms / records per commit",
        "tollgate's view: backend / to record, mean ms",
        "failed",
    ]);
    let mut before = Vec::new();
    for subject in subjects {
        before.push(Commits::read(subject).await?);
    }
    // Rounds go through the subjects in turn, so drift touches all of them alike.
    let mut runs: Vec<Vec<load::Outcome>> = subjects.iter().map(|_| Vec::new()).collect();
    // p50 of each round, per subject.
    let mut round_p50s: Vec<Vec<Duration>> = subjects.iter().map(|_| Vec::new()).collect();
    let per_round = plan.latency_requests.div_ceil(plan.latency_rounds);
    for _ in 0..plan.latency_rounds {
        for ((subject, outcomes), p50s) in subjects.iter().zip(&mut runs).zip(&mut round_p50s) {
            let round = load::open_loop(
                &subject.target,
                &plan.fixed(subject),
                plan.latency_rate,
                per_round,
            )
            .await?;
            p50s.push(Stats::of(round.iter().map(|o| o.latency).collect()).p50);
            outcomes.extend(round);
        }
    }
    for (((subject, outcomes), commits), p50s) in
        subjects.iter().zip(&runs).zip(before).zip(&round_p50s)
    {
        let failed = failures(outcomes);
        let after = Commits::read(subject).await?;
        let stats = Stats::of(outcomes.iter().map(|o| o.latency).collect());
        let direct = *findings.latency.first().unwrap_or(&stats);
        let added = p50s
            .iter()
            .zip(&round_p50s[0])
            .map(|(p50, direct)| (p50.as_secs_f64() - direct.as_secs_f64()) * 1e3)
            .collect();
        let spread = spread(added, |ms| format!("{ms:+.3}"));
        table.row(&[
            subject.target.name.clone(),
            ms(stats.p50),
            ms(stats.p99),
            ms(stats.p999),
            ms(stats.max),
            format!("{}{spread}", added_ms(stats.p50, direct.p50)),
            added_ms(stats.p99, direct.p99),
            ratio(stats.p50.as_secs_f64(), direct.p50.as_secs_f64()),
            Commits::since(after, commits),
            Commits::inside(after, commits),
            failed.to_string(),
        ]);
        findings.latency.push(stats);
    }
    Ok(format!(
        "## Latency at concurrency 1\n\n{} non-streamed completions ({} words of text each) \
         on one keep-alive connection, open loop at {} per second, in {} rounds that go \
         through the subjects in turn. A request held up by its predecessor is timed from when \
         it was due (no coordinated omission).\n\n{}\n",
        per_round * plan.latency_rounds,
        plan.answer_chunks,
        plan.latency_rate,
        plan.latency_rounds,
        table.finish()
    ))
}

/// The ledger writer's own figures, from tollgate's `/metrics`.
#[derive(Clone, Copy, Default)]
struct Commits {
    seconds: f64,
    records: f64,
    batches: f64,
    /// Sums and counts of the backend's latency and of the request up to its record,
    /// as tollgate measured them.
    upstream: (f64, f64),
    duration: (f64, f64),
}

impl Commits {
    async fn read(subject: &Subject) -> anyhow::Result<Option<Commits>> {
        if subject.gateway.is_none() {
            return Ok(None);
        }
        let text = load::get(subject.target.addr, "/metrics").await?;
        // Sums over label sets: `name{labels} value` or `name value`.
        let value = |name: &str| -> f64 {
            text.lines()
                .filter(|l| l.split(['{', ' ']).next() == Some(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        let pair = |name: &str| {
            (
                value(&format!("{name}_sum")),
                value(&format!("{name}_count")),
            )
        };
        Ok(Some(Commits {
            seconds: value("tollgate_ledger_commit_seconds_sum"),
            records: value("tollgate_ledger_batch_records_sum"),
            batches: value("tollgate_ledger_batch_records_count"),
            upstream: pair("tollgate_upstream_latency_seconds"),
            duration: pair("tollgate_request_duration_seconds"),
        }))
    }

    /// "mean commit ms / records per commit" since `before`.
    fn since(after: Option<Commits>, before: Option<Commits>) -> String {
        match (after, before) {
            (Some(a), Some(b)) if a.batches > b.batches => {
                let batches = a.batches - b.batches;
                format!(
                    "{:.3} / {:.1}",
                    (a.seconds - b.seconds) * 1e3 / batches,
                    (a.records - b.records) / batches
                )
            }
            _ => "-".into(),
        }
    }

    /// "backend mean ms / to record mean ms" since `before`, as tollgate measured them.
    fn inside(after: Option<Commits>, before: Option<Commits>) -> String {
        let mean = |a: (f64, f64), b: (f64, f64)| (a.0 - b.0) * 1e3 / (a.1 - b.1).max(1.0);
        match (after, before) {
            (Some(a), Some(b)) => format!(
                "{:.3} / {:.3}",
                mean(a.upstream, b.upstream),
                mean(a.duration, b.duration)
            ),
            _ => "-".into(),
        }
    }
}

/// Rows in the gateway's ledger, once it has imported every record it committed (its
/// journal is empty: it imports within `ledger.import_delay_ms`).
async fn ledger_rows(subject: &Subject) -> anyhow::Result<Option<i64>> {
    let Some(g) = &subject.gateway else {
        return Ok(None);
    };
    for _ in 0..200 {
        let mut empty = true;
        for journal in &g.journals {
            empty &= tollgate::store::journal::is_empty(journal)?;
        }
        if empty {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(Some(tollgate::store::usage::count(&g.ledger).await?))
}

/// One subject's throughput measurements, summed over the rounds.
#[derive(Default)]
struct Throughput {
    latencies: Vec<Duration>,
    served: usize,
    failed: usize,
    elapsed: Duration,
    proxy_cpu: Duration,
    sim_cpu: Duration,
    /// Requests per second in each round.
    rounds: Vec<f64>,
}

impl Throughput {
    fn rate(&self) -> f64 {
        self.served as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// CPU time per request, in µs.
    fn per_request(&self, cpu: Duration) -> String {
        let requests = (self.served + self.failed).max(1) as f64;
        format!("{:.0}", cpu.as_secs_f64() * 1e6 / requests)
    }
}

/// Runs `connections` closed-loop clients against one subject for `time`, adding to `acc`.
async fn throughput_round(
    plan: &Plan,
    subject: &Subject,
    simulator: &Process,
    connections: usize,
    time: Duration,
    acc: &mut Throughput,
) -> anyhow::Result<()> {
    let proxy_pids = subject.pids();
    let (proxy_cpu, sim_cpu) = (
        procs::cpu_time(&proxy_pids),
        procs::cpu_time(&simulator.pids()),
    );
    let (outcomes, elapsed) = load::closed_loop(
        &subject.target,
        &plan.fixed(subject),
        connections,
        Stop::After(time),
    )
    .await?;
    acc.proxy_cpu += procs::cpu_time(&proxy_pids).saturating_sub(proxy_cpu);
    acc.sim_cpu += procs::cpu_time(&simulator.pids()).saturating_sub(sim_cpu);
    let failed = failures(&outcomes);
    let served = outcomes.len() - failed;
    acc.rounds
        .push(served as f64 / elapsed.as_secs_f64().max(1e-9));
    acc.served += served;
    acc.failed += failed;
    acc.elapsed += elapsed;
    acc.latencies.extend(outcomes.iter().map(|o| o.latency));
    Ok(())
}

async fn throughput(
    plan: &Plan,
    subjects: &[Subject],
    simulator: &Process,
    findings: &mut Findings,
) -> anyhow::Result<String> {
    let mut table = Table::new(&[
        "subject",
        "connections",
        "requests/s",
        "vs direct",
        "vs nginx (rounds: lowest to highest)",
        "p50 ms",
        "p99 ms",
        "proxy CPU µs/request",
        "simulator CPU µs/request",
        "ledger rows/s",
        "commit ms / records per commit",
        "proxy RSS after MiB",
        "failed",
    ]);
    let nginx = subjects.iter().position(|s| s.target.name == "nginx");
    let round = plan.throughput / plan.throughput_rounds as u32;
    for connections in [32, 256] {
        let mut before = Vec::new();
        for subject in subjects {
            before.push((ledger_rows(subject).await?, Commits::read(subject).await?));
        }
        let mut runs: Vec<Throughput> = subjects.iter().map(|_| Throughput::default()).collect();
        // Rounds go through the subjects in turn, so drift touches all of them alike.
        for _ in 0..plan.throughput_rounds {
            for (subject, acc) in subjects.iter().zip(&mut runs) {
                throughput_round(plan, subject, simulator, connections, round, acc).await?;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        let rates: Vec<f64> = runs.iter().map(Throughput::rate).collect();
        for ((subject, run), (ledger_before, commits)) in subjects.iter().zip(&runs).zip(before) {
            let ledger = match (ledger_before, ledger_rows(subject).await?) {
                (Some(a), Some(b)) => {
                    format!("{:.0}", (b - a) as f64 / run.elapsed.as_secs_f64())
                }
                _ => "-".into(),
            };
            let vs_nginx = nginx.map_or("-".into(), |n| {
                let shares = run.rounds.iter().zip(&runs[n].rounds).map(|(a, b)| a / b);
                let spread = spread(shares.collect(), |share| format!("{share:.2}"));
                format!("{}{spread}", ratio(run.rate(), rates[n]))
            });
            let stats = Stats::of(run.latencies.clone());
            let proxy_pids = subject.pids();
            table.row(&[
                subject.target.name.clone(),
                connections.to_string(),
                format!("{:.0}", run.rate()),
                ratio(run.rate(), rates[0]),
                vs_nginx,
                ms(stats.p50),
                ms(stats.p99),
                if !subject.proxies.is_empty() {
                    run.per_request(run.proxy_cpu)
                } else {
                    "-".into()
                },
                run.per_request(run.sim_cpu),
                ledger,
                Commits::since(Commits::read(subject).await?, commits),
                format!(
                    "{:.1}",
                    procs::memory_kb(&proxy_pids, "VmRSS") as f64 / 1024.0
                ),
                run.failed.to_string(),
            ]);
        }
        if connections == 256 {
            findings.throughput_256 = rates.clone();
        }
        if connections == 32 {
            findings.cpu_32 = runs
                .iter()
                .map(|r| r.proxy_cpu.as_secs_f64() * 1e6 / (r.served + r.failed).max(1) as f64)
                .collect();
            findings.throughput_32 = rates;
            findings.p99_32 = runs
                .iter()
                .map(|r| Stats::of(r.latencies.clone()).p99)
                .collect();
        }
    }
    Ok(format!(
        "## Throughput\n\nClosed loop: each connection sends its next non-streamed completion \
         as soon as the last one is answered, in {} rounds of {:.1} s per subject; the rounds \
         go through the subjects in turn. Every tollgate request is authenticated, \
         rate-limited, priced and committed to its ledger before its answer ends. CPU time \
         comes from /proc (user + system, all threads; nginx: master and workers).\n\n{}\n",
        plan.throughput_rounds,
        round.as_secs_f64(),
        table.finish()
    ))
}
