//! Country, region and ASN from MaxMind-format databases (the `maxminddb` reader), read
//! into memory once.
//!
//! Only the fields a click records are decoded; the rest of a record (names in eight
//! languages, coordinates, postal codes) is skipped by the reader without being built.
//!
//! IPv4 addresses, most clicks, are answered from a table built at load ([`V4Table`]), not
//! by walking the database's search tree: a walk takes a cache miss at nearly every one of
//! its 20-odd levels, 0.5 to 1.5 µs a click on a GeoLite2-sized database, a sixth of
//! what the edge spends on the whole click. IPv6 addresses walk the tree.

use std::net::IpAddr;
use std::path::Path;

use std::collections::HashMap;

use maxminddb::{LookupResult, Reader, WithinOptions};
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;

/// A Country or City database (GeoIP2, GeoLite2, or any of their shape).
pub struct GeoDb {
    reader: Reader<Vec<u8>>,
    /// The IPv4 networks; values index `places`.
    v4: V4Table,
    /// Distinct (country, region) pairs; 0 is unknown.
    places: Vec<(Box<str>, Box<str>)>,
}

/// An ASN database (GeoLite2-ASN, GeoIP2-ISP).
pub struct AsnDb {
    reader: Reader<Vec<u8>>,
    /// The IPv4 networks; values are ASNs.
    v4: V4Table,
}

impl std::fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoDb").field("database_type", &self.reader.metadata().database_type).finish()
    }
}

impl std::fmt::Debug for AsnDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsnDb").field("database_type", &self.reader.metadata().database_type).finish()
    }
}

fn open(path: &Path) -> Result<Reader<Vec<u8>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Reader::from_source(bytes).map_err(|e| format!("{} is not a MaxMind DB file: {e}", path.display()))
}

#[derive(Deserialize)]
struct CityRecord<'a> {
    #[serde(borrow, default)]
    country: Option<Iso<'a>>,
    /// Where the network is registered: the only country some records have (anonymous
    /// proxies, satellite providers).
    #[serde(borrow, default)]
    registered_country: Option<Iso<'a>>,
    #[serde(borrow, default)]
    subdivisions: Option<First<'a>>,
}

#[derive(Deserialize)]
struct Iso<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

/// The first subdivision's code: the rest of the list is skipped, not collected.
struct First<'a>(Option<&'a str>);

impl<'de: 'a, 'a> Deserialize<'de> for First<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = First<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of subdivisions")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<First<'a>, A::Error> {
                let first = seq.next_element::<Iso<'a>>()?.and_then(|s| s.iso_code);
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(First(first))
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct AsnRecord {
    #[serde(default)]
    autonomous_system_number: Option<u32>,
}

/// A code fit to record: 1 to 3 ASCII letters or digits. Anything else from a database is
/// dropped rather than stored (a damaged or foreign database must not put arbitrary text
/// into every click).
fn code(s: Option<&str>) -> &str {
    match s {
        Some(s) if (1..=3).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric()) => s,
        _ => "",
    }
}

impl GeoDb {
    pub fn open(path: &Path) -> Result<GeoDb, String> {
        let reader = open(path)?;
        // A database of another shape (an ASN database given here by mistake) opens fine
        // and answers nothing: say so at load, not by empty countries forever.
        let kind = &reader.metadata().database_type;
        if kind.contains("ASN") || kind.contains("ISP") {
            return Err(format!("{} is a {kind} database, not a Country or City one", path.display()));
        }
        let mut places: Vec<(Box<str>, Box<str>)> = vec![("".into(), "".into())];
        let mut ids: HashMap<(Box<str>, Box<str>), u32> = HashMap::new();
        let v4 = V4Table::build(&reader, |found| {
            let (country, region) = place(found);
            if country.is_empty() && region.is_empty() {
                return 0;
            }
            let key: (Box<str>, Box<str>) = (country.into(), region.into());
            *ids.entry(key.clone()).or_insert_with(|| {
                places.push(key);
                (places.len() - 1) as u32
            })
        })
        .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(GeoDb { reader, v4, places })
    }

    /// When the database was built (Unix seconds).
    pub fn built(&self) -> u64 {
        self.reader.metadata().build_epoch
    }

