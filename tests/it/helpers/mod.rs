//! Boots the real gateway on port 0 in front of the simulator, with a fresh SQLite ledger,
//! an account and a key, so tests read as what a client does and what the ledger says.

pub mod binary;
pub mod ledger;
pub mod money;
pub mod postgres;
pub mod python;
pub mod redis;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tollgate::admin::Role;
use tollgate::config::{Config, DatabaseConfig, UpstreamConfig};
use tollgate::domain::keys::{self, NewKeyRequest};
use tollgate::store::usage::StoredRecord;
use tollgate::{AppState, Application, cli, sim, store};

pub struct TestApp {
    pub addr: SocketAddr,
    /// The console's own address, when `console.listen` is set.
    pub console: Option<SocketAddr>,
    pub sim: SocketAddr,
    pub key: String,
    pub state: AppState,
    pub client: reqwest::Client,
    /// Holds the ledger's directory for as long as the app lives.
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    running: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// The HS256 secret of admin tokens in tests.
pub const ADMIN_SECRET: &str = "test-admin-secret-of-at-least-32-characters";

/// The demo configuration pointed at `sim`, with a fresh ledger (its files in `dir`).
pub fn test_config(sim: SocketAddr, dir: &tempfile::TempDir) -> Config {
    let db = dir.path().join("ledger.db");
    let mut config =
        cli::demo_config(sim, "127.0.0.1:0", &db).expect("the demo configuration is valid");
    config.database = ledger::fresh(dir.path(), config.database.synchronous);
    ledger::limits(&mut config);
    let secret = dir.path().join("admin-secret");
    std::fs::write(&secret, ADMIN_SECRET).unwrap();
    config.admin.jwt_secret_file = Some(secret);
    // The tests' account owns the demo's deployment too.
    for up in config
        .upstreams
        .iter_mut()
        .filter(|u| u.deployment.is_some())
    {
        up.owners.push("acme".into());
    }
    config
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(|_| {}).await
    }

