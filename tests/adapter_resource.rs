//! `prom-adapter` in place of metrics-server, end to end: prometheus-adapter's standard
//! `resourceRules` (`tests/data/adapter/resource-rules.yaml`, its deploy manifests' own) over
//! cAdvisor/kubelet-style series in a real Prometheus, the pods and nodes of a fake
//! kube-apiserver ([`FakeKubeApi`] with nodes served) in the adapter's watch cache, the
//! adapter secured (TokenReview and SubjectAccessReview against the same fake), and the real
//! `kubectl top pod` pointed at the adapter as its API server.
//!
//! The series come from an in-process exporter: `container_cpu_usage_seconds_total` counters
//! growing at a fixed rate per container (stamped exactly, so `irate` is that rate),
//! `container_memory_working_set_bytes` gauges, a pod-level cAdvisor series without a
//! `container` label (which must not be counted), and `node_cpu_usage_seconds_total` /
//! `node_memory_working_set_bytes` per node. What `kubectl top` prints is computed here from
//! those rates and bytes as kubectl computes it (the containers' usage summed, CPU as
//! `ceil(cores × 1000)m`, memory as `floor(bytes / 2^20)Mi`); the rates sit half a millicore
//! away from a whole one, so float noise in `irate` never moves a printed value.
//!
//! `kubectl top node` needs `/api/v1/nodes` from a real kube-apiserver, so nodes are read with
//! `kubectl get --raw`. One exporter, Prometheus, fake and adapter serve every test (kept in a
//! static, reaped by a [`Leash`]); the tests only read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, ensure};
use pipeline_tests::exporter::{ExportedSeries, counter, gauge};
use pipeline_tests::http::HttpResponse;
use pipeline_tests::kubeapi::{
    AccessReview, Decision, FakeKubeApi, Resource, ResourceAttributes, UserInfo,
};
use pipeline_tests::kubectl::{CurlOptions, KubeconfigUser, curl};
use pipeline_tests::metrics_api::{check_status, log_dir, shared_fixture};
use pipeline_tests::promadapter::{Leash, Security, fixture, quantity_value};
use pipeline_tests::{Adapter, Exporter, PATIENCE, Prometheus, eventually, workspace_root};
use serde_json::Value;
use tempfile::TempDir;

const BASE: &str = "/apis/metrics.k8s.io/v1beta1";

/// The bearer token of the user kubectl runs as (allowed everything by the policy).
const TOKEN: &str = "top-reader-token";
const USER: &str = "top-reader";
/// A user the policy denies.
const MALLORY_TOKEN: &str = "mallory-token";
const MALLORY_REASON: &str = "mallory may not read resource metrics";

/// One container's usage as the series say it: (namespace, pod, container, cores, bytes,
/// the memory Quantity metrics-server prints for those bytes).
const CONTAINERS: &[(&str, &str, &str, f64, u64, &str)] = &[
    ("shop", "web-0", "web", 0.2495, 104_857_600, "100Mi"),
    ("shop", "web-0", "sidecar", 0.0102, 52_432_896, "51204Ki"),
    ("shop", "web-1", "web", 0.1205, 209_715_200, "200Mi"),
    ("shop", "db-0", "db", 0.0505, 314_576_896, "307204Ki"),
    // Series, but no such pod in the cluster: never answered.
    ("shop", "gone-0", "app", 0.0705, 10_485_760, "10Mi"),
    // Same pod name in another namespace.
    ("ops", "web-0", "web", 0.4005, 73_400_320, "70Mi"),
    ("ops", "agent-0", "agent", 0.0305, 33_558_528, "32772Ki"),
];

/// The cluster's pods: (namespace, name, `app` label). idle-0 has no series.
const PODS: &[(&str, &str, &str)] = &[
    ("shop", "web-0", "web"),
    ("shop", "web-1", "web"),
    ("shop", "db-0", "db"),
    ("shop", "idle-0", "idle"),
    ("ops", "web-0", "web"),
    ("ops", "agent-0", "agent"),
];

/// The zone label of the nodes.
const ZONE: &str = "topology.kubernetes.io/zone";