    /// Country and region of `ip`; empty when the database does not know it.
    pub fn locate(&self, ip: IpAddr) -> (&str, &str) {
        match ip {
            IpAddr::V4(v4) => {
                let (c, r) =
                    self.places.get(self.v4.get(u32::from(v4)) as usize).map_or(("", ""), |(c, r)| (&**c, &**r));
                (c, r)
            }
            IpAddr::V6(_) => match self.reader.lookup(ip) {
                Ok(found) => place(&found),
                Err(_) => ("", ""),
            },
        }
    }
}

/// The country and region a lookup found, checked fit to record.
fn place<'a>(found: &LookupResult<'a, Vec<u8>>) -> (&'a str, &'a str) {
    let Ok(Some(r)) = found.decode::<CityRecord<'a>>() else { return ("", "") };
    let country = r.country.and_then(|c| c.iso_code).or(r.registered_country.and_then(|c| c.iso_code));
    let region = r.subdivisions.and_then(|s| s.0);
    (code(country), code(region))
}

fn asn_of(found: &LookupResult<'_, Vec<u8>>) -> u32 {
    match found.decode::<AsnRecord>() {
        Ok(Some(r)) => r.autonomous_system_number.unwrap_or(0),
        _ => 0,
    }
}

/// The IPv4 networks of a database as a table: for each /16, the addresses where the
/// answer changes (their low 16 bits, ascending, the first always 0) and the answer from
/// there on. A lookup reads one bucket bound, then searches a few dozen bytes: two or
/// three cache lines, where a tree walk takes one per level.
struct V4Table {
    /// `buckets[b]..buckets[b + 1]` are the /16 `b`'s entries.
    buckets: Vec<u32>,
    /// A change's low 16 bits beside its answer: the search and the answer share cache lines.
    entries: Vec<Entry>,
}

#[derive(Clone, Copy)]
struct Entry {
    low: u16,
    value: u32,
}

impl V4Table {
    /// Reads every IPv4 network of `reader` once; `value` maps a record to its answer (0
    /// means none), called once per distinct record.
    fn build(
        reader: &Reader<Vec<u8>>,
        mut value: impl FnMut(&LookupResult<'_, Vec<u8>>) -> u32,
    ) -> Result<V4Table, String> {
        let all = ipnetwork::IpNetwork::V4(
            ipnetwork::Ipv4Network::new(std::net::Ipv4Addr::UNSPECIFIED, 0).map_err(|e| e.to_string())?,
        );
        let mut memo: HashMap<usize, u32> = HashMap::new();
        // Breakpoints: (first address, answer from there on), ascending.
        let mut points: Vec<(u32, u32)> = Vec::new();
        for found in reader.within(all, WithinOptions::default()).map_err(|e| e.to_string())? {
            let found = found.map_err(|e| e.to_string())?;
            let Some(offset) = found.offset() else { continue };
            let (start, end) = match found.network().map_err(|e| e.to_string())? {
                ipnetwork::IpNetwork::V4(n) => (u32::from(n.network()), u32::from(n.broadcast())),
                // An IPv4 network reported in its IPv6 form (the IPv4 subtree at ::/96).
                ipnetwork::IpNetwork::V6(n) => {
                    let lo = u128::from(n.network());
                    let hi = u128::from(n.broadcast());
                    if hi > u128::from(u32::MAX) {
                        continue;
                    }
                    (lo as u32, hi as u32)
                }
            };
            let v = *memo.entry(offset).or_insert_with(|| value(&found));
            match points.last_mut() {
                // Adjacent networks with the same answer are one range.
                Some(last) if last.1 == v && last.0 <= start => {}
                _ => points.push((start, v)),
            }
            if let Some(next) = end.checked_add(1) {
                points.push((next, 0));
            }
        }
        // `within` yields networks in address order; a network's end point is replaced by
        // the next network when that starts right there.
        points.sort_by_key(|p| p.0);
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(points.len());
        for (at, v) in points {
            match merged.last_mut() {
                Some(last) if last.0 == at => last.1 = v,
                Some(last) if last.1 == v => {}
                _ => merged.push((at, v)),
            }
        }
        let mut t = V4Table { buckets: Vec::with_capacity(65_537), entries: Vec::with_capacity(merged.len() + 65_536) };
        let (mut i, mut current) = (0usize, 0u32);
        for bucket in 0..=u32::from(u16::MAX) {
            t.buckets.push(t.entries.len() as u32);
            let base = bucket << 16;
            while i < merged.len() && merged[i].0 <= base {
                current = merged[i].1;
                i += 1;
            }
            t.entries.push(Entry { low: 0, value: current });
            while i < merged.len() && merged[i].0 >> 16 == bucket {
                current = merged[i].1;
                t.entries.push(Entry { low: merged[i].0 as u16, value: current });
                i += 1;
            }
        }
        t.buckets.push(t.entries.len() as u32);
        Ok(t)
    }

    fn get(&self, ip: u32) -> u32 {
        let b = (ip >> 16) as usize;
        let entries = &self.entries[self.buckets[b] as usize..self.buckets[b + 1] as usize];
        // entries[0].low is 0, so at least one entry is at or below any address.
        let at = entries.partition_point(|e| e.low <= ip as u16);
        entries.get(at.saturating_sub(1)).map_or(0, |e| e.value)
    }
}

impl AsnDb {
    pub fn open(path: &Path) -> Result<AsnDb, String> {
        let reader = open(path)?;
        let kind = &reader.metadata().database_type;
        if !(kind.contains("ASN") || kind.contains("ISP")) {
            return Err(format!("{} is a {kind} database, not an ASN or ISP one", path.display()));
        }
        let v4 = V4Table::build(&reader, asn_of).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(AsnDb { reader, v4 })
    }

