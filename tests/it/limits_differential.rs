//! One statement of the rate limits, checked against the other: the Lua scripts Redis runs
//! for every replica (`limits::redis::{ADMIT, SETTLE}`) and the pure functions the gateway
//! counts with in memory (`limits::gcra`, `limits::bucket`) are given the same random
//! sequences (times, changed limits, slices, looks, reservations and settlements) and
//! must give the same verdicts, number for number; likewise quota plans' windows
//! (`limits::redis::{QUOTAS, SPEND}` and `limits::windows`), seeds, looks and tokens.

use crate::helpers;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tollgate::limits::bucket::{self, Bucket};
use tollgate::limits::gcra::{self, Gcra};
use tollgate::limits::redis::{ADMIT, QUOTAS, SETTLE, SPEND};
use tollgate::limits::windows::{self, Counts, Unit, Window};

/// What the Rust functions say for an admission, in ADMIT's reply order.
fn admit(
    requests: &mut Option<Gcra>,
    tokens: &mut Option<Bucket>,
    now: i64,
    (rpm, tpm, reserve, look, take): (u32, u64, u64, bool, u32),
) -> Vec<i64> {
    let (taken, kept) = gcra::admit(*requests, now, rpm, take, look);
    if kept.is_some() {
        *requests = kept;
    }
    let mut reply = vec![
        i64::from(taken.taken),
        i64::from(taken.remaining),
        taken.reset_us,
        taken.retry_us,
        0,
        0,
        0,
        0,
    ];
    if tpm > 0 && (look || taken.taken >= 1) {
        let (reserved, kept) = bucket::reserve(*tokens, now, tpm, reserve, look);
        if kept.is_some() {
            *tokens = kept;
        }
        reply[4..].copy_from_slice(&[
            i64::from(reserved.passed),
            reserved.remaining,
            reserved.reset_us,
            reserved.retry_us,
        ]);
    }
    reply
}

