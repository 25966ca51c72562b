//! `demo`: the whole pipeline on one machine, with the HPA's decision printed live.
//!
//! Starts `statsd-bridge` (origin detection `mode = "static"`: 127.0.0.11–13 are the pods of
//! Deployment `shop/web`, 127.0.0.14 the pod of another workload), a real Prometheus
//! scraping it, `prom-adapter` secured with certificates made for the run (and a fake
//! kube-apiserver in this process for its SubjectAccessReviews), and a traffic generator
//! that sends DogStatsD from each pod's own address with a load that changes every phase.
//! Every few seconds it reads the adapter over HTTPS the way kube-apiserver's aggregator does
//! for the HPA controller (front-proxy client certificate, `X-Remote-User`), and prints each
//! pod's values and the replica count the HPA would choose ([`pipeline_tests::hpa`]).
//!
//! `bash scripts/run.sh` installs what it needs, builds and runs it. Ctrl-C (or SIGTERM)
//! stops it; every child process and temporary directory goes with it.
//!
//! ```text
//! demo [--duration SECS] [--refresh SECS] [--phase SECS] [--no-clear]
//! ```

use std::io::{IsTerminal, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pipeline_tests::hpa::{self, HpaSpec, MetricInput, ScaleTarget};
use pipeline_tests::kubeapi::{AccessReview, Decision, FakeKubeApi};
use pipeline_tests::kubectl::{CurlOptions, curl};
use pipeline_tests::pki::{ALICE, Pki};
use pipeline_tests::promadapter::Leash;
use pipeline_tests::util::{find_program, tests_dir};
use pipeline_tests::{Adapter, Bridge, Prometheus};
use serde_json::Value;

/// The user the HPA controller is (kube-controller-manager's service account for it).
const HPA_USER: &str = "system:serviceaccount:kube-system:horizontal-pod-autoscaler";

/// The namespace of the demo's pods.
const NAMESPACE: &str = "shop";

/// The HPA's target for `requests_per_second` (Pods, AverageValue), per pod.
const TARGET_RPS: i64 = 10;
/// The HPA's target for `queue_depth` (External, AverageValue), per pod.
const TARGET_QUEUE: i64 = 5;
/// `minReplicas` and `maxReplicas`.
const MIN_REPLICAS: i32 = 1;
const MAX_REPLICAS: i32 = 10;

/// A fake pod: a name, its `app` label and the address it sends from.
struct DemoPod {
    name: &'static str,
    app: &'static str,
    ip: Ipv4Addr,
}

const PODS: [DemoPod; 4] = [
    DemoPod {
        name: "web-0",
        app: "web",
        ip: Ipv4Addr::new(127, 0, 0, 11),
    },
    DemoPod {
        name: "web-1",
        app: "web",
        ip: Ipv4Addr::new(127, 0, 0, 12),
    },
    DemoPod {
        name: "web-2",
        app: "web",
        ip: Ipv4Addr::new(127, 0, 0, 13),
    },
    DemoPod {
        name: "worker-0",
        app: "worker",
        ip: Ipv4Addr::new(127, 0, 0, 14),
    },
];

/// The Deployment's pods (the HPA's selector `app=web`).
const WEB: [&str; 3] = ["web-0", "web-1", "web-2"];

/// What a pod sends during a phase: requests per second and its queue depth; `None`: silent.
type Load = Option<(u32, u32)>;

/// One phase of the traffic.
struct Phase {
    name: &'static str,
    about: &'static str,
    load: [Load; 4],
}

/// The phases, in a loop. worker-0 is always busy and never counts: it is not `app=web`.
const PHASES: [Phase; 4] = [
    Phase {
        name: "steady",
        about: "about the target: the HPA holds",
        load: [Some((9, 4)), Some((10, 5)), Some((11, 6)), Some((150, 400))],
    },
    Phase {
        name: "rush",
        about: "three times the target: the HPA scales up",
        load: [
            Some((25, 10)),
            Some((30, 12)),
            Some((35, 14)),
            Some((150, 400)),
        ],
    },
    Phase {
        name: "quiet",
        about: "a third of the target: the HPA scales down",
        load: [Some((2, 1)), Some((3, 1)), Some((4, 1)), Some((150, 400))],
    },
    Phase {
        name: "web-2 silent",
        about: "web-2 stops sending: once its series expire it has no value, and on a \
                scale-up the HPA counts it as 0",
        load: [Some((20, 8)), Some((24, 9)), None, Some((150, 400))],
    },
];

/// Command-line options.
struct Options {
    duration: Option<Duration>,
    refresh: Duration,
    phase: Duration,
    clear: bool,
}

const USAGE: &str = "usage: demo [--duration SECS] [--refresh SECS] [--phase SECS] [--no-clear]

Runs statsd-bridge, Prometheus, prom-adapter and a DogStatsD traffic generator on this
machine and prints, every --refresh seconds (default 5), what the HPA reads from the adapter
and the replica count it would choose. The load changes every --phase seconds (default 45).
Runs until Ctrl-C, or for --duration seconds (also $DEMO_DURATION). --no-clear prints each
refresh below the last instead of redrawing the screen (the default when stdout is not a
terminal).";

fn seconds(flag: &str, value: Option<String>) -> Result<Duration> {
    let value = value.with_context(|| format!("{flag} needs a number of seconds"))?;
    let secs: f64 = value
        .parse()
        .with_context(|| format!("{flag} {value:?}: not a number of seconds"))?;
    if !(secs.is_finite() && secs > 0.0) {
        bail!("{flag} {value:?}: must be more than 0");
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_options() -> Result<Options> {
    let mut options = Options {
        duration: match std::env::var("DEMO_DURATION") {
            Ok(v) if !v.is_empty() => Some(seconds("DEMO_DURATION", Some(v))?),
            _ => None,
        },
        refresh: Duration::from_secs(5),
        phase: Duration::from_secs(45),
        clear: std::io::stdout().is_terminal(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
            None => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| args.next());
        match flag.as_str() {
            "--duration" => options.duration = Some(seconds(&flag, value())?),
            "--refresh" => options.refresh = seconds(&flag, value())?,
            "--phase" => options.phase = seconds(&flag, value())?,
            "--no-clear" => options.clear = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => bail!("unknown argument {arg:?}\n{USAGE}"),
        }
    }
    Ok(options)
}

fn main() {
    let options = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("demo: {e:#}");
            std::process::exit(64);
        }
    };
    if let Err(e) = run(&options) {
        eprintln!("demo: {e:#}");
        std::process::exit(1);
    }
}

/// Set by Ctrl-C or SIGTERM.
fn stop_on_signal() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the signal runtime")?;
    thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            runtime.block_on(async {
                use tokio::signal::unix::{SignalKind, signal};
                let Ok(mut term) = signal(SignalKind::terminate()) else {
                    return;
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                flag.store(true, Ordering::SeqCst);
            });
        })
        .context("starting the signal thread")?;
    Ok(stop)
}

