//! The whole deployment config (`tally.toml`), composed from the sections each library owns:
//!
//! | section | owner | validated into |
//! |---|---|---|
//! | `[server]`, `[program]`, `[privacy]`, `[postback]`, `[admin]`, `[secrets]` | `tally-edge` | [`tally_edge::Config`] |
//! | `[signals]` | `tally-signals` | [`tally_signals::SignalsConfig`], in [`tally_edge::Config`] |
//! | `[log]` | `tally-log` | the data directory and [`LogOptions`] |
//! | `[attribution]` | `tally-attribution` | [`AttributionConfig`] |
//! | `[bus]` | `tally-bus` | [`BusConfig`] (a cluster; off without `urls`) |
//! | `[logging]` | this crate ([`crate::telemetry`]) | [`LoggingConfig`] |
//!
//! Parse-all-then-fail: [`Config::load`] reports every bad value of every section at once,
//! each named by its key. Environment variables override keys, one scheme for all of them:
//! `TALLY_<SECTION>_<KEY>` (upper case), e.g. `TALLY_LOG_SYNC=batch` or
//! `TALLY_SERVER_MAX_CONNECTIONS=20000`; lists are comma-separated
//! (`TALLY_PRIVACY_TRUSTED_PROXIES=10.0.0.0/8,192.168.0.1`). A variable that names a section
//! but no key of it is an error, so a typo is not silently ignored. `config/tally.toml` is
//! the commented template; a test keeps it equal to the defaults.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tally_attribution::{AttributionConfig, AttributionSection};
use tally_bus::{BusConfig, BusSection};
use tally_delivery::config::{DeliveriesConfig, DeliveriesSection};
use tally_edge::config::{AdminSection, PostbackSection, PrivacySection, ProgramSection, Sections, ServerSection};
use tally_edge::secrets::SecretsSection;
use tally_log::{LogOptions, LogSection};
use tally_signals::SignalsSection;

use crate::telemetry::{LoggingConfig, LoggingSection};

/// Prefix of every environment override.
pub const ENV_PREFIX: &str = "TALLY_";

/// Variables the `tally` binary reads as flags, not as config keys, although their names
/// look like `TALLY_<SECTION>_<KEY>`.
const NOT_OVERRIDES: &[&str] = &["TALLY_ATTRIBUTION_METRICS"];

/// The file as written: one field per section, each section's type owned by its crate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    server: ServerSection,
    log: LogSection,
    program: ProgramSection,
    privacy: PrivacySection,
    postback: PostbackSection,
    logging: LoggingSection,
    attribution: AttributionSection,
    admin: AdminSection,
    secrets: SecretsSection,
    bus: BusSection,
    deliveries: DeliveriesSection,
    signals: SignalsSection,
}

/// The validated deployment config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The edge's settings, with the data directory (`[log] data_dir`, resolved).
    pub edge: tally_edge::Config,
    pub log: LogOptions,
    pub attribution: AttributionConfig,
    pub logging: LoggingConfig,
    /// The cluster's bus (`[bus]` with `urls`); `None`: a single node.
    pub bus: Option<BusConfig>,
    /// `[deliveries]`: outgoing postbacks and webhooks.
    pub deliveries: DeliveriesConfig,
    /// `[bus]` as written, and the config file's directory, for `--bus` to fill in `urls`
    /// after loading.
    bus_section: BusSection,
    base: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config is not valid TOML: {0}")]
    Syntax(String),
    #[error("config has {} problem(s):\n  {}", .0.len(), .0.join("\n  "))]
    Invalid(Vec<String>),
}

