//! `deploy/` (the Kubernetes manifests), `compose/`, and the `Dockerfile`, checked offline:
//! there is no cluster and no Docker daemon here, so nothing is applied or built. What is
//! checked instead:
//!
//! - every kustomization under `deploy/` builds with `kubectl kustomize`, every document it
//!   prints parses, and each is validated against the Kubernetes OpenAPI schemas of fixed
//!   versions by `kubernetes-validate --strict` (PyPI, in `.venv`). Kinds it has no schema
//!   for (cert-manager's) are listed in [`UNKNOWN_KINDS`], and their fields are asserted
//!   here instead: nothing is skipped silently;
//! - the objects refer to each other correctly (namespaces, ServiceAccounts, ConfigMaps,
//!   Services and their target ports, probes' ports, RBAC subjects and roles, APIService
//!   backends, selectors), and every container is locked down (no privilege escalation,
//!   read-only root, all capabilities dropped, non-root but for one init container);
//! - the configs inside the ConfigMaps pass the binaries' own checks (`statsd-bridge
//!   check-config`, `prom-adapter check-config`), the adapter starts with the Deployment's
//!   and compose's flags, and the Prometheus scrape job keeps the bridge's origin labels
//!   (its relabeling is run on example targets, and `promtool check config` reads it);
//! - the example workload's HPA metrics are served by the shipped rules: the example app's
//!   own lines, as the bridge would label them, through a real Prometheus and the adapter;
//! - `compose/compose.yaml` parses, everything it mounts or builds exists, and its configs
//!   pass the same checks.
//!
//! Debian's `promtool` is built without Kubernetes service discovery, so the cluster scrape
//! config is checked by `promtool` with its `kubernetes_sd_configs` swapped for a static
//! target, and the SD block's fields are asserted here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, ensure};
use pipeline_tests::exporter::{ExportedSeries, counter, gauge};
use pipeline_tests::http::url_encode;
use pipeline_tests::kubeapi::{FakeKubeApi, PodFixture};
use pipeline_tests::kubectl::{CurlOptions, KUBECTL_HINT, curl, run_command};
use pipeline_tests::metrics_api::{CUSTOM_V2, EXTERNAL_V1, check_external_list, check_metric_list};
use pipeline_tests::pki::Pki;
use pipeline_tests::process::ChildGuard;
use pipeline_tests::prom::PROMETHEUS_HINT;
use pipeline_tests::promadapter::{self, quantity_value};
use pipeline_tests::util::{bin, scaled};
use pipeline_tests::{
    Adapter, Bridge, Exporter, PATIENCE, Prometheus, eventually, python, require_program, statsd,
    workspace_root,
};
use serde_json::{Value, json};
use tempfile::TempDir;

/// The Kubernetes versions the manifests are validated against: the oldest we claim to
/// support, and the newest the pinned `kubernetes-validate` knows.
const K8S_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];

/// Kinds `kubernetes-validate` has no schema for (`apiVersion`, `kind`). Their documents
/// are checked field by field in [`cert_manager_overlay_issues_the_adapters_serving_certificate`];
/// any other kind without a schema fails.
const UNKNOWN_KINDS: &[(&str, &str)] = &[
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
    // Ours (deploy/prom-adapter/crd-prometheusmetric.yaml): checked against that CRD's
    // schema in `manifests_prometheus_metric_crd_rbac_and_example`.
    ("prom-adapter.io/v1alpha1", "PrometheusMetric"),
];

/// The pipeline's namespace.
const NAMESPACE: &str = "metrics-pipeline";

/// The example workload's namespace.
const EXAMPLE_NAMESPACE: &str = "pipeline-example";

/// How to get the Python packages the checks use (`kubernetes-validate`, PyYAML).
const PY_HINT: &str = "bash scripts/test.sh, which installs tests/py/requirements.txt into .venv";

/// Cluster roles every cluster has, which bindings here may name.
const BUILTIN_CLUSTER_ROLES: &[&str] = &["system:auth-delegator"];

/// Roles kube-apiserver keeps in kube-system, which a RoleBinding there may name.
const BUILTIN_KUBE_SYSTEM_ROLES: &[&str] = &["extension-apiserver-authentication-reader"];

/// ServiceAccounts of the control plane that bindings here may name (`namespace/name`).
const BUILTIN_SERVICE_ACCOUNTS: &[&str] = &["kube-system/horizontal-pod-autoscaler"];

/// Kinds that live in a namespace; every other kind built here is cluster-scoped
/// ([`CLUSTER_KINDS`]). A kind in neither list fails, so a new one is classified on purpose.
const NAMESPACED_KINDS: &[&str] = &[
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ConfigMap",
    "Secret",
    "Service",
    "Deployment",
    "DaemonSet",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "HorizontalPodAutoscaler",
    "Certificate",
    "Issuer",
    "PrometheusMetric",
];

/// Cluster-scoped kinds.
const CLUSTER_KINDS: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "APIService",
    "CustomResourceDefinition",
];

/// Our own images (built from the repository's Dockerfile; a kustomize `images:` entry
/// renames them). Any other image must carry a pinned tag.
const OWN_IMAGES: &[&str] = &["statsd-bridge", "prom-adapter"];

/// The one container allowed to run as root: it hands the bridge's hostPath socket
/// directory to the bridge's user, with `CAP_CHOWN` alone.
const ROOT_INIT_CONTAINER: &str = "socket-dir";

// ------------------------------------------------------------------------------------------
// Python: YAML and TOML readers, and Prometheus' relabeling

/// A small Python program for what the tests package has no Rust crate for. `yaml`: every
/// document of standard input (PyYAML, installed with kubernetes-validate) as a JSON list;
/// `toml`: standard input (tomllib) as JSON; `relabel`: applies Prometheus
/// `relabel_configs` to target label sets (`{"configs": [...], "targets": [{...}]}`), giving
/// each target's labels or `null` when it is dropped.
const PY_HELPER: &str = r#"
import json, re, sys

def expand(template, match):
    def group(m):
        key = m.group(1) or m.group(2)
        try:
            value = match.group(int(key)) if key.isdigit() else match.group(key)
        except (IndexError, error_type):
            value = ""
        return value or ""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", group, template)

error_type = re.error
op, data = sys.argv[1], sys.stdin.read()
if op == "yaml":
    import yaml
    docs = [d for d in yaml.safe_load_all(data) if d is not None]
    json.dump(docs, sys.stdout, default=str)
elif op == "toml":
    import tomllib
    json.dump(tomllib.loads(data), sys.stdout, default=str)
elif op == "relabel":
    request = json.loads(data)
    results = []
    for target in request["targets"]:
        labels = dict(target)
        kept = True
        for rc in request["configs"]:
            action = rc.get("action", "replace").lower()
            regex = re.compile("^(?:" + str(rc.get("regex", "(.*)")) + ")$")
            value = rc.get("separator", ";").join(labels.get(l, "") for l in rc.get("source_labels", []))
            replacement = str(rc.get("replacement", "$1"))
            if action == "keep":
                if not regex.match(value):
                    kept = False
                    break
            elif action == "drop":
                if regex.match(value):
                    kept = False
                    break
            elif action == "replace":
                m = regex.match(value)
                if m:
                    name, new = expand(rc["target_label"], m), expand(replacement, m)
                    if new:
                        labels[name] = new
                    else:
                        labels.pop(name, None)
            elif action == "labelmap":
                for key in list(labels):
                    m = regex.match(key)
                    if m:
                        labels[expand(replacement, m)] = labels[key]
            elif action == "labeldrop":
                labels = {k: v for k, v in labels.items() if not regex.match(k)}
            elif action == "labelkeep":
                labels = {k: v for k, v in labels.items() if regex.match(k)}
            else:
                sys.exit("relabel action not simulated by tests/manifests.rs: " + action)
        results.append(labels if kept else None)
    json.dump(results, sys.stdout)
else:
    sys.exit("unknown op " + op)
"#;

/// Runs [`PY_HELPER`] `op` on `input` and parses its JSON answer.
fn py(op: &str, input: &str, what: &str) -> Value {
    let mut cmd = Command::new(python());
    cmd.arg("-c").arg(PY_HELPER).arg(op);
    let run = run_command("python", cmd, Some(input.as_bytes().to_vec()), limit())
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    if run.stderr.contains("No module named 'yaml'") {
        panic!("{what}: PyYAML is missing from the venv: run {PY_HINT}\n{run}");
    }
    let out = run.ok_stdout().unwrap_or_else(|e| panic!("{what}: {e:#}"));
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{what}: the helper printed no JSON: {e}"))
}

/// Every YAML document of `text`, as JSON values.
fn yaml_docs(text: &str, what: &str) -> Vec<Value> {
    match py("yaml", text, what) {
        Value::Array(docs) => docs,
        other => panic!("{what}: expected a list of documents, got {other}"),
    }
}

/// The one YAML document of `text`.
fn yaml_doc(text: &str, what: &str) -> Value {
    let mut docs = yaml_docs(text, what);
    assert_eq!(
        docs.len(),
        1,
        "{what}: expected one YAML document, got {}",
        docs.len()
    );
    docs.remove(0)
}

/// A TOML text as JSON.
fn toml_doc(text: &str, what: &str) -> Value {
    py("toml", text, what)
}

/// How long one external program may run (scaled by `PIPELINE_TEST_PATIENCE`).
fn limit() -> Duration {
    scaled(Duration::from_secs(60))
}

// ------------------------------------------------------------------------------------------
// Files and builds

/// A path in the repository.
fn repo(path: &str) -> PathBuf {
    workspace_root().join(path)
}

/// A repository file's text.
fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Files under `dir` (relative to the repository, sorted) whose name satisfies `pick`.
fn files_under(dir: &str, pick: &dyn Fn(&str) -> bool) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, pick: &dyn Fn(&str) -> bool, out: &mut Vec<String>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("reading a directory entry").path();
            if path.is_dir() {
                walk(root, &path, pick, out);
            } else if path.file_name().and_then(|n| n.to_str()).is_some_and(pick) {
                let rel = path
                    .strip_prefix(root)
                    .expect("a path under the repository");
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let root = workspace_root();
    let mut out = Vec::new();
    walk(&root, &root.join(dir), pick, &mut out);
    out.sort();
    out
}

