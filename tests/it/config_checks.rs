//! Start-up refuses a configuration it cannot bill with, and says why.

use crate::helpers;

use tollgate::Application;
use tollgate::config::{Config, Endpoint};

#[test]
fn the_example_configuration_is_valid() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tollgate.example.toml"
    ))
    .unwrap();
    // Valid without the backends' credentials: only serving needs them.
    let config = Config::from_toml(&text, std::iter::empty()).unwrap();
    assert_eq!(config.upstreams.len(), 8);
}

#[test]
fn commands_that_do_not_serve_need_no_backend_credential_and_serve_names_the_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = helpers::binary::write_config(dir.path(), "127.0.0.1:9".parse().unwrap());
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen(
        "base_url = \"http://127.0.0.1:9/genstudio\"\n",
        "base_url = \"http://127.0.0.1:9/genstudio\"\napi_key_env = \"TOLLGATE_IT_SURELY_UNSET\"\n",
        1,
    );
    assert!(text.contains("TOLLGATE_IT_SURELY_UNSET"));
    std::fs::write(&config, text).unwrap();
    helpers::binary::cli(&config, &["accounts", "create", "acme"]);
    let key = helpers::binary::cli(&config, &["keys", "create", "--account", "acme"]);
    assert!(key.starts_with("tg-"));
    let out = std::process::Command::new(helpers::binary::BIN)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TOLLGATE_IT_SURELY_UNSET"), "{stderr}");
    // Everything is checked before the price tables are recorded (a version is kept
    // forever): the refused start recorded none.
    let listed = helpers::binary::cli(&config, &["prices", "list", "--json"]);
    assert_eq!(listed.trim(), "[]", "{listed}");
}

async fn build_error(pricing: &str) -> String {
    let (sim, _) = tollgate::sim::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = helpers::test_config(sim, &dir);
    let prices = dir.path().join("prices");
    std::fs::create_dir(&prices).unwrap();
    std::fs::write(prices.join("p.toml"), pricing).unwrap();
    config.pricing.dir = prices;
    match Application::build(config).await {
        Ok(_) => panic!("the gateway started with an unusable price table"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn a_price_for_an_unknown_chip_is_refused() {
    let error = build_error(
        "[[prices]]\nmodel = \"megrez-7b-instruct\"\nchip = \"tpu9\"\neffective_from = 2026-01-01T00:00:00Z\ninput_per_1k = \"1\"\n",
    )
    .await;
    assert!(error.contains("unknown chip 'tpu9'"), "{error}");
}

#[tokio::test]
async fn an_upstream_without_a_price_is_refused() {
    let error = build_error("").await;
    assert!(error.contains("has no price"), "{error}");
}

#[tokio::test]
async fn a_float_price_is_refused() {
    let error = build_error(
        "[[prices]]\nmodel = \"megrez-7b-instruct\"\nchip = \"*\"\neffective_from = 2026-01-01T00:00:00Z\ninput_per_1k = 0.001\n",
    )
    .await;
    assert!(error.contains("write it as a string"), "{error}");
}

#[tokio::test]
async fn an_endpoint_its_dialect_does_not_have_is_refused_and_old_endpoint_names_still_read() {
    let (sim, _) = tollgate::sim::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = helpers::test_config(sim, &dir);
    let qwen = config
        .upstreams
        .iter_mut()
        .find(|u| u.dialect == "dashscope")
        .unwrap();
    *qwen = toml::from_str(&format!(
        "model = \"qwen-plus\"\nchip = \"aliyun\"\ndialect = \"dashscope\"\n\
         endpoint = \"embeddings\"\nbase_url = \"http://{sim}/dashscope\"\n"
    ))
    .unwrap();
    let error = match Application::build(config).await {
        Ok(_) => panic!("a DashScope upstream serving embeddings was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains("qwen-plus/aliyun: dialect dashscope does not serve embeddings"),
        "{error}"
    );
    // Endpoints are the generic kinds; tasks are a dialect's routes, not an endpoint.
    let upstream = |dialect: &str, endpoint: &str| {
        format!(
            "[[upstreams]]\nmodel = \"m\"\nchip = \"c\"\ndialect = \"{dialect}\"\n\
             endpoint = \"{endpoint}\"\nbase_url = \"http://127.0.0.1:9/x\"\n"
        )
    };
    let error = format!(
        "{:#}",
        Config::from_toml(&upstream("zhipu", "async_chat"), []).unwrap_err()
    );
    assert!(
        error.contains("unknown variant `async_chat`")
            && error.contains("chat")
            && error.contains("images"),
        "{error}"
    );
    // The names configurations used before the kinds are read as the kinds they were.
    for (dialect, old, kind) in [
        ("dashscope", "generation", Endpoint::Chat),
        ("comfyui", "workflow", Endpoint::Images),
        ("sd", "image_task", Endpoint::Images),
    ] {
        let config = Config::from_toml(&upstream(dialect, old), []).unwrap();
        assert_eq!(config.upstreams[0].endpoint, Some(kind), "{old}");
    }
}

#[tokio::test]
async fn an_unknown_dialect_or_a_pair_configured_twice_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let sim: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut config = helpers::test_config(sim, &dir);
    config.upstreams[0].dialect = "klingon".into();
    let error = match Application::build(config).await {
        Ok(_) => panic!("an unknown dialect was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("no dialect is called 'klingon'"), "{error}");
    assert!(error.contains("openai, dashscope, zhipu"), "{error}");

    // The same pair twice, once with its dialect's endpoint named and once without.
    let mut config = helpers::test_config(sim, &dir);
    let mut twice = config.upstreams[0].clone();
    twice.endpoint = Some(tollgate::config::Endpoint::Chat);
    assert_eq!(config.upstreams[0].endpoint, None);
    config.upstreams.push(twice);
    let error = match Application::build(config).await {
        Ok(_) => panic!("a pair configured twice was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("is configured twice"), "{error}");
}

#[test]
fn retention_needs_an_archive_and_at_least_a_day() {
    let base = "[[upstreams]]\nmodel = \"m\"\nchip = \"c\"\nbase_url = \"http://127.0.0.1:9/v1\"\n";
    for (retention, refused) in [
        (
            "[retention]\nkeep_days = 30\n",
            Some("needs retention.archive_dir"),
        ),
        (
            "[retention]\nkeep_days = 0\narchive_dir = \"a\"\n",
            Some("at least 1"),
        ),
        ("[retention]\nkeep_days = 30\narchive_dir = \"a\"\n", None),
    ] {
        let parsed = Config::from_toml(&format!("{retention}{base}"), std::iter::empty());
        match refused {
            Some(why) => {
                let error = format!("{:#}", parsed.unwrap_err());
                assert!(error.contains(why), "{retention}: {error}");
            }
            None => assert_eq!(parsed.unwrap().retention.keep_days, Some(30)),
        }
    }
}
