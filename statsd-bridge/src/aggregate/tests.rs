//! Store + exposition tests driven through the parser, and the statsd_exporter vectors.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::*;
use crate::expose::encode_text;
use crate::ingest::{LineResult, Worker, ingest_line};
use crate::protocol::{ParseOptions, lines};

fn store(cfg: StoreConfig) -> Store {
    Store::new(cfg, ["statsd_bridge_series"])
}

fn feed(store: &Store, datagram: &str, now: Instant) -> Vec<LineResult> {
    let mut worker = Worker::unmapped(store.config());
    lines(datagram.as_bytes())
        .map(|l| ingest_line(store, l, &ParseOptions::default(), &mut worker, now))
        .collect()
}

/// The reasons of the lines the store refused, in order.
fn dropped_reasons(results: &[LineResult]) -> Vec<&'static str> {
    results
        .iter()
        .filter_map(|r| match r {
            LineResult::Dropped(r) => Some(r.reason()),
            _ => None,
        })
        .collect()
}

fn page(store: &Store, now: Instant) -> String {
    let mut out = String::new();
    encode_text(&store.snapshot(now), &mut out);
    out
}

/// `name{k="v",…}` → value, labels sorted by name, as the vectors write them.
fn parse_page(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut rest = labels;
        while let Some((k, after)) = rest.split_once("=\"") {
            let mut v = String::new();
            let mut chars = after.char_indices();
            let mut end = after.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            v.push(if n == 'n' { '\n' } else { n });
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => v.push(c),
                }
            }
            pairs.push((k.trim_start_matches(',').to_owned(), v));
            rest = after.get(end..).unwrap();
        }
        pairs.sort();
        let rendered: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap(),
        };
        out.insert(format!("{name}{{{}}}", rendered.join(",")), value);
    }
    out
}

fn same(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || ((a - b).abs() <= 1e-9 * a.abs().max(b.abs()))
}

#[test]
fn statsd_exporter_vectors() {
    #[derive(serde::Deserialize)]
    struct Case {
        case: String,
        observer: String,
        packet: bool,
        lines: Vec<String>,
        expected: BTreeMap<String, String>,
    }
    let text = include_str!("../../../tests/data/statsd_exporter-compat.jsonl");
    let mut failures = Vec::new();
    let mut count = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let case: Case = serde_json::from_str(line).unwrap();
        let observer = match case.observer.as_str() {
            "histogram" => ObserverType::Histogram,
            _ => ObserverType::Summary,
        };
        let s = store(StoreConfig {
            observer,
            ..StoreConfig::default()
        });
        let now = Instant::now();
        if case.packet {
            feed(&s, &case.lines.join("\n"), now);
        } else {
            for l in &case.lines {
                feed(&s, l, now);
            }
        }
        let got: BTreeMap<String, f64> = parse_page(&page(&s, now))
            .into_iter()
            .filter(|(k, _)| !k.contains("quantile="))
            .collect();
        let want: BTreeMap<String, f64> = case
            .expected
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    if v == "NaN" {
                        f64::NAN
                    } else {
                        v.parse().unwrap()
                    },
                )
            })
            .collect();
        let equal = got.len() == want.len()
            && got
                .iter()
                .zip(&want)
                .all(|((gk, gv), (wk, wv))| gk == wk && same(*gv, *wv));
        if !equal {
            failures.push(format!(
                "{} ({}):\n  want {want:?}\n   got {got:?}",
                case.case, case.observer
            ));
        }
        count += 1;
    }
    assert!(count >= 30, "only {count} vectors read");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The deliberate differences from statsd_exporter 0.23 (tests/data/VECTORS.md).
