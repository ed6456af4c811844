//! The console (`/console/`): in a real browser (Debian's Chromium over WebDriver, driven
//! by `tests/python/console_browser.py`), an operator opens an account, adds its owner and
//! issues a key; the owner, in a second browser, calls the gateway through the OpenAI SDK
//! and sees the request; markup in names stays text; another account's ids are 404; a form
//! without its CSRF token is refused; ten wrong passwords throttle sign-in. Over plain HTTP:
//! the headers that make it safe to expose, sessions' ends, and what each role may reach.
//! Screenshots go to `TOLLGATE_SCREENSHOTS` (default `target/console-screenshots`).

use reqwest::StatusCode;
use reqwest::header::{LOCATION, SET_COOKIE};
use tollgate::console::frame::money;
use tollgate::domain::people::{self, Role};
use tollgate::store;

use crate::helpers::{self, TestApp};

const OPERATOR: (&str, &str) = ("ops@tollgate.test", "the operator's password");

async fn operator(app: &TestApp) {
    people::create(app.state.db(), OPERATOR.0, OPERATOR.1, Role::Operator, None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_and_a_customer_use_the_console_in_a_real_browser() {
    let app = TestApp::spawn().await;
    operator(&app).await;
    let db = app.state.db().clone();
    let acme = store::accounts::find_by_name(&db, "acme")
        .await
        .unwrap()
        .unwrap();
    let acme_key = store::keys::list(&db, Some(acme.id)).await.unwrap()[0].id;
    let shots = std::env::var("TOLLGATE_SCREENSHOTS").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/console-screenshots").into()
    });
    let seen = helpers::python::run_with(
        "console_browser.py",
        vec![
            app.url(""),
            OPERATOR.0.into(),
            OPERATOR.1.into(),
            acme_key.to_string(),
            acme.id.to_string(),
            shots.clone(),
        ],
    )
    .await;
    let s = |k: &str| seen[k].as_str().unwrap_or_default().to_owned();

    assert!(s("operator_landed").starts_with("Overview"), "{seen}");
    // Markup in an account's display name and a key's name is shown as text.
    assert_eq!(seen["account_alert"], false);
    assert_eq!(seen["key_alert"], false);
    assert!(s("accounts_table").contains("<img src=x onerror=alert(1)>"));
    assert!(s("keys_table").contains("<img src=x onerror=alert(1)>"));
    assert!(s("accounts_after_topup").contains("¥100.00"), "{seen}");
    assert!(s("people_table").contains("owner@infini.test"));
    // The secret was shown once, with a copy button, and never again.
    assert!(s("secret_prefix").starts_with("tg-"));
    assert_eq!(seen["secret_shown_again"], false);
    assert_eq!(s("copy_button"), "Copy");
    assert_eq!(s("csrf_missing"), "Refused");

    // The customer's request is in the ledger, on the account the operator opened, and
    // its overview shows it.
    let infini = seen["infini_id"].as_i64().unwrap();
    let record = app.record(&s("request_id")).await;
    assert_eq!(record.account_id, infini);
    let cards = &seen["customer_cards"];
    assert_eq!(cards["Requests"], "1", "{seen}");
    assert_eq!(cards["Spent this month"], money(record.cost), "{seen}");
    assert_eq!(cards["Failed"], "0.0%");
    assert_eq!(cards["Balance"], money(helpers::dec("100") - record.cost));
    assert!(s("customer_by_pair").contains("megrez-7b-instruct"));
    assert!(s("customer_topups").contains("¥100.00"), "{seen}");
    assert!(s("customer_landed").contains("infini"));
    assert!(!s("customer_keys").contains(&format!("{}…", acme.name)));
    // The explorer lists the request, its page adds its cost up, and the CSV export is
    // exactly the ledger's rows of the account.
    assert!(s("usage_records").contains(&s("request_id")), "{seen}");
    assert_eq!(s("usage_total"), money(record.cost));
    assert_eq!(s("arithmetic_sum"), record.cost.normalize().to_string());
    assert_eq!(s("arithmetic_recorded"), s("arithmetic_sum"));
    assert!(s("arithmetic").contains("input_tokens"), "{seen}");
    let mut expected = format!("{}\n", tollgate::domain::usage_export::CSV_HEADER);
    let filter = store::listing::UsageFilter {
        account_id: Some(infini),
        ..Default::default()
    };
    for r in store::listing::list(&db, &filter, 100).await.unwrap() {
        expected += &tollgate::domain::usage_export::csv_record(&r, "infini");
        expected.push('\n');
    }
    assert_eq!(s("csv"), expected);
    assert_eq!(seen["csv_signed_out"], 303, "the export needs a session");
    // The invoice page's total is the invoice API's, and its download the API's document.
    let admin = app.admin_token(tollgate::admin::Role::Viewer);
    let month = chrono::Utc::now().with_timezone(&app.state.config().billing.zone());
    let api = app
        .get_json(
            &format!(
                "/admin/v1/invoices?account=infini&period={}",
                month.format("%Y-%m")
            ),
            &admin,
        )
        .await;
    let total: rust_decimal::Decimal = api["total"].as_str().unwrap().parse().unwrap();
    assert_eq!(s("invoice_total"), money(total), "{seen}");
    assert_eq!(s("invoice_status"), "draft");
    assert!(s("invoice_lines").contains("megrez-7b-instruct"));
    assert_eq!(seen["invoice_json"]["lines"], api["lines"]);
    assert_eq!(seen["invoice_json"]["total_exact"], api["total_exact"]);
    // Another account's key and overview, and the operators' pages, are not there.
    assert_eq!(s("other_key"), "Not found");
    assert_eq!(s("other_account"), "Not found");
    assert_eq!(s("customer_audit"), "Not found");

    // 中文 and dark.
    assert!(
        s("zh_nav").contains("概览") && s("zh_nav").contains("密钥"),
        "{seen}"
    );
    assert_eq!(s("zh_lang"), "zh-CN");
    assert_eq!(s("zh_keys_heading"), "密钥");
    assert_eq!(s("theme"), "dark");
    let backgrounds = &seen["backgrounds"];
    assert_ne!(backgrounds[0], backgrounds[1], "{seen}");
    assert_eq!(backgrounds[1], "rgb(17, 20, 24)");

    // The audit log names each change, who made it and from where.
    let audit = s("audit");
    for action in [
        "account.create",
        "account.top_up",
        "user.create",
        "key.create",
        "session.sign_in",
    ] {
        assert!(audit.contains(action), "{action} missing from {audit}");
    }
    assert!(audit.contains("console:ops@tollgate.test"));
    assert!(!audit.contains(&s("secret_prefix")[3..]) || audit.contains("prefix"));

    // Ten wrong passwords, then the right one is refused for a while.
    assert_eq!(s("tenth_wrong"), "Wrong email or password.");
    assert!(
        s("throttled").starts_with("Too many wrong passwords"),
        "{seen}"
    );

    for name in [
        "overview-en-light",
        "overview-zh-dark",
        "keys-en-light",
        "audit-en-light",
    ] {
        let path = std::path::Path::new(&shots).join(format!("{name}.png"));
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{}", path.display());
    }
}

