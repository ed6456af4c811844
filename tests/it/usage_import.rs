//! `tollgate usage import`: another gateway's history brought into the ledger. Every line
//! is priced at the price in force at its time; running it again adds nothing; the
//! running totals move with it (`ledger verify` finds nothing); a bad line stops it,
//! naming its number; a month whose invoice is final is refused.

use crate::helpers;

use std::io::Write;
use std::process::Command;

use helpers::binary::{BIN, cli, write_config};
use rust_decimal::Decimal;
use serde_json::{Value, json};

/// Runs `tollgate usage import FILE --json`: success, and what it printed (or its error).
fn import(config: &std::path::Path, file: &std::path::Path) -> (bool, Value, String) {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(["usage", "import", "--json"])
        .arg(file)
        .output()
        .unwrap();
    let printed = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let error = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.success(), printed, error)
}

fn write_lines(path: &std::path::Path, lines: &[Value]) {
    let mut file = std::fs::File::create(path).unwrap();
    for line in lines {
        writeln!(file, "{line}").unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_history_is_priced_once_and_final_months_are_refused() {
    let (sim, _) = tollgate::sim::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), sim);
    cli(&config, &["prices", "sync"]);
    cli(&config, &["accounts", "create", "acme"]);
    let key: Value = serde_json::from_str(&cli(
        &config,
        &["keys", "create", "--account", "acme", "--json"],
    ))
    .unwrap();
    let key_id = key["id"].as_i64().unwrap();
    // October 2026 on megrez/chip3: 0.0006 in and 0.0012 out per 1,000 (the sample prices).
    let lines: Vec<Value> = (0..1000)
        .map(|n| {
            json!({"request_id": format!("other-{n:04}"), "account": "acme", "key_id": key_id,
                "model": "megrez-7b-instruct", "chip": "chip3",
                "started_at": format!("2026-10-{:02}T0{}:00:00Z", 1 + n % 28, n % 10),
                "prompt_tokens": 1000, "completion_tokens": 500})
        })
        .collect();
    let file = dir.path().join("history.jsonl");
    write_lines(&file, &lines);
    let (ok, imported, error) = import(&config, &file);
    assert!(ok, "{error}");
    assert_eq!(
        (imported["lines"].as_u64(), imported["new_records"].as_i64()),
        (Some(1000), Some(1000))
    );
    let (ok, again, error) = import(&config, &file);
    assert!(ok, "{error}");
    assert_eq!(again["new_records"], 0, "imported once, whatever the runs");

    // Each record at its price: 1000 × 0.0006 / 1000 + 500 × 0.0012 / 1000 = 0.0012.
    let invoice: Value = serde_json::from_str(&cli(
        &config,
        &[
            "invoices",
            "show",
            "--account",
            "acme",
            "--period",
            "2026-10",
        ],
    ))
    .unwrap();
    let exact: Decimal = invoice["total_exact"].as_str().unwrap().parse().unwrap();
    assert_eq!(exact, Decimal::new(12, 1), "1,000 records at 0.0012");
    let verified: Value =
        serde_json::from_str(&cli(&config, &["ledger", "verify", "--json"])).unwrap();
    assert_eq!(verified["differences"], json!([]));

    // A bad line stops the import and names it; what came before it is in.
    let mut bad = vec![
        json!({"request_id": "late-1", "account": "acme", "key_id": key_id, "model": "megrez-7b-instruct",
            "chip": "chip3", "started_at": "2026-11-02T00:00:00Z", "prompt_tokens": 10}),
        json!({"request_id": "late-2", "account": "nobody", "key_id": key_id, "model": "megrez-7b-instruct",
            "chip": "chip3", "started_at": "2026-11-02T00:00:00Z"}),
    ];
    write_lines(&file, &bad);
    let (ok, _, error) = import(&config, &file);
    assert!(!ok);
    assert!(
        error.contains("line 2") && error.contains("no account named 'nobody'"),
        "{error}"
    );
    for (field, value) in [
        ("model", json!("no-such-model")),
        ("started_at", json!("2099-01-01T00:00:00Z")),
        ("prompt_tokens", json!(-1)),
        ("prompt_tokens", json!("12")),
        ("key_id", json!(9999)),
    ] {
        let mut line = bad[0].clone();
        line[field] = value.clone();
        write_lines(&file, &[line]);
        let (ok, _, error) = import(&config, &file);
        assert!(
            !ok && error.contains("line 1"),
            "{field} = {value}: {error}"
        );
    }
    // An endpoint is one records give: a kind, or a dialect's own name (Zhipu's
    // asynchronous chat is `async_chat`); any other is refused by name.
    let mut line = bad[0].clone();
    line["endpoint"] = json!("teleport");
    write_lines(&file, &[line.clone()]);
    let (ok, _, error) = import(&config, &file);
    assert!(
        !ok && error.contains("no endpoint is called 'teleport'") && error.contains("async_chat"),
        "{error}"
    );
    line["endpoint"] = json!("async_chat");
    line["request_id"] = json!("late-async");
    write_lines(&file, &[line]);
    let (ok, imported, error) = import(&config, &file);
    assert!(ok && imported["new_records"] == 1, "{error}");
    let november = cli(
        &config,
        &[
            "usage",
            "export",
            "--from",
            "2026-11-01",
            "--to",
            "2026-12-01",
        ],
    );
    let exported: Value = (november.lines())
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["request_id"] == "late-async")
        .expect("the line is in the ledger");
    assert_eq!(exported["endpoint"], "async_chat");

    // October's invoice is made final: its usage can no longer change.
    cli(
        &config,
        &[
            "invoices",
            "finalize",
            "--account",
            "acme",
            "--period",
            "2026-10",
        ],
    );
    bad[1] = json!({"request_id": "late-october", "account": "acme", "key_id": key_id,
        "model": "megrez-7b-instruct", "chip": "chip3", "started_at": "2026-10-15T00:00:00Z"});
    write_lines(&file, &bad[1..]);
    let (ok, _, error) = import(&config, &file);
    assert!(!ok && error.contains("is final"), "{error}");

    // October exported, gzip-compressed: every record, as JSON lines.
    let gz = dir.path().join("october.jsonl.gz");
    let gz_text = gz.to_str().unwrap();
    let args = [
        "usage",
        "export",
        "--from",
        "2026-10-01",
        "--to",
        "2026-11-01",
    ];
    cli(
        &config,
        &[&args[..], &["--gzip", "--out", gz_text]].concat(),
    );
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(&gz).unwrap()),
        &mut text,
    )
    .unwrap();
    assert_eq!(text.lines().count(), 1000);
    assert!(text.lines().all(|l| l.contains("\"account\":\"acme\"")));

    // Its first half retired: archived, gone from the ledger, October's figures as they were.
    let retire = |extra: &[&str]| {
        Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .args(["usage", "retire", "--before", "2026-10-15"])
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = retire(&[]);
    assert!(
        !refused.status.success(),
        "retiring without an archive is asked for"
    );
    let archive = dir.path().join("early.jsonl");
    let done = retire(&["--archive", archive.to_str().unwrap()]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let archived = std::fs::read_to_string(&archive).unwrap();
    let early = (0..1000).filter(|n| 1 + n % 28 < 15).count();
    assert_eq!(archived.lines().count(), early, "October 1 to 14");
    let verified: Value =
        serde_json::from_str(&cli(&config, &["ledger", "verify", "--json"])).unwrap();
    assert_eq!(
        (verified["differences"].clone(), verified["rollups"].clone()),
        (json!([]), json!([]))
    );
    let report: Value = serde_json::from_str(&cli(
        &config,
        &[
            "report",
            "--from",
            "2026-10-01",
            "--to",
            "2026-11-01",
            "--format",
            "json",
        ],
    ))
    .unwrap();
    assert_eq!(
        report["total_exact"], "1.2",
        "the whole month, from its rollups"
    );
}
