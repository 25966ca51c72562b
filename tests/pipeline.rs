//! The whole pipeline, end to end: DogStatsD from several pods → statsd-bridge (origin
//! detection) → a real Prometheus → the secured prom-adapter → `kubectl get --raw` with a
//! client certificate → the HPA's replica calculator ([`pipeline_tests::hpa`]).
//!
//! A fake kube-apiserver ([`FakeKubeApi::start_with_objects`]) has four pods on node
//! `node-a`: `shop/web-0..2` (Deployment `web`, label `app=web`) at 127.0.0.11–13 and
//! `shop/worker-0` (`app=worker`) at 127.0.0.14. It also answers the adapter's
//! SubjectAccessReviews and serves the authentication ConfigMap. Each pod is a real Python
//! `datadog` client (`tests/py/pod_sender.py`) sending a `requests` counter and a
//! `jobs.queue_depth` gauge at a load the test sets: over UDP from the pod's own address, or
//! over the bridge's unix socket (two pods name their container with the client's
//! `container_id`, `|c:<id>`; two are found by their PID's faked `<proc_root>/<pid>/cgroup`).
//!
//! The bridge (`mode = "kubernetes"`, `pod_labels = ["app"]`, `ttl = "5s"`) labels each series
//! with the sender's namespace, pod and app; Prometheus scrapes it with `honor_labels`; the
//! adapter (rules `tests/demo/rules.yaml`, object cache on the fake) serves
//! `pods/*/requests_per_second` (a 15 s rate) and the external `queue_depth` (one item per
//! pod). The HPA of Deployment `shop/web` (3 replicas, min 1, max 10) has a Pods metric
//! `requests_per_second` with averageValue 10 and an External `queue_depth` with
//! `labelSelector app=web` and averageValue 5.
//!
//! For each load level the test waits (generously, with [`eventually`]) until the adapter's
//! answers reflect the new load, then asserts the replica count the HPA would choose: scale
//! up, hold within tolerance, scale down. worker-0 sends far more than the others all along
//! and must never be in an answer. When web-2 stops sending (over either transport), its
//! series expire at the bridge and leave the rate window; the adapter then answers without it
//! (`pods/*`), 404 for the named pod and 503 for its queue: never a value of 0, which would
//! scale the Deployment down. The demo (`scripts/run.sh`) is run for a few seconds too, and
//! the `kubectl` command it prints is run while it is up.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use pipeline_tests::hpa::{self, HpaSpec, MetricInput, Recommendation, ScaleTarget};
use pipeline_tests::kubeapi::{AccessReview, Decision, FakeKubeApi, PodFixture};
use pipeline_tests::kubectl::{CurlOptions, Finished, RUN_LIMIT, curl, run_command};
use pipeline_tests::pki::{ALICE, Pki};
use pipeline_tests::util::{bin, scaled, tests_dir};
use pipeline_tests::{Adapter, Bridge, PATIENCE, Prometheus, eventually, python};
use serde_json::{Value, json};
use tempfile::TempDir;

const NODE: &str = "node-a";
const NAMESPACE: &str = "shop";

/// How long a load change may take to show in the adapter's answers: the bridge's TTL, a
/// scrape, the 15 s rate window, a relist; generous for a busy 2-core machine.
const SETTLE: Duration = Duration::from_secs(120);

/// The pods' rates are "settled" when each is within this fraction of what it sends. The HPA
/// expectations below hold anywhere inside the band (each step's mean is at least 10% from
/// where the decision would change).
const RATE_BAND: f64 = 0.06;

/// The HPA of Deployment `shop/web`.
const TARGET_RPS: i64 = 10;
const TARGET_QUEUE: i64 = 5;
const HPA: HpaSpec = HpaSpec {
    min_replicas: 1,
    max_replicas: 10,
    tolerances: hpa::Tolerances {
        scale_down: hpa::DEFAULT_TOLERANCE,
        scale_up: hpa::DEFAULT_TOLERANCE,
    },
};

const WEB: [&str; 3] = ["web-0", "web-1", "web-2"];