/// Every directory under `deploy/` holding a `kustomization.yaml` (relative, sorted).
fn kustomizations() -> Vec<String> {
    files_under("deploy", &|name| name == "kustomization.yaml")
        .into_iter()
        .map(|f| {
            Path::new(&f)
                .parent()
                .expect("a file in a directory")
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Whether a kustomization is one an operator applies (the whole pipeline, an overlay, the
/// example), rather than a piece of one (`deploy/statsd-bridge`, …) that names a namespace
/// it doesn't create.
fn is_applied(dir: &str) -> bool {
    dir == "deploy"
        || dir == "deploy/base"
        || dir == "deploy/example"
        || dir.starts_with("deploy/overlays/")
}

/// What `kubectl kustomize` made of one directory.
struct Build {
    dir: String,
    text: String,
    docs: Vec<Value>,
}

/// `kubectl`, once its built-in kustomize is known to be recent enough for `deploy/`
/// (`patches` with targets, JSON 6902 `test` operations: kustomize 4 or later, i.e. kubectl
/// 1.21 or later; Debian bookworm's `kubernetes-client` 1.20 has kustomize 2).
fn kubectl() -> PathBuf {
    static CHECKED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let checked = CHECKED.get_or_init(|| {
        let kubectl = require_program("kubectl", KUBECTL_HINT);
        let mut cmd = Command::new(&kubectl);
        cmd.args(["version", "--client", "-o", "json"]);
        let run = run_command("kubectl", cmd, None, limit()).map_err(|e| format!("{e:#}"))?;
        let version: Value = serde_json::from_str(run.ok_stdout().map_err(|e| format!("{e:#}"))?)
            .map_err(|e| format!("kubectl version printed no JSON: {e}"))?;
        let kustomize = version["kustomizeVersion"].as_str().unwrap_or("none");
        let major: u32 = kustomize
            .trim_start_matches('v')
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        if major < 4 {
            return Err(format!(
                "{} embeds kustomize {kustomize}; deploy/ needs kustomize 4 or later \
                 (kubectl 1.21+, e.g. the `kubectl` package of the Kubernetes or Google Cloud \
                 apt repositories rather than Debian bookworm's kubernetes-client 1.20)",
                kubectl.display()
            ));
        }
        Ok(kubectl)
    });
    checked.clone().unwrap_or_else(|e| panic!("{e}"))
}

/// `kubectl kustomize <dir>`, parsed.
fn kustomize(dir: &str) -> Build {
    let kubectl = kubectl();
    let mut cmd = Command::new(kubectl);
    cmd.arg("kustomize").arg(repo(dir)).env_remove("KUBECONFIG");
    let run = run_command("kubectl", cmd, None, limit()).unwrap_or_else(|e| panic!("{e:#}"));
    let text = run
        .ok_stdout()
        .unwrap_or_else(|e| panic!("kubectl kustomize {dir} failed: {e:#}"))
        .to_owned();
    let docs = yaml_docs(&text, &format!("the output of kubectl kustomize {dir}"));
    assert!(
        !docs.is_empty(),
        "kubectl kustomize {dir} printed no document"
    );
    for doc in &docs {
        assert!(
            doc.get("apiVersion").and_then(Value::as_str).is_some()
                && doc.get("kind").and_then(Value::as_str).is_some()
                && doc["metadata"]["name"].as_str().is_some(),
            "kubectl kustomize {dir}: a document without apiVersion, kind or metadata.name: {doc}"
        );
    }
    Build {
        dir: dir.to_owned(),
        text,
        docs,
    }
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

fn namespace(doc: &Value) -> &str {
    doc["metadata"]["namespace"].as_str().unwrap_or_default()
}

/// `kind/namespace/name`, for messages.
fn id(doc: &Value) -> String {
    format!("{}/{}/{}", kind(doc), namespace(doc), name(doc))
}

impl Build {
    fn all(&self, kind_: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| kind(d) == kind_).collect()
    }

    fn try_get(&self, kind_: &str, ns: &str, name_: &str) -> Option<&Value> {
        self.docs
            .iter()
            .find(|d| kind(d) == kind_ && namespace(d) == ns && name(d) == name_)
    }

    fn get(&self, kind_: &str, ns: &str, name_: &str) -> &Value {
        self.try_get(kind_, ns, name_).unwrap_or_else(|| {
            panic!(
                "{}: no {kind_} {ns}/{name_}; the build has {:?}",
                self.dir,
                self.docs.iter().map(id).collect::<Vec<_>>()
            )
        })
    }

    /// Deployments and DaemonSets.
    fn workloads(&self) -> Vec<&Value> {
        self.docs
            .iter()
            .filter(|d| matches!(kind(d), "Deployment" | "DaemonSet"))
            .collect()
    }

    /// The text of file `path` as the workload's container `container` sees it: the
    /// ConfigMap key behind the volume mounted on `path`'s directory.
    fn mounted_file(&self, workload: &Value, container: &str, path: &str) -> String {
        let (dir, file) = path.rsplit_once('/').expect("an absolute path");
        let c = container_named(workload, container);
        let mount = c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["mountPath"].as_str() == Some(dir))
            .unwrap_or_else(|| panic!("{}: nothing is mounted on {dir}: {c}", id(workload)));
        let volume = volume_named(workload, mount["name"].as_str().unwrap_or_default());
        let cm_name = volume["configMap"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: {dir} is not a ConfigMap: {volume}", id(workload)));
        let cm = self.get("ConfigMap", namespace(workload), cm_name);
        cm["data"][file]
            .as_str()
            .unwrap_or_else(|| panic!("ConfigMap {cm_name} has no key {file}: {cm}"))
            .to_owned()
    }
}

fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

/// Containers and init containers of a workload.
fn all_containers(workload: &Value) -> Vec<&Value> {
    let spec = pod_spec(workload);
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten())
        .collect()
}

fn container_named<'a>(workload: &'a Value, name_: &str) -> &'a Value {
    pod_spec(workload)["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"].as_str() == Some(name_))
        .unwrap_or_else(|| panic!("{}: no container {name_}", id(workload)))
}

fn volume_named<'a>(workload: &'a Value, name_: &str) -> &'a Value {
    pod_spec(workload)["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"].as_str() == Some(name_))
        .unwrap_or_else(|| panic!("{}: no volume {name_}", id(workload)))
}

/// The value of `--flag=value` among a container's args (exactly one).
fn flag<'a>(container: &'a Value, flag_: &str) -> &'a str {
    let prefix = format!("{flag_}=");
    let found: Vec<&str> = container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|a| a.strip_prefix(prefix.as_str()))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {flag_}=… among the args of {}: {}",
        container["name"],
        container["args"]
    );
    found[0]
}

/// Whether `selector` (matchLabels or a plain map) selects every label it names in `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let pairs = selector.get("matchLabels").unwrap_or(selector);
    let Some(pairs) = pairs.as_object() else {
        return false;
    };
    !pairs.is_empty() && pairs.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The workloads in `ns` whose pods `selector` selects.
fn selected<'a>(build: &'a Build, ns: &str, selector: &Value) -> Vec<&'a Value> {
    build
        .workloads()
        .into_iter()
        .filter(|w| {
            namespace(w) == ns && selects(selector, &w["spec"]["template"]["metadata"]["labels"])
        })
        .collect()
}

/// The container port a Service's `targetPort` (a name or a number) resolves to in `workload`.
fn resolve_port(workload: &Value, target: &Value) -> Option<Value> {
    all_containers(workload).into_iter().find_map(|c| {
        c["ports"].as_array().into_iter().flatten().find_map(|p| {
            let hit = match target {
                Value::String(n) => p["name"].as_str() == Some(n),
                Value::Number(n) => p["containerPort"].as_u64() == n.as_u64(),
                _ => false,
            };
            hit.then(|| p.clone())
        })
    })
}

/// The port number a probe's `port` (a name or a number) means in `container`.
fn probe_port(container: &Value, port: &Value) -> u64 {
    match port {
        Value::Number(n) => n.as_u64().unwrap_or_default(),
        Value::String(n) => container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"].as_str() == Some(n))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("probe port {n} is not a port of {}", container["name"])),
        _ => panic!("probe port {port} in {}", container["name"]),
    }
}

// ------------------------------------------------------------------------------------------
// kubernetes-validate

/// The venv's `kubernetes-validate` (next to `$PIPELINE_PYTHON`).
fn kubernetes_validate_program() -> PathBuf {
    let py = python();
    let program = py
        .parent()
        .map(|d| d.join("kubernetes-validate"))
        .unwrap_or_else(|| PathBuf::from("kubernetes-validate"));
    assert!(
        program.is_file(),
        "{} not found: run {PY_HINT}",
        program.display()
    );
    program
}

/// Validates every document of `build` with `kubernetes-validate --strict` for each of
/// [`K8S_VERSIONS`]: each known kind must pass for each version, each kind of
/// [`UNKNOWN_KINDS`] must be reported as having no schema, and anything else fails.
fn validate(build: &Build) {
    let dir = TempDir::new().expect("a temp dir");
    let file = dir.path().join("build.yaml");
    std::fs::write(&file, &build.text).expect("writing the build");
    let mut cmd = Command::new(kubernetes_validate_program());
    cmd.arg("--strict");
    for v in K8S_VERSIONS {
        cmd.args(["-k", v]);
    }
    cmd.arg(&file);
    let run =
        run_command("kubernetes-validate", cmd, None, limit()).unwrap_or_else(|e| panic!("{e:#}"));
    let out = run
        .stdout
        .replace(&file.to_string_lossy().into_owned(), "build.yaml");
    assert!(
        run.success() && !out.contains("ERROR") && !out.contains("FATAL"),
        "{}: kubernetes-validate --strict failed:\n{out}{}",
        build.dir,
        run.stderr
    );
    let mut passed: BTreeSet<(String, String)> = BTreeSet::new();
    let mut no_schema: BTreeSet<(String, String)> = BTreeSet::new();
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("INFO build.yaml passed for resource ") {
            let (resource, version) = rest
                .split_once(" against version ")
                .unwrap_or_else(|| panic!("unexpected line: {line}"));
            passed.insert((resource.to_owned(), version.to_owned()));
        } else if let Some(rest) =
            line.strip_prefix("WARN build.yaml Couldn't find schema for kind ")
        {
            let (kind_, rest) = rest
                .split_once(" with api version ")
                .unwrap_or_else(|| panic!("{line}"));
            let (api, _) = rest
                .split_once(" for kubernetes version ")
                .unwrap_or_else(|| panic!("{line}"));
            no_schema.insert((api.to_owned(), kind_.to_owned()));
        } else {
            panic!(
                "{}: unexpected kubernetes-validate output: {line}\n{out}",
                build.dir
            );
        }
    }
    for doc in &build.docs {
        let api = doc["apiVersion"].as_str().unwrap_or_default();
        if UNKNOWN_KINDS.contains(&(api, kind(doc))) {
            assert!(
                no_schema.contains(&(api.to_owned(), kind(doc).to_owned())),
                "{}: {api} {} is listed as unknown to kubernetes-validate but was not \
                 reported so (it has a schema now: validate it)\n{out}",
                build.dir,
                kind(doc)
            );
            continue;
        }
        let resource = format!("{}/{}", kind(doc).to_lowercase(), name(doc));
        for v in K8S_VERSIONS {
            let minor = v.rsplit_once('.').map_or(*v, |(mm, _)| mm);
            assert!(
                passed.contains(&(resource.clone(), minor.to_owned())),
                "{}: {resource} ({api}) was not validated against Kubernetes {minor}\n{out}",
                build.dir
            );
        }
    }
    for (api, kind_) in &no_schema {
        assert!(
            UNKNOWN_KINDS.contains(&(api.as_str(), kind_.as_str())),
            "{}: kubernetes-validate has no schema for {api} {kind_}: a typo, or add it to \
             UNKNOWN_KINDS with assertions of its fields\n{out}",
            build.dir
        );
    }
}

// ------------------------------------------------------------------------------------------
// Cross-references and container hardening