#[test]
fn dogstatsd_improvements() {
    let s = store(StoreConfig::default());
    let now = Instant::now();
    feed(&s, "vm_counter:1:2:3|c", now);
    feed(&s, "vm_timer:100:200|ms", now);
    feed(&s, "a:1|c\r\nb:2|c", now);
    feed(&s, "vs_set:user1|s", now);
    feed(&s, "vs_set:user1|s", now);
    feed(&s, "vs_set:user2|s", now);
    feed(&s, "_sc|vsc.check|0|#env:prod", now);
    feed(&s, "_e{5,4}:title|text|#env:prod", now);
    feed(&s, "t:100|ms|@0.3", now);
    feed(&s, "c:1|c|#k:v|c:abc|T123|e:ext|card:low", now);
    let got = parse_page(&page(&s, now));
    let want = [
        ("vm_counter{}", 6.0),
        ("vm_timer_count{}", 2.0),
        ("vm_timer_sum{}", 0.3),
        ("a{}", 1.0),
        ("b{}", 2.0),
        ("vs_set{}", 2.0),
        (
            "statsd_service_check_status{check=\"vsc.check\",env=\"prod\"}",
            0.0,
        ),
        ("statsd_events_total{alert_type=\"info\",env=\"prod\"}", 1.0),
        ("t_count{}", 1.0 / 0.3),
        ("t_sum{}", 0.1 / 0.3),
        ("c{k=\"v\"}", 1.0),
    ];
    for (k, v) in want {
        let g = got.get(k).copied();
        assert!(
            g.is_some_and(|g| same(g, v)),
            "{k}: want {v}, got {g:?}\n{got:#?}"
        );
    }
}

