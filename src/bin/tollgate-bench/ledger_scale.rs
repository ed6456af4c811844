//! `tollgate-bench --ledger-scale`: the read side as history grows. For each size asked
//! (1M and 10M records by default) and each ledger backend, a fresh ledger is filled
//! through `tollgate usage import` with synthetic history (5 accounts of uneven size, 50
//! keys, 3 models × 2 chips, 91 days, a few errors), a gateway is started on it, and every
//! read an operator or the console makes is timed over HTTP, 5 times: balances, an
//! account, a month's reports, the biggest account's invoice, usage listings filtered each
//! way, the console's pages (as an operator and as the biggest account's owner, signed in
//! over HTTP as a browser is), and an account's first proxied request after a restart.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{TimeZone, Utc};
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, HeaderName, HeaderValue};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use tollgate::store::{self, Db};

use crate::procs::{self, Process};

const ACCOUNTS: usize = 5;
/// Each account's share of the records, in percent.
const SHARES: [u32; ACCOUNTS] = [40, 25, 15, 12, 8];
const KEYS_PER_ACCOUNT: usize = 10;
const MODELS: [&str; 3] = [crate::phases::MODEL, "qwen-plus", "deepseek-v3"];
const CHIPS: [&str; 2] = ["nvidia", "ascend"];
const ROUNDS: usize = 5;
const TIME_ZONE: &str = "Asia/Shanghai";

/// One ledger backend's figures at one size.
struct Measured {
    backend: &'static str,
    records: u64,
    import_per_s: f64,
    bytes_per_million: Option<f64>,
    /// Rows of the hourly and the daily rollups: what reports and invoices read.
    rollup_rows: (i64, i64),
    /// (read, median ms, p95 ms) in `READS` order, then the first request after a restart.
    reads: Vec<(String, f64, f64)>,
    /// Proxied requests per second at 32 connections, each round, lowest first.
    throughput: Vec<f64>,
}

pub async fn run(
    dir: &Path,
    sizes: &[u64],
    postgres: bool,
    sqlite: bool,
) -> anyhow::Result<String> {
    if !sqlite && !postgres {
        bail!("--no-sqlite leaves nothing to measure without --cluster");
    }
    let (sim, _simulator) = procs::simulator(dir).await?;
    let mut server = None;
    if postgres {
        let bin = procs::postgres_bin().context("--ledger-scale on PostgreSQL needs its server")?;
        server = Some(procs::postgres(&bin, &dir.join("pg")).await?);
    }
    let mut measured = Vec::new();
    for &records in sizes {
        if sqlite {
            let file = dir.join(format!("sqlite-{records}"));
            std::fs::create_dir_all(&file)?;
            let url = format!("sqlite://{}", file.join("ledger.db").display());
            measured.push(measure(&file, sim, "SQLite", &url, records).await?);
            std::fs::remove_dir_all(&file)?;
        }
        if let Some((url, _)) = &server {
            let database = format!("scale_{records}");
            let admin = sqlx::PgPool::connect(url).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
                .execute(&admin)
                .await?;
            let url = format!("{}/{database}", url.trim_end_matches("/postgres"));
            let pg = dir.join(format!("pg-{records}"));
            measured.push(measure(&pg, sim, "PostgreSQL", &url, records).await?);
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {database}")))
                .execute(&admin)
                .await?;
        }
    }
    Ok(render(&measured))
}