impl Config {
    /// Reads and validates a config file, with this process's `TALLY_*` overrides. Relative
    /// paths in it are relative to its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml_with_env(&text, base, std::env::vars())
    }

    /// The defaults, as if from an empty file in `base`, without overrides.
    pub fn defaults(base: &Path) -> Config {
        // An empty file is valid by construction; the test `defaults_are_valid` proves it.
        Config::from_toml("", base).unwrap_or_else(|e| panic!("built-in defaults are invalid: {e}"))
    }

    /// Parses and validates `text` alone (no environment overrides).
    pub fn from_toml(text: &str, base: &Path) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(text, base, std::iter::empty())
    }

    /// Parses `text`, applies the `TALLY_<SECTION>_<KEY>` overrides among `vars`, and
    /// validates the result.
    pub fn from_toml_with_env(
        text: &str,
        base: &Path,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| syntax(&e))?;
        let mut problems = Vec::new();
        let overridden = apply_env(&mut table, vars, &mut problems);
        let raw = RawConfig::deserialize(table).map_err(|e| syntax(&e))?;
        let config = raw.validate(base, &mut problems);
        if !problems.is_empty() {
            for p in &mut problems {
                // Name the variable a bad value came from: the file does not hold it.
                if let Some((key, var)) = overridden.iter().find(|(key, _)| p.starts_with(&format!("{key}:"))) {
                    *p = format!("{key} (from {var}){}", &p[key.len()..]);
                }
            }
            return Err(ConfigError::Invalid(problems));
        }
        config.ok_or_else(|| ConfigError::Invalid(vec!["invalid config".into()]))
    }

    /// The data directory: the log, the attribution state and its snapshots, the link overlay.
    pub fn data_dir(&self) -> &Path {
        &self.edge.data_dir
    }

    /// Joins the cluster whose NATS servers are `urls` (`--bus`), with the rest of `[bus]`
    /// as configured.
    pub fn set_bus_urls(&mut self, urls: Vec<String>) -> Result<(), ConfigError> {
        let section = BusSection { urls, ..self.bus_section.clone() };
        let mut problems = Vec::new();
        let bus = section.validate(&self.base, &mut problems);
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        self.bus = bus;
        self.bus_section = section;
        Ok(())
    }

    /// The bus with its credential resolved from the secrets store (`None`: no bus).
    pub fn bus_with_credential(&self) -> Result<Option<BusConfig>, ConfigError> {
        let Some(bus) = self.bus.clone() else { return Ok(None) };
        let Some((key, name)) = bus.secret_name().map(|(k, n)| (k, n.to_owned())) else { return Ok(Some(bus)) };
        let secrets = tally_edge::secrets::Secrets::load(&self.edge.secrets)
            .map_err(|e| ConfigError::Invalid(vec![format!("{key}: {e}")]))?;
        match secrets.get(&name) {
            Some(value) => Ok(Some(bus.with_credential(value))),
            None => Err(ConfigError::Invalid(vec![format!(
                "{key}: secret \"{name}\" is not in the secrets store ({})",
                secrets.sources()
            )])),
        }
    }

    /// Points every part at another data directory (`--data-dir`).
    pub fn set_data_dir(&mut self, dir: PathBuf) {
        self.edge.data_dir = dir;
    }
}

impl RawConfig {
    fn validate(&self, base: &Path, problems: &mut Vec<String>) -> Option<Config> {
        let (data_dir, log) = self.log.validate(base, problems);
        let attribution = self.attribution.validate(problems);
        let logging = self.logging.validate(problems);
        let bus = self.bus.validate(base, problems);
        let deliveries = self.deliveries.validate(problems);
        let sections = Sections {
            server: &self.server,
            program: &self.program,
            privacy: &self.privacy,
            postback: &self.postback,
            admin: &self.admin,
            secrets: &self.secrets,
            signals: &self.signals,
        };
        let edge = tally_edge::Config::validate(sections, base, data_dir, problems)?;
        Some(Config {
            edge,
            log,
            attribution,
            logging,
            bus,
            deliveries,
            bus_section: self.bus.clone(),
            base: base.to_owned(),
        })
    }
}

fn syntax(e: &impl std::fmt::Display) -> ConfigError {
    ConfigError::Syntax(e.to_string().trim().to_owned())
}

