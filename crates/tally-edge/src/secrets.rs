//! The secrets store: the values of the credentials a program names (advertisers' postback
//! tokens and HMAC keys), kept out of the program file because the log records that file
//! verbatim and every log copy goes to auditors.
//!
//! A name is looked up, first hit wins, in:
//! 1. the environment: `TALLY_SECRET_<NAME>`, the name in upper case with `-` and `.` as `_`;
//! 2. `[secrets] dir`: a file named after the secret (systemd `LoadCredential=`, Docker and
//!    Kubernetes secret mounts); by default `$CREDENTIALS_DIRECTORY` when systemd sets it;
//! 3. `[secrets] file`: a TOML file of `name = "value"` lines.
//!
//! The store is read whenever a program is (at start, on reload, on an admin edit), so a
//! rotated value takes effect on SIGHUP.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `[secrets]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsSection {
    pub file: String,
    pub dir: String,
}

/// Where the store looks, validated (paths resolved against the config file's directory).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretsConfig {
    pub file: Option<PathBuf>,
    pub dir: Option<PathBuf>,
}

/// The environment variable systemd points at a unit's credentials.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// Prefix of the environment variables that hold secrets.
pub const ENV_PREFIX: &str = "TALLY_SECRET_";

impl SecretsSection {
    pub fn validate(&self, base: &Path, credentials_dir: Option<PathBuf>) -> SecretsConfig {
        let path = |p: &str| (!p.is_empty()).then(|| base.join(p));
        SecretsConfig { file: path(&self.file), dir: path(&self.dir).or(credentials_dir) }
    }
}

/// The environment variable that holds secret `name`.
pub fn env_var(name: &str) -> String {
    let mut var = String::from(ENV_PREFIX);
    var.extend(name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }));
    var
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read secrets file {}: {reason}", .path.display())]
    Read { path: PathBuf, reason: String },
    #[error("secrets file {}: {reason}", .path.display())]
    Invalid { path: PathBuf, reason: String },
}

/// The store as read once: the file's table; the directory and environment are read per
/// lookup.
pub struct Secrets {
    config: SecretsConfig,
    file: BTreeMap<String, String>,
    env: fn(&str) -> Option<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: values never reach a log line.
        f.debug_struct("Secrets").field("config", &self.config).field("file", &self.file.keys()).finish()
    }
}

impl Secrets {
    /// Reads the store `config` describes, with this process's environment.
    pub fn load(config: &SecretsConfig) -> Result<Secrets, SecretsError> {
        Secrets::load_with_env(config, |var| std::env::var(var).ok())
    }

    /// Like [`Secrets::load`], reading variables through `env` (tests).
    pub fn load_with_env(config: &SecretsConfig, env: fn(&str) -> Option<String>) -> Result<Secrets, SecretsError> {
        let file = match &config.file {
            None => BTreeMap::new(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| SecretsError::Read { path: path.clone(), reason: e.to_string() })?;
                let table: toml::Table = toml::from_str(&text).map_err(|e| SecretsError::Invalid {
                    path: path.clone(),
                    // toml's message quotes the offending line, which may hold a secret.
                    reason: format!("not valid TOML (at byte {:?})", e.span().map(|s| s.start)),
                })?;
                let mut values = BTreeMap::new();
                for (name, v) in table {
                    let Some(v) = v.as_str() else {
                        return Err(SecretsError::Invalid {
                            path: path.clone(),
                            reason: format!("{name}: expected a string"),
                        });
                    };
                    values.insert(name, v.to_owned());
                }
                values
            }
        };
        Ok(Secrets { config: config.clone(), file, env })
    }

    /// The value of secret `name`, if any source holds it.
    pub fn get(&self, name: &str) -> Option<String> {
        if !tally_model::program::is_credential_name(name) {
            return None;
        }
        if let Some(v) = (self.env)(&env_var(name)) {
            return Some(v);
        }
        if let Some(dir) = &self.config.dir {
            if let Ok(v) = std::fs::read_to_string(dir.join(name)) {
                // A trailing newline from `echo > file` is not part of the secret.
                return Some(v.trim_end_matches(['\n', '\r']).to_owned());
            }
        }
        self.file.get(name).cloned()
    }

    /// Where a missing secret was looked for, for the error that names it.
    pub fn sources(&self) -> String {
        let mut s = format!("{ENV_PREFIX}<NAME>");
        if let Some(d) = &self.config.dir {
            s.push_str(&format!(", files in {}", d.display()));
        }
        if let Some(f) = &self.config.file {
            s.push_str(&format!(", {}", f.display()));
        }
        s
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_wins_over_the_directory_which_wins_over_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("secrets.toml");
        std::fs::write(&file, "a = \"from-file\"\nb = \"from-file\"\nc = \"from-file\"\n").unwrap();
        let dir = tmp.path().join("creds");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("b"), "from-dir\n").unwrap();
        std::fs::write(dir.join("c.x-1"), "dotted\n").unwrap();
        let config = SecretsConfig { file: Some(file), dir: Some(dir) };
        let s =
            Secrets::load_with_env(&config, |var| (var == "TALLY_SECRET_A").then(|| "from-env".to_owned())).unwrap();
        assert_eq!(s.get("a").as_deref(), Some("from-env"));
        assert_eq!(s.get("b").as_deref(), Some("from-dir"));
        assert_eq!(s.get("c").as_deref(), Some("from-file"));
        assert_eq!(s.get("c.x-1").as_deref(), Some("dotted"));
        assert_eq!(s.get("missing"), None);
        // A name that is not one cannot reach outside the directory.
        assert_eq!(s.get("../secrets.toml"), None);
        assert_eq!(env_var("acme-token.v2"), "TALLY_SECRET_ACME_TOKEN_V2");
    }

    #[test]
    fn a_bad_file_is_named_without_echoing_its_content() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("secrets.toml");
        let config = SecretsConfig { file: Some(file.clone()), dir: None };
        let err = Secrets::load(&config).unwrap_err().to_string();
        assert!(err.contains("cannot read secrets file") && err.contains("secrets.toml"), "{err}");
        std::fs::write(&file, "token = hunter2-not-quoted-secret\n").unwrap();
        let err = Secrets::load(&config).unwrap_err().to_string();
        assert!(err.contains("not valid TOML") && !err.contains("hunter2"), "{err}");
        std::fs::write(&file, "token = 5\n").unwrap();
        assert!(Secrets::load(&config).unwrap_err().to_string().contains("token: expected a string"));
        let none = Secrets::load(&SecretsConfig::default()).unwrap();
        assert_eq!(none.get("token"), None);
        assert!(format!("{none:?}").contains("Secrets"));
    }
}