/// Signs in over HTTP; returns the session cookie's value.
async fn sign_in(app: &TestApp, email: &str, password: &str) -> Result<String, StatusCode> {
    let client = no_redirects();
    let page = client
        .get(app.url("/console/sign-in"))
        .send()
        .await
        .unwrap();
    let cookie = cookie_of(&page, "tollgate_signin").unwrap();
    let html = page.text().await.unwrap();
    let csrf = field(&html, "csrf");
    let response = client
        .post(app.url("/console/sign-in"))
        .header("cookie", format!("tollgate_signin={cookie}"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("email", email),
            ("password", password),
            ("next", "/console/"),
        ])
        .send()
        .await
        .unwrap();
    if response.status() != StatusCode::SEE_OTHER {
        return Err(response.status());
    }
    Ok(cookie_of(&response, "tollgate_session").unwrap())
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn cookie_of(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap().to_owned())
}

/// The value of the hidden field `name` in `html`.
fn field(html: &str, name: &str) -> String {
    let at = html.find(&format!("name=\"{name}\" value=\"")).unwrap();
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_owned()
}

async fn get(app: &TestApp, path: &str, session: &str) -> (StatusCode, String) {
    let response = no_redirects()
        .get(app.url(path))
        .header("cookie", format!("tollgate_session={session}"))
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_is_safe_to_expose() {
    let app = TestApp::spawn().await;
    operator(&app).await;
    // Signed out: every page sends the browser to sign in, and back after.
    let response = no_redirects()
        .get(app.url("/console/keys"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        response.headers()[LOCATION],
        "/console/sign-in?next=/console/keys"
    );
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    for rule in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(rule), "{csp}");
    }
    assert_eq!(response.headers()["x-frame-options"], "DENY");

    // The session cookie is HttpOnly and SameSite=Strict, Secure behind TLS.
    let page = no_redirects()
        .get(app.url("/console/sign-in"))
        .send()
        .await
        .unwrap();
    let signin = cookie_of(&page, "tollgate_signin").unwrap();
    let csrf = field(&page.text().await.unwrap(), "csrf");
    let signed = no_redirects()
        .post(app.url("/console/sign-in"))
        .header("cookie", format!("tollgate_signin={signin}"))
        .header("x-forwarded-proto", "https")
        .form(&[
            ("csrf", csrf.as_str()),
            ("email", OPERATOR.0),
            ("password", OPERATOR.1),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), StatusCode::SEE_OTHER);
    let set = signed
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with("tollgate_session="))
        .unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/console"] {
        assert!(set.contains(attribute), "{set}");
    }
    // The sign-in form's own token must come back with it.
    let forged = no_redirects()
        .post(app.url("/console/sign-in"))
        .form(&[
            ("csrf", "made-up"),
            ("email", OPERATOR.0),
            ("password", OPERATOR.1),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);

    // A signed-in form without its CSRF token, or with another's, is refused and changes
    // nothing.
    let session = sign_in(&app, OPERATOR.0, OPERATOR.1).await.unwrap();
    let keys_before = store::keys::list(app.state.db(), None).await.unwrap().len();
    for token in ["", "not-the-token"] {
        let response = no_redirects()
            .post(app.url("/console/keys"))
            .header("cookie", format!("tollgate_session={session}"))
            .form(&[("csrf", token), ("account", "acme"), ("name", "forged")])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    assert_eq!(
        store::keys::list(app.state.db(), None).await.unwrap().len(),
        keys_before
    );
    // No secret in any page: the key list shows prefixes only.
    let (status, keys_page) = get(&app, "/console/keys", &session).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!keys_page.contains(&app.key));
    assert!(keys_page.contains(&app.key[..11]));
    // A wrong password is 401 with one message for any wrong part; an unknown email too.
    assert_eq!(
        sign_in(&app, OPERATOR.0, "wrong password!").await,
        Err(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        sign_in(&app, "nobody@tollgate.test", OPERATOR.1).await,
        Err(StatusCode::UNAUTHORIZED)
    );
    // Unknown console paths are 404 pages, not the API's JSON.
    let (status, body) = get(&app, "/console/nothing-here", &session).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("<h1>Not found</h1>"));
}