#[test]
fn golden_page() {
    let s = store(StoreConfig {
        buckets: Arc::from([0.1, 1.0].as_slice()),
        ..StoreConfig::default()
    });
    let now = Instant::now();
    feed(
        &s,
        "b.count:2|c|#z:1,a:2\nb.count:1|c|#a:2,z:1\ng:-3|g|#q:\"x\\y\nlat:500|ms\ng2:NaN|g",
        now,
    );
    let want = "\
# HELP b_count Metric autogenerated by statsd-bridge.
# TYPE b_count counter
b_count{a=\"2\",z=\"1\"} 3
# HELP g Metric autogenerated by statsd-bridge.
# TYPE g gauge
g{q=\"\\\"x\\\\y\"} -3
# HELP g2 Metric autogenerated by statsd-bridge.
# TYPE g2 gauge
g2 NaN
# HELP lat Metric autogenerated by statsd-bridge.
# TYPE lat histogram
lat_bucket{le=\"0.1\"} 0
lat_bucket{le=\"1\"} 1
lat_bucket{le=\"+Inf\"} 1
lat_sum 0.5
lat_count 1
";
    assert_eq!(page(&s, now), want);
}

#[test]
fn gauge_sign_modes() {
    let delta = store(StoreConfig::default());
    let absolute = store(StoreConfig {
        signed_gauge: SignedGauge::Absolute,
        ..StoreConfig::default()
    });
    let now = Instant::now();
    for s in [&delta, &absolute] {
        feed(s, "g:10|g\ng:-3|g\ng:+1|g", now);
    }
    assert_eq!(parse_page(&page(&delta, now))["g{}"], 8.0);
    assert_eq!(parse_page(&page(&absolute, now))["g{}"], 1.0);
}

#[test]
fn type_conflicts_and_name_collisions_never_break_the_page() {
    let s = store(StoreConfig::default());
    let now = Instant::now();
    let results = feed(
        &s,
        "x:1|c\nx:1|g\nx:1|ms\nh:1|ms\nh_count:1|c\nh_bucket:1|g\ny_sum:1|c\ny:1|h\nstatsd_bridge_series:1|c",
        now,
    );
    let dropped = dropped_reasons(&results);
    assert_eq!(
        dropped,
        [
            "type_conflict",
            "type_conflict",
            "name_collision",
            "name_collision",
            "name_collision",
            "reserved_name"
        ]
    );
    let text = page(&s, now);
    let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
    assert_eq!(
        types,
        [
            "# TYPE h histogram",
            "# TYPE x counter",
            "# TYPE y_sum counter"
        ]
    );
}

#[test]
fn reserved_label_names_are_renamed() {
    let s = store(StoreConfig::default());
    let now = Instant::now();
    let r = feed(&s, "h:1|h|#le:5,__x:1\nc:1|c|#le:5\nq:1|h|#quantile:a", now);
    let renamed: u32 = r
        .iter()
        .map(|r| match r {
            LineResult::Accepted { outcome, .. } => outcome.labels_renamed,
            _ => 0,
        })
        .sum();
    assert_eq!(renamed, 2);
    let got = parse_page(&page(&s, now));
    assert!(
        got.contains_key("h_count{exported___x=\"1\",exported_le=\"5\"}"),
        "{got:#?}"
    );
    assert!(got.contains_key("c{le=\"5\"}"));
    assert!(got.contains_key("q_count{quantile=\"a\"}"));
}

#[test]
fn summary_mode_exposes_quantiles_with_renamed_tag() {
    let s = store(StoreConfig {
        observer: ObserverType::Summary,
        ..StoreConfig::default()
    });
    let now = Instant::now();
    feed(&s, "t:100|ms|#quantile:x\nt:300|ms|#quantile:x", now);
    let got = parse_page(&page(&s, now));
    assert_eq!(got["t{exported_quantile=\"x\",quantile=\"0.5\"}"], 0.1);
    assert_eq!(got["t_count{exported_quantile=\"x\"}"], 2.0);
}

#[test]
fn later_duplicate_tag_wins_and_sanitized_keys_merge() {
    let s = store(StoreConfig::default());
    let now = Instant::now();
    feed(
        &s,
        "d:1|c|#a:1,a:2\ne:1|c|#a.b:1,a_b:2\nf:1|c|#my.tag-key:v,1bad:x",
        now,
    );
    let got = parse_page(&page(&s, now));
    assert!(got.contains_key("d{a=\"2\"}"));
    assert!(got.contains_key("e{a_b=\"2\"}"));
    assert!(got.contains_key("f{_1bad=\"x\",my_tag_key=\"v\"}"));
}

#[test]
fn event_and_service_check_fixed_labels_win_over_tags() {
    let s = store(StoreConfig::default());
    let now = Instant::now();
    feed(
        &s,
        "_e{1,1}:a|b|t:error|#alert_type:fake\n_sc|chk|2|#check:fake",
        now,
    );
    let got = parse_page(&page(&s, now));
    assert_eq!(got["statsd_events_total{alert_type=\"error\"}"], 1.0);
    assert_eq!(got["statsd_service_check_status{check=\"chk\"}"], 2.0);
}

#[test]
fn set_window_resets() {
    let s = store(StoreConfig {
        set_window: Duration::from_secs(10),
        ..StoreConfig::default()
    });
    let t0 = Instant::now();
    feed(&s, "u:a|s\nu:b|s\nu:a|s", t0);
    assert_eq!(parse_page(&page(&s, t0))["u{}"], 2.0);
    assert_eq!(
        parse_page(&page(&s, t0 + Duration::from_secs(11)))["u{}"],
        0.0
    );
    feed(&s, "u:c|s", t0 + Duration::from_secs(12));
    assert_eq!(
        parse_page(&page(&s, t0 + Duration::from_secs(12)))["u{}"],
        1.0
    );
}

#[test]
fn series_limit_rejects_new_series_and_keeps_updating_old_ones() {
    let s = store(StoreConfig {
        max_series: 2,
        ..StoreConfig::default()
    });
    let now = Instant::now();
    let r = feed(&s, "a:1|c\nb:1|c\nc:1|c\na:1|c", now);
    assert_eq!(r[2], LineResult::Dropped(Rejection::SeriesLimit));
    let got = parse_page(&page(&s, now));
    assert_eq!((got["a{}"], got.len()), (2.0, 2));
}

#[test]
fn ttl_expires_idle_series() {
    let s = store(StoreConfig {
        ttl: Duration::from_secs(5),
        ..StoreConfig::default()
    });
    let t0 = Instant::now();
    feed(&s, "old:1|c", t0);
    feed(&s, "fresh:1|c", t0 + Duration::from_secs(8));
    assert_eq!(s.expire(t0 + Duration::from_secs(9)), 1);
    assert_eq!(s.len(), 1);
    assert!(parse_page(&page(&s, t0)).contains_key("fresh{}"));
}

#[test]
fn weighted_histogram_observations() {
    let s = store(StoreConfig::default());
    let now = Instant::now();
    feed(&s, "w:20|ms|@0.001", now);
    let got = parse_page(&page(&s, now));
    assert!(same(got["w_count{}"], 1000.0));
    assert!(same(got["w_bucket{le=\"0.025\"}"], 1000.0));
    assert!(same(got["w_bucket{le=\"0.01\"}"], 0.0));
}

proptest::proptest! {
    /// Whatever arrives, every page line is a comment or `name[{…}] value`, and each
    /// family has exactly one TYPE line.
    #[test]
    fn any_input_gives_a_well_formed_page(
        lines in proptest::collection::vec("[a-c._]{1,3}(,[a-c]=[a-c\"\\\\]{1,2})?:[0-9]{1,2}\\|(c|g|ms|h|d|s)(\\|#[a-z_]{1,3}:[ -~]{0,4}){0,1}", 1..30)
    ) {
        let s = store(StoreConfig::default());
        let now = Instant::now();
        feed(&s, &lines.join("\n"), now);
        let text = page(&s, now);
        let mut types = std::collections::HashSet::new();
        for l in text.lines() {
            if let Some(t) = l.strip_prefix("# TYPE ") {
                proptest::prop_assert!(types.insert(t.split(' ').next().unwrap().to_owned()), "{}", text);
            }
        }
        parse_page(&text);
    }
}

#[test]
fn a_series_updated_every_second_never_expires_with_a_one_second_ttl() {
    let s = store(StoreConfig {
        ttl: Duration::from_secs(1),
        ..StoreConfig::default()
    });
    let t0 = Instant::now();
    for i in 0..10 {
        let now = t0 + Duration::from_millis(900 * i);
        feed(&s, "busy:1|c", now);
        assert_eq!(s.expire(now), 0, "expired at step {i}");
    }
    assert_eq!(parse_page(&page(&s, t0))["busy{}"], 10.0);
    assert_eq!(s.expire(t0 + Duration::from_secs(20)), 1);
}

#[test]
fn a_storm_of_new_names_past_the_cap_registers_no_family() {
    let s = store(StoreConfig {
        max_series: 10,
        ..StoreConfig::default()
    });
    let now = Instant::now();
    let before = s.family_count();
    for i in 0..1000 {
        feed(&s, &format!("storm_{i}:1|c"), now);
    }
    assert_eq!(s.len(), 10);
    assert_eq!(s.family_count(), before + 10);
}

#[test]
fn expired_families_are_forgotten_and_their_names_freed() {
    let s = store(StoreConfig {
        ttl: Duration::from_secs(1),
        ..StoreConfig::default()
    });
    let t0 = Instant::now();
    feed(&s, "x:1|c", t0);
    let before = s.family_count();
    assert_eq!(s.expire(t0 + Duration::from_secs(5)), 1);
    assert_eq!(s.family_count(), before - 1);
    // The name is free again, even for another type.
    let r = feed(&s, "x:1|g", t0 + Duration::from_secs(6));
    assert!(matches!(r[0], LineResult::Accepted { .. }), "{r:?}");
}

#[test]
fn openmetrics_mode_refuses_names_that_would_clash_there() {
    let s = store(StoreConfig {
        openmetrics: true,
        ..StoreConfig::default()
    });
    let now = Instant::now();
    let r = feed(
        &s,
        "dup:1|c\ndup_total:1|c\ng_total:1|g\ng:1|c\n_total:1|c\nh:1|h\nh_count:1|c",
        now,
    );
    let dropped = dropped_reasons(&r);
    assert_eq!(
        dropped,
        [
            "name_collision",
            "name_collision",
            "empty_metric_name",
            "name_collision"
        ]
    );
    // In text mode the first two are distinct families, as in statsd_exporter.
    let text = store(StoreConfig::default());
    let r = feed(&text, "dup:1|c\ndup_total:1|c", now);
    assert!(
        r.iter().all(|r| matches!(r, LineResult::Accepted { .. })),
        "{r:?}"
    );
}

#[test]
fn openmetrics_page_leaves_out_negative_sums() {
    let s = store(StoreConfig {
        openmetrics: true,
        ..StoreConfig::default()
    });
    let now = Instant::now();
    feed(&s, "neg:-5|h\npos:5|h", now);
    let mut om = String::new();
    crate::expose::encode(
        &s.snapshot(now),
        crate::expose::Format::OpenMetrics,
        &mut om,
    );
    assert!(
        !om.contains("neg_sum") && !om.contains("neg_count") && om.contains("pos_sum 5"),
        "{om}"
    );
    assert!(om.contains("neg_bucket{le=\"+Inf\"} 1"), "{om}");
    assert!(
        page(&s, now).contains("neg_sum -5"),
        "the text format keeps it"
    );
}

#[test]
fn a_kept_handle_of_a_removed_series_writes_nothing() {
    let s = store(StoreConfig {
        ttl: Duration::from_secs(5),
        ..StoreConfig::default()
    });
    let t0 = Instant::now();
    let line = match crate::protocol::parse_line(b"h:1|c", &ParseOptions::default()) {
        Ok(crate::protocol::Line::Metric(m)) => m,
        other => panic!("{other:?}"),
    };
    let mut scratch = Scratch::default();
    let (_, handle) = s
        .ingest_sample_handle(&line, &s.default_target(), &mut scratch, t0)
        .unwrap();
    assert_eq!(s.ingest_known(&line, &handle, None, t0), Some(Ok(1)));
    assert_eq!(s.expire(t0 + Duration::from_secs(9)), 1);
    assert_eq!(s.ingest_known(&line, &handle, None, t0), None);
    assert!(s.is_empty());
    s.ingest_sample_to(&line, &s.default_target(), &mut scratch, t0)
        .unwrap();
    assert_eq!(s.ingest_known(&line, &handle, None, t0), None);
    assert_eq!(parse_page(&page(&s, t0))["h{}"], 1.0);
}

/// Two threads' workers keep handles of one series across its removals, while pages are
/// read: every line lands exactly once, and none in a removed series.
#[test]
fn workers_handles_survive_removals_across_threads() {
    const LINES: usize = 2_000;
    let s = store(StoreConfig::default());
    let now = Instant::now();
    let mut workers = [Worker::unmapped(s.config()), Worker::unmapped(s.config())];
    for round in 0..5 {
        std::thread::scope(|scope| {
            for worker in &mut workers {
                let s = &s;
                scope.spawn(move || {
                    for _ in 0..LINES {
                        let r =
                            ingest_line(s, b"hot:1|c|#k:v", &ParseOptions::default(), worker, now);
                        assert!(matches!(r, LineResult::Accepted { .. }));
                    }
                });
            }
            for _ in 0..20 {
                page(&s, now);
            }
        });
        let got = parse_page(&page(&s, now));
        assert_eq!(got["hot{k=\"v\"}"], (2 * LINES) as f64, "round {round}");
        assert_eq!((s.len(), s.remove_labelled(|_| true)), (1, 1));
    }
}
