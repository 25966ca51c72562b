//! Named queries end to end: `[[adapter.queries]]` and `PrometheusMetric` objects served as
//! external metrics by the secured adapter, read with `kubectl get --raw` as alice, against
//! a real Prometheus scraping an in-process exporter. The fake kube-apiserver serves the
//! authentication and authorization the adapter asks, the pods its watch cache resolves, and
//! the `PrometheusMetric` objects and HPAs it watches, with the status subresource the
//! adapter writes to. `prom-adapter status` and `explain` are run against it as an operator
//! would; then Prometheus is stopped: answers go stale (503 `Stale`, never the old value or
//! 0), and come back when it returns.

use anyhow::{Context, Result, ensure};
use pipeline_tests::exporter::gauge;
use pipeline_tests::kubeapi::{AccessReview, Decision, FakeKubeApi, PROMETHEUS_METRICS, Resource};
use pipeline_tests::pki::{ALICE, Pki};
use pipeline_tests::promadapter::{quantity_value, run_cli};
use pipeline_tests::{Adapter, Exporter, PATIENCE, Prometheus, eventually};
use serde_json::{Value, json};
use tempfile::TempDir;

const EXTERNAL: &str = "/apis/external.metrics.k8s.io/v1beta1";

/// How old a named query's value may get in this test: short, so staleness shows quickly.
const MAX_AGE: &str = "4s";

fn policy(review: &AccessReview) -> Decision {
    if review.user == ALICE {
        Decision::allow("alice operates the adapter in this test")
    } else {
        Decision::no_opinion("only alice is allowed")
    }
}

fn pipeline_toml() -> String {
    format!(
        r#"version = 1

[adapter]
rules_file = "rules.yaml"
watch_prometheus_metrics = true
query_concurrency = 2

[[adapter.queries]]
name = "queue_depth"
query = 'sum by (queue) (jobs_waiting)'
max_age = "{MAX_AGE}"
refresh = "1s"

[[adapter.queries]]
name = "mail_backlog"
query = 'sum(jobs_waiting{{queue="mail"}})'
namespace = "shop"
max_age = "{MAX_AGE}"
refresh = "1s"
"#
    )
}

const RULES: &str = r#"
rules:
- seriesQuery: 'worker_busy{namespace!="",pod!=""}'
  resources:
    overrides:
      namespace: {resource: "namespace"}
      pod: {resource: "pod"}
  metricsQuery: 'max(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
"#;

struct Stack {
    adapter: Adapter,
    prom: Prometheus,
    _exporter: Exporter,
    fake: FakeKubeApi,
    pki: Pki,
    dir: TempDir,
}

