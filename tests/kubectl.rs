//! Clients of an HTTPS API server (the adapter): `kubectl` with a throwaway kubeconfig (a
//! bearer token or a client certificate; the server's certificate verified against a CA or
//! not), raw requests through `openssl s_client` and `curl`, and a runner for one-shot
//! programs.
//!
//! `kubectl get --raw` is what a user runs against an aggregated API, so the tests read every
//! answer through it. It can't show a status code or a response header, nor send a chosen
//! `Accept`, so [`tls_request`] sends hand-written HTTP/1.1 over TLS (no certificate check)
//! and returns the response as the wire had it.
//!
//! What kubectl (1.32, through the Google Cloud dispatcher on the dev machine) sends, for the
//! record: `Accept: application/json, */*`, `Authorization: Bearer <token>`, a `*` in a path
//! percent-encoded as `%2A`, and (the dispatcher, once per `HOME`) `GET /version?timeout=5s`
//! first. `kubectl create --raw URL -f FILE` POSTs FILE with chunked transfer encoding.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tempfile::TempDir;

use crate::http::{self, HttpResponse};
use crate::util::{require_program, scaled};

/// The install hint for `kubectl` (Debian's package for it is `kubernetes-client`).
pub const KUBECTL_HINT: &str = "apt-get install kubernetes-client";

/// The install hint for `openssl`.
pub const OPENSSL_HINT: &str = "apt-get install openssl";

/// How long one kubectl or openssl run may take before it is killed (scaled by
/// `PIPELINE_TEST_PATIENCE`).
pub const RUN_LIMIT: Duration = Duration::from_secs(60);

/// What a one-shot program did.
#[derive(Debug)]
pub struct Finished {
    /// The program and its arguments, for messages.
    pub command: String,
    /// How it exited.
    pub status: ExitStatus,
    /// Its standard output (lossy UTF-8).
    pub stdout: String,
    /// Its standard error (lossy UTF-8).
    pub stderr: String,
}

impl Finished {
    /// The exit code (`None` when a signal ended it).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Whether it exited 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Standard output if it exited 0, else an error showing everything it printed.
    pub fn ok_stdout(&self) -> Result<&str> {
        if self.success() {
            Ok(&self.stdout)
        } else {
            bail!("{self}")
        }
    }
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.status,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Runs `cmd` to completion with `stdin` as its standard input (closed at once when `None`)
/// and returns what it printed; `label` names it in messages.
///
/// # Errors
/// When it can't be started, or it is still running after `limit` (it is killed then).
pub fn run_command(
    label: &str,
    mut cmd: Command,
    stdin: Option<Vec<u8>>,
    limit: Duration,
) -> Result<Finished> {
    let command = format!(
        "{label} {}",
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting `{command}`"))?;
    let writer = match (stdin, child.stdin.take()) {
        (Some(bytes), Some(mut pipe)) => Some(thread::spawn(move || pipe.write_all(&bytes))),
        _ => None,
    };
    let mut out_pipe = child.stdout.take().context("piped stdout")?;
    let mut err_pipe = child.stderr.take().context("piped stderr")?;
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < limit => thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("`{command}` still running after {limit:?}; killed it");
            }
            Err(e) => bail!("waiting for `{command}`: {e}"),
        }
    };
    if let Some(writer) = writer {
        // A program that exits without reading all of its input breaks the pipe; its output
        // tells the story.
        let _ = writer.join();
    }
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    Ok(Finished {
        command,
        status,
        stdout: text(out_reader.join().unwrap_or_default()),
        stderr: text(err_reader.join().unwrap_or_default()),
    })
}

/// How a kubeconfig's cluster entry trusts the server.
#[derive(Debug, Clone, Copy)]
pub enum ServerTrust<'a> {
    /// `insecure-skip-tls-verify: true`.
    SkipVerify,
    /// `certificate-authority: <file>`.
    Ca(&'a Path),
    /// Nothing: the server is plain `http://`.
    PlainHttp,
}