    /// Like `spawn`, with the configuration changed by `tweak` first.
    pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
        let (sim, _) = sim::spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(sim, &dir);
        tweak(&mut config);
        let app = Application::build(config)
            .await
            .expect("the gateway builds");
        let addr = app.local_addr();
        let console = app.console_addr();
        let state = app.state();
        if store::accounts::find_by_name(state.db(), "acme")
            .await
            .unwrap()
            .is_none()
        {
            store::accounts::create(state.db(), "acme").await.unwrap();
        }
        let key = issue_key(&state, "acme", None).await.secret;
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        TestApp {
            addr,
            console,
            sim,
            key,
            state,
            client: client(),
            _dir: dir,
            stop: Some(stop),
            running: Some(running),
        }
    }

    /// Waits (at most `within`) until the ledger writer has shipped every record this
    /// gateway committed into its database, by itself: nothing here asks it to (a reader's
    /// flush would). The database may be coming back from an outage.
    pub async fn wait_until_shipped(&self, within: std::time::Duration) {
        tokio::time::timeout(within, async {
            while self.state.ledger().queue_depth() > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the journal is not shipped within {within:?}"));
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs `body` with this app's key.
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// POSTs `body` to `path` with `key`: the status and the JSON answer (`null` if none).
    pub async fn post_as(&self, path: &str, key: &str, body: &Value) -> (u16, Value) {
        let request = self.client.post(self.url(path)).bearer_auth(key);
        let response = request.json(body).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A fresh admin token with `role`.
    pub fn admin_token(&self, role: Role) -> String {
        let auth = self
            .state
            .admin_auth()
            .expect("the admin API is on in tests");
        auth.mint("test", role, std::time::Duration::from_secs(300))
            .unwrap()
    }

    /// Calls the admin API with `token`; returns the status and the JSON body.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, self.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// GETs `path` with `token`; returns the body as JSON.
    pub async fn get_json(&self, path: &str, token: &str) -> Value {
        let (_, _, text) = self.get_text(path, token).await;
        serde_json::from_str(&text).unwrap()
    }

    /// GETs `path` with `token`; returns the status, content type and body text.
    pub async fn get_text(&self, path: &str, token: &str) -> (u16, String, String) {
        let response = self
            .client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, content_type, response.text().await.unwrap())
    }

    /// The record of the request that `response` answered (by its `x-request-id`).
    pub async fn record_of(&self, response: &reqwest::Response) -> StoredRecord {
        self.record(&request_id(response)).await
    }

    pub async fn record(&self, request_id: &str) -> StoredRecord {
        store::usage::by_request_id(self.state.usage_db().await.unwrap(), request_id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no usage record for {request_id}"))
    }

    /// Waits for the record of a request whose client is gone (no `[DONE]` to wait for).
    pub async fn eventual_record(&self, request_id: &str) -> StoredRecord {
        for _ in 0..100 {
            let db = self.state.usage_db().await.unwrap();
            if let Ok(Some(r)) = store::usage::by_request_id(db, request_id).await {
                return r;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("no record for {request_id}");
    }

    /// The newest record in the ledger.
    pub async fn latest_record(&self) -> StoredRecord {
        let filter = store::listing::UsageFilter::default();
        store::listing::list(self.state.usage_db().await.unwrap(), &filter, 1)
            .await
            .unwrap()
            .pop()
            .expect("the ledger has a record")
    }

    pub async fn record_count(&self) -> i64 {
        store::usage::count(self.state.usage_db().await.unwrap())
            .await
            .unwrap()
    }

    /// What the simulator last received.
    pub async fn upstream_saw(&self) -> Value {
        self.client
            .get(format!("http://{}/_sim/last", self.sim))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Every record of `request_id` once the ledger has all committed ones: a task's
    /// record is its submission's id, and must be there once.
    pub async fn records_with(&self, request_id: &str) -> Vec<StoredRecord> {
        self.state.ledger().flush().await.unwrap();
        let filter = Default::default();
        let all = store::listing::list(self.state.db(), &filter, 10_000)
            .await
            .unwrap();
        all.into_iter()
            .filter(|r| r.request_id == request_id)
            .collect()
    }

    /// Stops the gateway the way SIGTERM does, waiting for the drain.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(running) = self.running.take() {
            running.await.unwrap().unwrap();
        }
    }
}

/// An HTTP client for tests (TLS provider installed first, as the gateway does).
pub fn client() -> reqwest::Client {
    tollgate::app::install_tls_provider();
    reqwest::Client::new()
}

/// A key issued through the same path as the admin API and the CLI.
pub struct IssuedKey {
    pub secret: String,
    pub id: i64,
}

pub async fn issue_key(
    state: &AppState,
    account: &str,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
) -> IssuedKey {
    let request = NewKeyRequest {
        account: account.into(),
        name: "test".into(),
        expires_at,
        ..Default::default()
    };
    let issued = keys::issue(state.db(), state.keys(), request)
        .await
        .unwrap();
    IssuedKey {
        secret: issued.key,
        id: issued.view.id,
    }
}

/// A migrated ledger without a gateway: account "acme" and one key on it.
pub struct BareLedger {
    pub database: DatabaseConfig,
    pub db: store::Db,
    pub account: store::accounts::Account,
    pub key_id: i64,
}

pub async fn bare_ledger(dir: &tempfile::TempDir) -> BareLedger {
    let database = ledger::fresh(dir.path(), tollgate::config::Synchronous::Normal);
    let db = store::connect(&database).await.unwrap();
    let account = store::accounts::create(&db, "acme").await.unwrap();
    let key_id = insert_key(&db, account.id).await;
    BareLedger {
        database,
        db,
        account,
        key_id,
    }
}

/// Records `m` on chip `c` at 0.001 / 0.002 CNY per 1,000 tokens (in and out) are priced
/// by this version, recorded in `db` (once).
pub async fn simple_price(db: &store::Db) -> tollgate::billing::PriceVersion {
    use rust_decimal::Decimal;
    let price = tollgate::billing::PriceEntry {
        model: "m".into(),
        chip: "c".into(),
        effective_from: chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 1, 1, 0, 0, 0)
            .unwrap(),
        input_per_1k: Decimal::new(1, 3),
        cached_input_per_1k: None,
        cache_write_per_1k: None,
        output_per_1k: Decimal::new(2, 3),
        per_request: Decimal::ZERO,
        per_image: Decimal::ZERO,
        per_task: Decimal::ZERO,
        per_second: Decimal::ZERO,
        per_upload: Decimal::ZERO,
        ..Default::default()
    };
    store::prices::sync(db, &[price]).await.unwrap();
    store::prices::all(db).await.unwrap().remove(0)
}

/// A record of `account_id` and `key_id` for model `m` on chip `c` (`simple_price`'s
/// version `version_id`): 10 prompt and 20 completion tokens, 0.00005 CNY, at `at`.
pub fn simple_record(
    request_id: String,
    (account_id, key_id): (i64, i64),
    version_id: i64,
    at: chrono::DateTime<chrono::Utc>,
) -> tollgate::billing::record::UsageRecord {
    use tollgate::billing::record::{Status, UsageRecord, UsageSource};
    UsageRecord {
        request_id,
        account_id,
        key_id,
        model: "m".into(),
        chip: "c".into(),
        deployment: None,
        endpoint: "chat".into(),
        stream: false,
        status: Status::Ok,
        http_status: 200,
        error: None,
        tokens: tollgate::billing::TokenCounts {
            prompt: 10,
            completion: 20,
            cached: 0,
            cache_write: 0,
            reasoning: 0,
        },
        units: Default::default(),
        usage_source: UsageSource::Reported,
        price_version_id: version_id,
        cost: rust_decimal::Decimal::new(5, 5),
        blocked: false,
        moderation: None,
        started_at: at,
        ended_at: at,
        latency_ms: 1,
        ttft_ms: None,
        attempts: Vec::new(),
        reported: None,
    }
}

/// `n` `simple_record`s of `ledger`'s account and key (the `n`th started at `at(n)`),
/// inserted through the ledger writer's own sink.
pub async fn synthetic_records(
    ledger: &BareLedger,
    n: usize,
    at: impl Fn(usize) -> chrono::DateTime<chrono::Utc>,
) -> Vec<tollgate::billing::record::UsageRecord> {
    let version = simple_price(&ledger.db).await;
    let owner = (ledger.account.id, ledger.key_id);
    let records: Vec<_> = (0..n)
        .map(|i| simple_record(format!("req_synthetic_{i:06}"), owner, version.id, at(i)))
        .collect();
    let sink = store::Sink::open(&ledger.database).await.unwrap();
    let refs: Vec<_> = records.iter().collect();
    sink.insert(&refs).await.unwrap();
    records
}

/// A key of `account` with `limits`, issued as the admin API and the CLI issue keys: its
/// secret.
pub async fn key_with_limits(
    state: &AppState,
    account: &str,
    limits: store::keys::KeyLimits,
) -> String {
    let request = NewKeyRequest {
        account: account.into(),
        name: "limited".into(),
        limits,
        ..Default::default()
    };
    keys::issue(state.db(), state.keys(), request)
        .await
        .unwrap()
        .key
}

/// A new key of `account_id`, straight into the ledger; returns its id.
pub async fn insert_key(db: &store::Db, account_id: i64) -> i64 {
    let secret = tollgate::auth::ApiKey::generate();
    let key = store::keys::insert(
        db,
        store::keys::NewKey {
            account_id,
            name: "k",
            prefix: secret.prefix(),
            secret_hash: &secret.hash(),
            expires_at: None,
            limits: Default::default(),
        },
    )
    .await
    .unwrap();
    key.id
}

/// Uploads one file named `name` holding `bytes` to ComfyUI's `upload/image` with `key`,
/// as a multipart body.
pub async fn upload_image(app: &TestApp, key: &str, name: &str, bytes: &[u8]) -> reqwest::Response {
    let boundary = "tollgate-test-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n\
         Content-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let url = app.url("/api/maas/comfy_task_api/upload/image");
    let request = app.client.post(url).bearer_auth(key);
    request
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// The `x-request-id` tollgate answered with.
pub fn request_id(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-request-id")
        .expect("every proxied response has an x-request-id")
        .to_str()
        .unwrap()
        .to_string()
}

/// A chat body with one user message and simulator knobs.
pub fn chat(model: Option<&str>, content: &str, stream: bool, sim: Value) -> Value {
    let mut body =
        json!({"messages": [{"role": "user", "content": content}], "stream": stream, "x_sim": sim});
    if let Some(model) = model {
        body["model"] = json!(model);
    }
    body
}

pub fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

/// Exact cost under a price of (input, cached, output) per 1k.
pub fn expected_cost(
    prompt: u64,
    cached: u64,
    completion: u64,
    input: &str,
    cached_price: &str,
    output: &str,
) -> Decimal {
    let k = Decimal::from(1000);
    ((Decimal::from(prompt - cached) * dec(input)
        + Decimal::from(cached) * dec(cached_price)
        + Decimal::from(completion) * dec(output))
        / k)
        .normalize()
}

/// Points `model`'s upstreams at `base_url`: another app's simulator, where the tasks that
/// app submitted live (a restarted gateway, a second replica).
pub fn point_model_at(config: &mut Config, model: &str, base_url: &str) {
    let base: tollgate::config::BaseUrl = serde_json::from_value(json!(base_url)).unwrap();
    for up in config.upstreams.iter_mut().filter(|u| u.model == model) {
        up.base_url = base.clone();
    }
}

/// An upstream on a port nothing listens on: connections are refused.
pub fn refusing_upstream(model: &str, chip: &str) -> UpstreamConfig {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let text =
        format!("model = \"{model}\"\nchip = \"{chip}\"\nbase_url = \"http://{closed}/openai\"\n");
    toml::from_str(&text).unwrap()
}

/// A wire-format fixture (`tests/fixtures/`, whose README says what each shows).
pub fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// A JSON object among the project's fixtures.
pub fn own_json(name: &str) -> serde_json::Map<String, Value> {
    serde_json::from_str(&fixture(name)).unwrap()
}

/// Checks that `dialect` reads a task's fixtures: the id its submission gives, a running
/// poll as pending, and a finished one as succeeded with `images` images.
pub fn reads_task_fixtures(
    dialect: &str,
    [submitted, running, done]: [&str; 3],
    task_id: &str,
    images: u64,
) {
    use tollgate::config::Endpoint;
    use tollgate::dialect::TaskState;
    let wire = tollgate::dialect::named(dialect).unwrap();
    assert_eq!(wire.task_id(&own_json(submitted)).as_deref(), Some(task_id));
    assert_eq!(
        wire.task_state(&own_json(running)),
        Some(TaskState::Pending)
    );
    let done = own_json(done);
    assert_eq!(wire.task_state(&done), Some(TaskState::Succeeded));
    assert_eq!(wire.units(Endpoint::Images, &done).images, images);
}

/// Reads an SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {e:?}"))
                .to_string()
        })
        .collect()
}