const PODS_RPS: &str = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/shop/pods/*/requests_per_second?labelSelector=app%3Dweb";
const QUEUE_WEB: &str =
    "/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/queue_depth?labelSelector=app%3Dweb";

/// What a web pod sends: requests per second and its queue depth; `None`: it is quiet.
type Load = Option<(f64, u32)>;

/// One pod of the fake cluster.
struct TestPod {
    name: &'static str,
    app: &'static str,
    ip: &'static str,
}

const PODS: [TestPod; 4] = [
    TestPod {
        name: "web-0",
        app: "web",
        ip: "127.0.0.11",
    },
    TestPod {
        name: "web-1",
        app: "web",
        ip: "127.0.0.12",
    },
    TestPod {
        name: "web-2",
        app: "web",
        ip: "127.0.0.13",
    },
    TestPod {
        name: "worker-0",
        app: "worker",
        ip: "127.0.0.14",
    },
];

/// worker-0's load, all along: if it counted, every answer would be far off.
const WORKER_LOAD: (f64, u32) = (400.0, 900);

/// A container ID (64 hex digits) of pod `i`.
fn container_id(i: usize) -> String {
    format!("{:064x}", 0x5eed_0000 + i)
}

fn fixture(i: usize) -> PodFixture {
    let pod = &PODS[i];
    PodFixture {
        labels: vec![
            ("app".to_owned(), pod.app.to_owned()),
            ("pod-template-hash".to_owned(), "5d8f7c9b4".to_owned()),
        ],
        container_ids: vec![format!("containerd://{}", container_id(i))],
        ..PodFixture::new(NAMESPACE, pod.name, NODE, pod.ip)
    }
}

/// The fake's policy: alice (kubectl's client certificate) may read the metrics.
fn policy(review: &AccessReview) -> Decision {
    if review.user == ALICE {
        Decision::allow("alice reads metrics in the pipeline test")
    } else {
        Decision::no_opinion("only alice is allowed in the pipeline test")
    }
}

// ------------------------------------------------------------------------------------------
// The pods' applications

/// How a pod reaches the bridge.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Transport {
    /// UDP from the pod's own address.
    Udp,
    /// The unix socket; web-0 and web-1 set `container_id`, web-2 and worker-0 are found by
    /// their PID's cgroup.
    Uds,
}

/// A running `pod_sender.py`: the real Datadog client in its own process, killed on drop.
struct PodSender {
    name: &'static str,
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<Value>,
}

impl PodSender {
    /// Starts the sender of pod `i`; nothing is sent before [`PodSender::load`].
    fn spawn(i: usize, transport: Transport, bridge: &Bridge) -> PodSender {
        let pod = &PODS[i];
        let mut cmd = Command::new(python());
        cmd.arg(tests_dir().join("py/pod_sender.py"));
        match transport {
            Transport::Udp => {
                let to = bridge.udp_addr();
                cmd.args(["--host", &to.ip().to_string()])
                    .args(["--port", &to.port().to_string()])
                    .args(["--source", pod.ip]);
            }
            Transport::Uds => {
                cmd.arg("--socket-path").arg(bridge.unixgram_path());
                if i < 2 {
                    cmd.args(["--container-id", &container_id(i)]);
                }
            }
        }
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("DD_") || k.starts_with("DATADOG_") {
                cmd.env_remove(&key);
            }
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting pod_sender.py for {}: {e}", pod.name));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        PodSender {
            name: pod.name,
            child,
            stdin,
            lines,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one command line and waits for its acknowledgement.
    fn command(&mut self, cmd: &Value) {
        writeln!(self.stdin, "{cmd}")
            .and_then(|()| self.stdin.flush())
            .unwrap_or_else(|e| panic!("writing to {}'s sender: {e}", self.name));
        let limit = scaled(Duration::from_secs(30));
        loop {
            match self.lines.recv_timeout(limit) {
                Ok(v) if v.get("applied").is_some() => {
                    assert_eq!(
                        v["failed"], 0,
                        "{}'s client failed to send datagrams: {v}",
                        self.name
                    );
                    return;
                }
                Ok(_) => {}
                Err(e) => panic!(
                    "{}'s sender did not acknowledge {cmd} ({e}); exit status {:?}",
                    self.name,
                    self.child.try_wait()
                ),
            }
        }
    }

    /// Sends `rps` requests per second and reports `depth` as its queue depth, from now on.
    fn load(&mut self, rps: f64, depth: u32) {
        self.command(&json!({"requests_per_second": rps, "queue_depth": depth}));
    }

    /// Stops sending (the pod goes quiet).
    fn pause(&mut self) {
        self.command(&json!({"pause": true}));
    }
}

impl Drop for PodSender {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------------------------------
// The stack

/// Everything of one run. Field order is drop order: senders, adapter, Prometheus, bridge,
/// the fake.
struct Stack {
    senders: Vec<PodSender>,
    adapter: Adapter,
    _prom: Prometheus,
    bridge: Bridge,
    _fake: FakeKubeApi,
    pki: Pki,
    _dir: TempDir,
}

impl Stack {
    fn start(transport: Transport) -> Stack {
        let dir = tempfile::Builder::new()
            .prefix("pipeline-e2e-")
            .tempdir()
            .expect("a temp dir");
        let pki = Pki::generate().expect("generating the PKI");
        let fake = FakeKubeApi::start_with_objects();
        pki.delegate_from(&fake, policy);
        for i in 0..PODS.len() {
            fake.put_pod(&fixture(i));
        }
        let kubeconfig = fake
            .write_kubeconfig(dir.path())
            .expect("writing the fake's kubeconfig");

        let proc_root = dir.path().join("proc");
        std::fs::create_dir_all(&proc_root).expect("creating the fake proc root");
        let socket = dir.path().join("dsd.socket");
        let unixgram = match transport {
            Transport::Udp => String::new(),
            Transport::Uds => format!("listen_unixgram = [{:?}]\n", socket.display().to_string()),
        };
        let config = format!(
            "version = 1\n\n[bridge]\nlisten_udp = [\"127.0.0.1:0\"]\nlisten_tcp = []\n{unixgram}\
             web_listen = \"127.0.0.1:0\"\nttl = \"5s\"\nshutdown_grace = \"1s\"\n\n\
             [bridge.origin]\nmode = \"kubernetes\"\nkubeconfig = {:?}\nnode_name = \"{NODE}\"\n\
             pod_labels = [\"app\"]\nproc_root = {:?}\n",
            kubeconfig.display().to_string(),
            proc_root.display().to_string()
        );
        let bridge = Bridge::start(&config, &[]);
        eventually("the bridge to be ready (first pod list)", PATIENCE, || {
            let r = bridge.get("/readyz")?;
            ensure!(r.status == 200, "/readyz answered {}", r.status);
            let map = bridge.metrics_map()?;
            let pods = map.get("statsd_bridge_origin_pods{}").copied();
            ensure!(pods == Some(4.0), "statsd_bridge_origin_pods is {pods:?}");
            Ok(())
        });

        let prom = Prometheus::start(&[bridge.web_addr()]);
        prom.wait_targets_up(1);

        let mut args = pki.adapter_flags(&pki.serving, &kubeconfig, true);
        args.extend([
            "--lister-kubeconfig".to_owned(),
            kubeconfig.to_string_lossy().into_owned(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let security = pki.as_alice();
        let adapter = Adapter::start_with(
            &tests_dir().join("demo/rules.yaml"),
            &prom.url(),
            &args,
            &security,
        );

        let mut senders = Vec::new();
        for i in 0..PODS.len() {
            let sender = PodSender::spawn(i, transport, &bridge);
            if transport == Transport::Uds && i >= 2 {
                // What the bridge reads for a unix-socket peer without `|c:`: its PID's cgroup
                // (cgroup v2, systemd driver, containerd), as a pod's process has it.
                let pid_dir = proc_root.join(sender.pid().to_string());
                std::fs::create_dir_all(&pid_dir).expect("creating the pid dir");
                let uid = fixture(i).uid().replace('-', "_");
                std::fs::write(
                    pid_dir.join("cgroup"),
                    format!(
                        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}\
                         .slice/cri-containerd-{}.scope\n",
                        container_id(i)
                    ),
                )
                .expect("writing the fake cgroup file");
            }
            senders.push(sender);
        }
        let mut stack = Stack {
            senders,
            adapter,
            _prom: prom,
            bridge,
            _fake: fake,
            pki,
            _dir: dir,
        };
        stack.senders[3].load(WORKER_LOAD.0, WORKER_LOAD.1);
        stack
    }

    /// `kubectl get --raw path` (alice's client certificate, the serving CA verified).
    fn get_json(&self, path: &str) -> Result<Value> {
        self.adapter.get_json(path)
    }

    /// `GET path` with curl as alice: status, reason and message of a failure.
    fn get_status(&self, path: &str) -> Result<(u16, Value)> {
        let options = CurlOptions {
            cacert: Some(&self.pki.serving_ca),
            client_cert: Some((&self.pki.alice.cert, &self.pki.alice.key)),
            ..CurlOptions::default()
        };
        let r = curl(&format!("https://{}{path}", self.adapter.addr()), &options)?;
        let body: Value = serde_json::from_slice(&r.body)
            .with_context(|| format!("GET {path}: HTTP {} without JSON", r.status))?;
        Ok((r.status, body))
    }

    /// Sets the web pods' loads (`None`: that pod goes quiet).
    fn set_web_load(&mut self, loads: [Load; 3]) {
        for (i, load) in loads.iter().enumerate() {
            match load {
                Some((rps, depth)) => self.senders[i].load(*rps, *depth),
                None => self.senders[i].pause(),
            }
        }
    }
}

/// What the HPA read in one sync.
struct Reading {
    rps: BTreeMap<String, i64>,
    queue: Vec<i64>,
    queue_pods: BTreeSet<String>,
}

/// Reads both metrics as the HPA does; checks that worker-0 is in neither answer (a hard
/// failure, not something to wait out).
fn read(stack: &Stack) -> Result<Reading> {
    let pods = stack.get_json(PODS_RPS)?;
    let rps = hpa::pod_metrics(&pods).with_context(|| format!("{PODS_RPS}: {pods}"))?;
    let external = stack.get_json(QUEUE_WEB)?;
    let queue =
        hpa::external_metrics(&external).with_context(|| format!("{QUEUE_WEB}: {external}"))?;
    let queue_pods: BTreeSet<String> = external["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["metricLabels"]["pod"].as_str().map(str::to_owned))
        .collect();
    assert!(
        !rps.contains_key("worker-0") && !queue_pods.contains("worker-0"),
        "the other workload's pod is in the HPA's answers:\n{pods}\n{external}"
    );
    Ok(Reading {
        rps,
        queue,
        queue_pods,
    })
}

/// Waits until the answers show exactly the web pods of `loads` (`None`: absent) at their
/// loads (rates within [`RATE_BAND`], queue depths exact), and returns that reading.
fn settle(stack: &Stack, what: &str, loads: [Load; 3]) -> Reading {
    eventually(what, SETTLE, || {
        let reading = read(stack)?;
        let want: BTreeSet<String> = WEB
            .iter()
            .zip(&loads)
            .filter(|(_, l)| l.is_some())
            .map(|(p, _)| (*p).to_owned())
            .collect();
        let got: BTreeSet<String> = reading.rps.keys().cloned().collect();
        ensure!(got == want, "pods with a rate: {got:?}, want {want:?}");
        ensure!(
            reading.queue_pods == want,
            "pods with a queue depth: {:?}, want {want:?}",
            reading.queue_pods
        );
        let mut want_queue = 0;
        for (pod, load) in WEB.iter().zip(&loads) {
            let Some((rps, depth)) = load else { continue };
            let got = reading.rps[*pod] as f64 / 1000.0;
            ensure!(
                (got - rps).abs() <= rps * RATE_BAND,
                "{pod}: {got}/s, want {rps}/s ± {:.0}%",
                RATE_BAND * 100.0
            );
            want_queue += i64::from(*depth) * 1000;
        }
        let total = hpa::external_sum(&reading.queue);
        ensure!(
            total == want_queue,
            "queue_depth total {total}m, want {want_queue}m"
        );
        Ok(reading)
    })
}

/// The HPA's decision for a reading (plus any extra metrics).
fn decide(reading: &Reading, extra: Vec<MetricInput>) -> Recommendation {
    let mut metrics = vec![
        MetricInput::PodsAverageValue {
            target: TARGET_RPS * 1000,
            values: reading.rps.clone(),
        },
        MetricInput::ExternalAverageValue {
            target: TARGET_QUEUE * 1000,
            values: reading.queue.clone(),
        },
    ];
    metrics.extend(extra);
    hpa::recommend(&HPA, &ScaleTarget::running(&WEB), &metrics)
}

/// The load steps every transport goes through, and what the HPA must decide at each.
fn scale_up_hold_down(stack: &mut Stack) {
    let steps: [(&str, [Load; 3], i32); 3] = [
        // Mean 15/s of 10 → ratio 1.5 → ceil(4.5) = 5 (5 for any mean in 13.4–16.6); queue
        // 18 for 5 per pod → ceil(3.6) = 4: max 5.
        (
            "scale up",
            [Some((12.0, 5)), Some((15.0, 6)), Some((18.0, 7))],
            5,
        ),
        // Mean 10/s (8, 10, 12) → ratio 1, within tolerance; queue 15 for 3 × 5 → hold: 3.
        (
            "hold within tolerance",
            [Some((8.0, 4)), Some((10.0, 5)), Some((12.0, 6))],
            3,
        ),
        // Mean 3/s → ratio 0.3 → ceil(0.9) = 1; queue 3 → ceil(0.6) = 1: 1.
        (
            "scale down",
            [Some((2.0, 1)), Some((3.0, 1)), Some((4.0, 1))],
            1,
        ),
    ];
    for (what, loads, want) in steps {
        stack.set_web_load(loads);
        let reading = settle(stack, &format!("the answers of step {what:?}"), loads);
        let r = decide(&reading, Vec::new());
        assert_eq!(
            (r.replicas, r.held.as_deref()),
            (want, None),
            "step {what:?}: the HPA reading {:?} and queue {:?} decided {r:?}",
            reading.rps,
            reading.queue
        );
    }
}

/// The bridge's own page: series carry the sender's pod and app, worker-0's too, found the
/// ways `sources` name (`ip`, `uds`, `container_id` of `statsd_bridge_origin_lookups_total`).
fn check_labels_at_the_bridge(stack: &Stack, sources: &[&str]) {
    stack
        .bridge
        .wait_metrics("every pod's series labelled by origin", |map| {
            for source in sources {
                let key = format!(
                    "statsd_bridge_origin_lookups_total{{outcome=\"hit\",source=\"{source}\"}}"
                );
                let hits = map.get(&key).copied().unwrap_or(0.0);
                ensure!(hits > 0.0, "{key} is {hits}");
            }
            for pod in &PODS {
                let key = format!(
                    "jobs_queue_depth{{app=\"{}\",namespace=\"{NAMESPACE}\",pod=\"{}\"}}",
                    pod.app, pod.name
                );
                ensure!(map.contains_key(&key), "{key} missing");
            }
            Ok(())
        });
}

/// web-2 goes quiet and comes back, for every transport: it drops out of `pods/*` and the
/// external answer, the HPA counts it as a missing pod, the named request is a 404 and its
/// queue a 503 (never a 200 with a 0), an HPA also reading that invalid metric holds, and once
/// it sends again it counts again.
fn staleness_and_invalid_metric(stack: &mut Stack) {
    // web-2 goes quiet while web-0 and web-1 are at a third of the target.
    let loads = [Some((2.0, 1)), Some((3.0, 1)), None];
    stack.set_web_load(loads);
    let reading = settle(stack, "web-2 to drop out of the answers", loads);
    // The HPA still lists web-2 (the pod exists): it is a missing pod. On a scale-down it
    // counts as using the target: (2 + 3 + 10) / 3 = 5/s, ratio 0.5 → ceil(1.5) = 2 (without
    // the rule, ceil(0.25 × 2) = 1). The queue: 2 of 15 → 1.
    let r = decide(&reading, Vec::new());
    assert_eq!(
        (r.replicas, r.held.as_deref()),
        (2, None),
        "a missing pod on a scale-down: {r:?} from {:?}",
        reading.rps
    );

    // The named pod: no sample → 404 under the rule's default onEmpty: error; web-2's queue
    // through an external selector: 503. Never a 200 with a 0.
    let named =
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/shop/pods/web-2/requests_per_second";
    let (code, status) = stack.get_status(named).expect("GET the named pod");
    assert_eq!(
        (code, status["reason"].as_str()),
        (404, Some("NotFound")),
        "GET {named}: {status}"
    );
    let web2_queue = "/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/queue_depth?labelSelector=app%3Dweb%2Cpod%3Dweb-2";
    let (code, status) = stack.get_status(web2_queue).expect("GET web-2's queue");
    assert_eq!(
        (code, status["reason"].as_str()),
        (503, Some("ServiceUnavailable")),
        "GET {web2_queue}: {status}"
    );
    // An HPA that also scales on web-2's own queue (External, labelSelector pod=web-2) gets no
    // value for it: some metric is invalid and the others would scale down, so it holds.
    let message = status["message"].as_str().unwrap_or_default().to_owned();
    let r = decide(
        &reading,
        vec![MetricInput::Unavailable(format!("HTTP 503: {message}"))],
    );
    assert_eq!(
        (r.replicas, r.held.is_some()),
        (3, true),
        "invalid metric + scale-down must hold: {r:?}"
    );

    // web-2 back: its counter starts again (the bridge dropped the old one) and it counts.
    let loads = [Some((2.0, 1)), Some((3.0, 1)), Some((4.0, 1))];
    stack.set_web_load(loads);
    let reading = settle(stack, "web-2 back in the answers", loads);
    assert_eq!(decide(&reading, Vec::new()).replicas, 1);
}

#[test]
fn pipeline_udp_from_pod_addresses_to_hpa_replicas() {
    let mut stack = Stack::start(Transport::Udp);
    stack.set_web_load([Some((1.0, 1)); 3]);
    check_labels_at_the_bridge(&stack, &["ip"]);
    scale_up_hold_down(&mut stack);
    staleness_and_invalid_metric(&mut stack);
}

#[test]
fn pipeline_uds_with_container_ids_and_pid_cgroups_to_hpa_replicas() {
    let mut stack = Stack::start(Transport::Uds);
    stack.set_web_load([Some((1.0, 1)); 3]);
    check_labels_at_the_bridge(&stack, &["container_id", "uds"]);
    scale_up_hold_down(&mut stack);
    // web-2 is one of the pods found by its PID's cgroup.
    staleness_and_invalid_metric(&mut stack);
}

// ------------------------------------------------------------------------------------------
// The demo

/// The paths the demo printed that live in its temporary directories.
fn printed_temp_paths(stdout: &str) -> Vec<PathBuf> {
    let tmp = std::env::temp_dir();
    let tmp = tmp.to_string_lossy();
    stdout
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| matches!(c, '(' | ')' | '\'' | ',')))
        .filter(|w| w.starts_with(&*tmp))
        .map(PathBuf::from)
        .collect()
}

/// A refresh block's rows for the web pods with values, and its desired replica count.
fn blocks(stdout: &str) -> Vec<(BTreeMap<String, String>, Option<i32>)> {
    let mut out = Vec::new();
    for block in stdout.split("── ").skip(1) {
        let mut rows = BTreeMap::new();
        let mut desired = None;
        for line in block.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let Some(pod) = words.first()
                && PODS.iter().any(|p| p.name == *pod)
            {
                rows.insert(
                    (*pod).to_owned(),
                    words.get(4..).unwrap_or_default().join(" "),
                );
            }
            if let Some(rest) = line.trim().strip_prefix("desired replicas: ") {
                desired = rest.split_whitespace().next().and_then(|n| n.parse().ok());
            }
        }
        out.push((rows, desired));
    }
    out
}

/// The demo as a child process whose stdout is read while it runs; killed on drop.
struct DemoRun {
    child: Child,
    lines: Receiver<String>,
    stderr: Option<thread::JoinHandle<Vec<u8>>>,
    stdout: String,
}

impl DemoRun {
    fn spawn(mut cmd: Command) -> DemoRun {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting the demo");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stderr, &mut buf);
            buf
        });
        DemoRun {
            child,
            lines,
            stderr: Some(stderr),
            stdout: String::new(),
        }
    }

    /// The next line it printed; `None` once its stdout is closed.
    fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => {
                self.stdout.push_str(&line);
                self.stdout.push('\n');
                Some(line)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("the demo printed nothing new in time:\n{}", self.stdout)
            }
        }
    }

    /// Reads the rest of its output and waits for it to exit.
    fn finish(mut self, deadline: Instant) -> Finished {
        while self.next_line(deadline).is_some() {}
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => panic!("the demo did not exit in time:\n{}", self.stdout),
                Err(e) => panic!("waiting for the demo: {e}"),
            }
        };
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Finished {
            command: "demo".to_owned(),
            status,
            stdout: std::mem::take(&mut self.stdout),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }
}

impl Drop for DemoRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the `kubectl …` command the demo printed as a user would paste it into a shell (with
/// a `HOME` of its own, so nothing of this machine's kubectl setup leaks in).
fn run_printed_kubectl(command: &str) -> Finished {
    let home = tempfile::Builder::new()
        .prefix("demo-kubectl-home-")
        .tempdir()
        .expect("a temp dir");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", command])
        .env("HOME", home.path())
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .current_dir(home.path());
    run_command("sh", cmd, None, scaled(RUN_LIMIT)).unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn pipeline_demo_shows_pods_and_replicas() {
    let mut cmd = Command::new(bin("demo"));
    cmd.args(["--duration", "20", "--refresh", "2", "--no-clear"])
        .env_remove("DEMO_DURATION")
        .current_dir(tests_dir());
    let deadline = Instant::now() + scaled(Duration::from_secs(300));
    let mut demo = DemoRun::spawn(cmd);
    // The `kubectl` line it prints at the start, then its first refresh: by then the adapter
    // serves values.
    let mut printed = None;
    loop {
        let Some(line) = demo.next_line(deadline) else {
            let run = demo.finish(deadline);
            panic!("the demo ended before its first refresh: {run}");
        };
        if let Some(rest) = line.strip_prefix("kubectl ") {
            printed = Some(rest.trim().to_owned());
        }
        if line.starts_with("── ") {
            break;
        }
    }
    let printed = printed.unwrap_or_else(|| panic!("no kubectl command:\n{}", demo.stdout));
    assert!(
        printed.starts_with("kubectl --kubeconfig ") && printed.contains(" get --raw "),
        "{printed}"
    );
    // The printed command works: the demo's kube-apiserver lets its user read the metrics.
    let kubectl = run_printed_kubectl(&printed);
    let answer: Value = serde_json::from_str(kubectl.ok_stdout().unwrap_or_else(|e| {
        panic!(
            "the printed command failed: {e:#}\ndemo so far:\n{}",
            demo.stdout
        )
    }))
    .unwrap_or_else(|e| panic!("the printed command printed no JSON ({e}): {kubectl}"));
    assert_eq!(answer["kind"], "MetricValueList", "{answer}");
    let values = hpa::pod_metrics(&answer).unwrap_or_else(|e| panic!("{e:#}: {answer}"));
    assert!(
        values.keys().all(|p| WEB.contains(&p.as_str())),
        "only web pods are selected: {answer}"
    );

    let run = demo.finish(deadline);
    assert!(run.success(), "{run}");
    let stdout = &run.stdout;
    let blocks = blocks(stdout);
    assert!(blocks.len() >= 3, "expected several refreshes: {run}");
    for (rows, desired) in &blocks {
        let n = desired.unwrap_or_else(|| panic!("a refresh without a replica count: {run}"));
        assert!((1..=10).contains(&n), "desired replicas {n}: {run}");
        assert!(
            rows.get("worker-0")
                .is_some_and(|r| r.contains("not selected")),
            "worker-0 must never count: {rows:?}\n{run}"
        );
    }
    // Per-pod values: some refresh has every web pod's rate as a number with its Quantity.
    let with_values = blocks.iter().any(|(rows, _)| {
        WEB.iter().all(|p| {
            rows.get(*p).is_some_and(|r| {
                r.split_whitespace()
                    .next()
                    .is_some_and(|v| v.parse::<f64>().is_ok_and(|x| x > 0.0))
                    && r.contains('(')
            })
        })
    });
    assert!(with_values, "no refresh shows every web pod's rate: {run}");
    // It cleaned up after itself.
    let left: Vec<PathBuf> = printed_temp_paths(stdout)
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    assert!(left.is_empty(), "the demo left {left:?} behind");
}
