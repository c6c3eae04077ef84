//! A MaxMind DB (`.mmdb`, spec 2.0) writer for tests and benchmarks, and the databases built with it.
//!
//! Hand-written rather than a writer crate: those bring a proc-macro builder stack into CI's cold
//! build, and the format is small. The tree is always IPv6 with 28-bit records (room for 2^28
//! nodes plus data bytes). IPv4 networks live under `::/96`, as in GeoLite2, which is where the
//! `maxminddb` crate looks up IPv4 addresses; unlike GeoLite2, `::ffff:0:0/96` and `2002::/16` are
//! not aliased to them.

use std::collections::{BTreeMap, HashMap};

use ipnet::{IpNet, Ipv4Net};

use crate::Rng;

/// A value in the data section.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    U16(u16),
    U32(u32),
    U64(u64),
    Double(f64),
    Bool(bool),
    Map(Vec<(String, Value)>),
    Array(Vec<Value>),
}

impl Value {
    pub fn map<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Value)>) -> Value {
        Value::Map(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    pub fn array(items: impl IntoIterator<Item = Value>) -> Value {
        Value::Array(items.into_iter().collect())
    }
}

macro_rules! from {
    ($($t:ty => $v:ident),*) => {$(impl From<$t> for Value { fn from(x: $t) -> Value { Value::$v(x.into()) } })*};
}
from!(&str => Str, String => Str, u16 => U16, u32 => U32, u64 => U64, f64 => Double, bool => Bool);

/// Builds a database in memory: a binary trie of networks, encoded by [`Writer::to_bytes`].
#[derive(Debug, Clone)]
pub struct Writer {
    database_type: String,
    /// The metadata's `languages` (`["en"]` unless set).
    pub languages: Vec<String>,
    /// The metadata's `build_epoch`: fixed unless set, so the bytes depend on the inserts alone.
    pub build_epoch: u64,
    nodes: Vec<[Rec; 2]>,
    values: Vec<Value>,
}

#[derive(Debug, Clone, Copy)]
enum Rec {
    Empty,
    Node(usize),
    Data(usize),
}

impl Writer {
    pub fn new(database_type: &str) -> Writer {
        let (languages, build_epoch) = (vec!["en".into()], 1_700_000_000);
        Writer {
            database_type: database_type.into(),
            languages,
            build_epoch,
            nodes: vec![[Rec::Empty; 2]],
            values: vec![],
        }
    }

    /// Inserts a network: a more specific network inserted later overrides its part of an earlier
    /// one; an equal or broader one inserted later replaces everything under it.
    pub fn insert(&mut self, net: IpNet, value: Value) {
        self.values.push(value);
        self.insert_value(net, self.values.len() - 1);
    }

    /// Inserts a network answering `self.values[value]`: many networks, one value, encoded once.
    fn insert_value(&mut self, net: IpNet, value: usize) {
        let (bits, len) = match net {
            IpNet::V4(n) => (u128::from(u32::from(n.network())), n.prefix_len() + 96),
            IpNet::V6(n) => (u128::from(n.network()), n.prefix_len()),
        };
        let data = Rec::Data(value);
        if len == 0 {
            self.nodes[0] = [data; 2];
            return;
        }
        let bit = |i: u8| (bits >> (127 - i)) as usize & 1;
        let mut node = 0;
        for i in 0..len - 1 {
            node = match self.nodes[node][bit(i)] {
                Rec::Node(n) => n,
                // Splitting a leaf gives both halves what the whole had, so only the new part changes.
                leaf => {
                    self.nodes.push([leaf; 2]);
                    self.nodes[node][bit(i)] = Rec::Node(self.nodes.len() - 1);
                    self.nodes.len() - 1
                }
            };
        }
        self.nodes[node][bit(len - 1)] = data;
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Numbered breadth-first from the root, so subtrees a broader insert replaced drop out.
        let (mut order, mut number) = (vec![0], vec![0; self.nodes.len()]);
        let mut i = 0;
        while i < order.len() {
            for rec in self.nodes[order[i]] {
                if let Rec::Node(n) = rec {
                    number[n] = order.len();
                    order.push(n);
                }
            }
            i += 1;
        }
        let count = order.len();
        let mut data = Encoder { out: vec![], seen: HashMap::new(), share: true };
        let mut offsets = vec![None; self.values.len()];
        let mut out = Vec::with_capacity(count * 7);
        for &n in &order {
            let [l, r] = self.nodes[n].map(|rec| match rec {
                Rec::Empty => count,
                Rec::Node(n) => number[n],
                Rec::Data(d) => count + 16 + *offsets[d].get_or_insert_with(|| data.intern(&self.values[d])),
            });
            assert!(l.max(r) < 1 << 28, "database too large for 28-bit records");
            let mid = ((l >> 20) & 0xF0 | (r >> 24) & 0x0F) as u8;
            out.extend_from_slice(&(l as u32).to_be_bytes()[1..]);
            out.push(mid);
            out.extend_from_slice(&(r as u32).to_be_bytes()[1..]);
        }
        out.extend_from_slice(&[0; 16]);
        out.extend_from_slice(&data.out);
        out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
        let description = format!("{} written by tally-testkit", self.database_type);
        let metadata = Value::map([
            ("node_count", Value::U32(count.try_into().unwrap())),
            ("record_size", Value::U16(28)),
            ("ip_version", Value::U16(6)),
            ("database_type", self.database_type.as_str().into()),
            ("languages", Value::array(self.languages.iter().map(|l| l.as_str().into()))),
            ("binary_format_major_version", Value::U16(2)),
            ("binary_format_minor_version", Value::U16(0)),
            ("build_epoch", Value::U64(self.build_epoch)),
            ("description", Value::map([("en", description.into())])),
        ]);
        // Pointers in the metadata would be relative to its start; it is small, so none are used.
        out.extend(Encoder { out: vec![], seen: HashMap::new(), share: false }.inline(&metadata));
        out
    }
}

struct Encoder {
    out: Vec<u8>,
    seen: HashMap<Vec<u8>, usize>,
    share: bool,
}

impl Encoder {
    fn intern(&mut self, v: &Value) -> usize {
        let bytes = self.inline(v);
        self.intern_bytes(bytes)
    }

    fn intern_bytes(&mut self, bytes: Vec<u8>) -> usize {
        let out = &mut self.out;
        *self.seen.entry(bytes).or_insert_with_key(|b| {
            out.extend_from_slice(b);
            out.len() - b.len()
        })
    }

    fn inline(&mut self, v: &Value) -> Vec<u8> {
        let mut b = vec![];
        match v {
            Value::Str(s) => {
                header(&mut b, 2, s.len());
                b.extend_from_slice(s.as_bytes());
            }
            Value::Double(x) => {
                header(&mut b, 3, 8);
                b.extend_from_slice(&x.to_be_bytes());
            }
            Value::U16(n) => uint(&mut b, 5, (*n).into()),
            Value::U32(n) => uint(&mut b, 6, (*n).into()),
            Value::Map(pairs) => {
                header(&mut b, 7, pairs.len());
                for (k, v) in pairs {
                    self.child(&mut b, &Value::Str(k.clone()));
                    self.child(&mut b, v);
                }
            }
            Value::U64(n) => uint(&mut b, 9, *n),
            Value::Array(items) => {
                header(&mut b, 11, items.len());
                items.iter().for_each(|v| self.child(&mut b, v));
            }
            Value::Bool(x) => header(&mut b, 14, usize::from(*x)),
        }
        b
    }

    /// Keys, names and sub-records become pointers to one copy when a pointer is shorter, as in
    /// MaxMind's own databases: that is both their size and the pointer-chasing their lookups do.
    fn child(&mut self, b: &mut Vec<u8>, v: &Value) {
        let inline = self.inline(v);
        if self.share && matches!(v, Value::Str(_) | Value::Map(_) | Value::Array(_)) {
            let ptr = pointer(self.seen.get(&inline).copied().unwrap_or(self.out.len()));
            if ptr.len() < inline.len() {
                self.intern_bytes(inline);
                b.extend(ptr);
                return;
            }
        }
        b.extend(inline);
    }
}

fn header(b: &mut Vec<u8>, ty: u8, size: usize) {
    let (low, n, rest) = match size {
        0..29 => (size, 0, 0),
        29..285 => (29, 1, size - 29),
        285..65_821 => (30, 2, size - 285),
        _ => (31, 3, size - 65_821),
    };
    // Types above 7 are "extended": type 0 in the control byte, the type less 7 in the next.
    b.push((if ty > 7 { 0 } else { ty << 5 }) | low as u8);
    if ty > 7 {
        b.push(ty - 7);
    }
    b.extend_from_slice(&(rest as u64).to_be_bytes()[8 - n..]);
}

fn uint(b: &mut Vec<u8>, ty: u8, v: u64) {
    let n = (64 - v.leading_zeros() as usize).div_ceil(8);
    header(b, ty, n);
    b.extend_from_slice(&v.to_be_bytes()[8 - n..]);
}

fn pointer(at: usize) -> Vec<u8> {
    let be = |v: usize, n: usize| (v as u32).to_be_bytes()[4 - n..].to_vec();
    let tagged = |size: u8, v: usize, n: usize| [vec![0x20 | size << 3 | (v >> (8 * n)) as u8], be(v, n)].concat();
    match at {
        0..2_048 => tagged(0, at, 1),
        2_048..526_336 => tagged(1, at - 2_048, 2),
        526_336..134_744_064 => tagged(2, at - 526_336, 3),
        _ => [vec![0x38], be(at, 4)].concat(),
    }
}

const LANGUAGES: [&str; 8] = ["de", "en", "es", "fr", "ja", "pt-BR", "ru", "zh-CN"];
const CONTINENTS: &str = "AF:Africa;AS:Asia;EU:Europe;NA:North America;OC:Oceania;SA:South America";
const COUNTRIES: &str = "US:United States:NA;CA:Canada:NA;MX:Mexico:NA;BR:Brazil:SA;AR:Argentina:SA;CL:Chile:SA;\
    CO:Colombia:SA;PE:Peru:SA;GB:United Kingdom:EU;DE:Germany:EU;FR:France:EU;ES:Spain:EU;IT:Italy:EU;\
    NL:Netherlands:EU;BE:Belgium:EU;CH:Switzerland:EU;AT:Austria:EU;SE:Sweden:EU;NO:Norway:EU;DK:Denmark:EU;\
    FI:Finland:EU;PL:Poland:EU;CZ:Czechia:EU;PT:Portugal:EU;IE:Ireland:EU;GR:Greece:EU;RO:Romania:EU;\
    HU:Hungary:EU;UA:Ukraine:EU;RU:Russia:EU;TR:Turkey:AS;IL:Israel:AS;AE:United Arab Emirates:AS;\
    SA:Saudi Arabia:AS;IN:India:AS;PK:Pakistan:AS;CN:China:AS;JP:Japan:AS;KR:South Korea:AS;SG:Singapore:AS;\
    ID:Indonesia:AS;TH:Thailand:AS;VN:Vietnam:AS;PH:Philippines:AS;AU:Australia:OC;NZ:New Zealand:OC;\
    ZA:South Africa:AF;NG:Nigeria:AF;EG:Egypt:AF;KE:Kenya:AF";

fn fields(table: &str) -> impl Iterator<Item = Vec<&str>> {
    table.split(';').map(|row| row.split(':').collect())
}

fn hash(s: &str) -> u32 {
    s.bytes().fold(2_166_136_261, |h, b| (h ^ u32::from(b)).wrapping_mul(16_777_619))
}

/// Names in GeoLite2's eight languages. Only "en" is real; the others are stand-ins of a real
/// name's length and script (ASCII, Cyrillic, Katakana, Han), which is what decoding costs.
fn names(en: &str) -> Value {
    let script = |base: u32, step| en.chars().step_by(step).map(move |c| char::from_u32(base + c as u32 % 32).unwrap());
    let rot = |k: u8| {
        en.chars().map(move |c| if c.is_ascii_lowercase() { ((c as u8 - b'a' + k) % 26 + b'a') as char } else { c })
    };
    Value::map(LANGUAGES.iter().enumerate().map(|(k, &lang)| {
        let name: String = match lang {
            "en" => en.into(),
            "ja" => script(0x30A1, 1).collect(),
            "ru" => script(0x0410, 1).collect(),
            "zh-CN" => script(0x4E00, 2).collect(),
            _ => rot(k as u8 + 1).collect(),
        };
        (lang, name.into())
    }))
}

fn place(code: Option<(&str, &str)>, en: &str) -> Value {
    let code = code.map(|(key, code)| (key, code.into()));
    Value::map([("geoname_id", Value::U32(hash(en)))].into_iter().chain(code).chain([("names", names(en))]))
}

/// A GeoIP2-City-shaped record; `country` is (iso code, English name, continent code).
fn city_record(country: [&str; 3], sub: Option<(&str, &str)>, city: Option<&str>, lat: f64, lon: f64) -> Value {
    let continent = fields(CONTINENTS).find(|c| c[0] == country[2]).unwrap()[1];
    let country_value = place(Some(("iso_code", country[0])), country[1]);
    let time_zone = format!("{}/{}", continent, country[1]).replace(' ', "_");
    let location = [("accuracy_radius", Value::U16(20)), ("latitude", lat.into()), ("longitude", lon.into())];
    let mut record = vec![
        ("continent", place(Some(("code", country[2])), continent)),
        ("country", country_value.clone()),
        ("location", Value::map(location.into_iter().chain([("time_zone", time_zone.into())]))),
        ("registered_country", country_value),
    ];
    if let Some(city) = city {
        record.push(("city", place(None, city)));
        record.push(("postal", Value::map([("code", format!("{:05}", hash(city) % 100_000).into())])));
    }
    if let Some((iso, en)) = sub {
        record.push(("subdivisions", Value::array([place(Some(("iso_code", iso)), en)])));
    }
    Value::map(record)
}

/// A tiny GeoLite2-City-shaped database (languages as GeoLite2's, "en" names real):
///
/// | network                          | country | subdivision | city      |
/// |----------------------------------|---------|-------------|-----------|
/// | 81.2.69.0/24                     | GB      | ENG         | London    |
/// | 81.2.69.192/28 (inserted after)  | GB      | SCT         | Edinburgh |
/// | 2.125.160.0/20                   | GB      | WLS         | Cardiff   |
/// | 216.160.83.56/29                 | US      | WA          | Milton    |
/// | 175.16.199.0/24                  | CN      | (none)      | (none)    |
/// | 2001:db8:1::/48                  | DE      | BE          | Berlin    |
pub fn city_fixture() -> Vec<u8> {
    let (gb, us) = (["GB", "United Kingdom", "EU"], ["US", "United States", "NA"]);
    let rows = [
        ("81.2.69.0/24", gb, Some(("ENG", "England")), Some("London"), 51.5142, -0.0931),
        ("81.2.69.192/28", gb, Some(("SCT", "Scotland")), Some("Edinburgh"), 55.9533, -3.1883),
        ("2.125.160.0/20", gb, Some(("WLS", "Wales")), Some("Cardiff"), 51.4816, -3.1791),
        ("216.160.83.56/29", us, Some(("WA", "Washington")), Some("Milton"), 47.2513, -122.3149),
        ("175.16.199.0/24", ["CN", "China", "AS"], None, None, 34.7732, 113.722),
        ("2001:db8:1::/48", ["DE", "Germany", "EU"], Some(("BE", "Berlin")), Some("Berlin"), 52.52, 13.405),
    ];
    let mut w = Writer::new("GeoLite2-City");
    w.languages = LANGUAGES.map(String::from).into();
    for (net, country, sub, city, lat, lon) in rows {
        w.insert(net.parse().unwrap(), city_record(country, sub, city, lat, lon));
    }
    w.to_bytes()
}

/// A tiny GeoLite2-ASN-shaped database:
///
/// | network        | autonomous_system_number | autonomous_system_organization |
/// |----------------|--------------------------|--------------------------------|
/// | 52.94.0.0/16   | 16509                    | AMAZON-02                      |
/// | 2600:1f00::/24 | 16509                    | AMAZON-02                      |
/// | 73.0.0.0/8     | 7922 (residential)       | COMCAST-7922                   |
/// | 81.2.69.0/24   | 20712 (residential)      | Andrews & Arnold Ltd           |
pub fn asn_fixture() -> Vec<u8> {
    let mut w = Writer::new("GeoLite2-ASN");
    let rows = [
        ("52.94.0.0/16", 16509, "AMAZON-02"),
        ("2600:1f00::/24", 16509, "AMAZON-02"),
        ("73.0.0.0/8", 7922, "COMCAST-7922"),
        ("81.2.69.0/24", 20712, "Andrews & Arnold Ltd"),
    ];
    for (net, asn, org) in rows {
        let record = [("autonomous_system_number", Value::U32(asn)), ("autonomous_system_organization", org.into())];
        w.insert(net.parse().unwrap(), Value::map(record));
    }
    w.to_bytes()
}

/// A GeoLite2-City-shaped database of `networks` disjoint IPv4 networks (/16 to /24, mostly
/// long), deterministic from `seed`: 50 countries, 2 to 5 subdivisions each, 4 cities each, with
/// records of GeoLite2's size and sharing, so a lookup costs about what a real one does.
pub fn city_like(networks: usize, seed: u64) -> Vec<u8> {
    let mut w = Writer::new("GeoLite2-City");
    w.languages = LANGUAGES.map(String::from).into();
    let (records, nets) = city_like_entries(networks, seed);
    w.values = records;
    for (net, record) in nets {
        w.insert_value(net, record);
    }
    w.to_bytes()
}

/// A GeoLite2-ASN-shaped database over the same networks as [`city_like`] with the same
/// `networks` and `seed`: 2,000 autonomous systems, every tenth network in a hosting one
/// (AS16509, on the built-in datacenter list), for the click-path benchmark.
pub fn asn_like(networks: usize, seed: u64) -> Vec<u8> {
    let mut w = Writer::new("GeoLite2-ASN");
    let (_, nets) = city_like_entries(networks, seed);
    for (i, (net, _)) in nets.into_iter().enumerate() {
        let asn = if i % 10 == 0 { 16509 } else { 64_512 + hash(&i.to_string()) % 2000 };
        let record = [
            ("autonomous_system_number", Value::U32(asn)),
            ("autonomous_system_organization", format!("AS-{asn}").into()),
        ];
        w.insert(net, Value::map(record));
    }
    w.to_bytes()
}

/// The distinct records, and each network with the index of its record.
fn city_like_entries(networks: usize, seed: u64) -> (Vec<Value>, Vec<(IpNet, usize)>) {
    assert!(networks <= 1 << 23, "at most half the IPv4 /24s");
    let mut rng = Rng::new(seed);
    let countries: Vec<_> = fields(COUNTRIES).collect();
    let subdivisions: Vec<_> = countries.iter().map(|_| 2 + rng.below(4)).collect();
    let syllables = |mut h: u32, n: u32| {
        const S: [&str; 16] =
            ["ber", "lin", "mar", "sa", "to", "ka", "vil", "burg", "no", "ra", "mon", "te", "port", "ha", "ven", "dor"];
        let mut s = String::new();
        for _ in 0..n {
            s.push_str(S[(h % 16) as usize]);
            h /= 16;
        }
        s[..1].to_uppercase() + &s[1..]
    };
    let (mut index, mut records, mut taken, mut out) =
        (HashMap::new(), vec![], BTreeMap::new(), Vec::with_capacity(networks));
    while out.len() < networks {
        let mut len = 16 + rng.weighted(&[1, 1, 2, 2, 4, 4, 8, 16, 32]) as u8;
        // Disjoint, so each network's answer is its own; a taken draw retries narrower.
        let net = loop {
            let start = rng.next_u64() as u32 & !(u32::MAX >> len);
            let end = start | u32::MAX >> len;
            if taken.range(..=end).next_back().is_none_or(|(_, &e)| e < start) {
                taken.insert(start, end);
                break Ipv4Net::new(start.into(), len).unwrap();
            }
            len = (len + 1).min(24);
        };
        // Skewed as traffic is (a few big countries, a long tail), but every country shows up.
        let n = countries.len() as u64;
        let c = rng.below(n).min(rng.below(n)) as usize;
        let (s, city) = (rng.below(subdivisions[c]), rng.below(4));
        let record = *index.entry((c, s, city)).or_insert_with(|| {
            let sub = syllables(hash(&format!("{c}/{s}")), 3);
            let name = syllables(hash(&format!("{c}/{s}/{city}")), 2 + city as u32 % 2);
            let h = f64::from(hash(&name) % 1000) / 1000.0;
            let (lat, lon) = ((c as f64 * 7.3) % 120.0 - 50.0 + h, (c as f64 * 41.9) % 340.0 - 170.0 - h);
            let country = [countries[c][0], countries[c][1], countries[c][2]];
            records.push(city_record(country, Some((&sub[..2].to_uppercase(), &sub)), Some(&name), lat, lon));
            records.len() - 1
        });
        out.push((IpNet::V4(net), record));
    }
    (records, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use maxminddb::{geoip2, Reader};
    use std::collections::HashSet;
    use std::net::{IpAddr, Ipv6Addr};

    fn open(bytes: Vec<u8>) -> Reader<Vec<u8>> {
        let reader = Reader::from_source(bytes).unwrap();
        reader.verify().unwrap();
        reader
    }

    /// "country/subdivision/city", `-` for a missing part.
    fn city_answer(reader: &Reader<Vec<u8>>, ip: IpAddr) -> Option<String> {
        let c: geoip2::City = reader.lookup(ip).unwrap().decode().unwrap()?;
        let sub = c.subdivisions.first().and_then(|s| s.iso_code).unwrap_or("-");
        Some(format!("{}/{sub}/{}", c.country.iso_code.unwrap(), c.city.names.english.unwrap_or("-")))
    }

    #[test]
    fn city_fixture_answers_its_table() {
        let reader = open(city_fixture());
        let cases = [
            ("81.2.69.0", "GB/ENG/London"),
            ("81.2.69.191", "GB/ENG/London"),
            ("81.2.69.192", "GB/SCT/Edinburgh"),
            ("81.2.69.207", "GB/SCT/Edinburgh"),
            ("81.2.69.208", "GB/ENG/London"),
            ("81.2.69.255", "GB/ENG/London"),
            ("::81.2.69.1", "GB/ENG/London"),
            ("2.125.160.0", "GB/WLS/Cardiff"),
            ("2.125.175.255", "GB/WLS/Cardiff"),
            ("216.160.83.56", "US/WA/Milton"),
            ("216.160.83.63", "US/WA/Milton"),
            ("175.16.199.7", "CN/-/-"),
            ("2001:db8:1::", "DE/BE/Berlin"),
            ("2001:db8:1:ffff:ffff:ffff:ffff:ffff", "DE/BE/Berlin"),
        ];
        for (ip, want) in cases {
            assert_eq!(city_answer(&reader, ip.parse().unwrap()).as_deref(), Some(want), "{ip}");
        }
        let outside = [
            "81.2.68.255",
            "81.2.70.0",
            "2.125.176.0",
            "216.160.83.64",
            "1.1.1.1",
            "::",
            "2001:db8:2::",
            "::ffff:81.2.69.1",
        ];
        for ip in outside {
            assert!(!reader.lookup(ip.parse().unwrap()).unwrap().has_data(), "{ip}");
        }
        let found = reader.lookup("81.2.69.200".parse().unwrap()).unwrap();
        assert_eq!(found.network().unwrap().to_string(), "81.2.69.192/28");
        let c: geoip2::City = found.decode().unwrap().unwrap();
        assert_eq!(
            (c.location.latitude, c.continent.code, c.country.names.russian.map(str::len)),
            (Some(55.9533), Some("EU"), Some(28))
        );
        let lat: Option<f64> = reader
            .lookup("2001:db8:1::5".parse().unwrap())
            .unwrap()
            .decode_path(&maxminddb::path!["location", "latitude"])
            .unwrap();
        assert_eq!(lat, Some(52.52));
    }

    #[test]
    fn asn_fixture_answers_its_table() {
        let reader = open(asn_fixture());
        let asn = |ip: &str| {
            let a: Option<geoip2::Asn> = reader.lookup(ip.parse().unwrap()).unwrap().decode().unwrap();
            a.map(|a| (a.autonomous_system_number.unwrap(), a.autonomous_system_organization.unwrap().to_owned()))
        };
        assert_eq!(asn("52.94.255.255"), Some((16509, "AMAZON-02".into())));
        assert_eq!(asn("2600:1fff::1"), Some((16509, "AMAZON-02".into())));
        assert_eq!(asn("73.1.2.3"), Some((7922, "COMCAST-7922".into())));
        assert_eq!(asn("81.2.69.142"), Some((20712, "Andrews & Arnold Ltd".into())));
        assert_eq!((asn("52.95.0.0"), asn("2600:2000::"), asn("74.0.0.0")), (None, None, None));
    }

    #[test]
    fn metadata_reads_back() {
        let bytes = city_fixture();
        assert_eq!(bytes, city_fixture());
        let reader = open(bytes.clone());
        let m = reader.metadata();
        assert_eq!((m.ip_version, m.record_size, m.database_type.as_str()), (6, 28, "GeoLite2-City"));
        assert_eq!(
            (m.binary_format_major_version, m.binary_format_minor_version, m.build_epoch),
            (2, 0, 1_700_000_000)
        );
        assert_eq!(m.languages, LANGUAGES);
        assert_eq!(m.description["en"], "GeoLite2-City written by tally-testkit");
        let tree = m.node_count as usize * 7;
        assert!(m.node_count > 100 && bytes[tree..tree + 16] == [0; 16] && bytes[tree - 7..tree] != [0; 7]);
    }

    #[test]
    fn city_like_answers_every_network_and_shares_its_records() {
        let (records, nets) = city_like_entries(10_000, 1);
        let bytes = city_like(10_000, 1);
        let reader = open(bytes.clone());
        let text = |v: &Value, path: &[&str]| match path.iter().fold(v, |v, k| match v {
            Value::Map(m) => &m.iter().find(|(key, _)| key == k).unwrap().1,
            Value::Array(a) => &a[0],
            _ => unreachable!(),
        }) {
            Value::Str(s) => s.clone(),
            _ => unreachable!(),
        };
        let (mut offsets, mut countries) = (HashSet::new(), HashSet::new());
        for &(net, record) in &nets {
            let v = &records[record];
            for ip in [net.network(), net.broadcast()] {
                let found = reader.lookup(ip).unwrap();
                let c: geoip2::City = found.decode().unwrap().unwrap();
                let sub = c.subdivisions[0].iso_code.unwrap();
                assert_eq!(c.country.iso_code.unwrap(), text(v, &["country", "iso_code"]), "{ip}");
                assert_eq!(sub, text(v, &["subdivisions", "", "iso_code"]), "{ip}");
                assert_eq!(c.city.names.japanese.unwrap(), text(v, &["city", "names", "ja"]), "{ip}");
                assert_eq!(found.network().unwrap().to_string(), net.to_string());
                offsets.insert(found.offset().unwrap());
                countries.insert(c.country.iso_code.unwrap());
            }
        }
        assert!(countries.len() >= 45 && offsets.len() <= 50 * 5 * 4, "{} {}", countries.len(), offsets.len());
        let data = bytes.len() - reader.metadata().node_count as usize * 7;
        assert!(data < offsets.len() * 600, "{data} bytes of data for {} records", offsets.len());
    }

    #[test]
    fn far_records_and_every_value_type_read_back() {
        let mut w = Writer::new("Test");
        // Two 9 MiB strings near the root put the deeper records past 2^24, in the shared nibble.
        w.insert("2001::/16".parse().unwrap(), "a".repeat(9 << 20).into());
        w.insert("2002::/16".parse().unwrap(), "b".repeat(9 << 20).into());
        w.insert("2003::/16".parse().unwrap(), "c".repeat(100_000).into());
        let all = |n: u16| {
            let list = Value::array(["x".into(), Value::U32(0), "d".repeat(300).into()]);
            let scalars =
                [("u16", n.into()), ("u32", 70_000u32.into()), ("u64", (1u64 << 40).into()), ("yes", true.into())];
            Value::map(scalars.into_iter().chain([("no", false.into()), ("pi", 3.25.into()), ("list", list)]))
        };
        w.insert("1.2.3.0/25".parse().unwrap(), all(300));
        w.insert("1.2.4.128/25".parse().unwrap(), all(301));
        let reader = open(w.to_bytes());
        assert!(reader.lookup("2002::1".parse().unwrap()).unwrap().has_data());
        let long: String = reader.lookup("2003::1".parse().unwrap()).unwrap().decode().unwrap().unwrap();
        assert!(long.len() == 100_000 && long.bytes().all(|b| b == b'c'));
        for ip in ["1.2.3.200", "1.2.4.4"] {
            assert!(!reader.lookup(ip.parse().unwrap()).unwrap().has_data(), "{ip}");
        }
        for (ip, n) in [("1.2.3.4", 300u16), ("1.2.4.200", 301)] {
            let r = reader.lookup(ip.parse().unwrap()).unwrap();
            assert!(r.offset().unwrap() > 1 << 24);
            assert_eq!(r.decode_path(&maxminddb::path!["u16"]).unwrap(), Some(n));
            assert_eq!(r.decode_path(&maxminddb::path!["u32"]).unwrap(), Some(70_000u32));
            assert_eq!(r.decode_path(&maxminddb::path!["u64"]).unwrap(), Some(1u64 << 40));
            assert_eq!(r.decode_path(&maxminddb::path!["yes"]).unwrap(), Some(true));
            assert_eq!(r.decode_path(&maxminddb::path!["no"]).unwrap(), Some(false));
            assert_eq!(r.decode_path(&maxminddb::path!["pi"]).unwrap(), Some(3.25f64));
            assert_eq!(r.decode_path(&maxminddb::path!["list", 0]).unwrap(), Some("x".to_owned()));
            assert_eq!(r.decode_path(&maxminddb::path!["list", 1]).unwrap(), Some(0u32));
            assert_eq!(r.decode_path(&maxminddb::path!["list", 2]).unwrap(), Some("d".repeat(300)));
        }
    }

    #[test]
    fn random_inserts_answer_the_last_inserted_network_that_holds_the_address() {
        let mut rng = Rng::new(7);
        for _ in 0..40 {
            let draw = |rng: &mut Rng| -> (u128, u8) {
                if rng.per_mille(500) {
                    (0xA00_0000 | u128::from(rng.next_u64() as u32 & 0x3_FFFF), 96 + 8 + rng.below(25) as u8)
                } else {
                    let low = u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64());
                    let top = *rng.pick(&[0, 0x2001_0db8 << 96]);
                    (top | low >> *rng.pick(&[32u32, 64, 96]), rng.below(129) as u8)
                }
            };
            let (mut w, mut nets) = (Writer::new("Test"), vec![]);
            for i in 0..1 + rng.below(60) as u32 {
                let (addr, len) = draw(&mut rng);
                let net: IpNet = if len >= 96 && addr >> 32 == 0 {
                    Ipv4Net::new((addr as u32).into(), len - 96).unwrap().trunc().into()
                } else {
                    ipnet::Ipv6Net::new(Ipv6Addr::from(addr), len).unwrap().trunc().into()
                };
                let first = match net.network() {
                    IpAddr::V4(a) => u128::from(u32::from(a)),
                    IpAddr::V6(a) => u128::from(a),
                };
                nets.push((first, len));
                w.insert(net, Value::U32(i));
            }
            let reader = open(w.to_bytes());
            let mut probes: Vec<u128> = (0..50).map(|_| draw(&mut rng).0).collect();
            for &(first, len) in &nets {
                let last = first | u128::MAX.checked_shr(len.into()).unwrap_or(0);
                probes.extend([first, last, first.wrapping_sub(1), last.wrapping_add(1)]);
            }
            for addr in probes {
                let holds = |&(first, len): &(u128, u8)| len == 0 || (first ^ addr) >> (128 - len) == 0;
                let want = nets.iter().rposition(holds).map(|i| i as u32);
                let mut ips = vec![IpAddr::V6(addr.into())];
                if addr >> 32 == 0 {
                    ips.push(IpAddr::V4((addr as u32).into()));
                }
                for ip in ips {
                    assert_eq!(reader.lookup(ip).unwrap().decode::<u32>().unwrap(), want, "{ip} in {nets:x?}");
                }
            }
        }
    }
}
