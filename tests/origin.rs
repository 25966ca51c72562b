//! statsd-bridge's origin detection end to end: the real binary watching a fake
//! kube-apiserver's pods of its node, the real Python DogStatsD client sending from each
//! "pod's" own loopback address (127.0.0.0/8 is all local on Linux) or over the unix socket,
//! and the labels read back from the metrics page.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use pipeline_tests::check::get;
use pipeline_tests::dogstatsd::op;
use pipeline_tests::exposition::render_key;
use pipeline_tests::kubeapi::{FakeKubeApi, PodFixture, Resource};
use pipeline_tests::util::tests_dir;
use pipeline_tests::{Bridge, DogStatsd, PATIENCE, eventually, python};

const NODE: &str = "node-a";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an IP address")
}

/// `name{labels}` as the metrics map keys it.
fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    render_key(name, &labels)
}

/// A bridge in Kubernetes mode watching `fake` for `NODE`'s pods, with UDP and a unix
/// socket, copying the pods' `app` label, and `extra` lines in `[bridge.origin]`.
fn kube_bridge(fake: &FakeKubeApi, dir: &Path, extra: &str) -> Bridge {
    let kubeconfig = fake.write_kubeconfig(dir).expect("writing the kubeconfig");
    let socket = dir.join("dsd.socket");
    Bridge::start(
        &format!(
            "version = 1\n\n[bridge]\nlisten_udp = [\"127.0.0.1:0\"]\nlisten_tcp = [\"127.0.0.1:0\"]\n\
             listen_unixgram = [{socket:?}]\nweb_listen = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\n\n\
             [bridge.origin]\nmode = \"kubernetes\"\nkubeconfig = {kubeconfig:?}\nnode_name = \"{NODE}\"\n\
             pod_labels = [\"app\"]\n{extra}\n"
        ),
        &[],
    )
}

/// Waits until the bridge says it is ready (the pod list has arrived).
fn wait_ready(bridge: &Bridge) {
    eventually("the bridge to be ready (first pod list)", PATIENCE, || {
        let r = bridge.get("/readyz")?;
        ensure!(r.status == 200, "/readyz answered {}", r.status);
        Ok(())
    });
}

/// Sends `ops` with the Datadog client from `source` to the bridge's UDP listener.
fn send_from(bridge: &Bridge, source: &str, ops: &[serde_json::Value]) {
    DogStatsd::new(bridge.udp_addr())
        .from_source(ip(source))
        .send(ops)
        .unwrap_or_else(|e| panic!("sending from {source}: {e:#}"));
}

/// A self-metric's value (0 when the series isn't there yet).
fn self_metric(map: &BTreeMap<String, f64>, key: &str) -> f64 {
    map.get(key).copied().unwrap_or(0.0)
}

fn lookups(map: &BTreeMap<String, f64>, source: &str, outcome: &str) -> f64 {
    self_metric(
        map,
        &key(
            "statsd_bridge_origin_lookups_total",
            &[("outcome", outcome), ("source", source)],
        ),
    )
}

fn web_pod(name: &str, ip: &str) -> PodFixture {
    let mut pod = PodFixture::new("shop", name, NODE, ip);
    pod.labels = vec![
        ("app".to_owned(), "web".to_owned()),
        ("pod-template-hash".to_owned(), "7d9f".to_owned()),
    ];
    pod.host_ip = Some("127.0.0.1".to_owned());
    pod
}