/// Fills a ledger at `url` with `records` records, serves it, and times its reads.
async fn measure(
    dir: &Path,
    sim: SocketAddr,
    backend: &'static str,
    url: &str,
    records: u64,
) -> anyhow::Result<Measured> {
    eprintln!("{backend}: filling a ledger with {records} records");
    let database = format!(
        "url = \"{url}\"\nsynchronous = \"normal\"\nspool = \"{}\"\n",
        dir.join("spool").display()
    );
    let config_path = crate::write_config(dir, sim, "", &database, "")?;
    add_prices(dir, sim, &config_path)?;
    // The gateways serve the admin API with a secret of their own (from a file, as an
    // operator's would be), and the reads are made with tokens minted with it.
    let secret: String = (0..48).map(|_| rand::random_range('a'..='z')).collect();
    let secret_file = dir.join("admin-secret");
    std::fs::write(&secret_file, secret)?;
    let text = std::fs::read_to_string(&config_path)?;
    let admin = format!(
        "\n[admin]\njwt_secret_file = \"{}\"\n",
        secret_file.display()
    );
    std::fs::write(&config_path, text + &admin)?;
    let config = tollgate::Config::load(&config_path)?;
    let db = store::connect(&config.database).await?;
    tollgate::domain::prices::sync(&config, &db).await?;
    let owners = prepare(&db).await?;
    let password: String = (0..24).map(|_| rand::random_range('a'..='z')).collect();
    use tollgate::domain::people::{self, Role as Person};
    people::create(&db, "ops@bench.test", &password, Person::Operator, None).await?;
    people::create(
        &db,
        "owner@bench.test",
        &password,
        Person::Owner,
        Some(owners[0].0),
    )
    .await?;
    let started = Instant::now();
    import(&config_path, &owners, records)?;
    let import_per_s = records as f64 / started.elapsed().as_secs_f64();
    // An empty ledger's reads and requests are the baseline the others are held to.
    let bytes_per_million = match &db {
        Db::Sqlite(pool) => {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(pool)
                .await?;
            let bytes = std::fs::metadata(dir.join("ledger.db"))?.len();
            (records > 0).then(|| bytes as f64 / (records as f64 / 1e6))
        }
        Db::Postgres(pool) => {
            let bytes: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
                .fetch_one(pool)
                .await?;
            (records > 0).then(|| bytes as f64 / (records as f64 / 1e6))
        }
    };
    if let Db::Postgres(pool) = &db {
        sqlx::query("ANALYZE").execute(pool).await?;
    }
    let count = "SELECT (SELECT count(*) FROM usage_hourly), (SELECT count(*) FROM usage_daily)";
    let rollup_rows = match &db {
        Db::Sqlite(pool) => sqlx::query_as(count).fetch_one(pool).await?,
        Db::Postgres(pool) => sqlx::query_as(count).fetch_one(pool).await?,
    };
    let auth = tollgate::auth::jwt::AdminAuth::from_config(&config.admin)?
        .context("the admin API is on")?;
    let token = auth.mint(
        "bench",
        tollgate::auth::jwt::Role::Admin,
        Duration::from_secs(3600),
    )?;
    let admin = HeaderValue::from_str(&format!("Bearer {token}"))?;
    let biggest = owners[0].0;
    let reads = [
        ("balances: GET /admin/v1/accounts".to_string(), "/admin/v1/accounts".to_string()),
        (
            "an account: GET /admin/v1/accounts/{id}".into(),
            format!("/admin/v1/accounts/{biggest}"),
        ),
        (
            "October's cost report by model × chip (JSON)".into(),
            "/admin/v1/reports/cost?from=2026-10-01&to=2026-11-01&group_by=model,chip&format=json"
                .into(),
        ),
        (
            "October's cost report by account × key × model × chip × day (CSV)".into(),
            "/admin/v1/reports/cost?from=2026-10-01&to=2026-11-01&group_by=account,key,model,chip,day&format=csv"
                .into(),
        ),
        (
            "the biggest account's October invoice".into(),
            format!("/admin/v1/invoices/inv_{biggest}_202610"),
        ),
        (
            "usage listing of an account, 100 newest".into(),
            "/admin/v1/usage?account=acct-0&limit=100".into(),
        ),
        (
            "usage listing by model".into(),
            format!("/admin/v1/usage?model={}&limit=100", MODELS[2]),
        ),
        (
            "usage listing by chip".into(),
            "/admin/v1/usage?chip=ascend&limit=100".into(),
        ),
        (
            "usage listing by status".into(),
            "/admin/v1/usage?status=upstream_error&limit=100".into(),
        ),
    ];
    // The console's pages, as the operator (every account) and as the owner of the
    // biggest account.
    let console = [
        (
            "operator",
            "overview of every account",
            "/console/".to_string(),
        ),
        (
            "operator",
            "accounts with balances",
            "/console/accounts".into(),
        ),
        ("operator", "audit log", "/console/audit".into()),
        ("operator", "health", "/console/health".into()),
        ("owner", "overview", "/console/".into()),
        (
            "owner",
            "usage explorer, October by day",
            "/console/usage?from=2026-10-01&to=2026-10-31".into(),
        ),
        (
            "owner",
            "usage explorer, October by hour and key",
            "/console/usage?from=2026-10-01&to=2026-10-31&every=hour&by=key".into(),
        ),
        (
            "owner",
            "usage explorer, a model's requests",
            format!(
                "/console/usage?from=2026-10-01&to=2026-10-31&model={}",
                MODELS[2]
            ),
        ),
        ("owner", "keys", "/console/keys".into()),
        (
            "owner",
            "October's invoice",
            "/console/invoices?period=2026-10".into(),
        ),
        ("owner", "tasks", "/console/tasks".into()),
        ("owner", "prices", "/console/prices".into()),
    ];
    let client: Client<HttpConnector, Full<bytes::Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let log = dir.join("tollgate.log");
    let binary = std::env::current_exe()?;
    let mut timed = Vec::new();
    let throughput;
    {
        let (addr, _gateway) = procs::gateway(&binary, &config_path, &log).await?;
        let operator = sign_in(&client, addr, "ops@bench.test", &password).await?;
        let owner = sign_in(&client, addr, "owner@bench.test", &password).await?;
        let admin_reads = reads
            .iter()
            .map(|(name, path)| (name.clone(), path.as_str(), (AUTHORIZATION, &admin)));
        let console_reads = console.iter().map(|(who, name, path)| {
            let cookie = if *who == "operator" {
                &operator
            } else {
                &owner
            };
            (
                format!("console, {who}: {name}"),
                path.as_str(),
                (COOKIE, cookie),
            )
        });
        for (name, path, (header, value)) in admin_reads.chain(console_reads) {
            let mut times = Vec::new();
            for _ in 0..ROUNDS {
                let started = Instant::now();
                get(&client, addr, path, (&header, value)).await?;
                times.push(started.elapsed());
            }
            let (median, p95) = spread(&mut times);
            eprintln!("{backend} {records}: {name}: {median:.1} ms (p95 {p95:.1})");
            timed.push((name, median, p95));
        }
        // The request path on this ledger: closed loop, 32 connections, 3 rounds of 4 s.
        let target = crate::load::Target {
            name: "tollgate".into(),
            addr,
            path: "/v1/chat/completions".into(),
        };
        let workload = crate::load::Workload::Fixed {
            auth: HeaderValue::from_str(&format!("Bearer {}", owners[1].2))?,
            body: crate::chat_body(3, false, 0),
        };
        let mut rates = Vec::new();
        for _ in 0..3 {
            let stop = crate::load::Stop::After(Duration::from_secs(4));
            let (outcomes, elapsed) =
                crate::load::closed_loop(&target, &workload, 32, stop).await?;
            let ok = outcomes.iter().filter(|o| o.status == 200).count();
            anyhow::ensure!(
                ok == outcomes.len(),
                "{} requests failed",
                outcomes.len() - ok
            );
            rates.push(ok as f64 / elapsed.as_secs_f64());
        }
        rates.sort_by(f64::total_cmp);
        eprintln!("{backend} {records}: requests/s at 32 connections: {rates:?}");
        throughput = rates;
    }
    // An account's first proxied request after a restart: a new gateway each round.
    let mut times = Vec::new();
    let key = HeaderValue::from_str(&format!("Bearer {}", owners[0].2))?;
    for _ in 0..ROUNDS {
        let (addr, gateway) = procs::gateway(&binary, &config_path, &log).await?;
        let started = Instant::now();
        chat(&client, addr, &key).await?;
        times.push(started.elapsed());
        drop::<Process>(gateway);
    }
    let (median, p95) = spread(&mut times);
    let name = "the biggest account's first proxied request after a restart";
    eprintln!("{backend} {records}: {name}: {median:.1} ms (p95 {p95:.1})");
    timed.push((name.into(), median, p95));
    match db {
        Db::Sqlite(pool) => pool.close().await,
        Db::Postgres(pool) => pool.close().await,
    }
    Ok(Measured {
        backend,
        records,
        import_per_s,
        bytes_per_million,
        rollup_rows,
        reads: timed,
        throughput,
    })
}