/// Who a kubeconfig's user is.
#[derive(Debug, Clone)]
pub enum KubeconfigUser {
    /// `token: <token>`.
    Token(String),
    /// `client-certificate: <cert>` and `client-key: <key>`.
    ClientCert {
        /// The certificate (PEM).
        cert: PathBuf,
        /// Its key (PEM).
        key: PathBuf,
    },
}

/// A kubeconfig with one cluster at `server` trusted as `trust` and one `user`, selected as
/// the current context. Values are written as JSON strings (valid YAML), so any path fits.
pub fn kubeconfig(server: &str, trust: ServerTrust<'_>, user: &KubeconfigUser) -> String {
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let cluster = match trust {
        ServerTrust::SkipVerify => "    insecure-skip-tls-verify: true\n".to_owned(),
        ServerTrust::Ca(ca) => format!("    certificate-authority: {}\n", q(&ca.to_string_lossy())),
        ServerTrust::PlainHttp => String::new(),
    };
    let user = match user {
        KubeconfigUser::Token(token) => format!("    token: {}\n", q(token)),
        KubeconfigUser::ClientCert { cert, key } => format!(
            "    client-certificate: {}\n    client-key: {}\n",
            q(&cert.to_string_lossy()),
            q(&key.to_string_lossy())
        ),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: under-test\n  cluster:\n    server: \
         {}\n{cluster}users:\n- name: tester\n  user:\n{user}contexts:\n- name: under-test\n  \
         context:\n    cluster: under-test\n    user: tester\ncurrent-context: under-test\n\
         preferences: {{}}\n",
        q(server)
    )
}

/// A kubeconfig with one cluster at `server` (TLS not verified) and one user with a bearer
/// `token`, selected as the current context.
pub fn kubeconfig_yaml(server: &str, token: &str) -> String {
    kubeconfig(
        server,
        ServerTrust::SkipVerify,
        &KubeconfigUser::Token(token.to_owned()),
    )
}

/// `kubectl` pointed at one server through a kubeconfig in its own temp dir.
///
/// Every run passes `--kubeconfig` and sets `KUBECONFIG` and `HOME` to that dir (so no
/// kubeconfig, cache or credential helper of the machine leaks in), and drops the in-cluster
/// variables; stdin is closed, so kubectl can't prompt.
pub struct Kubectl {
    program: PathBuf,
    server: String,
    kubeconfig: PathBuf,
    dir: TempDir,
}

impl Kubectl {
    /// A kubectl for `https://<addr>` with `insecure-skip-tls-verify: true` and the bearer
    /// token `dummy`.
    ///
    /// # Panics
    /// When `kubectl` is not installed, or the kubeconfig can't be written.
    pub fn new(addr: SocketAddr) -> Kubectl {
        Self::with_user(
            addr,
            ServerTrust::SkipVerify,
            &KubeconfigUser::Token("dummy".to_owned()),
        )
    }

    /// A kubectl for `https://<addr>` trusting the server as `trust`, authenticating as
    /// `user` (a bearer token or a client certificate).
    ///
    /// # Panics
    /// When `kubectl` is not installed, or the kubeconfig can't be written.
    pub fn with_user(addr: SocketAddr, trust: ServerTrust<'_>, user: &KubeconfigUser) -> Kubectl {
        let program = require_program("kubectl", KUBECTL_HINT);
        let dir = tempfile::Builder::new()
            .prefix("kubectl-")
            .tempdir()
            .expect("creating a temp dir for kubectl");
        let server = format!("https://{addr}");
        let kubeconfig = dir.path().join("kubeconfig.yaml");
        std::fs::write(&kubeconfig, self::kubeconfig(&server, trust, user))
            .expect("writing the kubeconfig");
        Kubectl {
            program,
            server,
            kubeconfig,
            dir,
        }
    }

