//! Invoices: one per account per month. Lines per model × chip × unit × price version with
//! quantity, unit price, exact amount and amount rounded half-up to the fen; the total is
//! the sum of the rounded lines.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use super::cost::{Unit, amount, unit_price};
use super::money::{Overflow, add};
use super::{PriceBook, PriceVersion, Totals};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub model: String,
    pub chip: String,
    /// The private deployment the usage went to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// The prompt tier of a tiered price (`128k–256k`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tier: Option<String>,
    pub unit: Unit,
    pub price_version_id: i64,
    pub quantity: u64,
    /// CNY per `per` units.
    pub unit_price: Decimal,
    pub per: u32,
    pub amount_exact: Decimal,
    pub amount: Decimal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    /// Usage so far; changes as usage arrives.
    Draft,
    /// Frozen: served byte for byte as stored.
    Final,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    pub id: String,
    pub account_id: i64,
    pub account: String,
    pub period: String,
    pub timezone: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub status: InvoiceStatus,
    pub currency: String,
    pub lines: Vec<Line>,
    /// Sum of the exact line amounts: equal to the sum of the usage records' costs.
    pub total_exact: Decimal,
    /// Sum of the rounded line amounts: what the usage costs.
    pub total: Decimal,
    /// Private deployments' reserved hours started in the period, per deployment and rate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reserved: Vec<ReservedLine>,
    /// The credit and debit notes issued in the period (never an edit of its lines).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adjustments: Vec<Adjustment>,
    /// What credit grants paid of the period's usage, per grant (usage lines stay at
    /// their prices).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<GrantLine>,
    /// What is owed: `total`, the reserved hours, the notes, less the grants applied.
    /// (Absent from invoices finalized before these existed: `total` then.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_due: Option<Decimal>,
    pub generated_at: DateTime<Utc>,
}

/// A private deployment's reserved hours at one rate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservedLine {
    pub deployment: String,
    pub hours: u64,
    pub per_hour: Decimal,
    /// `hours × per_hour`, exact (rates are at most 12 decimals; shown to the fen on pages).
    pub amount: Decimal,
}

/// Reserved hours summed per deployment and rate, from each hour's `(deployment, rate)`.
pub fn reserved_lines(
    hours: impl IntoIterator<Item = (String, Decimal)>,
) -> Result<Vec<ReservedLine>, Overflow> {
    let mut sums: BTreeMap<(String, Decimal), u64> = BTreeMap::new();
    for key in hours {
        *sums.entry(key).or_default() += 1;
    }
    (sums.into_iter())
        .map(|((deployment, per_hour), hours)| {
            Ok(ReservedLine {
                amount: amount(hours, per_hour, 1)?,
                deployment,
                hours,
                per_hour: per_hour.normalize(),
            })
        })
        .collect()
}

/// A credit note (lowering what is owed) or a debit note (raising it) on an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adjustment {
    pub id: i64,
    /// `credit_note` or `debit_note`.
    pub kind: String,
    /// The month it corrects.
    pub period: String,
    pub reason: String,
    /// What it adds to the amount due, in fen: negative for a credit note.
    pub amount: Decimal,
}

/// A credit grant applied to the period's usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantLine {
    pub grant_id: i64,
    /// `paid` or `promotional`.
    pub kind: String,
    pub reason: String,
    /// What it paid, exact.
    pub applied_exact: Decimal,
    /// What it takes off the amount due: the negative of `applied_exact` to the fen.
    pub amount: Decimal,
}

impl GrantLine {
    pub fn new(grant_id: i64, kind: String, reason: String, applied: Decimal) -> GrantLine {
        GrantLine {
            grant_id,
            kind,
            reason,
            applied_exact: applied.normalize(),
            amount: -to_fen(applied),
        }
    }
}

/// Half-up to 0.01 CNY (amounts are never negative), always written with two decimals.
pub fn to_fen(amount: Decimal) -> Decimal {
    let mut fen = amount.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    fen.rescale(2);
    fen
}

/// Exact cost of summed usage: the same as the sum of its records' costs.
pub fn cost_of_sums(totals: &[Totals], prices: &PriceBook) -> anyhow::Result<Decimal> {
    let mut cost = Decimal::ZERO;
    for t in totals {
        let price = version(prices, t.price_version_id)?;
        cost = add(cost, t.quantities().cost(price)?)?;
    }
    Ok(cost.normalize())
}

fn version(prices: &PriceBook, id: i64) -> anyhow::Result<&PriceVersion> {
    prices
        .version(id)
        .map(|v| v.as_ref())
        .ok_or_else(|| anyhow::anyhow!("price version {id} is not in the price ledger"))
}