/// Checks that every reference between the objects of an applied build resolves, and that
/// every container is locked down. Returns nothing; panics with the first problem.
fn check_references(build: &Build) {
    let dir = &build.dir;
    let namespaces: BTreeSet<&str> = build.all("Namespace").into_iter().map(name).collect();
    for doc in &build.docs {
        let k = kind(doc);
        if NAMESPACED_KINDS.contains(&k) {
            let ns = namespace(doc);
            assert!(
                namespaces.contains(ns) || ns == "kube-system",
                "{dir}: {} is in namespace {ns:?}, which the build doesn't create",
                id(doc)
            );
        } else {
            assert!(
                CLUSTER_KINDS.contains(&k),
                "{dir}: kind {k} is in neither NAMESPACED_KINDS nor CLUSTER_KINDS"
            );
            assert_eq!(
                namespace(doc),
                "",
                "{dir}: cluster-scoped {} has a namespace",
                id(doc)
            );
        }
    }
    let secrets: BTreeSet<(String, String)> = build
        .all("Secret")
        .into_iter()
        .map(|s| (namespace(s).to_owned(), name(s).to_owned()))
        .chain(build.all("Certificate").into_iter().map(|c| {
            let secret = c["spec"]["secretName"].as_str().unwrap_or_default();
            (namespace(c).to_owned(), secret.to_owned())
        }))
        .collect();

    for w in build.workloads() {
        let ns = namespace(w);
        let spec = pod_spec(w);
        if let Some(sa) = spec["serviceAccountName"].as_str() {
            build.get("ServiceAccount", ns, sa);
        }
        assert!(
            selects(
                &w["spec"]["selector"],
                &w["spec"]["template"]["metadata"]["labels"]
            ),
            "{dir}: {}'s selector doesn't select its own pods",
            id(w)
        );
        for volume in spec["volumes"].as_array().into_iter().flatten() {
            if let Some(cm) = volume["configMap"]["name"].as_str() {
                build.get("ConfigMap", ns, cm);
            }
            if let Some(secret) = volume["secret"]["secretName"].as_str() {
                assert!(
                    secrets.contains(&(ns.to_owned(), secret.to_owned())),
                    "{dir}: {} mounts Secret {secret}, which nothing in the build makes",
                    id(w)
                );
            }
        }
        for c in all_containers(w) {
            for mount in c["volumeMounts"].as_array().into_iter().flatten() {
                volume_named(w, mount["name"].as_str().unwrap_or_default());
            }
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                if let Some(port) = c[probe]["httpGet"].get("port") {
                    probe_port(c, port);
                }
            }
            check_hardening(w, c, dir);
        }
    }

    for svc in build.all("Service") {
        let ns = namespace(svc);
        let pods = selected(build, ns, &svc["spec"]["selector"]);
        assert!(
            !pods.is_empty(),
            "{dir}: Service {} selects no workload's pods",
            id(svc)
        );
        for port in svc["spec"]["ports"].as_array().into_iter().flatten() {
            let target = port.get("targetPort").unwrap_or(&port["port"]);
            for w in &pods {
                let resolved = resolve_port(w, target).unwrap_or_else(|| {
                    panic!(
                        "{dir}: Service {} port {port}: {} has no port {target}",
                        id(svc),
                        id(w)
                    )
                });
                let proto = |v: &Value| v["protocol"].as_str().unwrap_or("TCP").to_owned();
                assert_eq!(
                    proto(port),
                    proto(&resolved),
                    "{dir}: Service {} port {port} -> {resolved}: protocols differ",
                    id(svc)
                );
            }
        }
    }

    for binding in build
        .docs
        .iter()
        .filter(|d| matches!(kind(d), "RoleBinding" | "ClusterRoleBinding"))
    {
        let role = &binding["roleRef"];
        let role_name = role["name"].as_str().unwrap_or_default();
        match role["kind"].as_str() {
            Some("ClusterRole") => assert!(
                build.try_get("ClusterRole", "", role_name).is_some()
                    || BUILTIN_CLUSTER_ROLES.contains(&role_name),
                "{dir}: {} names ClusterRole {role_name}, which neither the build nor the \
                 cluster has",
                id(binding)
            ),
            Some("Role") => {
                let ns = namespace(binding);
                assert!(
                    build.try_get("Role", ns, role_name).is_some()
                        || (ns == "kube-system" && BUILTIN_KUBE_SYSTEM_ROLES.contains(&role_name)),
                    "{dir}: {} names Role {ns}/{role_name}, which neither the build nor the \
                     cluster has",
                    id(binding)
                );
            }
            other => panic!("{dir}: {} has roleRef kind {other:?}", id(binding)),
        }
        let subjects = binding["subjects"].as_array().cloned().unwrap_or_default();
        assert!(
            !subjects.is_empty(),
            "{dir}: {} has no subjects",
            id(binding)
        );
        for s in &subjects {
            assert_eq!(
                s["kind"],
                "ServiceAccount",
                "{dir}: {}: subject {s}",
                id(binding)
            );
            let ns = s["namespace"].as_str().unwrap_or_else(|| {
                panic!("{dir}: {}: subject without namespace: {s}", id(binding))
            });
            let sa = s["name"].as_str().unwrap_or_default();
            assert!(
                build.try_get("ServiceAccount", ns, sa).is_some()
                    || BUILTIN_SERVICE_ACCOUNTS.contains(&format!("{ns}/{sa}").as_str()),
                "{dir}: {} binds ServiceAccount {ns}/{sa}, which the build doesn't make",
                id(binding)
            );
        }
    }

    for api in build.all("APIService") {
        let svc = &api["spec"]["service"];
        let service = build.get(
            "Service",
            svc["namespace"].as_str().unwrap_or_default(),
            svc["name"].as_str().unwrap_or_default(),
        );
        let port = svc["port"].as_u64().unwrap_or(443);
        assert!(
            service["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["port"].as_u64() == Some(port)),
            "{dir}: APIService {} uses port {port} of {}, which it doesn't have",
            name(api),
            id(service)
        );
    }

    for pdb in build.all("PodDisruptionBudget") {
        assert_eq!(
            selected(build, namespace(pdb), &pdb["spec"]["selector"]).len(),
            1,
            "{dir}: {} must select exactly one workload's pods",
            id(pdb)
        );
    }
    for policy in build.all("NetworkPolicy") {
        let ns = namespace(policy);
        assert!(
            !selected(build, ns, &policy["spec"]["podSelector"]).is_empty(),
            "{dir}: {} selects no workload's pods",
            id(policy)
        );
        for rule in ["ingress", "egress"]
            .iter()
            .flat_map(|k| policy["spec"][*k].as_array().into_iter().flatten())
        {
            for peer in ["from", "to"]
                .iter()
                .flat_map(|k| rule[*k].as_array().into_iter().flatten())
            {
                if peer.get("podSelector").is_some() && peer.get("namespaceSelector").is_none() {
                    assert!(
                        !selected(build, ns, &peer["podSelector"]).is_empty(),
                        "{dir}: {}: peer {peer} selects no pods of the build in {ns}",
                        id(policy)
                    );
                }
            }
        }
    }
    for hpa in build.all("HorizontalPodAutoscaler") {
        let target = &hpa["spec"]["scaleTargetRef"];
        build.get(
            target["kind"].as_str().unwrap_or_default(),
            namespace(hpa),
            target["name"].as_str().unwrap_or_default(),
        );
    }
}

/// One container's security context and resources.
fn check_hardening(workload: &Value, c: &Value, dir: &str) {
    let what = format!("{dir}: {} container {}", id(workload), c["name"]);
    let sc = &c["securityContext"];
    assert_eq!(
        sc["allowPrivilegeEscalation"], false,
        "{what}: allowPrivilegeEscalation"
    );
    assert_eq!(
        sc["readOnlyRootFilesystem"], true,
        "{what}: readOnlyRootFilesystem"
    );
    assert_eq!(
        sc["capabilities"]["drop"],
        json!(["ALL"]),
        "{what}: capabilities.drop"
    );
    assert!(
        sc.get("privileged").is_none_or(|p| p == false),
        "{what}: privileged"
    );
    let pod_sc = &pod_spec(workload)["securityContext"];
    let non_root = sc
        .get("runAsNonRoot")
        .or_else(|| pod_sc.get("runAsNonRoot"));
    if c["name"] == ROOT_INIT_CONTAINER {
        assert_eq!(
            sc["capabilities"]["add"],
            json!(["CHOWN"]),
            "{what}: capabilities.add"
        );
        assert_eq!(sc["runAsUser"], 0, "{what}: runs as root to chown");
    } else {
        assert_eq!(non_root, Some(&json!(true)), "{what}: runAsNonRoot");
        assert!(
            sc.get("capabilities").and_then(|c| c.get("add")).is_none(),
            "{what}: adds capabilities"
        );
        let uid = sc.get("runAsUser").or_else(|| pod_sc.get("runAsUser"));
        assert!(
            uid.and_then(Value::as_u64).is_some_and(|u| u > 0),
            "{what}: runAsUser {uid:?}"
        );
    }
    assert!(
        c["resources"]["requests"]["cpu"].is_string()
            && c["resources"]["requests"]["memory"].is_string()
            && c["resources"]["limits"]["memory"].is_string(),
        "{what}: needs cpu and memory requests and a memory limit: {}",
        c["resources"]
    );
    let image = c["image"].as_str().unwrap_or_default();
    let (repo_, tag) = image.rsplit_once(':').unwrap_or((image, ""));
    assert!(
        !tag.is_empty() && tag != "latest" && !tag.contains('/'),
        "{what}: image {image:?} needs a pinned tag"
    );
    if !OWN_IMAGES.contains(&repo_) {
        assert!(
            tag.chars().filter(|ch| *ch == '.').count() >= 2,
            "{what}: third-party image {image:?} needs a full version tag"
        );
    }
}

// ------------------------------------------------------------------------------------------
// Running the binaries on the configs

/// `statsd-bridge check-config` on `text`, written as `name` in a temp dir.
fn bridge_check_config(text: &str, name_: &str, what: &str) {
    let dir = TempDir::new().expect("a temp dir");
    std::fs::write(dir.path().join(name_), text).expect("writing the config");
    let run = statsd::run_cli(&["check-config", name_], dir.path(), None);
    assert_eq!(
        run.code(),
        Some(0),
        "{what}: statsd-bridge check-config rejects it (a key the bridge doesn't know yet? \
         [bridge.origin] is the origin-detection issue's):\n{run}"
    );
}

/// `prom-adapter check-config` on a rules file `text`.
fn adapter_check_config(text: &str, what: &str) {
    let dir = TempDir::new().expect("a temp dir");
    std::fs::write(dir.path().join("rules.yaml"), text).expect("writing the rules");
    let run = promadapter::run_cli(&["check-config", "rules.yaml"], dir.path());
    assert!(
        run.success(),
        "{what}: prom-adapter check-config rejects the rules:\n{run}"
    );
}

/// Starts prom-adapter with a manifest's `args` (each `--flag=value`), the files they name
/// replaced by local ones (`--config` by `rules`; `--tls-cert-file`/`--tls-private-key-file`
/// by `tls`; `--cert-dir` by a temp dir), on an ephemeral loopback port, with
/// `--insecure-dev` (there is no kube-apiserver to delegate to). Waits until it is ready
/// and `/readyz` answers 200 over HTTPS (verified against `tls`' CA when given), then
/// stops it. Proves the adapter accepts every flag the manifest gives it.
fn adapter_runs_with(args: &[&str], rules: &str, tls: Option<(&Path, &Path, &Path)>, what: &str) {
    let dir = TempDir::new().expect("a temp dir");
    let rules_path = dir.path().join("rules.yaml");
    std::fs::write(&rules_path, rules).expect("writing the rules");
    let ready = dir.path().join("ready.json");
    let mut local = Vec::new();
    for arg in args {
        let Some((flag_, value)) = arg.split_once('=') else {
            // A switch (`--insecure-dev`): no file or port in it.
            assert!(
                matches!(
                    *arg,
                    "--insecure-dev"
                        | "--authentication-skip-lookup"
                        | "--watch-prometheus-metrics"
                ),
                "{what}: write the adapter's args as --flag=value: {arg}"
            );
            local.push((*arg).to_owned());
            continue;
        };
        let value = match flag_ {
            "--config" => rules_path.to_string_lossy().into_owned(),
            "--cert-dir" => dir.path().join("certs").to_string_lossy().into_owned(),
            "--secure-port" => "0".to_owned(),
            "--tls-cert-file" => tls.expect("TLS files").0.to_string_lossy().into_owned(),
            "--tls-private-key-file" => tls.expect("TLS files").1.to_string_lossy().into_owned(),
            "--bind-address" | "--ready-file" | "--lister-kubeconfig" => {
                panic!("{what}: the test sets {flag_} itself")
            }
            _ => value.to_owned(),
        };
        local.push(format!("{flag_}={value}"));
    }
    local.push("--bind-address=127.0.0.1".to_owned());
    local.push(format!("--ready-file={}", ready.display()));
    // Watching PrometheusMetric objects needs a cluster: a fake one, as in a pod.
    let _cluster = args.contains(&"--watch-prometheus-metrics").then(|| {
        let fake = FakeKubeApi::start_with_objects();
        let kubeconfig = fake
            .write_kubeconfig(dir.path())
            .expect("writing the fake's kubeconfig");
        local.push(format!("--lister-kubeconfig={}", kubeconfig.display()));
        fake
    });
    if !args.contains(&"--insecure-dev") {
        local.push("--insecure-dev".to_owned());
    }
    let mut cmd = Command::new(bin("prom-adapter"));
    cmd.args(&local)
        .current_dir(dir.path())
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST");
    let child = ChildGuard::spawn("prom-adapter", cmd).expect("starting prom-adapter");
    let addr: SocketAddr = eventually(
        &format!("{what}: the adapter's ready file"),
        PATIENCE,
        || {
            if let Err(e) = child.ensure_running() {
                panic!("{what}: prom-adapter exited with the manifest's args {local:?}: {e:#}");
            }
            let text = std::fs::read_to_string(&ready).context("no ready file yet")?;
            let v: Value = serde_json::from_str(&text).context("parsing the ready file")?;
            v["secure"]
                .as_str()
                .context("no `secure` address")?
                .parse()
                .context("parsing the address")
        },
    );
    let options = CurlOptions {
        cacert: tls.map(|t| t.2),
        ..CurlOptions::default()
    };
    let url = format!("https://localhost:{}/readyz", addr.port());
    eventually(&format!("{what}: GET /readyz = 200"), PATIENCE, || {
        let response = curl(&url, &options)?;
        ensure!(response.status == 200, "status {}", response.status);
        Ok(())
    });
}

/// Starts a repository Python script (with the venv's interpreter) sending DogStatsD to
/// `127.0.0.1:port`, with `env` added; it runs until the guard is dropped.
fn spawn_sender(script: &str, port: u16, env: &[(&str, &str)]) -> ChildGuard {
    let mut cmd = Command::new(python());
    cmd.arg(repo(script))
        .env("DD_AGENT_HOST", "127.0.0.1")
        .env("DD_DOGSTATSD_PORT", port.to_string())
        .env_remove("DD_DOGSTATSD_URL")
        .env_remove("DD_ENTITY_ID");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let label = Path::new(script)
        .file_stem()
        .map_or_else(|| "script".to_owned(), |s| s.to_string_lossy().into_owned());
    ChildGuard::spawn(&label, cmd).expect("starting the script")
}

/// Runs a Python script (from the venv) with `env`, collects the UDP datagrams it sends to
/// a local socket until `done` holds for the lines so far (or 20 s pass), and returns them.
fn capture_dogstatsd(
    script: &str,
    env: &[(&str, &str)],
    done: &dyn Fn(&[String]) -> bool,
) -> Vec<String> {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("binding a UDP socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("a read timeout");
    let port = socket.local_addr().expect("its address").port();
    let child = spawn_sender(script, port, env);
    let deadline = Instant::now() + scaled(Duration::from_secs(20));
    let mut lines = Vec::new();
    let mut buf = vec![0u8; 65536];
    while !done(&lines) {
        assert!(
            Instant::now() < deadline,
            "{script} sent no complete set of lines in time; got {lines:?}\n{}",
            child.log_tail(20)
        );
        if let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            lines.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_owned));
        }
    }
    lines
}