    /// The server URL, `https://127.0.0.1:PORT`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The kubeconfig file.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The temp dir serving as `HOME`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `kubectl --kubeconfig <file> --request-timeout=30s <args…>` to completion.
    ///
    /// # Errors
    /// When it can't be started or hangs past [`RUN_LIMIT`].
    pub fn run(&self, args: &[&str]) -> Result<Finished> {
        let mut cmd = Command::new(&self.program);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--request-timeout=30s")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .current_dir(self.dir.path());
        run_command("kubectl", cmd, None, scaled(RUN_LIMIT))
    }

    /// `kubectl get --raw <path>` (path and query, e.g. `/apis/…?labelSelector=a%3Db`).
    ///
    /// # Errors
    /// As [`Kubectl::run`]; a non-zero exit is not an error here (see [`Finished::ok_stdout`]).
    pub fn get_raw(&self, path: &str) -> Result<Finished> {
        self.run(&["get", "--raw", path])
    }

    /// `kubectl get --raw <path>` parsed as JSON.
    ///
    /// # Errors
    /// When kubectl fails (the error shows its output) or prints something that isn't JSON.
    pub fn get_json(&self, path: &str) -> Result<Value> {
        let run = self.get_raw(path)?;
        let stdout = run.ok_stdout()?;
        serde_json::from_str(stdout)
            .with_context(|| format!("`kubectl get --raw {path}` printed no JSON: {stdout:?}"))
    }

    /// `kubectl create --raw <path> -f <file holding body>`: a POST.
    ///
    /// # Errors
    /// As [`Kubectl::run`], or when the body file can't be written.
    pub fn create_raw(&self, path: &str, body: &str) -> Result<Finished> {
        let file = self.dir.path().join("create-body.json");
        std::fs::write(&file, body).context("writing the body for kubectl create --raw")?;
        let file = file.to_string_lossy().into_owned();
        self.run(&["create", "--raw", path, "-f", &file])
    }
}

/// Sends one HTTP/1.1 request (`Connection: close`, `Accept-Encoding: identity` unless
/// `headers` names one) over TLS to `addr` with `openssl s_client`, without checking the
/// server's certificate, and returns the response as sent.
///
/// # Errors
/// When openssl can't connect, hangs past [`RUN_LIMIT`], or the answer isn't HTTP.
///
/// # Panics
/// When `openssl` is not installed.
pub fn tls_request(
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse> {
    let openssl = require_program("openssl", OPENSSL_HINT);
    let raw = http::encode_request(addr, method, path_and_query, headers, body);
    let mut cmd = Command::new(openssl);
    // `-quiet` implies `-ign_eof`: after sending stdin it reads until the server closes.
    cmd.args([
        "s_client",
        "-connect",
        &addr.to_string(),
        "-quiet",
        "-verify_quiet",
    ]);
    let run = run_command("openssl", cmd, Some(raw), scaled(RUN_LIMIT))?;
    if run.stdout.is_empty() {
        bail!("no response to {method} https://{addr}{path_and_query}: {run}");
    }
    http::parse_response(run.stdout.as_bytes())
        .with_context(|| format!("{method} https://{addr}{path_and_query}: {run}"))
}

/// The install hint for `curl`.
pub const CURL_HINT: &str = "apt-get install curl";

/// What [`curl`] presents and adds to a request.
#[derive(Debug, Clone, Default)]
pub struct CurlOptions<'a> {
    /// The CA that must have signed the server's certificate (`--cacert`); `None` skips the
    /// check (`--insecure`).
    pub cacert: Option<&'a Path>,
    /// A client certificate and its key (`--cert`, `--key`).
    pub client_cert: Option<(&'a Path, &'a Path)>,
    /// A bearer token (`Authorization: Bearer …`).
    pub bearer: Option<&'a str>,
    /// More request headers, in order (a name may repeat).
    pub headers: Vec<(&'a str, &'a str)>,
}

