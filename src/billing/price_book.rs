//! The price book: every recorded price version in memory, looked up per request. What a
//! price entry recorded at one effective time became is a set of versions, one per tier of
//! the billed prompt (`PriceTiers`; one version for an untiered price). A request's price
//! is the set in force for its model and chip, narrowed by the deployment it went to and
//! the account it is billed to (`Buyer`): the deployment's own price, then the account's,
//! then the list price.

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::PriceVersion;

/// The versions of one price entry at one effective time, by tier (lowest prompts first).
#[derive(Debug)]
pub struct PriceTiers {
    versions: Vec<Arc<PriceVersion>>,
}

impl PriceTiers {
    /// The version for the smallest prompts: the only one of an untiered price.
    pub fn first(&self) -> &Arc<PriceVersion> {
        &self.versions[0]
    }

    pub fn versions(&self) -> &[Arc<PriceVersion>] {
        &self.versions
    }

    /// The version a request whose billed prompt has `prompt` tokens is billed at: the
    /// tier it falls in (a prompt beyond the last bound, the last tier).
    pub fn for_prompt(&self, prompt: u64) -> &Arc<PriceVersion> {
        (self.versions.iter().rev())
            .find(|v| v.entry.tier.over < prompt)
            .unwrap_or(self.first())
    }

    /// The versions a request whose prompt has at most `bound` tokens may be billed at:
    /// what its spending hold must cover.
    pub fn reachable(&self, bound: u64) -> impl Iterator<Item = &Arc<PriceVersion>> {
        (self.versions.iter().enumerate())
            .filter(move |(i, v)| *i == 0 || v.entry.tier.over < bound)
            .map(|(_, v)| v)
    }

    fn effective_from(&self) -> DateTime<Utc> {
        self.first().entry.effective_from
    }

    fn is_for(&self, deployment: Option<&str>, account: Option<&str>) -> bool {
        let e = &self.first().entry;
        e.deployment.as_deref() == deployment && e.account.as_deref() == account
    }
}

/// Whose request a price is looked up for; the default is the list price.
#[derive(Debug, Clone, Copy, Default)]
pub struct Buyer<'a> {
    /// The account billed, by name.
    pub account: Option<&'a str>,
    /// The private deployment the request went to.
    pub deployment: Option<&'a str>,
    /// Whether a deployment without a price of its own is billed at its model × chip
    /// price (the operator's choice, `upstreams[].pair_price`); otherwise it is not served.
    pub pair_price: bool,
}

impl<'a> Buyer<'a> {
    /// The scopes to look in, narrowest first: (deployment, account).
    fn scopes(&self) -> impl Iterator<Item = (Option<&'a str>, Option<&'a str>)> {
        let account = self.account;
        let deployment = self.deployment;
        let list = deployment.is_none() || self.pair_price;
        let of = move |d: Option<&'a str>| [(d, account), (d, None)];
        (deployment.map(|d| of(Some(d))).into_iter().flatten())
            .chain(list.then(|| of(None)).into_iter().flatten())
    }
}

/// Every price version, looked up by model, chip, buyer and time.
#[derive(Debug, Default)]
pub struct PriceBook {
    /// Sets per model, then chip, sorted by effective time (nested so that a lookup by
    /// `&str` needs no owned key).
    by_pair: HashMap<String, HashMap<String, Vec<Arc<PriceTiers>>>>,
    by_id: HashMap<i64, Arc<PriceVersion>>,
}

impl PriceBook {
    pub fn new(versions: Vec<PriceVersion>) -> PriceBook {
        type SetKey = (
            String,
            String,
            Option<String>,
            Option<String>,
            DateTime<Utc>,
        );
        let mut sets: HashMap<SetKey, Vec<Arc<PriceVersion>>> = HashMap::new();
        let mut by_id = HashMap::new();
        for v in versions {
            let v = Arc::new(v);
            let e = &v.entry;
            let key = (
                e.model.clone(),
                e.chip.clone(),
                e.deployment.clone(),
                e.account.clone(),
                e.effective_from,
            );
            sets.entry(key).or_default().push(v.clone());
            by_id.insert(v.id, v);
        }
        let mut by_pair: HashMap<String, HashMap<String, Vec<Arc<PriceTiers>>>> = HashMap::new();
        for ((model, chip, ..), mut versions) in sets {
            versions.sort_by_key(|v| v.entry.tier.over);
            let list = by_pair.entry(model).or_default().entry(chip).or_default();
            list.push(Arc::new(PriceTiers { versions }));
        }
        for list in by_pair.values_mut().flat_map(HashMap::values_mut) {
            list.sort_by_key(|t| t.effective_from());
        }
        PriceBook { by_pair, by_id }
    }

