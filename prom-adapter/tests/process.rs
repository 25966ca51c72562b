//! Process-level tests of the `prom-adapter` binary: exit codes, config errors, the ready
//! file, the self-signed certificate in `--cert-dir`, SIGTERM. The API itself is tested end
//! to end, with a real Prometheus and kubectl, in the workspace's `tests/` crate.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_prom-adapter");

const RULES: &str = r#"rules:
- seriesQuery: '{namespace!="",pod!=""}'
  resources:
    overrides:
      namespace: {resource: "namespace"}
      pod: {resource: "pod"}
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
"#;

/// Kills the child if a test panics before it exits.
struct Adapter(Child);

impl Drop for Adapter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn start(dir: &Path, extra: &[&str]) -> (Adapter, String) {
    let rules = dir.join("rules.yaml");
    std::fs::write(&rules, RULES).unwrap();
    let ready = dir.join("ready.json");
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&rules)
        .args(["--secure-port", "0", "--bind-address", "127.0.0.1"])
        // Nothing listens here: the adapter must serve anyway.
        .args(["--prometheus-url", "http://127.0.0.1:1"])
        .arg("--insecure-dev")
        .arg("--ready-file")
        .arg(&ready)
        .args(extra)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut adapter = Adapter(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        if let Ok(t) = std::fs::read_to_string(&ready) {
            break t;
        }
        if let Some(status) = adapter.0.try_wait().unwrap() {
            panic!("prom-adapter exited before it was ready: {status}");
        }
        assert!(Instant::now() < deadline, "no ready file after 30 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    (adapter, v["secure"].as_str().unwrap().to_owned())
}

#[test]
fn sigterm_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (mut adapter, addr) = start(dir.path(), &[]);
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let pid = adapter.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // A guard against a hang, not a performance figure.
    let status = wait_exit(&mut adapter.0, Duration::from_secs(30)).expect("still running");
    assert!(status.success(), "{status}");
}

#[test]
fn refuses_to_start_without_a_way_to_authenticate() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, RULES).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&rules)
        .args(["--secure-port", "0", "--bind-address", "127.0.0.1"])
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--insecure-dev") && err.contains("--authorization-kubeconfig"),
        "{err}"
    );
}

#[test]
fn cert_dir_keeps_the_self_signed_pair_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_arg = certs.to_str().unwrap().to_owned();
    let (first, _) = start(dir.path(), &["--cert-dir", &certs_arg]);
    drop(first);
    let pem = std::fs::read_to_string(certs.join("apiserver.crt")).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert!(certs.join("apiserver.key").exists());
    std::fs::remove_file(dir.path().join("ready.json")).unwrap();
    let (second, _) = start(dir.path(), &["--cert-dir", &certs_arg]);
    drop(second);
    assert_eq!(
        std::fs::read_to_string(certs.join("apiserver.crt")).unwrap(),
        pem
    );
}

