//! Locating the workspace, its binaries and the programs the tests drive; waiting.

use std::env;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};

/// How long [`eventually`] waits by default, before `PIPELINE_TEST_PATIENCE` scales it.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The root of the workspace (the directory holding the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` if set, else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// The path of one of the workspace's binaries.
///
/// Looks in `$PIPELINE_BIN_DIR`, then `target/release`, then `target/debug`.
///
/// # Panics
/// When none of them holds the binary: build it first with `cargo build --release --bins`
/// (`scripts/test.sh` does).
pub fn bin(name: &str) -> PathBuf {
    let mut candidates = Vec::new();
    if let Some(dir) = env::var_os("PIPELINE_BIN_DIR").filter(|d| !d.is_empty()) {
        candidates.push(PathBuf::from(dir).join(name));
    }
    candidates.push(target_dir().join("release").join(name));
    candidates.push(target_dir().join("debug").join(name));
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return found.clone();
    }
    panic!(
        "binary `{name}` not found (looked at {}): run `cargo build --release --bins` first \
         (scripts/test.sh does)",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// Finds `name` on `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Finds a program the tests need on `PATH`.
///
/// # Panics
/// When it is missing, with a message like "prometheus not found: install it with
/// `apt-get install prometheus` (scripts/test.sh does)". Tests never skip silently.
pub fn require_program(name: &str, install_hint: &str) -> PathBuf {
    find_program(name).unwrap_or_else(|| {
        panic!("{name} not found on PATH: install it with `{install_hint}` (scripts/test.sh does)")
    })
}

/// The Python interpreter of the project's venv (with the `datadog` package).
///
/// `$PIPELINE_PYTHON` if set, else `<root>/.venv/bin/python`.
///
/// # Panics
/// When it does not exist: run `scripts/test.sh` to create `.venv`.
pub fn python() -> PathBuf {
    let path = match env::var_os("PIPELINE_PYTHON").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join(".venv/bin/python"),
    };
    assert!(
        path.exists(),
        "python interpreter {} not found: run scripts/test.sh to create .venv with the datadog \
         package",
        path.display()
    );
    path
}

/// A path under `tests/` (e.g. `py/send.py`, `data/VECTORS.md`).
pub fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The multiplier from `PIPELINE_TEST_PATIENCE` (e.g. `3` on a slow machine), default 1.
pub fn patience_factor() -> f64 {
    env::var("PIPELINE_TEST_PATIENCE")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|f| f.is_finite() && *f > 0.0)
        .unwrap_or(1.0)
}

/// `base` scaled by [`patience_factor`].
pub fn scaled(base: Duration) -> Duration {
    base.mul_f64(patience_factor())
}

/// Retries `f` with short sleeps until it returns `Ok`, and returns that value.
///
/// The deadline is `patience` scaled by `PIPELINE_TEST_PATIENCE`. This is the only way the
/// tests wait for readiness or delivery.
///
/// # Panics
/// At the deadline, with `what` and the last error.
pub fn eventually<T>(what: &str, patience: Duration, mut f: impl FnMut() -> Result<T>) -> T {
    let limit = scaled(patience);
    let start = Instant::now();
    let mut pause = Duration::from_millis(10);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let err = match f() {
            Ok(v) => return v,
            Err(e) => e,
        };
        if start.elapsed() >= limit {
            panic!(
                "timed out after {:.1?} ({attempts} attempts) waiting for {what}; last error: {err:#}",
                start.elapsed()
            );
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, then release it).
pub fn free_tcp_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Sends each payload as one UDP datagram to `to`, in order, from one socket.
pub fn send_udp(to: SocketAddr, payloads: &[&[u8]]) -> Result<()> {
    let bind = if to.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    let socket = UdpSocket::bind(bind).context("binding a UDP client socket")?;
    for payload in payloads {
        let sent = socket
            .send_to(payload, to)
            .with_context(|| format!("sending to {to}"))?;
        anyhow::ensure!(
            sent == payload.len(),
            "short UDP send: {sent} of {}",
            payload.len()
        );
    }
    Ok(())
}

/// Replaces the contents of `path` atomically: writes a sibling temporary file, gives it
/// `mtime` if one is passed, and renames it over `path`. A process polling the file (the
/// bridge's config watch) thus never reads a half-written version, and sees exactly one new
/// modification time per call (or none, when `mtime` is the time it already saw).
pub fn replace_file(path: &Path, contents: &str, mtime: Option<SystemTime>) -> Result<()> {
    let file_name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(".replacing");
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    if let Some(mtime) = mtime {
        let file = std::fs::File::options()
            .write(true)
            .open(&tmp)
            .with_context(|| format!("opening {}", tmp.display()))?;
        file.set_modified(mtime)
            .with_context(|| format!("setting the modification time of {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// The modification time of `path`.
pub fn modified(path: &Path) -> Result<SystemTime> {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .with_context(|| format!("reading the modification time of {}", path.display()))
}

/// Decompresses a gzip stream with the `gzip` program (`gzip -dc`); an error if it is not
/// valid gzip.
///
/// # Panics
/// When `gzip` is not on `PATH`.
pub fn gunzip(compressed: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    let gzip = require_program("gzip", "apt-get install gzip");
    let mut child = Command::new(gzip)
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running gzip -dc")?;
    let mut stdin = child.stdin.take().context("gzip stdin")?;
    let input = compressed.to_vec();
    let writer = thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().context("waiting for gzip -dc")?;
    let written = writer.join();
    anyhow::ensure!(
        output.status.success(),
        "gzip -dc failed with {} on {} bytes: {}",
        output.status,
        compressed.len(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    if let Ok(Err(e)) = written {
        anyhow::bail!("writing to gzip -dc: {e}");
    }
    Ok(output.stdout)
}

/// Whether two sample values are equal: NaN equals NaN, infinities by sign, otherwise within a
/// relative tolerance of 1e-9.
pub fn values_equal(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    let scale = a.abs().max(b.abs());
    a == b || (a - b).abs() <= 1e-9 * scale
}

/// Parses a sample value as Prometheus prints it (`1.5`, `NaN`, `+Inf`, `-Inf`, `1e3`).
pub fn parse_value(s: &str) -> Result<f64> {
    let t = s.trim();
    match t {
        "NaN" | "nan" => Ok(f64::NAN),
        "+Inf" | "Inf" | "+inf" | "inf" => Ok(f64::INFINITY),
        "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
        _ => t
            .parse::<f64>()
            .with_context(|| format!("not a sample value: {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_compare_numerically() {
        assert!(values_equal(f64::NAN, f64::NAN));
        assert!(!values_equal(f64::NAN, 1.0));
        assert!(values_equal(0.6000000000000001, 0.6));
        assert!(values_equal(f64::INFINITY, parse_value("+Inf").unwrap()));
        assert!(!values_equal(1.0, 1.1));
        assert!(values_equal(0.0, 0.0));
        assert!(values_equal(1.75, parse_value("1.750").unwrap()));
    }
}
