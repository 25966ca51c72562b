//! The `prom-adapter` binary as a child process, its one-shot subcommands, and what reading
//! its answers takes: Kubernetes `Quantity` strings and RFC 3339 timestamps.
//!
//! The adapter serves HTTPS only; [`Adapter::kubectl`] reads it the way a user does and
//! [`Adapter::request`] sends exact requests (see [`crate::kubectl`]).
//!
//! The binary is secure by default: without authentication and authorization flags it
//! refuses to start. [`Adapter::start`] therefore passes `--insecure-dev` (the API tests are
//! about the API, not about who may call it); [`Adapter::start_with`] with
//! [`Security::Secured`] runs it with the flags the test gives and a kubectl that
//! authenticates (see `tests/adapter_auth.rs`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use serde_json::Value;
use tempfile::TempDir;

use crate::http::HttpResponse;
use crate::kubectl::{self, Finished, KubeconfigUser, Kubectl, ServerTrust, run_command};
use crate::process::ChildGuard;
use crate::util::{PATIENCE, bin, eventually, scaled};

/// What the adapter writes to its `--ready-file` once it is listening.
#[derive(Debug, Clone, Deserialize)]
pub struct Ready {
    /// The bound address of the HTTPS server.
    pub secure: SocketAddr,
}

/// A running `prom-adapter` process, killed when dropped.
pub struct Adapter {
    child: ChildGuard,
    ready: Ready,
    kubectl: Kubectl,
    args: Vec<String>,
    dir: TempDir,
}

