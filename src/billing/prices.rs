//! Price tables (`pricing/*.toml`) and the in-memory price book built from the price ledger.
//!
//! Prices are written as strings (`"0.0012"`) so they stay exact: a TOML float would pass
//! through `f64` before it reached a `Decimal`.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, de};

use crate::config::check_name;

/// One row of a price table, as written by the operator.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceEntry {
    pub model: String,
    /// A chip name, or `*` for every chip of the model without its own price.
    pub chip: String,
    #[serde(deserialize_with = "timestamp")]
    pub effective_from: DateTime<Utc>,
    /// CNY per 1,000 prompt tokens not served from cache (0 when absent: an entry names
    /// only the rates it charges, and at least one).
    #[serde(default, deserialize_with = "money_or_zero")]
    pub input_per_1k: Decimal,
    /// CNY per 1,000 cached prompt tokens; the input price when absent.
    #[serde(default, deserialize_with = "money_opt")]
    pub cached_input_per_1k: Option<Decimal>,
    /// CNY per 1,000 prompt tokens written to the backend's prompt cache (Anthropic's
    /// `cache_creation_input_tokens`); the input price when absent.
    #[serde(default, deserialize_with = "money_opt")]
    pub cache_write_per_1k: Option<Decimal>,
    /// CNY per 1,000 completion tokens.
    #[serde(default, deserialize_with = "money_or_zero")]
    pub output_per_1k: Decimal,
    /// CNY charged once per successful request (rerank, image tasks).
    #[serde(default, deserialize_with = "money_or_zero")]
    pub per_request: Decimal,
    /// CNY per image a successful request or task produced.
    #[serde(default, deserialize_with = "money_or_zero")]
    pub per_image: Decimal,
    /// CNY per task that succeeded (asynchronous chat, workflows).
    #[serde(default, deserialize_with = "money_or_zero")]
    pub per_task: Decimal,
    /// CNY per second of compute a backend reported.
    #[serde(default, deserialize_with = "money_or_zero")]
    pub per_second: Decimal,
    /// CNY per file uploaded to a backend (ComfyUI's input images).
    #[serde(default, deserialize_with = "money_or_zero")]
    pub per_upload: Decimal,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    #[serde(default = "cny")]
    currency: String,
    #[serde(default)]
    prices: Vec<PriceEntry>,
}

fn cny() -> String {
    "CNY".into()
}

/// A price as recorded in the price ledger: an entry plus its immutable version id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceVersion {
    pub id: i64,
    pub entry: PriceEntry,
}

impl PriceVersion {
    pub fn cached_input_per_1k(&self) -> Decimal {
        self.entry
            .cached_input_per_1k
            .unwrap_or(self.entry.input_per_1k)
    }

    pub fn cache_write_per_1k(&self) -> Decimal {
        self.entry
            .cache_write_per_1k
            .unwrap_or(self.entry.input_per_1k)
    }
}

/// Reads every `*.toml` file of `dir`, sorted by name, and checks each entry.
pub fn load_dir(dir: &Path) -> anyhow::Result<Vec<PriceEntry>> {
    let listing = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read pricing folder {}", dir.display()))?;
    let mut files: Vec<_> = listing
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut entries = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        entries.extend(parse_table(&text).with_context(|| format!("in {}", file.display()))?);
    }
    Ok(entries)
}

/// The rates a price entry may name; it names at least one (a free model says
/// `input_per_1k = "0"`), so that an entry whose rates were all misspelt is refused, not
/// free.
pub const RATES: [&str; 9] = [
    "input_per_1k",
    "cached_input_per_1k",
    "cache_write_per_1k",
    "output_per_1k",
    "per_request",
    "per_image",
    "per_task",
    "per_second",
    "per_upload",
];

