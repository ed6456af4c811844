//! `--profile`: where a proxy's CPU time goes under load. Each proxy (the axum
//! pass-through, each tollgate) serves closed-loop connections (32 unless
//! `--profile-connections` says otherwise) while Debian's `perf`
//! samples it with call graphs (DWARF unwinding, so no special build is needed); the
//! report gives, per subject, CPU µs per request split into the stages a request passes
//! through (each stage's samples wherever its functions are on the stack) and the
//! functions with the most samples of their own. With `TOLLGATE_BENCH_KEEP_PERF=DIR` the
//! stacks are also written to DIR, one sample per line (frames `;`-separated, innermost
//! first), for questions the tables do not answer.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::Subject;
use crate::load::{self, Stop};
use crate::procs::{self, Process};
use crate::report::Table;

/// A request's stages, each named by the functions (substrings of their symbols) that do
/// its work, most specific first: a sample counts for the first stage in this list one of
/// whose functions is anywhere on its stack, so the allocator and the kernel count for
/// the stage that called them, and a stage's share excludes what it calls that an earlier
/// stage names.
const STAGES: &[(&str, &[&str])] = &[
    (
        "ledger (journal append; the writer's SQLite insert)",
        &[
            "store::journal",
            "metering::writer",
            "Journal",
            "store::usage",
            "store::Sink",
            "store::sqlite",
            "store::compact",
            "rusqlite::",
            "sqlite3",
        ],
    ),
    (
        "pricing and the record",
        &[
            "billing::",
            "settle::finish",
            "settle::Exchange",
            "prices::Prices",
        ],
    ),
    (
        "usage extraction (reading the answer)",
        &["dialect::observe", "proxy::answer", "observe::"],
    ),
    (
        "request body reading and parsing",
        &[
            "ClientRequest::read",
            "ClientRequest::parse",
            "request::body",
            "to_bytes",
        ],
    ),
    (
        "dialect (the body sent upstream)",
        &["upstream_body", "dialect::"],
    ),
    (
        "limits and spending",
        &["limits::", "spending::", "governor::"],
    ),
    ("authentication", &["auth::", "authenticate::"]),
    ("metrics", &["prometheus::", "metrics::"]),
    (
        "backend call (client, pool)",
        &[
            "upstream::pool",
            "upstream::client",
            "hyper_util::client",
            "hyper::client",
        ],
    ),
    (
        "routing and handler glue",
        &[
            "axum::routing",
            "axum::handler",
            "axum::middleware",
            "tower::",
            "proxy::",
            "passthrough::",
        ],
    ),
    (
        "client connection (hyper server, response writing)",
        &["hyper::proto", "hyper::server", "server::io", "axum::serve"],
    ),
    ("tokio runtime and scheduling", &["tokio::"]),
];

const REST: &str = "kernel, allocator and everything else";

/// How each proxy is loaded while it is profiled.
#[derive(Clone, Copy)]
pub struct Load {
    pub seconds: u64,
    pub connections: usize,
}

pub async fn run(
    subjects: &[Subject],
    simulator: &Process,
    load: Load,
    ask: crate::phases::Ask,
    dir: &Path,
) -> anyhow::Result<String> {
    let perf = which_perf().context("--profile needs perf (Debian's linux-perf)")?;
    let Load {
        seconds,
        connections,
    } = load;
    let mut out = format!(
        "# Where a request's CPU time goes\n\nMachine: {}. Each proxy serves {connections} \
         closed-loop connections of {asked} for {seconds} s while `perf record \
         --call-graph dwarf` samples it at 999 Hz. CPU µs per request come from /proc in a \
         run of the same length without perf (whose unwinding costs the process time of its \
         own); each stage gets its share of the profiled run's samples: those with one of \
         its functions on the stack and none of an earlier stage's (`STAGES` in \
         `src/bin/tollgate-bench/profile.rs`).\n\n",
        crate::report::machine(),
        asked = ask.described(),
    );
    for subject in subjects.iter().filter(|s| s.proxies.len() == 1) {
        eprintln!("profiling {}", subject.target.name);
        out += &profile_one(&perf, subject, simulator, load, ask, dir).await?;
    }
    Ok(out)
}

fn which_perf() -> Option<String> {
    let ok = Command::new("perf")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| "perf".to_string())
}

