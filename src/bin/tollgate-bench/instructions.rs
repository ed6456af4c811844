//! `--instructions`: what a request costs each proxy in instructions, counted by valgrind's
//! callgrind rather than timed. On a shared machine CPU time per request moves by 10% or
//! more from run to run; an instruction count moves by about 0.1%, so a change of 1% in
//! what the proxy does is visible in one run. Each proxy (the pass-through, each tollgate)
//! runs under callgrind with counting off; after a warm-up the counters are zeroed, a fixed
//! number of requests is sent, and the counts are dumped (`callgrind_control`). What the
//! count leaves out is the kernel's side of the syscalls (their number is counted) and
//! what cache misses and context switches cost. With `TOLLGATE_BENCH_KEEP_CALLGRIND=DIR`
//! the dumps are kept in DIR, for `callgrind_annotate` (e.g. `--tree=caller`).
//! With `--cache-sim`, callgrind also simulates the caches, its last level sized as this
//! machine's L2, and the report gives that cache's misses per request: what more requests
//! in flight cost in memory, on a machine whose hardware counters cannot be read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::Subject;
use crate::load::{self, Stop};
use crate::report::Table;

/// Connections the counted requests come over unless `--instruction-connections` says
/// otherwise: a few, so that the proxy's connections and its backend pool are used as in
/// the load phases, and the count barely depends on how valgrind interleaves the proxy's
/// threads.
pub const CONNECTIONS: u16 = 4;

/// The command line a proxy under test is started with instead of its own: callgrind with
/// counting off until `callgrind_control` turns it on, its counts written into `dir`;
/// with `cache_sim`, simulating the caches, the last level as this machine's L2.
pub fn launcher(dir: &Path, cache_sim: bool) -> anyhow::Result<Vec<String>> {
    let mut command = vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        "--instr-atstart=no".into(),
        "--collect-systime=yes".into(),
        "--separate-threads=yes".into(),
        format!("--callgrind-out-file={}/callgrind.%p", dir.display()),
    ];
    if cache_sim {
        command.push("--cache-sim=yes".into());
        command.push(format!("--LL={}", l2_of_this_machine()?));
    }
    Ok(command)
}

/// This machine's L2 as callgrind's `--LL` takes it: size, ways and line in bytes.
fn l2_of_this_machine() -> anyhow::Result<String> {
    let dir = Path::new("/sys/devices/system/cpu/cpu0/cache/index2");
    let read = |name: &str| -> anyhow::Result<String> {
        let text = std::fs::read_to_string(dir.join(name))
            .with_context(|| format!("--cache-sim cannot read {name} of this CPU's L2"))?;
        Ok(text.trim().to_string())
    };
    let size = read("size")?;
    let bytes: u64 = match size.strip_suffix('K') {
        Some(kib) => kib.parse::<u64>()? * 1024,
        None => size.parse()?,
    };
    let ways = read("ways_of_associativity")?;
    let line = read("coherency_line_size")?;
    Ok(format!("{bytes},{ways},{line}"))
}

/// Checks that valgrind is there before any proxy is started under it.
pub fn check() -> anyhow::Result<()> {
    let found = Command::new("callgrind_control")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    match found {
        true => Ok(()),
        false => bail!("--instructions needs valgrind (Debian's valgrind package)"),
    }
}

pub async fn run(
    subjects: &[Subject],
    requests: usize,
    connections: usize,
    cache_sim: bool,
    ask: crate::phases::Ask,
    dir: &Path,
) -> anyhow::Result<String> {
    let mut out = format!(
        "# What a request costs in instructions\n\nMachine: {}. Each proxy runs under \
         valgrind's callgrind; after {warm} requests of warm-up, {requests} {asked} over {connections} keep-alive connections are counted: \
         the instructions of all the proxy's threads and its syscalls, per request. The \
         request path is all but the ledger writer's threads, whose work is given per \
         record they imported into the database while counting (its cost per record \
         depends on how many records an import finds waiting, a matter of timing). The kernel's work in the syscalls is not \
         counted; clock reads, syscalls under valgrind but not natively (the vDSO), are \
         counted apart.\n\n",
        crate::report::machine(),
        warm = warm_up(requests),
        asked = ask.described(),
    );
    if cache_sim {
        out = out.trim_end().to_string();
        out += &format!(
            " callgrind simulated the caches, its last level as this machine's L2 ({}: size, \
             ways, line in bytes); a miss there is a read from L3 or memory, or a write to a \
             line not in L2.\n\n",
            l2_of_this_machine()?
        );
    }
    let mut counted = Vec::new();
    for subject in subjects.iter().filter(|s| s.proxies.len() == 1) {
        eprintln!("counting {}", subject.target.name);
        counted.push(count_one(subject, requests, connections, ask, dir).await?);
    }
    let baseline = counted.first().map_or(0.0, Counted::request_path);
    let mut columns = vec![
        "subject",
        "instructions per request",
        "on the request path",
        "vs the first",
        "ledger writer's threads per record imported",
        "syscalls per request",
        "clock reads per request",
    ];
    if cache_sim {
        columns.push("simulated L2 misses per request");
    }
    let mut table = Table::new(&columns);
    for c in &counted {
        let mut row = vec![
            c.name.clone(),
            format!("{:.0}", c.instructions),
            format!("{:.0}", c.request_path()),
            crate::report::ratio(c.request_path(), baseline),
            format!("{:.0}", c.writer),
            format!("{:.2}", c.syscalls),
            format!("{:.2}", c.clock_reads),
        ];
        row.extend(c.l2_misses.map(|m| format!("{m:.0}")));
        table.row(&row);
    }
    out += &table.finish();
    for c in &counted {
        out += &format!("\n## {}\n\n{}\n{}", c.name, c.own, c.selfs);
    }
    Ok(out)
}

