//! Datacenter networks: address ranges and autonomous systems that host servers, not
//! people. A click from one is flagged `DATACENTER`; what that means for money is each
//! offer's fraud rule.
//!
//! The list format, one entry per line (`#` starts a comment; text after the entry is a
//! label, kept for people):
//!
//! ```text
//! 203.0.113.0/24    example-cloud
//! 2001:db8::/32     example-cloud v6
//! AS16509           Amazon
//! ```
//!
//! Ranges match by address alone. ASNs match through the ASN database (`asn_database`),
//! so the built-in list of hosting ASNs does nothing without one.

use std::net::IpAddr;

use ipnet::IpNet;

const BUILTIN: &str = include_str!("../data/datacenters.txt");

/// The list, as sorted, merged ranges and a sorted set of ASNs.
#[derive(Debug, Default)]
pub struct Networks {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
    asns: Vec<u32>,
}

impl Networks {
    /// The built-in list alone.
    pub fn builtin() -> Networks {
        // The built-in list is tested to parse (`the_builtin_list_parses`).
        Networks::parse_all(&[("built-in datacenters.txt", BUILTIN)]).unwrap_or_default()
    }

    /// The built-in list and the operator's file `text` (named `name` in problems).
    pub fn with_file(name: &str, text: &str) -> Result<Networks, Vec<String>> {
        Networks::parse_all(&[("built-in datacenters.txt", BUILTIN), (name, text)])
    }

    fn parse_all(files: &[(&str, &str)]) -> Result<Networks, Vec<String>> {
        let mut n = Networks::default();
        let mut problems = Vec::new();
        for (name, text) in files {
            for (i, line) in text.lines().enumerate() {
                let entry = line.split('#').next().unwrap_or("").split_whitespace().next().unwrap_or("");
                if entry.is_empty() {
                    continue;
                }
                if let Some(num) = entry.strip_prefix("AS").or_else(|| entry.strip_prefix("as")) {
                    match num.parse::<u32>() {
                        Ok(asn) if asn != 0 => n.asns.push(asn),
                        _ => problems
                            .push(format!("{name} line {}: {entry:?} is not an ASN (AS1 to AS4294967295)", i + 1)),
                    }
                    continue;
                }
                let net = entry.parse::<IpNet>().or_else(|_| entry.parse::<IpAddr>().map(IpNet::from));
                match net {
                    Ok(IpNet::V4(v4)) => n.v4.push((u32::from(v4.network()), u32::from(v4.broadcast()))),
                    Ok(IpNet::V6(v6)) => n.v6.push((u128::from(v6.network()), u128::from(v6.broadcast()))),
                    Err(_) => problems.push(format!(
                        "{name} line {}: {entry:?} is not a network (CIDR such as 203.0.113.0/24), an address or an ASN (AS16509)",
                        i + 1
                    )),
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        n.v4 = merge(n.v4);
        n.v6 = merge(n.v6);
        n.asns.sort_unstable();
        n.asns.dedup();
        Ok(n)
    }

    /// Whether `ip` (canonical: IPv4 as IPv4) or its autonomous system `asn` (0 unknown) is
    /// listed.
    pub fn contains(&self, ip: IpAddr, asn: u32) -> bool {
        let by_range = match ip {
            IpAddr::V4(v4) => covered(&self.v4, u32::from(v4)),
            IpAddr::V6(v6) => covered(&self.v6, u128::from(v6)),
        };
        by_range || (asn != 0 && self.asns.binary_search(&asn).is_ok())
    }

    /// Entries loaded: ranges after merging, and ASNs.
    pub fn len(&self) -> (usize, usize) {
        (self.v4.len() + self.v6.len(), self.asns.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }
}

/// Sorted, non-overlapping ranges, adjacent ones joined: one binary search answers.
fn merge<T: Ord + Copy + num_like::Succ>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1.succ() => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

fn covered<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    // The last range starting at or below x is the only one that can hold it.
    let i = ranges.partition_point(|r| r.0 <= x);
    i > 0 && ranges[i - 1].1 >= x
}

mod num_like {
    /// The next value, saturating: adjacency for range merging.
    pub trait Succ {
        fn succ(self) -> Self;
    }
    impl Succ for u32 {
        fn succ(self) -> u32 {
            self.saturating_add(1)
        }
    }
    impl Succ for u128 {
        fn succ(self) -> u128 {
            self.saturating_add(1)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_builtin_list_parses_and_names_hosting_asns() {
        Networks::parse_all(&[("built-in", BUILTIN)]).unwrap();
        let n = Networks::builtin();
        assert!(n.contains(ip("192.0.2.1"), 16509), "AWS");
        assert!(!n.contains(ip("192.0.2.1"), 0));
        assert!(!n.contains(ip("192.0.2.1"), 3320), "a residential ISP");
    }

    #[test]
    fn ranges_addresses_and_asns_match() {
        let n = Networks::with_file(
            "dc.txt",
            "# a comment\n203.0.113.0/24 example\n\n198.51.100.7\n2001:db8::/32  v6 # trailing\nAS64500 test\nas64501\n",
        )
        .unwrap();
        assert!(n.contains(ip("203.0.113.0"), 0));
        assert!(n.contains(ip("203.0.113.255"), 0));
        assert!(!n.contains(ip("203.0.114.0"), 0));
        assert!(!n.contains(ip("203.0.112.255"), 0));
        assert!(n.contains(ip("198.51.100.7"), 0));
        assert!(!n.contains(ip("198.51.100.8"), 0));
        assert!(n.contains(ip("2001:db8:ffff::1"), 0));
        assert!(!n.contains(ip("2001:db9::1"), 0));
        assert!(n.contains(ip("192.0.2.1"), 64500));
        assert!(n.contains(ip("192.0.2.1"), 64501));
    }

    #[test]
    fn bad_lines_are_named_by_file_and_line() {
        let e = Networks::with_file("dc.txt", "203.0.113.0/24\n300.0.0.0/8\nAS\nASx1\n10.0.0.0/33\n").unwrap_err();
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(e[0].starts_with("dc.txt line 2: \"300.0.0.0/8\" is not a network"), "{e:?}");
        assert!(e[1].starts_with("dc.txt line 3: \"AS\" is not an ASN"), "{e:?}");
        assert!(e[3].starts_with("dc.txt line 5:"), "{e:?}");
    }

    proptest! {
        /// Merged ranges answer exactly what the listed ranges answer.
        #[test]
        fn merged_ranges_answer_as_the_list(
            nets in proptest::collection::vec((any::<u32>(), 8u8..=32), 0..40),
            probes in proptest::collection::vec(any::<u32>(), 0..200),
        ) {
            let nets: Vec<ipnet::Ipv4Net> = nets
                .into_iter()
                .map(|(a, len)| ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(a), len).unwrap().trunc())
                .collect();
            let text: String = nets.iter().map(|n| format!("{n}\n")).collect();
            let list = Networks::parse_all(&[("t", &text)]).unwrap();
            // Probe each network's edges too, where merging could go wrong.
            let edges = nets.iter().flat_map(|n| {
                let (lo, hi) = (u32::from(n.network()), u32::from(n.broadcast()));
                [lo, hi, lo.wrapping_sub(1), hi.wrapping_add(1)]
            });
            for p in probes.into_iter().chain(edges) {
                let addr = std::net::Ipv4Addr::from(p);
                let naive = nets.iter().any(|n| n.contains(&addr));
                prop_assert_eq!(list.contains(IpAddr::V4(addr), 0), naive, "{}", addr);
            }
        }
    }
}
