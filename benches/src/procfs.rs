//! What `/proc` tells about a process under test: resident memory, CPU time, and the
//! kernel's per-socket UDP drop counter (`/proc/net/udp`, last column), which says whether
//! lost lines were dropped by the kernel because the receive buffer was full.

use std::collections::HashMap;
use std::path::Path;

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux x86 and arm).
const USER_HZ: f64 = 100.0;

/// Memory of a process, in bytes: (`VmRSS`, `VmHWM`, the peak).
pub fn rss_bytes(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:").unwrap_or(0)))
}

/// File descriptors a process holds open now.
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// User plus system CPU seconds of a process so far (all its threads).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&stat)
}

/// utime + stime from the text of `/proc/<pid>/stat`, in seconds.
fn parse_stat_cpu(stat: &str) -> Option<f64> {
    // The command name is in parentheses and may hold spaces; the fields after it start at
    // field 3 (state), so utime (14) and stime (15) are the 12th and 13th after it.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// The `drops` column summed over the UDP sockets bound to local `port` (IPv4 and IPv6).
pub fn udp_drops(port: u16) -> Option<u64> {
    let mut total = None;
    for file in ["/proc/net/udp", "/proc/net/udp6"] {
        if let Ok(text) = std::fs::read_to_string(Path::new(file))
            && let Some(d) = parse_udp_drops(&text, port)
        {
            *total.get_or_insert(0) += d;
        }
    }
    total
}

/// Drops of the sockets on local `port` in the text of `/proc/net/udp{,6}`.
fn parse_udp_drops(text: &str, port: u16) -> Option<u64> {
    let want = format!(":{port:04X}");
    let mut total = None;
    for line in text.lines().skip(1) {
        let mut f = line.split_whitespace();
        let Some(local) = f.nth(1) else { continue };
        if !local.ends_with(&want) {
            continue;
        }
        if let Some(drops) = line
            .split_whitespace()
            .last()
            .and_then(|d| d.parse::<u64>().ok())
        {
            *total.get_or_insert(0) += drops;
        }
    }
    total
}

/// CPU seconds used so far by each user-space process of the machine except `exclude`
/// (kernel threads, such as the ksoftirqd threads that deliver loopback traffic, are left
/// out: they work for the load itself).
pub fn other_processes_cpu(exclude: &[u32]) -> HashMap<u32, f64> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if exclude.contains(&pid) {
            continue;
        }
        // Kernel threads have an empty command line.
        let user_space = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty());
        if let Some(cpu) = cpu_seconds(pid).filter(|_| user_space) {
            out.insert(pid, cpu);
        }
    }
    out
}

/// CPU seconds used between two [`other_processes_cpu`] snapshots (a process that started
/// in between counts whole; one that ended in between is missed).
pub fn cpu_between(before: &HashMap<u32, f64>, after: &HashMap<u32, f64>) -> f64 {
    after
        .iter()
        .map(|(pid, &a)| (a - before.get(pid).copied().unwrap_or(0.0)).max(0.0))
        .sum()
}

/// `net.core.rmem_max`, the cap on SO_RCVBUF for unprivileged requests.
pub fn rmem_max() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat() {
        let stat =
            "1234 (statsd bridge) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1 2 3";
        assert_eq!(parse_stat_cpu(stat), Some(3.0));
    }

    #[test]
    fn parses_udp_drops() {
        let text = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
          1: 0100007F:1FBD 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 17\n\
          2: 0100007F:1FBE 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 5\n";
        assert_eq!(parse_udp_drops(text, 8125), Some(17));
        assert_eq!(parse_udp_drops(text, 8126), Some(5));
        assert_eq!(parse_udp_drops(text, 9), None);
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap().0 > 0);
        assert!(cpu_seconds(pid).is_some());
        let snap = other_processes_cpu(&[pid]);
        assert!(!snap.contains_key(&pid));
        assert!(cpu_between(&snap, &snap) == 0.0);
    }
}
