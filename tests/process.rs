//! A child process that is killed when the test lets go of it, with its output kept in files.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

/// How many lines of a child's output to print when a test fails.
const TAIL_LINES: usize = 60;

/// A running child process.
///
/// Its stdout and stderr go to files in a temporary directory. On drop the child is killed
/// (SIGKILL) and reaped; if the thread is panicking (a failing test), the tail of its output is
/// printed first so the failure can be understood.
pub struct ChildGuard {
    name: String,
    child: Mutex<Child>,
    exit: Mutex<Option<ExitStatus>>,
    logs: TempDir,
}

impl ChildGuard {
    /// Starts `cmd` with stdin closed and its output captured; `name` labels it in messages.
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Self> {
        let logs = tempfile::Builder::new()
            .prefix(&format!("{name}-logs-"))
            .tempdir()
            .context("creating a log directory")?;
        let stdout = File::create(logs.path().join("stdout.log")).context("creating stdout.log")?;
        let stderr = File::create(logs.path().join("stderr.log")).context("creating stderr.log")?;
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child: Mutex::new(child),
            exit: Mutex::new(None),
            logs,
        })
    }

    /// The label given at [`ChildGuard::spawn`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.lock_child().id()
    }

    /// The file holding the child's stderr.
    pub fn stderr_path(&self) -> PathBuf {
        self.logs.path().join("stderr.log")
    }

    /// The file holding the child's stdout.
    pub fn stdout_path(&self) -> PathBuf {
        self.logs.path().join("stdout.log")
    }

    /// The last `lines` lines of the child's stderr and stdout, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for (label, path) in [
            ("stderr", self.stderr_path()),
            ("stdout", self.stdout_path()),
        ] {
            let tail = tail_of(&path, lines);
            if !tail.is_empty() {
                out.push_str(&format!(
                    "--- {} {label} (last {lines} lines) ---\n",
                    self.name
                ));
                out.push_str(&tail);
                if !tail.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
        if out.is_empty() {
            out = format!("--- {}: no output ---\n", self.name);
        }
        out
    }

    /// The exit status if the child has exited, without waiting.
    pub fn try_status(&self) -> Result<Option<ExitStatus>> {
        let mut exit = self.lock_exit();
        if exit.is_none() {
            *exit = self.lock_child().try_wait().context("polling the child")?;
        }
        Ok(*exit)
    }

    /// `Ok` while the child runs; an error with its exit status and output tail once it exited.
    pub fn ensure_running(&self) -> Result<()> {
        match self.try_status()? {
            None => Ok(()),
            Some(status) => {
                bail!(
                    "{} exited early with {status}\n{}",
                    self.name,
                    self.log_tail(TAIL_LINES)
                )
            }
        }
    }

    /// Sends a signal by name (`TERM`, `HUP`, `INT`…) with the `kill` command.
    pub fn signal(&self, signal: &str) -> Result<()> {
        if let Some(status) = self.try_status()? {
            bail!(
                "cannot send SIG{signal} to {}: it already exited with {status}",
                self.name
            );
        }
        let pid = self.pid();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .context("running `kill`")?;
        anyhow::ensure!(
            status.success(),
            "`kill -{signal} {pid}` failed with {status}"
        );
        Ok(())
    }

    /// Waits up to `timeout` for the child to exit; `None` if it is still running then.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(Some(status));
            }
            if start.elapsed() >= timeout {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn lock_child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_exit(&self) -> MutexGuard<'_, Option<ExitStatus>> {
        self.exit.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.log_tail(TAIL_LINES));
        }
        let exited = matches!(self.try_status(), Ok(Some(_)));
        if !exited {
            let mut child = self.lock_child();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The last `lines` lines of a file (lossy UTF-8), or an empty string if it can't be read.
pub fn tail_of(path: &Path, lines: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}
