//! Mapping tests: the rule language case by case, invalid files with their errors, the
//! TOML front-end against the YAML one, and a realistic rule file against an independent
//! oracle (statsd_exporter's original linear regex matcher).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::aggregate::{Store, StoreConfig};
use crate::expose::encode_text;
use crate::ingest::{LineResult, Worker, ingest_line};
use crate::protocol::{ParseOptions, lines};

fn mapper(yaml: &str) -> Mapper {
    let (spec, _) = yaml::parse(yaml, Path::new("mapping.yml")).unwrap();
    Mapper::compile(&spec).unwrap()
}

fn compile_err(yaml: &str) -> String {
    match yaml::parse(yaml, Path::new("mapping.yml")) {
        Err(e) => e.to_string(),
        Ok((spec, _)) => Mapper::compile(&spec).map(|_| ()).unwrap_err().to_string(),
    }
}

/// `name{k="v",…}` or `drop #n` or `unmapped` for one name.
fn render(m: &Mapper, name: &str, t: MatchMetricType) -> String {
    match m.resolve(name, t) {
        Resolution::Mapped {
            name, mut labels, ..
        } => {
            labels.sort();
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            format!("{name}{{{}}}", l.join(","))
        }
        Resolution::Dropped { rule } => format!("drop #{}", rule.index.unwrap_or(usize::MAX)),
        Resolution::Unmapped { .. } => "unmapped".to_owned(),
    }
}