/// The bridge's config: UDP and the page on ephemeral loopback ports, series of a silent pod
/// dropped after 10 s, and the static origin table.
fn bridge_config() -> String {
    let mut toml = String::from(
        "version = 1\n\n[bridge]\nlisten_udp = [\"127.0.0.1:0\"]\nlisten_tcp = []\n\
         web_listen = \"127.0.0.1:0\"\nttl = \"10s\"\nshutdown_grace = \"1s\"\n\n\
         [bridge.origin]\nmode = \"static\"\n",
    );
    for pod in &PODS {
        toml.push_str(&format!(
            "\n[[bridge.origin.static]]\nsource = \"{}\"\nlabels = {{ namespace = \"{NAMESPACE}\", \
             pod = \"{}\", app = \"{}\" }}\n",
            pod.ip, pod.name, pod.app
        ));
    }
    toml
}

/// The fake kube-apiserver's policy: the HPA controller may read the metrics, and so may
/// [`ALICE`], the user of the `kubectl` command the demo prints; nobody else.
fn policy(review: &AccessReview) -> Decision {
    if review.user == HPA_USER {
        Decision::allow("the HPA controller reads the metrics APIs")
    } else if review.user == ALICE {
        Decision::allow("alice reads the metrics with the kubectl command the demo prints")
    } else {
        Decision::no_opinion("only the HPA controller and alice are allowed in the demo")
    }
}