#[test]
fn pods_are_told_apart_by_source_address_and_follow_changes() {
    let fake = FakeKubeApi::start_with_objects();
    fake.put_pod(&web_pod("web-1", "127.0.0.11"));
    fake.put_pod(&web_pod("web-2", "127.0.0.12"));
    // Another node's pod: the bridge doesn't list it, so its address is unknown here.
    fake.put_pod(&PodFixture::new("batch", "job-1", "node-b", "127.0.0.13"));
    // A host-network pod of this node: its IP is the node's.
    let mut agent = PodFixture::new("kube-system", "node-agent", NODE, "127.0.0.1");
    agent.host_network = true;
    agent.host_ip = Some("127.0.0.1".to_owned());
    fake.put_pod(&agent);

    let dir = tempfile::tempdir().expect("temp dir");
    let bridge = kube_bridge(&fake, dir.path(), "pod_ttl = \"2s\"");
    wait_ready(&bridge);
    let lists = fake.lists_of(Resource::Pods);
    assert!(
        !lists.is_empty()
            && lists
                .iter()
                .all(|r| r.param("fieldSelector").as_deref() == Some("spec.nodeName=node-a")),
        "every pod list is for this node only: {lists:?}"
    );

    send_from(
        &bridge,
        "127.0.0.11",
        &[op::increment("checkout.requests", 3, &["route:/pay"])],
    );
    send_from(
        &bridge,
        "127.0.0.12",
        &[op::increment("checkout.requests", 5, &["route:/pay"])],
    );
    send_from(
        &bridge,
        "127.0.0.13",
        &[op::increment("checkout.requests", 7, &["route:/pay"])],
    );
    send_from(
        &bridge,
        "127.0.0.99",
        &[op::increment("checkout.requests", 11, &["route:/pay"])],
    );
    send_from(&bridge, "127.0.0.1", &[op::gauge("node.agent.up", 1, &[])]);
    // The application's own `pod` tag wins over the origin label (precedence = "tags").
    send_from(
        &bridge,
        "127.0.0.12",
        &[op::gauge("self.named", 1, &["pod:chosen-by-app"])],
    );

    let web = |pod: &str| {
        key(
            "checkout_requests",
            &[
                ("app", "web"),
                ("namespace", "shop"),
                ("pod", pod),
                ("route", "/pay"),
            ],
        )
    };
    let unlabelled = key("checkout_requests", &[("route", "/pay")]);
    eventually(
        "each pod's series to carry its namespace and pod",
        PATIENCE,
        || {
            let m = bridge.metrics_map()?;
            ensure!(get(&m, &web("web-1"))? == 3.0, "web-1");
            ensure!(get(&m, &web("web-2"))? == 5.0, "web-2");
            // 7 from the other node's pod and 11 from an unknown address: no origin labels.
            ensure!(get(&m, &unlabelled)? == 18.0, "unknown senders");
            ensure!(get(&m, &key("node_agent_up", &[]))? == 1.0, "host network");
            get(
                &m,
                &key(
                    "self_named",
                    &[
                        ("app", "web"),
                        ("namespace", "shop"),
                        ("pod", "chosen-by-app"),
                    ],
                ),
            )?;
            ensure!(lookups(&m, "ip", "hit") >= 3.0, "ip hits");
            ensure!(lookups(&m, "ip", "miss") >= 2.0, "ip misses");
            ensure!(
                lookups(&m, "ip", "host_network") >= 1.0,
                "host network lookups"
            );
            ensure!(
                self_metric(&m, "statsd_bridge_origin_pods{}") == 3.0,
                "3 pods of node-a"
            );
            Ok(())
        },
    );
    // No series carries the pod-template-hash label: only `app` was asked for.
    let text = bridge.metrics_text().expect("metrics");
    assert!(!text.contains("pod_template_hash"), "{text}");

    // web-2's sandbox restarts with a new IP: the old one is forgotten, the new one known.
    fake.put_pod(&web_pod("web-2", "127.0.0.22"));
    eventually("the new IP to be web-2's", PATIENCE, || {
        send_from(&bridge, "127.0.0.22", &[op::increment("moved", 1, &[])]);
        let m = bridge.metrics_map()?;
        get(
            &m,
            &key(
                "moved",
                &[("app", "web"), ("namespace", "shop"), ("pod", "web-2")],
            ),
        )?;
        Ok(())
    });
    send_from(
        &bridge,
        "127.0.0.12",
        &[op::increment("after.move", 1, &[])],
    );
    eventually("the old IP to be nobody's", PATIENCE, || {
        let m = bridge.metrics_map()?;
        get(&m, &key("after_move", &[]))?;
        Ok(())
    });

    // web-1 is deleted: its series go pod_ttl later; web-2's stay.
    fake.delete_pod("shop", "web-1").expect("web-1 exists");
    eventually("web-1's series to expire after pod_ttl", PATIENCE, || {
        let m = bridge.metrics_map()?;
        ensure!(
            !m.contains_key(&web("web-1")),
            "web-1's series is still there"
        );
        ensure!(m.contains_key(&web("web-2")), "web-2's series went too");
        ensure!(
            self_metric(&m, "statsd_bridge_origin_series_expired_total{}") >= 1.0,
            "expiry not counted"
        );
        ensure!(
            self_metric(&m, "statsd_bridge_origin_pods{}") == 2.0,
            "pods after delete"
        );
        Ok(())
    });
}

