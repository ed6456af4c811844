//! Price tables (`pricing/*.toml`): entries, their tiers, and the recorded versions the
//! price book (`price_book`) is built from.
//!
//! Prices are written as strings (`"0.0012"`) so they stay exact: a TOML float would pass
//! through `f64` before it reached a `Decimal`.

use std::fmt;
use std::path::Path;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, de};

use crate::config::check_name;

/// One row of a price table, as written by the operator; a tiered row becomes one entry
/// per tier (`parse_table`), each with its `tier` and its tier's token rates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceEntry {
    pub model: String,
    /// A chip name, or `*` for every chip of the model without its own price.
    pub chip: String,
    /// A private deployment's own price (`mif-…`): only its requests are billed at it.
    #[serde(default)]
    pub deployment: Option<String>,
    /// An account's own price (its name): its requests are billed at it rather than at
    /// the list price, from its effective time.
    #[serde(default)]
    pub account: Option<String>,
    #[serde(deserialize_with = "crate::config::timestamp")]
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
    /// CNY per 1,000 reasoning tokens (a thinking model's, part of its completion tokens);
    /// the output price when absent.
    #[serde(default, deserialize_with = "money_opt")]
    pub reasoning_per_1k: Option<Decimal>,
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
    /// CNY per started hour of a private deployment's reserved life (its upstream's
    /// `reserved_from`), charged to its first owner whether it is used or not. Only on a
    /// deployment's own price.
    #[serde(default, deserialize_with = "money_or_zero")]
    pub per_hour: Decimal,
    /// With `account` and no rates: that account pays the list price of this model and
    /// chip (`*`: every chip) less this percent (`"15"`), from `effective_from`
    /// (`discounts::apply` makes its prices).
    #[serde(default, deserialize_with = "money_opt")]
    pub discount_percent: Option<Decimal>,
    /// Token rates by the request's billed prompt tokens (DashScope's input-length
    /// tiers), in place of the row's own token rates; as written, emptied by `parse_table`.
    #[serde(default)]
    pub tiers: Vec<TierRates>,
    /// The prompt sizes this entry prices: every size, unless it is one tier of a tiered
    /// row.
    #[serde(skip)]
    pub tier: PromptTier,
}

/// One tier of a tiered price: its token rates, for prompts up to `up_to_prompt_tokens`
/// billed tokens (above the tier before it); the last tier may leave it out (no bound).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierRates {
    pub up_to_prompt_tokens: Option<u64>,
    #[serde(default, deserialize_with = "money_or_zero")]
    pub input_per_1k: Decimal,
    #[serde(default, deserialize_with = "money_opt")]
    pub cached_input_per_1k: Option<Decimal>,
    #[serde(default, deserialize_with = "money_opt")]
    pub cache_write_per_1k: Option<Decimal>,
    #[serde(default, deserialize_with = "money_or_zero")]
    pub output_per_1k: Decimal,
    #[serde(default, deserialize_with = "money_opt")]
    pub reasoning_per_1k: Option<Decimal>,
}

/// The billed prompt sizes a price version applies to: more than `over` tokens, and at
/// most `up_to` (no bound when `None`). Every size for an untiered price.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PromptTier {
    pub over: u64,
    pub up_to: Option<u64>,
}

impl PromptTier {
    pub fn is_whole(&self) -> bool {
        *self == PromptTier::default()
    }

    /// `128k–256k`-style label; empty for an untiered price.
    pub fn label(&self) -> String {
        let k = |n: u64| match n % 1000 {
            0 => format!("{}k", n / 1000),
            _ => n.to_string(),
        };
        match (self.over, self.up_to) {
            (0, None) => String::new(),
            (0, Some(up_to)) => format!("≤{}", k(up_to)),
            (over, Some(up_to)) => format!("{}–{}", k(over), k(up_to)),
            (over, None) => format!(">{}", k(over)),
        }
    }
}

impl PriceEntry {
    /// Who and what it prices, beside model and chip: `model/chip`, then the deployment,
    /// account and tier it is limited to.
    pub fn scope(&self) -> String {
        let mut scope = format!("{}/{}", self.model, self.chip);
        if let Some(d) = &self.deployment {
            scope.push_str(&format!(" deployment {d}"));
        }
        if let Some(a) = &self.account {
            scope.push_str(&format!(" account {a}"));
        }
        if !self.tier.is_whole() {
            scope.push_str(&format!(" prompt {}", self.tier.label()));
        }
        scope
    }
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