async fn profile_one(
    perf: &str,
    subject: &Subject,
    simulator: &Process,
    Load {
        seconds,
        connections,
    }: Load,
    ask: crate::phases::Ask,
    dir: &Path,
) -> anyhow::Result<String> {
    let pid = subject.proxies[0].pid();
    let data = dir.join(format!("perf-{pid}.data"));
    let workload = ask.workload(subject);
    let time = Duration::from_secs(seconds);
    let warm_up = Stop::Requests(2_000.max(connections * 10));
    load::closed_loop(&subject.target, &workload, connections, warm_up).await?;
    // CPU per request without perf (its unwinding costs the process time of its own) ...
    let cpu_before = procs::cpu_time(&[pid]);
    let sim_before = procs::cpu_time(&simulator.pids());
    let (outcomes, _) =
        load::closed_loop(&subject.target, &workload, connections, Stop::After(time)).await?;
    let cpu = procs::cpu_time(&[pid]).saturating_sub(cpu_before);
    let sim = procs::cpu_time(&simulator.pids()).saturating_sub(sim_before);
    let requests = outcomes.len().max(1) as f64;
    // ... and how it divides, with perf.
    let mut recorder = Command::new(perf)
        .args(["record", "-F", "999", "--call-graph", "dwarf,16384", "-p"])
        .arg(pid.to_string())
        .arg("-o")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start perf record")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (profiled, _) =
        load::closed_loop(&subject.target, &workload, connections, Stop::After(time)).await?;
    let _ = Command::new("kill")
        .args(["-INT", &recorder.id().to_string()])
        .status();
    recorder.wait()?; // perf writes its file, a second or so
    let failed = outcomes
        .iter()
        .chain(&profiled)
        .filter(|o| o.status != 200)
        .count();
    if failed > 0 {
        bail!(
            "{failed} requests failed while profiling {}",
            subject.target.name
        );
    }
    let per_request = cpu.as_secs_f64() * 1e6 / requests;
    let stacks = stacks(perf, &data)?;
    if let Ok(keep) = std::env::var("TOLLGATE_BENCH_KEEP_PERF") {
        let kept = Path::new(&keep).join(format!("{}.txt", subject.target.name.replace(' ', "-")));
        let text: Vec<String> = stacks.iter().map(|s| s.join(";")).collect();
        std::fs::write(kept, text.join("\n"))?;
    }
    let _ = std::fs::remove_file(&data);
    Ok(format!(
        "## {name}\n\n{requests:.0} requests; proxy CPU {per_request:.1} µs per request \
         (simulator {sim:.1}); {samples} samples.\n\n{stages}\n{top}\n",
        name = subject.target.name,
        sim = sim.as_secs_f64() * 1e6 / requests,
        samples = stacks.len(),
        stages = stage_table(&stacks, per_request),
        top = top_functions(&stacks, per_request, 20),
    ))
}

/// One sample's stack, innermost frame first (symbols, with their modules).
type Stack = Vec<String>;

/// The samples of `data`, from `perf script`.
fn stacks(perf: &str, data: &Path) -> anyhow::Result<Vec<Stack>> {
    let output = Command::new(perf)
        .args(["script", "-F", "ip,sym", "-i"])
        .arg(data)
        .stderr(Stdio::null())
        .output()
        .context("cannot run perf script")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut all = Vec::new();
    let mut stack = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            if !stack.is_empty() {
                all.push(std::mem::take(&mut stack));
            }
            continue;
        }
        // "ip symbol+offset" or "ip [unknown]"
        let symbol = line.split_once(' ').map_or("[unknown]", |(_, s)| s);
        let symbol = symbol.rsplit_once("+0x").map_or(symbol, |(s, _)| s);
        stack.push(path_of(symbol));
    }
    if !stack.is_empty() {
        all.push(stack);
    }
    Ok(all)
}

/// A frame's own path, without generic arguments (whose types name every layer around
/// it): `<hyper_util::rt::TokioIo<T> as hyper::rt::io::Read>::poll_read` is
/// `hyper_util::rt::TokioIo::poll_read`, `poll_read_head<hyper::proto::…>` is
/// `poll_read_head`.
pub fn path_of(symbol: &str) -> String {
    let (mut owner, mut rest) = (String::new(), symbol);
    if let Some(inner) = symbol.strip_prefix('<') {
        // `<Type as Trait>::rest`: the type is the owner.
        let mut depth = 0;
        let mut end = inner.len();
        for (i, c) in inner.char_indices() {
            match c {
                '<' => depth += 1,
                '>' if depth == 0 => {
                    end = i;
                    break;
                }
                '>' => depth -= 1,
                _ => {}
            }
        }
        let impl_of = &inner[..end];
        owner = strip_generics(impl_of.split(" as ").next().unwrap_or(impl_of));
        rest = inner.get(end + 1..).unwrap_or("");
    }
    owner + &strip_generics(rest)
}

fn strip_generics(text: &str) -> String {
    let (mut depth, mut previous) = (0, ' ');
    let mut out = String::new();
    for c in text.chars() {
        match c {
            '<' => depth += 1,
            '>' if previous != '-' => depth -= 1, // not `fn() -> T`'s arrow
            _ if depth == 0 => out.push(c),
            _ => {}
        }
        previous = c;
    }
    out
}

fn stage_of(stack: &Stack) -> &'static str {
    STAGES
        .iter()
        .find(|(_, marks)| stack.iter().any(|f| marks.iter().any(|m| f.contains(m))))
        .map_or(REST, |(stage, _)| stage)
}

fn stage_table(stacks: &[Stack], per_request: f64) -> String {
    let total = stacks.len().max(1) as f64;
    let mut table = Table::new(&["stage", "share of samples", "µs per request"]);
    let names = STAGES.iter().map(|(s, _)| *s).chain([REST]);
    for name in names {
        let n = stacks.iter().filter(|s| stage_of(s) == name).count() as f64;
        table.row(&[
            name.to_string(),
            format!("{:.1}%", n * 100.0 / total),
            format!("{:.1}", per_request * n / total),
        ]);
    }
    table.finish()
}

/// The `n` functions with the most samples of their own (innermost frame).
fn top_functions(stacks: &[Stack], per_request: f64, n: usize) -> String {
    let total = stacks.len().max(1) as f64;
    let mut counts = std::collections::HashMap::<&str, usize>::new();
    for stack in stacks {
        if let Some(frame) = stack.first() {
            *counts.entry(frame.as_str()).or_default() += 1;
        }
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut table = Table::new(&["function (self)", "share", "µs per request"]);
    for (name, count) in counts.into_iter().take(n) {
        let short: String = name.chars().take(110).collect();
        table.row(&[
            format!("`{short}`"),
            format!("{:.1}%", count as f64 * 100.0 / total),
            format!("{:.2}", per_request * count as f64 / total),
        ]);
    }
    table.finish()
}