/// Median and 95th percentile in milliseconds.
fn spread(times: &mut [Duration]) -> (f64, f64) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p95 = times[((times.len() * 95).div_ceil(100)).saturating_sub(1)];
    (ms(times[times.len() / 2]), ms(p95))
}

async fn get(
    client: &Client<HttpConnector, Full<bytes::Bytes>>,
    addr: SocketAddr,
    path: &str,
    (header, value): (&HeaderName, &HeaderValue),
) -> anyhow::Result<()> {
    let request = Request::builder()
        .method(Method::GET)
        .uri(format!("http://{addr}{path}"))
        .header(header, value)
        .body(Full::default())?;
    send(client, request).await
}

/// Signs in to the console as a browser does (the form's token from its cookie and page);
/// returns the `Cookie` header of the session.
async fn sign_in(
    client: &Client<HttpConnector, Full<bytes::Bytes>>,
    addr: SocketAddr,
    email: &str,
    password: &str,
) -> anyhow::Result<HeaderValue> {
    let url = format!("http://{addr}/console/sign-in");
    let form = client
        .request(Request::get(&url).body(Full::default())?)
        .await?;
    let token = cookie(form.headers(), "tollgate_signin").context("no sign-in cookie")?;
    let body = form.into_body().collect().await?.to_bytes();
    let page = String::from_utf8_lossy(&body);
    let marker = "name=\"csrf\" value=\"";
    let at = page.find(marker).context("no CSRF field")? + marker.len();
    let csrf = &page[at..at + page[at..].find('"').context("no CSRF value")?];
    let fields = format!(
        "csrf={csrf}&email={}&password={password}",
        email.replace('@', "%40")
    );
    let request = Request::post(&url)
        .header(COOKIE, format!("tollgate_signin={token}"))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(fields.into()))?;
    let signed = client.request(request).await?;
    let session = cookie(signed.headers(), "tollgate_session")
        .with_context(|| format!("{email} could not sign in: {}", signed.status()))?;
    Ok(HeaderValue::from_str(&format!(
        "tollgate_session={session}"
    ))?)
}