#[tokio::test(flavor = "multi_thread")]
async fn each_role_reaches_only_its_own_account_and_pages() {
    let app = TestApp::spawn().await;
    let db = app.state.db().clone();
    let acme = store::accounts::find_by_name(&db, "acme")
        .await
        .unwrap()
        .unwrap();
    let other = store::accounts::create(&db, "other").await.unwrap();
    let other_key = helpers::issue_key(&app.state, "other", None).await;
    let (status, answer) = app
        .post_as(
            "/v1/chat/completions",
            &other_key.secret,
            &helpers::chat(
                Some("megrez-7b-instruct"),
                "hi",
                false,
                serde_json::json!({}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    app.wait_until_shipped(std::time::Duration::from_secs(10))
        .await;
    let other_request = app.latest_record().await.request_id;
    let password = "a member's password";
    for (email, role) in [
        ("owner@acme.test", Role::Owner),
        ("member@acme.test", Role::Member),
        ("viewer@acme.test", Role::Viewer),
    ] {
        people::create(&db, email, password, role, Some(acme.id))
            .await
            .unwrap();
    }
    for email in ["owner@acme.test", "member@acme.test", "viewer@acme.test"] {
        let session = sign_in(&app, email, password).await.unwrap();
        for path in [
            format!("/console/keys/{}", other_key.id),
            format!("/console/?account={}", other.id),
            format!("/console/keys?account={}", other.id),
            format!("/console/invoices?account={}", other.id),
            format!("/console/invoices/inv_{}_202612.json", other.id),
            format!("/console/invoices/inv_{}_202612.csv", other.id),
            format!("/console/usage?account={}", other.id),
            format!("/console/usage.csv?account={}", other.id),
            format!("/console/usage?key={}", other_key.id),
            format!("/console/usage/{other_request}"),
            format!("/console/tasks?account={}", other.id),
            "/console/accounts".into(),
            "/console/audit".into(),
        ] {
            let (status, _) = get(&app, &path, &session).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{email} {path}");
        }
        let (status, page) = get(&app, "/console/keys", &session).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!page.contains(&other_key.secret[..11]), "{email}");
        assert!(page.contains(&app.key[..11]), "{email}");
        let (status, _) = get(&app, "/console/people", &session).await;
        let expected = if email.starts_with("owner") {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        assert_eq!(status, expected, "{email} /console/people");
    }
    // A viewer cannot issue keys; a member can, for its own account only.
    let issue = async |email: &str| {
        let session = sign_in(&app, email, password).await.unwrap();
        let (_, page) = get(&app, "/console/keys", &session).await;
        no_redirects()
            .post(app.url("/console/keys"))
            .header("cookie", format!("tollgate_session={session}"))
            .form(&[
                ("csrf", field(&page, "csrf").as_str()),
                ("account", "other"),
                ("name", "mine"),
            ])
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(issue("viewer@acme.test").await, StatusCode::NOT_FOUND);
    assert_eq!(issue("member@acme.test").await, StatusCode::OK);
    let mine = store::keys::list(&db, None).await.unwrap();
    let mine = mine.iter().find(|k| k.name == "mine").unwrap();
    assert_eq!(
        mine.account_id, acme.id,
        "a member's key is its own account's"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_end_at_sign_out_everywhere_password_change_and_disabling() {
    let app = TestApp::spawn().await;
    operator(&app).await;
    let db = app.state.db().clone();
    let first = sign_in(&app, OPERATOR.0, OPERATOR.1).await.unwrap();
    let second = sign_in(&app, OPERATOR.0, OPERATOR.1).await.unwrap();
    assert_ne!(first, second);
    // A password change keeps this session and ends the other.
    let (_, me) = get(&app, "/console/me", &first).await;
    let changed = no_redirects()
        .post(app.url("/console/me/password"))
        .header("cookie", format!("tollgate_session={first}"))
        .form(&[
            ("csrf", field(&me, "csrf").as_str()),
            ("current", OPERATOR.1),
            ("new", "a brand new password"),
            ("again", "a brand new password"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    assert_eq!(get(&app, "/console/", &first).await.0, StatusCode::OK);
    assert_eq!(
        get(&app, "/console/", &second).await.0,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        sign_in(&app, OPERATOR.0, OPERATOR.1).await,
        Err(StatusCode::UNAUTHORIZED)
    );
    let third = sign_in(&app, OPERATOR.0, "a brand new password")
        .await
        .unwrap();
    // Sign-out everywhere ends both.
    let (_, me) = get(&app, "/console/me", &first).await;
    let out = no_redirects()
        .post(app.url("/console/me/sign-out-everywhere"))
        .header("cookie", format!("tollgate_session={first}"))
        .form(&[("csrf", field(&me, "csrf").as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    for session in [&first, &third] {
        assert_eq!(
            get(&app, "/console/", session).await.0,
            StatusCode::SEE_OTHER
        );
    }
    // A disabled person's sessions end and sign-in is refused.
    let fourth = sign_in(&app, OPERATOR.0, "a brand new password")
        .await
        .unwrap();
    let row = store::people::by_email(&db, OPERATOR.0)
        .await
        .unwrap()
        .unwrap();
    people::set_disabled(&db, row.id, true).await.unwrap();
    assert_eq!(
        get(&app, "/console/", &fourth).await.0,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        sign_in(&app, OPERATOR.0, "a brand new password").await,
        Err(StatusCode::UNAUTHORIZED)
    );
    // An idle session ends after console.idle_minutes.
    people::set_disabled(&db, row.id, false).await.unwrap();
    let idle = sign_in(&app, OPERATOR.0, "a brand new password")
        .await
        .unwrap();
    let lifetimes = people::sessions::Lifetimes::from_config(&app.state.config().console);
    assert_eq!(
        people::sessions::sweep(&db, lifetimes, app.state.sign_in_throttle())
            .await
            .unwrap(),
        0,
        "a fresh session is alive"
    );
    let long_ago = chrono::Utc::now() - chrono::TimeDelta::minutes(31);
    let hash: [u8; 32] = sha2::Digest::finalize(sha2::Digest::chain_update(
        sha2::Sha256::default(),
        idle.as_bytes(),
    ))
    .into();
    store::people::touch_session(&db, &hash, long_ago)
        .await
        .unwrap();
    assert_eq!(get(&app, "/console/", &idle).await.0, StatusCode::SEE_OTHER);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_change_through_the_admin_api_is_in_the_audit_log_without_secrets() {
    use reqwest::Method;
    use tollgate::admin::Role as AdminRole;
    let app = TestApp::spawn().await;
    let admin = app.admin_token(AdminRole::Admin);
    let (status, account) = app
        .admin(
            Method::POST,
            "/admin/v1/accounts",
            &admin,
            Some(serde_json::json!({"name": "audited", "billing_mode": "prepaid"})),
        )
        .await;
    assert_eq!(status, 201, "{account}");
    let id = account["id"].as_i64().unwrap();
    let topup = app
        .client
        .post(app.url(&format!("/admin/v1/accounts/{id}/topups")))
        .bearer_auth(&admin)
        .header("idempotency-key", "t-1")
        .json(&serde_json::json!({"amount": "10.00"}))
        .send()
        .await
        .unwrap();
    assert_eq!(topup.status(), 201);
    let (_, issued) = app
        .admin(
            Method::POST,
            "/admin/v1/keys",
            &admin,
            Some(serde_json::json!({"account": "audited", "name": "k"})),
        )
        .await;
    let key = issued["id"].as_i64().unwrap();
    let secret = issued["key"].as_str().unwrap().to_owned();
    app.admin(
        Method::PATCH,
        &format!("/admin/v1/keys/{key}"),
        &admin,
        Some(serde_json::json!({"rpm": 5})),
    )
    .await;
    let (_, rotated) = app
        .admin(
            Method::POST,
            &format!("/admin/v1/keys/{key}/rotate"),
            &admin,
            None,
        )
        .await;
    let new_secret = rotated["key"].as_str().unwrap().to_owned();
    app.admin(
        Method::POST,
        &format!("/admin/v1/keys/{key}/revoke"),
        &admin,
        None,
    )
    .await;

    let viewer = app.admin_token(AdminRole::Viewer);
    let log = app
        .get_json(&format!("/admin/v1/audit?account_id={id}"), &viewer)
        .await;
    let entries = log["data"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "key.revoke",
            "key.rotate",
            "key.update",
            "key.create",
            "account.top_up",
            "account.create"
        ]
    );
    for entry in entries {
        assert_eq!(entry["actor"], "admin:test");
        assert_eq!(entry["address"], "127.0.0.1");
    }
    let update = &entries[2];
    let before: serde_json::Value =
        serde_json::from_str(update["before"].as_str().unwrap()).unwrap();
    let after: serde_json::Value = serde_json::from_str(update["after"].as_str().unwrap()).unwrap();
    assert_eq!(
        (before["rpm"].clone(), after["rpm"].clone()),
        (serde_json::Value::Null, 5.into())
    );
    let text = log.to_string();
    assert!(
        !text.contains(&secret) && !text.contains(&new_secret[11..]),
        "no secret in the log"
    );
    // The log cannot be edited, even by the ledger's own connection.
    let edit = match app.state.db() {
        store::Db::Sqlite(pool) => sqlx::query("DELETE FROM audit_log")
            .execute(pool)
            .await
            .is_err(),
        store::Db::Postgres(pool) => sqlx::query("UPDATE audit_log SET actor = 'x'")
            .execute(pool)
            .await
            .is_err(),
    };
    assert!(edit, "the audit log is append-only");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_page_renders_for_each_role_in_both_languages_and_holds_no_secret() {
    let app = TestApp::spawn().await;
    operator(&app).await;
    let db = app.state.db().clone();
    let acme = store::accounts::find_by_name(&db, "acme")
        .await
        .unwrap()
        .unwrap();
    people::create(
        &db,
        "viewer@acme.test",
        "a viewer's password",
        Role::Viewer,
        Some(acme.id),
    )
    .await
    .unwrap();
    // Some usage to show.
    let response = app
        .post(
            "/v1/chat/completions",
            &helpers::chat(
                Some("megrez-7b-instruct"),
                "hi",
                false,
                serde_json::json!({}),
            ),
        )
        .await;
    assert_eq!(response.status(), 200);
    let request_id = helpers::request_id(&response);
    let key_id = store::keys::list(&db, Some(acme.id)).await.unwrap()[0].id;
    let zone = app.state.config().billing.zone();
    let this_month = chrono::Utc::now().with_timezone(&zone).format("%Y%m");
    let pages = [
        "/console/".to_owned(),
        format!("/console/?account={}", acme.id),
        "/console/usage".into(),
        "/console/usage?every=hour&by=key".into(),
        "/console/usage?by=account".into(),
        format!("/console/usage/{request_id}"),
        "/console/keys".into(),
        format!("/console/keys/{key_id}"),
        "/console/invoices".into(),
        format!("/console/invoices?account={}", acme.id),
        format!("/console/invoices/inv_{}_{this_month}.html", acme.id),
        "/console/tasks".into(),
        "/console/prices".into(),
        "/console/me".into(),
    ];
    let operator_only = [
        "/console/accounts",
        "/console/audit",
        "/console/health",
        "/console/people",
    ];
    for (email, password, operator) in [
        (OPERATOR.0, OPERATOR.1, true),
        ("viewer@acme.test", "a viewer's password", false),
    ] {
        let session = sign_in(&app, email, password).await.unwrap();
        for lang in ["en", "zh"] {
            let all = pages.iter().map(String::as_str).chain(operator_only);
            for path in all {
                let response = no_redirects()
                    .get(app.url(path))
                    .header("cookie", format!("tollgate_session={session}; lang={lang}"))
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                let body = response.text().await.unwrap();
                let expected = if operator || !operator_only.contains(&path) {
                    StatusCode::OK
                } else {
                    StatusCode::NOT_FOUND
                };
                assert_eq!(status, expected, "{email} {lang} {path}");
                assert!(!body.contains(&app.key), "{path} shows a key's secret");
                let tag = if lang == "zh" {
                    "lang=\"zh-CN\""
                } else {
                    "lang=\"en\""
                };
                assert!(body.contains(tag), "{email} {lang} {path}");
            }
        }
    }
    // The request's page adds its cost up to the recorded cost.
    let session = sign_in(&app, OPERATOR.0, OPERATOR.1).await.unwrap();
    let (_, page) = get(&app, &format!("/console/usage/{request_id}"), &session).await;
    let record = app.record(&request_id).await;
    assert!(
        page.contains(&format!(
            "<td class=\"num\" id=\"sum\">{}</td>",
            record.cost.normalize()
        )),
        "{page}"
    );
    assert!(
        !page.contains("class=\"error\""),
        "the sum is the recorded cost"
    );
    // An unreadable period is a 400 page, not a crash.
    let (status, _) = get(&app, "/console/usage?from=yesterday", &session).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = get(&app, "/console/invoices?period=2026-13", &session).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_requests_page_shows_the_backends_tried_and_the_counts_as_reported() {
    let app = TestApp::spawn_with(|c| {
        c.routing.default_policy = tollgate::config::RoutingPolicy::First;
        (c.upstreams).insert(0, helpers::refusing_upstream("internlm3-latest", "dead"));
    })
    .await;
    operator(&app).await;
    let session = sign_in(&app, OPERATOR.0, OPERATOR.1).await.unwrap();
    // Failed over: the refusing chip, then the one that took it.
    let body = helpers::chat(Some("internlm3-latest"), "hi", false, serde_json::json!({}));
    let response = app.post("/v1/chat/completions", &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let id = helpers::request_id(&response);
    let (status, page) = get(&app, &format!("/console/usage/{id}"), &session).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("<li>dead: refused the connection</li>")
            && page.contains("<li>ascend: took the request</li>"),
        "{page}"
    );
    assert!(page.contains("reported by the backend"), "{page}");
    assert!(!page.contains("id=\"reported\""), "billed as reported");
    // Usage beyond belief: billed as estimated, the backend's counts shown beside.
    let knobs = serde_json::json!({"prompt_tokens": 5, "completion_tokens": u64::MAX});
    let response = app
        .post(
            "/maas/megrez-7b-instruct/nvidia/chat/completions",
            &helpers::chat(None, "hi", false, knobs),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let id = helpers::request_id(&response);
    let (_, page) = get(&app, &format!("/console/usage/{id}"), &session).await;
    let reported = &page[page.find("id=\"reported\"").expect("the reported counts")..];
    assert!(reported.contains("18,446,744,073,709,551,615"), "{page}");
    assert!(page.contains("<li>nvidia: "), "one backend: {page}");
    let record = app.record(&id).await;
    assert!(
        page.contains(&format!("id=\"sum\">{}</td>", record.cost.normalize())),
        "the sum is of the billed counts: {page}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_passwords_are_counted_once_for_all_replicas() {
    let server = tokio::task::spawn_blocking(helpers::postgres::Postgres::start)
        .await
        .unwrap();
    let apps = crate::replicas::replicas(&server.url, 2).await;
    operator(&apps[0]).await;
    // Ten wrong passwords, spread over the two replicas: each counts the other's.
    for i in 0..10 {
        let app = &apps[i % 2];
        assert_eq!(
            sign_in(app, OPERATOR.0, "a guess").await,
            Err(StatusCode::UNAUTHORIZED),
            "guess {i}"
        );
    }
    for app in &apps {
        assert_eq!(
            sign_in(app, OPERATOR.0, OPERATOR.1).await,
            Err(StatusCode::TOO_MANY_REQUESTS),
            "closed on every replica, even for the right password"
        );
    }
    // The upkeep's sweep keeps what is still in the window.
    let db = apps[1].state.db();
    let lifetimes = people::sessions::Lifetimes::from_config(&apps[1].state.config().console);
    people::sessions::sweep(db, lifetimes, apps[1].state.sign_in_throttle())
        .await
        .unwrap();
    assert_eq!(
        sign_in(&apps[1], OPERATOR.0, OPERATOR.1).await,
        Err(StatusCode::TOO_MANY_REQUESTS)
    );
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn owners_disable_their_people_and_operators_edit_accounts() {
    let app = TestApp::spawn().await;
    operator(&app).await;
    let db = app.state.db().clone();
    let acme = store::accounts::find_by_name(&db, "acme")
        .await
        .unwrap()
        .unwrap();
    let other = store::accounts::create(&db, "other").await.unwrap();
    let password = "a long enough password";
    let owner = people::create(&db, "owner@acme.test", password, Role::Owner, Some(acme.id))
        .await
        .unwrap();
    let member = people::create(
        &db,
        "member@acme.test",
        password,
        Role::Member,
        Some(acme.id),
    )
    .await
    .unwrap();
    let stranger = people::create(&db, "x@other.test", password, Role::Viewer, Some(other.id))
        .await
        .unwrap();
    let post = async |session: &str, path: &str, fields: &[(&str, &str)]| {
        let (_, page) = get(&app, "/console/me", session).await;
        let csrf = field(&page, "csrf");
        let mut form = vec![("csrf", csrf.as_str())];
        form.extend_from_slice(fields);
        no_redirects()
            .post(app.url(path))
            .header("cookie", format!("tollgate_session={session}"))
            .form(&form)
            .send()
            .await
            .unwrap()
    };
    let member_session = sign_in(&app, "member@acme.test", password).await.unwrap();
    let owner_session = sign_in(&app, "owner@acme.test", password).await.unwrap();
    // A member may not; an owner may not touch another account's person or oneself.
    let path = |id: i64, what: &str| format!("/console/people/{id}/{what}");
    let refused = post(&member_session, &path(owner.id, "disable"), &[]).await;
    assert_eq!(refused.status(), StatusCode::NOT_FOUND);
    for id in [stranger.id, owner.id] {
        let refused = post(&owner_session, &path(id, "disable"), &[]).await;
        assert_eq!(refused.status(), StatusCode::NOT_FOUND, "user {id}");
    }
    let done = post(&owner_session, &path(member.id, "disable"), &[]).await;
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        get(&app, "/console/", &member_session).await.0,
        StatusCode::SEE_OTHER,
        "a disabled member's session ends"
    );
    assert!(people::get(&db, member.id).await.unwrap().disabled);
    post(&owner_session, &path(member.id, "enable"), &[]).await;
    assert!(sign_in(&app, "member@acme.test", password).await.is_ok());

    // An operator edits an account; a bad time zone changes nothing.
    let ops = sign_in(&app, OPERATOR.0, OPERATOR.1).await.unwrap();
    let account_path = format!("/console/accounts/{}", acme.id);
    let bad = post(
        &ops,
        &account_path,
        &[("display_name", "无问芯穹"), ("time_zone", "Mars/Base")],
    )
    .await;
    assert_eq!(
        bad.status(),
        StatusCode::BAD_REQUEST,
        "a refused form is 400"
    );
    assert!(bad.text().await.unwrap().contains("Mars/Base"));
    assert_eq!(
        store::accounts::get(&db, acme.id)
            .await
            .unwrap()
            .unwrap()
            .display_name,
        ""
    );
    let saved = post(
        &ops,
        &account_path,
        &[
            ("display_name", "无问芯穹"),
            ("time_zone", "Asia/Shanghai"),
            ("mode", "prepaid"),
        ],
    )
    .await;
    assert_eq!(saved.status(), StatusCode::SEE_OTHER);
    let edited = store::accounts::get(&db, acme.id).await.unwrap().unwrap();
    assert_eq!(edited.display_name, "无问芯穹");
    assert_eq!(edited.time_zone.as_deref(), Some("Asia/Shanghai"));
    assert_eq!(edited.billing_mode, store::accounts::BillingMode::Prepaid);
    // Its people's and keys' times are shown in its zone from then on.
    let ny = [
        ("display_name", "无问芯穹"),
        ("time_zone", "America/New_York"),
        ("mode", "prepaid"),
    ];
    assert_eq!(
        post(&ops, &account_path, &ny).await.status(),
        StatusCode::SEE_OTHER
    );
    let (_, page) = get(&app, "/console/people", &owner_session).await;
    let created = people::get(&db, member.id).await.unwrap().created_at;
    let at = |zone| tollgate::console::frame::time(created, zone);
    assert!(page.contains(&at(chrono_tz::America::New_York)), "{page}");
    assert!(!page.contains(&at(chrono_tz::Asia::Shanghai)), "{page}");
    // An owner cannot reach the account's settings.
    assert_eq!(
        get(&app, &account_path, &owner_session).await.0,
        StatusCode::NOT_FOUND
    );
    let log = tollgate::domain::audit_log::page(&db, Some(acme.id), None)
        .await
        .unwrap();
    let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
    for action in ["account.update", "user.disable", "user.enable"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_can_have_an_address_of_its_own_off_the_public_port() {
    let app =
        TestApp::spawn_with(|c| c.console.listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let console = app
        .console
        .expect("console.listen gives the console its own address");
    assert_ne!(console, app.addr);
    let on_public = no_redirects()
        .get(app.url("/console/sign-in"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        on_public.status(),
        StatusCode::NOT_FOUND,
        "not on the public port"
    );
    let own = no_redirects()
        .get(format!("http://{console}/console/sign-in"))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), StatusCode::OK);
    assert!(own.text().await.unwrap().contains("<h1>Sign in</h1>"));
    // The gateway's routes stay on the public port only.
    let api = no_redirects()
        .get(format!("http://{console}/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), StatusCode::NOT_FOUND);
    let models = app
        .client
        .get(app.url("/v1/models"))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn console_top_ups_credit_once_per_form_while_requests_spend_and_the_money_adds_up() {
    let app = TestApp::spawn().await;
    operator(&app).await;
    let db = app.state.db().clone();
    let acme = store::accounts::find_by_name(&db, "acme")
        .await
        .unwrap()
        .unwrap();
    tollgate::domain::accounts::set_billing(
        &db,
        acme.id,
        Some(store::accounts::BillingMode::Prepaid),
        None,
    )
    .await
    .unwrap();
    app.state
        .spending()
        .set_allowance(acme.id, Some(rust_decimal::Decimal::ZERO));
    let session = sign_in(&app, OPERATOR.0, OPERATOR.1).await.unwrap();
    let (_, page) = get(&app, "/console/accounts", &session).await;
    let csrf = field(&page, "csrf");
    // Eight forms, each posted three times at once (a double click, a retry), while the
    // account's key spends.
    let top_up = |key: String| {
        let (csrf, session, url) = (
            csrf.clone(),
            session.clone(),
            app.url("/console/accounts/top-up"),
        );
        let id = acme.id.to_string();
        async move {
            no_redirects()
                .post(url)
                .header("cookie", format!("tollgate_session={session}"))
                .form(&[
                    ("csrf", csrf.as_str()),
                    ("account_id", id.as_str()),
                    ("amount", "1.25"),
                    ("idempotency_key", key.as_str()),
                ])
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let mut posts = Vec::new();
    for form in 0..8 {
        for _ in 0..3 {
            posts.push(tokio::spawn(top_up(format!("console-form-{form}"))));
        }
    }
    let spend = (0..12).map(|_| {
        let (client, url, key) = (
            app.client.clone(),
            app.url("/v1/chat/completions"),
            app.key.clone(),
        );
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(key)
                .json(&helpers::chat(
                    Some("megrez-7b-instruct"),
                    "hi",
                    false,
                    serde_json::json!({}),
                ))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    });
    let spent: Vec<u16> = futures_util::future::join_all(spend)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    for post in posts {
        assert_eq!(post.await.unwrap(), StatusCode::SEE_OTHER);
    }
    // Requests before the first credit are refused (402); none fails otherwise.
    assert!(spent.iter().all(|s| *s == 200 || *s == 402), "{spent:?}");
    let topped_up = store::accounts::topped_up(&db, acme.id).await.unwrap();
    assert_eq!(
        topped_up,
        helpers::dec("10.00"),
        "eight forms credit 8 × 1.25 once each"
    );
    let figures = helpers::money::assert_invariant(&app, acme.id).await;
    assert_eq!(
        figures.held,
        rust_decimal::Decimal::ZERO,
        "nothing in flight"
    );
    assert_eq!(figures.records, spent.iter().filter(|s| **s == 200).count());
    // The audit log has one top-up per form.
    let log = tollgate::domain::audit_log::page(&db, Some(acme.id), None)
        .await
        .unwrap();
    assert_eq!(
        log.iter().filter(|e| e.action == "account.top_up").count(),
        8
    );
}

/// An account's page lists its credit grants (money and tokens) with what each has left,
/// their expiry in its own time zone.
#[tokio::test(flavor = "multi_thread")]
async fn an_accounts_page_lists_its_grants_and_what_each_has_left() {
    let app = TestApp::spawn().await;
    operator(&app).await;
    let expires = chrono::Utc::now() + chrono::Duration::days(30);
    for (key, amount, tokens) in [("money", Some("12.50"), None), ("tokens", None, Some(5000))] {
        let asked = tollgate::domain::grants::GrantRequest {
            amount: amount.map(|a| a.parse().unwrap()),
            tokens,
            model: tokens.map(|_| "megrez-7b-instruct"),
            kind: "promotional",
            priority: None,
            effective_at: None,
            expires_at: Some(expires),
            reason: "launch offer",
            actor: "test",
            idempotency_key: key,
        };
        tollgate::domain::grants::issue(app.state.db(), Some(app.state.spending()), 1, &asked)
            .await
            .unwrap();
    }
    let session = sign_in(&app, OPERATOR.0, OPERATOR.1).await.unwrap();
    let (status, html) = get(&app, "/console/accounts/1", &session).await;
    assert_eq!(status, StatusCode::OK);
    for shown in [
        "Credit grants",
        "12.50",
        "5,000 tokens · megrez-7b-instruct",
        "open",
    ] {
        assert!(html.contains(shown), "{shown} in {html}");
    }
}
