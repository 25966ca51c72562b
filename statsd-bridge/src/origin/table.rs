//! The static origin table: source address or CIDR → labels, for use without Kubernetes.

use std::net::IpAddr;

use super::OriginLabels;

/// An address block: `10.0.0.0/24`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `addr` or `addr/prefix`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR block"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { net, prefix })
    }

    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
}

/// Address blocks and their labels; the longest matching prefix wins.
#[derive(Debug, Clone, Default)]
pub struct StaticTable {
    entries: Vec<(Cidr, OriginLabels)>,
}

impl StaticTable {
    /// A table of these entries.
    pub fn new(mut entries: Vec<(Cidr, OriginLabels)>) -> Self {
        // Stable: of two equal blocks, the first written wins.
        entries.sort_by_key(|(c, _)| std::cmp::Reverse(c.prefix()));
        Self { entries }
    }

    /// The labels of the most specific block holding `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<&OriginLabels> {
        self.entries
            .iter()
            .find(|(c, _)| c.contains(ip))
            .map(|(_, l)| l)
    }

    /// Entries in the table.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn labels(pod: &str) -> OriginLabels {
        Arc::from(vec![("pod".to_owned(), pod.to_owned())])
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_parse_and_contain() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains(ip("10.1.200.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.0.9")), "IPv4-mapped");
        assert!(!c.contains(ip("fd00::1")));
        assert!(Cidr::parse("0.0.0.0/0").is_ok_and(|c| c.contains(ip("8.8.8.8"))));
        assert!(
            Cidr::parse("fd00::/8")
                .is_ok_and(|c| c.contains(ip("fd12::1")) && !c.contains(ip("fe80::1")))
        );
        assert!(
            Cidr::parse("127.0.0.11")
                .is_ok_and(|c| c.contains(ip("127.0.0.11")) && !c.contains(ip("127.0.0.12")))
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0.0/x",
            "host.example",
            "10.0.0/8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_longest_prefix_wins() {
        let entry = |c: &str, pod: &str| Cidr::parse(c).map(|c| (c, labels(pod)));
        let table = StaticTable::new(
            [
                entry("10.0.0.0/8", "wide"),
                entry("10.1.2.0/24", "narrow"),
                entry("10.1.2.3", "one"),
            ]
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .unwrap(),
        );
        assert_eq!(table.len(), 3);
        let pod = |a: &str| {
            table
                .lookup(ip(a))
                .and_then(|l| l.first())
                .map(|(_, v)| v.clone())
        };
        assert_eq!(pod("10.1.2.3").as_deref(), Some("one"));
        assert_eq!(pod("10.1.2.4").as_deref(), Some("narrow"));
        assert_eq!(pod("10.9.9.9").as_deref(), Some("wide"));
        assert_eq!(pod("192.168.0.1"), None);
    }
}
