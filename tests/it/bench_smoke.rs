//! The benchmark itself works: a `--quick` run of `tollgate-bench` (few requests, 300
//! keys) against the simulator, nginx when installed, and a tollgate, and its Markdown
//! says what a full run would: no failed request, one ledger row per answered request,
//! 429s for the keys over their limit, every open stream completed and recorded; and
//! another build (here the `tollgate` binary)
//! measured beside it with `--compare`. Speed is not judged here (see bench/README.md).

use std::process::Command;

fn rows<'a>(markdown: &'a str, section: &str) -> Vec<Vec<&'a str>> {
    let start = markdown
        .find(&format!("## {section}"))
        .unwrap_or_else(|| panic!("no '{section}' section in:\n{markdown}"));
    markdown[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect()
}

/// A `--quick` run of the benchmark with `args` (and `--synchronous normal`): its Markdown.
fn quick_run(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.md");
    let status = Command::new(env!("CARGO_BIN_EXE_tollgate-bench"))
        .args(["--quick", "--synchronous", "normal"])
        .args(args)
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "tollgate-bench {args:?} failed (a cluster run needs nginx, PostgreSQL and Redis, \
         which scripts/test installs)"
    );
    std::fs::read_to_string(&out).unwrap()
}

#[test]
fn a_quick_run_measures_every_subject_and_loses_no_record() {
    let compared = env!("CARGO_BIN_EXE_tollgate");
    let markdown = quick_run(&["--keys", "300", "--compare", compared]);

    let latency = rows(&markdown, "Latency at concurrency 1");
    let subjects: Vec<&str> = latency.iter().map(|r| r[0]).collect();
    assert_eq!(subjects[0], "direct");
    let gateways = ["tollgate (normal)", "tollgate (normal, compared build)"];
    assert_eq!(subjects[subjects.len() - 2..], gateways);
    for section in [
        "Latency at concurrency 1",
        "Throughput",
        "Open loop",
        "Streams",
    ] {
        for row in rows(&markdown, section) {
            assert_eq!(
                *row.last().unwrap(),
                "0",
                "failed requests in {section}: {row:?}"
            );
        }
    }
    let open_streams = rows(&markdown, "Open streams");
    assert!(open_streams.iter().all(|r| r[0] != "nginx"));
    for row in &open_streams {
        assert_eq!((row[1], row[2], row[3]), ("100", "100", "0"), "{row:?}");
        if gateways.contains(&row[0]) {
            assert_eq!(*row.last().unwrap(), "yes", "a ledger row per stream");
        }
    }
    let throughput = rows(&markdown, "Throughput");
    assert_eq!(
        throughput.len(),
        2 * subjects.len(),
        "32 and 256 connections"
    );
    for tollgate in throughput.iter().filter(|r| gateways.contains(&r[0])) {
        assert_eq!(
            tollgate[2], tollgate[9],
            "ledger rows/s equal answered requests/s"
        );
    }

    let keys = rows(&markdown, "Many keys");
    assert_eq!(keys.len(), 2 * gateways.len());
    for (gateway, pair) in gateways.iter().zip(keys.chunks(2)) {
        let (each, zipf) = (&pair[0], &pair[1]);
        assert_eq!(each[0], *gateway);
        assert_eq!((each[1], each[3], each[4]), ("each key once", "300", "0"));
        assert_eq!(zipf[1], "Zipf-like");
        assert!(
            zipf[4].parse::<u64>().unwrap() > 0,
            "keys over their limit get 429: {zipf:?}"
        );
        assert_eq!(zipf[5], "0", "nothing but 200 and 429");
    }
    for row in &keys {
        assert_eq!(row[8], "yes", "one ledger row per 200: {row:?}");
    }
    // The goal against nginx's throughput is there only when nginx is.
    let has_nginx = subjects.contains(&"nginx");
    let nginx_installed = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .any(|p| std::path::Path::new(p).exists());
    assert_eq!(
        has_nginx, nginx_installed,
        "nginx is measured when installed"
    );
    // Latency p50 and p99, throughput at 32 and 256 against the pass-through, CPU,
    // memory with the many keys, per open stream, and the open streams' failures.
    assert_eq!(rows(&markdown, "Goals").len(), 8 * gateways.len());
}

#[test]
fn a_quick_cluster_run_measures_two_replicas_on_postgres_and_redis_and_loses_no_record() {
    let markdown = quick_run(&["--keys", "100", "--cluster"]);
    let cluster = "tollgate cluster (2 replicas, PostgreSQL + Redis, nginx)";
    let latency = rows(&markdown, "Latency at concurrency 1");
    assert_eq!(latency.last().unwrap()[0], cluster);
    for section in [
        "Latency at concurrency 1",
        "Throughput",
        "Open loop",
        "Streams",
    ] {
        for row in rows(&markdown, section) {
            assert_eq!(
                *row.last().unwrap(),
                "0",
                "failed requests in {section}: {row:?}"
            );
        }
    }
    assert!(rows(&markdown, "Open loop").iter().any(|r| r[0] == cluster));
    for row in rows(&markdown, "Throughput")
        .iter()
        .filter(|r| r[0] == cluster)
    {
        assert_eq!(
            row[2], row[9],
            "ledger rows/s equal answered requests/s: {row:?}"
        );
    }
    let keys = rows(&markdown, "Many keys");
    let each = keys
        .iter()
        .find(|r| r[0] == cluster && r[1] == "each key once")
        .unwrap();
    assert_eq!((each[3], each[4], each[8]), ("100", "0", "yes"));
    let section = &markdown[markdown.find("## Cluster").expect("a cluster section")..];
    let trips: f64 = section
        .split("settlement's calls, counted by Redis's commandstats): ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .expect("Redis round trips per request");
    // The bench's keys have no tpm, so each replica takes a key's allowance in slices
    // (up to 100 requests a round trip): far fewer scripts than requests, but some.
    assert!(
        trips > 0.0 && trips < 0.5,
        "slices of the allowance, not a script per request: {trips}"
    );
    assert!(section.contains("PostgreSQL ingest: "), "{section}");
    let goals = rows(&markdown, "Goals");
    let cluster_goals = goals.iter().filter(|r| r[0] == cluster).count();
    assert_eq!(
        cluster_goals, 4,
        "throughput, added p99 in the open loop, CPU and ingest are judged"
    );
}
