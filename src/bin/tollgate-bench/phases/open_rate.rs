//! Phase 6: latency under a steady load. Every subject gets the same open-loop rate, half
//! the throughput this build's first tollgate reached at 32 connections (the throughput
//! phase, or `--open-loop-rate`), in rounds that go through the subjects in turn: requests are sent when due on
//! as many connections as they need, so a server that falls behind shows it in its
//! latency instead of being sent less.

use super::*;

pub(super) async fn open_rate(
    plan: &Plan,
    subjects: &[Subject],
    findings: &mut Findings,
) -> anyhow::Result<String> {
    let first_tollgate = subjects.iter().position(|s| s.gateway.is_some());
    let half = first_tollgate
        .and_then(|i| findings.throughput_32.get(i))
        .map(|r| (r / 2.0).round());
    let (rate, why) = match (plan.open_rate, half) {
        (Some(rate), _) => (rate, "as `--open-loop-rate` asked".to_string()),
        (None, Some(rate)) => (
            rate,
            format!(
                "half of what {} served at 32 connections",
                first_tollgate.map_or("tollgate", |i| subjects[i].target.name.as_str())
            ),
        ),
        (None, None) => {
            return Ok("## Open loop\n\nNot run: it needs the throughput phase's rate.\n\n".into());
        }
    };
    let mut table = Table::new(&[
        "subject",
        "requests",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "added p50 ms",
        "added p99 ms (rounds: lowest to highest)",
        "CPU µs/request (proxies)",
        "share of its closed loop (32 connections)",
        "failed",
    ]);
    let round = plan.open_rate_time / plan.throughput_rounds as u32;
    let mut runs: Vec<(Vec<Outcome>, Vec<Duration>, Duration)> =
        subjects.iter().map(|_| Default::default()).collect();
    for _ in 0..plan.throughput_rounds {
        for (subject, (outcomes, p99s, cpu)) in subjects.iter().zip(&mut runs) {
            let pids = subject.pids();
            let before = procs::cpu_time(&pids);
            let done = load::open_rate(&subject.target, &plan.fixed(subject), rate, round).await?;
            *cpu += procs::cpu_time(&pids).saturating_sub(before);
            p99s.push(Stats::of(done.iter().map(|o| o.latency).collect()).p99);
            outcomes.extend(done);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let direct = Stats::of(runs[0].0.iter().map(|o| o.latency).collect());
    for (i, (subject, (outcomes, p99s, cpu))) in subjects.iter().zip(&runs).enumerate() {
        // How near its capacity the rate runs a subject: the tail grows steeply near it.
        let share = findings.throughput_32.get(i).map_or("-".into(), |closed| {
            format!("{:.0}%", rate / closed * 100.0)
        });
        let stats = Stats::of(outcomes.iter().map(|o| o.latency).collect());
        let added = p99s
            .iter()
            .zip(&runs[0].1)
            .map(|(p99, direct)| (p99.as_secs_f64() - direct.as_secs_f64()) * 1e3)
            .collect();
        let per_request = cpu.as_secs_f64() * 1e6 / outcomes.len().max(1) as f64;
        table.row(&[
            subject.target.name.clone(),
            outcomes.len().to_string(),
            ms(stats.p50),
            ms(stats.p99),
            ms(stats.p999),
            added_ms(stats.p50, direct.p50),
            format!(
                "{}{}",
                added_ms(stats.p99, direct.p99),
                spread(added, |ms| format!("{ms:+.3}"))
            ),
            match subject.proxies.is_empty() {
                true => "-".into(),
                false => format!("{per_request:.0}"),
            },
            share,
            failures(outcomes).to_string(),
        ]);
        findings.open_p99.push(stats.p99.saturating_sub(direct.p99));
        findings.open_cpu.push(per_request);
    }
    Ok(format!(
        "## Open loop\n\n{rate:.0} non-streamed completions per second ({why}), each sent when due on an idle connection or a new one, \
         in {} rounds of {:.1} s per subject that go through the subjects in turn. Latency \
         counts from the send. CPU covers every process of a subject (a cluster's balancer, \
         replicas, Redis and PostgreSQL). The share is the rate over what the subject served \
         closed loop at 32 connections in the throughput phase, when it ran.\n\n{}\n",
        plan.throughput_rounds,
        round.as_secs_f64(),
        table.finish()
    ))
}