    pub fn reasoning_per_1k(&self) -> Decimal {
        self.entry
            .reasoning_per_1k
            .unwrap_or(self.entry.output_per_1k)
    }
}

/// Reads every `*.toml` file of `dir`, sorted by name, and checks each entry (accounts'
/// discounts as written: `discounts::apply` turns them into prices).
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
pub const RATES: [&str; 11] = [
    "input_per_1k",
    "cached_input_per_1k",
    "cache_write_per_1k",
    "output_per_1k",
    "reasoning_per_1k",
    "per_request",
    "per_image",
    "per_task",
    "per_second",
    "per_upload",
    "per_hour",
];

pub fn parse_table(text: &str) -> anyhow::Result<Vec<PriceEntry>> {
    let file: PriceFile = toml::from_str(text)?;
    let raw: toml::Table = toml::from_str(text)?;
    let raw_entries = raw.get("prices").and_then(toml::Value::as_array);
    for (e, raw) in file.prices.iter().zip(raw_entries.into_iter().flatten()) {
        let tiered = raw.get("tiers").is_some();
        if let Some(percent) = e.discount_percent {
            if e.account.is_none() {
                bail!(
                    "price for {}: a discount names the account it is for",
                    e.scope()
                );
            }
            if tiered || e.deployment.is_some() || RATES.iter().any(|r| raw.get(r).is_some()) {
                bail!(
                    "price for {}: a discount is a percent off the list price, instead of rates \
                     (and not of a deployment's own price)",
                    e.scope()
                );
            }
            if percent <= Decimal::ZERO || percent >= Decimal::ONE_HUNDRED {
                bail!(
                    "price for {}: discount_percent must be between 0 and 100",
                    e.scope()
                );
            }
            continue;
        }
        if !tiered && !RATES.iter().any(|rate| raw.get(rate).is_some()) {
            bail!(
                "price for {} names no rate: give at least one of {}, or tiers",
                e.scope(),
                RATES.join(", ")
            );
        }
        let own_token_rate = TOKEN_RATES.iter().find(|rate| raw.get(**rate).is_some());
        if let (true, Some(rate)) = (tiered, own_token_rate) {
            bail!(
                "price for {}: {rate} belongs in each of its tiers, not beside them",
                e.scope()
            );
        }
    }
    if file.currency != "CNY" {
        bail!(
            "currency '{}' is not supported: prices are in CNY",
            file.currency
        );
    }
    let mut entries = Vec::new();
    for e in file.prices {
        if !e.per_hour.is_zero() && e.deployment.is_none() {
            bail!(
                "price for {}: per_hour is for a private deployment's reserved hours; name it \
                 with deployment = \"mif-…\"",
                e.scope()
            );
        }
        check_name(&e.model).context("price model")?;
        check_name(&e.chip).context("price chip")?;
        for name in [&e.deployment, &e.account].into_iter().flatten() {
            check_name(name).with_context(|| format!("price for {}", e.scope()))?;
        }
        if e.discount_percent.is_some() {
            entries.push(e);
            continue;
        }
        for e in split_tiers(e)? {
            check_rates(&e)?;
            entries.push(e);
        }
    }
    Ok(entries)
}

/// The token rates a tier sets in place of its row's.
const TOKEN_RATES: [&str; 5] = [
    "input_per_1k",
    "cached_input_per_1k",
    "cache_write_per_1k",
    "output_per_1k",
    "reasoning_per_1k",
];

