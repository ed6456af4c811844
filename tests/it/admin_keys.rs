//! An operator runs the whole key lifecycle over REST, and every change applies to the very
//! next request.

use crate::helpers;

use helpers::{TestApp, chat};
use reqwest::Method;
use serde_json::{Value, json};
use tollgate::admin::Role;

const ROUTE: &str = "/maas/megrez-7b-instruct/nvidia/chat/completions";

async fn call_with(app: &TestApp, key: &str, path: &str, model: Option<&str>) -> u16 {
    let response = app
        .client
        .post(app.url(path))
        .bearer_auth(key)
        .json(&chat(model, "hi", false, json!({})))
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

#[tokio::test]
async fn accounts_are_created_listed_and_shown_and_names_are_unique() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token(Role::Admin);
    let (status, created) = app
        .admin(
            Method::POST,
            "/admin/v1/accounts",
            &admin,
            Some(json!({"name": "globex"})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, again) = app
        .admin(
            Method::POST,
            "/admin/v1/accounts",
            &admin,
            Some(json!({"name": "globex"})),
        )
        .await;
    assert_eq!(
        (status, again["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
    let (_, list) = app
        .admin(Method::GET, "/admin/v1/accounts", &admin, None)
        .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    let (status, shown) = app
        .admin(
            Method::GET,
            &format!("/admin/v1/accounts/{}", created["id"]),
            &admin,
            None,
        )
        .await;
    assert_eq!((status, &shown["name"]), (200, &json!("globex")));
    let (status, _) = app
        .admin(Method::GET, "/admin/v1/accounts/999", &admin, None)
        .await;
    assert_eq!(status, 404);
    let (status, bad) = app
        .admin(
            Method::POST,
            "/admin/v1/accounts",
            &admin,
            Some(json!({"nom": "x"})),
        )
        .await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );
}

#[tokio::test]
async fn a_key_is_shown_once_then_only_by_prefix_and_metadata() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token(Role::Admin);
    let body = json!({"account": "acme", "name": "ci", "rpm": 30, "allowed_models": ["megrez-7b-instruct"]});
    let (status, issued) = app
        .admin(Method::POST, "/admin/v1/keys", &admin, Some(body))
        .await;
    assert_eq!(status, 201);
    let secret = issued["key"].as_str().unwrap().to_string();
    assert!(secret.starts_with("tg-") && secret.len() == 46);
    assert!(secret.starts_with(issued["prefix"].as_str().unwrap()));
    assert_eq!(
        (issued["state"].as_str(), issued["rpm"].as_u64()),
        (Some("active"), Some(30))
    );

    assert_eq!(call_with(&app, &secret, ROUTE, None).await, 200);
    let (_, shown) = app
        .admin(
            Method::GET,
            &format!("/admin/v1/keys/{}", issued["id"]),
            &admin,
            None,
        )
        .await;
    let (_, listed) = app
        .admin(Method::GET, "/admin/v1/keys?account=acme", &admin, None)
        .await;
    for view in [&shown, &listed] {
        assert!(
            !view.to_string().contains(&secret[11..]),
            "the secret is never shown again: {view}"
        );
    }
    assert!(
        shown["last_used_at"].is_string(),
        "last use comes from the ledger"
    );
    assert_eq!(shown["allowed_models"], json!(["megrez-7b-instruct"]));
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn revocation_applies_to_the_very_next_request() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token(Role::Admin);
    let (_, issued) = app
        .admin(
            Method::POST,
            "/admin/v1/keys",
            &admin,
            Some(json!({"account": "acme"})),
        )
        .await;
    let secret = issued["key"].as_str().unwrap();
    assert_eq!(
        call_with(&app, secret, ROUTE, None).await,
        200,
        "cached now"
    );
    let (status, revoked) = app
        .admin(
            Method::POST,
            &format!("/admin/v1/keys/{}/revoke", issued["id"]),
            &admin,
            None,
        )
        .await;
    assert_eq!((status, revoked["state"].as_str()), (200, Some("revoked")));
    assert_eq!(call_with(&app, secret, ROUTE, None).await, 401);
}

#[tokio::test]
async fn a_rotated_key_keeps_working_for_its_grace_period_only() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token(Role::Admin);
    let (_, old) = app
        .admin(
            Method::POST,
            "/admin/v1/keys",
            &admin,
            Some(json!({"account": "acme", "rpm": 50})),
        )
        .await;
    let old_secret = old["key"].as_str().unwrap();
    let path = format!("/admin/v1/keys/{}/rotate", old["id"]);
    let (status, new) = app
        .admin(
            Method::POST,
            &path,
            &admin,
            Some(json!({"grace_secs": 3600})),
        )
        .await;
    assert_eq!(status, 201);
    let new_secret = new["key"].as_str().unwrap();
    assert_ne!(new_secret, old_secret);
    assert_eq!(new["rpm"], 50, "limits carry over");
    assert_eq!(call_with(&app, new_secret, ROUTE, None).await, 200);
    assert_eq!(
        call_with(&app, old_secret, ROUTE, None).await,
        200,
        "inside the grace period"
    );
    let (_, old_view) = app
        .admin(
            Method::GET,
            &format!("/admin/v1/keys/{}", old["id"]),
            &admin,
            None,
        )
        .await;
    assert_eq!(
        (old_view["state"].as_str(), &old_view["rotated_to"]),
        (Some("rotating"), &new["id"])
    );

    let path = format!("/admin/v1/keys/{}/rotate", new["id"]);
    let (_, newest) = app
        .admin(Method::POST, &path, &admin, Some(json!({"grace_secs": 0})))
        .await;
    assert_eq!(
        call_with(&app, new_secret, ROUTE, None).await,
        401,
        "no grace: gone at once"
    );
    assert_eq!(
        call_with(&app, newest["key"].as_str().unwrap(), ROUTE, None).await,
        200
    );
}

#[tokio::test]
async fn a_key_outside_its_allow_list_gets_403_and_sees_only_its_models() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token(Role::Admin);
    let body = json!({"account": "acme", "allowed_models": ["internlm3-latest"]});
    let (_, issued) = app
        .admin(Method::POST, "/admin/v1/keys", &admin, Some(body))
        .await;
    let secret = issued["key"].as_str().unwrap();
    assert_eq!(call_with(&app, secret, ROUTE, None).await, 403);
    assert_eq!(
        call_with(
            &app,
            secret,
            "/v1/chat/completions",
            Some("megrez-7b-instruct")
        )
        .await,
        403
    );
    assert_eq!(
        call_with(
            &app,
            secret,
            "/v1/chat/completions",
            Some("internlm3-latest")
        )
        .await,
        200
    );
    let models = app.get_json("/v1/models", secret).await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["internlm3-latest"]);

    let patch = json!({"allowed_models": null});
    let (status, _) = app
        .admin(
            Method::PATCH,
            &format!("/admin/v1/keys/{}", issued["id"]),
            &admin,
            Some(patch),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        call_with(&app, secret, ROUTE, None).await,
        200,
        "null clears the allow-list"
    );
}