/// A node's usage as its series say it: (cores, bytes, the memory Quantity printed).
type NodeUsage = (f64, u64, &'static str);

/// The cluster's nodes: (name, zone, usage). node-c has no series.
const NODES: &[(&str, &str, Option<NodeUsage>)] = &[
    ("node-a", "a", Some((1.2505, 2_147_483_648, "2Gi"))),
    ("node-b", "b", Some((0.5005, 1_610_612_736, "1536Mi"))),
    ("node-c", "c", None),
];

fn exported_series() -> Vec<ExportedSeries> {
    let mut series = Vec::new();
    for (ns, pod, container, cores, bytes, _) in CONTAINERS {
        let labels = [("namespace", *ns), ("pod", *pod), ("container", *container)];
        series.push(counter(
            "container_cpu_usage_seconds_total",
            &labels,
            *cores,
        ));
        series.push(gauge(
            "container_memory_working_set_bytes",
            &labels,
            *bytes as f64,
        ));
    }
    // cAdvisor's pod-level cgroup: no container label; `container!=""` leaves it out.
    let pod_level = [("namespace", "shop"), ("pod", "web-0")];
    series.push(counter(
        "container_cpu_usage_seconds_total",
        &pod_level,
        5.0,
    ));
    series.push(gauge("container_memory_working_set_bytes", &pod_level, 9e9));
    for (node, _, usage) in NODES {
        if let Some((cores, bytes, _)) = usage {
            series.push(counter(
                "node_cpu_usage_seconds_total",
                &[("node", node)],
                *cores,
            ));
            series.push(gauge(
                "node_memory_working_set_bytes",
                &[("node", node)],
                *bytes as f64,
            ));
        }
    }
    series
}

/// The policy of the fake: mallory denied, everyone else allowed.
fn policy(review: &AccessReview) -> Decision {
    if review.user == "mallory" {
        Decision::deny(MALLORY_REASON)
    } else {
        Decision::allow("allowed by the resource-metrics e2e policy")
    }
}

// ------------------------------------------------------------------------------------------
// The shared cluster

struct Cluster {
    adapter: Adapter,
    fake: FakeKubeApi,
    _prom: Prometheus,
    _exporter: Exporter,
    _dir: TempDir,
    _leash: Leash,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

fn cluster() -> &'static Cluster {
    shared_fixture(&CLUSTER, "the resource-metrics cluster", || {
        let exporter = Exporter::start(exported_series());
        let prom = Prometheus::start_job("adapter-resource", &[exporter.addr()]);
        prom.wait_targets_up(1);
        eventually("two samples of every counter", PATIENCE, || {
            for (name, n) in [
                ("container_cpu_usage_seconds_total", CONTAINERS.len() + 1),
                ("node_cpu_usage_seconds_total", 2),
            ] {
                let got = prom
                    .query(&format!("count_over_time({name}[1m]) >= 2"))?
                    .len();
                ensure!(got == n, "{got} of {n} {name} series have two samples");
            }
            Ok(())
        });

        let fake = FakeKubeApi::start_with_objects();
        fake.serve_nodes(true);
        fake.set_policy(policy);
        fake.set_token(TOKEN, UserInfo::new(USER, &["top-readers"]));
        fake.set_token(MALLORY_TOKEN, UserInfo::new("mallory", &[]));
        for (ns, name, app) in PODS {
            fake.set_pod(ns, name, &[("app", app)]);
        }
        for (node, zone, _) in NODES {
            fake.set_node(node, &[(ZONE, zone)]);
        }
        let dir = tempfile::Builder::new()
            .prefix("adapter-resource-")
            .tempdir()
            .expect("a temp dir for the kubeconfig");
        let kubeconfig = fake
            .write_kubeconfig(dir.path())
            .expect("writing the fake's kubeconfig");
        let kubeconfig = kubeconfig.to_string_lossy().into_owned();
        let security = Security::Secured {
            ca: None,
            user: KubeconfigUser::Token(TOKEN.to_owned()),
        };
        let adapter = Adapter::start_with(
            &fixture("resource-rules.yaml"),
            &prom.url(),
            &[
                "--authentication-kubeconfig",
                &kubeconfig,
                "--authorization-kubeconfig",
                &kubeconfig,
                "--lister-kubeconfig",
                &kubeconfig,
                "--authentication-skip-lookup",
            ],
            &security,
        );
        eventually("the adapter's cache to sync (/readyz)", PATIENCE, || {
            let r = adapter.request("GET", "/readyz", &[])?;
            ensure!(r.status == 200, "/readyz answered {}", r.status);
            Ok(())
        });
        let dirs: Vec<PathBuf> = vec![
            prom.dir().to_path_buf(),
            log_dir(prom.process().stderr_path()),
            adapter.dir().to_path_buf(),
            log_dir(adapter.process().stderr_path()),
            adapter.kubectl().dir().to_path_buf(),
            dir.path().to_path_buf(),
        ];
        let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
        let leash = Leash::new(&[prom.process().pid(), adapter.process().pid()], &dirs)
            .expect("leashing Prometheus and the adapter");
        Cluster {
            adapter,
            fake,
            _prom: prom,
            _exporter: exporter,
            _dir: dir,
            _leash: leash,
        }
    })
}

impl Cluster {
    /// `kubectl <args>` as the allowed user; its standard output, or an error with everything
    /// it printed.
    fn kubectl(&self, args: &[&str]) -> Result<String> {
        let run = self.adapter.kubectl().run(args)?;
        Ok(run.ok_stdout()?.to_owned())
    }

    /// `kubectl get --raw <path>` as JSON.
    fn json(&self, path: &str) -> Value {
        self.adapter
            .get_json(path)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.adapter.log_tail(40)))
    }

    /// `GET path` with curl as the bearer of `token`.
    fn get_as(&self, token: &str, path: &str) -> HttpResponse {
        let who = CurlOptions {
            cacert: None,
            client_cert: None,
            bearer: Some(token),
            headers: Vec::new(),
        };
        curl(&format!("https://{}{path}", self.adapter.addr()), &who)
            .unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
    }

    /// Whether the fake reviewed `USER` for `verb` on `resource` of metrics.k8s.io.
    fn reviewed(&self, verb: &str, resource: &str, namespace: &str, name: &str) -> bool {
        let want = ResourceAttributes {
            namespace: namespace.to_owned(),
            verb: verb.to_owned(),
            group: "metrics.k8s.io".to_owned(),
            version: "v1beta1".to_owned(),
            resource: resource.to_owned(),
            subresource: String::new(),
            name: name.to_owned(),
        };
        self.fake
            .access_reviews_of(USER)
            .iter()
            .any(|r| r.resource_attributes.as_ref() == Some(&want))
    }
}

