//! Rate limits counted in Redis, shared by every replica (keys' limits, and backends' own
//! `upstreams[].rpm`): one script does the key's GCRA
//! for rpm (one request, or a slice of several: `slices`) and its token reservation for
//! tpm atomically, on Redis's clock; one more corrects the reservation at the request's
//! end. A key's two entries share a hash tag (`{<redis.prefix>:<lineage>}`), so Redis
//! Cluster keeps them in one slot. Every call is bounded by `redis.timeout_ms`; after a
//! failure Redis is skipped (and the caller falls back) for `PROBE_EVERY`, then tried
//! again. Redis holds nothing that cannot be rebuilt: losing it resets the counts, never
//! money.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use super::windows::{Counts, Unit, Verdict, Window};
use super::{Counted, RequestQuota, TokenQuota, bucket, gcra};
use crate::config::RedisConfig;

/// How long Redis is left alone after a failure before it is tried again.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Admission: KEYS = the key's request state and token bucket; ARGV = rpm, tpm (0: none),
/// tokens to reserve, 1 to only look (nothing counted), and how many requests to take at
/// once (a slice: as many as the allowance holds, up to that). Times in µs from Redis's
/// clock (or ARGV[6], which only the differential test passes), tokens in thousandths.
/// Returns rpm (requests taken: 0 when refused, remaining, reset, retry) and tpm (passed,
/// remaining, reset, retry; all 0 without a tpm). The arithmetic is `gcra::admit`'s and
/// `bucket::reserve`'s, step for step.
pub const ADMIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(ARGV[6]) or (tonumber(t[1]) * 1000000 + tonumber(t[2]))
local rpm, tpm, reserve, look = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] == '1'
local take = tonumber(ARGV[5]) or 1
local period = 60000000 / rpm
local state = redis.call('HMGET', KEYS[1], 'tat', 'rpm')
local tat = tonumber(state[1]) or now
local old = tonumber(state[2]) or rpm
if tat < now then tat = now end
if old ~= rpm then
  tat = now + math.min(math.ceil((tat - now) / (60000000 / old) - 1e-9), rpm) * period
end
local r = {1, 0, 0, 0}
-- Requests the allowance holds now: each moves tat on by one period, up to a minute ahead.
local n = math.min(take, math.floor((now - tat) / period + rpm + 1e-9))
local next_tat = tat + n * period
if look then
  r[2] = math.max(0, rpm - math.ceil((tat - now) / period - 1e-9))
  r[3] = tat - now
elseif n < 1 then
  r = {0, 0, tat - now, tat + period - rpm * period - now}
else
  r[1] = n
  redis.call('HSET', KEYS[1], 'tat', next_tat, 'rpm', rpm)
  redis.call('PEXPIRE', KEYS[1], math.ceil((next_tat - now) / 1000) + 1000)
  r[2] = math.max(0, rpm - math.ceil((next_tat - now) / period - 1e-9))
  r[3] = next_tat - now
end
local k = {0, 0, 0, 0}
if tpm > 0 and (look or r[1] >= 1) then
  local full = tpm * 1000
  local bucket = redis.call('HMGET', KEYS[2], 'level', 'at', 'tpm')
  local level = tonumber(bucket[1]) or full
  local at = tonumber(bucket[2]) or now
  local was = tonumber(bucket[3]) or tpm
  if was ~= tpm then level = full - (was * 1000 - level) end
  level = math.min(full, level + (now - at) * tpm * 1000 / 60000000)
  local need = reserve * 1000
  k[1] = 1
  if not look then
    if level >= need or level >= full then
      level = level - need
      redis.call('HSET', KEYS[2], 'level', level, 'at', now, 'tpm', tpm)
      redis.call('PEXPIRE', KEYS[2], 120000)
    else
      k[1] = 0
      k[4] = math.max(1000, (math.min(need, full) - level) * 60000000 / (tpm * 1000))
    end
  end
  k[2] = math.floor(math.max(level, 0) / 1000)
  k[3] = (full - level) * 60000000 / (tpm * 1000)
end
return {r[1], r[2], math.floor(r[3]), math.floor(r[4]), k[1], k[2], math.floor(k[3]), math.floor(k[4])}
"#;

/// Settlement: KEYS = the token bucket; ARGV = tpm, tokens reserved, tokens used (and the
/// time, as ADMIT's ARGV[6]). The arithmetic is `bucket::settle`'s.
pub const SETTLE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(ARGV[4]) or (tonumber(t[1]) * 1000000 + tonumber(t[2]))
local tpm, reserved, used = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local full = tpm * 1000
local bucket = redis.call('HMGET', KEYS[1], 'level', 'at')
local level = tonumber(bucket[1]) or full
local at = tonumber(bucket[2]) or now
level = math.min(full, level + (now - at) * tpm * 1000 / 60000000 + (reserved - used) * 1000)
redis.call('HSET', KEYS[1], 'level', level, 'at', now, 'tpm', tpm)
redis.call('PEXPIRE', KEYS[1], 120000)
return {1}
"#;