pub fn parse_table(text: &str) -> anyhow::Result<Vec<PriceEntry>> {
    let file: PriceFile = toml::from_str(text)?;
    let raw: toml::Table = toml::from_str(text)?;
    let raw_entries = raw.get("prices").and_then(toml::Value::as_array);
    for (e, raw) in file.prices.iter().zip(raw_entries.into_iter().flatten()) {
        if !RATES.iter().any(|rate| raw.get(rate).is_some()) {
            bail!(
                "price for {}/{} names no rate: give at least one of {}",
                e.model,
                e.chip,
                RATES.join(", ")
            );
        }
    }
    if file.currency != "CNY" {
        bail!(
            "currency '{}' is not supported: prices are in CNY",
            file.currency
        );
    }
    for e in &file.prices {
        check_name(&e.model).context("price model")?;
        check_name(&e.chip).context("price chip")?;
        let prices = [
            ("input_per_1k", Some(e.input_per_1k)),
            ("cached_input_per_1k", e.cached_input_per_1k),
            ("cache_write_per_1k", e.cache_write_per_1k),
            ("output_per_1k", Some(e.output_per_1k)),
            ("per_request", Some(e.per_request)),
            ("per_image", Some(e.per_image)),
            ("per_task", Some(e.per_task)),
            ("per_second", Some(e.per_second)),
            ("per_upload", Some(e.per_upload)),
        ];
        for (field, price) in prices {
            if let Some(price) = price {
                super::money::check_price(price, field)
                    .map_err(|e2| anyhow::anyhow!("price for {}/{}: {e2}", e.model, e.chip))?;
            }
        }
    }
    Ok(file.prices)
}

/// Every price version, looked up by (model, chip) and time.
#[derive(Debug, Default)]
pub struct PriceBook {
    /// Versions per model, then chip, sorted by `effective_from` (nested so that a lookup
    /// by `&str` needs no owned key).
    by_pair: HashMap<String, HashMap<String, Vec<Arc<PriceVersion>>>>,
    by_id: HashMap<i64, Arc<PriceVersion>>,
}

impl PriceBook {
    pub fn new(versions: Vec<PriceVersion>) -> PriceBook {
        let mut by_pair: HashMap<String, HashMap<String, Vec<Arc<PriceVersion>>>> = HashMap::new();
        let mut by_id = HashMap::new();
        for v in versions {
            let v = Arc::new(v);
            let chips = by_pair.entry(v.entry.model.clone()).or_default();
            chips
                .entry(v.entry.chip.clone())
                .or_default()
                .push(v.clone());
            by_id.insert(v.id, v);
        }
        for list in by_pair.values_mut().flat_map(HashMap::values_mut) {
            list.sort_by_key(|v| v.entry.effective_from);
        }
        PriceBook { by_pair, by_id }
    }

    pub fn version(&self, id: i64) -> Option<&Arc<PriceVersion>> {
        self.by_id.get(&id)
    }

    /// The price in force for `model` on `chip` at `at`: the chip's own price, else the
    /// model's `*` price.
    pub fn in_force(
        &self,
        model: &str,
        chip: &str,
        at: DateTime<Utc>,
    ) -> Option<Arc<PriceVersion>> {
        let chips = self.by_pair.get(model)?;
        [chip, "*"].into_iter().find_map(|c| {
            let list = chips.get(c)?;
            list.iter()
                .rev()
                .find(|v| v.entry.effective_from <= at)
                .cloned()
        })
    }

    /// Every version, by model, then chip, then effective time.
    pub fn all(&self) -> Vec<&Arc<PriceVersion>> {
        let mut all: Vec<_> = self.by_id.values().collect();
        all.sort_by(|a, b| {
            (&a.entry.model, &a.entry.chip, a.entry.effective_from).cmp(&(
                &b.entry.model,
                &b.entry.chip,
                b.entry.effective_from,
            ))
        });
        all
    }

    /// Whether any price, current or future, exists for this pair.
    pub fn covers(&self, model: &str, chip: &str) -> bool {
        self.by_pair
            .get(model)
            .is_some_and(|chips| chips.contains_key(chip) || chips.contains_key("*"))
    }
}

fn timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Toml(toml::value::Datetime),
        Text(String),
    }
    let text = match Raw::deserialize(d)? {
        Raw::Toml(t) => t.to_string(),
        Raw::Text(s) => s,
    };
    DateTime::parse_from_rfc3339(&text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            de::Error::custom(format!(
                "effective_from '{text}' must be a date-time with an offset, e.g. 2026-01-01T00:00:00+08:00"
            ))
        })
}

struct MoneyVisitor;