/// A 64-hex container ID made from a short name.
fn container_id(seed: u8) -> String {
    format!("{seed:02x}").repeat(32)
}

/// Starts `send.py` over the unix socket with its first stdin line held back by `sh`, so the
/// test knows the sender's PID (sh execs python, which keeps it) before anything is sent.
struct HeldSender {
    child: std::process::Child,
}

impl HeldSender {
    fn start(socket: &Path, container: Option<&str>) -> Result<HeldSender> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("read go && exec \"$0\" \"$@\"")
            .arg(python())
            .arg(tests_dir().join("py/send.py"))
            .arg("--socket-path")
            .arg(socket);
        if let Some(id) = container {
            cmd.arg("--container-id").arg(id);
        }
        for (k, _) in std::env::vars_os() {
            let name = k.to_string_lossy();
            if name.starts_with("DD_") || name.starts_with("DATADOG_") {
                cmd.env_remove(&k);
            }
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().with_context(|| format!("running {cmd:?}"))?;
        Ok(HeldSender { child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn release(mut self, ops: &[serde_json::Value]) -> Result<String> {
        let mut stdin = self.child.stdin.take().context("stdin")?;
        stdin.write_all(b"go\n")?;
        stdin.write_all(&serde_json::to_vec(ops)?)?;
        drop(stdin);
        let out = self.child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "send.py failed: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[test]
fn unix_socket_senders_are_found_by_pid_cgroup_and_by_container_id() {
    let fake = FakeKubeApi::start_with_objects();
    let uid = "3c1f6f5e-8a5e-4f1b-9e0d-2b7c5a9e4d21";
    let mut web = web_pod("web-1", "10.1.0.11");
    web.uid = uid.to_owned();
    web.container_ids = vec![format!("containerd://{}", container_id(0xa1))];
    fake.put_pod(&web);
    let mut worker = PodFixture::new("jobs", "worker-0", NODE, "10.1.0.12");
    worker.labels = vec![("app".to_owned(), "worker".to_owned())];
    worker.container_ids = vec![format!("cri-o://{}", container_id(0xb2))];
    fake.put_pod(&worker);

    let dir = tempfile::tempdir().expect("temp dir");
    let proc_root = dir.path().join("proc");
    std::fs::create_dir_all(&proc_root).expect("proc root");
    let bridge = kube_bridge(
        &fake,
        dir.path(),
        &format!("proc_root = {:?}", proc_root.display().to_string()),
    );
    wait_ready(&bridge);
    let socket = bridge.unixgram_path().to_path_buf();

    // 1. The sender's PID → <proc_root>/<pid>/cgroup (cgroup v2, systemd driver, containerd)
    //    → web-1's container.
    let sender = HeldSender::start(&socket, None).expect("starting the sender");
    let cgroup_dir = proc_root.join(sender.pid().to_string());
    std::fs::create_dir_all(&cgroup_dir).expect("pid dir");
    std::fs::write(
        cgroup_dir.join("cgroup"),
        format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{}.scope\n",
            uid.replace('-', "_"),
            container_id(0xa1)
        ),
    )
    .expect("fake cgroup file");
    sender
        .release(&[op::increment("uds.by_pid", 2, &[])])
        .expect("sending over UDS");

    // 2. A PID without a cgroup file (not a pod's process): no labels.
    DogStatsd::unix(&socket)
        .send(&[op::increment("uds.unknown", 1, &[])])
        .expect("sending over UDS");

    // 3. The client's container_id (|c:ci-…, DogStatsD v1.4) names worker-0's container:
    //    it wins over the socket's sender, over UDS and over UDP.
    DogStatsd::unix(&socket)
        .with_container_id(&format!("ci-{}", container_id(0xb2)))
        .send(&[op::increment("uds.by_container", 3, &[])])
        .expect("sending over UDS");
    DogStatsd::new(bridge.udp_addr())
        .with_container_id(&container_id(0xb2))
        .send(&[op::increment("udp.by_container", 4, &[])])
        .expect("sending over UDP");
    // An unknown container ID: the datagram's sender stands (here: nobody).
    DogStatsd::unix(&socket)
        .with_container_id("ci-feedface")
        .send(&[op::increment("uds.unknown_container", 5, &[])])
        .expect("sending over UDS");

    let web1 = [("app", "web"), ("namespace", "shop"), ("pod", "web-1")];
    let worker0 = [
        ("app", "worker"),
        ("namespace", "jobs"),
        ("pod", "worker-0"),
    ];
    eventually("UDS senders to carry their pods' labels", PATIENCE, || {
        let m = bridge.metrics_map()?;
        ensure!(get(&m, &key("uds_by_pid", &web1))? == 2.0, "by pid");
        ensure!(get(&m, &key("uds_unknown", &[]))? == 1.0, "unknown pid");
        ensure!(
            get(&m, &key("uds_by_container", &worker0))? == 3.0,
            "by |c: over UDS"
        );
        ensure!(
            get(&m, &key("udp_by_container", &worker0))? == 4.0,
            "by |c: over UDP"
        );
        ensure!(
            get(&m, &key("uds_unknown_container", &[]))? == 5.0,
            "unknown |c:"
        );
        ensure!(lookups(&m, "uds", "hit") >= 1.0, "uds hits");
        ensure!(lookups(&m, "uds", "miss") >= 1.0, "uds misses");
        ensure!(lookups(&m, "container_id", "hit") >= 2.0, "container hits");
        ensure!(
            lookups(&m, "container_id", "miss") >= 1.0,
            "container misses"
        );
        Ok(())
    });
}

#[test]
fn a_static_table_labels_senders_without_kubernetes() {
    let bridge = Bridge::start(
        "version = 1\n\n[bridge]\nlisten_udp = [\"127.0.0.1:0\"]\nlisten_tcp = [\"127.0.0.1:0\"]\n\
         web_listen = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\n\n\
         [bridge.origin]\nmode = \"static\"\nprecedence = \"origin\"\n\n\
         [[bridge.origin.static]]\nsource = \"127.0.1.0/24\"\nlabels = { namespace = \"lab\" }\n\n\
         [[bridge.origin.static]]\nsource = \"127.0.1.7\"\nlabels = { namespace = \"lab\", pod = \"bench-7\" }\n",
        &[],
    );
    send_from(
        &bridge,
        "127.0.1.7",
        &[op::increment("hits", 1, &["pod:claimed"])],
    );
    send_from(&bridge, "127.0.1.8", &[op::increment("hits", 2, &[])]);
    send_from(&bridge, "127.0.2.1", &[op::increment("hits", 4, &[])]);
    eventually(
        "static labels by the longest prefix, origin winning",
        PATIENCE,
        || {
            let m = bridge.metrics_map()?;
            // precedence = "origin": the table's pod beats the line's own tag.
            ensure!(
                get(
                    &m,
                    &key("hits", &[("namespace", "lab"), ("pod", "bench-7")])
                )? == 1.0,
                "/32"
            );
            ensure!(
                get(&m, &key("hits", &[("namespace", "lab")]))? == 2.0,
                "/24"
            );
            ensure!(get(&m, &key("hits", &[]))? == 4.0, "outside the table");
            Ok(())
        },
    );
    // TCP senders are told apart by their peer address too, every line of the connection.
    let tcp: [(&str, &[(&str, &str)]); 3] = [
        ("127.0.1.7", &[("namespace", "lab"), ("pod", "bench-7")]),
        ("127.0.1.8", &[("namespace", "lab")]),
        ("127.0.0.1", &[]),
    ];
    for (source, _) in tcp {
        send_tcp_from(&bridge, source, b"over.tcp:1|c\nover.tcp:2|c\n")
            .unwrap_or_else(|e| panic!("sending over TCP from {source}: {e:#}"));
    }
    eventually(
        "TCP senders labelled by the table's entry for their address",
        PATIENCE,
        || {
            let m = bridge.metrics_map()?;
            for (source, labels) in tcp {
                let k = key("over_tcp", labels);
                ensure!(get(&m, &k)? == 3.0, "from {source}: {k}");
            }
            Ok(())
        },
    );
}

/// Writes `bytes` to the bridge's TCP listener from a socket bound to `source` (a "pod's"
/// loopback address), then closes it.
fn send_tcp_from(bridge: &Bridge, source: &str, bytes: &[u8]) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let mut stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(ip(source), 0))?;
        let stream = socket.connect(bridge.tcp_addr()).await?;
        stream.into_std()
    })?;
    stream.set_nonblocking(false)?;
    stream.write_all(bytes)?;
    stream.shutdown(std::net::Shutdown::Write)?;
    Ok(())
}

