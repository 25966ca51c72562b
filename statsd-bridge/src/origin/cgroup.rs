//! Container identity from cgroup paths and DogStatsD's `|c:` field. Pure: the reads of
//! `/proc/<pid>/cgroup` and of the cgroup tree are in [`super::host`].

/// What a process' cgroup path says about where it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupOwner {
    /// The container runtime's ID (64 hex digits).
    pub container_id: Option<String>,
    /// The pod's UID, when the path has a kubelet `pod<uid>` segment.
    pub pod_uid: Option<String>,
}

/// What a `|c:` field names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerRef<'a> {
    /// A container ID (`c:<id>`, or `c:ci-<id>` since DogStatsD v1.4).
    Id(&'a str),
    /// The inode of the sender's cgroup directory (`c:in-<inode>`, v1.4, cgroup v2).
    Inode(u64),
}

impl<'a> ContainerRef<'a> {
    /// Reads a `|c:` value; `None` when it is empty or an `in-` that is not a number.
    pub fn parse(field: &'a str) -> Option<Self> {
        if let Some(id) = field.strip_prefix("ci-") {
            return (!id.is_empty()).then_some(Self::Id(id));
        }
        if let Some(inode) = field.strip_prefix("in-") {
            return inode.parse().ok().map(Self::Inode);
        }
        (!field.is_empty()).then_some(Self::Id(field))
    }
}

/// The bare ID of a kubelet `containerID` (`containerd://<id>`, `cri-o://<id>`,
/// `docker://<id>`), lowercased.
pub fn bare_container_id(id: &str) -> String {
    id.rsplit_once("://")
        .map_or(id, |(_, bare)| bare)
        .to_ascii_lowercase()
}

/// Reads a `/proc/<pid>/cgroup` file (cgroup v1 or v2): the container ID and pod UID of the
/// first line that names them.
pub fn parse_proc_cgroup(text: &str) -> CgroupOwner {
    let mut owner = CgroupOwner::default();
    for line in text.lines() {
        // hierarchy-ID:controllers:path; the path may itself hold colons.
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        let found = parse_cgroup_path(path);
        if owner.container_id.is_none() {
            owner.container_id = found.container_id;
        }
        if owner.pod_uid.is_none() {
            owner.pod_uid = found.pod_uid;
        }
        if owner.container_id.is_some() && owner.pod_uid.is_some() {
            break;
        }
    }
    owner
}

/// Reads one cgroup path, in the shapes kubelet's cgroup drivers give with containerd, CRI-O
/// and Docker:
/// - cgroupfs: `/kubepods/burstable/pod<uid>/<id>`;
/// - systemd: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope`
///   (`crio-<id>.scope`, `docker-<id>.scope`; the UID's dashes written as underscores).
pub fn parse_cgroup_path(path: &str) -> CgroupOwner {
    let mut owner = CgroupOwner::default();
    for segment in path.split('/').rev() {
        if owner.container_id.is_none() {
            owner.container_id = container_segment(segment).map(str::to_ascii_lowercase);
        }
        if owner.pod_uid.is_none() {
            owner.pod_uid = pod_segment(segment);
        }
    }
    owner
}

/// The container ID a path segment names, if it names one.
pub fn container_segment(segment: &str) -> Option<&str> {
    let s = segment.strip_suffix(".scope").unwrap_or(segment);
    // CRI-O's monitor process has its own scope; it is not the container.
    if s.starts_with("crio-conmon-") {
        return None;
    }
    let id = [
        "cri-containerd-",
        "crio-",
        "docker-",
        "containerd-",
        "libpod-",
    ]
    .iter()
    .find_map(|p| s.strip_prefix(p))
    .unwrap_or(s);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// The pod UID a path segment names (`pod<uid>` or `kubepods-<qos>-pod<uid_>.slice`).
pub fn pod_segment(segment: &str) -> Option<String> {
    let s = segment.strip_suffix(".slice").unwrap_or(segment);
    let uid = match s.rfind("-pod") {
        Some(i) if s.starts_with("kubepods") => s.get(i + 4..)?,
        _ => s.strip_prefix("pod")?,
    };
    let uid = uid.replace('_', "-").to_ascii_lowercase();
    let is_uid = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| {
            matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || b.is_ascii_hexdigit())
        });
    is_uid.then_some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "3c1f6f5e-8a5e-4f1b-9e0d-2b7c5a9e4d21";

    #[test]
    fn cgroup_paths_of_each_runtime_and_driver() {
        let uid_ = UID.replace('-', "_");
        let cases = [
            // cgroup v2, systemd driver, containerd
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
            ),
            // CRI-O
            format!(
                "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-{ID}.scope"
            ),
            // Docker (dockershim / cri-dockerd), systemd driver
            format!("0::/kubepods.slice/kubepods-pod{uid_}.slice/docker-{ID}.scope"),
            // cgroup v1, cgroupfs driver, several hierarchies
            format!(
                "12:pids:/kubepods/burstable/pod{UID}/{ID}\n11:memory:/kubepods/burstable/pod{UID}/{ID}\n0::/"
            ),
            // guaranteed QoS has no QoS level in the path
            format!("4:cpu,cpuacct:/kubepods/pod{UID}/{ID}"),
        ];
        for text in &cases {
            let owner = parse_proc_cgroup(text);
            assert_eq!(owner.container_id.as_deref(), Some(ID), "{text}");
            assert_eq!(owner.pod_uid.as_deref(), Some(UID), "{text}");
        }
    }

    #[test]
    fn paths_without_a_container() {
        for text in [
            "0::/",
            "0::/user.slice/user-1000.slice/session-2.scope",
            "4:memory:/process_api/06cbed429bf21da9505eea3dfc61029a",
            &format!(
                "0::/kubepods.slice/kubepods-pod{}.slice/crio-conmon-{ID}.scope",
                UID.replace('-', "_")
            ),
            "garbage without colons",
            "",
        ] {
            assert_eq!(parse_proc_cgroup(text).container_id, None, "{text}");
        }
        // The monitor's path still names the pod.
        let conmon = format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/crio-conmon-{ID}.scope",
            UID.replace('-', "_")
        );
        assert_eq!(parse_proc_cgroup(&conmon).pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn uppercase_ids_are_lowercased() {
        let upper = ID.to_ascii_uppercase();
        let owner = parse_proc_cgroup(&format!("0::/kubepods/pod{UID}/{upper}"));
        assert_eq!(owner.container_id.as_deref(), Some(ID));
    }

    #[test]
    fn kubelet_container_ids() {
        assert_eq!(bare_container_id(&format!("containerd://{ID}")), ID);
        assert_eq!(bare_container_id(&format!("cri-o://{ID}")), ID);
        assert_eq!(
            bare_container_id(&format!("docker://{}", ID.to_ascii_uppercase())),
            ID
        );
        assert_eq!(bare_container_id(ID), ID);
    }

    #[test]
    fn dogstatsd_container_fields() {
        assert_eq!(ContainerRef::parse("abc"), Some(ContainerRef::Id("abc")));
        assert_eq!(ContainerRef::parse("ci-abc"), Some(ContainerRef::Id("abc")));
        assert_eq!(
            ContainerRef::parse("in-1234"),
            Some(ContainerRef::Inode(1234))
        );
        assert_eq!(ContainerRef::parse("in-x"), None);
        assert_eq!(ContainerRef::parse("ci-"), None);
        assert_eq!(ContainerRef::parse(""), None);
    }
}