#[tokio::test]
async fn changed_limits_apply_without_restart() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token(Role::Admin);
    let (_, issued) = app
        .admin(
            Method::POST,
            "/admin/v1/keys",
            &admin,
            Some(json!({"account": "acme", "rpm": 2})),
        )
        .await;
    let secret = issued["key"].as_str().unwrap();
    assert_eq!(call_with(&app, secret, ROUTE, None).await, 200);
    assert_eq!(call_with(&app, secret, ROUTE, None).await, 200);
    assert_eq!(call_with(&app, secret, ROUTE, None).await, 429);
    let path = format!("/admin/v1/keys/{}", issued["id"]);
    let (status, view) = app
        .admin(Method::PATCH, &path, &admin, Some(json!({"rpm": 100})))
        .await;
    assert_eq!((status, view["rpm"].as_u64()), (200, Some(100)));
    assert_eq!(call_with(&app, secret, ROUTE, None).await, 200);
    let (status, error) = app
        .admin(Method::PATCH, &path, &admin, Some(json!({"rpm": 0})))
        .await;
    assert_eq!(
        (status, error["error"]["type"].as_str()),
        (400, Some("invalid_request_error"))
    );
}

#[tokio::test]
async fn the_usage_listing_filters_and_pages() {
    let app = TestApp::spawn().await;
    for chip in ["nvidia", "amd", "chip3"] {
        let path = format!("/maas/megrez-7b-instruct/{chip}/chat/completions");
        assert_eq!(call_with(&app, &app.key, &path, None).await, 200);
    }
    let viewer = app.admin_token(Role::Viewer);
    let (_, page) = app
        .admin(
            Method::GET,
            "/admin/v1/usage?account=acme&limit=2",
            &viewer,
            None,
        )
        .await;
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    assert_eq!(page["data"][0]["chip"], "chip3", "newest first");
    let next = format!(
        "/admin/v1/usage?account=acme&limit=2&cursor={}",
        page["next_cursor"].as_str().unwrap()
    );
    let (_, rest) = app.admin(Method::GET, &next, &viewer, None).await;
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert_eq!(rest["data"][0]["chip"], "nvidia");
    let (_, amd) = app
        .admin(Method::GET, "/admin/v1/usage?chip=amd", &viewer, None)
        .await;
    assert_eq!(amd["data"].as_array().unwrap().len(), 1);
    let (status, _) = app
        .admin(Method::GET, "/admin/v1/usage?limit=0", &viewer, None)
        .await;
    assert_eq!(status, 400);
    for odd in ["12", "x_1", "1_y", "%FF"] {
        let path = format!("/admin/v1/usage?cursor={odd}");
        let (status, error) = app.admin(Method::GET, &path, &viewer, None).await;
        assert_eq!(status, 400, "{odd}: {error}");
    }
    let (status, bad) = app
        .admin(Method::GET, "/admin/v1/usage?colour=red", &viewer, None)
        .await;
    assert_eq!(
        (status, bad["error"]["type"].as_str()),
        (400, Some("invalid_request_error"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_creations_of_one_name_at_once_make_one_account_and_nineteen_409s() {
    let app = TestApp::spawn().await;
    let token = app.admin_token(Role::Admin);
    let attempts = (0..20).map(|_| {
        app.admin(
            Method::POST,
            "/admin/v1/accounts",
            &token,
            Some(json!({"name": "same"})),
        )
    });
    let results = futures_util::future::join_all(attempts).await;
    let created = results.iter().filter(|(status, _)| *status == 201).count();
    let conflicts: Vec<&Value> = results
        .iter()
        .filter(|(status, _)| *status == 409)
        .map(|(_, body)| body)
        .collect();
    assert_eq!((created, conflicts.len()), (1, 19), "{results:?}");
    for body in conflicts {
        assert_eq!(body["error"]["code"], "conflict");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("'same'")
        );
    }
}
