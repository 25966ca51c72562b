//! Native histograms end to end: timers sent with the real Python DogStatsD client, the
//! bridge serving the protobuf format, and a real Prometheus started with
//! `--enable-feature=native-histograms` answering `histogram_quantile` over them.

use anyhow::{Context, ensure};
use pipeline_tests::dogstatsd::op;
use pipeline_tests::exposition::series_map;
use pipeline_tests::{Bridge, DogStatsd, PATIENCE, Prometheus, eventually};

/// The relative width of a bucket at schema 3 (factor 1.1): no quantile estimate inside a
/// bucket is further than this from the truth.
const SCHEMA_3_WIDTH: f64 = 0.090_507_732_665_257_66; // 2^(1/8) - 1

#[test]
fn prometheus_reads_native_histograms_and_their_quantiles_hold() {
    let bridge = Bridge::start(
        "version = 1\n\n[bridge]\nlisten_udp = [\"127.0.0.1:0\"]\nlisten_tcp = []\n\
         web_listen = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\nobserver_type = \"histogram\"\n\
         native_histogram_bucket_factor = 1.1\nnative_histogram_max_buckets = 160\n",
        &[],
    );
    let prom =
        Prometheus::start_job_with_features("bridge", &[bridge.web_addr()], &["native-histograms"]);
    prom.wait_targets_up(1);
    // 1 ms to 1,000 ms, once each: the 90th percentile is 900 ms.
    let batch: Vec<serde_json::Value> = (1..=1000)
        .map(|ms| op::timing("checkout.latency", ms, &["route:/pay"]))
        .collect();
    let client = DogStatsd::new(bridge.udp_addr());
    client.send(&batch).expect("sending the first batch");
    eventually(
        "Prometheus to hold the first batch as a native histogram",
        PATIENCE,
        || {
            let got = prom.query("histogram_count(checkout_latency)")?;
            ensure!(got.first().is_some_and(|s| s.value == 1000.0), "{got:?}");
            Ok(())
        },
    );
    client.send(&batch).expect("sending the second batch");
    let p90 = eventually("the rate to cover the second batch", PATIENCE, || {
        let count = prom.query("histogram_count(checkout_latency)")?;
        ensure!(
            count.first().is_some_and(|s| s.value == 2000.0),
            "{count:?}"
        );
        let q = prom.query("histogram_quantile(0.9, rate(checkout_latency[1m]))")?;
        let v = q.first().context("no quantile")?.value;
        ensure!(v.is_finite(), "quantile {v}");
        Ok(v)
    });
    let error = (p90 - 0.9).abs() / 0.9;
    eprintln!("native p90 = {p90} s (true 0.9 s), relative error {error:.4}");
    assert!(
        error <= SCHEMA_3_WIDTH,
        "p90 {p90} is off by {error:.4}, more than one schema-3 bucket ({SCHEMA_3_WIDTH:.4})"
    );
    // The sum and count are exact whatever the buckets.
    let sum = prom
        .query("histogram_sum(checkout_latency)")
        .expect("histogram_sum");
    let want_sum = 2.0 * (1..=1000).map(f64::from).sum::<f64>() / 1000.0;
    assert!(
        (sum[0].value - want_sum).abs() < 1e-6,
        "{sum:?} vs {want_sum}"
    );

    // The classic buckets stay: the text page (what every other scraper gets) has them.
    let page = series_map(&bridge.metrics_text().expect("text page")).expect("parsing");
    assert_eq!(
        page.get("checkout_latency_bucket{le=\"1\",route=\"/pay\"}"),
        Some(&2000.0),
        "classic buckets on the text page"
    );
    assert_eq!(
        page.get("checkout_latency_bucket{le=\"0.5\",route=\"/pay\"}"),
        Some(&1000.0)
    );
    assert_eq!(
        page.get("checkout_latency_count{route=\"/pay\"}"),
        Some(&2000.0)
    );
}