impl Stack {
    fn start() -> Stack {
        let dir = tempfile::Builder::new()
            .prefix("adapter-named-")
            .tempdir()
            .expect("a temp dir");
        let pki = Pki::generate().expect("generating the PKI");
        let fake = FakeKubeApi::start_with_objects();
        pki.delegate_from(&fake, policy);
        fake.set_pod("shop", "worker-0", &[("app", "worker")]);
        let kubeconfig = fake
            .write_kubeconfig(dir.path())
            .expect("writing the fake's kubeconfig");
        let exporter = Exporter::start(vec![
            gauge("jobs_waiting", &[("queue", "mail")], 12.0),
            gauge("jobs_waiting", &[("queue", "pdf")], 3.0),
            gauge(
                "worker_busy",
                &[("namespace", "shop"), ("pod", "worker-0")],
                0.75,
            ),
        ]);
        let prom = Prometheus::start(&[exporter.addr()]);
        prom.wait_targets_up(1);
        std::fs::write(dir.path().join("rules.yaml"), RULES).expect("writing rules.yaml");
        let config = dir.path().join("pipeline.toml");
        std::fs::write(&config, pipeline_toml()).expect("writing pipeline.toml");
        let mut args = pki.adapter_flags(&pki.serving, &kubeconfig, true);
        args.extend([
            "--lister-kubeconfig".to_owned(),
            kubeconfig.to_string_lossy().into_owned(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let adapter = Adapter::start_with(&config, &prom.url(), &args, &pki.as_alice());
        Stack {
            adapter,
            prom,
            _exporter: exporter,
            fake,
            pki,
            dir,
        }
    }

    /// `prom-adapter <subcommand> --url … <args>` as alice, trusting the serving CA.
    fn cli(&self, subcommand: &str, args: &[&str]) -> pipeline_tests::kubectl::Finished {
        let url = format!("https://{}", self.adapter.addr());
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        let (ca, cert, key) = (
            path(&self.pki.serving_ca),
            path(&self.pki.alice.cert),
            path(&self.pki.alice.key),
        );
        let mut all = vec![
            subcommand,
            "--url",
            &url,
            "--certificate-authority",
            &ca,
            "--client-certificate",
            &cert,
            "--client-key",
            &key,
        ];
        all.extend_from_slice(args);
        run_cli(&all, self.dir.path())
    }

    /// The external metric's items as (labels, value).
    fn external(&self, namespace: &str, metric: &str, selector: &str) -> Result<Vec<(Value, f64)>> {
        let query = if selector.is_empty() {
            String::new()
        } else {
            format!(
                "?labelSelector={}",
                pipeline_tests::http::url_encode(selector)
            )
        };
        let body = self.adapter.get_json(&format!(
            "{EXTERNAL}/namespaces/{namespace}/{metric}{query}"
        ))?;
        ensure!(body["kind"] == "ExternalMetricValueList", "{body}");
        body["items"]
            .as_array()
            .context("no items")?
            .iter()
            .map(|i| {
                let v = i["value"].as_str().context("no value")?;
                Ok((i["metricLabels"].clone(), quantity_value(v)?))
            })
            .collect()
    }

    fn prometheus_metric(&self, namespace: &str, name: &str) -> Result<Value> {
        self.fake
            .object(Resource::PrometheusMetrics, namespace, name)
            .with_context(|| format!("no PrometheusMetric {namespace}/{name}"))
    }
}

fn condition<'a>(object: &'a Value, kind: &str) -> Result<&'a Value> {
    object["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .with_context(|| format!("no {kind} condition in {}", object["status"]))
}

#[test]
fn adapter_named_queries_objects_status_explain_and_staleness() {
    let stack = Stack::start();

    // -- Config queries, as the HPA reads them, equal Prometheus' own answer.
    let direct = stack
        .prom
        .query_map("sum by (queue) (jobs_waiting)")
        .expect("querying Prometheus");
    assert_eq!(direct.len(), 2, "{direct:?}");
    eventually("queue_depth to be served from the cache", PATIENCE, || {
        let mut items = stack.external("default", "queue_depth", "")?;
        items.sort_by(|a, b| a.0["queue"].as_str().cmp(&b.0["queue"].as_str()));
        let got: Vec<(&str, f64)> = items
            .iter()
            .map(|(l, v)| (l["queue"].as_str().unwrap_or_default(), *v))
            .collect();
        ensure!(got == [("mail", 12.0), ("pdf", 3.0)], "{got:?}");
        Ok(())
    });
    let pdf = stack
        .external("default", "queue_depth", "queue=pdf")
        .expect("the selector");
    assert_eq!(pdf.len(), 1);
    assert_eq!(pdf[0].1, 3.0);
    eventually("mail_backlog in its namespace", PATIENCE, || {
        let items = stack.external("shop", "mail_backlog", "")?;
        ensure!(items.len() == 1 && items[0].1 == 12.0, "{items:?}");
        Ok(())
    });
    let elsewhere = stack
        .adapter
        .get_raw(&format!("{EXTERNAL}/namespaces/default/mail_backlog"))
        .expect("kubectl");
    assert!(!elsewhere.success());
    assert!(elsewhere.stderr.contains("NotFound"), "{elsewhere}");

    // -- PrometheusMetric objects: served in their namespace, statuses written back.
    stack.fake.put_object(
        Resource::PrometheusMetrics,
        "shop",
        "pdf-backlog",
        json!({"spec": {"query": "sum(jobs_waiting{queue=\"pdf\"})", "maxAge": MAX_AGE, "refresh": "1s"}}),
    );
    stack.fake.put_object(
        Resource::PrometheusMetrics,
        "shop",
        "broken",
        json!({"spec": {"query": "sum(jobs_waiting)", "maxAge": "1s", "refresh": "5s"}}),
    );
    stack.fake.put_object(
        Resource::HorizontalPodAutoscalers,
        "shop",
        "pdf-worker",
        json!({"spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "pdf-worker"},
            "minReplicas": 1, "maxReplicas": 5,
            "metrics": [{"type": "External", "external": {
                "metric": {"name": "pdf-backlog"},
                "target": {"type": "AverageValue", "averageValue": "1"}}}]
        }}),
    );
    eventually("the PrometheusMetric to be served", PATIENCE, || {
        let items = stack.external("shop", "pdf-backlog", "")?;
        ensure!(items.len() == 1 && items[0].1 == 3.0, "{items:?}");
        Ok(())
    });
    eventually("its status to be written back", PATIENCE, || {
        let o = stack.prometheus_metric("shop", "pdf-backlog")?;
        ensure!(o["status"]["currentValue"] == "3", "{}", o["status"]);
        ensure!(
            o["status"]["autoscalerReferences"] == "hpa:shop/pdf-worker",
            "{}",
            o["status"]
        );
        for (kind, want) in [
            ("Active", "True"),
            ("Valid", "True"),
            ("Updated", "True"),
            ("Error", "False"),
        ] {
            let c = condition(&o, kind)?;
            ensure!(c["status"] == want, "{kind}: {c}");
        }
        ensure!(o["status"]["lastUpdateTime"].is_string(), "{}", o["status"]);
        let broken = stack.prometheus_metric("shop", "broken")?;
        let error = condition(&broken, "Error")?;
        ensure!(
            error["status"] == "True" && error["reason"] == "InvalidSpec",
            "{error}"
        );
        ensure!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains("spec.maxAge")),
            "{error}"
        );
        Ok(())
    });
    let patches: Vec<_> = stack
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/apis/prom-adapter.io/"))
        .filter(|r| r.path.ends_with("/status"))
        .collect();
    assert!(
        !patches.is_empty() && patches.iter().all(|r| r.method == "PATCH"),
        "the status subresource is written with PATCH: {patches:?}"
    );
    assert!(
        stack
            .fake
            .requests()
            .iter()
            .any(|r| r.path == PROMETHEUS_METRICS && r.is_watch()),
        "the objects are watched"
    );
    let broken = stack
        .adapter
        .get_raw(&format!("{EXTERNAL}/namespaces/shop/broken"))
        .expect("kubectl");
    assert!(
        !broken.success(),
        "an invalid object is not served: {broken}"
    );

    // -- status: JSON through kubectl, and the tables of `prom-adapter status`.
    eventually("status to show every query valid", PATIENCE, || {
        let report = stack.adapter.get_json("/status")?;
        let states: Vec<(String, String)> = report["queries"]
            .as_array()
            .context("queries")?
            .iter()
            .map(|q| {
                (
                    q["name"].as_str().unwrap_or_default().to_owned(),
                    q["state"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        ensure!(states.len() == 3, "{states:?}");
        ensure!(states.iter().all(|(_, s)| s == "Valid"), "{states:?}");
        ensure!(
            report["backends"][0]["up"] == true,
            "{}",
            report["backends"]
        );
        // worker_busy for pods and for namespaces.
        ensure!(report["rules"][0]["metrics"] == 2, "{}", report["rules"]);
        Ok(())
    });
    // Behind the same authentication as the metrics: no credentials, no status.
    for path in ["/status", "/explain?metric=queue_depth"] {
        let anonymous = stack
            .adapter
            .request("GET", path, &[])
            .expect("a raw request");
        assert_eq!(
            anonymous.status,
            401,
            "{path}: {}",
            String::from_utf8_lossy(&anonymous.body)
        );
    }
    let table = stack.cli("status", &[]);
    let text = table.ok_stdout().expect("prom-adapter status").to_owned();
    for needle in [
        "Backends",
        "Rules",
        "Named queries",
        "queue_depth",
        "pdf-backlog",
        "Valid",
        "up",
        "Metrics served",
    ] {
        assert!(text.contains(needle), "status lacks {needle}:\n{text}");
    }
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with("mail_backlog"))
        .unwrap_or_else(|| panic!("no mail_backlog row:\n{text}"));
    assert!(row.contains("shop") && row.contains("12"), "{row}");
    println!("prom-adapter status:\n{text}");

    // -- explain: a named query and a custom metric.
    let explained = stack.cli("explain", &["--metric", "queue_depth"]);
    let text = explained
        .ok_stdout()
        .expect("prom-adapter explain")
        .to_owned();
    assert!(
        text.contains("promql:    sum by (queue) (jobs_waiting)"),
        "{text}"
    );
    assert!(text.contains("named query queue_depth"), "{text}");
    assert!(text.contains("=> 12"), "{text}");
    let ambiguous = stack.cli(
        "explain",
        &["--metric", "worker_busy", "--namespace", "shop"],
    );
    assert!(
        ambiguous
            .stderr
            .contains("worker_busy is served for namespaces, pods: name one with resource"),
        "{ambiguous}"
    );
    let custom = stack.cli(
        "explain",
        &[
            "--metric",
            "worker_busy",
            "--namespace",
            "shop",
            "--resource",
            "pods",
            "--selector",
            "app=worker",
        ],
    );
    let text = custom
        .ok_stdout()
        .expect("explain of a custom metric")
        .to_owned();
    assert!(text.contains("custom rule"), "{text}");
    assert!(
        text.contains("max(worker_busy{namespace=\"shop\""),
        "{text}"
    );
    assert!(text.contains("Pod/worker-0 => 750m"), "{text}");
    println!("prom-adapter explain:\n{text}");
    let unknown = stack.cli("explain", &["--metric", "nothing"]);
    assert_eq!(unknown.code(), Some(1), "{unknown}");
    assert!(unknown.stderr.contains("404 NotFound"), "{unknown}");

    // -- Prometheus stops: past maxAge the answers are Stale, never the old value nor 0.
    let mut stack = stack;
    stack.prom.stop();
    eventually("queue_depth to go stale", PATIENCE, || {
        let r = stack
            .adapter
            .get_raw(&format!("{EXTERNAL}/namespaces/default/queue_depth"))?;
        ensure!(!r.success(), "still served: {}", r.stdout);
        ensure!(r.stderr.contains("(Stale)"), "{r}");
        Ok(())
    });
    eventually("the object's status to say stale", PATIENCE, || {
        let o = stack.prometheus_metric("shop", "pdf-backlog")?;
        let valid = condition(&o, "Valid")?;
        ensure!(
            valid["status"] == "False" && valid["reason"] == "Stale",
            "{valid}"
        );
        ensure!(
            condition(&o, "Error")?["status"] == "True",
            "{}",
            o["status"]
        );
        Ok(())
    });
    let text = stack
        .cli("status", &[])
        .ok_stdout()
        .expect("status")
        .to_owned();
    assert!(text.contains("Stale") && text.contains("DOWN"), "{text}");

    stack.prom.restart();
    eventually("queue_depth to be served again", PATIENCE * 2, || {
        let items = stack.external("default", "queue_depth", "")?;
        ensure!(items.len() == 2, "{items:?}");
        Ok(())
    });
}