impl Counted {
    /// What the request itself costs: all but the ledger writer's threads, whose work per
    /// record depends on how many records an import finds waiting (a matter of timing).
    fn request_path(&self) -> f64 {
        self.instructions - self.writer_per_request
    }
}

fn warm_up(requests: usize) -> usize {
    (requests / 2).max(200)
}

/// One proxy's counts, per request, and its tables of functions.
struct Counted {
    name: String,
    instructions: f64,
    /// Of `instructions`, the ledger writer's threads.
    writer_per_request: f64,
    /// The ledger writer's threads (the database's side of a record), per record they
    /// imported while counting.
    writer: f64,
    /// Syscalls but clock reads.
    syscalls: f64,
    clock_reads: f64,
    /// Misses of the simulated last-level cache (this machine's L2), instruction and data,
    /// every thread, when the caches were simulated.
    l2_misses: Option<f64>,
    /// tollgate's own functions (and the pass-through's) by inclusive count.
    own: String,
    /// Every function by its own count.
    selfs: String,
}

async fn count_one(
    subject: &Subject,
    requests: usize,
    connections: usize,
    ask: crate::phases::Ask,
    dir: &Path,
) -> anyhow::Result<Counted> {
    let pid = subject.proxies[0].pid();
    let workload = ask.workload(subject);
    let target = &subject.target;
    load::closed_loop(
        target,
        &workload,
        connections,
        Stop::Requests(warm_up(requests)),
    )
    .await?;
    let imported_before = imported(subject).await?;
    control(pid, "--zero")?;
    control(pid, "--instr=on")?;
    let (outcomes, _) =
        load::closed_loop(target, &workload, connections, Stop::Requests(requests)).await?;
    control(pid, "--dump")?;
    control(pid, "--instr=off")?;
    let imported = imported(subject).await? - imported_before;
    let failed = outcomes.iter().filter(|o| o.status != 200).count();
    if failed > 0 || outcomes.len() != requests {
        bail!(
            "{failed} of {} requests failed while counting {}",
            outcomes.len(),
            target.name
        );
    }
    let threads = dump_of(dir, pid)?;
    if let Ok(keep) = std::env::var("TOLLGATE_BENCH_KEEP_CALLGRIND") {
        let name = target.name.replace([' ', '(', ')', ','], "-");
        for (n, file) in threads.iter().enumerate() {
            let kept = Path::new(&keep).join(format!("{name}.{n}.callgrind"));
            std::fs::copy(file, kept)?;
        }
    }
    let (mut instructions, mut syscalls, mut writer) = (0.0, 0.0, 0.0);
    let mut l2_misses: Option<f64> = None;
    let mut functions = Functions::default();
    for file in &threads {
        let text = std::fs::read_to_string(file)?;
        let totals = summary(&text)?;
        instructions += totals.instructions;
        syscalls += totals.syscalls;
        if let Some(misses) = totals.l2_misses {
            *l2_misses.get_or_insert(0.0) += misses;
        }
        if LEDGER.iter().any(|f| text.contains(f)) {
            writer += totals.instructions;
        }
        functions.add(annotate(file)?);
    }
    let per = requests as f64;
    // Under valgrind a clock read is a syscall; natively it is not (the vDSO).
    let clock_reads: f64 = (functions.syscalls.iter())
        .filter(|(name, _)| name.starts_with("clock_gettime"))
        .map(|(_, count)| count)
        .sum();
    Ok(Counted {
        name: target.name.clone(),
        instructions: instructions / per,
        writer_per_request: writer / per,
        writer: writer / (imported as f64).max(1.0),
        syscalls: (syscalls - clock_reads) / per,
        clock_reads: clock_reads / per,
        l2_misses: l2_misses.map(|m| m / per),
        own: function_table(
            "own function (inclusive)",
            functions
                .sorted(&functions.inclusive)
                .filter(|(name, _)| is_own(name)),
            per,
            30,
        ),
        selfs: function_table(
            "function (self)",
            functions.sorted(&functions.selfs),
            per,
            25,
        ),
    })
}