impl Adapter {
    /// The flags every test adapter gets before `extra_args`: `--config <config>
    /// --prometheus-url <url> --metrics-relist-interval 1s --metrics-max-age 10m --secure-port 0
    /// --bind-address 127.0.0.1 --cert-dir <dir>/certs --ready-file <dir>/ready.json --v 2`.
    pub fn base_args(config: &Path, prometheus_url: &str, dir: &Path) -> Vec<String> {
        [
            "--config",
            &config.to_string_lossy(),
            "--prometheus-url",
            prometheus_url,
            "--metrics-relist-interval",
            "1s",
            "--metrics-max-age",
            "10m",
            "--secure-port",
            "0",
            "--bind-address",
            "127.0.0.1",
            "--cert-dir",
            &dir.join("certs").to_string_lossy(),
            "--ready-file",
            &dir.join("ready.json").to_string_lossy(),
            "--v",
            "2",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    /// Runs `prom-adapter` with [`Adapter::base_args`], `--insecure-dev` and `extra_args`
    /// (which must not repeat those flags), and waits until the ready file appears. Its
    /// kubectl sends the bearer token `dummy` and does not verify the serving certificate.
    ///
    /// This is how the API tests run it: without authentication or authorization (see
    /// [`Adapter::start_with`] for a secured one).
    ///
    /// # Panics
    /// When the binary is missing, the adapter exits before it is ready, or it is not ready in
    /// time; the message carries the tail of its log.
    pub fn start(config: &Path, prometheus_url: &str, extra_args: &[&str]) -> Adapter {
        Self::start_with(config, prometheus_url, extra_args, &Security::InsecureDev)
    }

    /// Runs `prom-adapter` with [`Adapter::base_args`], the flags `security` implies and
    /// `extra_args`, and waits until the ready file appears; its kubectl authenticates as
    /// `security` says.
    ///
    /// # Panics
    /// As [`Adapter::start`].
    pub fn start_with(
        config: &Path,
        prometheus_url: &str,
        extra_args: &[&str],
        security: &Security,
    ) -> Adapter {
        let dir = tempfile::Builder::new()
            .prefix("prom-adapter-")
            .tempdir()
            .expect("creating a temp dir for the adapter");
        let ready_path = dir.path().join("ready.json");
        let mut args = Self::base_args(config, prometheus_url, dir.path());
        if matches!(security, Security::InsecureDev) {
            args.push("--insecure-dev".to_owned());
        }
        args.extend(extra_args.iter().map(|a| (*a).to_owned()));
        let child = ChildGuard::spawn("prom-adapter", command(&args, dir.path()))
            .expect("starting prom-adapter");
        let ready = eventually("prom-adapter to write its ready file", PATIENCE, || {
            if let Err(e) = child.ensure_running() {
                panic!("{e:#}\nargs were: {args:?}");
            }
            read_ready(&ready_path)
        });
        let kubectl = match security {
            Security::InsecureDev => Kubectl::new(ready.secure),
            Security::Secured { ca, user } => {
                let trust = ca
                    .as_deref()
                    .map_or(ServerTrust::SkipVerify, ServerTrust::Ca);
                Kubectl::with_user(ready.secure, trust, user)
            }
        };
        Adapter {
            child,
            ready,
            kubectl,
            args,
            dir,
        }
    }

    /// [`Adapter::start`] for a `pipeline.toml` that names its own backends
    /// (`[[adapter.backends]]`): [`Adapter::base_args`] without `--prometheus-url`, which the
    /// adapter refuses beside them.
    ///
    /// # Panics
    /// As [`Adapter::start`].
    pub fn start_with_backends(pipeline_toml: &Path, extra_args: &[&str]) -> Adapter {
        let dir = tempfile::Builder::new()
            .prefix("prom-adapter-")
            .tempdir()
            .expect("creating a temp dir for the adapter");
        let ready_path = dir.path().join("ready.json");
        let base = Self::base_args(pipeline_toml, "", dir.path());
        let mut args = Vec::with_capacity(base.len() + extra_args.len() + 1);
        let mut skip_value = false;
        for arg in base {
            if std::mem::take(&mut skip_value) {
                continue;
            }
            if arg == "--prometheus-url" {
                skip_value = true;
                continue;
            }
            args.push(arg);
        }
        args.push("--insecure-dev".to_owned());
        args.extend(extra_args.iter().map(|a| (*a).to_owned()));
        let child = ChildGuard::spawn("prom-adapter", command(&args, dir.path()))
            .expect("starting prom-adapter");
        let ready = eventually("prom-adapter to write its ready file", PATIENCE, || {
            if let Err(e) = child.ensure_running() {
                panic!("{e:#}\nargs were: {args:?}");
            }
            read_ready(&ready_path)
        });
        let kubectl = Kubectl::new(ready.secure);
        Adapter {
            child,
            ready,
            kubectl,
            args,
            dir,
        }
    }

    /// Runs `prom-adapter` with [`Adapter::base_args`] and `extra_args` only (no
    /// `--insecure-dev`) for a start that is expected to fail, and returns how it exited.
    ///
    /// # Panics
    /// When it can't be started, or is still running after 20 s (scaled): it started
    /// serving instead of refusing. It is killed then.
    pub fn run_to_exit(config: &Path, prometheus_url: &str, extra_args: &[&str]) -> Finished {
        let dir = tempfile::Builder::new()
            .prefix("prom-adapter-")
            .tempdir()
            .expect("creating a temp dir for the adapter");
        let mut args = Self::base_args(config, prometheus_url, dir.path());
        args.extend(extra_args.iter().map(|a| (*a).to_owned()));
        run_command(
            "prom-adapter",
            command(&args, dir.path()),
            None,
            scaled(Duration::from_secs(20)),
        )
        .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The address of the HTTPS server.
    pub fn addr(&self) -> SocketAddr {
        self.ready.secure
    }

    /// The arguments it was started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Its temp dir (working directory, `certs/`, `ready.json`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process guard (pid, logs, signals).
    pub fn process(&self) -> &ChildGuard {
        &self.child
    }

    /// The last `lines` lines of its stderr and stdout.
    pub fn log_tail(&self, lines: usize) -> String {
        self.child.log_tail(lines)
    }

    /// A kubectl whose kubeconfig points at this adapter.
    pub fn kubectl(&self) -> &Kubectl {
        &self.kubectl
    }

    /// `kubectl get --raw <path>`.
    ///
    /// # Panics
    /// When the adapter has exited (so a waiting test fails at once with its log).
    pub fn get_raw(&self, path: &str) -> Result<Finished> {
        self.ensure_running();
        self.kubectl.get_raw(path)
    }

    /// `kubectl get --raw <path>` parsed as JSON; an error when kubectl fails.
    ///
    /// # Panics
    /// When the adapter has exited.
    pub fn get_json(&self, path: &str) -> Result<Value> {
        self.ensure_running();
        self.kubectl.get_json(path)
    }

    /// One exact request over TLS (see [`kubectl::tls_request`]).
    ///
    /// # Panics
    /// When the adapter has exited.
    pub fn request(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<HttpResponse> {
        self.ensure_running();
        kubectl::tls_request(self.addr(), method, path_and_query, headers, b"")
    }

    fn ensure_running(&self) {
        if let Err(e) = self.child.ensure_running() {
            panic!("{e:#}");
        }
    }
}

/// How a test adapter is secured, and how its [`Kubectl`] authenticates.
#[derive(Debug, Clone)]
pub enum Security {
    /// `--insecure-dev`: every request is served without authentication or authorization.
    /// The kubectl sends the token `dummy` and does not verify the serving certificate.
    InsecureDev,
    /// Secure (the default of the binary): the authentication and authorization flags come
    /// in the extra arguments. The kubectl trusts `ca` (skips the check when `None`) and
    /// authenticates as `user`.
    Secured {
        /// The CA of the serving certificate.
        ca: Option<PathBuf>,
        /// Who kubectl is.
        user: KubeconfigUser,
    },
}

/// `prom-adapter <args>` in `cwd`, with no kubeconfig or in-cluster configuration from the
/// environment.
fn command(args: &[String], cwd: &Path) -> Command {
    let mut cmd = Command::new(bin("prom-adapter"));
    cmd.args(args)
        .env("RUST_BACKTRACE", "1")
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .current_dir(cwd);
    cmd
}

fn read_ready(path: &Path) -> Result<Ready> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the ready file {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing the ready file: {text:?}"))
}

/// Runs `prom-adapter <args…>` in `cwd` to completion (a subcommand such as `check-config` or
/// `render`, not the server).
///
/// # Panics
/// When it can't be started or runs longer than 30 s (scaled); it is killed then.
pub fn run_cli(args: &[&str], cwd: &Path) -> Finished {
    let mut cmd = Command::new(bin("prom-adapter"));
    cmd.args(args)
        .current_dir(cwd)
        .env("RUST_BACKTRACE", "1")
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST");
    run_command("prom-adapter", cmd, None, scaled(Duration::from_secs(30)))
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Kills processes and removes directories when the test binary exits, for fixtures kept in
/// a `static`, whose `Drop` never runs.
///
/// It is a `sh` watchdog blocked reading a pipe only this process holds. However the test
/// binary ends (normal exit, panic, signal), the kernel closes the pipe; the watchdog then
/// sends SIGKILL to each process that still has the start time it had when leashed (so a
/// recycled pid is never hit) and removes the directories.
pub struct Leash {
    _watchdog: Child,
}

impl Leash {
    /// Leashes `pids` and `dirs`.
    ///
    /// # Errors
    /// When a pid is not running or `sh` can't be started.
    pub fn new(pids: &[u32], dirs: &[&Path]) -> Result<Leash> {
        let mut script = String::from(
            "trap '' INT HUP\nread -r _ignored\nstart_of() { sed 's/^.*) //' \"/proc/$1/stat\" \
             2>/dev/null | cut -d' ' -f20; }\nstate_of() { sed 's/^.*) //' \"/proc/$1/stat\" \
             2>/dev/null | cut -d' ' -f1; }\n",
        );
        for &pid in pids {
            let start = process_start_time(pid)?;
            let _ = writeln!(
                script,
                "if [ \"$(start_of {pid})\" = \"{start}\" ]; then kill -9 {pid} 2>/dev/null; \
                 n=0; while [ -e /proc/{pid} ] && [ \"$(state_of {pid})\" != Z ] && [ $n -lt 100 \
                 ]; do sleep 0.1; n=$((n+1)); done; fi"
            );
        }
        for dir in dirs {
            let _ = writeln!(script, "rm -rf -- {}", shell_quote(&dir.to_string_lossy()));
        }
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the watchdog shell")?;
        Ok(Leash {
            _watchdog: watchdog,
        })
    }
}

/// The start time of process `pid` (field 22 of `/proc/<pid>/stat`, in clock ticks since boot).
fn process_start_time(pid: u32) -> Result<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let after_comm = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest)
        .with_context(|| format!("odd /proc/{pid}/stat: {stat:?}"))?;
    after_comm
        .split(' ')
        .nth(19)
        .map(str::to_owned)
        .with_context(|| format!("odd /proc/{pid}/stat: {stat:?}"))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The exact decimal value of a Kubernetes `Quantity` string as `(mantissa, exponent)` with
/// value `mantissa × 10^exponent`.
///
/// Accepts decimal suffixes (`n u m k M G T P E`, none) and exponents (`e3`, `E-2`); binary
/// suffixes (`Ki`…) are an error (a DecimalSI value never has them).
///
/// # Errors
/// When `q` is not a quantity of that form.
pub fn quantity_decimal(q: &str) -> Result<(i128, i32)> {
    let (negative, rest) = match q.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, q.strip_prefix('+').unwrap_or(q)),
    };
    let number_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_end);
    ensure!(
        !number.is_empty() && number != "." && number.matches('.').count() <= 1,
        "not a quantity: {q:?}"
    );
    let scale: i32 = match suffix {
        "" => 0,
        "n" => -9,
        "u" => -6,
        "m" => -3,
        "k" => 3,
        "M" => 6,
        "G" => 9,
        "T" => 12,
        "P" => 15,
        "E" => 18,
        s if s.starts_with(['e', 'E']) => s[1..]
            .parse()
            .with_context(|| format!("bad exponent in quantity {q:?}"))?,
        s => bail!("quantity {q:?} has suffix {s:?}, not a DecimalSI one"),
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let digits = format!("{int}{frac}");
    let mantissa: i128 = digits
        .parse()
        .with_context(|| format!("quantity {q:?} has too many digits"))?;
    let exponent = scale - i32::try_from(frac.len()).context("fraction too long")?;
    Ok((if negative { -mantissa } else { mantissa }, exponent))
}

/// A `Quantity` string as `f64` (the closest double to its exact value).
///
/// # Errors
/// As [`quantity_decimal`].
pub fn quantity_value(q: &str) -> Result<f64> {
    let (mantissa, exponent) = quantity_decimal(q)?;
    format!("{mantissa}e{exponent}")
        .parse()
        .with_context(|| format!("quantity {q:?} as a number"))
}

/// The canonical DecimalSI `Quantity` string (apimachinery's rules) of a decimal number
/// written as Prometheus writes sample values (`0.5`, `2000`, `24.233138021`, `1e-10`):
/// rounded up (away from zero) to nano, trailing zeros removed from the mantissa, the
/// exponent lowered to a multiple of 3 and written as its suffix. `0.5` → `500m`, `1500` →
/// `1500`, `2000` → `2k`, `24.233138021` → `24233138021n`, `1e-10` → `1n`.
///
/// # Errors
/// When `decimal` is not a finite decimal number, or too large for the suffixes up to `E`.
pub fn canonical_quantity(decimal: &str) -> Result<String> {
    let text = decimal.trim();
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (number, exp_part) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let mut exponent: i32 = match exp_part {
        Some(e) => e
            .parse()
            .with_context(|| format!("bad exponent in {decimal:?}"))?,
        None => 0,
    };
    ensure!(
        !number.is_empty()
            && number != "."
            && number.matches('.').count() <= 1
            && number.chars().all(|c| c.is_ascii_digit() || c == '.'),
        "not a finite decimal number: {decimal:?}"
    );
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    exponent -= i32::try_from(frac.len()).context("fraction too long")?;
    let mut digits: String = format!("{int}{frac}").trim_start_matches('0').to_owned();
    if digits.is_empty() {
        return Ok("0".to_owned());
    }
    // Round up to nano: drop the digits below 1e-9, adding one if any of them is not zero.
    if exponent < -9 {
        let drop = usize::try_from(-9 - exponent).context("exponent out of range")?;
        let (kept, dropped) = if drop >= digits.len() {
            (String::new(), digits.clone())
        } else {
            let (k, d) = digits.split_at(digits.len() - drop);
            (k.to_owned(), d.to_owned())
        };
        let round_up = dropped.chars().any(|c| c != '0');
        let kept_value: u128 = if kept.is_empty() {
            0
        } else {
            kept.parse().context("too many digits")?
        };
        digits = (kept_value + u128::from(round_up)).to_string();
        exponent = -9;
    }
    let mut mantissa: u128 = digits.parse().context("too many digits")?;
    if mantissa == 0 {
        return Ok("0".to_owned());
    }
    while mantissa.is_multiple_of(10) {
        mantissa /= 10;
        exponent += 1;
    }
    while exponent.rem_euclid(3) != 0 {
        mantissa = mantissa.checked_mul(10).context("too many digits")?;
        exponent -= 1;
    }
    let suffix = match exponent {
        -9 => "n",
        -6 => "u",
        -3 => "m",
        0 => "",
        3 => "k",
        6 => "M",
        9 => "G",
        12 => "T",
        15 => "P",
        18 => "E",
        e if e > 18 => {
            // Past `E` the mantissa takes the rest: 10^21 → 1000E.
            let extra = u32::try_from(e - 18).context("exponent out of range")?;
            mantissa = mantissa
                .checked_mul(10u128.pow(extra))
                .context("too many digits")?;
            "E"
        }
        e => bail!("exponent {e} below nano in {decimal:?}"),
    };
    Ok(format!(
        "{}{mantissa}{suffix}",
        if negative { "-" } else { "" }
    ))
}

/// Whether `q` is a canonical DecimalSI `Quantity` string (what apimachinery prints).
pub fn is_canonical_quantity(q: &str) -> bool {
    quantity_decimal(q)
        .and_then(|(m, e)| canonical_quantity(&format!("{m}e{e}")))
        .is_ok_and(|c| c == q)
}

/// Parses an RFC 3339 UTC timestamp with second precision, `2026-04-01T10:00:00Z`, into Unix
/// seconds; any other form (fractions, offsets) is an error.
///
/// # Errors
/// When `s` is not of exactly that form.
pub fn parse_rfc3339_seconds(s: &str) -> Result<i64> {
    let b = s.as_bytes();
    ensure!(
        b.len() == 20
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && b[19] == b'Z',
        "not an RFC 3339 UTC timestamp with second precision (YYYY-MM-DDTHH:MM:SSZ): {s:?}"
    );
    let field = |range: std::ops::Range<usize>| -> Result<i64> {
        let part = &s[range];
        ensure!(
            part.bytes().all(|c| c.is_ascii_digit()),
            "bad timestamp {s:?}"
        );
        Ok(part.parse()?)
    };
    let (year, month, day) = (field(0..4)?, field(5..7)?, field(8..10)?);
    let (hour, minute, second) = (field(11..13)?, field(14..16)?, field(17..19)?);
    ensure!(
        (1..=12).contains(&month)
            && (1..=31).contains(&day)
            && hour < 24
            && minute < 60
            && second < 61,
        "bad timestamp {s:?}"
    );
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The path of a rule fixture, `tests/data/adapter/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    crate::util::tests_dir().join("data/adapter").join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_quantities_follow_apimachinery() {
        let cases = [
            ("0.5", "500m"),
            ("1.5", "1500m"),
            ("1000", "1k"),
            ("1500", "1500"),
            ("2000", "2k"),
            ("24.233138021", "24233138021n"),
            ("0.0000125", "12500n"),
            ("1e-10", "1n"),
            ("2e9", "2G"),
            ("2000000000", "2G"),
            ("42", "42"),
            ("7", "7"),
            ("0", "0"),
            ("0.000", "0"),
            ("-0.5", "-500m"),
            ("0.016666666666666666", "16666667n"),
            ("1e21", "1000E"),
        ];
        for (decimal, want) in cases {
            assert_eq!(canonical_quantity(decimal).unwrap(), want, "{decimal}");
        }
        assert!(canonical_quantity("NaN").is_err());
        assert!(canonical_quantity("+Inf").is_err());
    }

    #[test]
    fn quantities_read_back_exactly() {
        assert_eq!(quantity_decimal("500m").unwrap(), (500, -3));
        assert_eq!(quantity_decimal("2k").unwrap(), (2, 3));
        assert_eq!(quantity_decimal("24233138021n").unwrap(), (24233138021, -9));
        assert_eq!(quantity_decimal("1.5").unwrap(), (15, -1));
        assert_eq!(quantity_decimal("-3e2").unwrap(), (-3, 2));
        assert_eq!(quantity_value("24233138021n").unwrap(), 24.233138021);
        assert!(quantity_decimal("1Ki").is_err());
        assert!(quantity_decimal("m").is_err());
        assert!(quantity_decimal("").is_err());
        assert!(is_canonical_quantity("500m"));
        assert!(is_canonical_quantity("2k"));
        assert!(!is_canonical_quantity("2000"));
        assert!(!is_canonical_quantity("0.5"));
        assert!(!is_canonical_quantity("500000u"));
    }

    #[test]
    fn timestamps_parse_to_unix_seconds() {
        assert_eq!(parse_rfc3339_seconds("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            parse_rfc3339_seconds("2025-04-01T10:00:00Z").unwrap(),
            1_743_501_600
        );
        assert_eq!(
            parse_rfc3339_seconds("2000-02-29T23:59:59Z").unwrap(),
            951_868_799
        );
        assert!(parse_rfc3339_seconds("2025-04-01T10:00:00.5Z").is_err());
        assert!(parse_rfc3339_seconds("2025-04-01T10:00:00+00:00").is_err());
        assert!(parse_rfc3339_seconds("2025-13-01T10:00:00Z").is_err());
    }

    #[test]
    fn leash_kills_only_at_exit() {
        let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kept = dir.path().join("kept");
        std::fs::create_dir(&kept).unwrap();
        let leash = Leash::new(&[sleeper.id()], &[&kept]).unwrap();
        assert!(sleeper.try_wait().unwrap().is_none(), "killed too early");
        assert!(kept.exists());
        // Closing the pipe is what the exit of the test binary does.
        let mut watchdog = leash._watchdog;
        drop(watchdog.stdin.take());
        watchdog.wait().unwrap();
        let status = sleeper.wait().unwrap();
        assert!(!status.success(), "sleep was not killed: {status}");
        assert!(!kept.exists(), "{} not removed", kept.display());
    }
}
