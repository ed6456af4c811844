//! Phases 3 and 4: streams one at a time, and many keys at once.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use super::*;

pub(super) async fn streams(plan: &Plan, subjects: &[Subject]) -> anyhow::Result<String> {
    let mut table = Table::new(&[
        "subject",
        "chunks",
        "streams",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "added TTFT p50 ms",
        "gap mean ms",
        "gap p99 ms",
        "added gap mean ms",
        "failed",
    ]);
    for (chunks, count) in [(20, plan.short_streams), (200, plan.long_streams)] {
        let mut direct: Option<(Stats, Stats)> = None;
        for subject in subjects {
            let outcomes =
                load::sequential(&subject.target, &fixed(subject, chunks, 0, true), count).await?;
            let ttft = Stats::of(outcomes.iter().map(|o| o.first_byte).collect());
            let gaps = Stats::of(
                outcomes
                    .iter()
                    .flat_map(|o| o.gaps.iter().copied())
                    .collect(),
            );
            let (direct_ttft, direct_gaps) = *direct.get_or_insert((ttft, gaps));
            table.row(&[
                subject.target.name.clone(),
                chunks.to_string(),
                count.to_string(),
                ms(ttft.p50),
                ms(ttft.p99),
                added_ms(ttft.p50, direct_ttft.p50),
                ms(gaps.mean),
                ms(gaps.p99),
                added_ms(gaps.mean, direct_gaps.mean),
                failures(&outcomes).to_string(),
            ]);
        }
    }
    Ok(format!(
        "## Streams\n\nOne stream at a time; the simulator sends a chunk every millisecond, \
         then the usage chunk (include_usage). TTFT is the time to the first body bytes; a gap \
         is the time between two `data:` events as the client reads them.\n\n{}\n",
        table.finish()
    ))
}

pub(super) async fn many_keys(plan: &Plan, subjects: &[Subject]) -> anyhow::Result<String> {
    let mut table = Table::new(&[
        "subject",
        "workload",
        "requests/s",
        "200",
        "429",
        "other",
        "p50 ms",
        "p99 ms",
        "ledger rows = 200s",
        "RSS after MiB",
    ]);
    let mut keys_count = 0;
    let mut peaks_reset = true;
    for subject in subjects {
        let Some(gateway) = &subject.gateway else {
            continue;
        };
        keys_count = gateway.keys.len();
        // The peak the memory table gives (and the goal judges) is this phase's: a subject
        // that fell behind in the open loop held its backlog's connections at its peak.
        peaks_reset &= procs::reset_peak_rss(&subject.pids());
        let keys = Arc::new(gateway.keys.clone());
        let body = chat_body(3, false, 0);
        let each = Workload::EachInTurn {
            keys: keys.clone(),
            next: Arc::new(AtomicUsize::new(0)),
            body: body.clone(),
        };
        let zipf = Workload::zipf(gateway.keys.clone(), 1.0, body);
        for (name, workload, stop) in [
            ("each key once", each, Stop::Requests(keys.len())),
            ("Zipf-like", zipf, Stop::After(plan.zipf)),
        ] {
            let before = ledger_rows(subject).await?.unwrap_or_default();
            let (outcomes, elapsed) =
                load::closed_loop(&subject.target, &workload, 32, stop).await?;
            let after = ledger_rows(subject).await?.unwrap_or_default();
            let count = |status: u16| outcomes.iter().filter(|o| o.status == status).count();
            let (ok, limited) = (count(200), count(429));
            let stats = Stats::of(outcomes.iter().map(|o| o.latency).collect());
            let rss = procs::memory_kb(&subject.pids(), "VmRSS");
            table.row(&[
                subject.target.name.clone(),
                name.into(),
                format!("{:.0}", outcomes.len() as f64 / elapsed.as_secs_f64()),
                ok.to_string(),
                limited.to_string(),
                (outcomes.len() - ok - limited).to_string(),
                ms(stats.p50),
                ms(stats.p99),
                if (after - before) as usize == ok {
                    "yes".into()
                } else {
                    format!("no: {} rows", after - before)
                },
                format!("{:.1}", rss as f64 / 1024.0),
            ]);
        }
    }
    Ok(format!(
        "## Many keys\n\n{keys_count} keys on one account, 32 connections. First every key \
         once, in turn; then keys drawn with probability proportional to 1/rank for {:.0} s. \
         Every tenth rank may send one request a minute, so those keys go over their limit \
         and get 429 (no ledger row). {}\n\n{}\n",
        plan.zipf.as_secs_f64(),
        match peaks_reset {
            true =>
                "Each gateway's peak RSS was reset as this phase began: the memory table's \
                     peak for it is of this phase and after.",
            false =>
                "Each gateway's peak RSS could not be reset as this phase began: the \
                      memory table's peak for it is of the whole run.",
        },
        table.finish()
    ))
}