/// Writes each `TALLY_<SECTION>_<KEY>` among `vars` into `table`, typed like the key's
/// default. Returns the `(section.key, variable)` pairs it applied.
fn apply_env(
    table: &mut toml::Table,
    vars: impl IntoIterator<Item = (String, String)>,
    problems: &mut Vec<String>,
) -> Vec<(String, String)> {
    let Ok(schema) = toml::Table::try_from(RawConfig::default()) else { return Vec::new() };
    let mut vars: Vec<(String, String)> = vars.into_iter().filter(|(name, _)| name.starts_with(ENV_PREFIX)).collect();
    // The environment's order is arbitrary; problems are reported in a stable one.
    vars.sort();
    let mut applied = Vec::new();
    for (name, value) in vars {
        if NOT_OVERRIDES.contains(&name.as_str()) {
            continue;
        }
        let lower = name[ENV_PREFIX.len()..].to_ascii_lowercase();
        let Some((section, defaults)) = schema.iter().find_map(|(section, keys)| {
            let keys = keys.as_table()?;
            let rest = lower.strip_prefix(section.as_str())?.strip_prefix('_')?;
            Some((section.as_str(), (rest, keys)))
        }) else {
            continue;
        };
        let (key, keys) = defaults;
        let Some(default) = keys.get(key) else {
            let known: Vec<String> = keys.keys().map(|k| format!("{ENV_PREFIX}{section}_{k}").to_uppercase()).collect();
            problems.push(format!("{name}: [{section}] has no key \"{key}\" (known: {})", known.join(", ")));
            continue;
        };
        let parsed = match default {
            toml::Value::Boolean(_) => match value.as_str() {
                "true" => Ok(toml::Value::Boolean(true)),
                "false" => Ok(toml::Value::Boolean(false)),
                _ => Err("true or false"),
            },
            toml::Value::Integer(_) => {
                value.trim().parse::<i64>().map(toml::Value::Integer).map_err(|_| "a whole number")
            }
            toml::Value::Array(_) => Ok(toml::Value::Array(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_owned()))
                    .collect(),
            )),
            _ => Ok(toml::Value::String(value.clone())),
        };
        match parsed {
            Ok(v) => {
                let entry = table.entry(section).or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let Some(t) = entry.as_table_mut() {
                    t.insert(key.to_owned(), v);
                }
                applied.push((format!("{section}.{key}"), name));
            }
            Err(expected) => problems.push(format!("{name}: expected {expected}, got \"{value}\"")),
        }
    }
    applied
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::telemetry::LogFormat;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::defaults(Path::new("/etc/tally"));
        assert_eq!(c.edge.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir(), Path::new("/etc/tally/data"));
        assert_eq!(c.edge.program_path, Path::new("/etc/tally/program.toml"));
        assert!(c.attribution.in_process);
        assert_eq!(c.logging.format, LogFormat::Pretty);
        assert_eq!(c.bus, None, "a single node unless [bus] names servers");
    }

    #[test]
    fn the_bus_credential_comes_from_the_secrets_store_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secrets.toml"), "nats-password = \"pw-0123456789\"\n").unwrap();
        let text = "[secrets]\nfile = \"secrets.toml\"\n[bus]\nurls = [\"nats://127.0.0.1:4222\"]\nuser = \"edge\"\npassword_secret = \"nats-password\"\ntls_ca_file = \"ca.pem\"\n";
        let c = Config::from_toml(text, dir.path()).unwrap();
        let bus = c.bus_with_credential().unwrap().unwrap();
        assert_eq!(bus.credential, Some(tally_bus::Credential("pw-0123456789".into())));
        assert_eq!(bus.tls.ca, Some(dir.path().join("ca.pem")), "relative to the config file");
        let missing = Config::from_toml(&text.replace("= \"nats-password\"", "= \"other\""), dir.path()).unwrap();
        let err = missing.bus_with_credential().unwrap_err().to_string();
        assert!(err.contains("bus.password_secret: secret \"other\" is not in the secrets store"), "{err}");
        assert_eq!(Config::defaults(dir.path()).bus_with_credential().unwrap(), None);
    }

    #[test]
    fn bus_flag_fills_in_the_urls_and_refuses_bad_ones() {
        let mut c = Config::from_toml("[bus]\nreplicas = 1\n", Path::new(".")).unwrap();
        assert_eq!(c.bus, None);
        c.set_bus_urls(vec!["nats://127.0.0.1:4222".into()]).unwrap();
        assert_eq!(c.bus.as_ref().map(|b| b.replicas), Some(1), "the rest of [bus] is kept");
        let err = c.set_bus_urls(vec!["127.0.0.1:4222".into()]).unwrap_err();
        assert!(err.to_string().contains("bus.urls"), "{err}");
    }

    /// The commented template in `config/` must parse, have no unknown keys, and say exactly
    /// what the defaults are, so the file and the code cannot drift apart.
    #[test]
    fn template_parses_and_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/tally.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let from_file: RawConfig = toml::from_str(&text).unwrap();
        assert_eq!(from_file, RawConfig::default());
        Config::from_toml(&text, Path::new(".")).unwrap();
    }

    #[test]
    fn every_section_reports_its_bad_values_at_once() {
        let bad = r#"
[server]
listen = "nowhere"
[log]
sync = "sometimes"
max_batch = 0
[privacy]
ip_mode = "blur"
retention_days = 99999
[logging]
format = "xml"
[attribution]
commit_every = 0
[admin]
token = "short"
[bus]
urls = ["nats://user:password@nats:4222"]
"#;
        let Err(ConfigError::Invalid(problems)) = Config::from_toml(bad, Path::new(".")) else { panic!() };
        let all = problems.join("\n");
        for key in [
            "server.listen",
            "log.sync",
            "log.max_batch",
            "privacy.ip_mode",
            "privacy.retention_days",
            "logging.format",
            "attribution.commit_every",
            "admin.token",
            "bus.urls",
        ] {
            assert!(all.contains(key), "{key} not reported in:\n{all}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_syntax_are_errors() {
        let err = Config::from_toml("[server]\nlisten_on = \"x\"\n", Path::new(".")).unwrap_err();
        assert!(err.to_string().contains("listen_on"), "{err}");
        let err = Config::from_toml("[nosuch]\n", Path::new(".")).unwrap_err();
        assert!(err.to_string().contains("nosuch"), "{err}");
        assert!(matches!(Config::from_toml("[server", Path::new(".")), Err(ConfigError::Syntax(_))));
    }

    #[test]
    fn environment_overrides_every_kind_of_key() {
        let env = vars(&[
            ("TALLY_LOG_SYNC", "batch"),
            ("TALLY_SERVER_MAX_CONNECTIONS", "20000"),
            ("TALLY_PRIVACY_COOKIES", "false"),
            ("TALLY_PRIVACY_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.0.1"),
            ("TALLY_ADMIN_LISTEN", ""),
            ("TALLY_ATTRIBUTION_IN_PROCESS", "false"),
            ("TALLY_LOGGING_LEVEL", "debug"),
            ("TALLY_BUS_URLS", "nats://10.0.0.1:4222,nats://10.0.0.2:4222"),
            // Not overrides: flags of the binary, and names outside any section.
            ("TALLY_ATTRIBUTION_METRICS", "127.0.0.1:0"),
            ("TALLY_DATA_DIR", "/elsewhere"),
            ("TALLY_LOG", "warn"),
            ("HOME", "/root"),
        ]);
        let c = Config::from_toml_with_env("[log]\nsync = \"none\"\n", Path::new("/etc/tally"), env).unwrap();
        assert_eq!(c.log.sync, tally_log::SyncPolicy::Batch, "the environment wins over the file");
        assert_eq!(c.edge.max_connections, 20_000);
        assert!(!c.edge.cookies);
        let forwarded = [b"203.0.113.9".as_slice()];
        let client = c.edge.ip.client_ip_from("10.1.2.3".parse().unwrap(), forwarded.into_iter());
        assert_eq!(client.to_string(), "203.0.113.9", "10.0.0.0/8 is a trusted proxy");
        assert_eq!(c.edge.admin.listen, None);
        assert!(!c.attribution.in_process);
        assert_eq!(c.logging.level, "debug");
        assert_eq!(c.bus.as_ref().map(|b| b.urls.len()), Some(2));
        assert_eq!(c.data_dir(), Path::new("/etc/tally/data"));
    }

    #[test]
    fn bad_overrides_name_their_variable() {
        let env = vars(&[
            ("TALLY_LOG_SYNCH", "batch"),
            ("TALLY_SERVER_MAX_CONNECTIONS", "many"),
            ("TALLY_PRIVACY_COOKIES", "yes"),
            ("TALLY_LOG_MAX_BATCH", "0"),
        ]);
        let Err(ConfigError::Invalid(problems)) = Config::from_toml_with_env("", Path::new("."), env) else { panic!() };
        let all = problems.join("\n");
        assert!(all.contains("TALLY_LOG_SYNCH: [log] has no key \"synch\""), "{all}");
        assert!(all.contains(", TALLY_LOG_SYNC)"), "the known keys are listed: {all}");
        assert!(all.contains("TALLY_SERVER_MAX_CONNECTIONS: expected a whole number, got \"many\""), "{all}");
        assert!(all.contains("TALLY_PRIVACY_COOKIES: expected true or false, got \"yes\""), "{all}");
        assert!(all.contains("log.max_batch (from TALLY_LOG_MAX_BATCH): must be 1-65536, got 0"), "{all}");
    }
}