// ------------------------------------------------------------------------------------------
// What kubectl top must print

/// A pod's row as `kubectl top pod` prints it: (CPU(cores), MEMORY(bytes)).
type Row = (String, String);

/// kubectl's columns for usage: `ceil(cores × 1000)m` and `floor(bytes / 2^20)Mi`.
fn printed(cores: f64, bytes: u64) -> Row {
    (
        format!("{}m", (cores * 1000.0).ceil()),
        format!("{}Mi", bytes / (1 << 20)),
    )
}

/// The rows of the pods in the cluster with usage, keyed by (namespace, pod), in `namespace`
/// (all when `None`) with `app` (any when `None`).
fn expected_pods(namespace: Option<&str>, app: Option<&str>) -> BTreeMap<(String, String), Row> {
    let mut rows = BTreeMap::new();
    for (ns, pod, label) in PODS {
        if namespace.is_some_and(|n| n != *ns) || app.is_some_and(|a| a != *label) {
            continue;
        }
        let containers: Vec<_> = CONTAINERS
            .iter()
            .filter(|c| c.0 == *ns && c.1 == *pod)
            .collect();
        if containers.is_empty() {
            continue;
        }
        let cores: f64 = containers.iter().map(|c| c.3).sum();
        let bytes: u64 = containers.iter().map(|c| c.4).sum();
        rows.insert(((*ns).to_owned(), (*pod).to_owned()), printed(cores, bytes));
    }
    rows
}