/// One line from each of `ips`, each from its own socket bound to that address.
fn send_from_each(to: SocketAddr, ips: &[Ipv4Addr], line: &str) -> Result<()> {
    for ip in ips {
        let socket = UdpSocket::bind((*ip, 0)).with_context(|| format!("binding {ip}"))?;
        socket.send_to(line.as_bytes(), to)?;
    }
    Ok(())
}

#[test]
fn pod_churn_leaves_nothing_behind() {
    const PODS: usize = 1_000;
    let fake = FakeKubeApi::start_with_objects();
    let dir = tempfile::tempdir().expect("temp dir");
    let bridge = kube_bridge(&fake, dir.path(), "pod_ttl = \"2s\"");
    wait_ready(&bridge);
    let series = |b: &Bridge| -> Result<f64> { get(&b.metrics_map()?, "statsd_bridge_series{}") };
    // Self-metrics are not series of the store; a first line makes the baseline concrete.
    bridge.send(&[b"baseline:1|c"]).expect("sending");
    let baseline = eventually("the baseline series", PATIENCE, || {
        let n = series(&bridge)?;
        ensure!(n >= 1.0, "no series yet");
        Ok(n)
    });
    let expired =
        |m: &BTreeMap<String, f64>| self_metric(m, "statsd_bridge_origin_series_expired_total{}");
    let expired_before = expired(&bridge.metrics_map().expect("metrics"));
    let mut rss = vec![bridge.rss_bytes().expect("RSS")];

    for round in 0..2u8 {
        let ips: Vec<Ipv4Addr> = (0..PODS)
            .map(|i| Ipv4Addr::new(127, 10 + round, (i / 250) as u8, (i % 250 + 1) as u8))
            .collect();
        for (i, a) in ips.iter().enumerate() {
            fake.put_pod(&PodFixture::new(
                "churn",
                &format!("pod-{round}-{i}"),
                NODE,
                &a.to_string(),
            ));
        }
        eventually("every churn pod in the index", PATIENCE, || {
            let m = bridge.metrics_map()?;
            let pods = self_metric(&m, "statsd_bridge_origin_pods{}");
            ensure!(pods == PODS as f64, "{pods} pods indexed");
            Ok(())
        });
        eventually("a series per pod", PATIENCE, || {
            send_from_each(bridge.udp_addr(), &ips, "churn.requests:1|c")?;
            let n = series(&bridge)?;
            ensure!(n >= baseline + PODS as f64, "{n} series");
            Ok(())
        });
        for i in 0..PODS {
            fake.delete_pod("churn", &format!("pod-{round}-{i}"))
                .expect("pod exists");
        }
        // Exactly the level before any churn: every churned pod's series went, and went as
        // a deleted pod's (one each, so none was left unlabelled), and the index is empty.
        let swept = PODS as f64 * f64::from(round + 1);
        eventually(
            "the series and the index back to the level before any churn",
            PATIENCE,
            || {
                let m = bridge.metrics_map()?;
                let n = get(&m, "statsd_bridge_series{}")?;
                ensure!(n == baseline, "{n} series, baseline {baseline}");
                ensure!(
                    self_metric(&m, "statsd_bridge_origin_pods{}") == 0.0,
                    "pods left"
                );
                let gone = expired(&m) - expired_before;
                ensure!(gone == swept, "{gone} pod series expired, {swept} churned");
                Ok(())
            },
        );
        rss.push(bridge.rss_bytes().expect("RSS"));
    }
    // Memory is checked by those exact counts, not by RSS: a leak of the churned pods'
    // series and index entries (about 1 KB a pod, 1 MB a round) is smaller than what the
    // allocator keeps of the first round's peak with nothing leaked (RSS rose 2.9 MB over
    // it, 16.0 → 18.9 MB), so no RSS bound against the level before churn could both hold
    // and catch it. The heap itself is counted exactly, over 20,000 churned pods, by
    // statsd-bridge/tests/churn_heap.rs.
    eprintln!("RSS before churn, after round 1, after round 2: {rss:?} bytes");
}