fn check_programs() -> Result<()> {
    let missing: Vec<&str> = [
        ("prometheus", "prometheus"),
        ("kubectl", "kubernetes-client"),
        ("curl", "curl"),
    ]
    .iter()
    .filter(|(program, _)| find_program(program).is_none())
    .map(|(_, package)| *package)
    .collect();
    if !missing.is_empty() {
        bail!(
            "missing programs: install the Debian packages {} (scripts/run.sh does)",
            missing.join(" ")
        );
    }
    Ok(())
}

fn run(options: &Options) -> Result<()> {
    check_programs()?;
    let stop = stop_on_signal()?;
    let work = tempfile::Builder::new()
        .prefix("pipeline-demo-")
        .tempdir()
        .context("creating the demo's temp dir")?;

    say("Starting statsd-bridge (origin detection: static table of 127.0.0.11-14)…");
    let bridge = Bridge::start(&bridge_config(), &[]);
    let udp = bridge.udp_addr();
    say("Starting Prometheus (scrapes the bridge every second, honor_labels: true)…");
    let prom = Prometheus::start(&[bridge.web_addr()]);

    say("Starting prom-adapter (HTTPS, front-proxy and client certificates, SubjectAccessReview)…");
    let pki = Pki::generate()?;
    let fake = FakeKubeApi::start();
    pki.delegate_from(&fake, policy);
    let kubeconfig = fake.write_kubeconfig(work.path())?;
    let rules = tests_dir().join("demo/rules.yaml");
    let args = pki.adapter_flags(&pki.serving, &kubeconfig, true);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let security = pki.as_alice();
    let adapter = Adapter::start_with(&rules, &prom.url(), &args, &security);

    // Whatever ends this process, the children and the directories go with it.
    let pids = [bridge.pid(), prom.process().pid(), adapter.process().pid()];
    let dirs: Vec<PathBuf> = [
        work.path().to_path_buf(),
        bridge
            .config_path()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
        prom.dir().to_path_buf(),
        adapter.dir().to_path_buf(),
        adapter.kubectl().dir().to_path_buf(),
        pki.dir().to_path_buf(),
        parent(&bridge.process().stderr_path()),
        parent(&prom.process().stderr_path()),
        parent(&adapter.process().stderr_path()),
    ]
    .into_iter()
    .filter(|d| !d.as_os_str().is_empty())
    .collect();
    let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    let _leash = Leash::new(&pids, &dirs)?;

    let reader = Reader {
        base: format!("https://{}", adapter.addr()),
        pki: &pki,
    };
    println!();
    println!(
        "statsd-bridge  DogStatsD on udp://{udp}, page http://{}/metrics",
        bridge.web_addr()
    );
    println!("Prometheus     {}", prom.url());
    println!(
        "prom-adapter   https://{} (serving CA {})",
        adapter.addr(),
        pki.serving_ca.display()
    );
    // As alice (her client certificate, which the policy above allows), the way a user reads
    // the API; tests/pipeline.rs runs this line.
    println!(
        "kubectl        kubectl --kubeconfig {} get --raw '{}'",
        adapter.kubectl().kubeconfig().display(),
        reader.pods_path()
    );
    println!(
        "pods           web-0..2 = Deployment shop/web (app=web) at 127.0.0.11-13; worker-0 (app=worker) at 127.0.0.14"
    );
    println!(
        "HPA            shop/web: Pods requests_per_second averageValue {TARGET_RPS}, External \
         queue_depth averageValue {TARGET_QUEUE}, min {MIN_REPLICAS}, max {MAX_REPLICAS}, 3 \
         replicas now"
    );
    println!();

    let start = Instant::now();
    let traffic = Traffic::start(udp, options.phase, start, Arc::clone(&stop))?;
    say("Waiting for the first rates (Prometheus needs two scrapes, the adapter one discovery)…");
    let ready = wait_first_values(&reader, &stop);
    if !ready {
        say("(no values yet; showing what the adapter answers)");
    }

    let shown_from = Instant::now();
    let mut refreshes = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let screen = render(&reader, options, start, shown_from);
        if options.clear {
            print!("\x1b[2J\x1b[H");
        }
        print!("{screen}");
        let _ = std::io::stdout().flush();
        refreshes += 1;
        let next = shown_from + options.refresh.mul_f64(refreshes as f64);
        while Instant::now() < next && !stop.load(Ordering::SeqCst) {
            if options.duration.is_some_and(|d| shown_from.elapsed() >= d) {
                stop.store(true, Ordering::SeqCst);
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        if options.duration.is_some_and(|d| shown_from.elapsed() >= d) {
            stop.store(true, Ordering::SeqCst);
        }
    }
    traffic.join();
    say("Stopping: prom-adapter, Prometheus, statsd-bridge; removing the temporary files.");
    drop(adapter);
    drop(prom);
    drop(bridge);
    drop(fake);
    Ok(())
}

fn parent(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn say(line: &str) {
    println!("{line}");
    let _ = std::io::stdout().flush();
}

/// Waits up to two minutes for values of every web pod; `false` if they did not come (or the
/// demo was stopped).
fn wait_first_values(reader: &Reader<'_>, stop: &AtomicBool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
        if let Ok(values) = reader.pods().and_then(|l| hpa::pod_metrics(&l))
            && WEB.iter().all(|p| values.contains_key(*p))
        {
            return true;
        }
        thread::sleep(Duration::from_millis(500));
    }
    false
}

// ------------------------------------------------------------------------------------------
// Reading the adapter as the aggregator does

struct Reader<'a> {
    base: String,
    pki: &'a Pki,
}