/// Records in the subject's ledger (none for the pass-through).
async fn imported(subject: &Subject) -> anyhow::Result<i64> {
    match &subject.gateway {
        Some(gateway) => Ok(tollgate::store::usage::count(&gateway.ledger).await?),
        None => Ok(0),
    }
}

/// Functions only the ledger writer's threads run (its own, and the blocking ones its
/// database inserts run on): a dump that names one is such a thread's.
const LEDGER: [&str; 2] = [
    "tollgate::metering::writer::thread::Writer::run",
    "tollgate::store::Sink::insert",
];

/// `callgrind_control ACTION PID`.
fn control(pid: u32, action: &str) -> anyhow::Result<()> {
    let status = Command::new("callgrind_control")
        .arg(action)
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run callgrind_control")?;
    anyhow::ensure!(status.success(), "callgrind_control {action} {pid} failed");
    Ok(())
}

/// The files of the dump `callgrind_control --dump` just wrote for `pid`, one per thread
/// (`callgrind.PID.N-TT`, N counting dumps up from 1, TT the thread).
fn dump_of(dir: &Path, pid: u32) -> anyhow::Result<Vec<PathBuf>> {
    let prefix = format!("callgrind.{pid}.");
    let mut files: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let (dump, _thread) = name.strip_prefix(&prefix)?.split_once('-')?;
            Some((dump.parse().ok()?, entry.path()))
        })
        .collect();
    let last = files.iter().map(|(n, _)| *n).max();
    files.retain(|(n, _)| Some(*n) == last);
    anyhow::ensure!(
        !files.is_empty(),
        "callgrind wrote no dump for {pid} in {}",
        dir.display()
    );
    Ok(files.into_iter().map(|(_, path)| path).collect())
}

/// One thread's totals.
#[derive(Debug, PartialEq)]
struct Totals {
    instructions: f64,
    syscalls: f64,
    /// Last-level misses (instruction reads, data reads and writes), if simulated.
    l2_misses: Option<f64>,
}

/// A dump's totals: its `summary:` line, whose counts are in the order of its `events:`
/// line (Ir, then the caches' events when simulated, then sysCount and sysTime).
fn summary(text: &str) -> anyhow::Result<Totals> {
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .with_context(|| format!("a callgrind dump without `{prefix}`"))
    };
    let events: Vec<&str> = field("events:")?.split_whitespace().collect();
    let line = field("summary:")?;
    // Counts left off at the end are zeros (a thread that made no syscall: ` 0`).
    let counts: Vec<f64> = (line.split_whitespace().map(str::parse))
        .collect::<Result<_, _>>()
        .with_context(|| format!("a callgrind summary not understood: {line}"))?;
    let count = |event: &str| {
        let at = events.iter().position(|e| *e == event)?;
        Some(counts.get(at).copied().unwrap_or(0.0))
    };
    let misses = ["ILmr", "DLmr", "DLmw"].map(count);
    Ok(Totals {
        instructions: count("Ir").context("a callgrind dump without instructions")?,
        syscalls: count("sysCount").unwrap_or(0.0),
        l2_misses: misses
            .iter()
            .all(Option::is_some)
            .then(|| misses.iter().flatten().sum()),
    })
}

/// Functions and their counts over all threads.
#[derive(Default)]
struct Functions {
    inclusive: HashMap<String, f64>,
    selfs: HashMap<String, f64>,
    /// Syscalls by the function that made them.
    syscalls: HashMap<String, f64>,
}

impl Functions {
    /// Adds one thread's counts: threads are disjoint, so every count adds up.
    fn add(&mut self, thread: Functions) {
        for (into, from) in [
            (&mut self.inclusive, thread.inclusive),
            (&mut self.selfs, thread.selfs),
            (&mut self.syscalls, thread.syscalls),
        ] {
            for (name, count) in from {
                *into.entry(name).or_default() += count;
            }
        }
    }

    /// `counts`, most first.
    fn sorted<'a>(&self, counts: &'a HashMap<String, f64>) -> impl Iterator<Item = (&'a str, f64)> {
        let mut sorted: Vec<_> = counts.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        sorted.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
        sorted.into_iter()
    }
}