#[tokio::test]
async fn the_lua_scripts_and_the_rust_functions_give_the_same_verdicts() {
    let server = tokio::task::spawn_blocking(helpers::redis::Redis::start)
        .await
        .unwrap();
    let client = redis::Client::open(server.url.as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let admit_script = redis::Script::new(ADMIT);
    let settle_script = redis::Script::new(SETTLE);
    let mut compared = 0;
    // Verdicts of each kind seen: requests refused, reservations passed and refused.
    let mut kinds = [0; 3];
    for sequence in 0..24u64 {
        let mut rng = SmallRng::seed_from_u64(sequence);
        let keys = [
            format!("{{d{sequence}}}:rpm"),
            format!("{{d{sequence}}}:tpm"),
        ];
        let (mut requests, mut tokens) = (None, None);
        // A real clock's µs, where doubles have the fewest spare bits.
        let mut now: i64 = 1_764_000_000_000_000 + rng.random_range(0..1_000_000_000);
        let mut rpm: u32 = [1, 3, 10, 60, 600][rng.random_range(0..5)];
        let mut tpm: u64 = [0, 100, 1000, 40_000][rng.random_range(0..4)];
        let mut reserved = Vec::new();
        for step in 0..150 {
            now += [0, 1, 999, 150_000, 2_500_000, 61_000_000][rng.random_range(0..6)];
            if rng.random_range(0..20) == 0 {
                rpm = [1, 2, 3, 7, 10, 60, 600][rng.random_range(0..7)];
            }
            if rng.random_range(0..20) == 0 {
                tpm = [0, 50, 100, 1000, 40_000][rng.random_range(0..5)];
            }
            if tpm > 0 && !reserved.is_empty() && rng.random_bool(0.3) {
                let held: u64 = reserved.swap_remove(rng.random_range(0..reserved.len()));
                let used = rng.random_range(0..=held * 2);
                let _: Vec<i64> = settle_script
                    .key(&keys[1])
                    .arg(tpm)
                    .arg(held)
                    .arg(used)
                    .arg(now)
                    .invoke_async(&mut redis)
                    .await
                    .unwrap();
                tokens = Some(bucket::settle(tokens, now, tpm, held, used));
                continue;
            }
            let look = rng.random_range(0..10) == 0;
            let take = if rng.random_bool(0.2) {
                rng.random_range(2..6)
            } else {
                1
            };
            let reserve = rng.random_range(0..2000);
            let lua: Vec<i64> = admit_script
                .key(&keys[0])
                .key(&keys[1])
                .arg(rpm)
                .arg(tpm)
                .arg(reserve)
                .arg(u8::from(look))
                .arg(take)
                .arg(now)
                .invoke_async(&mut redis)
                .await
                .unwrap();
            let rust = admit(
                &mut requests,
                &mut tokens,
                now,
                (rpm, tpm, reserve, look, take),
            );
            assert_eq!(
                lua, rust,
                "sequence {sequence}, step {step}: rpm {rpm}, tpm {tpm}, reserve {reserve}, \
                 look {look}, take {take}"
            );
            if !look && lua[4] == 1 {
                reserved.push(reserve);
            }
            if !look {
                kinds[0] += usize::from(lua[0] == 0);
                kinds[1] += usize::from(tpm > 0 && lua[4] == 1);
                kinds[2] += usize::from(tpm > 0 && lua[0] > 0 && lua[4] == 0);
            }
            compared += 1;
        }
    }
    assert!(compared > 2000, "{compared} verdicts compared");
    assert!(
        kinds.iter().all(|&n| n > 50),
        "every kind of verdict: {kinds:?}"
    );
    server.stop();
}

/// QUOTAS's reply for the Rust functions' verdict.
fn quota_reply(admitted: bool, verdicts: &[windows::Verdict]) -> Vec<i64> {
    let mut reply = vec![i64::from(admitted)];
    for v in verdicts {
        reply.extend([v.remaining as i64, v.reset_us, v.retry_us]);
    }
    reply
}

#[tokio::test]
async fn the_quota_scripts_and_the_window_functions_give_the_same_verdicts() {
    let server = tokio::task::spawn_blocking(helpers::redis::Redis::start)
        .await
        .unwrap();
    let client = redis::Client::open(server.url.as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let (quotas, spend) = (redis::Script::new(QUOTAS), redis::Script::new(SPEND));
    let mut compared = 0;
    // Verdicts seen: admitted, refused by requests, refused by tokens.
    let mut kinds = [0; 3];
    for sequence in 0..24u64 {
        let mut rng = SmallRng::seed_from_u64(1000 + sequence);
        let minute = 60_000_000i64;
        let spans = [
            minute,
            7 * minute,
            60 * minute,
            5 * 60 * minute,
            1440 * minute,
        ];
        let windows: Vec<Window> = (0..rng.random_range(1..4))
            .map(|_| {
                let unit = match rng.random_bool(0.3) {
                    true => Unit::Tokens,
                    false => Unit::Requests,
                };
                let limit = match unit {
                    Unit::Tokens => rng.random_range(50..500),
                    Unit::Requests => rng.random_range(1..12),
                };
                let span_us = spans[rng.random_range(0..spans.len())];
                Window {
                    unit,
                    limit,
                    span_us,
                }
            })
            .collect();
        let keys: Vec<String> = (0..windows.len())
            .map(|i| format!("{{q{sequence}}}:{i}"))
            .collect();
        let mut now: i64 = 1_764_000_000_000_000 + rng.random_range(0..1_000_000_000);
        // Seeded from a random past, as from the ledger's hours.
        let hour = 3_600_000_000i64;
        let past: Vec<(i64, u64, u64)> = (1..4)
            .map(|h| {
                let start = (now - h * hour).div_euclid(hour) * hour;
                (start, rng.random_range(0..4), rng.random_range(0..100))
            })
            .collect();
        let mut counts: Vec<Counts> = windows
            .iter()
            .map(|w| windows::seed(w, &past, now))
            .collect();
        // The first call has no seeds: the script asks for them.
        let mut first = quotas.prepare_invoke();
        for key in &keys {
            first.key(key);
        }
        first.arg(now).arg(0).arg(0);
        for w in &windows {
            first
                .arg(u8::from(w.unit == Unit::Tokens))
                .arg(w.limit)
                .arg(w.span_us)
                .arg(0);
        }
        let asked: Vec<i64> = first.invoke_async(&mut redis).await.unwrap();
        assert_eq!(asked, [-1]);
        let mut seeded = true;
        for step in 0..120 {
            now += [0, 1, 999, 1_500_000, 40_000_000, 300_000_000, 3_000_000_000]
                [rng.random_range(0..7)];
            if rng.random_bool(0.3) {
                let tokens = rng.random_range(0..120u64);
                let mut call = spend.prepare_invoke();
                let token_windows: Vec<usize> = (0..windows.len())
                    .filter(|&i| windows[i].unit == Unit::Tokens)
                    .collect();
                for &i in &token_windows {
                    call.key(&keys[i]);
                }
                call.arg(now).arg(tokens);
                for &i in &token_windows {
                    call.arg(windows[i].span_us);
                }
                let _: Vec<i64> = call.invoke_async(&mut redis).await.unwrap();
                windows::spend(&mut counts, &windows, now, tokens);
                continue;
            }
            let look = rng.random_range(0..10) == 0;
            let mut call = quotas.prepare_invoke();
            for key in &keys {
                call.key(key);
            }
            call.arg(now).arg(u8::from(look)).arg(u8::from(seeded));
            for (i, w) in windows.iter().enumerate() {
                let seed = if seeded {
                    counts[i].0.clone()
                } else {
                    Vec::new()
                };
                call.arg(u8::from(w.unit == Unit::Tokens))
                    .arg(w.limit)
                    .arg(w.span_us);
                call.arg(seed.len());
                for (slot, n) in seed {
                    call.arg(slot).arg(n);
                }
            }
            seeded = false;
            let lua: Vec<i64> = call.invoke_async(&mut redis).await.unwrap();
            let (admitted, verdicts) = windows::admit(&mut counts, &windows, now, look);
            let rust = quota_reply(admitted, &verdicts);
            assert_eq!(
                lua, rust,
                "sequence {sequence}, step {step}: {windows:?}, look {look}"
            );
            if !look {
                let refused_by = |unit| {
                    !admitted
                        && windows
                            .iter()
                            .zip(&verdicts)
                            .any(|(w, v)| w.unit == unit && v.retry_us > 0)
                };
                kinds[0] += usize::from(admitted);
                kinds[1] += usize::from(refused_by(Unit::Requests));
                kinds[2] += usize::from(refused_by(Unit::Tokens));
            }
            compared += 1;
        }
    }
    assert!(compared > 1500, "{compared} verdicts compared");
    assert!(
        kinds.iter().all(|&n| n > 30),
        "every kind of verdict: {kinds:?}"
    );
    server.stop();
}
