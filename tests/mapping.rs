//! `statsd-bridge`'s statsd_exporter-compatible mapping rules end to end: a mapping YAML (read
//! unchanged) and `[[bridge.mapping]]` tables, through a real Prometheus; reloads over HTTP,
//! SIGHUP and the file watch; `check-config`, `explain` and `--debug.dump-fsm`; the mapping
//! cache's self-metrics; per-rule TTLs.
//!
//! Every test starts its own bridges on ephemeral loopback ports with files in temp dirs, and
//! waits with `eventually`, never with fixed sleeps.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, ensure};
use pipeline_tests::check::{compare, expect_all, get, user_series};
use pipeline_tests::statsd::{CliRun, run_cli};
use pipeline_tests::util::{modified, replace_file};
use pipeline_tests::{Bridge, PATIENCE, Prometheus, eventually};
use tempfile::TempDir;

/// A config with one UDP listener and the web server on ephemeral loopback ports, no TCP
/// listener (the default would bind 0.0.0.0:8125), a 1 s shutdown grace, and `extra` lines in
/// the `[bridge]` table.
fn config(extra: &str) -> String {
    format!(
        "version = 1\n\n[bridge]\nlisten_udp = [\"127.0.0.1:0\"]\nlisten_tcp = []\n\
         web_listen = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\n{extra}\n"
    )
}

/// A temp dir for the test's own files (mapping files, configs, dumps).
fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("mapping-test-")
        .tempdir()
        .expect("creating a temp dir")
}

