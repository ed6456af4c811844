//! Phase 5: many streams open at once. Each single-process subject (not nginx, whose
//! test configuration takes few connections, nor a cluster behind it) gets `Plan::open_streams` streams of 40 chunks 100 ms apart
//! (4 s each), each on a connection of its own, started evenly over one second; while
//! they run, the proxy's resident set and the streams open are sampled every 50 ms.
//! Memory per open stream is the peak above the proxy's resident set just before, over
//! the most streams open at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use serde_json::json;

use super::*;

/// Chunks of each stream and the time between them: 4 s of answer.
const CHUNKS: usize = 40;
const CHUNK_DELAY_MS: u64 = 100;
/// Over how long the streams start.
const RAMP: Duration = Duration::from_secs(1);

pub(super) async fn open_streams(
    plan: &Plan,
    subjects: &[Subject],
    simulator: &Process,
    findings: &mut Findings,
) -> anyhow::Result<String> {
    findings.open_streams = subjects.iter().map(|_| None).collect();
    // A proxy holds two descriptors per stream (the client's connection and the
    // backend's) and tollgate keeps 64 for itself: past that it refuses connections.
    let open_files = tollgate::server::raise_open_file_limit();
    let fit = usize::try_from(open_files.saturating_sub(128) / 2).unwrap_or(usize::MAX);
    let count = plan.open_streams.min(fit);
    let lowered = match count < plan.open_streams {
        true => format!(
            " ({} asked for; this machine's open-file limit of {open_files} descriptors a \
             process, two per proxied stream, allows {count})",
            plan.open_streams
        ),
        false => String::new(),
    };
    let mut table = Table::new(&[
        "subject",
        "streams",
        "completed",
        "failed",
        "most open at once",
        "stream time p50 s",
        "p99 s",
        "proxy RSS before MiB",
        "proxy peak RSS MiB",
        "KB per open stream",
        "simulator peak RSS MiB",
        "ledger rows = streams",
    ]);
    for (i, subject) in subjects.iter().enumerate() {
        // nginx's test configuration takes few connections; a cluster's balancer too.
        if subject.target.name == "nginx" || subject.proxies.len() > 1 {
            continue;
        }
        eprintln!("  {} open streams: {}", count, subject.target.name);
        let rows_before = ledger_rows(subject).await?;
        let pids = subject.pids();
        let before = procs::memory_kb(&pids, "VmRSS");
        let sim_pids = simulator.pids();
        let done = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let sampler = tokio::spawn(peaks(pids.clone(), sim_pids, open.clone(), done.clone()));
        let body = stream_body();
        let started = Instant::now();
        let streams: Vec<_> = (0..count)
            .map(|n| {
                let target = subject.target.clone();
                let workload = Workload::Fixed {
                    auth: subject.auth.clone(),
                    body: body.clone(),
                };
                let at = started + RAMP.mul_f64(n as f64 / count as f64);
                let open = open.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(at.into()).await;
                    load::one(&target, &workload, &open).await
                })
            })
            .collect();
        let mut times = Vec::new();
        let mut failed = 0;
        for stream in streams {
            match stream.await? {
                outcome if outcome.status == 200 && outcome.gaps.len() >= CHUNKS => {
                    times.push(outcome.latency)
                }
                _ => failed += 1,
            }
        }
        done.store(true, Ordering::Relaxed);
        let Peaks {
            rss: peak,
            sim_rss: sim_peak,
            open: most_open,
        } = sampler.await?;
        let rows = match (rows_before, ledger_rows(subject).await?) {
            (Some(a), Some(b)) if (b - a) as usize == count => "yes",
            (Some(_), Some(_)) => "no",
            _ => "-",
        };
        let stats = Stats::of(times.clone());
        let proxied = !subject.proxies.is_empty();
        let per_stream = peak.saturating_sub(before) as f64 / most_open.max(1) as f64;
        findings.open_streams[i] = proxied.then_some((per_stream, failed, peak));
        let mib = |kb: u64| format!("{:.1}", kb as f64 / 1024.0);
        table.row(&[
            subject.target.name.clone(),
            count.to_string(),
            times.len().to_string(),
            failed.to_string(),
            most_open.to_string(),
            format!("{:.2}", stats.p50.as_secs_f64()),
            format!("{:.2}", stats.p99.as_secs_f64()),
            if proxied { mib(before) } else { "-".into() },
            if proxied { mib(peak) } else { "-".into() },
            if proxied {
                format!("{per_stream:.1}")
            } else {
                "-".into()
            },
            mib(sim_peak),
            rows.to_string(),
        ]);
    }
    Ok(format!(
        "## Open streams\n\n{count} streams at once{lowered}, each on its own connection: {CHUNKS} \
         chunks {CHUNK_DELAY_MS} ms apart and the usage chunk, started evenly over {:.0} s. A \
         stream fails if it does not end with 200 and every chunk. Memory per open stream is \
         the proxy's peak resident set (sampled every 50 ms) above its resident set just \
         before, over the most streams open at once (connections the client held).\n\n{}\n",
        RAMP.as_secs_f64(),
        table.finish()
    ))
}

/// The highest figures seen while the streams ran.
struct Peaks {
    /// Resident sets (KB) of the proxy and of the simulator.
    rss: u64,
    sim_rss: u64,
    /// Streams open at once, as the client counts them.
    open: usize,
}

/// Samples the resident sets of `pids` and `sim_pids` and the streams `open` every 50 ms
/// until `done`.
async fn peaks(
    pids: Vec<u32>,
    sim_pids: Vec<u32>,
    open: Arc<AtomicUsize>,
    done: Arc<AtomicBool>,
) -> Peaks {
    let mut peaks = Peaks {
        rss: 0,
        sim_rss: 0,
        open: 0,
    };
    while !done.load(Ordering::Relaxed) {
        peaks.rss = peaks.rss.max(procs::memory_kb(&pids, "VmRSS"));
        peaks.sim_rss = peaks.sim_rss.max(procs::memory_kb(&sim_pids, "VmRSS"));
        peaks.open = peaks.open.max(open.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    peaks
}

/// A streamed chat completion of `CHUNKS` chunks `CHUNK_DELAY_MS` apart, with usage.
fn stream_body() -> bytes::Bytes {
    let body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell a short story."}],
        "max_tokens": CHUNKS + 8,
        "stream": true,
        "stream_options": {"include_usage": true},
        "x_sim": {"chunks": CHUNKS, "chunk_delay_ms": CHUNK_DELAY_MS},
    });
    bytes::Bytes::from(body.to_string())
}
