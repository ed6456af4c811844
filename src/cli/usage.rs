//! `tollgate usage`: import history, export records, retire old ones.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;

use crate::config::Config;
use crate::domain::reports::parse_instant;
use crate::domain::usage_export::{self, Format};
use crate::store;

use super::emit;

#[derive(Subcommand)]
pub enum UsageCommand {
    /// Import usage records from FILE (JSON lines; `-`: standard input): each checked,
    /// priced at the price in force at its time, and skipped if its request id is already
    /// in the ledger. Records of a month whose invoice is final are refused.
    Import {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Write the records that started in a period, oldest first, as JSON lines (what
    /// `usage import` reads) or CSV, to standard output or `--out`; `--gzip` compresses.
    Export {
        /// The first day (`2026-11-01`, local midnight in the billing time zone) or an
        /// RFC 3339 instant.
        #[arg(long)]
        from: String,
        /// The end, excluded, as `--from`.
        #[arg(long)]
        to: String,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
        #[arg(long)]
        gzip: bool,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Retire the records that started before a day: they are written to `--archive`
    /// (JSON lines, gzip with `--gzip`) and deleted from the ledger in batches, while the
    /// rollups, balances and invoices that sum them stay. The period then takes no new
    /// records, and sums that would need its records (not whole hours) are refused.
    Retire {
        /// The first day kept (`2026-10-01`, local midnight in the billing time zone).
        #[arg(long)]
        before: String,
        /// Where the retired records go; without it they are deleted unarchived, which
        /// needs `--no-archive`.
        #[arg(long, required_unless_present = "no_archive")]
        archive: Option<PathBuf>,
        #[arg(long)]
        no_archive: bool,
        #[arg(long)]
        gzip: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

pub async fn run(config: &Path, command: UsageCommand) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let db = store::open(&config).await?;
    let zone = config.billing.zone();
    match command {
        UsageCommand::Import { file, json } => {
            let sink = Arc::new(store::Sink::open(&config.database).await?.for_bulk()?);
            let started = std::time::Instant::now();
            let input: Box<dyn std::io::BufRead> = match file.to_str() {
                Some("-") => Box::new(std::io::stdin().lock()),
                _ => Box::new(std::io::BufReader::new(
                    std::fs::File::open(&file)
                        .with_context(|| format!("cannot open {}", file.display()))?,
                )),
            };
            let imported = crate::domain::usage_import::import(&db, sink, zone, input).await;
            // Balances moved (if any batch went in): running gateways read them again.
            store::signal::ChangeSignal::new(&db, &config.database.url, "accounts")
                .announce()
                .await;
            let imported = imported?;
            let seconds = started.elapsed().as_secs_f64();
            emit(json, &imported, || {
                format!(
                    "{} lines read, {} new records, in {seconds:.1} s ({:.0} lines/s)",
                    imported.lines,
                    imported.new_records,
                    imported.lines as f64 / seconds.max(1e-9)
                )
            })
        }
        UsageCommand::Export {
            from,
            to,
            format,
            gzip,
            out,
        } => {
            let from = parse_instant(&from, zone, "from")?;
            let to = parse_instant(&to, zone, "to")?;
            anyhow::ensure!(to > from, "--to must be after --from");
            let format = match format {
                ExportFormat::Jsonl => Format::Jsonl,
                ExportFormat::Csv => Format::Csv,
            };
            let period = (store::to_ms(from), store::to_ms(to));
            let written = write_to(out.as_deref(), gzip, async |file| {
                usage_export::export(&db, period, format, file).await
            })
            .await?;
            eprintln!("{written} records exported");
            Ok(())
        }
        UsageCommand::Retire {
            before,
            archive,
            no_archive: _,
            gzip,
        } => {
            let day = chrono::NaiveDate::parse_from_str(&before, "%Y-%m-%d")
                .with_context(|| format!("--before '{before}' is not a day like 2026-10-01"))?;
            let before = crate::billing::period::day_start(day, zone);
            anyhow::ensure!(
                before <= chrono::Utc::now(),
                "--before {day} has not begun yet"
            );
            let retired =
                crate::domain::retention::retire(&db, before, async |period| match &archive {
                    Some(path) => {
                        write_to(Some(path), gzip, async |file| {
                            usage_export::export(&db, period, Format::Jsonl, file).await
                        })
                        .await
                    }
                    None => Ok(0),
                })
                .await?;
            eprintln!(
                "{} records archived, {} retired from the ledger",
                retired.archived, retired.deleted
            );
            Ok(())
        }
    }
}

/// Runs `write` on `out` (standard output without it), gzip-compressed with `gzip`, and
/// flushes it (and syncs a file to disk) before returning what `write` returned.
async fn write_to<T>(
    out: Option<&Path>,
    gzip: bool,
    write: impl AsyncFnOnce(&mut (dyn Write + Send)) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let file = match out {
        Some(path) => Some(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => None,
    };
    let sink: Box<dyn Write + Send> = match &file {
        Some(file) => Box::new(file),
        None => Box::new(std::io::stdout()),
    };
    let mut buffered = std::io::BufWriter::with_capacity(1 << 20, sink);
    let result = match gzip {
        true => {
            let mut zipped =
                flate2::write::GzEncoder::new(&mut buffered, flate2::Compression::default());
            let result = write(&mut zipped).await?;
            zipped.finish()?;
            result
        }
        false => write(&mut buffered).await?,
    };
    buffered.flush()?;
    drop(buffered);
    if let Some(file) = &file {
        file.sync_all()?;
    }
    Ok(result)
}
