//! What the run ends with: memory, the cluster's section, and the goals the figures meet.

use std::time::Duration;

use super::*;

pub(super) fn memory(subjects: &[Subject], simulator: &Process, findings: &mut Findings) -> String {
    let mut table = Table::new(&["process", "RSS at start MiB", "peak RSS (VmHWM) MiB"]);
    let mb = |kb: u64| format!("{:.1}", kb as f64 / 1024.0);
    for subject in subjects {
        let pids = subject.pids();
        let peak = procs::memory_kb(&pids, "VmHWM");
        findings.peak_rss_kb.push(peak);
        if !subject.proxies.is_empty() {
            let start = subject
                .gateway
                .as_ref()
                .map_or("-".into(), |g| mb(g.rss_at_start_kb));
            table.row(&[subject.target.name.clone(), start, mb(peak)]);
        }
    }
    table.row(&[
        "simulator".into(),
        "-".into(),
        mb(procs::memory_kb(&simulator.pids(), "VmHWM")),
    ]);
    format!("## Memory\n\n{}\n", table.finish())
}

/// What only a cluster has: Redis round trips per request, and how fast one replica's
/// writer can ship records into PostgreSQL.
pub(super) async fn cluster_section(
    plan: &Plan,
    cluster: &crate::cluster::Cluster,
    subject: &Subject,
    findings: &mut Findings,
) -> anyhow::Result<String> {
    let time = plan.throughput / plan.throughput_rounds as u32;
    let per = crate::cluster::per_request(cluster, subject, plan.fixed(subject), time).await?;
    let trips = per.redis_round_trips;
    let cpu: Vec<String> = per
        .cpu_us
        .iter()
        .map(|(name, us)| format!("{name} {us:.0}"))
        .collect();
    let ledger = &subject
        .gateway
        .as_ref()
        .expect("a cluster is a gateway")
        .ledger;
    let batches = if plan.name.starts_with("quick") {
        10
    } else {
        100
    };
    let ingest = crate::cluster::ingest(cluster, ledger, batches).await?;
    findings.ingest = Some(ingest);
    Ok(format!(
        "## Cluster\n\n\
         - Redis round trips per request (32 connections, {:.1} s; admission's script and \
         settlement's calls, counted by Redis's commandstats): {trips:.2}\n\
         - CPU µs per request in that run, by process (the replicas summed): {cpu}\n\
         - PostgreSQL ingest: {:.0} records/s ({batches} statements of 1,000 usage records \
         a millisecond apart, one after the other, as one replica's writer ships a backlog; \
         the statement trigger that charges accounts and posts holds included)\n\n",
        time.as_secs_f64(),
        ingest,
        cpu = cpu.join(", "),
    ))
}

pub(super) fn goals(subjects: &[Subject], findings: &Findings) -> String {
    let mut table = Table::new(&["subject", "goal", "measured", "met"]);
    let passthrough = subjects
        .iter()
        .position(|s| s.target.name == "axum pass-through");
    let direct = findings.latency[0];
    let yes = |met: bool| if met { "yes" } else { "no" }.to_string();
    // The single node a cluster is compared with: this build on SQLite, `normal` if run.
    let single = subjects
        .iter()
        .position(|s| s.target.name == "tollgate (normal)")
        .or_else(|| {
            subjects
                .iter()
                .position(|s| s.target.name.starts_with("tollgate ("))
        });
    for (i, subject) in subjects.iter().enumerate() {
        if subject.gateway.is_none() {
            continue;
        }
        let name = &subject.target.name;
        let mut goal = |what: &str, measured: String, met: bool| {
            table.row(&[name.clone(), what.into(), measured, yes(met)]);
        };
        if name.starts_with("tollgate cluster") {
            if let Some(n) = single {
                let share = findings.throughput_32[i] / findings.throughput_32[n];
                goal(
                    "throughput at 32 connections ≥ 50% of the single node's",
                    format!("{:.0}%", share * 100.0),
                    share >= 0.5,
                );
            }
            if let Some(added) = findings.open_p99.get(i) {
                goal(
                    "added p99 ≤ 5 ms, open loop at half the single node's throughput",
                    ms(*added),
                    *added <= Duration::from_millis(5),
                );
            }
            let cpu = findings.cpu_32[i];
            goal(
                "CPU ≤ 80 µs per request, every process (32 connections)",
                format!("{cpu:.0} µs"),
                cpu <= 80.0,
            );
            if let Some(ingest) = findings.ingest {
                goal(
                    "PostgreSQL ingest ≥ 20,000 records/s",
                    format!("{ingest:.0}/s"),
                    ingest >= 20_000.0,
                );
            }
            continue;
        }
        let p50 = findings.latency[i].p50.saturating_sub(direct.p50);
        let p99 = findings.latency[i].p99.saturating_sub(direct.p99);
        goal(
            "added p50 ≤ 0.20 ms at concurrency 1",
            ms(p50),
            p50 <= Duration::from_micros(200),
        );
        goal(
            "added p99 ≤ 0.35 ms at concurrency 1",
            ms(p99),
            p99 <= Duration::from_micros(350),
        );
        if let Some(n) = passthrough {
            for (connections, rates) in [
                (32, &findings.throughput_32),
                (256, &findings.throughput_256),
            ] {
                let share = rates[i] / rates[n];
                goal(
                    &format!("throughput at {connections} connections ≥ 0.85× the pass-through's"),
                    format!("{share:.2}×"),
                    share >= 0.85,
                );
            }
        }
        let cpu = findings.cpu_32[i];
        goal(
            "proxy CPU ≤ 35 µs per request (32 connections)",
            format!("{cpu:.0} µs"),
            cpu <= 35.0,
        );
        let peak = findings.peak_rss_kb[i] * 1024;
        goal(
            "peak RSS < 100 MB with the many keys",
            format!("{:.1} MB", peak as f64 / 1e6),
            peak < 100_000_000,
        );
        if let Some(Some((per_stream, failed, peak))) = findings.open_streams.get(i) {
            goal(
                "≤ 32 KB per open stream",
                format!("{per_stream:.1} KB"),
                *per_stream <= 32.0,
            );
            goal(
                "open streams: none failed, peak RSS < 512 MB",
                format!("{failed} failed, {:.0} MB", (*peak * 1024) as f64 / 1e6),
                *failed == 0 && *peak * 1024 < 512_000_000,
            );
        }
    }
    format!("## Goals\n\n{}", table.finish())
}