/// Parses `kubectl top pod` output: with `--all-namespaces` the first column is the
/// namespace, else it is `namespace`; with `--containers` the key's second part is
/// `pod/container`.
fn parse_top(
    out: &str,
    namespace: Option<&str>,
    containers: bool,
) -> Result<BTreeMap<(String, String), Row>> {
    let mut lines = out.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .context("no header")?
        .split_whitespace()
        .collect();
    let mut want = Vec::new();
    if namespace.is_none() {
        want.push("NAMESPACE");
    }
    if containers {
        want.push("POD");
    }
    want.extend(["NAME", "CPU(cores)", "MEMORY(bytes)"]);
    ensure!(
        header == want,
        "header {header:?}, expected {want:?} in:\n{out}"
    );
    let mut rows = BTreeMap::new();
    for line in lines {
        let cells: Vec<&str> = line.split_whitespace().collect();
        ensure!(cells.len() == want.len(), "odd row {line:?} in:\n{out}");
        let (ns, rest) = match namespace {
            Some(ns) => (ns, cells.as_slice()),
            None => (cells[0], &cells[1..]),
        };
        let (name, cpu, memory) = if containers {
            (format!("{}/{}", rest[0], rest[1]), rest[2], rest[3])
        } else {
            (rest[0].to_owned(), rest[1], rest[2])
        };
        ensure!(
            rows.insert((ns.to_owned(), name), (cpu.to_owned(), memory.to_owned()))
                .is_none(),
            "a row twice in:\n{out}"
        );
    }
    Ok(rows)
}