/// Invoice lines for summed usage, in a stable order; units with nothing to bill are left out.
pub fn lines(totals: &[Totals], prices: &PriceBook) -> anyhow::Result<Vec<Line>> {
    type LineKey = (String, String, String, Unit, i64);
    let mut sums: BTreeMap<LineKey, u64> = BTreeMap::new();
    for t in totals {
        for (unit, quantity) in t.quantities().by_unit() {
            let key = (
                t.model.clone(),
                t.chip.clone(),
                t.deployment.clone(),
                unit,
                t.price_version_id,
            );
            let sum = sums.entry(key).or_default();
            *sum = sum.saturating_add(quantity);
        }
    }
    let mut lines = Vec::new();
    for ((model, chip, deployment, unit, price_version_id), quantity) in sums {
        let version = version(prices, price_version_id)?;
        let price = unit_price(version, unit);
        if quantity == 0 || price.is_zero() {
            continue;
        }
        let exact = amount(quantity, price, unit.per())?;
        lines.push(Line {
            model,
            chip,
            deployment: Some(deployment).filter(|d| !d.is_empty()),
            prompt_tier: Some(version.entry.tier.label()).filter(|t| !t.is_empty()),
            unit,
            price_version_id,
            quantity,
            unit_price: price.normalize(),
            per: unit.per(),
            amount_exact: exact,
            amount: to_fen(exact),
        });
    }
    Ok(lines)
}

impl Invoice {
    /// Totals follow from the lines.
    pub fn with_lines(mut self, lines: Vec<Line>) -> Result<Invoice, Overflow> {
        let (mut exact, mut rounded) = (Decimal::ZERO, Decimal::ZERO);
        for line in &lines {
            exact = add(exact, line.amount_exact)?;
            rounded = add(rounded, line.amount)?;
        }
        self.total_exact = exact.normalize();
        self.total = to_fen(rounded);
        self.lines = lines;
        Ok(self)
    }

    /// The reserved hours, notes and grants applied of the period, and what is owed with
    /// them (each reserved line and grant rounded to the fen, like a usage line).
    pub fn with_charges(
        mut self,
        reserved: Vec<ReservedLine>,
        adjustments: Vec<Adjustment>,
        grants: Vec<GrantLine>,
    ) -> Result<Invoice, Overflow> {
        let mut due = self.total;
        for r in &reserved {
            due = add(due, to_fen(r.amount))?;
        }
        for a in &adjustments {
            due = add(due, a.amount)?;
        }
        for g in &grants {
            due = add(due, g.amount)?;
        }
        self.reserved = reserved;
        self.adjustments = adjustments;
        self.grants = grants;
        self.amount_due = Some(due);
        Ok(self)
    }

    /// The invoice as CSV: one row per line, then the total, each note (its kind in the
    /// model column, its id in the price version's) and the amount due.
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "invoice,account,period,model,chip,deployment,prompt_tier,unit,price_version,quantity,unit_price,per,amount_exact,amount\n",
        );
        for l in &self.lines {
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                self.id,
                csv_field(&self.account),
                self.period,
                l.model,
                l.chip,
                l.deployment.as_deref().unwrap_or_default(),
                l.prompt_tier.as_deref().unwrap_or_default(),
                l.unit.as_str(),
                l.price_version_id,
                l.quantity,
                l.unit_price,
                l.per,
                l.amount_exact,
                l.amount
            ));
        }
        out.push_str(&format!(
            "{},{},{},TOTAL,,,,,,,,,{},{}\n",
            self.id,
            csv_field(&self.account),
            self.period,
            self.total_exact,
            self.total
        ));
        for r in &self.reserved {
            out.push_str(&format!(
                "{},{},{},RESERVED_HOURS,,{},,hours,,{},{},1,{},{}\n",
                self.id,
                csv_field(&self.account),
                self.period,
                r.deployment,
                r.hours,
                r.per_hour,
                r.amount,
                to_fen(r.amount)
            ));
        }
        for a in &self.adjustments {
            out.push_str(&format!(
                "{},{},{},{},,,,,{},,,,{},{}\n",
                self.id,
                csv_field(&self.account),
                self.period,
                a.kind.to_uppercase(),
                a.id,
                a.amount,
                a.amount
            ));
        }
        for g in &self.grants {
            out.push_str(&format!(
                "{},{},{},GRANT,,,,{},{},,,,{},{}\n",
                self.id,
                csv_field(&self.account),
                self.period,
                g.kind,
                g.grant_id,
                -g.applied_exact,
                g.amount
            ));
        }
        let due = self.amount_due.unwrap_or(self.total);
        out.push_str(&format!(
            "{},{},{},AMOUNT_DUE,,,,,,,,,,{due}\n",
            self.id,
            csv_field(&self.account),
            self.period,
        ));
        out
    }
}

/// Quotes a CSV field when it needs it.
pub fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_half_up_to_the_fen() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        assert_eq!(to_fen(d("0.005")), d("0.01"));
        assert_eq!(to_fen(d("0.0049999")), d("0.00"));
        assert_eq!(to_fen(d("12.345")), d("12.35"));
        assert_eq!(to_fen(Decimal::ZERO).to_string(), "0.00");
        assert_eq!(to_fen(d("3")).to_string(), "3.00");
    }
}
