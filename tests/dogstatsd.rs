//! The real Datadog Python client (`datadog.dogstatsd.DogStatsd`), driven through
//! `tests/py/send.py`.
//!
//! Habits of that client worth knowing when writing assertions:
//! - with `sample_rate` < 1 it drops samples at random on the client side, so exact-value tests
//!   use rate 1 with it and send sampled lines as raw UDP instead;
//! - every datagram ends with `\n`;
//! - `gauge(x, -5)` goes out as `x:-5|g`, which the bridge reads as a delta by default;
//! - tags are normalized: characters outside `[\w\d_\-:/.]` (quotes, backslashes, commas,
//!   pipes, emoji…) become `_`, so hostile tag values must be sent as raw UDP.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::util::{python, tests_dir};

/// A sender of DogStatsD operations to one UDP address or unix datagram socket.
#[derive(Debug, Clone)]
pub struct DogStatsd {
    target: Target,
    source: Option<IpAddr>,
    container_id: Option<String>,
}

/// Where the client sends.
#[derive(Debug, Clone)]
enum Target {
    /// `DogStatsd(host=…, port=…)`.
    Udp(SocketAddr),
    /// `DogStatsd(socket_path=…)`.
    Unix(PathBuf),
}

#[derive(Deserialize)]
struct SendReport {
    sent: Vec<SentDatagram>,
}

#[derive(Deserialize)]
struct SentDatagram {
    datagram: String,
    ok: bool,
}

impl DogStatsd {
    /// A sender to `target` (the bridge's UDP listener).
    pub fn new(target: SocketAddr) -> Self {
        Self {
            target: Target::Udp(target),
            source: None,
            container_id: None,
        }
    }

    /// A sender to the unix datagram socket at `path` (the client's `socket_path=`).
    pub fn unix(path: &Path) -> Self {
        Self {
            target: Target::Unix(path.to_path_buf()),
            source: None,
            container_id: None,
        }
    }

    /// Sends from `ip` (the UDP socket bound to it, as a pod's traffic comes from its IP).
    pub fn from_source(mut self, ip: IpAddr) -> Self {
        self.source = Some(ip);
        self
    }

    /// Passes `container_id=id` to the client, which ends every line with `|c:<id>`.
    pub fn with_container_id(mut self, id: &str) -> Self {
        self.container_id = Some(id.to_owned());
        self
    }

    /// Runs `send.py` with `ops` (see the [`op`] builders) and returns the exact datagrams the
    /// client put on the wire, in order.
    pub fn send(&self, ops: &[Value]) -> Result<Vec<String>> {
        let script = tests_dir().join("py/send.py");
        let mut cmd = Command::new(python());
        cmd.arg(&script);
        match &self.target {
            Target::Udp(addr) => cmd
                .arg("--host")
                .arg(addr.ip().to_string())
                .arg("--port")
                .arg(addr.port().to_string()),
            Target::Unix(path) => cmd.arg("--socket-path").arg(path),
        };
        if let Some(ip) = self.source {
            cmd.arg("--source").arg(ip.to_string());
        }
        if let Some(id) = &self.container_id {
            cmd.arg("--container-id").arg(id);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("DD_") || k.starts_with("DATADOG_") {
                cmd.env_remove(&key);
            }
        }
        let mut child = cmd.spawn().with_context(|| format!("running {cmd:?}"))?;
        let input = serde_json::to_vec(ops)?;
        child
            .stdin
            .take()
            .context("send.py stdin")?
            .write_all(&input)
            .context("writing ops to send.py")?;
        let output = child.wait_with_output().context("waiting for send.py")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        anyhow::ensure!(
            output.status.success(),
            "send.py failed with {}\nstdout: {stdout}\nstderr: {stderr}",
            output.status
        );
        let report: SendReport = serde_json::from_str(stdout.trim())
            .with_context(|| format!("parsing send.py output: {stdout}"))?;
        let failed: Vec<&str> = report
            .sent
            .iter()
            .filter(|s| !s.ok)
            .map(|s| s.datagram.as_str())
            .collect();
        anyhow::ensure!(failed.is_empty(), "the client failed to send {failed:?}");
        Ok(report.sent.into_iter().map(|s| s.datagram).collect())
    }
}

/// Builders of the JSON operations `send.py` understands.
pub mod op {
    use super::*;

    fn metric(kind: &str, name: &str, value: Value, tags: &[&str]) -> Value {
        json!({ "op": kind, "name": name, "value": value, "tags": tags })
    }

    /// `increment(name, value, tags)`: a counter (`name:value|c`).
    pub fn increment(name: &str, value: impl Into<Value>, tags: &[&str]) -> Value {
        metric("increment", name, value.into(), tags)
    }

    /// `decrement(name, value, tags)`: sent as a negative counter (`name:-value|c`).
    pub fn decrement(name: &str, value: impl Into<Value>, tags: &[&str]) -> Value {
        metric("decrement", name, value.into(), tags)
    }

    /// `gauge(name, value, tags)` (`name:value|g`; a negative value reads as a delta).
    pub fn gauge(name: &str, value: impl Into<Value>, tags: &[&str]) -> Value {
        metric("gauge", name, value.into(), tags)
    }

    /// `timing(name, ms, tags)` (`name:ms|ms`).
    pub fn timing(name: &str, ms: impl Into<Value>, tags: &[&str]) -> Value {
        metric("timing", name, ms.into(), tags)
    }

    /// `histogram(name, value, tags)` (`name:value|h`).
    pub fn histogram(name: &str, value: impl Into<Value>, tags: &[&str]) -> Value {
        metric("histogram", name, value.into(), tags)
    }

    /// `distribution(name, value, tags)` (`name:value|d`).
    pub fn distribution(name: &str, value: impl Into<Value>, tags: &[&str]) -> Value {
        metric("distribution", name, value.into(), tags)
    }

    /// `set(name, member, tags)` (`name:member|s`).
    pub fn set(name: &str, member: impl Into<Value>, tags: &[&str]) -> Value {
        metric("set", name, member.into(), tags)
    }

    /// `event(title, text, alert_type=…, tags=…)` (`_e{len,len}:title|text|t:type|#tags`).
    pub fn event(title: &str, text: &str, alert_type: Option<&str>, tags: &[&str]) -> Value {
        let mut op = json!({ "op": "event", "title": title, "text": text, "tags": tags });
        if let Some(alert_type) = alert_type {
            op["alert_type"] = json!(alert_type);
        }
        op
    }

    /// `service_check(name, status, tags)` (`_sc|name|status|#tags`; 0 OK … 3 UNKNOWN).
    pub fn service_check(name: &str, status: u8, tags: &[&str]) -> Value {
        json!({ "op": "service_check", "name": name, "status": status, "tags": tags })
    }

    /// `op` with a client-side sample rate (the client then drops samples at random).
    pub fn sampled(mut op: Value, sample_rate: f64) -> Value {
        op["sample_rate"] = json!(sample_rate);
        op
    }

    /// `op` sent `times` times.
    pub fn repeat(mut op: Value, times: u32) -> Value {
        op["repeat"] = json!(times);
        op
    }
}