#[test]
fn check_config_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("rules.yaml");
    std::fs::write(&good, RULES).unwrap();
    let out = run(&["check-config", good.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}: ok\n", good.display())
    );

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, RULES.replace("metricsQuery", "metricQuery")).unwrap();
    let out = run(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:7:", bad.display())), "{err}");
    assert!(err.contains("metricQuery"), "{err}");

    let toml = dir.path().join("pipeline.toml");
    std::fs::write(
        &toml,
        "version = 1\n[adapter]\nrelist_interval = \"soon\"\n",
    )
    .unwrap();
    let out = run(&["check-config", toml.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pipeline.toml:3:") && err.contains("adapter.relist_interval"),
        "{err}"
    );
}

#[test]
fn shipped_pipeline_toml_checks() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../pipeline.toml");
    let out = run(&["check-config", shipped]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn bad_flags_are_usage_errors() {
    let out = run(&[
        "--prometheus-verb",
        "PUT",
        "check-config",
        "/nonexistent.yaml",
    ]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let out = run(&["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // prometheus-adapter's flags with no effect here are accepted.
    let out = run(&["--disable-http2", "--logtostderr", "--help"]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn help_names_prometheus_adapter_flags() {
    let out = run(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--prometheus-url",
        "--metrics-relist-interval",
        "--metrics-max-age",
        "--secure-port",
        "--tls-cert-file",
        "--tls-private-key-file",
        "--cert-dir",
        "--prometheus-verb",
        "--prometheus-header",
        "--prometheus-ca-file",
        "--prometheus-token-file",
        "--prometheus-client-tls-cert-file",
        "--prometheus-client-tls-key-file",
        "--v",
        "check-config",
        "render",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

/// `GET https://addr{path}` with curl (the adapter's certificate is self-signed here).
fn curl(addr: &str, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "10"])
        .arg(format!("https://{addr}{path}"))
        .output()
        .expect("curl is needed by this test: apt-get install curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "not within 30 s: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const EXTERNAL_A: &str = r#"externalRules:
- seriesQuery: '{__name__="queue_depth"}'
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>})'
"#;

#[test]
fn rules_reload_on_file_change_and_sighup_and_a_bad_file_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    let ready = dir.path().join("ready.json");
    std::fs::write(&rules, EXTERNAL_A).unwrap();
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&rules)
        .args([
            "--secure-port",
            "0",
            "--bind-address",
            "127.0.0.1",
            "--insecure-dev",
        ])
        .args(["--prometheus-url", "http://127.0.0.1:1"])
        .arg("--ready-file")
        .arg(&ready)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut adapter = Adapter(child);
    eventually("ready file", || ready.exists());
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
    let addr = v["secure"].as_str().unwrap().to_owned();
    let list = |addr: &str| curl(addr, "/apis/external.metrics.k8s.io/v1beta1");
    // Prometheus is unreachable: the list is what the rules name by themselves.
    eventually("queue_depth listed", || {
        list(&addr).contains("\"queue_depth\"")
    });

    // A changed file is picked up.
    std::fs::write(&rules, EXTERNAL_A.replace("queue_depth", "jobs_waiting")).unwrap();
    eventually("jobs_waiting listed after the file changed", || {
        list(&addr).contains("\"jobs_waiting\"")
    });
    assert!(!list(&addr).contains("queue_depth"));

    // A broken file keeps the running rules and says so in the self-metrics.
    std::fs::write(&rules, "externalRules:\n- seriesQery: x\n").unwrap();
    eventually("the failed reload is counted", || {
        curl(&addr, "/metrics").contains("prom_adapter_config_last_reload_successful 0")
    });
    assert!(list(&addr).contains("\"jobs_waiting\""));

    // Rules naming a backend this process doesn't have are refused the same way: backends
    // change only on restart.
    std::fs::write(
        &rules,
        EXTERNAL_A.replace("queue_depth", "jobs_late") + "  backend: thanos\n",
    )
    .unwrap();
    eventually("the reload naming an unknown backend is refused", || {
        let page = curl(&addr, "/metrics");
        page.contains("prom_adapter_config_last_reload_successful 0")
            && page.contains(r#"prom_adapter_config_reloads_total{result="error"} 2"#)
    });
    assert!(list(&addr).contains("\"jobs_waiting\""));
    assert!(!list(&addr).contains("jobs_late"));

    // SIGHUP reloads too (after the file is fixed; the poll may also catch the change).
    std::fs::write(&rules, EXTERNAL_A.replace("queue_depth", "orders_open")).unwrap();
    let pid = adapter.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    eventually("orders_open listed", || {
        list(&addr).contains("\"orders_open\"")
    });
    assert!(curl(&addr, "/metrics").contains("prom_adapter_config_last_reload_successful 1"));
    assert!(
        adapter.0.try_wait().unwrap().is_none(),
        "SIGHUP must not stop the adapter"
    );
}