/// A DogStatsD line's name, type and tags.
fn parse_line(line: &str) -> (String, String, BTreeMap<String, String>) {
    let (name_, rest) = line
        .split_once(':')
        .unwrap_or_else(|| panic!("not a line: {line}"));
    let mut fields = rest.split('|');
    let _value = fields.next();
    let ty = fields.next().unwrap_or_default().to_owned();
    let mut tags = BTreeMap::new();
    for field in fields {
        if let Some(list) = field.strip_prefix('#') {
            for tag in list.split(',') {
                let (k, v) = tag.split_once(':').unwrap_or((tag, ""));
                tags.insert(k.to_owned(), v.to_owned());
            }
        }
    }
    (name_.to_owned(), ty, tags)
}

/// Whether `lines` hold a counter and a gauge with a `queue` tag (what the rules serve).
fn has_counter_and_queue_gauge(lines: &[String]) -> bool {
    let parsed: Vec<_> = lines.iter().map(|l| parse_line(l)).collect();
    parsed.iter().any(|(_, ty, _)| ty == "c")
        && parsed
            .iter()
            .any(|(_, ty, tags)| ty == "g" && tags.contains_key("queue"))
}

// ------------------------------------------------------------------------------------------
// deploy/: every kustomization

#[test]
fn manifests_every_kustomization_builds_parses_and_validates_offline() {
    let dirs = kustomizations();
    for expected in [
        "deploy",
        "deploy/base",
        "deploy/example",
        "deploy/overlays/cert-manager",
        "deploy/overlays/external-prometheus",
        "deploy/overlays/resource-metrics",
        "deploy/overlays/uds-origin",
    ] {
        assert!(
            dirs.iter().any(|d| d == expected),
            "{expected} has no kustomization.yaml: {dirs:?}"
        );
    }
    let mut root = None;
    let mut base = None;
    for dir in &dirs {
        let build = kustomize(dir);
        validate(&build);
        if is_applied(dir) {
            check_references(&build);
        }
        match dir.as_str() {
            "deploy" => root = Some(build.text),
            "deploy/base" => base = Some(build.text),
            _ => {}
        }
    }
    assert_eq!(
        root, base,
        "`kubectl apply -k deploy/` must apply exactly deploy/base"
    );
}

#[test]
fn manifests_every_yaml_file_under_deploy_and_compose_parses() {
    let files: Vec<String> = ["deploy", "compose"]
        .iter()
        .flat_map(|d| files_under(d, &|n| n.ends_with(".yaml") || n.ends_with(".yml")))
        .collect();
    assert!(
        files.len() >= 20,
        "expected the manifests' YAML files, found {files:?}"
    );
    for file in &files {
        let docs = yaml_docs(&read(file), file);
        assert!(!docs.is_empty(), "{file} holds no YAML document");
    }
}

