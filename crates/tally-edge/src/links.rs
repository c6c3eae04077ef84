//! The legacy link overlay: `{data_dir}/links.toml`, where builds before program edits kept
//! the links added through the admin API, `[[links]]` tables replacing or adding to the
//! program file's. It is still read, at start and on every reload, and composed into the
//! base program, so such a deployment keeps its links; nothing writes it any more (API
//! changes are `ProgramEdit` events in the log, decision 0046). [`Overlay::save`] remains for
//! tests that build such a data directory.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The overlay file's name inside the data directory.
pub const OVERLAY_FILE: &str = "links.toml";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlayLink {
    pub code: String,
    pub offer: String,
    pub affiliate: String,
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverlayFile {
    #[serde(default)]
    links: Vec<OverlayLink>,
}

/// The overlay: links by code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overlay {
    pub links: BTreeMap<String, OverlayLink>,
}

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} is not a valid link overlay: {reason}")]
    Invalid { path: String, reason: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: String, reason: String },
    #[error("program file is not valid TOML: {0}")]
    Program(String),
}

impl Overlay {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(OVERLAY_FILE)
    }

    /// Reads the overlay; a missing file is an empty overlay.
    pub fn load(path: &Path) -> Result<Overlay, OverlayError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Overlay::default()),
            Err(e) => return Err(OverlayError::Read { path: path.display().to_string(), reason: e.to_string() }),
        };
        let invalid = |reason: String| OverlayError::Invalid { path: path.display().to_string(), reason };
        let file: OverlayFile = toml::from_str(&text).map_err(|e| invalid(e.to_string().trim().to_owned()))?;
        let mut links = BTreeMap::new();
        for l in file.links {
            let code = l.code.clone();
            if links.insert(code.clone(), l).is_some() {
                return Err(invalid(format!("link \"{code}\" appears twice")));
            }
        }
        Ok(Overlay { links })
    }

    /// Writes the overlay atomically: a crash leaves the old file or the new one.
    pub fn save(&self, path: &Path) -> Result<(), OverlayError> {
        let err = |e: std::io::Error| OverlayError::Write { path: path.display().to_string(), reason: e.to_string() };
        let file = OverlayFile { links: self.links.values().cloned().collect() };
        let body = toml::to_string(&file).map_err(|e| err(std::io::Error::other(e.to_string())))?;
        let text = format!(
            "# Links managed through Tally's admin API, applied on top of the program file.\n\
             # Written by tally serve; edit with the API (or stop the server first).\n\n{body}"
        );
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let tmp = dir.join(format!(".{OVERLAY_FILE}.tmp"));
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(err)?;
        // The rename is durable only once the directory entry is.
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        Ok(())
    }

    /// The program source in force: `base` (the program file's text) with the overlay's
    /// links replacing or adding to its `[[links]]`. An empty overlay returns `base`
    /// unchanged, so a deployment that never used the API keeps its file's digest.
    pub fn compose(&self, base: &str) -> Result<String, OverlayError> {
        if self.links.is_empty() {
            return Ok(base.to_owned());
        }
        let mut table: toml::Table = toml::from_str(base).map_err(|e| OverlayError::Program(e.to_string()))?;
        let mut links: Vec<toml::Value> = match table.remove("links") {
            Some(toml::Value::Array(a)) => a,
            Some(_) => return Err(OverlayError::Program("links must be an array of tables".into())),
            None => Vec::new(),
        };
        links.retain(|l| l.get("code").and_then(toml::Value::as_str).is_none_or(|c| !self.links.contains_key(c)));
        for l in self.links.values() {
            let mut t = toml::Table::new();
            t.insert("code".into(), l.code.clone().into());
            t.insert("offer".into(), l.offer.clone().into());
            t.insert("affiliate".into(), l.affiliate.clone().into());
            t.insert("active".into(), l.active.into());
            links.push(toml::Value::Table(t));
        }
        table.insert("links".into(), toml::Value::Array(links));
        toml::to_string(&table).map_err(|e| OverlayError::Program(e.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn example() -> String {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/program.toml")).unwrap()
    }

    fn link(code: &str, active: bool) -> OverlayLink {
        OverlayLink { code: code.into(), offer: "shoes".into(), affiliate: "aff2".into(), active }
    }

    #[test]
    fn an_empty_overlay_keeps_the_file_byte_for_byte() {
        assert_eq!(Overlay::default().compose(&example()).unwrap(), example());
    }

    #[test]
    fn overlay_links_add_to_and_replace_the_files_links() {
        let mut o = Overlay::default();
        o.links.insert("spring".into(), link("spring", true));
        o.links.insert("demo".into(), link("demo", false));
        let p = tally_model::Program::from_toml(&o.compose(&example()).unwrap()).unwrap();
        assert_eq!(p.link("spring").unwrap().affiliate, "aff2");
        assert!(p.link("demo").is_none(), "the overlay disabled the file's link");
        assert_eq!(p.links().filter(|l| l.code == "demo").count(), 1);
    }

    #[test]
    fn save_then_load_round_trips_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = Overlay::path(dir.path());
        assert_eq!(Overlay::load(&path).unwrap(), Overlay::default());
        let mut o = Overlay::default();
        o.links.insert("spring".into(), link("spring", true));
        o.save(&path).unwrap();
        assert_eq!(Overlay::load(&path).unwrap(), o);
    }

    #[test]
    fn a_broken_overlay_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = Overlay::path(dir.path());
        std::fs::write(&path, "[[links]]\ncode = \"a\"\n").unwrap();
        let e = Overlay::load(&path).unwrap_err().to_string();
        assert!(e.contains("links.toml") && e.contains("offer"), "{e}");
        std::fs::write(&path, "[[links]]\ncode=\"a\"\noffer=\"o\"\naffiliate=\"x\"\n[[links]]\ncode=\"a\"\noffer=\"o\"\naffiliate=\"x\"\n").unwrap();
        assert!(Overlay::load(&path).unwrap_err().to_string().contains("twice"));
    }
}