/// `GET url` with `curl` over HTTP/1.1 (`--globoff`, so a `*` in the path goes out as is);
/// returns the status, the `Content-Type` (as the only header) and the body.
///
/// # Errors
/// When curl fails (it can't connect, the TLS handshake or the server's certificate is
/// refused, it hangs past [`RUN_LIMIT`]); the error shows what it printed.
///
/// # Panics
/// When `curl` is not installed.
pub fn curl(url: &str, options: &CurlOptions<'_>) -> Result<HttpResponse> {
    let program = require_program("curl", CURL_HINT);
    let mut cmd = Command::new(program);
    cmd.args(["--silent", "--show-error", "--globoff", "--http1.1"])
        .args(["--max-time", "30"])
        .args(["--write-out", "\n%{http_code} %{content_type}"]);
    match options.cacert {
        Some(ca) => cmd.arg("--cacert").arg(ca),
        None => cmd.arg("--insecure"),
    };
    if let Some((cert, key)) = options.client_cert {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    if let Some(token) = options.bearer {
        cmd.arg("--header")
            .arg(format!("Authorization: Bearer {token}"));
    }
    for (name, value) in &options.headers {
        cmd.arg("--header").arg(format!("{name}: {value}"));
    }
    cmd.arg(url);
    let run = run_command("curl", cmd, None, scaled(RUN_LIMIT))?;
    let stdout = run.ok_stdout()?;
    let Some((body, trailer)) = stdout.rsplit_once('\n') else {
        bail!("curl printed no status line: {run}");
    };
    let (code, content_type) = trailer.split_once(' ').unwrap_or((trailer, ""));
    let status: u16 = code
        .parse()
        .with_context(|| format!("curl printed no status code: {run}"))?;
    if status == 0 {
        bail!("curl got no HTTP answer: {run}");
    }
    let mut headers = Vec::new();
    if !content_type.is_empty() {
        headers.push(("content-type".to_owned(), content_type.to_owned()));
    }
    Ok(HttpResponse {
        status,
        headers,
        body: body.as_bytes().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_names_server_token_and_skips_verification() {
        let yaml = kubeconfig_yaml("https://127.0.0.1:1234", "dummy");
        assert!(
            yaml.contains("    server: \"https://127.0.0.1:1234\"\n"),
            "{yaml}"
        );
        assert!(
            yaml.contains("    insecure-skip-tls-verify: true\n"),
            "{yaml}"
        );
        assert!(yaml.contains("    token: \"dummy\"\n"), "{yaml}");
        assert!(yaml.contains("current-context: under-test\n"), "{yaml}");
    }

    #[test]
    fn kubeconfig_with_a_client_certificate_and_a_ca() {
        let user = KubeconfigUser::ClientCert {
            cert: PathBuf::from("/tmp/a b/alice.crt"),
            key: PathBuf::from("/tmp/a b/alice.key"),
        };
        let yaml = kubeconfig(
            "https://127.0.0.1:1234",
            ServerTrust::Ca(Path::new("/tmp/ca.crt")),
            &user,
        );
        for line in [
            "    certificate-authority: \"/tmp/ca.crt\"\n",
            "    client-certificate: \"/tmp/a b/alice.crt\"\n",
            "    client-key: \"/tmp/a b/alice.key\"\n",
        ] {
            assert!(yaml.contains(line), "{line:?} missing from:\n{yaml}");
        }
        assert!(!yaml.contains("insecure-skip-tls-verify"), "{yaml}");
        let plain = kubeconfig(
            "http://127.0.0.1:1",
            ServerTrust::PlainHttp,
            &KubeconfigUser::Token("t".to_owned()),
        );
        assert!(!plain.contains("insecure") && !plain.contains("certificate-authority"));
    }

    #[test]
    fn runs_programs_with_input_and_a_deadline() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "cat; echo oops >&2; exit 3"]);
        let run = run_command("sh", cmd, Some(b"hello".to_vec()), RUN_LIMIT).unwrap();
        assert_eq!(
            (run.code(), run.stdout.as_str(), run.stderr.as_str()),
            (Some(3), "hello", "oops\n")
        );
        assert!(run.ok_stdout().is_err());
        let mut cmd = Command::new("sleep");
        cmd.arg("5");
        let err = run_command("sleep", cmd, None, Duration::from_millis(100)).unwrap_err();
        assert!(format!("{err}").contains("still running"), "{err}");
    }
}