/// The value `headers` set for cookie `name`.
fn cookie(headers: &hyper::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(hyper::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
}

async fn chat(
    client: &Client<HttpConnector, Full<bytes::Bytes>>,
    addr: SocketAddr,
    auth: &HeaderValue,
) -> anyhow::Result<()> {
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}/v1/chat/completions"))
        .header(AUTHORIZATION, auth)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(crate::chat_body(4, false, 0)))?;
    send(client, request).await
}

/// Sends `request` and reads its whole answer, which must be a success.
async fn send(
    client: &Client<HttpConnector, Full<bytes::Bytes>>,
    request: Request<Full<bytes::Bytes>>,
) -> anyhow::Result<()> {
    let what = format!("{} {}", request.method(), request.uri().path());
    let response = client.request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("{what}: {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}

/// Prices (and upstreams, all on the simulator) for every model × chip, and the billing
/// time zone.
fn add_prices(dir: &Path, sim: SocketAddr, config: &Path) -> anyhow::Result<()> {
    let mut prices = String::from("# Sample prices for the benchmark, not real tariffs.\n");
    let mut upstreams = String::new();
    for (m, model) in MODELS.iter().enumerate() {
        for (c, chip) in CHIPS.iter().enumerate() {
            if (m, c) != (0, 0) {
                upstreams += &format!(
                    "\n[[upstreams]]\nmodel = \"{model}\"\nchip = \"{chip}\"\nbase_url = \"http://{sim}/openai\"\n"
                );
            }
            prices += &format!(
                "[[prices]]\nmodel = \"{model}\"\nchip = \"{chip}\"\neffective_from = 2026-01-01T00:00:00+08:00\n\
                 input_per_1k = \"0.00{}\"\ncached_input_per_1k = \"0.0003\"\noutput_per_1k = \"0.00{}\"\n",
                12 + 3 * m + c,
                24 + 5 * m + c
            );
        }
    }
    std::fs::write(dir.join("pricing/bench.toml"), prices)?;
    let text = std::fs::read_to_string(config)?;
    let text = text.replacen(
        "[pricing]",
        &format!("[billing]\ntimezone = \"{TIME_ZONE}\"\n[pricing]"),
        1,
    );
    std::fs::write(config, text + &upstreams)?;
    Ok(())
}

/// The accounts and keys: (account id, its key ids, the secret of its first key). The
/// biggest account is prepaid with a large balance, so that its requests take holds.
async fn prepare(db: &Db) -> anyhow::Result<Vec<(i64, Vec<i64>, String)>> {
    let mut owners = Vec::new();
    for a in 0..ACCOUNTS {
        let account = store::accounts::create(db, &format!("acct-{a}")).await?;
        let amount = Decimal::from(1_000_000_000u64);
        store::accounts::top_up(db, account.id, amount, "opening", "bench").await?;
        if a == 0 {
            let prepaid = tollgate::store::accounts::BillingMode::Prepaid;
            store::accounts::set_billing(db, account.id, prepaid, None).await?;
        }
        let secrets = crate::bench_keys(db, account.id, KEYS_PER_ACCOUNT - 1).await?;
        let keys: Vec<i64> = store::keys::list(db, Some(account.id))
            .await?
            .iter()
            .map(|k| k.id)
            .collect();
        let first = secrets[0]
            .to_str()?
            .trim_start_matches("Bearer ")
            .to_string();
        owners.push((account.id, keys, first));
    }
    Ok(owners)
}

/// Writes `records` lines of synthetic history into `tollgate usage import -`, in time
/// order over 91 days (2026-09-01 to 2026-12-01, UTC).
fn import(config: &Path, owners: &[(i64, Vec<i64>, String)], records: u64) -> anyhow::Result<()> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--config")
        .arg(config)
        .args(["usage", "import", "-", "--json"])
        .env(procs::ROLE_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    let start = Utc
        .with_ymd_and_hms(2026, 9, 1, 0, 0, 0)
        .unwrap()
        .timestamp_millis();
    let span = 91 * 86_400_000i64;
    let mut rng = SmallRng::seed_from_u64(25);
    {
        let mut input = std::io::BufWriter::with_capacity(1 << 20, child.stdin.take().unwrap());
        for i in 0..records {
            let at = start + (i as i128 * span as i128 / records as i128) as i64;
            let pick: u32 = rng.random_range(0..100);
            let mut a = 0;
            let mut sum = SHARES[0];
            while pick >= sum {
                a += 1;
                sum += SHARES[a];
            }
            let (_, keys, _) = &owners[a];
            let key = keys[rng.random_range(0..keys.len())];
            // Models by popularity: 60%, 30%, 10%; chips 70% / 30%.
            let m = match rng.random_range(0..10) {
                0..6 => 0,
                6..9 => 1,
                _ => 2,
            };
            let c = usize::from(rng.random_range(0..10) >= 7);
            let status = match rng.random_range(0..100) {
                0..97 => "ok",
                97..99 => "upstream_error",
                _ => "client_disconnected",
            };
            let embeddings = rng.random_range(0..10) == 0;
            let prompt: u64 = rng.random_range(20..4000);
            let (completion, cached) = match (status, embeddings) {
                ("upstream_error", _) => (0, 0),
                (_, true) => (0, 0),
                _ => (
                    rng.random_range(1..1000),
                    prompt / 4 * rng.random_range(0..2),
                ),
            };
            let time = |ms| store::from_ms(ms).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let (when, ended) = (time(at), time(at + rng.random_range(200..30_000)));
            // Request ids as the gateway makes them: `req_` and a UUIDv7 of the start.
            let id =
                uuid::Builder::from_unix_timestamp_millis(at as u64, &rng.random()).into_uuid();
            writeln!(
                input,
                r#"{{"request_id":"req_{}","account":"acct-{a}","key_id":{key},"model":"{}","chip":"{}","started_at":"{when}","ended_at":"{ended}","status":"{status}","endpoint":"{}","prompt_tokens":{prompt},"cached_tokens":{cached},"completion_tokens":{completion}}}"#,
                id.simple(),
                MODELS[m],
                CHIPS[c],
                if embeddings { "embeddings" } else { "chat" },
            )?;
        }
        input.flush()?;
    }
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "tollgate usage import failed: {status}");
    Ok(())
}

fn render(measured: &[Measured]) -> String {
    let mut out = String::from(
        "# The read side by ledger size\n\n`scripts/bench --ledger-scale`: each ledger filled \
         through `tollgate usage import`, each read timed over HTTP 5 times on a running \
         gateway (median, and p95 in brackets), in ms.\n\n",
    );
    let columns: Vec<String> = measured
        .iter()
        .map(|m| format!("{} {}M", m.backend, m.records as f64 / 1e6))
        .collect();
    out += &format!(
        "| read | {} |\n|---|{}\n",
        columns.join(" | "),
        "---|".repeat(columns.len())
    );
    if let Some(first) = measured.first() {
        for (i, (name, _, _)) in first.reads.iter().enumerate() {
            let cells: Vec<String> = measured
                .iter()
                .map(|m| format!("{:.1} ({:.1})", m.reads[i].1, m.reads[i].2))
                .collect();
            out += &format!("| {name} | {} |\n", cells.join(" | "));
        }
    }
    let imports: Vec<String> = measured
        .iter()
        .map(|m| format!("{:.0}", m.import_per_s))
        .collect();
    out += &format!("| import, records/s | {} |\n", imports.join(" | "));
    let rates: Vec<String> = measured
        .iter()
        .map(|m| {
            let r = &m.throughput;
            format!(
                "{:.0} ({:.0} to {:.0})",
                r[r.len() / 2],
                r[0],
                r[r.len() - 1]
            )
        })
        .collect();
    out += &format!(
        "| proxied requests/s at 32 connections, a second account's key (rounds: median, lowest to highest) | {} |\n",
        rates.join(" | ")
    );
    let sizes: Vec<String> = measured
        .iter()
        .map(|m| {
            m.bytes_per_million
                .map_or("-".into(), |b| format!("{:.0}", b / 1e6))
        })
        .collect();
    out += &format!(
        "| ledger size, MB per million records | {} |\n",
        sizes.join(" | ")
    );
    let rollups: Vec<String> = measured
        .iter()
        .map(|m| format!("{} / {}", m.rollup_rows.0, m.rollup_rows.1))
        .collect();
    out += &format!(
        "| rollup rows, hourly / daily | {} |\n",
        rollups.join(" | ")
    );
    out
}