/// Quotas over rolling windows (`windows::admit`, step for step): KEYS = one hash per window
/// (slot → count, and `s` once seeded); ARGV = the time (µs; 0: Redis's clock), 1 to only
/// look, 1 when seeds follow, then per window: unit (0 requests, 1 tokens), limit, span
/// (µs), the number of seeded slots and that many (slot, count) pairs. A window not yet
/// seeded (new, expired or lost) returns {-1} unless seeds are given: the caller reads them
/// from the ledger and asks again; seeds land only in a window without `s`, so replicas
/// seeding at once count them once. Returns admitted (1/0), then per window remaining,
/// reset and retry (µs).
pub const QUOTAS: &str = r#"
local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local look, seeded = ARGV[2] == '1', ARGV[3] == '1'
local ws, i = {}, 4
for k = 1, #KEYS do
  local w = {unit = tonumber(ARGV[i]), limit = tonumber(ARGV[i + 1]), span = tonumber(ARGV[i + 2])}
  local n = tonumber(ARGV[i + 3])
  w.width = math.max(1, math.floor(w.span / 60))
  w.ttl = math.ceil((w.span + w.width) / 1000) + 1000
  if redis.call('HEXISTS', KEYS[k], 's') == 0 then
    if not seeded then return {-1} end
    redis.call('HSET', KEYS[k], 's', 1)
    for j = 1, n do
      redis.call('HINCRBY', KEYS[k], ARGV[i + 2 + 2 * j], ARGV[i + 3 + 2 * j])
    end
    redis.call('PEXPIRE', KEYS[k], w.ttl)
  end
  i = i + 4 + 2 * n
  local first = math.floor(now / w.width) - 60
  local all = redis.call('HGETALL', KEYS[k])
  w.slots, w.used = {}, 0
  for j = 1, #all, 2 do
    if all[j] ~= 's' then
      local s, c = tonumber(all[j]), tonumber(all[j + 1])
      if s < first then
        redis.call('HDEL', KEYS[k], all[j])
      else
        w.slots[#w.slots + 1] = {s, c}
        w.used = w.used + c
      end
    end
  end
  table.sort(w.slots, function(a, b) return a[1] < b[1] end)
  ws[k] = w
end
local admitted = not look
for _, w in ipairs(ws) do
  if w.used >= w.limit then admitted = false end
end
if admitted then
  for k, w in ipairs(ws) do
    if w.unit == 0 then
      local cur = math.floor(now / w.width)
      redis.call('HINCRBY', KEYS[k], cur, 1)
      redis.call('PEXPIRE', KEYS[k], w.ttl)
      local last = w.slots[#w.slots]
      if last and last[1] == cur then last[2] = last[2] + 1 else w.slots[#w.slots + 1] = {cur, 1} end
      w.used = w.used + 1
    end
  end
end
local function wait(w, keep)
  local used, at = w.used, 0
  for _, s in ipairs(w.slots) do
    if used <= keep then break end
    used = used - s[2]
    at = (s[1] + 61) * w.width - now
  end
  return math.max(0, at)
end
local out = {admitted and 1 or 0}
for _, w in ipairs(ws) do
  out[#out + 1] = math.max(0, w.limit - w.used)
  out[#out + 1] = wait(w, 0)
  if not look and not admitted and w.used >= w.limit then
    out[#out + 1] = wait(w, w.limit - 1)
  else
    out[#out + 1] = 0
  end
end
return out
"#;

/// Tokens spent (`windows::spend`): KEYS = the token windows' hashes; ARGV = the time (as
/// QUOTAS's), the tokens, then each window's span. A window not seeded is left alone: its
/// seed, read from the ledger, will hold these tokens.
pub const SPEND: &str = r#"
local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
for k = 1, #KEYS do
  if redis.call('HEXISTS', KEYS[k], 's') == 1 then
    local span = tonumber(ARGV[2 + k])
    local width = math.max(1, math.floor(span / 60))
    redis.call('HINCRBY', KEYS[k], math.floor(now / width), ARGV[2])
    redis.call('PEXPIRE', KEYS[k], math.ceil((span + width) / 1000) + 1000)
  end
end
return {1}
"#;

pub struct RedisCounts {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    timeout: Duration,
    admit: Script,
    settle: Script,
    quotas: Script,
    spend: Script,
    /// When Redis last failed, in ms since `started` (0: never): it is skipped until
    /// `PROBE_EVERY` later.
    failed_at: AtomicU64,
    /// When Redis answered again after failing, in ms since `started` (0: never failed).
    recovered_at: AtomicU64,
    started: Instant,
    errors: prometheus::IntCounter,
    prefix: String,
}

/// Redis did not answer (in time): the caller counts elsewhere.
#[derive(Debug)]
pub struct Unavailable;

impl RedisCounts {
    pub fn new(
        config: &RedisConfig,
        errors: prometheus::IntCounter,
    ) -> anyhow::Result<RedisCounts> {
        let url = config.url.as_deref().unwrap_or_default();
        let client = redis::Client::open(url)
            .map_err(|e| anyhow::anyhow!("redis.url is not a Redis URL: {e}"))?;
        Ok(RedisCounts {
            client,
            connection: OnceCell::new(),
            timeout: Duration::from_millis(config.timeout_ms),
            admit: Script::new(ADMIT),
            settle: Script::new(SETTLE),
            quotas: Script::new(QUOTAS),
            spend: Script::new(SPEND),
            failed_at: AtomicU64::new(0),
            recovered_at: AtomicU64::new(0),
            started: Instant::now(),
            errors,
            prefix: config.prefix.clone(),
        })
    }

    /// Key lineage `id`'s request state and token bucket, in one hash slot.
    fn keys(&self, id: i64) -> (String, String) {
        let tag = format!("{{{}:{id}}}", self.prefix);
        (format!("{tag}:rpm"), format!("{tag}:tpm"))
    }

    /// The hashes of a plan's windows for one holder (`a<account>` or `k<lineage>`), in one
    /// hash slot; a window's span is in its name, so a plan whose windows change starts
    /// them afresh (a changed limit keeps its counts).
    pub fn quota_keys(&self, holder: &str, plan: &str, windows: &[Window]) -> Vec<String> {
        let tag = format!("{{{}:quota:{holder}}}", self.prefix);
        let unit = |w: &Window| if w.unit == Unit::Tokens { "t" } else { "r" };
        windows
            .iter()
            .enumerate()
            .map(|(i, w)| format!("{tag}:{plan}:{i}:{}{}", w.span_us / 1_000_000, unit(w)))
            .collect()
    }

    /// Whether Redis answered the last time it was asked.
    pub fn is_up(&self) -> bool {
        self.failed_at.load(Ordering::Relaxed) == 0
    }

    /// Whether Redis answered again less than `window` ago after failing: it may have come
    /// back empty, its counts of the requests admitted before (and by the fallback) lost.
    pub fn recovering(&self, window: Duration) -> bool {
        let recovered = self.recovered_at.load(Ordering::Relaxed);
        recovered != 0 && self.now_ms().saturating_sub(recovered) < window.as_millis() as u64
    }

    fn skipped(&self) -> bool {
        let failed = self.failed_at.load(Ordering::Relaxed);
        failed != 0 && self.now_ms().saturating_sub(failed) < PROBE_EVERY.as_millis() as u64
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// Runs `script` with `keys` and `args`, bounded by the timeout.
    async fn run(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[u64],
    ) -> Result<Vec<i64>, Unavailable> {
        if self.skipped() {
            return Err(Unavailable);
        }
        let call = async {
            let connection = self
                .connection
                .get_or_try_init(|| {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(self.timeout))
                        .set_response_timeout(Some(self.timeout))
                        .set_number_of_retries(1);
                    ConnectionManager::new_with_config(self.client.clone(), config)
                })
                .await?;
            let mut connection = connection.clone();
            let mut invocation = script.prepare_invoke();
            for key in keys {
                invocation.key(*key);
            }
            for arg in args {
                invocation.arg(*arg);
            }
            invocation.invoke_async::<Vec<i64>>(&mut connection).await
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(values)) => {
                if self.failed_at.swap(0, Ordering::Relaxed) != 0 {
                    self.recovered_at.store(self.now_ms(), Ordering::Relaxed);
                }
                Ok(values)
            }
            Ok(Err(e)) => {
                self.fail(&e.to_string());
                Err(Unavailable)
            }
            Err(_) => {
                self.fail("timed out");
                Err(Unavailable)
            }
        }
    }

    fn fail(&self, error: &str) {
        self.errors.inc();
        if self.failed_at.swap(self.now_ms(), Ordering::Relaxed) == 0 {
            tracing::warn!(
                error,
                "Redis does not answer; rate limits fall back until it does"
            );
        }
    }

    /// Counts one request of key `id` (its lineage) in Redis.
    pub async fn admit(
        &self,
        id: i64,
        rpm: u32,
        tpm: Option<u64>,
        reserve: u64,
        look: bool,
    ) -> Result<Counted, Unavailable> {
        let (_, counted) = self.count(id, rpm, tpm, reserve, look, 1).await?;
        Ok(counted)
    }

    /// Takes up to `n` requests of key `id`'s allowance at once (a key without a token
    /// limit): how many it held (0 when refused) and the quota after them.
    pub async fn take(
        &self,
        id: i64,
        rpm: u32,
        n: u32,
    ) -> Result<(u32, RequestQuota), Unavailable> {
        let (taken, counted) = self.count(id, rpm, None, 0, false, n).await?;
        Ok((taken, counted.requests))
    }

    async fn count(
        &self,
        id: i64,
        rpm: u32,
        tpm: Option<u64>,
        reserve: u64,
        look: bool,
        take: u32,
    ) -> Result<(u32, Counted), Unavailable> {
        let (requests, tokens) = self.keys(id);
        let args = [
            u64::from(rpm.max(1)),
            tpm.unwrap_or(0),
            reserve,
            u64::from(look),
            u64::from(take.max(1)),
        ];
        let v = self.run(&self.admit, &[&requests, &tokens], &args).await?;
        let taken = requests_taken(&v)?;
        let requests = RequestQuota::of(rpm, taken);
        let tokens = tpm.filter(|_| v[4] != 0 || v[7] != 0).map(|tpm| {
            let reserved = bucket::Reserved {
                passed: v[4] != 0,
                remaining: v[5],
                reset_us: v[6],
                retry_us: v[7],
            };
            TokenQuota::of(tpm, reserved)
        });
        Ok((taken.taken, Counted { requests, tokens }))
    }

    /// Counts one request to backend `name` against its own per-minute limit, for every
    /// replica at once: `Err(wait)`-like quota when it is at its limit.
    pub async fn admit_backend(&self, name: &str, rpm: u32) -> Result<RequestQuota, Unavailable> {
        let tag = format!("{{{}:backend:{name}}}", self.prefix);
        let (requests, tokens) = (format!("{tag}:rpm"), format!("{tag}:tpm"));
        let args = [u64::from(rpm.max(1)), 0, 0, 0, 1];
        let v = self.run(&self.admit, &[&requests, &tokens], &args).await?;
        let taken = requests_taken(&v)?;
        Ok(RequestQuota::of(rpm, taken))
    }

    /// Counts one request in the quota windows `keys` (`windows`, in that order), or only
    /// looks: `None` when a window is not seeded and no `seeds` (one `Counts` per window)
    /// were given.
    pub async fn quotas(
        &self,
        keys: &[String],
        windows: &[Window],
        seeds: Option<&[Counts]>,
        look: bool,
    ) -> Result<Option<(bool, Vec<Verdict>)>, Unavailable> {
        let mut args = vec![0, u64::from(look), u64::from(seeds.is_some())];
        for (i, w) in windows.iter().enumerate() {
            let seed = seeds.and_then(|s| s.get(i)).map(|c| c.0.as_slice());
            let seed = seed.unwrap_or_default();
            args.extend([u64::from(w.unit == Unit::Tokens), w.limit, w.span_us as u64]);
            args.push(seed.len() as u64);
            args.extend(seed.iter().flat_map(|&(slot, n)| [slot as u64, n]));
        }
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let v = self.run(&self.quotas, &keys, &args).await?;
        if v.first() == Some(&-1) {
            return Ok(None);
        }
        if v.len() != 1 + 3 * windows.len() {
            return Err(Unavailable);
        }
        let verdicts = v[1..]
            .chunks(3)
            .map(|c| Verdict {
                remaining: c[0].max(0) as u64,
                reset_us: c[1],
                retry_us: c[2],
            })
            .collect();
        Ok(Some((v[0] == 1, verdicts)))
    }

    /// Counts `tokens` in the token windows `keys` (`windows`, in that order).
    pub async fn spend(
        &self,
        keys: &[String],
        windows: &[Window],
        tokens: u64,
    ) -> Result<(), Unavailable> {
        let mut args = vec![0, tokens];
        args.extend(windows.iter().map(|w| w.span_us as u64));
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.run(&self.spend, &keys, &args).await.map(|_| ())
    }

    /// Corrects key `id`'s reservation with the tokens used.
    pub async fn settle(
        &self,
        id: i64,
        tpm: u64,
        reserved: u64,
        used: u64,
    ) -> Result<(), Unavailable> {
        let (_, tokens) = self.keys(id);
        self.run(&self.settle, &[&tokens], &[tpm, reserved, used])
            .await
            .map(|_| ())
    }
}

/// The requests' part of ADMIT's reply (its first four numbers of eight).
fn requests_taken(v: &[i64]) -> Result<gcra::Taken, Unavailable> {
    if v.len() != 8 {
        return Err(Unavailable);
    }
    let count = |n: i64| n.clamp(0, i64::from(u32::MAX)) as u32;
    Ok(gcra::Taken {
        taken: count(v[0]),
        remaining: count(v[1]),
        reset_us: v[2],
        retry_us: v[3],
    })
}