/// Runs `kubectl top pod <args>` until it prints `want` (the adapter answers at once; the
/// retry only absorbs a scrape that lands between two queries).
fn expect_top(
    c: &Cluster,
    args: &[&str],
    namespace: Option<&str>,
    containers: bool,
    want: &BTreeMap<(String, String), Row>,
) {
    let mut full = vec!["top", "pod"];
    full.extend_from_slice(args);
    eventually(&format!("kubectl {}", full.join(" ")), PATIENCE, || {
        let out = c.kubectl(&full)?;
        let got = parse_top(&out, namespace, containers)?;
        ensure!(&got == want, "printed {got:?}, expected {want:?}:\n{out}");
        Ok(())
    });
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {list}"))
        .iter()
        .map(|i| {
            i["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// Checks a CPU Quantity against the rate the series grow at (within float noise).
#[track_caller]
fn assert_cores(quantity: &Value, cores: f64, what: &str) {
    let q = quantity
        .as_str()
        .unwrap_or_else(|| panic!("{what}: cpu {quantity}"));
    let got = quantity_value(q).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    assert!(
        (got - cores).abs() < 1e-8,
        "{what}: cpu {q} is not {cores} cores"
    );
}

/// Checks an RFC 3339 second-precision UTC timestamp.
#[track_caller]
fn assert_timestamp(v: &Value, what: &str) {
    let t = v.as_str().unwrap_or_default();
    assert!(
        pipeline_tests::promadapter::parse_rfc3339_seconds(t).is_ok(),
        "{what}: {v} is not an RFC 3339 timestamp"
    );
}

// ------------------------------------------------------------------------------------------
// Tests

/// `kubectl top pod -n shop` prints every pod of the namespace that has usage, with the
/// containers' CPU and memory summed; the adapter was reviewed for `list pods` of
/// metrics.k8s.io in that namespace.
#[test]
fn adapter_resource_kubectl_top_pod_in_a_namespace() {
    let c = cluster();
    let want = expected_pods(Some("shop"), None);
    assert_eq!(
        want.keys().map(|(_, p)| p.as_str()).collect::<Vec<_>>(),
        ["db-0", "web-0", "web-1"],
        "idle-0 (no series) and gone-0 (no pod) are not listed"
    );
    expect_top(c, &["-n", "shop"], Some("shop"), false, &want);
    assert!(
        c.reviewed("list", "pods", "shop", ""),
        "no SubjectAccessReview for list metrics.k8s.io/pods in shop: {:#?}",
        c.fake.access_reviews_of(USER)
    );
}

/// `--all-namespaces`, `-l app=web` (resolved from the watch cache), both, and
/// `--containers` (each container's own usage).
#[test]
fn adapter_resource_kubectl_top_all_namespaces_selectors_and_containers() {
    let c = cluster();
    expect_top(
        c,
        &["--all-namespaces"],
        None,
        false,
        &expected_pods(None, None),
    );
    expect_top(
        c,
        &["-n", "shop", "-l", "app=web"],
        Some("shop"),
        false,
        &expected_pods(Some("shop"), Some("web")),
    );
    let web = expected_pods(None, Some("web"));
    assert_eq!(web.len(), 3, "web-0 of shop and of ops, web-1: {web:?}");
    expect_top(c, &["-A", "-l", "app=web"], None, false, &web);
    let containers: BTreeMap<(String, String), Row> = CONTAINERS
        .iter()
        .filter(|x| x.0 == "shop" && x.1 == "web-0")
        .map(|x| {
            (
                ("shop".to_owned(), format!("{}/{}", x.1, x.2)),
                printed(x.3, x.4),
            )
        })
        .collect();
    expect_top(
        c,
        &["-n", "shop", "--containers", "web-0"],
        Some("shop"),
        true,
        &containers,
    );
    assert!(c.reviewed("list", "pods", "", ""), "all namespaces");
    assert!(c.reviewed("get", "pods", "shop", "web-0"), "one pod");
}

/// The pod documents as metrics-server writes them: kinds, labels from the cluster, the
/// rules' window, containers sorted with exact memory and the CPU rate.
#[test]
fn adapter_resource_pod_metrics_documents() {
    let c = cluster();
    let list = c.json(&format!("{BASE}/namespaces/shop/pods"));
    assert_eq!(
        (&list["kind"], &list["apiVersion"]),
        (
            &Value::from("PodMetricsList"),
            &Value::from("metrics.k8s.io/v1beta1")
        )
    );
    assert_eq!(names(&list), ["db-0", "web-0", "web-1"], "{list}");
    for item in list["items"].as_array().into_iter().flatten() {
        let pod = item["metadata"]["name"].as_str().unwrap_or_default();
        assert_eq!(item["metadata"]["namespace"], "shop", "{item}");
        let app = PODS
            .iter()
            .find(|p| p.0 == "shop" && p.1 == pod)
            .map(|p| p.2);
        assert_eq!(item["metadata"]["labels"]["app"].as_str(), app, "{item}");
        assert_eq!(item["window"], "5m0s", "the rules' window: {item}");
        assert!(
            item.get("kind").is_none(),
            "list items have no kind: {item}"
        );
        assert_timestamp(&item["timestamp"], pod);
        assert_timestamp(&item["metadata"]["creationTimestamp"], pod);
        let want: Vec<_> = {
            let mut w: Vec<_> = CONTAINERS
                .iter()
                .filter(|x| x.0 == "shop" && x.1 == pod)
                .collect();
            w.sort_by_key(|x| x.2);
            w
        };
        let got = item["containers"].as_array().cloned().unwrap_or_default();
        assert_eq!(got.len(), want.len(), "{item}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g["name"], w.2, "{item}");
            assert_eq!(g["usage"]["memory"], w.5, "{item}");
            assert_cores(&g["usage"]["cpu"], w.3, &format!("{pod}/{}", w.2));
        }
    }
    let one = c.json(&format!("{BASE}/namespaces/ops/pods/web-0"));
    assert_eq!(one["kind"], "PodMetrics", "{one}");
    assert_eq!(one["apiVersion"], "metrics.k8s.io/v1beta1", "{one}");
    assert_eq!(one["containers"][0]["usage"]["memory"], "70Mi", "{one}");
    assert_cores(&one["containers"][0]["usage"]["cpu"], 0.4005, "ops/web-0");
}

/// Nodes through `kubectl get --raw` (kubectl top node would need a kube-apiserver's
/// `/api/v1/nodes`): the cache's nodes with usage, their labels, one by name, a selector.
#[test]
fn adapter_resource_nodes() {
    let c = cluster();
    let list = c.json(&format!("{BASE}/nodes"));
    assert_eq!(list["kind"], "NodeMetricsList", "{list}");
    assert_eq!(
        names(&list),
        ["node-a", "node-b"],
        "node-c has no series: {list}"
    );
    for item in list["items"].as_array().into_iter().flatten() {
        let name = item["metadata"]["name"].as_str().unwrap_or_default();
        let (_, zone, usage) = NODES
            .iter()
            .find(|n| n.0 == name)
            .unwrap_or_else(|| panic!("unknown node {name}"));
        let (cores, _, memory) = usage.unwrap_or_else(|| panic!("{name} has no usage"));
        assert_eq!(item["metadata"]["labels"][ZONE], *zone, "{item}");
        assert!(item["metadata"].get("namespace").is_none(), "{item}");
        assert_eq!(item["usage"]["memory"], memory, "{item}");
        assert_cores(&item["usage"]["cpu"], cores, name);
        assert_eq!(item["window"], "5m0s", "{item}");
        assert_timestamp(&item["timestamp"], name);
    }
    let one = c.json(&format!("{BASE}/nodes/node-b"));
    assert_eq!(
        (one["kind"].as_str(), one["usage"]["memory"].as_str()),
        (Some("NodeMetrics"), Some("1536Mi")),
        "{one}"
    );
    let zone_a = c.json(&format!(
        "{BASE}/nodes?labelSelector=topology.kubernetes.io%2Fzone%3Da"
    ));
    assert_eq!(names(&zone_a), ["node-a"], "{zone_a}");
    assert!(
        !c.fake.lists_of(Resource::Nodes).is_empty(),
        "the adapter's cache never listed nodes"
    );
    assert!(c.reviewed("list", "nodes", "", ""));
    assert!(c.reviewed("get", "nodes", "", "node-b"));
}

/// Discovery: kubectl finds the group, and its version lists pods and nodes.
#[test]
fn adapter_resource_discovery() {
    let c = cluster();
    let versions = c
        .kubectl(&["api-versions"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        versions
            .lines()
            .any(|l| l.trim() == "metrics.k8s.io/v1beta1"),
        "kubectl api-versions: {versions}"
    );
    let list = c.json(BASE);
    let resources: BTreeSet<(String, bool)> = list["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default().to_owned(),
                r["namespaced"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        resources,
        BTreeSet::from([("nodes".to_owned(), false), ("pods".to_owned(), true)]),
        "{list}"
    );
}

/// A pod without samples is a 404 (as metrics-server's), a pod the cluster doesn't have
/// too, a malformed selector a 400, a denied user a 403; kubectl top shows the 404.
#[test]
fn adapter_resource_failures_are_statuses() {
    let c = cluster();
    let status = |path: &str, code: u16, reason: &str| -> Value {
        check_status(&c.get_as(TOKEN, path), code, reason, path).unwrap_or_else(|e| panic!("{e:#}"))
    };
    let s = status(
        &format!("{BASE}/namespaces/shop/pods/idle-0"),
        404,
        "NotFound",
    );
    assert_eq!(
        s["message"], r#"podmetrics.metrics.k8s.io "shop/idle-0" not found"#,
        "{s}"
    );
    let s = status(
        &format!("{BASE}/namespaces/shop/pods/gone-0"),
        404,
        "NotFound",
    );
    assert_eq!(s["message"], r#"pods "gone-0" not found"#, "{s}");
    status(&format!("{BASE}/nodes/node-c"), 404, "NotFound");
    let s = status(
        &format!("{BASE}/namespaces/shop/pods?labelSelector=app+in+%28web"),
        400,
        "BadRequest",
    );
    assert!(
        s["message"]
            .as_str()
            .is_some_and(|m| m.contains("labelSelector")),
        "{s}"
    );
    status(
        &format!("{BASE}/pods?fieldSelector=spec.nodeName%3Dnode-a"),
        400,
        "BadRequest",
    );
    let denied = c.get_as(MALLORY_TOKEN, &format!("{BASE}/namespaces/shop/pods"));
    let s = check_status(&denied, 403, "Forbidden", "mallory").unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        s["message"]
            .as_str()
            .is_some_and(|m| m.contains(MALLORY_REASON)),
        "{s}"
    );
    let run = c
        .adapter
        .kubectl()
        .run(&["top", "pod", "-n", "shop", "idle-0"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        !run.success()
            && run
                .stderr
                .contains(r#"podmetrics.metrics.k8s.io "shop/idle-0" not found"#),
        "kubectl top pod idle-0: {run}"
    );
}

/// The overlay `deploy/overlays/resource-metrics` replaces two generated files of the base
/// (the adapter's rules, Prometheus' config) with copies that add to them: each must still
/// hold the base file unchanged, so the base can't drift from what the overlay serves.
#[test]
fn adapter_resource_overlay_files_extend_the_base_ones() {
    let root = workspace_root();
    let read = |p: &str| {
        std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("reading {p}: {e}"))
    };
    for (base, overlay, added) in [
        (
            "deploy/prom-adapter/rules.yaml",
            "deploy/overlays/resource-metrics/rules.yaml",
            "\nresourceRules:\n",
        ),
        (
            "deploy/prometheus/prometheus.yml",
            "deploy/overlays/resource-metrics/prometheus.yml",
            "job_name: kubelet-resource",
        ),
    ] {
        let (base_text, overlay_text) = (read(base), read(overlay));
        assert!(
            overlay_text.contains(&base_text),
            "{overlay} must contain {base} verbatim (copy it again after changing it)"
        );
        assert!(overlay_text.contains(added), "{overlay} lacks {added:?}");
    }
}
