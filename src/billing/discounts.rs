//! An account's discount on the list price: an entry with `account`, `model`, `chip` (or
//! `*`) and `discount_percent` instead of rates. When the tables are read it becomes that
//! account's own prices: each list price of the pair in force while the discount is (up
//! to the account's next discount of the pair), every rate scaled, effective from the later
//! of the two times. They are recorded like any price, so records name the version they
//! used and a version never changes.

use std::collections::BTreeMap;

use anyhow::bail;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::PriceEntry;

/// `entries` with every discount replaced by the account prices it makes.
pub fn apply(entries: Vec<PriceEntry>) -> anyhow::Result<Vec<PriceEntry>> {
    let (discounts, mut entries): (Vec<_>, Vec<_>) =
        (entries.into_iter()).partition(|e| e.discount_percent.is_some());
    let mut made = Vec::new();
    for d in &discounts {
        let percent = d.discount_percent.unwrap_or_default();
        let factor = (Decimal::ONE_HUNDRED - percent) / Decimal::ONE_HUNDRED;
        // The account's next discount of the pair ends this one.
        let next = (discounts.iter())
            .filter(|o| (&o.account, &o.model, &o.chip) == (&d.account, &d.model, &d.chip))
            .map(|o| o.effective_from)
            .filter(|from| *from > d.effective_from)
            .min();
        for (chip, sets) in list_sets(&entries, &d.model, &d.chip) {
            let starts: Vec<DateTime<Utc>> = sets.keys().copied().collect();
            for (i, (from, tiers)) in sets.iter().enumerate() {
                let ended = starts
                    .get(i + 1)
                    .is_some_and(|end| *end <= d.effective_from);
                let not_yet = next.is_some_and(|next| *from >= next);
                if ended || not_yet {
                    continue;
                }
                for list in tiers {
                    let entry = PriceEntry {
                        chip: chip.clone(),
                        account: d.account.clone(),
                        effective_from: (*from).max(d.effective_from),
                        discount_percent: None,
                        ..scaled(list, factor)
                    };
                    super::prices::check_rates(&entry)
                        .map_err(|e| anyhow::anyhow!("{percent}% off for {}: {e}", d.scope()))?;
                    made.push(entry);
                }
            }
        }
    }
    for m in &made {
        let taken = (entries.iter()).any(|e| {
            (&e.model, &e.chip, &e.account, e.effective_from)
                == (&m.model, &m.chip, &m.account, m.effective_from)
        });
        if taken {
            bail!(
                "price for {} effective from {} is given both as a discount and as its own \
                 rates: keep one",
                m.scope(),
                m.effective_from.to_rfc3339()
            );
        }
    }
    entries.extend(made);
    Ok(entries)
}

/// The list prices (no deployment, no account) of `model` on `chip` (every chip for `*`),
/// per chip, then per effective time: each a price's tiers.
fn list_sets<'a>(
    entries: &'a [PriceEntry],
    model: &str,
    chip: &str,
) -> BTreeMap<String, BTreeMap<DateTime<Utc>, Vec<&'a PriceEntry>>> {
    let mut sets: BTreeMap<String, BTreeMap<DateTime<Utc>, Vec<&PriceEntry>>> = BTreeMap::new();
    let list = (entries.iter()).filter(|e| {
        e.model == model
            && (chip == "*" || e.chip == chip)
            && e.deployment.is_none()
            && e.account.is_none()
    });
    for e in list {
        let chip_sets = sets.entry(e.chip.clone()).or_default();
        chip_sets.entry(e.effective_from).or_default().push(e);
    }
    sets
}

/// `list` with every rate times `factor`.
fn scaled(list: &PriceEntry, factor: Decimal) -> PriceEntry {
    let scale = |rate: Decimal| (rate * factor).normalize();
    PriceEntry {
        input_per_1k: scale(list.input_per_1k),
        cached_input_per_1k: list.cached_input_per_1k.map(scale),
        cache_write_per_1k: list.cache_write_per_1k.map(scale),
        reasoning_per_1k: list.reasoning_per_1k.map(scale),
        output_per_1k: scale(list.output_per_1k),
        per_request: scale(list.per_request),
        per_image: scale(list.per_image),
        per_task: scale(list.per_task),
        per_second: scale(list.per_second),
        per_upload: scale(list.per_upload),
        per_hour: scale(list.per_hour),
        ..list.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;
    use crate::billing::prices::parse_table;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    const TABLE: &str = r#"
[[prices]]
model = "m"
chip = "a"
effective_from = 2026-01-01T00:00:00Z
input_per_1k = "0.0010"
output_per_1k = "0.0020"
per_request = "0.01"

[[prices]]
model = "m"
chip = "a"
effective_from = 2026-03-01T00:00:00Z
tiers = [{ up_to_prompt_tokens = 1000, input_per_1k = "0.0040" }, { input_per_1k = "0.0080" }]

[[prices]]
model = "m"
chip = "a"
account = "acme"
effective_from = 2026-02-01T00:00:00Z
discount_percent = "20"

[[prices]]
model = "m"
chip = "*"
account = "acme"
effective_from = 2026-06-01T00:00:00Z
discount_percent = "12.5"
"#;

    #[test]
    fn a_discount_becomes_the_accounts_prices_over_each_list_price_in_its_time() {
        let entries = apply(parse_table(TABLE).unwrap()).unwrap();
        let acme: Vec<_> = (entries.iter())
            .filter(|e| e.account.as_deref() == Some("acme"))
            .map(|e| {
                (
                    e.effective_from.format("%m").to_string(),
                    e.tier.over,
                    e.input_per_1k,
                )
            })
            .collect();
        assert_eq!(
            acme,
            [
                // 20% off January's list from February, then off March's (both tiers);
                ("02".into(), 0, d("0.0008")),
                ("03".into(), 0, d("0.0032")),
                ("03".into(), 1000, d("0.0064")),
                // 12.5% off from June, on chip a (the only chip listed).
                ("06".into(), 0, d("0.0035")),
                ("06".into(), 1000, d("0.007")),
            ]
        );
        let february = (entries.iter())
            .find(|e| e.account.is_some() && e.effective_from.format("%m").to_string() == "02")
            .unwrap();
        assert_eq!(
            (february.output_per_1k, february.per_request),
            (d("0.0016"), d("0.008"))
        );
        assert!(entries.iter().all(|e| e.discount_percent.is_none()));
    }

    #[test]
    fn a_discount_needs_an_account_and_no_rates() {
        let entry = |extra: &str| {
            format!(
                "[[prices]]\nmodel = \"m\"\nchip = \"a\"\neffective_from = 2026-01-01T00:00:00Z\n\
                 discount_percent = \"10\"\n{extra}"
            )
        };
        for (extra, says) in [
            ("", "names the account"),
            (
                "account = \"acme\"\ninput_per_1k = \"1\"\n",
                "instead of rates",
            ),
            (
                "account = \"acme\"\ndeployment = \"mif-1\"\n",
                "instead of rates",
            ),
        ] {
            let err = parse_table(&entry(extra)).unwrap_err().to_string();
            assert!(err.contains(says), "{extra}: {err}");
        }
        let err = parse_table(&entry("account = \"acme\"\n").replace("\"10\"", "\"100\""));
        assert!(err.unwrap_err().to_string().contains("between 0 and 100"));
    }
}