    pub fn version(&self, id: i64) -> Option<&Arc<PriceVersion>> {
        self.by_id.get(&id)
    }

    /// The list price in force for `model` on `chip` at `at`.
    pub fn in_force(&self, model: &str, chip: &str, at: DateTime<Utc>) -> Option<Arc<PriceTiers>> {
        self.for_buyer(model, chip, Buyer::default(), at)
    }

    /// The price in force for `buyer`'s request to `model` on `chip` at `at`: in its
    /// narrowest scope that has one (`Buyer::scopes`), the chip's own price, else the
    /// model's `*` price.
    pub fn for_buyer(
        &self,
        model: &str,
        chip: &str,
        buyer: Buyer,
        at: DateTime<Utc>,
    ) -> Option<Arc<PriceTiers>> {
        let chips = self.by_pair.get(model)?;
        let lists = [chips.get(chip), chips.get("*")];
        buyer.scopes().find_map(|(deployment, account)| {
            lists.iter().flatten().find_map(|list| {
                (list.iter().rev())
                    .find(|t| t.is_for(deployment, account) && t.effective_from() <= at)
                    .cloned()
            })
        })
    }

    /// Whether `version` is in force at `at` in its own scope (its deployment, account).
    pub fn is_in_force(&self, version: &PriceVersion, at: DateTime<Utc>) -> bool {
        let e = &version.entry;
        let sets = self
            .by_pair
            .get(&e.model)
            .and_then(|chips| chips.get(&e.chip));
        (sets.into_iter().flatten().rev())
            .find(|t| {
                t.is_for(e.deployment.as_deref(), e.account.as_deref()) && t.effective_from() <= at
            })
            .is_some_and(|t| t.versions.iter().any(|v| v.id == version.id))
    }

    /// Every version, by model, chip, deployment, account, effective time, then tier.
    pub fn all(&self) -> Vec<&Arc<PriceVersion>> {
        let mut all: Vec<_> = self.by_id.values().collect();
        all.sort_by(|a, b| {
            let key = |v: &PriceVersion| {
                let e = &v.entry;
                (
                    e.model.clone(),
                    e.chip.clone(),
                    e.deployment.clone(),
                    e.account.clone(),
                    e.effective_from,
                    e.tier.over,
                )
            };
            key(a).cmp(&key(b))
        });
        all
    }

    /// Whether any price, current or future, exists for requests of this pair (through
    /// `deployment` when given, and its `pair_price` choice).
    pub fn covers(
        &self,
        model: &str,
        chip: &str,
        deployment: Option<&str>,
        pair_price: bool,
    ) -> bool {
        let Some(chips) = self.by_pair.get(model) else {
            return false;
        };
        let sets = [chip, "*"]
            .into_iter()
            .filter_map(|c| chips.get(c))
            .flatten();
        let mut sets = sets.map(|t| t.first().entry.deployment.as_deref());
        match deployment {
            Some(d) => sets.any(|own| own == Some(d) || (pair_price && own.is_none())),
            None => sets.any(|own| own.is_none()),
        }
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;

    use super::*;
    use crate::billing::PriceEntry;
    use crate::billing::prices::PromptTier;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().into()
    }

    fn version(id: i64, chip: &str, from: &str, input: i64) -> PriceVersion {
        PriceVersion {
            id,
            entry: PriceEntry {
                model: "m".into(),
                chip: chip.into(),
                effective_from: at(from),
                input_per_1k: Decimal::from(input),
                ..Default::default()
            },
        }
    }