/// One thread's dump.
fn annotate(file: &Path) -> anyhow::Result<Functions> {
    Ok(Functions {
        inclusive: listing(file, "Ir", true)?,
        selfs: listing(file, "Ir", false)?,
        syscalls: listing(file, "sysCount", false)?,
    })
}

/// `callgrind_annotate`'s list of functions by `event`, merged by function.
fn listing(file: &Path, event: &str, inclusive: bool) -> anyhow::Result<HashMap<String, f64>> {
    let output = Command::new("callgrind_annotate")
        .arg(format!(
            "--inclusive={}",
            if inclusive { "yes" } else { "no" }
        ))
        .args([&format!("--show={event}"), &format!("--sort={event}")])
        .args(["--threshold=100", "--auto=no"])
        .arg(file)
        .stderr(Stdio::null())
        .output()
        .context("cannot run callgrind_annotate")?;
    let mut by_name = HashMap::<String, f64>::new();
    for (name, count) in String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(line_of)
    {
        let entry = by_name.entry(name).or_default();
        // A function inlined into several files is listed once per file: its own counts
        // add up; its inclusive ones nest, so the largest stands for it.
        *entry = match inclusive {
            true => entry.max(count),
            false => *entry + count,
        };
    }
    Ok(by_name)
}

/// `51,412,532 (100.0%)  file:function [object]` as the function (its path without
/// generic arguments) and its count.
fn line_of(line: &str) -> Option<(String, f64)> {
    let line = line.trim();
    let (count, rest) = line.split_once(' ')?;
    let count: f64 = count.replace(',', "").parse().ok()?;
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('(')?.split_once(')')?.1.trim();
    let rest = rest.rsplit_once(" [").map_or(rest, |(f, _)| f);
    // `file:function`: the file ends at the first single colon.
    let bytes = rest.as_bytes();
    let colon = (0..bytes.len()).find(|&i| {
        bytes[i] == b':' && bytes.get(i + 1) != Some(&b':') && (i == 0 || bytes[i - 1] != b':')
    })?;
    let function = &rest[colon + 1..];
    (!function.is_empty() && function != "PROGRAM TOTALS")
        .then(|| (crate::profile::path_of(function), count))
}

/// tollgate's functions, and the pass-through's.
fn is_own(name: &str) -> bool {
    name.starts_with("tollgate::") || name.starts_with("tollgate_bench::")
}

fn function_table<'a>(
    heading: &str,
    functions: impl Iterator<Item = (&'a str, f64)>,
    requests: f64,
    n: usize,
) -> String {
    let mut table = Table::new(&[heading, "instructions per request"]);
    for (name, count) in functions.take(n) {
        let short: String = name.chars().take(110).collect();
        table.row(&[format!("`{short}`"), format!("{:.0}", count / requests)]);
    }
    table.finish()
}

#[cfg(test)]
mod tests {
    use super::{Totals, line_of, summary};

    #[test]
    fn summaries_are_read_by_their_events() {
        let plain = "events: Ir sysCount sysTime\nfn=x\nsummary: 1000 7\n";
        assert_eq!(
            summary(plain).unwrap(),
            Totals {
                instructions: 1000.0,
                syscalls: 7.0,
                l2_misses: None
            }
        );
        let simulated = "events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw sysCount sysTime\n\
                         summary: 5000 900 800 40 30 20 3 5 8\n";
        assert_eq!(
            summary(simulated).unwrap(),
            Totals {
                instructions: 5000.0,
                syscalls: 0.0,
                l2_misses: Some(16.0)
            }
        );
        assert!(summary("events: Ir\n").is_err());
    }

    #[test]
    fn annotate_lines_give_the_function_without_file_or_generics() {
        let line = "  6,244,760 ( 2.08%)  /rustc/x/library/core/src/hash/sip.rs:<core::hash::sip::Hasher<S> as core::hash::Hasher>::write [/bin/t]";
        assert_eq!(
            line_of(line),
            Some(("core::hash::sip::Hasher::write".into(), 6_244_760.0))
        );
        let line =
            "54,334 (78.05%)  ./time/clock_gettime.c:clock_gettime@@GLIBC_2.17 [/lib/libc.so.6]";
        assert_eq!(
            line_of(line),
            Some(("clock_gettime@@GLIBC_2.17".into(), 54_334.0))
        );
        assert_eq!(line_of("51,412,532 (100.0%)  PROGRAM TOTALS"), None);
        assert_eq!(line_of("Ir                  file:function"), None);
    }
}