#[test]
fn kubernetes_mode_without_a_node_name_fails_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("pipeline.toml");
    std::fs::write(
        &config,
        "version = 1\n[bridge]\nlisten_udp = [\"127.0.0.1:0\"]\nlisten_tcp = []\nweb_listen = \"127.0.0.1:0\"\n\
         [bridge.origin]\nmode = \"kubernetes\"\n",
    )
    .expect("config");
    let out = Command::new(pipeline_tests::bin("statsd-bridge"))
        .arg("--config")
        .arg(&config)
        .env_remove("NODE_NAME")
        .output()
        .expect("running statsd-bridge");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("NODE_NAME"), "{stderr}");
}

#[test]
fn lines_wait_for_the_first_pod_list_and_the_watch_survives_an_outage() {
    let fake = FakeKubeApi::start_with_objects();
    fake.put_pod(&web_pod("web-1", "127.0.0.11"));
    fake.hold_lists(true);
    let dir = tempfile::tempdir().expect("temp dir");
    let bridge = kube_bridge(&fake, dir.path(), "");
    eventually("the bridge's pod list to be held", PATIENCE, || {
        ensure!(fake.held_lists() >= 1, "no list waiting yet");
        Ok(())
    });
    let r = bridge.get("/readyz").expect("GET /readyz");
    assert_eq!(r.status, 503, "ready before the pod list arrived");
    // Sent before the list: the kernel holds it until the listeners start, so it still gets
    // its pod's labels.
    send_from(&bridge, "127.0.0.11", &[op::increment("early", 1, &[])]);
    fake.hold_lists(false);
    wait_ready(&bridge);
    let web1 = [("app", "web"), ("namespace", "shop"), ("pod", "web-1")];
    eventually("the early line with its pod's labels", PATIENCE, || {
        let m = bridge.metrics_map()?;
        ensure!(get(&m, &key("early", &web1))? == 1.0, "early");
        ensure!(
            !m.contains_key(&key("early", &[])),
            "an early line went unlabelled"
        );
        Ok(())
    });

    // The kube-apiserver goes away and comes back: the watch restarts and sees what changed.
    fake.set_down(true).expect("taking the fake down");
    eventually("the watch to notice the outage", PATIENCE, || {
        let m = bridge.metrics_map()?;
        ensure!(
            self_metric(&m, "statsd_bridge_origin_watch_restarts_total{}") >= 1.0,
            "no restart counted"
        );
        Ok(())
    });
    fake.set_down(false).expect("bringing the fake back");
    fake.put_pod(&web_pod("web-2", "127.0.0.12"));
    eventually(
        "a pod added during the outage to be known",
        PATIENCE,
        || {
            send_from(&bridge, "127.0.0.12", &[op::increment("late", 1, &[])]);
            let m = bridge.metrics_map()?;
            get(
                &m,
                &key(
                    "late",
                    &[("app", "web"), ("namespace", "shop"), ("pod", "web-2")],
                ),
            )?;
            Ok(())
        },
    );
    // Ready all along: an outage of the kube-apiserver doesn't take the bridge out.
    assert_eq!(bridge.get("/readyz").expect("GET /readyz").status, 200);
}