/// Writes `contents` to `dir/name` and returns the path.
fn write(dir: &TempDir, name: &str, contents: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// `path` as a `&str` (temp paths are UTF-8).
fn s(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

const RELOAD_OK: &str = r#"statsd_bridge_config_reloads_total{outcome="success"}"#;
const RELOAD_FAILED: &str = r#"statsd_bridge_config_reloads_total{outcome="failure"}"#;
const LAST_RELOAD_OK: &str = "statsd_bridge_config_last_reload_successful{}";
const MAPPINGS: &str = "statsd_bridge_mappings{}";
const CACHE_HITS: &str = "statsd_bridge_mapping_cache_hits_total{}";
const CACHE_MISSES: &str = "statsd_bridge_mapping_cache_misses_total{}";
const DROPPED_BY_RULE: &str = r#"statsd_bridge_samples_dropped_total{reason="mapping_drop"}"#;
const DROPPED_EMPTY_NAME: &str =
    r#"statsd_bridge_samples_dropped_total{reason="empty_metric_name"}"#;

/// Eight rules covering the rule language: glob captures into labels (`$1` and `${2}`), a
/// histogram observer with its own buckets, a drop rule, `scale` with `help`, a
/// `match_metric_type`, a capture in the name, an earlier regex rule a later glob beats, an
/// unanchored regex, and the `$1_total` quirk (an empty name) next to its `${1}_total` fix.
/// No `defaults.observer_type`, so other observers become summaries, as in statsd_exporter.
const SHOP_YAML: &str = r#"# A statsd_exporter mapping file, used unchanged.
mappings:
  - match: 'jobs\.nightly\.(\w+)'
    match_type: regex
    name: "regex_should_not_win"
  - match: "shop.*.orders.*"
    name: "shop_orders_total"
    labels:
      region: "$1"
      status: "${2}"
  - match: "shop.*.latency"
    name: "shop_latency_seconds"
    observer_type: histogram
    histogram_options:
      buckets: [0.05, 0.1, 0.5]
    labels:
      region: "$1"
  - match: "debug.*.*"
    action: drop
  - match: "queue.*.depth_kib"
    name: "queue_depth_bytes"
    scale: 1024
    help: "Queue depth in bytes."
    labels:
      queue: "$1"
  - match: "svc.*.load"
    match_metric_type: gauge
    name: "svc_load"
    labels:
      svc: "$1"
  - match: "jobs.*.*"
    name: "jobs_${2}_total"
    labels:
      task: "$1"
      source: mapping
  - match: 'api\.(\w+)\.v(\d+)\.calls'
    match_type: regex
    name: "api_calls_total"
    labels:
      endpoint: "$1"
      version: "v${2}"
  - match: "quirk.*"
    name: "$1_total"
  - match: "quirkfixed.*"
    name: "${1}_total"
"#;

const SHOP_LINES: &[&str] = &[
    "shop.eu.orders.ok:2|c",
    // The rule's `region` label overrides the tag: this adds to region="eu".
    "shop.eu.orders.ok:3|c|#region:us",
    "shop.us.orders.failed:1|c",
    "shop.eu.latency:30|ms",
    "shop.eu.latency:70|ms",
    "shop.eu.latency:700|ms",
    "debug.cache.misses:5|c",
    "debug.cache.size:9|g",
    "queue.mail.depth_kib:3|g",
    "svc.a.load:0.5|g",
    // A counter: the gauge-only rule does not apply, the name stays (sanitized).
    "svc.b.load:4|c",
    // Both the first rule (a regex) and `jobs.*.*` match: any glob match wins.
    "jobs.nightly.runs:1|c",
    "api.users.v2.calls:1|c",
    "api.users.v2.calls:1|c",
    // The regex is unanchored: it matches inside a longer name.
    "v1.api.orders.v3.calls:1|c",
    "Legacy-App.hits:7|c",
    "render.time:250|ms",
    "quirk.x:1|c",
    "quirkfixed.x:1|c",
];

#[test]
fn mapped_series_reach_prometheus() {
    let dir = temp_dir();
    let mapping = write(&dir, "mapping.yml", SHOP_YAML);
    let bridge = Bridge::start(&config(""), &["--mapping-config", s(&mapping)]);
    let prom = Prometheus::start(&[bridge.web_addr()]);
    prom.wait_targets_up(1);

    bridge.send_lines(SHOP_LINES).expect("sending UDP");
    let expected: &[(&str, f64)] = &[
        (r#"shop_orders_total{region="eu",status="ok"}"#, 5.0),
        (r#"shop_orders_total{region="us",status="failed"}"#, 1.0),
        (r#"shop_latency_seconds_bucket{le="0.05",region="eu"}"#, 1.0),
        (r#"shop_latency_seconds_bucket{le="0.1",region="eu"}"#, 2.0),
        (r#"shop_latency_seconds_bucket{le="0.5",region="eu"}"#, 2.0),
        (r#"shop_latency_seconds_bucket{le="+Inf",region="eu"}"#, 3.0),
        (r#"shop_latency_seconds_sum{region="eu"}"#, 0.8),
        (r#"shop_latency_seconds_count{region="eu"}"#, 3.0),
        (r#"queue_depth_bytes{queue="mail"}"#, 3072.0),
        (r#"svc_load{svc="a"}"#, 0.5),
        ("svc_b_load{}", 4.0),
        (r#"jobs_runs_total{source="mapping",task="nightly"}"#, 1.0),
        (r#"api_calls_total{endpoint="users",version="v2"}"#, 2.0),
        (r#"api_calls_total{endpoint="orders",version="v3"}"#, 1.0),
        ("Legacy_App_hits{}", 7.0),
        (r#"render_time{quantile="0.5"}"#, 0.25),
        (r#"render_time{quantile="0.9"}"#, 0.25),
        (r#"render_time{quantile="0.99"}"#, 0.25),
        ("render_time_sum{}", 0.25),
        ("render_time_count{}", 1.0),
        ("x_total{}", 1.0),
    ];
    // Every series of these names must be expected: a dropped line, the losing regex rule and
    // the empty-named quirk must leave nothing behind.
    let query = r#"{__name__=~"shop_.*|queue_.*|svc_.*|jobs_.*|api_.*|regex_.*|Legacy_.*|render_.*|debug.*|quirk.*|x_.*|_total"}"#;
    eventually(
        "the mapped series in Prometheus",
        PATIENCE,
        || -> Result<()> {
            let got = prom.query_map(query)?;
            compare(&got, expected, |_| true)
        },
    );

    let map = bridge.wait_metrics("the self-metrics", |m| {
        expect_all(
            m,
            &[
                (DROPPED_BY_RULE, 2.0),
                (DROPPED_EMPTY_NAME, 1.0),
                (MAPPINGS, 10.0),
                (
                    r#"statsd_bridge_lines_total{transport="udp"}"#,
                    SHOP_LINES.len() as f64,
                ),
            ],
        )
    });
    compare(&user_series(&map), expected, |_| true)
        .unwrap_or_else(|e| panic!("the bridge's page differs from what Prometheus saw: {e:#}"));
    let page = bridge.metrics_text().expect("scraping the bridge");
    for want in [
        "# HELP queue_depth_bytes Queue depth in bytes.",
        "# TYPE queue_depth_bytes gauge",
        "# TYPE shop_latency_seconds histogram",
        "# TYPE render_time summary",
        "# TYPE shop_orders_total counter",
    ] {
        assert!(
            page.lines().any(|l| l == want),
            "the page lacks the line {want:?}:\n{page}"
        );
    }
}

/// The reload counters and gauges on the page: (success, failure, last successful, rules).
fn reload_state(bridge: &Bridge) -> Result<(f64, f64, f64, f64)> {
    let map = bridge.metrics_map()?;
    Ok((
        get(&map, RELOAD_OK)?,
        get(&map, RELOAD_FAILED)?,
        get(&map, LAST_RELOAD_OK)?,
        get(&map, MAPPINGS)?,
    ))
}

/// Waits for the reload state `(success, failure, last successful, rules)`.
fn wait_reload_state(bridge: &Bridge, what: &str, want: (f64, f64, f64, f64)) {
    eventually(
        &format!("{what}: reloads (success, failure, last ok, rules) = {want:?}"),
        PATIENCE,
        || {
            let got = reload_state(bridge)?;
            ensure!(got == want, "got {got:?}");
            Ok(())
        },
    );
}

/// The reload test's rules: A is always `app.*.requests`; B's name changes between versions;
/// `extra` adds a third rule.
fn ab_yaml(b_name: &str, extra: bool) -> String {
    let mut yaml = format!(
        "mappings:\n  - match: \"app.*.requests\"\n    name: \"app_requests_total\"\n    labels:\n      \
         app: \"$1\"\n  - match: \"other.*\"\n    name: \"{b_name}\"\n    labels:\n      key: \"$1\"\n"
    );
    if extra {
        yaml.push_str("  - match: \"extra.*\"\n    name: \"extra_total\"\n");
    }
    yaml
}

#[test]
fn reload_changes_a_rule_without_losing_unaffected_counters() {
    let dir = temp_dir();
    let mapping = write(&dir, "mapping.yml", &ab_yaml("old_name", false));
    let bridge = Bridge::start(
        &config(&format!(
            "enable_lifecycle = true\nmapping_file = \"{}\"",
            s(&mapping)
        )),
        &[],
    );
    wait_reload_state(&bridge, "at start", (0.0, 0.0, 1.0, 2.0));
    bridge
        .send_lines(&[
            "app.web.requests:1|c",
            "app.web.requests:2|c",
            "other.q:2|c",
        ])
        .expect("sending UDP");
    bridge.wait_metrics("the first sends", |m| {
        expect_all(
            m,
            &[
                (r#"app_requests_total{app="web"}"#, 3.0),
                (r#"old_name{key="q"}"#, 2.0),
            ],
        )
    });

    // B renamed, a rule added, A unchanged. The new file keeps the old modification time so
    // the bridge's file watch does not reload it too: this reload is the POST's alone.
    let original_mtime = modified(&mapping).expect("mtime");
    replace_file(&mapping, &ab_yaml("new_name", true), Some(original_mtime))
        .expect("rewriting the mapping");
    let r = bridge.post("/-/reload").expect("POST /-/reload");
    assert_eq!(
        r.status, 200,
        "POST /-/reload with a valid new mapping: {r:?}"
    );
    wait_reload_state(&bridge, "after POST /-/reload", (1.0, 0.0, 1.0, 3.0));
    bridge
        .send_lines(&["app.web.requests:4|c", "other.q:5|c", "extra.e:1|c"])
        .expect("sending UDP");
    bridge.wait_metrics(
        "the sends after the reload: rule A did not change, so its counter goes on from 3 \
         (not reset); B's new name has only the new sends; and a reload swaps rules, not data, \
         so the store keeps old_name's series (no TTL here) with its pre-reload value",
        |m| {
            compare(
                &user_series(m),
                &[
                    (r#"app_requests_total{app="web"}"#, 7.0),
                    (r#"new_name{key="q"}"#, 5.0),
                    (r#"old_name{key="q"}"#, 2.0),
                    ("extra_total{}", 1.0),
                ],
                |_| true,
            )
        },
    );

    // A broken file: the reload fails, the rules in force stay.
    replace_file(
        &mapping,
        "mappings:\n  - match: \"app.*.requests\"\n    name: \"app_requests_total\"\n  - match: \
         \"a.b*\"\n    name: \"broken\"\n",
        None,
    )
    .expect("breaking the mapping");
    let bad_mtime = modified(&mapping).expect("mtime");
    let r = bridge.post("/-/reload").expect("POST /-/reload");
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(
        r.status, 500,
        "POST /-/reload with a broken mapping: {r:?} {body}"
    );
    assert!(
        body.contains("invalid match: a.b*") && body.contains("mapping.yml:4:5"),
        "the 500 answer should say what is wrong and where: {body:?}"
    );
    // The file watch sees the new file once and fails too.
    wait_reload_state(&bridge, "after the broken file", (1.0, 2.0, 0.0, 3.0));
    bridge
        .send_lines(&["app.web.requests:1|c", "other.q:1|c"])
        .expect("sending UDP");
    bridge.wait_metrics("the old rules still in force", |m| {
        expect_all(
            m,
            &[
                (r#"app_requests_total{app="web"}"#, 8.0),
                (r#"new_name{key="q"}"#, 6.0),
            ],
        )
    });
    let log = bridge.stderr_text();
    assert!(
        log.contains("invalid match: a.b*"),
        "the failed reload should be logged with its error; log:\n{log}"
    );

    // Fixed, with the broken file's modification time (which the watch has seen): only SIGHUP
    // can load it.
    replace_file(&mapping, &ab_yaml("hup_name", false), Some(bad_mtime))
        .expect("fixing the mapping");
    bridge.process().signal("HUP").expect("SIGHUP");
    wait_reload_state(&bridge, "after SIGHUP", (2.0, 2.0, 1.0, 2.0));
    bridge.send_lines(&["other.q:1|c"]).expect("sending UDP");
    bridge.wait_metrics("the rules SIGHUP loaded", |m| {
        expect_all(m, &[(r#"hup_name{key="q"}"#, 1.0)])
    });

    // The file watch alone: a new modification time, no reload request.
    replace_file(&mapping, &ab_yaml("watched_name", true), None).expect("rewriting");
    wait_reload_state(&bridge, "after the file changed", (3.0, 2.0, 1.0, 3.0));
    bridge
        .send_lines(&["app.web.requests:1|c", "other.q:1|c"])
        .expect("sending UDP");
    // Every series ever made is still there; A counted every send.
    bridge.wait_metrics("the rules the file watch loaded", |m| {
        compare(
            &user_series(m),
            &[
                (r#"app_requests_total{app="web"}"#, 9.0),
                (r#"old_name{key="q"}"#, 2.0),
                (r#"new_name{key="q"}"#, 6.0),
                (r#"hup_name{key="q"}"#, 1.0),
                (r#"watched_name{key="q"}"#, 1.0),
                ("extra_total{}", 1.0),
            ],
            |_| true,
        )
    });
}

/// The rules of [`toml_rules_work_like_yaml`] in statsd_exporter's YAML.
const WEB_YAML: &str = r#"mappings:
  - match: "web.*.requests.*"
    name: "web_requests_total"
    labels: { site: "$1", code: "$2" }
  - match: "web.*.latency"
    name: "web_latency_seconds"
    observer_type: histogram
    histogram_options: { buckets: [0.1, 1] }
    labels: { site: "$1" }
  - match: "web.*.payload_kib"
    name: "web_payload_bytes"
    scale: 1024
    help: "Payload size in bytes."
    labels: { site: "$1" }
  - match: "web.noise.*"
    action: drop
  - match: "tagged.*"
    name: "tagged_total"
    honor_labels: true
    labels: { team: "$1" }
  - match: 'batch\.(?P<kind>\w+)\.done'
    match_type: regex
    name: "batch_done_total"
    labels: { kind: "${kind}", whole: "$0" }
  - match: "gauge.*"
    match_metric_type: gauge
    name: "only_gauges"
    labels: { which: "$1" }
"#;

/// The same rules as `[[bridge.mapping]]` tables. The bridge's own default observer is a
/// histogram; a mapping YAML's is a summary, so the TOML says `summary` to match.
const WEB_TOML_RULES: &str = r#"observer_type = "summary"

[[bridge.mapping]]
match = "web.*.requests.*"
name = "web_requests_total"
labels = { site = "$1", code = "$2" }

[[bridge.mapping]]
match = "web.*.latency"
name = "web_latency_seconds"
observer_type = "histogram"
histogram_options = { buckets = [0.1, 1] }
labels = { site = "$1" }

[[bridge.mapping]]
match = "web.*.payload_kib"
name = "web_payload_bytes"
scale = 1024
help = "Payload size in bytes."
labels = { site = "$1" }

[[bridge.mapping]]
match = "web.noise.*"
action = "drop"

[[bridge.mapping]]
match = "tagged.*"
name = "tagged_total"
honor_labels = true
labels = { team = "$1" }

[[bridge.mapping]]
match = 'batch\.(?P<kind>\w+)\.done'
match_type = "regex"
name = "batch_done_total"
labels = { kind = "${kind}", whole = "$0" }

[[bridge.mapping]]
match = "gauge.*"
match_metric_type = "gauge"
name = "only_gauges"
labels = { which = "$1" }
"#;

const WEB_LINES: &[&str] = &[
    "web.eu.requests.200:1|c",
    "web.eu.requests.200:2|c",
    "web.eu.requests.500:2|c",
    "web.us.requests.200:4|c|#site:spoofed",
    "web.eu.latency:50|ms",
    "web.eu.latency:500|ms",
    "web.eu.latency:5000|ms",
    // Matches `web.*.latency` (rule 2) and `web.noise.*` (rule 4): the lower index wins.
    "web.noise.latency:50|ms",
    "web.noise.x:1|c",
    "web.eu.payload_kib:2|g",
    "tagged.a:1|c|#team:override",
    "tagged.b:1|c",
    "batch.nightly.done:1|c",
    "gauge.x:3|g",
    "gauge.y:1|c",
    "unmapped.timer:100|ms",
];

/// The `# HELP` and `# TYPE` lines of the page's user families, sorted (the order of
/// families on the page is not part of the comparison).
fn user_meta_lines(page: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = page
        .lines()
        .filter(|l| l.starts_with("# HELP ") || l.starts_with("# TYPE "))
        .filter(|l| {
            let family = l.split_whitespace().nth(2).unwrap_or_default();
            !family.starts_with("statsd_bridge_") && !family.starts_with("process_")
        })
        .collect();
    lines.sort_unstable();
    lines
}

#[test]
fn toml_rules_work_like_yaml() {
    let dir = temp_dir();
    let mapping = write(&dir, "mapping.yml", WEB_YAML);
    let from_yaml = Bridge::start(&config(""), &["--mapping-config", s(&mapping)]);
    let from_toml = Bridge::start(&config(WEB_TOML_RULES), &[]);
    for bridge in [&from_yaml, &from_toml] {
        bridge.send_lines(WEB_LINES).expect("sending UDP");
    }
    let expected: &[(&str, f64)] = &[
        (r#"web_requests_total{code="200",site="eu"}"#, 3.0),
        (r#"web_requests_total{code="500",site="eu"}"#, 2.0),
        (r#"web_requests_total{code="200",site="us"}"#, 4.0),
        (r#"web_latency_seconds_bucket{le="0.1",site="eu"}"#, 1.0),
        (r#"web_latency_seconds_bucket{le="1",site="eu"}"#, 2.0),
        (r#"web_latency_seconds_bucket{le="+Inf",site="eu"}"#, 3.0),
        (r#"web_latency_seconds_sum{site="eu"}"#, 5.55),
        (r#"web_latency_seconds_count{site="eu"}"#, 3.0),
        (r#"web_latency_seconds_bucket{le="0.1",site="noise"}"#, 1.0),
        (r#"web_latency_seconds_bucket{le="1",site="noise"}"#, 1.0),
        (r#"web_latency_seconds_bucket{le="+Inf",site="noise"}"#, 1.0),
        (r#"web_latency_seconds_sum{site="noise"}"#, 0.05),
        (r#"web_latency_seconds_count{site="noise"}"#, 1.0),
        (r#"web_payload_bytes{site="eu"}"#, 2048.0),
        (r#"tagged_total{team="override"}"#, 1.0),
        (r#"tagged_total{team="b"}"#, 1.0),
        (
            r#"batch_done_total{kind="nightly",whole="batch.nightly.done"}"#,
            1.0,
        ),
        (r#"only_gauges{which="x"}"#, 3.0),
        ("gauge_y{}", 1.0),
        (r#"unmapped_timer{quantile="0.5"}"#, 0.1),
        (r#"unmapped_timer{quantile="0.9"}"#, 0.1),
        (r#"unmapped_timer{quantile="0.99"}"#, 0.1),
        ("unmapped_timer_sum{}", 0.1),
        ("unmapped_timer_count{}", 1.0),
    ];
    // Lines are counted as they arrive and the page renders the store before the
    // self-metrics, so the wait is on the series themselves.
    let yaml_map = from_yaml.wait_metrics("the YAML rules' series", |m| {
        compare(&user_series(m), expected, |_| true)?;
        expect_all(m, &[(MAPPINGS, 7.0), (DROPPED_BY_RULE, 1.0)])
    });
    let yaml_series = user_series(&yaml_map);
    let same: Vec<(&str, f64)> = yaml_series.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    from_toml.wait_metrics(
        "[[bridge.mapping]] rules to give the same series as the same rules in a YAML file",
        |m| {
            compare(&user_series(m), &same, |_| true)?;
            expect_all(m, &[(MAPPINGS, 7.0), (DROPPED_BY_RULE, 1.0)])
        },
    );
    let yaml_page = from_yaml.metrics_text().expect("scraping");
    let toml_page = from_toml.metrics_text().expect("scraping");
    assert_eq!(
        user_meta_lines(&toml_page),
        user_meta_lines(&yaml_page),
        "HELP and TYPE lines differ between the TOML and the YAML rules"
    );
    assert!(
        user_meta_lines(&yaml_page).contains(&"# HELP web_payload_bytes Payload size in bytes."),
        "the help rule's text is missing:\n{yaml_page}"
    );
}

/// The `file:LINE:COL:` position after `file_name` in `text`, if any.
fn position_after(text: &str, file_name: &str) -> Option<(usize, usize)> {
    let marker = format!("{file_name}:");
    text.match_indices(&marker).find_map(|(i, m)| {
        let rest = &text[i + m.len()..];
        let mut parts = rest.splitn(3, ':');
        let line = parts.next()?.parse().ok()?;
        let col = parts.next()?.parse().ok()?;
        Some((line, col))
    })
}

/// Asserts a run exited with code 64 and its stderr contains every one of `wants`.
fn assert_usage_error(run: &CliRun, wants: &[&str]) {
    assert_eq!(run.code(), Some(64), "want exit code 64:\n{run}");
    for want in wants {
        assert!(run.stderr.contains(want), "stderr lacks {want:?}:\n{run}");
    }
}

/// The output of `explain` as blocks: each input line with the indented lines under it.
fn explain_blocks(stdout: &str) -> Vec<(String, Vec<String>)> {
    let mut blocks: Vec<(String, Vec<String>)> = Vec::new();
    for line in stdout.lines() {
        match (line.strip_prefix("  "), blocks.last_mut()) {
            (Some(detail), Some((_, details))) => details.push(detail.to_owned()),
            _ => blocks.push((line.to_owned(), Vec::new())),
        }
    }
    blocks
}

const EXPLAIN_YAML: &str = r#"mappings:
  - match: "app.*.requests"
    name: "app_requests_total"
    labels:
      app: "$1"
  - match: "noise.*"
    action: drop
"#;

#[test]
fn check_config_and_explain() {
    let dir = temp_dir();
    let cwd = dir.path();

    // A mapping file whose second rule (line 4, column 5) has an invalid glob.
    let bad_glob = write(
        &dir,
        "mapping.yml",
        "mappings:\n  - match: \"ok.*\"\n    name: \"ok\"\n  - match: \"a.b*\"\n    name: \"x\"\n",
    );
    let toml = write(
        &dir,
        "pipeline.toml",
        &config(&format!("mapping_file = \"{}\"", s(&bad_glob))),
    );
    let run = run_cli(&["check-config", s(&toml)], cwd, None);
    assert_usage_error(
        &run,
        &[&format!("{}:4:5: invalid match: a.b*", s(&bad_glob))],
    );
    let run = run_cli(
        &["--mapping-config", s(&bad_glob), "--check-config"],
        cwd,
        None,
    );
    assert_usage_error(&run, &["mapping.yml:4:5: invalid match: a.b*"]);

    // An unknown key, pointed at.
    let bad_key = write(
        &dir,
        "mapping-labelz.yml",
        "mappings:\n  - match: \"a.b\"\n    name: \"x\"\n    labelz:\n      ab: \"c\"\n",
    );
    let run = run_cli(
        &["--mapping-config", s(&bad_key), "--check-config"],
        cwd,
        None,
    );
    assert_usage_error(&run, &["mapping-labelz.yml:4:5: unknown field `labelz`"]);

    // A missing mapping file is named.
    let missing = dir.path().join("missing.yml");
    let toml_missing = write(
        &dir,
        "missing.toml",
        &config(&format!("mapping_file = \"{}\"", s(&missing))),
    );
    let run = run_cli(&["check-config", s(&toml_missing)], cwd, None);
    assert_usage_error(&run, &["missing.yml"]);

    // A bad [[bridge.mapping]] rule: the error points into that rule's table.
    let rules = "[[bridge.mapping]]\nmatch = \"ok.*\"\nname = \"ok\"\n\n\
                 [[bridge.mapping]]\nmatch = \"a.b*\"\nname = \"x\"\n";
    let src = config(rules);
    // 1-based: the 0-based index of its `match` line is the line number of its header.
    let header = src
        .lines()
        .position(|l| l == "match = \"a.b*\"")
        .expect("the bad rule is in the config");
    let bad_rule_lines = header..=header + 2;
    std::fs::create_dir(dir.path().join("rules")).expect("creating a subdir");
    let toml_rules = write(&dir, "rules/pipeline.toml", &src);
    let run = run_cli(&["check-config", s(&toml_rules)], cwd, None);
    assert_usage_error(&run, &["invalid match: a.b*"]);
    let (line, col) = position_after(&run.stderr, "rules/pipeline.toml")
        .unwrap_or_else(|| panic!("no `rules/pipeline.toml:LINE:COL:` in the error:\n{run}"));
    assert!(
        bad_rule_lines.contains(&line) && col >= 1,
        "the error should point into the bad rule (lines {bad_rule_lines:?}), not {line}:{col}:\n\
         {run}\nconfig:\n{src}"
    );
    // The same rules without the bad one pass.
    let good = write(
        &dir,
        "pipeline-good.toml",
        &config("[[bridge.mapping]]\nmatch = \"ok.*\"\nname = \"ok\"\n"),
    );
    let run = run_cli(&["check-config", s(&good)], cwd, None);
    assert_eq!(run.code(), Some(0), "a valid config with rules:\n{run}");
    assert!(run.stdout.contains("ok"), "check-config prints ok:\n{run}");

    // Both a mapping file and [[bridge.mapping]] rules.
    let good_yaml = write(&dir, "good.yml", EXPLAIN_YAML);
    let both = write(
        &dir,
        "both.toml",
        &config(&format!(
            "mapping_file = \"{}\"\n\n[[bridge.mapping]]\nmatch = \"ok.*\"\nname = \"ok\"\n",
            s(&good_yaml)
        )),
    );
    let run = run_cli(&["check-config", s(&both)], cwd, None);
    assert_usage_error(&run, &["both.toml", "not both"]);

    // explain: one mapped line, one dropped by a rule, one the parser rejects.
    let run = run_cli(
        &[
            "explain",
            "--mapping-config",
            s(&good_yaml),
            "app.web.requests:2|c|#env:prod",
            "noise.x:1|c",
            "not a statsd line",
        ],
        cwd,
        None,
    );
    assert_eq!(run.code(), Some(0), "explain exits 0:\n{run}");
    let blocks = explain_blocks(&run.stdout);
    let headers: Vec<&str> = blocks.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(
        headers,
        [
            "app.web.requests:2|c|#env:prod",
            "noise.x:1|c",
            "not a statsd line"
        ],
        "explain prints each line, then indented details:\n{run}"
    );
    let details = |i: usize| blocks[i].1.clone();
    assert_eq!(
        details(0),
        [
            r#"rule #1 (match "app.*.requests") -> name "app_requests_total" labels {app="web"} type counter"#,
            r#"app_requests_total{app="web",env="prod"} 2"#,
        ],
        "the mapped line:\n{run}"
    );
    assert!(
        details(1).first().map(String::as_str) == Some(r#"dropped by rule #2 (match "noise.*")"#)
            && details(1)
                .iter()
                .any(|d| d.starts_with("dropped: mapping_drop")),
        "the dropped line:\n{run}"
    );
    assert!(
        details(2).len() == 1 && details(2)[0].starts_with("rejected: "),
        "the rejected line:\n{run}"
    );

    // explain from stdin, with [[bridge.mapping]] rules from --config.
    let run = run_cli(
        &["--config", s(&good), "explain"],
        cwd,
        Some("ok.api:1|c\nother.thing:3|g\n"),
    );
    assert_eq!(run.code(), Some(0), "explain from stdin exits 0:\n{run}");
    let blocks = explain_blocks(&run.stdout);
    let headers: Vec<&str> = blocks.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(
        headers,
        ["ok.api:1|c", "other.thing:3|g"],
        "explain reads lines from stdin:\n{run}"
    );
    assert!(
        blocks[0].1[0].starts_with(r#"rule #1 (match "ok.*") -> name "ok""#)
            && blocks[0].1.iter().any(|d| d == "ok 1"),
        "the mapped stdin line:\n{run}"
    );
    assert!(
        blocks[1].1[0].starts_with("no rule matched -> defaults")
            && blocks[1].1.iter().any(|d| d == "other_thing 3"),
        "the unmapped stdin line:\n{run}"
    );
}

#[test]
fn dump_fsm_writes_graphviz() {
    let dir = temp_dir();
    let mapping = write(&dir, "mapping.yml", SHOP_YAML);
    let dump = dir.path().join("fsm.dot");
    let bridge = Bridge::start(
        &config(""),
        &[
            "--mapping-config",
            s(&mapping),
            "--debug.dump-fsm",
            s(&dump),
        ],
    );
    // The dump is written before the listeners are bound, so it is there once the bridge is
    // ready.
    let dot = std::fs::read_to_string(&dump)
        .unwrap_or_else(|e| panic!("reading {}: {e}\n{}", dump.display(), bridge.log_tail(40)));
    assert!(
        dot.starts_with("digraph glob_rules {"),
        "not a Graphviz digraph:\n{dot}"
    );
    assert!(
        dot.trim_end().ends_with('}'),
        "the digraph is not closed:\n{dot}"
    );
    for want in [
        r#"[label="shop"]"#,
        r#"[label="orders"]"#,
        r#"[label="*"]"#,
        "rule",
    ] {
        assert!(dot.contains(want), "the dump lacks {want:?}:\n{dot}");
    }
    // Only glob rules are in the tree.
    assert!(
        !dot.contains("api") && !dot.contains("nightly"),
        "regex rules should not be in the glob tree:\n{dot}"
    );
}

#[test]
fn mapping_cache_self_metrics() {
    let dir = temp_dir();
    let mapping = write(&dir, "mapping.yml", EXPLAIN_YAML);
    let cached = Bridge::start(&config(""), &["--mapping-config", s(&mapping)]);
    let uncached = Bridge::start(
        &config(""),
        &["--mapping-config", s(&mapping), "--statsd.cache-size=0"],
    );
    let lines = vec!["app.web.requests:1|c"; 100];
    for bridge in [&cached, &uncached] {
        bridge.send_lines(&lines).expect("sending UDP");
    }
    // Lines are counted as they arrive and the page renders the store before the
    // self-metrics, so wait for the series and for all 100 lookups to be counted.
    let lookups = |bridge: &Bridge, what: &str| -> (f64, f64) {
        let map = bridge.wait_metrics(&format!("100 lines applied ({what})"), |m| {
            expect_all(m, &[(r#"app_requests_total{app="web"}"#, 100.0)])?;
            let looked_up = get(m, CACHE_HITS)? + get(m, CACHE_MISSES)?;
            ensure!(
                looked_up == 100.0,
                "{looked_up} mapping lookups counted, want 100"
            );
            Ok(())
        });
        (
            get(&map, CACHE_HITS).unwrap(),
            get(&map, CACHE_MISSES).unwrap(),
        )
    };
    let (hits, misses) = lookups(&cached, "cache of 1000");
    assert!(
        hits >= 90.0 && misses <= 10.0,
        "100 lookups of one name: want ≥ 90 cache hits and few misses, got {hits} hits and \
         {misses} misses"
    );
    let (hits, misses) = lookups(&uncached, "--statsd.cache-size=0");
    assert!(
        hits == 0.0 && misses == 100.0,
        "with --statsd.cache-size=0 every lookup is a miss: got {hits} hits and {misses} misses"
    );
}

/// The series of a rule with `ttl: 1s` is gone (and counted as expired) while an unmapped
/// series stays.
fn rule_series_expired(map: &BTreeMap<String, f64>) -> Result<()> {
    ensure!(
        !map.contains_key(r#"short_lived{key="a"}"#),
        "short_lived{{key=\"a\"}} is still there (statsd_bridge_series_expired_total = {:?})",
        map.get("statsd_bridge_series_expired_total{}")
    );
    expect_all(
        map,
        &[
            ("kept{}", 1.0),
            ("statsd_bridge_series_expired_total{}", 1.0),
        ],
    )
}

/// A rule's `ttl` expires its series on its own, as in statsd_exporter. A second bridge with
/// a long `[bridge] ttl` is the control: there the rule's TTL is enforced, so a failure of the
/// first bridge alone means the rule's TTL depends on the global one.
#[test]
fn rule_ttl_expires_series_without_a_global_ttl() {
    let dir = temp_dir();
    let mapping = write(
        &dir,
        "mapping.yml",
        "mappings:\n  - match: \"short.*\"\n    name: \"short_lived\"\n    ttl: 1s\n    labels:\n      \
         key: \"$1\"\n",
    );
    let args = ["--mapping-config", s(&mapping)];
    let rule_ttl_only = Bridge::start(&config(""), &args);
    let control = Bridge::start(&config("ttl = \"1h\""), &args);
    for bridge in [&rule_ttl_only, &control] {
        bridge
            .send_lines(&["short.a:1|c", "kept:1|c"])
            .expect("sending UDP");
        bridge.wait_metrics("both series", |m| {
            expect_all(m, &[(r#"short_lived{key="a"}"#, 1.0), ("kept{}", 1.0)])
        });
    }
    control.wait_metrics(
        "the control (with [bridge] ttl = \"1h\") to expire the rule's series after 1 s",
        rule_series_expired,
    );
    // The control's series is gone, so the TTL is past here too; allow two more expiry ticks.
    eventually(
        "the rule's 1 s TTL to expire its series with no [bridge] ttl set (it did with \
         [bridge] ttl = \"1h\": a rule's TTL must not need a global one)",
        Duration::from_secs(3),
        || rule_series_expired(&rule_ttl_only.metrics_map()?),
    );
}