    /// When the database was built (Unix seconds).
    pub fn built(&self) -> u64 {
        self.reader.metadata().build_epoch
    }

    /// The autonomous system of `ip`; 0 when the database does not know it.
    pub fn asn(&self, ip: IpAddr) -> u32 {
        match ip {
            IpAddr::V4(v4) => self.v4.get(u32::from(v4)),
            IpAddr::V6(_) => self.reader.lookup(ip).map_or(0, |found| asn_of(&found)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn temp_db(bytes: Vec<u8>) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.mmdb");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    /// The table answers what a walk of the search tree answers, for every address probed:
    /// random ones, and both sides of every network's edges.
    #[test]
    fn the_ipv4_table_answers_as_the_tree_does() {
        let mut rng = tally_testkit::Rng::new(11);
        for (city, asn) in [
            (tally_testkit::mmdb::city_fixture(), tally_testkit::mmdb::asn_fixture()),
            (tally_testkit::mmdb::city_like(20_000, 3), tally_testkit::mmdb::asn_like(20_000, 3)),
        ] {
            let ((_d1, city), (_d2, asn)) = (temp_db(city), temp_db(asn));
            let (geo, asn) = (GeoDb::open(&city).unwrap(), AsnDb::open(&asn).unwrap());
            let mut probes: Vec<u32> = (0..100_000).map(|_| rng.next_u64() as u32).collect();
            let all =
                ipnetwork::IpNetwork::V4(ipnetwork::Ipv4Network::new(std::net::Ipv4Addr::UNSPECIFIED, 0).unwrap());
            for found in geo.reader.within(all, WithinOptions::default()).unwrap() {
                if let ipnetwork::IpNetwork::V4(n) = found.unwrap().network().unwrap() {
                    let (lo, hi) = (u32::from(n.network()), u32::from(n.broadcast()));
                    probes.extend([lo, hi, lo.wrapping_sub(1), hi.wrapping_add(1)]);
                }
            }
            probes.extend([0, u32::MAX, 0x0001_0000, 0xffff_0000]);
            for p in probes {
                let v4 = std::net::Ipv4Addr::from(p);
                let walked = geo.reader.lookup(IpAddr::V4(v4)).map(|f| place(&f)).unwrap();
                assert_eq!(geo.locate(IpAddr::V4(v4)), walked, "{v4}");
                let walked = asn.reader.lookup(IpAddr::V4(v4)).map(|f| asn_of(&f)).unwrap();
                assert_eq!(asn.asn(IpAddr::V4(v4)), walked, "{v4}");
            }
        }
    }

    #[test]
    fn codes_are_short_and_plain_or_dropped() {
        assert_eq!(code(Some("GB")), "GB");
        assert_eq!(code(Some("ENG")), "ENG");
        assert_eq!(code(Some("01")), "01");
        assert_eq!(code(Some("")), "");
        assert_eq!(code(Some("ENGL")), "");
        assert_eq!(code(Some("G\n")), "");
        assert_eq!(code(None), "");
    }
}