impl de::Visitor<'_> for MoneyVisitor {
    type Value = Decimal;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a decimal price written as a string, e.g. \"0.0012\"")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Decimal, E> {
        super::money::parse_plain(s.trim()).ok_or_else(|| {
            E::custom(format!(
                "'{s}' is not a plain decimal number (digits, one optional point, e.g. \"12.50\")"
            ))
        })
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Decimal, E> {
        Ok(Decimal::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Decimal, E> {
        Ok(Decimal::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Decimal, E> {
        Err(E::custom(format!(
            "{v} is a float; write it as a string (\"{v}\") so it stays exact"
        )))
    }
}

fn money<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    d.deserialize_any(MoneyVisitor)
}

/// An amount of money from JSON or TOML: a decimal string or an integer, never a float
/// (which would have passed through `f64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money(pub Decimal);

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Money, D::Error> {
        money(d).map(Money)
    }
}

fn money_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    money(d).map(Some)
}

fn money_or_zero<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    money(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn table(extra: &str) -> String {
        format!(
            "[[prices]]\nmodel = \"m\"\nchip = \"*\"\neffective_from = 2026-01-01T00:00:00+08:00\n{extra}"
        )
    }

    #[test]
    fn prices_are_read_exactly_from_strings() {
        let entries = parse_table(&table("input_per_1k = \"0.00000001\"\n")).unwrap();
        assert_eq!(
            entries[0].input_per_1k,
            Decimal::from_str("0.00000001").unwrap()
        );
        assert_eq!(entries[0].output_per_1k, Decimal::ZERO);
        assert_eq!(
            entries[0].effective_from,
            DateTime::parse_from_rfc3339("2025-12-31T16:00:00Z").unwrap()
        );
    }

    #[test]
    fn an_entry_names_only_the_rates_it_charges_and_at_least_one() {
        let entries = parse_table(&table("per_image = \"0.1\"\n")).unwrap();
        assert_eq!(entries[0].input_per_1k, Decimal::ZERO);
        assert_eq!(entries[0].per_image, Decimal::from_str("0.1").unwrap());
        let free = parse_table(&table("input_per_1k = \"0\"\n")).unwrap();
        assert_eq!(free[0].input_per_1k, Decimal::ZERO);
        let err = parse_table(&table("")).unwrap_err().to_string();
        assert!(
            err.contains("m/*") && err.contains("names no rate"),
            "{err}"
        );
    }

    #[test]
    fn float_prices_are_refused() {
        let err = parse_table(&table("input_per_1k = 0.1\n")).unwrap_err();
        assert!(
            format!("{err:#}").contains("write it as a string"),
            "{err:#}"
        );
    }

    #[test]
    fn the_latest_version_in_force_wins_and_the_wildcard_is_a_fallback() {
        let entry = |chip: &str, from: &str, input: i64| PriceEntry {
            model: "m".into(),
            chip: chip.into(),
            effective_from: DateTime::parse_from_rfc3339(from).unwrap().into(),
            input_per_1k: Decimal::from(input),
            cached_input_per_1k: None,
            cache_write_per_1k: None,
            output_per_1k: Decimal::ZERO,
            per_request: Decimal::ZERO,
            per_image: Decimal::ZERO,
            per_task: Decimal::ZERO,
            per_second: Decimal::ZERO,
            per_upload: Decimal::ZERO,
        };
        let book = PriceBook::new(vec![
            PriceVersion {
                id: 1,
                entry: entry("a", "2026-01-01T00:00:00Z", 1),
            },
            PriceVersion {
                id: 2,
                entry: entry("a", "2026-02-01T00:00:00Z", 2),
            },
            PriceVersion {
                id: 3,
                entry: entry("*", "2026-01-01T00:00:00Z", 9),
            },
        ]);
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().into();
        assert_eq!(
            book.in_force("m", "a", at("2026-01-31T23:59:59Z"))
                .unwrap()
                .id,
            1
        );
        assert_eq!(
            book.in_force("m", "a", at("2026-02-01T00:00:00Z"))
                .unwrap()
                .id,
            2
        );
        assert_eq!(
            book.in_force("m", "b", at("2026-03-01T00:00:00Z"))
                .unwrap()
                .id,
            3
        );
        assert!(
            book.in_force("m", "a", at("2025-12-31T00:00:00Z"))
                .is_none()
        );
    }
}