/// The page a bridge with these rules serves for `datagram`.
fn page(yaml: &str, datagram: &str) -> BTreeMap<String, String> {
    let (spec, _) = yaml::parse(yaml, Path::new("mapping.yml")).unwrap();
    let handle = Arc::new(MapperHandle::new(Mapper::compile(&spec).unwrap()));
    let store = Store::new(StoreConfig::default(), []);
    let mut worker = Worker::new(handle, 100);
    let now = Instant::now();
    for l in lines(datagram.as_bytes()) {
        ingest_line(&store, l, &ParseOptions::default(), &mut worker, now);
    }
    let mut text = String::new();
    encode_text(&store.snapshot(now), &mut text);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            l.rsplit_once(' ')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

const C: MatchMetricType = MatchMetricType::Counter;
const G: MatchMetricType = MatchMetricType::Gauge;
const O: MatchMetricType = MatchMetricType::Observer;

#[test]
fn glob_rules() {
    let m = mapper(
        r#"
mappings:
- match: test.dispatcher.*.*.*
  name: "dispatcher_events_total"
  labels:
    processor: "$1"
    action: "$2"
    outcome: "$3"
    job: "test_dispatcher"
- match: "*.signup.*.*"
  name: "signup_events_total"
  labels:
    provider: "$2"
    outcome: "$3"
    job: "${1}_server"
- match: test.*.*
  name: "${1}_${2}_total"
- match: test.first.*
  name: "never_reached"
- match: a.b.*
  match_metric_type: gauge
  name: "gauge_only"
- match: a.b.*
  name: "any_type"
"#,
    );
    let cases = [
        (
            "test.dispatcher.FooProcessor.send.success",
            C,
            r#"dispatcher_events_total{action="send",job="test_dispatcher",outcome="success",processor="FooProcessor"}"#,
        ),
        (
            "foo_product.signup.facebook.failure",
            C,
            r#"signup_events_total{job="foo_product_server",outcome="failure",provider="facebook"}"#,
        ),
        ("test.first.second", C, "first_second_total{}"),
        ("test.x", C, "unmapped"),
        ("test.a.b.c", C, "unmapped"),
        ("a.b.c", G, "gauge_only{}"),
        ("a.b.c", C, "any_type{}"),
        ("a.b.c", O, "any_type{}"),
    ];
    for (name, t, want) in cases {
        assert_eq!(render(&m, name, t), want, "{name}");
    }
}

#[test]
fn glob_ordering_can_be_disabled() {
    let rules = "mappings:\n- match: a.*.c\n  name: first\n- match: a.b.c\n  name: literal\n";
    assert_eq!(render(&mapper(rules), "a.b.c", C), "first{}");
    let unordered = format!("defaults:\n  glob_disable_ordering: true\n{rules}");
    assert_eq!(render(&mapper(&unordered), "a.b.c", C), "literal{}");
}

#[test]
fn glob_beats_regex_whatever_the_order() {
    let m = mapper(
        r#"
mappings:
- match: 'a\.(.*)'
  match_type: regex
  name: "regex_$1"
- match: a.*
  name: "glob_${1}"
"#,
    );
    assert_eq!(render(&m, "a.x", C), "glob_x{}");
    assert_eq!(render(&m, "a.x.y", C), "regex_x_y{}".replace("x_y", "x.y"));
}

#[test]
fn regex_rules() {
    let m = mapper(
        r#"
defaults:
  match_type: regex
mappings:
- match: '^request_(?P<method>get|post)_(\d+)$'
  name: "requests_total"
  labels:
    method: "$method"
    code: "${2}"
    whole: "$0"
- match: 'temp\.(.*)'
  match_metric_type: gauge
  name: "temperature_celsius"
  labels:
    room: "$1"
    literal: "$$1"
    missing: "$9"
- match: 'anywhere'
  name: "unanchored"
"#,
    );
    let cases = [
        (
            "request_get_200",
            C,
            r#"requests_total{code="200",method="get",whole="request_get_200"}"#,
        ),
        ("request_put_200", C, "unmapped"),
        (
            "temp.kitchen",
            G,
            r#"temperature_celsius{literal="$1",missing="",room="kitchen"}"#,
        ),
        ("temp.kitchen", C, "unmapped"),
        ("x.anywhere.y", C, "unanchored{}"),
    ];
    for (name, t, want) in cases {
        assert_eq!(render(&m, name, t), want, "{name}");
    }
}

#[test]
fn drop_action() {
    let m = mapper(
        "mappings:\n- match: noisy.*\n  action: drop\n  name: dropped\n- match: '.*'\n  match_type: regex\n  action: drop\n",
    );
    assert_eq!(render(&m, "noisy.thing", C), "drop #0");
    assert_eq!(render(&m, "anything.else", C), "drop #1");
}

#[test]
fn labels_override_tags_unless_honor_labels() {
    let yaml = r#"
mappings:
- match: svc.*
  name: "svc_${1}"
  labels:
    env: "from_rule"
    gone: ""
- match: keep.*
  name: "keep_${1}"
  honor_labels: true
  labels:
    env: "from_rule"
"#;
    let got = page(
        yaml,
        "svc.a:1|c|#env:prod,gone:x,other:y\nkeep.a:1|c|#env:prod\nkeep.b:1|c",
    );
    assert_eq!(
        got.get(r#"svc_a{env="from_rule",other="y"}"#)
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(
        got.get(r#"keep_a{env="prod"}"#).map(String::as_str),
        Some("1")
    );
    assert_eq!(
        got.get(r#"keep_b{env="from_rule"}"#).map(String::as_str),
        Some("1")
    );
}

#[test]
fn observer_types_buckets_scale_and_help() {
    let yaml = r#"
defaults:
  observer_type: histogram
  histogram_options:
    buckets: [1, 2]
mappings:
- match: lat.*
  name: "latency_${1}_seconds"
  help: "Latency by endpoint."
- match: sum.*
  name: "summary_${1}"
  observer_type: summary
  summary_options:
    quantiles:
    - quantile: 0.5
      error: 0.05
- match: legacy.*
  name: "legacy_${1}"
  timer_type: histogram
  buckets: [0.5]
- match: kb.*
  name: "bytes_${1}"
  scale: 1024
"#;
    let got = page(
        yaml,
        "lat.home:1500|ms\nsum.x:10|ms\nlegacy.y:100|ms\nkb.z:2|c\nunmapped.t:3000|ms",
    );
    assert_eq!(
        got.get(r#"latency_home_seconds_bucket{le="1"}"#)
            .map(String::as_str),
        Some("0")
    );
    assert_eq!(
        got.get(r#"latency_home_seconds_bucket{le="2"}"#)
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(
        got.get(r#"summary_x{quantile="0.5"}"#).map(String::as_str),
        Some("0.01")
    );
    assert_eq!(
        got.get(r#"legacy_y_bucket{le="0.5"}"#).map(String::as_str),
        Some("1")
    );
    assert_eq!(got.get("bytes_z").map(String::as_str), Some("2048"));
    // Unmapped observers follow the file's defaults.
    assert_eq!(
        got.get(r#"unmapped_t_bucket{le="2"}"#).map(String::as_str),
        Some("0")
    );
}

#[test]
fn a_file_without_defaults_means_summaries_as_in_statsd_exporter() {
    let got = page("mappings: []\n", "t:100|ms");
    assert!(got.contains_key(r#"t{quantile="0.5"}"#), "{got:?}");
}

#[test]
fn ttl_from_rule_and_defaults() {
    let (spec, _) = yaml::parse(
        "defaults:\n  ttl: 10s\nmappings:\n- match: short.*\n  name: short\n  ttl: 1s\n",
        Path::new("m.yml"),
    )
    .unwrap();
    let handle = Arc::new(MapperHandle::new(Mapper::compile(&spec).unwrap()));
    let store = Store::new(StoreConfig::default(), []);
    let mut worker = Worker::new(handle, 0);
    let t0 = Instant::now();
    for l in ["short.a:1|c", "other:1|c"] {
        ingest_line(
            &store,
            l.as_bytes(),
            &ParseOptions::default(),
            &mut worker,
            t0,
        );
    }
    assert_eq!(store.expire(t0 + Duration::from_secs(2)), 1);
    assert_eq!(store.expire(t0 + Duration::from_secs(11)), 1);
    assert!(store.is_empty());
}

#[test]
fn mapped_empty_name_and_drop_are_counted_not_applied() {
    let yaml = "mappings:\n- match: e.*\n  name: \"$2\"\n- match: d.*\n  action: drop\n  name: x\n";
    let (spec, _) = yaml::parse(yaml, Path::new("m.yml")).unwrap();
    let handle = Arc::new(MapperHandle::new(Mapper::compile(&spec).unwrap()));
    let store = Store::new(StoreConfig::default(), []);
    let mut worker = Worker::new(handle, 10);
    let now = Instant::now();
    let r = |l: &str, w: &mut Worker| {
        ingest_line(&store, l.as_bytes(), &ParseOptions::default(), w, now)
    };
    assert_eq!(
        r("e.x:1|c", &mut worker),
        LineResult::Dropped(crate::aggregate::Rejection::EmptyName)
    );
    assert_eq!(
        r("d.x:1|c", &mut worker),
        LineResult::Dropped(crate::aggregate::Rejection::MappingDrop)
    );
    assert!(store.is_empty());
}

#[test]
fn invalid_files_name_the_rule_and_the_problem() {
    let cases = [
        (
            "mappings:\n- match: a.b\n  name: x\n  labelz: {}\n",
            "mapping.yml:4:3: unknown field `labelz`",
        ),
        (
            "mappings:\n- match: a.b\n",
            "mapping.yml:2:3: line 0: metric mapping didn't set a metric name",
        ),
        (
            "mappings:\n- match: a.b\n  name: x\n- match: a.b*\n  name: y\n",
            "mapping.yml:4:3: invalid match: a.b*",
        ),
        (
            "mappings:\n- match: prefix_*.b\n  name: y\n",
            "invalid match: prefix_*.b",
        ),
        ("mappings:\n- match: a\n  name: y\n", "invalid match: a"),
        (
            "mappings:\n- match: '(a'\n  match_type: regex\n  name: y\n",
            "invalid regex (a in mapping",
        ),
        (
            "mappings:\n- match: a.b\n  name: 'bad-name'\n",
            "metric name 'bad-name' doesn't match regex",
        ),
        (
            "mappings:\n- match: a.b\n  name: x\n  labels:\n    a: v\n",
            "invalid label key: a",
        ),
        (
            "mappings:\n- match: a.b\n  name: x\n  labels:\n    bad-key: v\n",
            "invalid label key: bad-key",
        ),
        (
            "mappings:\n- match: a.b\n  name: x\n  observer_type: histogram\n  summary_options: {}\n",
            "cannot use histogram observer and summary options at the same time",
        ),
        (
            "mappings:\n- match: a.b\n  name: x\n  observer_type: summary\n  histogram_options: {}\n",
            "cannot use summary observer and histogram options at the same time",
        ),
        (
            "mappings:\n- match: a.b\n  name: x\n  quantiles: [{quantile: 0.5}]\n  summary_options: {quantiles: [{quantile: 0.9}]}\n",
            "cannot use quantiles in both the top level and summary options at the same time in a.b",
        ),
        (
            "mappings:\n- match: a.b\n  name: x\n  match_type: fuzzy\n",
            "mapping.yml:4:",
        ),
        (
            "mappings:\n- match: a.b\n  name: x\n  ttl: soon\n",
            "mapping.yml:4:",
        ),
        (
            "mappings:\n- match: a.b\n  name: x\n  observer_type: histogram\n  histogram_options: {buckets: [2, 1]}\n",
            "strictly increasing",
        ),
        ("defaults:\n  nonsense: 1\n", "unknown field `nonsense`"),
        ("mappings: [\n", "mapping.yml:"),
    ];
    for (yaml, want) in cases {
        let got = compile_err(yaml);
        assert!(
            got.contains(want),
            "{yaml:?}\n  want: {want}\n   got: {got}"
        );
    }
}

#[test]
fn native_histogram_options_per_rule_fall_back_to_the_defaults() {
    let m = mapper(
        "defaults:\n  observer_type: histogram\n  histogram_options:\n    native_histogram_bucket_factor: 1.1\n    native_histogram_max_buckets: 50\n\
         mappings:\n\
         - match: a.b\n  name: fine\n  histogram_options:\n    native_histogram_bucket_factor: 1.01\n\
         - match: a.c\n  name: classic_only\n  histogram_options:\n    native_histogram_bucket_factor: 0\n\
         - match: a.d\n  name: inherits\n",
    );
    let native = |name: &str| {
        m.resolve(name, MatchMetricType::Observer)
            .target()
            .and_then(|t| t.native)
            .map(|n| (n.schema, n.max_buckets))
    };
    // 1.01 → schema 7 (2^(1/128) = 1.0054); the bucket limit comes from the defaults.
    assert_eq!(native("a.b"), Some((7, 50)));
    assert_eq!(native("a.c"), None);
    assert_eq!(native("a.d"), Some((3, 50)));
    // Unmapped lines get the defaults too.
    assert_eq!(native("other"), Some((3, 50)));
    let err = compile_err(
        "mappings:\n- match: a.b\n  name: x\n  observer_type: histogram\n  histogram_options:\n    native_histogram_bucket_factor: -2\n",
    );
    assert!(err.contains("native_histogram_bucket_factor"), "{err}");
}

/// `native_histogram_zero_threshold` (the bridge's own key) from either front-end reaches
/// the observer: the encoded zero bucket has the threshold and holds what it covers (0.5 ms
/// within 1 ms, 0.5 and 5 ms within 10 ms), and a rule's value wins over the defaults'.
#[test]
fn native_zero_thresholds_from_yaml_and_toml_reach_the_zero_bucket() {
    use crate::aggregate::native::DEFAULT_ZERO_THRESHOLD;
    use crate::expose::protobuf::{decode_all, encode_protobuf};
    let from_yaml = |defaults: &str| {
        let (spec, _) = yaml::parse(
            &format!(
                "defaults:\n  observer_type: histogram\n  histogram_options:\n    native_histogram_bucket_factor: 1.1\n{defaults}\
                 mappings:\n- match: wide.*\n  name: wide\n  histogram_options:\n    native_histogram_zero_threshold: 0.01\n"
            ),
            Path::new("mapping.yml"),
        )
        .unwrap();
        (StoreConfig::default(), spec)
    };
    let from_toml = |bridge: &str| {
        let cfg = crate::config::Config::from_toml(
            &format!(
                "version = 1\n[bridge]\nnative_histogram_bucket_factor = 1.1\n{bridge}\
                 [[bridge.mapping]]\nmatch = \"wide.*\"\nname = \"wide\"\n\
                 histogram_options = {{ native_histogram_zero_threshold = 0.01 }}\n"
            ),
            Path::new("pipeline.toml"),
        )
        .unwrap();
        (cfg.store(), cfg.mapping)
    };
    let cases = [
        (
            "yaml defaults",
            from_yaml("    native_histogram_zero_threshold: 0.001\n"),
            (0.001, 1),
        ),
        (
            "[bridge]",
            from_toml("native_histogram_zero_threshold = 0.001\n"),
            (0.001, 1),
        ),
        ("yaml, no key", from_yaml(""), (DEFAULT_ZERO_THRESHOLD, 0)),
        ("toml, no key", from_toml(""), (DEFAULT_ZERO_THRESHOLD, 0)),
    ];
    for (front_end, (cfg, spec), plain) in cases {
        let store = Store::new(cfg, []);
        let handle = Arc::new(MapperHandle::new(Mapper::compile(&spec).unwrap()));
        let mut worker = Worker::new(handle, 0);
        let now = Instant::now();
        for l in ["plain:0.5|ms", "plain:5|ms", "wide.x:0.5|ms", "wide.x:5|ms"] {
            ingest_line(
                &store,
                l.as_bytes(),
                &ParseOptions::default(),
                &mut worker,
                now,
            );
        }
        let mut out = Vec::new();
        encode_protobuf(&store.snapshot(now), &mut out);
        let zero_buckets: Vec<(String, f64, u64)> = decode_all(&out)
            .unwrap()
            .iter()
            .map(|f| {
                let h = f.metric[0].histogram.as_ref().unwrap();
                (f.name.clone(), h.zero_threshold, h.zero_count)
            })
            .collect();
        assert_eq!(
            zero_buckets,
            [
                ("plain".to_owned(), plain.0, plain.1),
                ("wide".to_owned(), 0.01, 2)
            ],
            "{front_end}"
        );
    }
}

#[test]
fn label_values_may_be_yaml_numbers() {
    let m = mapper(
        "mappings:\n- match: a.*\n  name: x\n  labels:\n    code: 200\n    ratio: 0.5\n    on: true\n",
    );
    assert_eq!(
        render(&m, "a.b", C),
        r#"x{code="200",on="true",ratio="0.5"}"#
    );
}

#[test]
fn cache_hits_and_reload_invalidates_the_cache() {
    let handle = Arc::new(MapperHandle::new(mapper(
        "mappings:\n- match: a.*\n  name: old\n",
    )));
    let mut r = Resolver::new(Arc::clone(&handle), 10);
    assert_eq!(r.resolve("a.b", C).1, CacheUse::Miss);
    assert_eq!(r.resolve("a.b", C).1, CacheUse::Hit);
    assert_eq!(
        r.resolve("a.b", G).1,
        CacheUse::Miss,
        "the type is part of the key"
    );
    handle.replace(mapper("mappings:\n- match: a.*\n  name: new\n"));
    let (res, used) = r.resolve("a.b", C);
    assert_eq!(used, CacheUse::Miss);
    assert!(matches!(&*res, Resolution::Mapped { name, .. } if name == "new"));
}

#[test]
fn cache_is_bounded() {
    let handle = Arc::new(MapperHandle::new(mapper(
        "mappings:\n- match: a.*\n  name: x\n",
    )));
    let mut r = Resolver::new(handle, 2);
    for n in ["a.1", "a.2", "a.3"] {
        r.resolve(n, C);
    }
    assert_eq!(
        r.resolve("a.1", C).1,
        CacheUse::Miss,
        "evicted as least recently used"
    );
    assert_eq!(r.resolve("a.3", C).1, CacheUse::Hit);
}

/// statsd_exporter's original matcher (before the FSM): every glob becomes an anchored regex,
/// rules are tried in file order, globs before regexes. An independent oracle for the tree.
struct Oracle<'a> {
    globs: Vec<(usize, Regex, &'a RuleSpec)>,
    regexes: Vec<(usize, Regex, &'a RuleSpec)>,
}

impl<'a> Oracle<'a> {
    fn new(spec: &'a MappingSpec) -> Self {
        let mut globs = Vec::new();
        let mut regexes = Vec::new();
        for (i, r) in spec.rules.iter().enumerate() {
            match r.match_type.unwrap_or(spec.defaults.match_type) {
                MatchType::Glob => {
                    let re = format!(
                        "^{}$",
                        r.match_text.replace('.', "\\.").replace('*', "([^.]*)")
                    );
                    globs.push((i, Regex::new(&re).unwrap(), r));
                }
                MatchType::Regex => regexes.push((i, Regex::new(&r.match_text).unwrap(), r)),
            }
        }
        Self { globs, regexes }
    }

    fn resolve(&self, name: &str, t: MatchMetricType) -> String {
        for (i, re, r) in self.globs.iter().chain(self.regexes.iter()) {
            if r.match_metric_type.is_some_and(|mt| mt != t) {
                continue;
            }
            let Some(caps) = re.captures(name) else {
                continue;
            };
            if r.action == Action::Drop {
                return format!("drop #{i}");
            }
            let mut out = String::new();
            caps.expand(&r.name, &mut out);
            let mut labels: Vec<String> = r
                .labels
                .iter()
                .map(|(k, v)| {
                    let mut value = String::new();
                    caps.expand(v, &mut value);
                    format!("{k}=\"{value}\"")
                })
                .collect();
            labels.sort();
            return format!("{out}{{{}}}", labels.join(","));
        }
        "unmapped".to_owned()
    }
}

#[test]
fn realistic_rule_file_agrees_with_the_oracle() {
    let yaml = include_str!("../../tests/data/mapping/realistic.yml");
    let (spec, _) = yaml::parse(yaml, Path::new("realistic.yml")).unwrap();
    assert!(spec.rules.len() >= 50, "{} rules", spec.rules.len());
    let m = Mapper::compile(&spec).unwrap();
    let oracle = Oracle::new(&spec);
    let services = ["checkout", "search", "auth", "billing", "cart"];
    let envs = ["prod", "staging"];
    let hosts = ["web-1", "web-2", "db-1"];
    let endpoints = ["login", "logout", "pay", "query", "x"];
    let statuses = ["200", "404", "500"];
    let mut names = Vec::new();
    for s in services {
        for e in envs {
            for h in hosts {
                names.push(format!("{s}.{e}.{h}.cpu.user"));
                names.push(format!("{s}.{e}.{h}.memory.rss"));
                names.push(format!("{s}.{e}.{h}.disk.sda.read_bytes"));
                for ep in endpoints {
                    for st in statuses {
                        names.push(format!("{s}.{e}.{h}.{ep}.{st}.count"));
                    }
                    names.push(format!("{s}.{e}.{h}.{ep}.latency"));
                }
            }
            names.push(format!("{s}.{e}.queue.depth"));
            names.push(format!("{s}.{e}.cache.hit"));
            names.push(format!("{s}.{e}.cache.miss"));
            names.push(format!("jvm.{s}.{e}.gc.pause"));
        }
    }
    names.extend(
        [
            "debug.tmp.x",
            "kafka.consumer.orders.lag",
            "kafka.producer.events.sent",
            "http_get_200",
            "http_post_503",
            "a.b",
        ]
        .map(String::from),
    );
    assert!(names.len() >= 300, "{} names", names.len());
    let mut matched = 0;
    for name in &names {
        for t in [C, G, O] {
            let got = render(&m, name, t);
            assert_eq!(got, oracle.resolve(name, t), "{name} as {t:?}");
            matched += usize::from(got != "unmapped");
        }
    }
    assert!(
        matched > names.len(),
        "the file should map most names; {matched} mapped"
    );
    // A few outputs spelled out, so the oracle can't agree with a shared mistake.
    assert_eq!(
        render(&m, "checkout.prod.web-1.pay.500.count", C),
        r#"http_requests_total{endpoint="pay",env="prod",host="web-1",service="checkout",status="500"}"#
    );
    assert_eq!(
        render(&m, "search.staging.db-1.cpu.user", G),
        r#"node_cpu_usage{env="staging",host="db-1",mode="user",service="search"}"#
    );
    assert_eq!(render(&m, "debug.tmp.x", C), "drop #0");
    assert_eq!(
        render(&m, "http_post_503", C),
        r#"http_requests_by_method_total{code="503",method="post"}"#
    );
}

#[test]
fn toml_rules_equal_yaml_rules() {
    let yaml = "mappings:\n- match: svc.*.requests\n  name: \"${1}_requests_total\"\n  labels:\n    tier: web\n- match: 'db_(.*)'\n  match_type: regex\n  name: db_ops\n  labels:\n    op: \"$1\"\n";
    let toml = "version = 1\n[bridge]\nobserver_type = \"summary\"\n[[bridge.mapping]]\nmatch = \"svc.*.requests\"\nname = \"${1}_requests_total\"\nlabels = { tier = \"web\" }\n[[bridge.mapping]]\nmatch = \"db_(.*)\"\nmatch_type = \"regex\"\nname = \"db_ops\"\nlabels = { op = \"$1\" }\n";
    let from_yaml = mapper(yaml);
    let cfg = crate::config::Config::from_toml(toml, Path::new("pipeline.toml")).unwrap();
    let from_toml = Mapper::compile(&cfg.mapping).unwrap();
    for name in ["svc.cart.requests", "db_select", "other"] {
        assert_eq!(
            render(&from_toml, name, C),
            render(&from_yaml, name, C),
            "{name}"
        );
    }
    assert_eq!(
        cfg.mapping.rules[0].position.as_deref(),
        Some("pipeline.toml:4:1")
    );
    let bad = toml.replace("name = \"db_ops\"", "name = \"db-ops\"");
    let e = crate::config::Config::from_toml(&bad, Path::new("pipeline.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("pipeline.toml:8:1: metric name 'db-ops'"),
        "{e}"
    );
}