#[test]
fn manifests_base_is_the_whole_pipeline_in_one_namespace() {
    let build = kustomize("deploy/base");
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for doc in &build.docs {
        *kinds.entry(kind(doc)).or_default() += 1;
    }
    for (k, n) in [
        ("Namespace", 1),
        ("DaemonSet", 1),
        ("Deployment", 2),
        ("APIService", 3),
        ("PodDisruptionBudget", 1),
        ("NetworkPolicy", 1),
    ] {
        assert_eq!(
            kinds.get(k).copied(),
            Some(n),
            "deploy/base: expected {n} {k}; has {kinds:?}"
        );
    }
    assert_eq!(name(build.all("Namespace")[0]), NAMESPACE);
    for doc in &build.docs {
        assert!(
            matches!(namespace(doc), "" | NAMESPACE | "kube-system"),
            "{} is outside {NAMESPACE}",
            id(doc)
        );
        if namespace(doc) == "kube-system" {
            assert_eq!(
                (kind(doc), doc["roleRef"]["name"].as_str()),
                (
                    "RoleBinding",
                    Some("extension-apiserver-authentication-reader")
                ),
                "the only object in kube-system is the adapter's auth-reader RoleBinding"
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// deploy/: statsd-bridge

#[test]
fn manifests_bridge_daemonset_has_what_origin_detection_and_the_sockets_need() {
    let build = kustomize("deploy/base");
    let ds = build.get("DaemonSet", NAMESPACE, "statsd-bridge");
    let spec = pod_spec(ds);
    let c = container_named(ds, "statsd-bridge");

    let node_name = c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "NODE_NAME")
        .unwrap_or_else(|| panic!("the bridge has no NODE_NAME env: {}", c["env"]));
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName",
        "NODE_NAME: {node_name}"
    );
    assert!(
        spec.get("hostPID").is_none(),
        "hostPID belongs in overlays/uds-origin only"
    );
    assert!(
        spec.get("hostNetwork").is_none_or(|h| h == false),
        "the bridge must not use hostNetwork"
    );

    let udp = c["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["protocol"] == "UDP")
        .unwrap_or_else(|| panic!("no UDP port: {}", c["ports"]));
    assert_eq!(
        (&udp["containerPort"], &udp["hostPort"]),
        (&json!(8125), &json!(8125)),
        "{udp}"
    );

    let config_path = flag(c, "--config");
    let text = build.mounted_file(ds, "statsd-bridge", config_path);
    let config = toml_doc(&text, "the bridge's pipeline.toml");
    let bridge = &config["bridge"];
    assert_eq!(
        bridge["origin"]["mode"], "kubernetes",
        "[bridge.origin] mode"
    );
    assert!(
        bridge["origin"]["pod_labels"]
            .as_array()
            .is_some_and(|l| l.contains(&json!("app"))),
        "[bridge.origin] pod_labels should copy `app`: {}",
        bridge["origin"]
    );
    assert!(
        bridge["origin"]["node_name"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "node_name must come from NODE_NAME"
    );
    assert!(
        bridge["listen_udp"]
            .as_array()
            .is_some_and(|l| l.contains(&json!("0.0.0.0:8125")))
    );

    // The unix socket lies in the hostPath directory apps mount, owned by the bridge's user.
    let socket = bridge["listen_unixgram"][0]
        .as_str()
        .expect("a unix socket in the config");
    let (socket_dir, _) = socket.rsplit_once('/').expect("an absolute socket path");
    let mount = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"] == socket_dir)
        .unwrap_or_else(|| panic!("nothing mounted on the socket directory {socket_dir}"));
    let volume = volume_named(ds, mount["name"].as_str().unwrap_or_default());
    assert_eq!(
        volume["hostPath"]["path"], socket_dir,
        "the socket directory is the host's: {volume}"
    );
    assert_eq!(
        bridge["unixsocket_mode"], "722",
        "apps of any user must be able to write to the socket"
    );
    let init = spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["name"] == ROOT_INIT_CONTAINER)
        .expect("the socket-dir init container");
    let uid = spec["securityContext"]["runAsUser"]
        .as_u64()
        .expect("a pod runAsUser");
    assert_eq!(
        init["command"],
        json!(["chown", format!("{uid}:{uid}"), socket_dir]),
        "the init container hands the socket directory to the bridge's user"
    );
    assert_eq!(
        init["image"], c["image"],
        "the init container uses the bridge's image (with coreutils)"
    );

    // cgroup_root is the host's cgroup filesystem, mounted read-only.
    let cgroup_root = bridge["origin"]["cgroup_root"]
        .as_str()
        .expect("cgroup_root");
    let cgroup_mount = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"] == cgroup_root)
        .unwrap_or_else(|| panic!("nothing mounted on cgroup_root {cgroup_root}"));
    assert_eq!(cgroup_mount["readOnly"], true);
    assert_eq!(
        volume_named(ds, cgroup_mount["name"].as_str().unwrap_or_default())["hostPath"]["path"],
        "/sys/fs/cgroup"
    );

    // Probes on the web port of the config.
    let web_port: u64 = bridge["web_listen"]
        .as_str()
        .and_then(|w| w.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .expect("web_listen with a port");
    assert_eq!(web_port, 9102);
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}: {get}");
        assert_eq!(probe_port(c, &get["port"]), web_port, "{probe}: {get}");
    }

    // RBAC: get, list and watch on pods for the bridge's ServiceAccount.
    let sa = spec["serviceAccountName"]
        .as_str()
        .expect("a ServiceAccount");
    let verbs = granted(&build, NAMESPACE, sa, "", "pods");
    assert!(
        ["get", "list", "watch"].iter().all(|v| verbs.contains(*v)),
        "the bridge's ServiceAccount needs get/list/watch on pods; has {verbs:?}"
    );

    // The headless Service publishes the metrics port.
    let svc = build.get("Service", NAMESPACE, "statsd-bridge");
    assert_eq!(
        svc["spec"]["clusterIP"], "None",
        "the bridge's Service is headless"
    );
}

/// The verbs a ClusterRoleBinding grants ServiceAccount `ns/sa` on `group`/`resource`.
fn granted(build: &Build, ns: &str, sa: &str, group: &str, resource: &str) -> BTreeSet<String> {
    let mut verbs = BTreeSet::new();
    for binding in build.all("ClusterRoleBinding") {
        let bound = binding["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["kind"] == "ServiceAccount" && s["namespace"] == ns && s["name"] == sa);
        if !bound || binding["roleRef"]["kind"] != "ClusterRole" {
            continue;
        }
        let Some(role) = build.try_get(
            "ClusterRole",
            "",
            binding["roleRef"]["name"].as_str().unwrap_or_default(),
        ) else {
            continue;
        };
        for rule in role["rules"].as_array().into_iter().flatten() {
            let has = |key: &str, want: &str| {
                rule[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|v| v.as_str() == Some(want) || v.as_str() == Some("*"))
            };
            if has("apiGroups", group) && has("resources", resource) {
                verbs.extend(
                    rule["verbs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(str::to_owned),
                );
            }
        }
    }
    verbs
}

#[test]
fn manifests_bridge_configmap_passes_check_config() {
    for dir in ["deploy/base", "deploy/overlays/uds-origin"] {
        let build = kustomize(dir);
        let ds = build.get("DaemonSet", NAMESPACE, "statsd-bridge");
        let c = container_named(ds, "statsd-bridge");
        let path = flag(c, "--config");
        let text = build.mounted_file(ds, "statsd-bridge", path);
        bridge_check_config(
            &text,
            "pipeline.toml",
            &format!("{dir}: the bridge's ConfigMap"),
        );
    }
}

#[test]
fn manifests_uds_origin_overlay_only_adds_host_pid() {
    let base = kustomize("deploy/base");
    let mut overlay = kustomize("deploy/overlays/uds-origin");
    let ds = overlay
        .docs
        .iter_mut()
        .find(|d| kind(d) == "DaemonSet")
        .expect("the DaemonSet");
    let spec = ds["spec"]["template"]["spec"]
        .as_object_mut()
        .expect("a pod spec");
    assert_eq!(
        spec.remove("hostPID"),
        Some(json!(true)),
        "the overlay sets hostPID: true"
    );
    assert_eq!(
        overlay.docs, base.docs,
        "deploy/overlays/uds-origin must differ from deploy/base by hostPID alone"
    );
    // With hostPID, /proc is the host's: proc_root must be /proc.
    let ds = base.get("DaemonSet", NAMESPACE, "statsd-bridge");
    let text = base.mounted_file(
        ds,
        "statsd-bridge",
        flag(container_named(ds, "statsd-bridge"), "--config"),
    );
    assert_eq!(
        toml_doc(&text, "pipeline.toml")["bridge"]["origin"]["proc_root"],
        "/proc"
    );
}

/// The flags that move a bridge's listeners to ephemeral loopback ports (and its unix
/// socket into `dir`), overriding a manifest's config.
fn local_listener_flags(dir: &Path) -> Vec<String> {
    vec![
        "--statsd.listen-udp=127.0.0.1:0".to_owned(),
        "--statsd.listen-tcp=".to_owned(),
        format!(
            "--statsd.listen-unixgram={}",
            dir.join("dsd.socket").display()
        ),
        "--web.listen-address=127.0.0.1:0".to_owned(),
    ]
}

/// Waits until the bridge's page has a `name` series with every label of `labels` (and
/// maybe more).
fn wait_series_with(bridge: &Bridge, name_: &str, labels: &[(&str, &str)]) {
    let prefix = format!("{name_}{{");
    let has = |key: &str, (k, v): &(&str, &str)| {
        key.contains(&format!("{{{k}=\"{v}\"")) || key.contains(&format!(",{k}=\"{v}\""))
    };
    bridge.wait_metrics(&format!("a {name_} series with {labels:?}"), |map| {
        let series: Vec<&String> = map.keys().filter(|k| k.starts_with(&prefix)).collect();
        ensure!(
            series.iter().any(|k| labels.iter().all(|l| has(k, l))),
            "not yet; {name_} series: {series:?}"
        );
        Ok(())
    });
}

#[test]
fn manifests_bridge_configmap_labels_the_example_apps_lines_with_its_pod() {
    // The DaemonSet's own pipeline.toml (listeners moved to loopback), watching a fake
    // kube-apiserver that holds one pod of the example Deployment on this node.
    let base = kustomize("deploy/base");
    let ds = base.get("DaemonSet", NAMESPACE, "statsd-bridge");
    let config = base.mounted_file(
        ds,
        "statsd-bridge",
        flag(container_named(ds, "statsd-bridge"), "--config"),
    );
    let example = kustomize("deploy/example");
    let web = example.get("Deployment", EXAMPLE_NAMESPACE, "web");
    let mut pod = PodFixture::new(EXAMPLE_NAMESPACE, "web-7c9d4-x2x8q", "node-a", "127.0.0.1");
    pod.labels = web["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .expect("pod labels")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect();
    pod.labels
        .push(("pod-template-hash".into(), "7c9d4".into()));
    pod.host_ip = Some("10.0.0.7".into());
    let fake = FakeKubeApi::start_with_objects();
    fake.put_pod(&pod);
    let dir = TempDir::new().expect("a temp dir");
    let kubeconfig = fake.write_kubeconfig(dir.path()).expect("a kubeconfig");
    let mut flags = local_listener_flags(dir.path());
    // In the cluster the node name comes from NODE_NAME (the downward API; checked in
    // manifests_bridge_daemonset_has_what_origin_detection_and_the_sockets_need).
    flags.push("--origin.node-name=node-a".into());
    flags.push(format!("--origin.kubeconfig={}", kubeconfig.display()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let bridge = Bridge::start(&config, &flags);
    eventually(
        "the bridge ready after its first pod list",
        PATIENCE,
        || {
            let r = bridge.get("/readyz")?;
            ensure!(r.status == 200, "/readyz answered {}", r.status);
            Ok(())
        },
    );

    // The example app's own lines get the pod's namespace, name and `app` label: what the
    // adapter's rules and the HPA need.
    let _app = spawn_sender(
        "deploy/example/app.py",
        bridge.udp_addr().port(),
        &[("PEERS", "")],
    );
    let origin = [
        ("namespace", EXAMPLE_NAMESPACE),
        ("pod", pod.name.as_str()),
        ("app", "web"),
    ];
    wait_series_with(&bridge, "requests", &origin);
    let mut with_queue = origin.to_vec();
    with_queue.push(("queue", "orders"));
    wait_series_with(&bridge, "queue_depth", &with_queue);
}

#[test]
fn manifests_compose_bridge_labels_the_loadgen_by_its_static_origin_entry() {
    // compose's pipeline.toml, with the loadgen's fixed address swapped for the loopback
    // address the script sends from here.
    let compose = compose();
    let loadgen_ip = service(&compose, "loadgen")["networks"]["pipeline"]["ipv4_address"]
        .as_str()
        .expect("the loadgen's address")
        .to_owned();
    let text = read("compose/bridge/pipeline.toml");
    let quoted = format!("\"{loadgen_ip}\"");
    assert!(
        text.contains(&quoted),
        "compose/bridge/pipeline.toml names {loadgen_ip}"
    );
    let config = text.replace(&quoted, "\"127.0.0.1\"");
    let dir = TempDir::new().expect("a temp dir");
    let flags = local_listener_flags(dir.path());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let bridge = Bridge::start(&config, &flags);
    let _loadgen = spawn_sender("compose/loadgen/loadgen.py", bridge.udp_addr().port(), &[]);
    let table = toml_doc(&text, "compose/bridge/pipeline.toml");
    let labels: Vec<(String, String)> = table["bridge"]["origin"]["static"][0]["labels"]
        .as_object()
        .expect("static labels")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect();
    let labels: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    wait_series_with(&bridge, "requests", &labels);
}

// ------------------------------------------------------------------------------------------
// deploy/: Prometheus

#[test]
fn manifests_prometheus_scrape_job_keeps_the_bridges_origin_labels() {
    let build = kustomize("deploy/base");
    let prom = build.get("Deployment", NAMESPACE, "prometheus");
    let c = container_named(prom, "prometheus");
    let config_path = flag(c, "--config.file");
    let text = build.mounted_file(prom, "prometheus", config_path);
    assert_eq!(
        text,
        read("deploy/prometheus/prometheus.yml"),
        "the ConfigMap is deploy/prometheus/prometheus.yml"
    );
    let config = yaml_doc(&text, "prometheus.yml");
    let jobs = config["scrape_configs"].as_array().expect("scrape_configs");
    let job = jobs
        .iter()
        .find(|j| j["job_name"] == "statsd-bridge")
        .expect("a statsd-bridge job");
    assert_eq!(
        job["honor_labels"], true,
        "the bridge's labels must win over target labels"
    );

    // Service discovery: the bridge pods of their namespace, by their labels.
    let ds = build.get("DaemonSet", NAMESPACE, "statsd-bridge");
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    let sd = job["kubernetes_sd_configs"]
        .as_array()
        .expect("kubernetes_sd_configs");
    assert_eq!(sd.len(), 1, "{sd:?}");
    assert_eq!(sd[0]["role"], "pod");
    assert_eq!(sd[0]["namespaces"]["names"], json!([NAMESPACE]));
    for selector in sd[0]["selectors"].as_array().into_iter().flatten() {
        let label = selector["label"].as_str().expect("a label selector");
        let (k, v) = label.split_once('=').expect("k=v");
        assert_eq!(
            pod_labels[k], v,
            "the SD selector {label} must select the bridge pods: {pod_labels}"
        );
    }
    // kubernetes_sd may list only pods of that namespace: Prometheus' Role grants that.
    let sa = pod_spec(prom)["serviceAccountName"]
        .as_str()
        .expect("a ServiceAccount");
    let rb = build
        .all("RoleBinding")
        .into_iter()
        .find(|b| namespace(b) == NAMESPACE && b["subjects"][0]["name"] == sa)
        .expect("Prometheus' RoleBinding");
    let role = build.get(
        "Role",
        NAMESPACE,
        rb["roleRef"]["name"].as_str().unwrap_or_default(),
    );
    assert!(
        role["rules"][0]["resources"] == json!(["pods"])
            && role["rules"][0]["verbs"]
                .as_array()
                .is_some_and(|v| v.contains(&json!("watch")))
    );

    // Relabeling, run on the targets kubernetes_sd gives: a bridge pod's metrics port is
    // kept and labelled with its node only; its other ports and other pods are dropped.
    let metrics_port = resolve_port(ds, &json!("metrics")).expect("a metrics port");
    let meta = |port_name: &str, port: u64, app: &str| {
        let mut t = json!({
            "__address__": format!("10.1.2.3:{port}"),
            "__meta_kubernetes_namespace": NAMESPACE,
            "__meta_kubernetes_pod_name": "statsd-bridge-x7k2p",
            "__meta_kubernetes_pod_ip": "10.1.2.3",
            "__meta_kubernetes_pod_node_name": "node-a",
            "__meta_kubernetes_pod_container_name": "statsd-bridge",
            "__meta_kubernetes_pod_container_port_name": port_name,
            "__meta_kubernetes_pod_container_port_number": port.to_string(),
            "__meta_kubernetes_pod_ready": "true",
        });
        for (k, v) in pod_labels.as_object().expect("labels") {
            let key = format!(
                "__meta_kubernetes_pod_label_{}",
                k.replace(['.', '/', '-'], "_")
            );
            t[key] = if k == "app.kubernetes.io/name" {
                json!(app)
            } else {
                v.clone()
            };
        }
        t
    };
    let targets = json!([
        meta(
            "metrics",
            metrics_port["containerPort"].as_u64().unwrap_or_default(),
            "statsd-bridge"
        ),
        meta("statsd-udp", 8125, "statsd-bridge"),
        meta("statsd-tcp", 8125, "statsd-bridge"),
        meta("metrics", 9102, "something-else"),
    ]);
    let request = json!({"configs": job["relabel_configs"], "targets": targets});
    let results = py("relabel", &request.to_string(), "relabeling");
    let finish = |labels: &Value| -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = labels
            .as_object()
            .expect("labels")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        let address = out.get("__address__").cloned().unwrap_or_default();
        out.entry("instance".into()).or_insert(address);
        out.entry("job".into())
            .or_insert_with(|| "statsd-bridge".into());
        out.retain(|k, _| !k.starts_with("__"));
        out
    };
    let results = results.as_array().expect("a list");
    assert!(
        results[1].is_null() && results[2].is_null(),
        "the StatsD ports are not scraped: {results:?}"
    );
    assert!(
        results[3].is_null(),
        "other pods are not scraped: {results:?}"
    );
    let labels = finish(&results[0]);
    assert_eq!(
        labels,
        BTreeMap::from([
            ("instance".to_owned(), "10.1.2.3:9102".to_owned()),
            ("job".to_owned(), "statsd-bridge".to_owned()),
            ("node".to_owned(), "node-a".to_owned()),
        ]),
        "a bridge target keeps job, instance and node, and gets no namespace or pod of its own"
    );

    // promtool reads the rest of the config (Debian's is built without kubernetes_sd, so
    // the SD block becomes a static target for it).
    let mut for_promtool = config.clone();
    for j in for_promtool["scrape_configs"].as_array_mut().expect("jobs") {
        if let Some(obj) = j.as_object_mut()
            && obj.remove("kubernetes_sd_configs").is_some()
        {
            obj.insert(
                "static_configs".into(),
                json!([{"targets": ["10.1.2.3:9102"]}]),
            );
        }
    }
    promtool_check_config(
        &serde_json::to_string_pretty(&for_promtool).expect("JSON"),
        "deploy/prometheus/prometheus.yml",
    );

    // The adapter asks this Prometheus through its Service.
    let svc = build.get("Service", NAMESPACE, "prometheus");
    let adapter = container_named(
        build.get("Deployment", NAMESPACE, "prom-adapter"),
        "prom-adapter",
    );
    let url = flag(adapter, "--prometheus-url");
    let port = svc["spec"]["ports"][0]["port"].as_u64().unwrap_or_default();
    assert_eq!(
        url,
        format!("http://prometheus.{NAMESPACE}.svc:{port}/"),
        "the adapter's --prometheus-url"
    );
}

/// `promtool check config` on `text` (YAML; JSON is YAML too).
fn promtool_check_config(text: &str, what: &str) {
    let promtool = require_program("promtool", PROMETHEUS_HINT);
    let dir = TempDir::new().expect("a temp dir");
    let file = dir.path().join("prometheus.yml");
    std::fs::write(&file, text).expect("writing prometheus.yml");
    let mut cmd = Command::new(promtool);
    cmd.args(["check", "config"]).arg(&file);
    let run = run_command("promtool", cmd, None, limit()).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(run.success(), "{what}: promtool check config fails:\n{run}");
}

// ------------------------------------------------------------------------------------------
// deploy/: prom-adapter

#[test]
fn manifests_adapter_apiservices_rbac_probes_and_policy() {
    let build = kustomize("deploy/base");
    let deploy = build.get("Deployment", NAMESPACE, "prom-adapter");
    let spec = pod_spec(deploy);
    let c = container_named(deploy, "prom-adapter");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let anti = &spec["affinity"]["podAntiAffinity"];
    let term = &anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"];
    assert_eq!(
        term["topologyKey"], "kubernetes.io/hostname",
        "pod anti-affinity: {anti}"
    );
    assert!(
        selects(
            &term["labelSelector"],
            &deploy["spec"]["template"]["metadata"]["labels"]
        ),
        "{anti}"
    );

    // The HTTPS port: --secure-port, the container port, both probes, the Service.
    let secure_port: u64 = flag(c, "--secure-port").parse().expect("a port number");
    assert_eq!(secure_port, 6443);
    let https = resolve_port(deploy, &json!("https")).expect("an https port");
    assert_eq!(https["containerPort"], secure_port);
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(
            (&get["path"], &get["scheme"]),
            (&json!(path), &json!("HTTPS")),
            "{probe}: {get}"
        );
        assert_eq!(probe_port(c, &get["port"]), secure_port, "{probe}: {get}");
    }
    let svc = build.get("Service", NAMESPACE, "prom-adapter");
    let port = &svc["spec"]["ports"][0];
    assert_eq!(port["port"], 443);
    assert_eq!(
        resolve_port(deploy, &port["targetPort"]).map(|p| p["containerPort"].clone()),
        Some(json!(6443))
    );

    // The three APIServices, backed by that Service.
    let mut seen = BTreeSet::new();
    for api in build.all("APIService") {
        let s = &api["spec"];
        let group = s["group"].as_str().unwrap_or_default();
        let version = s["version"].as_str().unwrap_or_default();
        assert_eq!(
            name(api),
            format!("{version}.{group}"),
            "APIService names are version.group"
        );
        assert_eq!(
            (&s["service"]["name"], &s["service"]["namespace"]),
            (&json!("prom-adapter"), &json!(NAMESPACE))
        );
        assert_eq!(
            s["insecureSkipTLSVerify"], true,
            "the self-signed default skips verification"
        );
        assert!(s.get("caBundle").is_none());
        assert!(
            s["groupPriorityMinimum"].as_u64().is_some() && s["versionPriority"].as_u64().is_some()
        );
        seen.insert(name(api).to_owned());
    }
    assert_eq!(
        seen,
        BTreeSet::from([
            "v1beta1.custom.metrics.k8s.io".to_owned(),
            "v1beta2.custom.metrics.k8s.io".to_owned(),
            "v1beta1.external.metrics.k8s.io".to_owned(),
        ])
    );

    // RBAC: auth-delegator, the authentication ConfigMap reader, the watched objects.
    let sa = spec["serviceAccountName"]
        .as_str()
        .expect("a ServiceAccount");
    let binds = |kind_: &str, role: &str| {
        build.all(kind_).into_iter().any(|b| {
            b["roleRef"]["name"] == role
                && b["subjects"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|s| s["name"] == sa && s["namespace"] == NAMESPACE)
        })
    };
    assert!(
        binds("ClusterRoleBinding", "system:auth-delegator"),
        "no auth-delegator binding"
    );
    let reader = build
        .all("RoleBinding")
        .into_iter()
        .find(|b| b["roleRef"]["name"] == "extension-apiserver-authentication-reader")
        .expect("the extension-apiserver-authentication-reader binding");
    assert_eq!(namespace(reader), "kube-system");
    assert!(binds(
        "RoleBinding",
        "extension-apiserver-authentication-reader"
    ));

    // The watch cache lists and watches pods, namespaces and every resource a rule maps.
    let rules_text = build.mounted_file(deploy, "prom-adapter", flag(c, "--config"));
    let rules = yaml_doc(&rules_text, "the adapter's rules");
    let mut watched: BTreeSet<(String, String)> = BTreeSet::from([
        (String::new(), "pods".to_owned()),
        (String::new(), "namespaces".to_owned()),
    ]);
    for rule in ["rules", "externalRules"]
        .iter()
        .flat_map(|k| rules[*k].as_array().into_iter().flatten())
    {
        for target in rule["resources"]["overrides"]
            .as_object()
            .into_iter()
            .flat_map(|o| o.values())
        {
            let resource = target["resource"].as_str().expect("an override's resource");
            let plural = if resource.ends_with('s') {
                resource.to_owned()
            } else {
                format!("{resource}s")
            };
            watched.insert((
                target["group"].as_str().unwrap_or_default().to_owned(),
                plural,
            ));
        }
    }
    for (group, resource) in &watched {
        let verbs = granted(&build, NAMESPACE, sa, group, resource);
        assert!(
            verbs.contains("list") && verbs.contains("watch"),
            "the adapter watches {group}/{resource} but may not list and watch it: {verbs:?}"
        );
    }

    // The HPA controller may read both metric groups.
    for group in ["custom.metrics.k8s.io", "external.metrics.k8s.io"] {
        let verbs = granted(
            &build,
            "kube-system",
            "horizontal-pod-autoscaler",
            group,
            "anything",
        );
        assert!(
            verbs.contains("get") && verbs.contains("list"),
            "the HPA controller can't read {group}: {verbs:?}"
        );
    }

    // PodDisruptionBudget and NetworkPolicy.
    let pdb = build.get("PodDisruptionBudget", NAMESPACE, "prom-adapter");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let policy = build.get("NetworkPolicy", NAMESPACE, "prom-adapter");
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    let ingress = policy["spec"]["ingress"].as_array().expect("ingress rules");
    assert!(
        ingress
            .iter()
            .any(|r| r.get("from").is_none()
                && r["ports"] == json!([{"port": 6443, "protocol": "TCP"}])),
        "the apiserver may reach 6443 from wherever it runs: {ingress:?}"
    );
    let egress = policy["spec"]["egress"].as_array().expect("egress rules");
    let egress_ports: BTreeSet<u64> = egress
        .iter()
        .flat_map(|r| r["ports"].as_array().into_iter().flatten())
        .filter_map(|p| p["port"].as_u64())
        .collect();
    for port in [9090, 53, 443, 6443] {
        assert!(
            egress_ports.contains(&port),
            "egress to port {port} (Prometheus, DNS, the apiserver): {egress:?}"
        );
    }
    let prom_rule = &egress[0];
    let prometheus = build.get("Deployment", NAMESPACE, "prometheus");
    assert!(selects(
        &prom_rule["to"][0]["podSelector"],
        &prometheus["spec"]["template"]["metadata"]["labels"]
    ));
}

#[test]
fn manifests_adapter_rules_pass_check_config_and_compose_serves_the_same() {
    let build = kustomize("deploy/base");
    let deploy = build.get("Deployment", NAMESPACE, "prom-adapter");
    let c = container_named(deploy, "prom-adapter");
    let rules = build.mounted_file(deploy, "prom-adapter", flag(c, "--config"));
    adapter_check_config(&rules, "deploy/prom-adapter/rules.yaml");
    let compose_rules = read("compose/adapter/rules.yaml");
    adapter_check_config(&compose_rules, "compose/adapter/rules.yaml");
    assert_eq!(
        yaml_doc(&rules, "deploy rules"),
        yaml_doc(&compose_rules, "compose rules"),
        "compose/adapter/rules.yaml must hold the cluster's rules (deploy/prom-adapter/rules.yaml)"
    );
}

#[test]
fn manifests_adapter_starts_with_the_deployment_args_of_each_variant() {
    let pki = Pki::generate().expect("generating certificates");
    for dir in [
        "deploy/base",
        "deploy/overlays/external-prometheus",
        "deploy/overlays/cert-manager",
        "deploy/overlays/resource-metrics",
    ] {
        let build = kustomize(dir);
        let deploy = build.get("Deployment", NAMESPACE, "prom-adapter");
        let c = container_named(deploy, "prom-adapter");
        assert_eq!(c["command"], json!(["/usr/local/bin/prom-adapter"]));
        let args: Vec<&str> = c["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            !args.contains(&"--insecure-dev"),
            "{dir}: never --insecure-dev in a cluster"
        );
        let rules = build.mounted_file(deploy, "prom-adapter", flag(c, "--config"));
        let tls = args
            .iter()
            .any(|a| a.starts_with("--tls-cert-file="))
            .then_some((
                pki.serving.cert.as_path(),
                pki.serving.key.as_path(),
                pki.serving_ca.as_path(),
            ));
        adapter_runs_with(&args, &rules, tls, dir);
    }
}

#[test]
fn manifests_external_prometheus_overlay_drops_the_bundled_one_and_repoints_the_adapter() {
    let base = kustomize("deploy/base");
    let overlay = kustomize("deploy/overlays/external-prometheus");
    for doc in &overlay.docs {
        assert!(
            doc["metadata"]["labels"]["app.kubernetes.io/name"] != "prometheus",
            "the bundled Prometheus is left out: {}",
            id(doc)
        );
    }
    let deploy = overlay.get("Deployment", NAMESPACE, "prom-adapter");
    let url = flag(container_named(deploy, "prom-adapter"), "--prometheus-url");
    assert!(
        !url.contains(&format!("prometheus.{NAMESPACE}.svc")),
        "--prometheus-url still the bundled one: {url}"
    );
    let policy = overlay.get("NetworkPolicy", NAMESPACE, "prom-adapter");
    let to = &policy["spec"]["egress"][0]["to"][0];
    assert!(
        to.get("namespaceSelector").is_some() && to.get("podSelector").is_none(),
        "egress to Prometheus: {to}"
    );
    // Everything else is base's (images, bridge, APIServices, RBAC).
    let same = |b: &Build, k: &str, n: &str| {
        b.docs
            .iter()
            .find(|d| kind(d) == k && name(d) == n)
            .cloned()
    };
    for (k, n) in [
        ("DaemonSet", "statsd-bridge"),
        ("APIService", "v1beta1.custom.metrics.k8s.io"),
    ] {
        assert_eq!(
            same(&overlay, k, n),
            same(&base, k, n),
            "{k} {n} differs from deploy/base"
        );
    }
}

/// The name of the APIService `deploy/overlays/resource-metrics` adds (metrics-server's).
const RESOURCE_METRICS_API: &str = "v1beta1.metrics.k8s.io";

#[test]
fn manifests_resource_metrics_overlay_registers_metrics_k8s_io_with_the_adapter() {
    let base = kustomize("deploy/base");
    let overlay = kustomize("deploy/overlays/resource-metrics");
    // Only the overlay takes metrics.k8s.io over: applying base must leave metrics-server's.
    assert!(
        base.try_get("APIService", "", RESOURCE_METRICS_API)
            .is_none(),
        "deploy/base must not register {RESOURCE_METRICS_API}"
    );
    let api = overlay.get("APIService", "", RESOURCE_METRICS_API);
    assert_eq!(api["apiVersion"], "apiregistration.k8s.io/v1", "{api}");
    let s = &api["spec"];
    assert_eq!(
        (&s["group"], &s["version"]),
        (&json!("metrics.k8s.io"), &json!("v1beta1")),
        "{api}"
    );
    // Pointing at the adapter's Service, on the port that leads to its HTTPS port.
    assert_eq!(
        (
            &s["service"]["name"],
            &s["service"]["namespace"],
            &s["service"]["port"]
        ),
        (&json!("prom-adapter"), &json!(NAMESPACE), &json!(443)),
        "{api}"
    );
    let svc = overlay.get("Service", NAMESPACE, "prom-adapter");
    let deploy = overlay.get("Deployment", NAMESPACE, "prom-adapter");
    assert!(
        selects(
            &svc["spec"]["selector"],
            &deploy["spec"]["template"]["metadata"]["labels"]
        ),
        "{} must select the adapter's pods",
        id(svc)
    );
    let port = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["port"] == 443)
        .unwrap_or_else(|| panic!("{} has no port 443", id(svc)));
    let target = resolve_port(deploy, &port["targetPort"]).map(|p| p["containerPort"].clone());
    let secure_port: u64 = flag(container_named(deploy, "prom-adapter"), "--secure-port")
        .parse()
        .expect("a port number");
    assert_eq!(target, Some(json!(secure_port)), "{}", id(svc));
    assert_eq!(s["insecureSkipTLSVerify"], true, "as the base's: {api}");
    assert!(
        s["groupPriorityMinimum"].as_u64().is_some() && s["versionPriority"].as_u64().is_some(),
        "{api}"
    );
    // The base's three APIServices are there unchanged: the overlay adds the fourth.
    let names = |b: &Build| -> BTreeSet<String> {
        b.all("APIService")
            .into_iter()
            .map(|a| name(a).to_owned())
            .collect()
    };
    let mut want = names(&base);
    assert_eq!(want.len(), 3, "deploy/base: {want:?}");
    want.insert(RESOURCE_METRICS_API.to_owned());
    assert_eq!(names(&overlay), want);
    for a in base.all("APIService") {
        assert_eq!(
            overlay.try_get("APIService", "", name(a)),
            Some(a),
            "APIService {} differs from deploy/base",
            name(a)
        );
    }
}

#[test]
fn manifests_cert_manager_overlay_issues_the_adapters_serving_certificate() {
    let build = kustomize("deploy/overlays/cert-manager");
    // The cert-manager documents kubernetes-validate can't check: their fields, here.
    for doc in &build.docs {
        if doc["apiVersion"]
            .as_str()
            .is_some_and(|a| a.starts_with("cert-manager.io/"))
        {
            assert_eq!(doc["apiVersion"], "cert-manager.io/v1", "{}", id(doc));
            assert!(matches!(kind(doc), "Certificate" | "Issuer"), "{}", id(doc));
            assert_eq!(namespace(doc), NAMESPACE, "{}", id(doc));
            let spec = doc["spec"]
                .as_object()
                .unwrap_or_else(|| panic!("{} has no spec", id(doc)));
            let allowed: &[&str] = if kind(doc) == "Issuer" {
                &["selfSigned", "ca"]
            } else {
                &[
                    "secretName",
                    "dnsNames",
                    "commonName",
                    "isCA",
                    "duration",
                    "renewBefore",
                    "privateKey",
                    "usages",
                    "issuerRef",
                ]
            };
            for key in spec.keys() {
                assert!(
                    allowed.contains(&key.as_str()),
                    "{}: unexpected spec.{key}",
                    id(doc)
                );
            }
        }
    }
    let deploy = build.get("Deployment", NAMESPACE, "prom-adapter");
    let c = container_named(deploy, "prom-adapter");
    let cert_file = flag(c, "--tls-cert-file");
    let key_file = flag(c, "--tls-private-key-file");
    assert!(
        !c["args"]
            .as_array()
            .expect("args")
            .iter()
            .any(|a| a.as_str().is_some_and(|a| a.starts_with("--cert-dir"))),
        "--cert-dir goes when the certificate is given"
    );
    let (cert_dir, cert_name) = cert_file.rsplit_once('/').expect("a path");
    let (key_dir, key_name) = key_file.rsplit_once('/').expect("a path");
    assert_eq!(
        (cert_dir, cert_name, key_name),
        (key_dir, "tls.crt", "tls.key"),
        "the Secret's files"
    );
    let mount = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"] == cert_dir)
        .expect("the certificate's mount");
    let volume = volume_named(deploy, mount["name"].as_str().unwrap_or_default());
    assert!(
        volume.get("emptyDir").is_none(),
        "the volume is the Secret only: {volume}"
    );
    let secret = volume["secret"]["secretName"]
        .as_str()
        .expect("a Secret volume");

    // The serving Certificate fills that Secret, for the Service's DNS name, from a CA
    // issuer whose CA certificate cert-manager makes too.
    let serving = build
        .all("Certificate")
        .into_iter()
        .find(|c| c["spec"]["secretName"] == secret)
        .expect("a Certificate for the adapter's Secret");
    let dns = serving["spec"]["dnsNames"].as_array().expect("dnsNames");
    assert!(
        dns.contains(&json!(format!("prom-adapter.{NAMESPACE}.svc"))),
        "{dns:?}"
    );
    assert!(
        serving["spec"]["usages"]
            .as_array()
            .is_some_and(|u| u.contains(&json!("server auth")))
    );
    let issuer = build.get(
        "Issuer",
        NAMESPACE,
        serving["spec"]["issuerRef"]["name"]
            .as_str()
            .unwrap_or_default(),
    );
    let ca_secret = issuer["spec"]["ca"]["secretName"]
        .as_str()
        .expect("a CA issuer");
    let ca = build
        .all("Certificate")
        .into_iter()
        .find(|c| c["spec"]["secretName"] == ca_secret)
        .expect("the CA Certificate");
    assert_eq!(ca["spec"]["isCA"], true);
    let root = build.get(
        "Issuer",
        NAMESPACE,
        ca["spec"]["issuerRef"]["name"].as_str().unwrap_or_default(),
    );
    assert!(
        root["spec"].get("selfSigned").is_some(),
        "the CA is self-signed: {root}"
    );

    // Every APIService verifies the adapter with the CA injected from that Certificate.
    let apis = build.all("APIService");
    assert_eq!(apis.len(), 3);
    for api in apis {
        assert!(
            api["spec"].get("insecureSkipTLSVerify").is_none(),
            "{}: still skips verification",
            name(api)
        );
        assert_eq!(
            api["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            format!("{NAMESPACE}/{}", name(serving)),
            "{}: caBundle injected from the serving Certificate",
            name(api)
        );
    }
}

// ------------------------------------------------------------------------------------------
// deploy/example: the HPA and the app

/// The example's HPA metrics: (Pods metric name, External metric name, its matchLabels).
fn example_hpa_metrics(build: &Build) -> (String, String, BTreeMap<String, String>) {
    let hpa = build.get("HorizontalPodAutoscaler", EXAMPLE_NAMESPACE, "web");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    let metrics = hpa["spec"]["metrics"].as_array().expect("metrics");
    let by_type = |t: &str| -> &Value {
        metrics
            .iter()
            .find(|m| m["type"] == t)
            .unwrap_or_else(|| panic!("the HPA has no {t} metric: {metrics:?}"))
    };
    let pods = by_type("Pods");
    let external = by_type("External");
    let pods_name = pods["pods"]["metric"]["name"]
        .as_str()
        .expect("a Pods metric name")
        .to_owned();
    assert_eq!(pods["pods"]["target"]["type"], "AverageValue");
    let ext_name = external["external"]["metric"]["name"]
        .as_str()
        .expect("an External metric name")
        .to_owned();
    let selector: BTreeMap<String, String> =
        external["external"]["metric"]["selector"]["matchLabels"]
            .as_object()
            .expect("an External metric selector")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
    (pods_name, ext_name, selector)
}

#[test]
fn manifests_example_hpa_behavior_and_app_wiring() {
    let build = kustomize("deploy/example");
    let hpa = build.get("HorizontalPodAutoscaler", EXAMPLE_NAMESPACE, "web");
    let behavior = &hpa["spec"]["behavior"];
    for direction in ["scaleUp", "scaleDown"] {
        let policies = behavior[direction]["policies"]
            .as_array()
            .unwrap_or_else(|| panic!("no {direction} policies: {behavior}"));
        assert!(
            !policies.is_empty() && behavior[direction]["stabilizationWindowSeconds"].is_u64(),
            "{direction}: {behavior}"
        );
    }
    let (pods_metric, ext_metric, selector) = example_hpa_metrics(&build);
    assert_eq!(
        (pods_metric.as_str(), ext_metric.as_str()),
        ("requests_per_second", "queue_depth")
    );
    assert_eq!(
        selector,
        BTreeMap::from([("queue".to_owned(), "orders".to_owned())])
    );

    // The app sends to its node's bridge: DD_AGENT_HOST is the host IP, the port the
    // bridge's hostPort; its pods carry the label the bridge copies (pod_labels = ["app"]).
    let web = build.get("Deployment", EXAMPLE_NAMESPACE, "web");
    let c = container_named(web, "web");
    let env: BTreeMap<&str, &Value> = c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (e["name"].as_str().unwrap_or_default(), e))
        .collect();
    assert_eq!(
        env["DD_AGENT_HOST"]["valueFrom"]["fieldRef"]["fieldPath"],
        "status.hostIP"
    );
    let base = kustomize("deploy/base");
    let ds = base.get("DaemonSet", NAMESPACE, "statsd-bridge");
    let host_port =
        resolve_port(ds, &json!("statsd-udp")).expect("the UDP port")["hostPort"].to_string();
    assert_eq!(env["DD_DOGSTATSD_PORT"]["value"], host_port);
    assert!(web["spec"]["template"]["metadata"]["labels"]["app"].is_string());
    // The app counts its peers through the headless Service.
    let peers = env["PEERS"]["value"].as_str().expect("PEERS");
    let svc = build.get(
        "Service",
        EXAMPLE_NAMESPACE,
        peers.split('.').next().unwrap_or_default(),
    );
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert!(peers.starts_with(&format!("{}.{EXAMPLE_NAMESPACE}.svc", name(svc))));
    assert_eq!(
        c["command"],
        json!(["python", "-u", "/app/app.py"]),
        "the app runs the script mounted from the ConfigMap"
    );
    let script = build.mounted_file(web, "web", "/app/app.py");
    assert_eq!(script, read("deploy/example/app.py"));
    let ns = build.get("Namespace", "", EXAMPLE_NAMESPACE);
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
}

#[test]
fn manifests_example_app_lines_reach_its_hpa_through_the_shipped_rules() {
    // What the example app sends (its own script, run here against a local socket).
    let lines = capture_dogstatsd(
        "deploy/example/app.py",
        &[("PEERS", "")],
        &has_counter_and_queue_gauge,
    );
    let parsed: Vec<_> = lines.iter().map(|l| parse_line(l)).collect();
    let counter_name = parsed
        .iter()
        .find(|(_, ty, _)| ty == "c")
        .map(|(n, _, _)| n.clone())
        .expect("a counter");
    let (gauge_name, _, gauge_tags) = parsed
        .iter()
        .find(|(_, ty, tags)| ty == "g" && tags.contains_key("queue"))
        .cloned()
        .expect("a queue gauge");

    let example = kustomize("deploy/example");
    let (pods_metric, ext_metric, selector) = example_hpa_metrics(&example);
    assert_eq!(
        Some(&selector["queue"]),
        gauge_tags.get("queue"),
        "the app's gauge carries the queue the HPA selects"
    );
    let base = kustomize("deploy/base");
    let deploy = base.get("Deployment", NAMESPACE, "prom-adapter");
    let rules = base.mounted_file(
        deploy,
        "prom-adapter",
        flag(container_named(deploy, "prom-adapter"), "--config"),
    );

    // Those series as the bridge exposes them from two pods of the example (origin labels
    // namespace, pod and app added), scraped by a real Prometheus, read by the adapter with
    // the shipped rules.
    let ns = EXAMPLE_NAMESPACE;
    let pod = |p: &'static str| {
        [
            ("namespace", ns),
            ("pod", p),
            ("app", "web"),
            ("route", "/checkout"),
        ]
    };
    let queue = gauge_tags["queue"].as_str();
    let series: Vec<ExportedSeries> = vec![
        counter(&counter_name, &pod("web-0"), 12.0),
        counter(&counter_name, &pod("web-1"), 8.0),
        gauge(
            &gauge_name,
            &[
                ("namespace", ns),
                ("pod", "web-0"),
                ("app", "web"),
                ("queue", queue),
            ],
            40.0,
        ),
        gauge(
            &gauge_name,
            &[
                ("namespace", ns),
                ("pod", "web-1"),
                ("app", "web"),
                ("queue", queue),
            ],
            20.0,
        ),
        // The same counter from a sender without origin labels (a hostNetwork pod): no pod.
        counter(&counter_name, &[("route", "/checkout")], 100.0),
    ];
    let exporter = Exporter::start_with_history(series, Duration::from_secs(150));
    let instance = exporter.addr().to_string();
    let job = "statsd-bridge";
    let history =
        exporter.counter_history(&[("job", job), ("instance", &instance)], SystemTime::now());
    let prom = Prometheus::start_job_backfilled(job, &[exporter.addr()], &history);
    prom.wait_targets_up(1);
    eventually("two samples of each series in Prometheus", PATIENCE, || {
        for (metric, n) in [(&counter_name, 3), (&gauge_name, 2)] {
            let counts = prom.query(&format!("count_over_time({metric}[1m])"))?;
            let ready = counts.iter().filter(|s| s.value >= 2.0).count();
            ensure!(
                ready == n,
                "{ready} of {n} {metric} series have two samples"
            );
        }
        Ok(())
    });
    let dir = TempDir::new().expect("a temp dir");
    let rules_path = dir.path().join("rules.yaml");
    std::fs::write(&rules_path, &rules).expect("writing the rules");
    let adapter = Adapter::start(&rules_path, &prom.url(), &[]);

    let path = format!("{CUSTOM_V2}/namespaces/{ns}/pods/*/{pods_metric}");
    let items = eventually(&format!("GET {path}"), PATIENCE, || {
        let list = adapter.get_json(&path)?;
        let items = check_metric_list(
            &list,
            "v1beta2",
            &pods_metric,
            "Pod",
            Some(ns),
            &Value::Null,
        );
        ensure!(items.len() == 2, "expected web-0 and web-1, got {list}");
        Ok(items)
    });
    for item in &items {
        let want = if item.name == "web-0" { 12.0 } else { 8.0 };
        let got = quantity_value(&item.value).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(
            (got - want).abs() <= 0.02 * want,
            "{}: {pods_metric} = {} (want {want}/s)",
            item.name,
            item.value
        );
    }
    let sel: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let path = format!(
        "{EXTERNAL_V1}/namespaces/{ns}/{ext_metric}?labelSelector={}",
        url_encode(&sel.join(","))
    );
    let by_queue = eventually(&format!("GET {path}"), PATIENCE, || {
        let list = adapter.get_json(&path)?;
        Ok(check_external_list(&list, &path, &ext_metric, "queue"))
    });
    assert_eq!(
        by_queue,
        BTreeMap::from([(queue.to_owned(), "60".to_owned())]),
        "GET {path}: the queue's depth summed over the pods"
    );
}

// ------------------------------------------------------------------------------------------
// compose/

/// compose/compose.yaml, parsed.
fn compose() -> Value {
    yaml_doc(&read("compose/compose.yaml"), "compose/compose.yaml")
}

fn service<'a>(compose: &'a Value, name_: &str) -> &'a Value {
    let s = &compose["services"][name_];
    assert!(s.is_object(), "compose.yaml has no service {name_}");
    s
}

/// The stage names (`FROM … AS name`) of a Dockerfile.
fn dockerfile_stages(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            match words.as_slice() {
                ["FROM", _, as_, stage] if as_.eq_ignore_ascii_case("as") => {
                    Some((*stage).to_owned())
                }
                _ => None,
            }
        })
        .collect()
}