impl Reader<'_> {
    fn pods_path(&self) -> String {
        format!(
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{NAMESPACE}/pods/*/requests_per_second?labelSelector=app%3Dweb"
        )
    }

    fn external_path(&self) -> String {
        format!(
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/{NAMESPACE}/queue_depth?labelSelector=app%3Dweb"
        )
    }

    fn pods(&self) -> Result<Value> {
        self.get(&self.pods_path())
    }

    fn external(&self) -> Result<Value> {
        self.get(&self.external_path())
    }

    /// `GET path` with the front proxy's client certificate and the HPA controller's
    /// identity in the request headers; the JSON answer, or an error with the Status.
    fn get(&self, path: &str) -> Result<Value> {
        let cert = &self.pki.front_proxy_client;
        let options = CurlOptions {
            cacert: Some(&self.pki.serving_ca),
            client_cert: Some((&cert.cert, &cert.key)),
            bearer: None,
            headers: vec![
                ("X-Remote-User", HPA_USER),
                ("X-Remote-Group", "system:serviceaccounts"),
                ("X-Remote-Group", "system:serviceaccounts:kube-system"),
                ("X-Remote-Group", "system:authenticated"),
            ],
        };
        let response = curl(&format!("{}{path}", self.base), &options)?;
        let body: Value = serde_json::from_slice(&response.body)
            .with_context(|| format!("HTTP {}: not JSON", response.status))?;
        if response.status != 200 {
            bail!(
                "HTTP {} {}: {}",
                response.status,
                body["reason"].as_str().unwrap_or("?"),
                body["message"].as_str().unwrap_or("")
            );
        }
        Ok(body)
    }
}

// ------------------------------------------------------------------------------------------
// One screen

fn phase_at(start: Instant, phase: Duration) -> (usize, Duration) {
    let elapsed = start.elapsed();
    let n = (elapsed.as_secs_f64() / phase.as_secs_f64()) as usize;
    let into = elapsed.saturating_sub(phase.mul_f64(n as f64));
    (n % PHASES.len(), into)
}

fn fmt_milli(milli: i64) -> String {
    format!("{:.2}", milli as f64 / 1000.0)
}

fn render(reader: &Reader<'_>, options: &Options, start: Instant, shown_from: Instant) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let (index, into) = phase_at(start, options.phase);
    let phase = &PHASES[index];
    let elapsed = shown_from.elapsed().as_secs();
    let _ = writeln!(
        out,
        "── {:02}:{:02}  phase {}/{} \"{}\" ({}s of {}s): {}",
        elapsed / 60,
        elapsed % 60,
        index + 1,
        PHASES.len(),
        phase.name,
        into.as_secs(),
        options.phase.as_secs(),
        phase.about
    );

    let pods = reader.pods().and_then(|l| {
        let values = hpa::pod_metrics(&l)?;
        Ok((values, l))
    });
    let external = reader.external().and_then(|l| {
        let mut by_pod = std::collections::BTreeMap::new();
        for item in l["items"].as_array().cloned().unwrap_or_default() {
            let pod = item["metricLabels"]["pod"]
                .as_str()
                .unwrap_or("?")
                .to_owned();
            by_pod.insert(pod, item["value"].as_str().unwrap_or("?").to_owned());
        }
        Ok((hpa::external_metrics(&l)?, by_pod))
    });

    let _ = writeln!(
        out,
        "   {:<9} {:<7} {:>14} {:>8}   {:>26} {:>12}",
        "pod", "app", "sending req/s", "queue", "HPA reads req/s (Quantity)", "queue_depth"
    );
    for (i, pod) in PODS.iter().enumerate() {
        let (sending, queue) = match phase.load[i] {
            Some((rps, depth)) => (rps.to_string(), depth.to_string()),
            None => ("silent".to_owned(), "-".to_owned()),
        };
        let read_rps = match &pods {
            Ok((values, list)) => match values.get(pod.name) {
                Some(milli) => {
                    let q = list["items"]
                        .as_array()
                        .and_then(|items| {
                            items
                                .iter()
                                .find(|it| it["describedObject"]["name"] == pod.name)
                        })
                        .and_then(|it| it["value"].as_str())
                        .unwrap_or("?");
                    format!("{} ({q})", fmt_milli(*milli))
                }
                None if pod.app == "web" => "no value".to_owned(),
                None => "not selected".to_owned(),
            },
            Err(_) => "unavailable".to_owned(),
        };
        let read_queue = match &external {
            Ok((_, by_pod)) => match by_pod.get(pod.name) {
                Some(q) => q.clone(),
                None if pod.app == "web" => "no value".to_owned(),
                None => "not selected".to_owned(),
            },
            Err(_) => "unavailable".to_owned(),
        };
        let _ = writeln!(
            out,
            "   {:<9} {:<7} {:>14} {:>8}   {:>26} {:>12}",
            pod.name, pod.app, sending, queue, read_rps, read_queue
        );
    }

    let target = ScaleTarget::running(&WEB);
    let hpa_spec = HpaSpec::new(MIN_REPLICAS, MAX_REPLICAS);
    let pods_input = match &pods {
        Ok((values, _)) => MetricInput::PodsAverageValue {
            target: TARGET_RPS * 1000,
            values: values.clone(),
        },
        Err(e) => MetricInput::Unavailable(format!("{e:#}")),
    };
    let external_input = match &external {
        Ok((values, _)) => MetricInput::ExternalAverageValue {
            target: TARGET_QUEUE * 1000,
            values: values.clone(),
        },
        Err(e) => MetricInput::Unavailable(format!("{e:#}")),
    };
    let recommendation = hpa::recommend(&hpa_spec, &target, &[pods_input, external_input]);
    let proposal = |i: usize| match recommendation.proposals.get(i) {
        Some(Ok(r)) => format!("-> {r}"),
        Some(Err(e)) => format!("-> invalid ({e})"),
        None => String::new(),
    };
    let pods_line = match &pods {
        Ok((values, _)) => {
            let missing: Vec<&str> = WEB
                .iter()
                .filter(|p| !values.contains_key(**p))
                .copied()
                .collect();
            let total: i64 = values.values().sum();
            let mean = total / i64::try_from(values.len().max(1)).unwrap_or(1);
            let mut line = format!(
                "average {}/s of {} item(s) vs target {TARGET_RPS}/s",
                fmt_milli(mean),
                values.len()
            );
            if !missing.is_empty() {
                line.push_str(&format!(
                    "; no value for {} (counted as 0 on a scale-up, as the target on a \
                     scale-down)",
                    missing.join(", ")
                ));
            }
            line
        }
        Err(e) => format!("{e:#}"),
    };
    let external_line = match &external {
        Ok((values, _)) => format!(
            "total {} vs {TARGET_QUEUE} per pod x {} pods",
            fmt_milli(hpa::external_sum(values)),
            target.replicas
        ),
        Err(e) => format!("{e:#}"),
    };
    let _ = writeln!(
        out,
        "   HPA shop/web  Pods requests_per_second: {pods_line} {}",
        proposal(0)
    );
    let _ = writeln!(
        out,
        "                 External queue_depth: {external_line} {}",
        proposal(1)
    );
    match &recommendation.held {
        Some(why) => {
            let _ = writeln!(
                out,
                "   desired replicas: {} (held: {why})",
                recommendation.replicas
            );
        }
        None => {
            let _ = writeln!(
                out,
                "   desired replicas: {} (now 3, min {MIN_REPLICAS}, max {MAX_REPLICAS})",
                recommendation.replicas
            );
        }
    }
    out.push('\n');
    out
}

// ------------------------------------------------------------------------------------------
// The traffic generator

/// One thread sending each pod's DogStatsD from its own address, ten times a second.
struct Traffic {
    thread: thread::JoinHandle<()>,
}

impl Traffic {
    fn start(
        to: SocketAddr,
        phase: Duration,
        start: Instant,
        stop: Arc<AtomicBool>,
    ) -> Result<Traffic> {
        let sockets: Vec<UdpSocket> = PODS
            .iter()
            .map(|pod| {
                UdpSocket::bind((pod.ip, 0)).with_context(|| {
                    format!(
                        "binding a UDP socket to {} (pod {}): loopback addresses other than \
                         127.0.0.1 must be usable (they are on Linux)",
                        pod.ip, pod.name
                    )
                })
            })
            .collect::<Result<_>>()?;
        let thread = thread::Builder::new()
            .name("traffic".to_owned())
            .spawn(move || {
                let mut carry = [0.0f64; 4];
                let mut last = Instant::now();
                let tick = Duration::from_millis(100);
                while !stop.load(Ordering::SeqCst) {
                    let now = Instant::now();
                    let dt = now.duration_since(last).as_secs_f64();
                    last = now;
                    let (index, _) = phase_at(start, phase);
                    for (i, socket) in sockets.iter().enumerate() {
                        let Some((rps, depth)) = PHASES[index].load[i] else {
                            carry[i] = 0.0;
                            continue;
                        };
                        carry[i] += f64::from(rps) * dt;
                        let whole = carry[i].floor();
                        let mut lines = format!("jobs.queue_depth:{depth}|g|#env:demo\n");
                        if whole >= 1.0 {
                            carry[i] -= whole;
                            lines.push_str(&format!("requests:{}|c|#env:demo\n", whole as u64));
                        }
                        // A lost datagram is what UDP does; the bridge counts what arrives.
                        let _ = socket.send_to(lines.as_bytes(), to);
                    }
                    thread::sleep(tick.saturating_sub(now.elapsed()));
                }
            })
            .context("starting the traffic thread")?;
        Ok(Traffic { thread })
    }

    fn join(self) {
        let _ = self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_static_table_names_every_pod() {
        let toml = bridge_config();
        for pod in &PODS {
            assert!(toml.contains(&format!("source = \"{}\"", pod.ip)), "{toml}");
            assert!(toml.contains(&format!("pod = \"{}\"", pod.name)), "{toml}");
        }
    }

    #[test]
    fn phases_cycle() {
        let start = Instant::now();
        let (i, _) = phase_at(start, Duration::from_secs(3600));
        assert_eq!(i, 0);
        assert_eq!(PHASES.iter().filter(|p| p.load[3].is_some()).count(), 4);
    }
}