    #[test]
    fn the_latest_version_in_force_wins_and_the_wildcard_is_a_fallback() {
        let book = PriceBook::new(vec![
            version(1, "a", "2026-01-01T00:00:00Z", 1),
            version(2, "a", "2026-02-01T00:00:00Z", 2),
            version(3, "*", "2026-01-01T00:00:00Z", 9),
        ]);
        let id = |chip, when| book.in_force("m", chip, at(when)).map(|t| t.first().id);
        assert_eq!(id("a", "2026-01-31T23:59:59Z"), Some(1));
        assert_eq!(id("a", "2026-02-01T00:00:00Z"), Some(2));
        assert_eq!(id("b", "2026-03-01T00:00:00Z"), Some(3));
        assert_eq!(id("a", "2025-12-31T00:00:00Z"), None);
    }

    #[test]
    fn a_deployment_and_an_account_have_their_own_prices_from_their_effective_time() {
        let scoped = |id, deployment: Option<&str>, account: Option<&str>, from| {
            let mut v = version(id, "a", from, id);
            v.entry.deployment = deployment.map(Into::into);
            v.entry.account = account.map(Into::into);
            v
        };
        let book = PriceBook::new(vec![
            version(1, "a", "2026-01-01T00:00:00Z", 1),
            scoped(2, None, Some("acme"), "2026-03-01T00:00:00Z"),
            scoped(3, Some("mif-1"), None, "2026-01-01T00:00:00Z"),
            scoped(4, Some("mif-1"), Some("acme"), "2026-04-01T00:00:00Z"),
        ]);
        let id = |buyer: Buyer, when| {
            book.for_buyer("m", "a", buyer, at(when))
                .map(|t| t.first().id)
        };
        let acme = Buyer {
            account: Some("acme"),
            ..Buyer::default()
        };
        assert_eq!(
            id(acme, "2026-02-28T00:00:00Z"),
            Some(1),
            "the list price before"
        );
        assert_eq!(
            id(acme, "2026-03-01T00:00:00Z"),
            Some(2),
            "its own from then"
        );
        let other = Buyer {
            account: Some("other"),
            ..Buyer::default()
        };
        assert_eq!(id(other, "2026-03-01T00:00:00Z"), Some(1));
        let on_mif = |account, pair_price| Buyer {
            account,
            deployment: Some("mif-1"),
            pair_price,
        };
        assert_eq!(
            id(on_mif(Some("acme"), false), "2026-03-15T00:00:00Z"),
            Some(3)
        );
        assert_eq!(
            id(on_mif(Some("acme"), false), "2026-04-01T00:00:00Z"),
            Some(4)
        );
        // A deployment without a price of its own, only if the operator says so.
        let unpriced = Buyer {
            account: Some("acme"),
            deployment: Some("mif-2"),
            pair_price: false,
        };
        assert_eq!(id(unpriced, "2026-04-01T00:00:00Z"), None);
        let fallback = Buyer {
            pair_price: true,
            ..unpriced
        };
        assert_eq!(id(fallback, "2026-04-01T00:00:00Z"), Some(2));
        assert!(book.covers("m", "a", Some("mif-1"), false));
        assert!(!book.covers("m", "a", Some("mif-2"), false));
        assert!(book.covers("m", "a", Some("mif-2"), true));
    }

    #[test]
    fn a_prompt_is_billed_in_its_tier_and_held_at_every_tier_it_may_reach() {
        let tier = |id, over, up_to| {
            let mut v = version(id, "a", "2026-01-01T00:00:00Z", id);
            v.entry.tier = PromptTier { over, up_to };
            v
        };
        let book = PriceBook::new(vec![
            tier(3, 256_000, None),
            tier(1, 0, Some(128_000)),
            tier(2, 128_000, Some(256_000)),
        ]);
        let tiers = book.in_force("m", "a", at("2026-06-01T00:00:00Z")).unwrap();
        let id = |prompt| tiers.for_prompt(prompt).id;
        assert_eq!(
            [id(0), id(128_000), id(128_001), id(256_000), id(999_999)],
            [1, 1, 2, 2, 3]
        );
        let reach = |bound| tiers.reachable(bound).map(|v| v.id).collect::<Vec<_>>();
        assert_eq!(reach(0), [1]);
        assert_eq!(reach(200_000), [1, 2]);
        assert_eq!(reach(300_000), [1, 2, 3]);
    }
}
