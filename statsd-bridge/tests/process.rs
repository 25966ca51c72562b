//! Process-level tests of the `statsd-bridge` binary: exit codes, config errors, the ready
//! file, SIGTERM. End-to-end tests with real peers live in the workspace's `tests/` crate.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_statsd-bridge");

/// Kills the child if a test panics before it exits.
struct Bridge {
    child: Child,
    web: String,
    udp: String,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, config: &str) -> Bridge {
    let cfg = dir.join("pipeline.toml");
    std::fs::write(&cfg, config).unwrap();
    let ready = dir.join("ready.json");
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("--ready-file")
        .arg(&ready)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        if let Ok(t) = std::fs::read_to_string(&ready) {
            break t;
        }
        assert!(Instant::now() < deadline, "no ready file after 30 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    Bridge {
        child,
        web: v["web"].as_str().unwrap().to_owned(),
        udp: v["udp"][0].as_str().unwrap().to_owned(),
    }
}

fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp.get(9..12).unwrap().parse().unwrap();
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

fn wait_exit(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "did not exit within {limit:?} (hang guard)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const CONFIG: &str = "version = 1\n[bridge]\nlisten_udp = [\"127.0.0.1:0\"]\nlisten_tcp = []\nweb_listen = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\n";

#[test]
fn sigterm_drains_serves_the_grace_period_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = start(dir.path(), CONFIG);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..1000 {
        sock.send_to(format!("drain_test:1|c|#i:{}", i % 10).as_bytes(), &b.udp)
            .unwrap();
    }
    let pid = b.child.id().to_string();
    // Wait until the lines are in, then terminate.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !get(&b.web, "/metrics")
        .1
        .contains("statsd_bridge_lines_total{transport=\"udp\"} 1000")
    {
        assert!(Instant::now() < deadline, "lines never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // During the grace period: not ready, but the page still serves every line.
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&b.web, "/readyz").0 != 503 {
        assert!(Instant::now() < deadline, "readyz never went to 503");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (code, page) = get(&b.web, "/metrics");
    assert_eq!(code, 200);
    let total: f64 = page
        .lines()
        .filter(|l| l.starts_with("drain_test{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    assert_eq!(total, 1000.0);
    assert!(wait_exit(&mut b.child, Duration::from_secs(30)).success());
}

#[test]
fn health_endpoints_and_unknown_paths() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path(), CONFIG);
    assert_eq!(get(&b.web, "/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(get(&b.web, "/readyz").0, 200);
    assert_eq!(get(&b.web, "/nope").0, 404);
    let (code, page) = get(&b.web, "/metrics");
    assert_eq!(code, 200);
    assert!(page.contains("# TYPE statsd_bridge_lines_rejected_total counter"));
    assert!(page.contains("process_resident_memory_bytes "));
}

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap(), text)
}

fn repo_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name)
}

#[test]
fn check_config_accepts_the_shipped_file() {
    let (code, out) = run(&["check-config", repo_file("pipeline.toml").to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn check_config_names_file_line_and_field_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(
        &f,
        "version = 1\n[bridge]\nmax_series = 10\nttl = \"soon\"\n",
    )
    .unwrap();
    let (code, out) = run(&["check-config", f.to_str().unwrap()]);
    assert_eq!(code, 64);
    assert!(out.contains("bad.toml:4:7: field `bridge.ttl`:"), "{out}");
    let (code, out) = run(&["--check-config", "--config", f.to_str().unwrap()]);
    assert_eq!(code, 64);
    assert!(out.contains("bad.toml:4:7"), "{out}");
}

#[test]
fn bad_flags_exit_with_usage_errors() {
    let (code, out) = run(&["--web.listen-address", "nowhere", "--check-config"]);
    assert_eq!(code, 64);
    assert!(out.contains("flag --web.listen-address"), "{out}");
    let (code, _) = run(&["--statsd.made-up-flag"]);
    assert_ne!(code, 0);
    let (code, out) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--statsd.listen-udp"));
}

#[test]
fn port_in_use_is_a_runtime_error_not_a_panic() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, out) = run(&[
        "--web.listen-address",
        &addr,
        "--statsd.listen-udp",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cannot bind HTTP"), "{out}");
}

#[test]
fn many_udp_senders_over_reuseport_workers_are_counted_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let config = "version = 1\n[bridge]\nlisten_udp = [\"127.0.0.1:0\"]\nlisten_tcp = []\nweb_listen = \"127.0.0.1:0\"\nudp_workers = 2\nshutdown_grace = \"0s\"\n";
    let b = start(dir.path(), config);
    const SENDERS: usize = 8;
    const PACKETS: usize = 2_000;
    let senders: Vec<_> = (0..SENDERS)
        .map(|i| {
            let target = b.udp.clone();
            std::thread::spawn(move || {
                // Each sender its own socket, so the kernel spreads them over the workers.
                let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
                for p in 0..PACKETS {
                    let packet = format!("multi_sender:1|c|#sender:{i}\nmulti_total:1|c");
                    sock.send_to(packet.as_bytes(), &target).unwrap();
                    if p % 200 == 0 {
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let sent = (SENDERS * PACKETS * 2) as f64;
    let metric = |page: &str, prefix: &str| -> f64 {
        page.lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
            .sum()
    };
    // Everything sent is either read or counted as dropped by the kernel. A page's series
    // are snapshotted just before its self-metrics, so wait until the two agree (nothing is
    // in flight any more) before comparing them.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (page, accepted) = loop {
        let page = get(&b.web, "/metrics").1;
        let lines = metric(&page, "statsd_bridge_lines_total{transport=\"udp\"}");
        let drops = metric(&page, "statsd_bridge_udp_receive_buffer_drops_total");
        let accepted = metric(&page, "statsd_bridge_samples_total{type=\"counter\"}");
        let settled = metric(&page, "multi_total ") * 2.0 == accepted;
        if lines + 2.0 * drops >= sent && settled {
            break (page, accepted);
        }
        assert!(
            Instant::now() < deadline,
            "only {lines} lines read and {drops} datagrams dropped of {sent}; {accepted} accepted"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(metric(&page, "multi_sender{"), accepted / 2.0);
    assert_eq!(metric(&page, "multi_total "), accepted / 2.0);
    assert!(accepted > 0.0);
}
