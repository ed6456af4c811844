//! The admin API accepts only tokens it should: signature, exp, nbf, iss, aud, algorithm,
//! required claims and role are all checked.

use crate::helpers;

use chrono::Utc;
use helpers::{ADMIN_SECRET, TestApp};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::Method;
use serde_json::{Value, json};
use tollgate::admin::Role;

fn claims(role: &str) -> Value {
    let now = Utc::now().timestamp();
    json!({"sub": "ops", "role": role, "iss": "tollgate", "aud": "tollgate-admin", "iat": now, "nbf": now, "exp": now + 300})
}

fn sign(claims: &Value, alg: Algorithm, secret: &str) -> String {
    encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn status_with(app: &TestApp, token: &str) -> (u16, Value) {
    app.admin(Method::GET, "/admin/v1/accounts", token, None)
        .await
}

#[tokio::test]
async fn a_valid_admin_token_is_accepted() {
    let app = TestApp::spawn().await;
    let (status, body) = status_with(
        &app,
        &sign(&claims("admin"), Algorithm::HS256, ADMIN_SECRET),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["name"], "acme");
}

#[tokio::test]
async fn bad_tokens_get_401_with_a_reason() {
    let app = TestApp::spawn().await;
    let now = Utc::now().timestamp();
    let with = |patch: Value| {
        let mut c = claims("admin");
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        sign(&c, Algorithm::HS256, ADMIN_SECRET)
    };
    let valid = sign(&claims("admin"), Algorithm::HS256, ADMIN_SECRET);
    let mut parts: Vec<String> = valid.split('.').map(String::from).collect();
    let flipped = if parts[1].ends_with('A') { 'B' } else { 'A' };
    parts[1].pop();
    parts[1].push(flipped);
    let tampered = parts.join(".");
    let none_alg = format!(
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
        valid.split('.').nth(1).unwrap()
    );

    let cases = [
        ("expired", with(json!({"exp": now - 120})), "expired"),
        (
            "not yet valid",
            with(json!({"nbf": now + 120})),
            "not valid yet",
        ),
        (
            "wrong issuer",
            with(json!({"iss": "someone-else"})),
            "wrong issuer",
        ),
        (
            "wrong audience",
            with(json!({"aud": "another-api"})),
            "wrong audience",
        ),
        (
            "missing exp",
            with(json!({"exp": null})),
            "missing claim 'exp'",
        ),
        (
            "missing aud",
            with(json!({"aud": null})),
            "missing claim 'aud'",
        ),
        ("tampered payload", tampered, "bad signature"),
        (
            "wrong secret",
            sign(
                &claims("admin"),
                Algorithm::HS256,
                "another-secret-of-at-least-32-chars!",
            ),
            "bad signature",
        ),
        (
            "wrong algorithm",
            sign(&claims("admin"), Algorithm::HS512, ADMIN_SECRET),
            "algorithm not accepted",
        ),
        ("alg none", none_alg, "malformed"),
        ("garbage", "not.a.jwt".to_string(), "malformed"),
    ];
    for (case, token, reason) in cases {
        let (status, body) = status_with(&app, &token).await;
        assert_eq!(status, 401, "{case}: {body}");
        assert_eq!(body["error"]["code"], "invalid_admin_token", "{case}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{case}: {message}");
    }
    let (status, _) = app.admin(Method::GET, "/admin/v1/accounts", "", None).await;
    assert_eq!(status, 401, "no token");
}

#[tokio::test]
async fn a_small_clock_skew_is_tolerated() {
    let app = TestApp::spawn().await;
    let now = Utc::now().timestamp();
    let mut c = claims("admin");
    c["nbf"] = json!(now + 10);
    let (status, _) = status_with(&app, &sign(&c, Algorithm::HS256, ADMIN_SECRET)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn viewers_read_usage_but_cannot_manage_keys() {
    let app = TestApp::spawn().await;
    let viewer = app.admin_token(Role::Viewer);
    let (status, _) = app
        .admin(Method::GET, "/admin/v1/usage", &viewer, None)
        .await;
    assert_eq!(status, 200);
    for (method, path, body) in [
        (
            Method::POST,
            "/admin/v1/keys",
            Some(json!({"account": "acme"})),
        ),
        (Method::GET, "/admin/v1/keys", None),
        (
            Method::POST,
            "/admin/v1/accounts",
            Some(json!({"name": "x"})),
        ),
    ] {
        let (status, body) = app.admin(method, path, &viewer, body).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body["error"]["type"], "permission_error");
    }
}

#[tokio::test]
async fn rs256_tokens_from_an_identity_provider_are_accepted_with_its_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("idp.pem");
    let public = dir.path().join("idp.pub.pem");
    let openssl = |args: &[&str]| {
        let ok = std::process::Command::new("openssl")
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "openssl {args:?}");
    };
    openssl(&["genrsa", "-out", private.to_str().unwrap(), "2048"]);
    openssl(&[
        "rsa",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    let public_for_config = public.clone();
    let app =
        TestApp::spawn_with(move |c| c.admin.jwt_public_key_file = Some(public_for_config)).await;
    let key = EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap();
    let token = encode(&Header::new(Algorithm::RS256), &claims("admin"), &key).unwrap();
    assert_eq!(status_with(&app, &token).await.0, 200);

    openssl(&["genrsa", "-out", private.to_str().unwrap(), "2048"]);
    let other = EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap();
    let forged = encode(&Header::new(Algorithm::RS256), &claims("admin"), &other).unwrap();
    assert_eq!(status_with(&app, &forged).await.0, 401);
}
