//! Reads of the host's process and cgroup files: a unix socket peer's cgroup, and the cgroup
//! directory behind a `|c:in-<inode>` field. The roots are settings so tests (and a
//! container with the host's `/proc` mounted elsewhere) can point them anywhere.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::cgroup::{self, CgroupOwner};

/// The least time between two walks of the cgroup tree: a sender with an unknown inode
/// must not make every datagram walk it.
const RESCAN_GAP: Duration = Duration::from_secs(5);

/// Directories a walk visits at most; a node has a few thousand cgroups.
const SCAN_MAX_DIRS: usize = 100_000;

/// How deep a walk goes below the root (kubepods/qos/pod/container is 4).
const SCAN_MAX_DEPTH: usize = 6;

#[derive(Debug, Default)]
struct Inodes {
    owners: HashMap<u64, CgroupOwner>,
    scanned: Option<Instant>,
}

/// The host's `/proc` and cgroup tree.
#[derive(Debug)]
pub struct Host {
    proc_root: PathBuf,
    cgroup_root: PathBuf,
    inodes: Mutex<Inodes>,
}

impl Host {
    /// Reads under these roots (`/proc`, `/sys/fs/cgroup` on a host).
    pub fn new(proc_root: PathBuf, cgroup_root: PathBuf) -> Self {
        Self {
            proc_root,
            cgroup_root,
            inodes: Mutex::new(Inodes::default()),
        }
    }

    /// The container and pod of a process, from `<proc_root>/<pid>/cgroup`; `None` when the
    /// process is gone or its PID isn't visible (the bridge needs the host's PID namespace).
    pub fn owner_of_pid(&self, pid: i32) -> Option<CgroupOwner> {
        if pid <= 0 {
            return None;
        }
        let path = self.proc_root.join(pid.to_string()).join("cgroup");
        match std::fs::read_to_string(&path) {
            Ok(text) => Some(cgroup::parse_proc_cgroup(&text)),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "Cannot read a sender's cgroup.");
                None
            }
        }
    }

    /// The container and pod whose cgroup directory has this inode, walking the cgroup tree
    /// again (at most every 5 s, `RESCAN_GAP`) when it isn't known.
    pub fn owner_of_inode(&self, inode: u64) -> Option<CgroupOwner> {
        let lock = || {
            self.inodes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        {
            let mut inodes = lock();
            if let Some(o) = inodes.owners.get(&inode) {
                return Some(o.clone());
            }
            let now = Instant::now();
            if inodes
                .scanned
                .is_some_and(|at| now.saturating_duration_since(at) < RESCAN_GAP)
            {
                return None;
            }
            inodes.scanned = Some(now);
        }
        // Walked without the lock: other listeners keep answering known inodes meanwhile.
        let owners = scan(&self.cgroup_root);
        let found = owners.get(&inode).cloned();
        lock().owners = owners;
        found
    }
}

/// Every cgroup directory under `root` that names a container or a pod, by inode.
fn scan(root: &Path) -> HashMap<u64, CgroupOwner> {
    let mut owners = HashMap::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    let mut visited = 0usize;
    while let Some((dir, depth)) = stack.pop() {
        visited += 1;
        if visited > SCAN_MAX_DIRS {
            tracing::warn!(root = %root.display(), "The cgroup tree is larger than expected; stopped walking it.");
            break;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if !meta.is_dir() {
                continue;
            }
            let path = entry.path();
            let relative = path.strip_prefix(root).unwrap_or(&path);
            let owner = cgroup::parse_cgroup_path(&relative.to_string_lossy());
            if owner.container_id.is_some() || owner.pod_uid.is_some() {
                owners.insert(meta.ino(), owner);
            }
            if depth < SCAN_MAX_DEPTH {
                stack.push((path, depth + 1));
            }
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "3c1f6f5e-8a5e-4f1b-9e0d-2b7c5a9e4d21";

    #[test]
    fn a_pid_cgroup_file_under_a_proc_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("4242")).unwrap();
        std::fs::write(
            dir.path().join("4242/cgroup"),
            format!("0::/kubepods/burstable/pod{UID}/{ID}\n"),
        )
        .unwrap();
        let host = Host::new(dir.path().to_owned(), dir.path().to_owned());
        let owner = host.owner_of_pid(4242).unwrap();
        assert_eq!(owner.container_id.as_deref(), Some(ID));
        assert_eq!(owner.pod_uid.as_deref(), Some(UID));
        assert_eq!(host.owner_of_pid(4243), None);
        assert_eq!(host.owner_of_pid(0), None);
        assert_eq!(host.owner_of_pid(-1), None);
    }

    #[test]
    fn cgroup_inodes_resolve_to_containers_and_rescans_are_rate_limited() {
        let dir = tempfile::tempdir().unwrap();
        let pod_dir = dir.path().join(format!(
            "kubepods.slice/kubepods-pod{}.slice",
            UID.replace('-', "_")
        ));
        let container_dir = pod_dir.join(format!("cri-containerd-{ID}.scope"));
        std::fs::create_dir_all(&container_dir).unwrap();
        let host = Host::new(dir.path().to_owned(), dir.path().to_owned());
        let inode = std::fs::metadata(&container_dir).unwrap().ino();
        let owner = host.owner_of_inode(inode).unwrap();
        assert_eq!(owner.container_id.as_deref(), Some(ID));
        assert_eq!(owner.pod_uid.as_deref(), Some(UID));
        let pod_inode = std::fs::metadata(&pod_dir).unwrap().ino();
        assert_eq!(host.owner_of_inode(pod_inode).unwrap().container_id, None);
        // A container created after the walk isn't seen until the next one is allowed.
        let later = pod_dir.join(format!("cri-containerd-{}.scope", "f".repeat(64)));
        std::fs::create_dir_all(&later).unwrap();
        assert_eq!(
            host.owner_of_inode(std::fs::metadata(&later).unwrap().ino()),
            None
        );
    }
}