#[test]
fn manifests_compose_file_mounts_builds_images_and_ports() {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    for want in ["statsd-bridge", "prometheus", "prom-adapter", "loadgen"] {
        assert!(
            services.contains_key(want),
            "compose.yaml lacks {want}: {:?}",
            services.keys()
        );
    }
    let base = repo("compose");
    for (svc_name, svc) in services {
        let what = format!("compose service {svc_name}");
        // A pinned image (ours are built here and named like deploy/'s).
        let image = svc["image"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no image"));
        let (repo_, tag) = image
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("{what}: {image} has no tag"));
        assert!(
            !tag.is_empty() && tag != "latest",
            "{what}: {image} is not pinned"
        );
        if let Some(build) = svc.get("build") {
            let context = base.join(
                build["context"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{what}: no context")),
            );
            let dockerfile = context.join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
            let text = std::fs::read_to_string(&dockerfile)
                .unwrap_or_else(|e| panic!("{what}: {}: {e}", dockerfile.display()));
            if let Some(target) = build["target"].as_str() {
                assert!(
                    dockerfile_stages(&text).iter().any(|s| s == target),
                    "{what}: no stage {target}"
                );
                assert_eq!(
                    repo_, target,
                    "{what}: the image is named after its stage, as in deploy/"
                );
                assert!(OWN_IMAGES.contains(&repo_), "{what}: {repo_}");
            }
        } else {
            assert!(
                tag.chars().filter(|c| *c == '.').count() >= 2,
                "{what}: {image} needs a full version"
            );
        }
        // Every bind mount exists.
        for volume in svc["volumes"].as_array().into_iter().flatten() {
            let spec = volume
                .as_str()
                .unwrap_or_else(|| panic!("{what}: long-form volume {volume}"));
            let source = spec.split(':').next().unwrap_or_default();
            if source.starts_with('.') || source.starts_with('/') {
                assert!(
                    base.join(source).exists(),
                    "{what}: mounts {source}, which doesn't exist"
                );
            } else {
                assert!(
                    compose["volumes"].get(source).is_some(),
                    "{what}: undeclared volume {source}"
                );
            }
        }
        // Published ports stay on the loopback interface.
        for port in svc["ports"].as_array().into_iter().flatten() {
            let port = port
                .as_str()
                .unwrap_or_else(|| panic!("{what}: write ports as strings: {port}"));
            assert!(
                port.starts_with("127.0.0.1:"),
                "{what}: {port} is published beyond localhost"
            );
        }
        assert_eq!(svc["read_only"], true, "{what}: read_only");
        assert_eq!(svc["cap_drop"], json!(["ALL"]), "{what}: cap_drop");
    }

    // Wiring: the loadgen sends to the bridge, Prometheus scrapes it, the adapter asks
    // Prometheus, and the bridge's static origin table names the loadgen's address.
    let bridge_config = toml_doc(
        &read("compose/bridge/pipeline.toml"),
        "compose/bridge/pipeline.toml",
    );
    let loadgen = service(&compose, "loadgen");
    assert_eq!(loadgen["environment"]["DD_AGENT_HOST"], "statsd-bridge");
    let loadgen_ip = loadgen["networks"]["pipeline"]["ipv4_address"]
        .as_str()
        .expect("the loadgen's fixed address");
    let origin = &bridge_config["bridge"]["origin"];
    assert_eq!(origin["mode"], "static");
    let entry = origin["static"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["source"] == loadgen_ip)
        .unwrap_or_else(|| {
            panic!("no static origin entry for the loadgen's {loadgen_ip}: {origin}")
        });
    for label in ["namespace", "pod"] {
        assert!(
            entry["labels"][label].is_string(),
            "the loadgen's origin labels need {label}: {entry}"
        );
    }
    let bridge = service(&compose, "statsd-bridge");
    let config_flag = bridge["command"][0]
        .as_str()
        .expect("the bridge's --config");
    let config_in_container = config_flag.strip_prefix("--config=").expect("--config=");
    assert!(
        bridge["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| v == &json!(format!("./bridge/pipeline.toml:{config_in_container}:ro"))),
        "the bridge reads compose/bridge/pipeline.toml"
    );
    let prom_config = yaml_doc(
        &read("compose/prometheus/prometheus.yml"),
        "compose prometheus.yml",
    );
    let job = &prom_config["scrape_configs"][0];
    assert_eq!(job["honor_labels"], true);
    let web_port = bridge_config["bridge"]["web_listen"]
        .as_str()
        .and_then(|w| w.rsplit_once(':'))
        .map(|(_, p)| p)
        .expect("web_listen");
    assert_eq!(
        job["static_configs"][0]["targets"],
        json!([format!("statsd-bridge:{web_port}")])
    );
    let adapter = service(&compose, "prom-adapter");
    let args: Vec<&str> = adapter["command"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        args.contains(&"--prometheus-url=http://prometheus:9090/"),
        "{args:?}"
    );
    let network = &compose["networks"]["pipeline"]["ipam"]["config"][0]["subnet"];
    assert_eq!(
        network, "172.28.0.0/24",
        "the fixed addresses lie in the network's subnet"
    );
}

#[test]
fn manifests_compose_prometheus_and_adapter_configs_pass_their_checks() {
    promtool_check_config(
        &read("compose/prometheus/prometheus.yml"),
        "compose/prometheus/prometheus.yml",
    );
    let compose = compose();
    let adapter = service(&compose, "prom-adapter");
    let args: Vec<&str> = adapter["command"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    // compose's adapter runs outside a cluster: --insecure-dev, its self-signed certificate.
    assert!(args.contains(&"--insecure-dev"));
    adapter_runs_with(
        &args,
        &read("compose/adapter/rules.yaml"),
        None,
        "compose's prom-adapter",
    );
}

#[test]
fn manifests_compose_bridge_config_passes_check_config() {
    bridge_check_config(
        &read("compose/bridge/pipeline.toml"),
        "pipeline.toml",
        "compose/bridge/pipeline.toml",
    );
}

#[test]
fn manifests_compose_loadgen_sends_what_the_example_app_sends() {
    let loadgen = capture_dogstatsd(
        "compose/loadgen/loadgen.py",
        &[],
        &has_counter_and_queue_gauge,
    );
    let app = capture_dogstatsd(
        "deploy/example/app.py",
        &[("PEERS", "")],
        &has_counter_and_queue_gauge,
    );
    let shape = |lines: &[String]| -> BTreeSet<(String, String, BTreeSet<String>)> {
        lines
            .iter()
            .map(|l| {
                let (n, ty, tags) = parse_line(l);
                (n, ty, tags.into_keys().collect())
            })
            .collect()
    };
    assert_eq!(
        shape(&loadgen),
        shape(&app),
        "compose's loadgen (the Datadog client) and the example app must send the same metrics, \
         so the shared rules serve both; loadgen: {loadgen:?}; app: {app:?}"
    );
}

// ------------------------------------------------------------------------------------------
// Dockerfile

#[test]
fn manifests_dockerfile_builds_both_images_with_the_pinned_toolchain() {
    let text = read("Dockerfile");
    let stages = dockerfile_stages(&text);
    for image in OWN_IMAGES {
        assert!(
            stages.iter().any(|s| s == image),
            "the Dockerfile has no stage {image}: {stages:?}"
        );
        assert!(
            text.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{image}\"]")),
            "stage {image} runs /usr/local/bin/{image}"
        );
    }
    let toolchain = read("rust-toolchain.toml");
    let channel = toolchain
        .lines()
        .find_map(|l| l.strip_prefix("channel = "))
        .map(|c| c.trim().trim_matches('"'))
        .expect("a channel in rust-toolchain.toml");
    assert!(
        text.contains(&format!("FROM rust:{channel}-")),
        "the builder image must be rust:{channel}, the toolchain rust-toolchain.toml pins"
    );
    assert!(
        text.contains("USER 65532:65532"),
        "the runtime runs as the user the manifests expect"
    );
    let ignore = read(".dockerignore");
    for excluded in ["target", ".git", ".venv"] {
        assert!(
            ignore.lines().any(|l| l.trim() == excluded),
            ".dockerignore must leave out {excluded}"
        );
    }
    // Every image the manifests run is ours or pinned (see check_hardening); ours run as
    // the Dockerfile's user.
    let build = kustomize("deploy/base");
    for w in build.workloads() {
        let spec = pod_spec(w);
        for c in all_containers(w) {
            let image = c["image"].as_str().unwrap_or_default();
            if OWN_IMAGES
                .iter()
                .any(|i| image.starts_with(&format!("{i}:")))
                && c["name"] != ROOT_INIT_CONTAINER
            {
                let uid = c["securityContext"]
                    .get("runAsUser")
                    .or_else(|| spec["securityContext"].get("runAsUser"));
                assert_eq!(uid, Some(&json!(65532)), "{} {}", id(w), c["name"]);
            }
        }
    }
}

/// The PrometheusMetric CRD is what prom-adapter watches (group, version, kind, plural,
/// namespaced, a status subresource), its RBAC lets the adapter read the objects, write
/// their status and list the HPAs, the Deployment turns the watch on, `/status` and
/// `/explain` are granted to the adapter's own account, and the example object fits the
/// CRD's schema (kubernetes-validate has none for it, see [`UNKNOWN_KINDS`]).
#[test]
fn manifests_prometheus_metric_crd_rbac_and_example() {
    let base = kustomize("deploy/base");
    let crd = base.get(
        "CustomResourceDefinition",
        "",
        "prometheusmetrics.prom-adapter.io",
    );
    let spec = &crd["spec"];
    assert_eq!(spec["group"], "prom-adapter.io");
    assert_eq!(spec["scope"], "Namespaced");
    assert_eq!(spec["names"]["kind"], "PrometheusMetric");
    assert_eq!(spec["names"]["plural"], "prometheusmetrics");
    let version = &spec["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["subresources"]["status"], json!({}));
    let schema = &version["schema"]["openAPIV3Schema"]["properties"];
    let spec_schema = &schema["spec"];
    assert_eq!(spec_schema["required"], json!(["query"]));
    for field in [
        "currentValue",
        "lastUpdateTime",
        "autoscalerReferences",
        "conditions",
    ] {
        assert!(
            schema["status"]["properties"][field].is_object(),
            "status.{field} is in the schema"
        );
    }

    let deploy = base.get("Deployment", NAMESPACE, "prom-adapter");
    let c = container_named(deploy, "prom-adapter");
    assert!(
        c["args"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("--watch-prometheus-metrics"))),
        "the Deployment watches PrometheusMetric objects: {}",
        c["args"]
    );
    let account = deploy["spec"]["template"]["spec"]["serviceAccountName"].clone();
    let granted = |api_group: &str, resource: &str, verb: &str| {
        base.all("ClusterRoleBinding").into_iter().any(|binding| {
            let bound = binding["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| {
                    s["kind"] == "ServiceAccount"
                        && s["name"] == account
                        && s["namespace"] == NAMESPACE
                });
            let role = base.try_get(
                "ClusterRole",
                "",
                binding["roleRef"]["name"].as_str().unwrap_or_default(),
            );
            bound
                && role.is_some_and(|r| {
                    r["rules"].as_array().into_iter().flatten().any(|rule| {
                        let has = |key: &str, want: &str| {
                            rule[key]
                                .as_array()
                                .is_some_and(|v| v.contains(&json!(want)))
                        };
                        if api_group == "nonResource" {
                            has("nonResourceURLs", resource) && has("verbs", verb)
                        } else {
                            has("apiGroups", api_group)
                                && has("resources", resource)
                                && has("verbs", verb)
                        }
                    })
                })
        })
    };
    for (group, resource, verb) in [
        ("prom-adapter.io", "prometheusmetrics", "list"),
        ("prom-adapter.io", "prometheusmetrics", "watch"),
        ("prom-adapter.io", "prometheusmetrics/status", "patch"),
        ("autoscaling", "horizontalpodautoscalers", "list"),
        ("autoscaling", "horizontalpodautoscalers", "watch"),
        ("nonResource", "/status", "get"),
        ("nonResource", "/explain", "get"),
    ] {
        assert!(
            granted(group, resource, verb),
            "the adapter may {verb} {group} {resource}"
        );
    }

    let example = kustomize("deploy/example");
    let object = example.get("PrometheusMetric", EXAMPLE_NAMESPACE, "orders-backlog");
    let fields = object["spec"].as_object().expect("spec");
    let allowed = spec_schema["properties"]
        .as_object()
        .expect("spec properties");
    for (key, value) in fields {
        assert!(
            allowed.contains_key(key),
            "spec.{key} is not in the CRD's schema"
        );
        assert!(value.is_string(), "spec.{key} is a string");
    }
    for key in ["maxAge", "refresh"] {
        let d = object["spec"][key].as_str().expect("a duration");
        let digits_then_unit = d
            .trim_end_matches(['s', 'm', 'h', 'd'])
            .chars()
            .all(|c| c.is_ascii_digit());
        assert!(
            !d.is_empty() && digits_then_unit,
            "spec.{key} {d:?} fits the CRD's pattern"
        );
    }
    assert!(
        !object["spec"]["query"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
    );
}
