//! `statsd-bridge` end to end: StatsD/DogStatsD traffic in, Prometheus exposition out, read
//! back through a real Prometheus, `promtool`, the Python client's parser, and the
//! statsd_exporter compatibility vectors.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use pipeline_tests::check::{compare, name_of};
use pipeline_tests::dogstatsd::op;
use pipeline_tests::exposition::{self, Series};
use pipeline_tests::util::{parse_value, scaled, tests_dir, values_equal};
use pipeline_tests::vectors::{self, Case};
use pipeline_tests::{Bridge, DogStatsd, PATIENCE, Prometheus, eventually, promtool_check_metrics};

#[test]
fn datadog_client_values_reach_prometheus_exactly() {
    let bridge = Bridge::start(&Bridge::default_config(), &[]);
    let prom = Prometheus::start(&[bridge.web_addr()]);
    prom.wait_targets_up(1);

    let client = DogStatsd::new(bridge.udp_addr());
    let sent = client
        .send(&[
            op::repeat(
                op::increment("e2e.requests", 1, &["env:prod", "route:/api"]),
                3,
            ),
            op::increment("e2e.requests", 5, &["env:dev"]),
            op::gauge("e2e.temperature", 21.5, &["room:lab"]),
            op::gauge("e2e.queue", 10, &[]),
            op::gauge("e2e.queue", -3, &[]),
            op::timing("e2e.latency", 200, &["route:/api"]),
            op::timing("e2e.latency", 400, &["route:/api"]),
            op::histogram("e2e.size", 250, &[]),
            op::distribution("e2e.dist", 0.5, &[]),
            op::distribution("e2e.dist", 1.5, &[]),
            op::set("e2e.users", "alice", &[]),
            op::set("e2e.users", "bob", &[]),
            op::set("e2e.users", "alice", &[]),
            op::service_check("e2e.check", 1, &["env:prod"]),
            op::event("deploy", "done", Some("error"), &["env:prod"]),
        ])
        .expect("sending with the datadog client");
    assert_eq!(sent.len(), 17, "datagrams sent: {sent:#?}");
    // The client's own encoding, which the expectations below rely on: a negative gauge goes
    // out as a delta-looking `-3|g`.
    assert!(
        sent.iter().any(|d| d == "e2e.queue:-3|g\n"),
        "the client's encoding changed: {sent:#?}"
    );

    let expected: &[(&str, f64)] = &[
        (r#"e2e_requests{env="prod",route="/api"}"#, 3.0),
        (r#"e2e_requests{env="dev"}"#, 5.0),
        (r#"e2e_temperature{room="lab"}"#, 21.5),
        ("e2e_queue{}", 7.0),
        (r#"e2e_latency_sum{route="/api"}"#, 0.6),
        (r#"e2e_latency_count{route="/api"}"#, 2.0),
        (r#"e2e_latency_bucket{le="0.25",route="/api"}"#, 1.0),
        (r#"e2e_latency_bucket{le="0.5",route="/api"}"#, 2.0),
        (r#"e2e_latency_bucket{le="+Inf",route="/api"}"#, 2.0),
        ("e2e_size_sum{}", 250.0),
        ("e2e_size_count{}", 1.0),
        (r#"e2e_size_bucket{le="+Inf"}"#, 1.0),
        (r#"e2e_size_bucket{le="10"}"#, 0.0),
        ("e2e_dist_sum{}", 2.0),
        ("e2e_dist_count{}", 2.0),
        (r#"e2e_dist_bucket{le="1"}"#, 1.0),
        (
            r#"statsd_service_check_status{check="e2e.check",env="prod"}"#,
            1.0,
        ),
        (r#"statsd_events_total{alert_type="error",env="prod"}"#, 1.0),
    ];
    let selector = r#"{__name__=~"e2e_.+|statsd_service_check_status|statsd_events_total"}"#;
    eventually("the client's values in Prometheus", PATIENCE, || {
        let got = prom.query_map(selector)?;
        // Buckets are spot-checked; sets are checked below (their window may roll over).
        compare(&got, expected, |k| {
            !k.contains("_bucket{") && name_of(k) != "e2e_users"
        })
        .map_err(|e| anyhow!("{e:#}\ndatagrams sent: {sent:#?}"))
    });

    // A set is a gauge of distinct members in the current window; the window may have rolled
    // over since, so look at the highest value Prometheus stored.
    eventually("e2e_users = 2 in Prometheus", PATIENCE, || {
        let got = prom.query("max_over_time(e2e_users[5m])")?;
        anyhow::ensure!(got.len() == 1, "want one series, got {got:?}");
        let labels: Vec<&String> = got[0]
            .labels
            .keys()
            .filter(|k| !matches!(k.as_str(), "job" | "instance"))
            .collect();
        anyhow::ensure!(labels.is_empty(), "unexpected labels {:?}", got[0].labels);
        anyhow::ensure!(
            values_equal(got[0].value, 2.0),
            "distinct members: {}",
            got[0].value
        );
        Ok(())
    });
}

#[test]
fn raw_udp_lines_reach_prometheus() {
    let bridge = Bridge::start(&Bridge::default_config(), &[]);
    let prom = Prometheus::start(&[bridge.web_addr()]);
    bridge
        .send(&[
            b"e2e_raw_sampled:1|c|@0.1",
            b"e2e_raw_a:1|c\nbad line\ne2e_raw_b:2|c",
            b"e2e_raw_mv:1:2:3|c",
            b"e2e_raw_crlf_a:1|c\r\ne2e_raw_crlf_b:2|c\r\n",
            b"e2e_raw_influx,env=prod:1|c",
            b"e2e_raw_cid:1|c|c:containerid",
            b"e2e_raw_ts:1|c|T1700000000",
            b"e2e_raw_dd:1|c|#env:prod|c:abc|T1700000000\n",
        ])
        .expect("sending UDP");
    let expected: &[(&str, f64)] = &[
        ("e2e_raw_sampled{}", 10.0),
        ("e2e_raw_a{}", 1.0),
        ("e2e_raw_b{}", 2.0),
        ("e2e_raw_mv{}", 6.0),
        ("e2e_raw_crlf_a{}", 1.0),
        ("e2e_raw_crlf_b{}", 2.0),
        (r#"e2e_raw_influx{env="prod"}"#, 1.0),
        ("e2e_raw_cid{}", 1.0),
        ("e2e_raw_ts{}", 1.0),
        (r#"e2e_raw_dd{env="prod"}"#, 1.0),
    ];
    eventually("the raw lines in Prometheus", PATIENCE, || {
        let got = prom.query_map(r#"{__name__=~"e2e_raw_.+"}"#)?;
        compare(&got, expected, |_| true)
    });
}

/// A StatsD line, the series name it must produce, and label values that series must carry.
type Hostile = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// Lines with hostile tag values, and the label values they must come out with.
const HOSTILE: &[Hostile] = &[
    (
        r#"pt_quote:1|c|#v:say "hi""#,
        "pt_quote",
        &[("v", r#"say "hi""#)],
    ),
    (
        r"pt_backslash:1|c|#path:C:\dir\file",
        "pt_backslash",
        &[("path", r"C:\dir\file")],
    ),
    (
        r"pt_backslash_end:1|c|#v:ends with \",
        "pt_backslash_end",
        &[("v", r"ends with \")],
    ),
    (r#"pt_mixed:1|c|#v:"\"#, "pt_mixed", &[("v", r#""\"#)]),
    (
        "pt_unicode:1|c|#city:Zürich,emoji:🚀,cjk:東京",
        "pt_unicode",
        &[("city", "Zürich"), ("emoji", "🚀"), ("cjk", "東京")],
    ),
    (
        "pt_braces:1|c|#v:a}b{c=d,w:x y",
        "pt_braces",
        &[("v", "a}b{c=d"), ("w", "x y")],
    ),
    (
        r#"pt_gauge:1.5|g|#v:'"q"'"#,
        "pt_gauge",
        &[("v", r#"'"q"'"#)],
    ),
    (
        r"pt_timer:12|ms|#v:back\slash",
        "pt_timer_count",
        &[("v", r"back\slash")],
    ),
    (
        r#"_sc|pt.check|2|#v:say "hi""#,
        "statsd_service_check_status",
        &[("check", "pt.check")],
    ),
    (
        r"_e{5,4}:title|text|t:warning|#v:C:\x",
        "statsd_events_total",
        &[("v", r"C:\x")],
    ),
];

/// More lines of every type, without label assertions.
const VARIETY: &[&str] = &[
    "pt.dots-and-dashes:1|c",
    "9starts_with_digit:1|c",
    "pt_tagkey:1|c|#my.tag-key:v,1bad:x",
    "pt_neg_gauge:-5|g",
    "pt_nan:NaN|g",
    "pt_hist:3|h|#env:x",
    "pt_dist:4|d",
    "pt_set:member|s",
    "pt_same:1|c",
    "pt_same:1|c|#env:a",
    "pt_same:1|c|#env:b",
    "pt_conflict:1|c",
    "pt_conflict:1|g",
    "pt_empty_tag_value:1|c|#k:",
];

#[test]
fn exposition_passes_promtool() {
    let bridge = Bridge::start(&Bridge::default_config(), &[]);
    let lines: Vec<&str> = HOSTILE
        .iter()
        .map(|(l, _, _)| *l)
        .chain(VARIETY.iter().copied())
        .collect();
    bridge.send_lines(&lines).expect("sending UDP");
    bridge
        .send_lines(&["pt_sentinel:1|c"])
        .expect("sending UDP");

    // Wait until every hostile line shows up with its label values intact.
    let text = eventually("the hostile series on /metrics", PATIENCE, || {
        let text = bridge.metrics_text()?;
        let series = exposition::parse(&text)?;
        check_hostile(&series, "")?;
        anyhow::ensure!(
            series.iter().any(|s| s.name == "pt_sentinel"),
            "no pt_sentinel yet"
        );
        Ok(text)
    });

    let (code, output) = promtool_check_metrics(&text);
    assert!(
        code == 0 || code == 3,
        "promtool check metrics exited {code} (1 = the exposition does not parse):\n{output}\n\
         --- exposition ---\n{text}"
    );

    let dups = exposition::duplicate_type_families(&text);
    assert!(
        dups.is_empty(),
        "families with several # TYPE lines: {dups:?}\n{text}"
    );
    // Every sample belongs to a family that has a `# TYPE` line.
    let declared: BTreeSet<String> = exposition::type_lines(&text)
        .into_iter()
        .map(|(family, _)| family)
        .collect();
    for s in exposition::parse(&text).expect("parsed above") {
        let family_known = declared.contains(&s.name)
            || ["_bucket", "_sum", "_count"].iter().any(|sfx| {
                s.name
                    .strip_suffix(sfx)
                    .is_some_and(|f| declared.contains(f))
            });
        assert!(family_known, "{} has no # TYPE line:\n{text}", s.key());
    }

    // An independent parser (the official Python client) reads the same label values.
    let python_view =
        exposition::parse_with_python_client(&text).unwrap_or_else(|e| panic!("{e:#}\n{text}"));
    if let Err(e) = check_hostile(&python_view, "_total") {
        panic!("prometheus_client reads the exposition differently: {e:#}\n{text}");
    }
}

/// Checks that each [`HOSTILE`] line produced a series with its label values; `alt_suffix` is a
/// suffix the parser may have added to counter names.
fn check_hostile(series: &[Series], alt_suffix: &str) -> Result<()> {
    for (line, name, labels) in HOSTILE {
        let alt = format!("{name}{alt_suffix}");
        let found = series.iter().any(|s| {
            (s.name == *name || s.name == alt)
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        });
        if !found {
            let same_name: Vec<String> = series
                .iter()
                .filter(|s| s.name == *name || s.name == alt)
                .map(Series::key)
                .collect();
            bail!("line {line:?}: no {name} series with labels {labels:?}; found {same_name:?}");
        }
    }
    Ok(())
}

/// Series belonging to the bridge itself, not to the traffic.
fn is_self_metric(name: &str) -> bool {
    name.starts_with("statsd_bridge_") || name.starts_with("process_")
}

/// What one bridge (one observer mode) must show for its cases.
struct ModeRun {
    observer: &'static str,
    bridge: Bridge,
    cases: Vec<Case>,
    sentinel: String,
}

impl ModeRun {
    fn start(observer: &'static str, all: &[Case]) -> ModeRun {
        let bridge = Bridge::start(&Bridge::config_with_observer(observer), &[]);
        let cases = vectors::cases_for_observer(all, observer);
        let sentinel = format!("vsentinel_{observer}");
        for case in &cases {
            let datagrams = case.datagrams();
            let payloads: Vec<&[u8]> = datagrams.iter().map(Vec::as_slice).collect();
            bridge.send(&payloads).expect("sending UDP");
        }
        bridge
            .send_lines(&[&format!("{sentinel}:1|c")])
            .expect("sending UDP");
        ModeRun {
            observer,
            bridge,
            cases,
            sentinel,
        }
    }

    /// The page's series, self-metrics and (for summaries) quantiles left out.
    fn series(&self) -> Result<BTreeMap<String, f64>> {
        let text = self.bridge.metrics_text()?;
        let mut map = BTreeMap::new();
        for s in exposition::parse(&text)? {
            if is_self_metric(&s.name) {
                continue;
            }
            if self.observer == "summary" && s.labels.contains_key("quantile") {
                continue;
            }
            let key = s.key();
            if map.insert(key.clone(), s.value).is_some() {
                bail!("{key} appears twice on /metrics");
            }
        }
        Ok(map)
    }

    /// Waits until every expected series has been seen with its value (once is enough: a set
    /// window may roll over), then checks the last page for series no case expects.
    fn check(&self) {
        let mut satisfied: BTreeSet<(String, String)> = BTreeSet::new();
        let sentinel_key = format!("{}{{}}", self.sentinel);
        let what = format!("the {} vectors on the bridge's /metrics", self.observer);
        let page = eventually(&what, PATIENCE, || {
            let page = self.series()?;
            let mut problems = Vec::new();
            if !page.contains_key(&sentinel_key) {
                problems.push(format!("{sentinel_key} not there yet"));
            }
            for case in &self.cases {
                for (key, want) in &case.expected {
                    let id = (case.case.clone(), key.clone());
                    if satisfied.contains(&id) {
                        continue;
                    }
                    let want_v = parse_value(want)?;
                    match page.get(key) {
                        Some(v) if values_equal(*v, want_v) => {
                            satisfied.insert(id);
                        }
                        Some(v) => problems.push(format!(
                            "case {} (lines {:?}): {key} = {v}, want {want}",
                            case.case, case.lines
                        )),
                        None => problems.push(format!(
                            "case {} (lines {:?}): {key} missing, want {want}",
                            case.case, case.lines
                        )),
                    }
                }
            }
            if problems.is_empty() {
                Ok(page)
            } else {
                Err(anyhow!(
                    "{} mismatch(es) with observer {}:\n  {}",
                    problems.len(),
                    self.observer,
                    problems.join("\n  ")
                ))
            }
        });

        let mut problems = Vec::new();
        for case in &self.cases {
            let names = case.metric_names();
            let mut families: BTreeSet<String> = BTreeSet::new();
            for n in &names {
                for sfx in ["", "_bucket", "_sum", "_count"] {
                    families.insert(format!("{n}{sfx}"));
                }
            }
            families.extend(case.expected.keys().map(|k| name_of(k).to_owned()));
            for key in page.keys() {
                let name = name_of(key);
                if families.contains(name) && !case.expected.contains_key(key) {
                    problems.push(format!(
                        "case {} (lines {:?}): unexpected series {key} = {}",
                        case.case, case.lines, page[key]
                    ));
                }
                if case.expected.is_empty() && names.iter().any(|n| name.starts_with(n.as_str())) {
                    problems.push(format!(
                        "case {} (lines {:?}) must be rejected, but {key} = {} exists",
                        case.case, case.lines, page[key]
                    ));
                }
            }
        }
        problems.dedup();
        assert!(
            problems.is_empty(),
            "observer {}: {} problem(s):\n  {}",
            self.observer,
            problems.len(),
            problems.join("\n  ")
        );
    }
}

#[test]
fn vectors_match_statsd_exporter() {
    let data = tests_dir().join("data");
    let mut all = vectors::load(&data.join("statsd_exporter-compat.jsonl")).expect("loading");
    assert!(
        all.len() >= 30,
        "only {} statsd_exporter vectors",
        all.len()
    );
    all.extend(vectors::load(&data.join("bridge-improvements.jsonl")).expect("loading"));

    let runs: Vec<ModeRun> = ["histogram", "summary"]
        .into_iter()
        .map(|observer| ModeRun::start(observer, &all))
        .collect();
    // Check both modes even when one fails, and report both.
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = runs
            .iter()
            .map(|run| (run.observer, scope.spawn(|| run.check())))
            .collect();
        handles
            .into_iter()
            .filter_map(|(observer, h)| h.join().err().map(|e| (observer, e)))
            .map(|(observer, e)| {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                format!("observer {observer}: {msg}")
            })
            .collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn sigterm_exits_zero_after_serving() {
    let bridge = Bridge::start(&Bridge::default_config(), &[]);
    bridge
        .send_lines(&[
            "sig_counter:1|c|#env:prod",
            "sig_gauge:3|g",
            "sig_timer:5|ms",
        ])
        .expect("sending UDP");
    bridge.wait_for_value(r#"sig_counter{env="prod"}"#, 1.0);
    bridge.wait_for_value("sig_gauge{}", 3.0);
    bridge.wait_for_value("sig_timer_count{}", 1.0);

    bridge.sigterm().expect("sending SIGTERM");
    let status = bridge.wait_exit(scaled(Duration::from_secs(30)));
    assert!(
        status.success(),
        "statsd-bridge exited with {status} after SIGTERM"
    );
}