/// A tiered row as one entry per tier, each with its bounds and token rates; an untiered
/// row as itself. Bounds must rise, and only the last tier may leave its out.
fn split_tiers(mut row: PriceEntry) -> anyhow::Result<Vec<PriceEntry>> {
    let tiers = std::mem::take(&mut row.tiers);
    if tiers.is_empty() {
        return Ok(vec![row]);
    }
    let mut over = 0;
    let mut entries = Vec::with_capacity(tiers.len());
    for (i, t) in tiers.iter().enumerate() {
        let last = i + 1 == tiers.len();
        match t.up_to_prompt_tokens {
            Some(up_to) if up_to > over => {}
            None if last => {}
            _ => bail!(
                "price for {}: tier {} must end above {over} prompt tokens (up_to_prompt_tokens), \
                 and only the last tier may leave its end out",
                row.scope(),
                i + 1
            ),
        }
        entries.push(PriceEntry {
            input_per_1k: t.input_per_1k,
            cached_input_per_1k: t.cached_input_per_1k,
            cache_write_per_1k: t.cache_write_per_1k,
            output_per_1k: t.output_per_1k,
            reasoning_per_1k: t.reasoning_per_1k,
            tier: PromptTier {
                over,
                up_to: t.up_to_prompt_tokens,
            },
            ..row.clone()
        });
        over = t.up_to_prompt_tokens.unwrap_or(u64::MAX);
    }
    Ok(entries)
}

/// Every rate of `e` within the bounds of `money::check_price`.
pub(super) fn check_rates(e: &PriceEntry) -> anyhow::Result<()> {
    let prices = [
        ("input_per_1k", Some(e.input_per_1k)),
        ("cached_input_per_1k", e.cached_input_per_1k),
        ("cache_write_per_1k", e.cache_write_per_1k),
        ("output_per_1k", Some(e.output_per_1k)),
        ("reasoning_per_1k", e.reasoning_per_1k),
        ("per_request", Some(e.per_request)),
        ("per_image", Some(e.per_image)),
        ("per_task", Some(e.per_task)),
        ("per_second", Some(e.per_second)),
        ("per_upload", Some(e.per_upload)),
        ("per_hour", Some(e.per_hour)),
    ];
    for (field, price) in prices {
        if let Some(price) = price {
            super::money::check_price(price, field)
                .map_err(|e2| anyhow::anyhow!("price for {}: {e2}", e.scope()))?;
        }
    }
    Ok(())
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
    fn a_tiered_row_becomes_one_entry_per_tier_with_its_bounds() {
        let tiers = r#"per_request = "0.01"
tiers = [
  { up_to_prompt_tokens = 128000, input_per_1k = "0.0008", output_per_1k = "0.002" },
  { up_to_prompt_tokens = 256000, input_per_1k = "0.0024", output_per_1k = "0.02" },
  { input_per_1k = "0.0048", cached_input_per_1k = "0.001", output_per_1k = "0.048" },
]
"#;
        let entries = parse_table(&table(tiers)).unwrap();
        let bounds: Vec<_> = entries
            .iter()
            .map(|e| (e.tier.over, e.tier.up_to))
            .collect();
        assert_eq!(
            bounds,
            [
                (0, Some(128_000)),
                (128_000, Some(256_000)),
                (256_000, None)
            ]
        );
        assert_eq!(entries[1].output_per_1k, Decimal::from_str("0.02").unwrap());
        assert_eq!(
            entries[2].cached_input_per_1k,
            Some(Decimal::from_str("0.001").unwrap())
        );
        assert!(entries.iter().all(|e| e.tiers.is_empty()));
        assert!(
            entries
                .iter()
                .all(|e| e.per_request == Decimal::from_str("0.01").unwrap())
        );
        assert_eq!(entries[1].tier.label(), "128k–256k");
        assert_eq!(entries[0].tier.label(), "≤128k");
        assert_eq!(entries[2].tier.label(), ">256k");
    }

    #[test]
    fn tiers_must_rise_and_carry_the_token_rates() {
        let falling = r#"tiers = [
  { up_to_prompt_tokens = 256000, input_per_1k = "1" },
  { up_to_prompt_tokens = 128000, input_per_1k = "2" },
]"#;
        let err = parse_table(&table(falling)).unwrap_err().to_string();
        assert!(err.contains("tier 2 must end above 256000"), "{err}");
        let open_middle = r#"tiers = [{ input_per_1k = "1" }, { input_per_1k = "2" }]"#;
        assert!(parse_table(&table(open_middle)).is_err());
        let beside = "input_per_1k = \"1\"\ntiers = [{ input_per_1k = \"2\" }]\n";
        let err = parse_table(&table(beside)).unwrap_err().to_string();
        assert!(
            err.contains("input_per_1k belongs in each of its tiers"),
            "{err}"
        );
    }
}
