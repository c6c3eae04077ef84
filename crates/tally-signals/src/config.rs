//! The `[signals]` section of `tally.toml`: which databases and lists classify clicks.
//! Every key is a path (relative to the config file's directory); empty means "not used"
//! for the databases and "the built-in list alone" for the lists.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalsSection {
    /// A MaxMind-format Country or City database (`GeoLite2-City.mmdb`).
    pub geoip_database: String,
    /// A MaxMind-format ASN database (`GeoLite2-ASN.mmdb`).
    pub asn_database: String,
    /// Datacenter networks and ASNs, added to the built-in list.
    pub datacenters_file: String,
    /// Bot and unfurler user-agent substrings, added to the built-in list.
    pub bots_file: String,
    /// User-agent rules, tried before the built-in ones.
    pub user_agents_file: String,
}

/// `[signals]`, validated: the paths resolved against the config file's directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignalsConfig {
    pub geoip_database: Option<PathBuf>,
    pub asn_database: Option<PathBuf>,
    pub datacenters_file: Option<PathBuf>,
    pub bots_file: Option<PathBuf>,
    pub user_agents_file: Option<PathBuf>,
}

impl SignalsSection {
    /// Resolves the paths and checks that each names a file, so `tally config check` catches
    /// a wrong path. Whether a file parses is [`crate::Classifier::load`]'s business: it runs
    /// at start and again on every reload, when the files may have changed.
    pub fn validate(&self, base: &Path, problems: &mut Vec<String>) -> SignalsConfig {
        let mut path = |key: &str, s: &str| {
            let s = s.trim();
            if s.is_empty() {
                return None;
            }
            let p = base.join(s);
            if !p.is_file() {
                problems.push(format!("signals.{key}: no file at {}", p.display()));
            }
            Some(p)
        };
        SignalsConfig {
            geoip_database: path("geoip_database", &self.geoip_database),
            asn_database: path("asn_database", &self.asn_database),
            datacenters_file: path("datacenters_file", &self.datacenters_file),
            bots_file: path("bots_file", &self.bots_file),
            user_agents_file: path("user_agents_file", &self.user_agents_file),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_against_the_config_directory_and_empty_means_unused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("geo")).unwrap();
        std::fs::write(dir.path().join("geo/City.mmdb"), b"").unwrap();
        let asn = dir.path().join("ASN.mmdb");
        std::fs::write(&asn, b"").unwrap();
        let section = SignalsSection {
            geoip_database: "geo/City.mmdb".into(),
            asn_database: asn.display().to_string(),
            datacenters_file: " ".into(),
            ..SignalsSection::default()
        };
        let mut problems = Vec::new();
        let c = section.validate(dir.path(), &mut problems);
        assert_eq!(problems, Vec::<String>::new());
        assert_eq!(c.geoip_database.unwrap(), dir.path().join("geo/City.mmdb"));
        assert_eq!(c.asn_database.unwrap(), asn);
        assert_eq!(c.datacenters_file, None);
        assert_eq!(c.bots_file, None);
    }

    #[test]
    fn a_path_that_names_no_file_is_a_problem_naming_its_key() {
        let section = SignalsSection { bots_file: "nope.txt".into(), ..SignalsSection::default() };
        let mut problems = Vec::new();
        section.validate(Path::new("/nonexistent"), &mut problems);
        assert_eq!(problems, vec!["signals.bots_file: no file at /nonexistent/nope.txt".to_string()]);
    }
}
