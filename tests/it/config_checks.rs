//! Start-up refuses a configuration it cannot bill with, and says why.

use crate::helpers;

use tollgate::Application;
use tollgate::config::Config;

#[test]
fn the_example_configuration_is_valid() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tollgate.example.toml"
    ))
    .unwrap();
    // SAFETY: set before the configuration is read; no other thread reads these variables.
    unsafe {
        std::env::set_var("GENSTUDIO_API_KEY", "x");
        std::env::set_var("INTERNLM_API_KEY", "x");
    }
    let config = Config::from_toml(&text, std::iter::empty()).unwrap();
    assert_eq!(config.upstreams.len(), 4);
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
