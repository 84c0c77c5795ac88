//! Relay configuration (TOML). See `docs/configuration.md` and `mxpace init`.

use ipnet::IpNet;
use mxpace_pacing::retry::{RetryPolicy, STREAM_MAX_AGE_RANGE};
use mxpace_pacing::{ConfigError as PacingConfigError, PacingConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The commented sample configuration `mxpace init` prints.
pub const SAMPLE: &str = include_str!("../sample.toml");

/// A configuration error, with the field it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{0}")]
    Invalid(String),
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub relay: RelaySection,
    #[serde(default)]
    pub source: Vec<SourceConfig>,
    #[serde(default)]
    pub route: BTreeMap<String, RouteConfig>,
    #[serde(default)]
    pub retry: RetrySection,
    #[serde(default)]
    pub tls: Option<TlsSection>,
    #[serde(default)]
    pub user: Vec<UserConfig>,
    #[serde(default)]
    pub dns: DnsSection,
    #[serde(default)]
    pub stream: BTreeMap<String, StreamConfig>,
    #[serde(default)]
    pub pacing: PacingSection,
}

/// `[pacing]`: the pacing controller per (egress IP × provider). Its settings are
/// the embedded `crates/pacing/data/pacing.toml`, overlaid with `file` (if given),
/// overlaid with any `[pacing.default]` / `[pacing.provider.NAME]` keys written here.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PacingSection {
    /// `false` turns pacing off (every message goes as soon as it is due).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// A pacing TOML file (same keys as pacing.toml) overriding the defaults.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Inline pacing keys (`known_providers`, `[pacing.default]`, `[pacing.provider.NAME]`).
    #[serde(flatten)]
    pub inline: toml::Table,
}

impl PacingSection {
    /// Whether the controller paces this relay (the default) or lets everything through.
    pub fn enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }

    /// The resolved pacing settings: defaults ← `file` ← inline keys. Errors name
    /// the key (`pacing.provider.microsoft.rate_floor: is above rate_ceiling`).
    pub fn resolve(&self) -> Result<PacingConfig, ConfigError> {
        let mut merged = toml::Table::new();
        if let Some(file) = &self.file {
            let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
                path: file.clone(),
                source,
            })?;
            let table: toml::Table = toml::from_str(&text).map_err(|e| {
                ConfigError::Invalid(format!("pacing.file {}: {e}", file.display()))
            })?;
            merge_tables(&mut merged, table);
        }
        merge_tables(&mut merged, self.inline.clone());
        let text =
            toml::to_string(&merged).map_err(|e| ConfigError::Invalid(format!("pacing: {e}")))?;
        PacingConfig::from_toml(&text).map_err(|e| match e {
            PacingConfigError::Invalid { key, problem } => {
                ConfigError::Invalid(format!("pacing.{key}: {problem}"))
            }
            PacingConfigError::Parse(p) => ConfigError::Invalid(format!("[pacing]: {p}")),
        })
    }
}

/// Overlay `over` on `base`, table by table (a key in `over` wins).
fn merge_tables(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_tables(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// `[relay]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySection {
    /// SMTP listen addresses.
    pub listen: Vec<SocketAddr>,
    /// Networks allowed to relay without authentication.
    #[serde(default)]
    pub allow_clients: Vec<IpNet>,
    /// Spool directory (queue state and bodies).
    pub spool: PathBuf,
    /// Events JSONL file (appended).
    pub events: PathBuf,
    /// HTTP injection + admin endpoint (loopback recommended).
    #[serde(default)]
    pub http: Option<SocketAddr>,
    /// Name used in the greeting and Received headers.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// Largest message accepted (bytes), advertised in SIZE.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    /// Most bytes of message data held in memory at once, all sessions together; a
    /// message that does not fit gets a temporary failure (452 4.3.1 / HTTP 503).
    #[serde(default = "default_max_data_memory")]
    pub max_data_memory: usize,
    /// Most concurrent inbound SMTP connections; more are answered 421.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// Idle timeout for an inbound SMTP client.
    #[serde(default = "default_client_timeout", with = "duration_str")]
    pub client_timeout: Duration,
    /// Most concurrent outbound connections per destination domain.
    #[serde(default = "default_connections_per_domain")]
    pub connections_per_domain: usize,
    /// Most concurrent outbound connections overall.
    #[serde(default = "default_max_outbound")]
    pub max_outbound: usize,
    /// Messages sent on one outbound connection before it is closed.
    #[serde(default = "default_messages_per_connection")]
    pub messages_per_connection: usize,
    /// Timeout for each outbound SMTP step.
    #[serde(default = "default_smtp_timeout", with = "duration_str")]
    pub smtp_timeout: Duration,
    /// Stream given to messages that name none.
    #[serde(default = "default_stream")]
    pub default_stream: String,
    /// Who receives DSNs' From (the DSN's author); `MAILER-DAEMON@hostname` by default.
    #[serde(default)]
    pub postmaster: Option<String>,
    /// How long an HTTP idempotency key is remembered, counted from the
    /// message's reception (default 72h, the default max age).
    #[serde(default = "default_idempotency_retention", with = "duration_str")]
    pub idempotency_retention: Duration,
    /// Send one delay report (a DSN with `Action: delayed`) once a message has waited
    /// this long with recipients still deferred; "0s" turns delay reports off.
    #[serde(default = "default_delay_warning", with = "duration_str")]
    pub delay_warning: Duration,
    /// Also report delays for recipients given without a NOTIFY parameter (by default
    /// only recipients whose NOTIFY asks for DELAY get one, as RFC 3461 §4.1 lets the
    /// sender choose; a bulk sender's bounce address wants no delay reports).
    #[serde(default)]
    pub delay_warning_unrequested: bool,
}

fn default_delay_warning() -> Duration {
    // Postfix's delay_warning_time is 4h when enabled; Microsoft 365 deferrals
    // typically clear within hours.
    Duration::from_secs(4 * 3600)
}

fn default_idempotency_retention() -> Duration {
    Duration::from_secs(72 * 3600)
}

fn default_hostname() -> String {
    "mxpace.localdomain".into()
}
fn default_max_message_size() -> usize {
    // 35 MB: Microsoft 365's default receive limit is 36 MB (docs: "Exchange Online limits").
    35 * 1024 * 1024
}
fn default_max_data_memory() -> usize {
    // 1 GiB: about 29 messages at the 35 MB maximum, thousands of ordinary ones.
    1 << 30
}
fn default_max_clients() -> usize {
    500
}
fn default_client_timeout() -> Duration {
    // RFC 5321 §4.5.3.2.7 asks servers to wait at least 5 minutes for the next command.
    Duration::from_secs(300)
}
fn default_connections_per_domain() -> usize {
    10
}
fn default_max_outbound() -> usize {
    200
}
fn default_messages_per_connection() -> usize {
    100
}
fn default_smtp_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_stream() -> String {
    "transactional".into()
}

/// `[[source]]`: one egress IP with its EHLO name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub ip: IpAddr,
    pub ehlo: String,
}

/// `[route."domain"]`: deliver this domain to fixed hosts instead of its MX.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `host:port` in preference order (first is tried first).
    pub hosts: Vec<String>,
}

/// `[retry]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    #[serde(default, with = "duration_list")]
    pub schedule: Option<Vec<Duration>>,
    #[serde(default, with = "duration_opt")]
    pub max_age: Option<Duration>,
    #[serde(default)]
    pub jitter: Option<f64>,
}

/// `[tls]`: certificate for STARTTLS on ingress.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[[user]]`: an authenticated submitter (AUTH PLAIN/LOGIN after STARTTLS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// The password in clear (prefer `password_hash`).
    #[serde(default)]
    pub password: Option<String>,
    /// An Argon2 PHC string (`$argon2id$v=19$m=…`), as `mxpace hash-password` prints it.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Stream for this user's mail unless the message names one.
    #[serde(default)]
    pub stream: Option<String>,
}

/// `[dns]`: the resolver used for MX lookups.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    /// Name servers (`ip:port`); the system configuration when empty.
    #[serde(default)]
    pub servers: Vec<SocketAddr>,
    /// Port used when delivering to MX hosts (25; tests use a high port).
    #[serde(default)]
    pub mx_port: Option<u16>,
}

/// `[stream."name"]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    #[serde(default, with = "duration_opt")]
    pub max_age: Option<Duration>,
}

impl Config {
    /// Read and validate a config file. Relative paths are resolved against the
    /// current directory (as an operator expects from `./spool`).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// Parse and validate config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            source: Box::new(source),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.relay.max_data_memory < self.relay.max_message_size {
            return Err(ConfigError::Invalid(format!(
                "relay.max_data_memory: must be at least max_message_size ({}), or a message of that size could never be accepted",
                self.relay.max_message_size
            )));
        }
        if self.relay.listen.is_empty() && self.relay.http.is_none() {
            return Err(ConfigError::Invalid(
                "relay.listen: at least one address is needed".into(),
            ));
        }
        if let Some(s) = &self.retry.schedule
            && s.is_empty()
        {
            return Err(ConfigError::Invalid(
                "retry.schedule: give at least one delay".into(),
            ));
        }
        if let Some(j) = self.retry.jitter
            && !(0.0..=1.0).contains(&j)
        {
            return Err(ConfigError::Invalid(
                "retry.jitter: must be between 0 and 1".into(),
            ));
        }
        for (name, s) in &self.stream {
            if let Some(age) = s.max_age {
                let (lo, hi) = STREAM_MAX_AGE_RANGE;
                if age < lo || age > hi {
                    return Err(ConfigError::Invalid(format!(
                        "stream.{name}.max_age: must be between 24h and 120h"
                    )));
                }
            }
        }
        for (domain, r) in &self.route {
            if r.hosts.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "route.{domain}.hosts: give at least one host:port"
                )));
            }
        }
        for u in &self.user {
            if u.name.is_empty() {
                return Err(ConfigError::Invalid("user.name: must not be empty".into()));
            }
            match (&u.password, &u.password_hash) {
                (Some(p), None) if !p.is_empty() => {}
                (None, Some(h)) => crate::password::check_hash(h).map_err(|e| {
                    ConfigError::Invalid(format!("user.{}.password_hash: {e}", u.name))
                })?,
                (Some(_), Some(_)) => {
                    return Err(ConfigError::Invalid(format!(
                        "user.{}: give password or password_hash, not both",
                        u.name
                    )));
                }
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "user.{}: give a non-empty password or a password_hash",
                        u.name
                    )));
                }
            }
        }
        if self.pacing.enabled() {
            self.pacing.resolve()?;
        }
        if !self.user.is_empty() && self.tls.is_none() {
            return Err(ConfigError::Invalid(
                "user: AUTH is only offered after STARTTLS, so [tls] cert and key are needed"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The retry policy for `stream`.
    pub fn retry_policy(&self, stream: &str) -> RetryPolicy {
        let mut p = RetryPolicy::default();
        if let Some(s) = &self.retry.schedule {
            p.schedule = s.clone();
        }
        if let Some(a) = self.retry.max_age {
            p.max_age = a;
        }
        if let Some(j) = self.retry.jitter {
            p.jitter = j;
        }
        if let Some(a) = self.stream.get(stream).and_then(|s| s.max_age) {
            p.max_age = a;
        }
        p
    }
}

/// Parse `"30s"`, `"5m"`, `"72h"`, `"2d"`, `"250ms"` (a number and a unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("{text:?}: missing unit (ms, s, m, h, d)"))?;
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?}: not a number followed by a unit"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(format!("{text:?}: unknown unit (ms, s, m, h, d)")),
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("{text:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

mod duration_str {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

mod duration_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| super::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

mod duration_list {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Duration>>, D::Error> {
        let s = Option::<Vec<String>>::deserialize(d)?;
        s.map(|v| {
            v.iter()
                .map(|s| super::parse_duration(s).map_err(serde::de::Error::custom))
                .collect()
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The minimal config from the issue, verbatim.
    pub const MINIMAL: &str = r#"
[relay]
listen = ["127.0.0.1:2525"]
allow_clients = ["127.0.0.0/8"]
spool = "./spool"
events = "./events.jsonl"

[[source]]
ip = "127.0.0.2"
ehlo = "mta1.example.test"

[route."example.test"]
hosts = ["127.0.0.1:2626"]

[retry]
schedule = ["1s", "2s", "4s"]
max_age = "30s"
"#;

    #[test]
    fn minimal_config_from_the_issue_parses() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.relay.listen[0].port(), 2525);
        assert_eq!(c.source[0].ehlo, "mta1.example.test");
        assert_eq!(c.route["example.test"].hosts, ["127.0.0.1:2626"]);
        let p = c.retry_policy("transactional");
        assert_eq!(p.schedule.len(), 3);
        assert_eq!(p.max_age, Duration::from_secs(30));
    }

    #[test]
    fn the_sample_config_parses() {
        let c = Config::parse(SAMPLE).unwrap();
        assert!(!c.source.is_empty());
        assert_eq!(
            c.retry_policy("bulk").max_age,
            Duration::from_secs(48 * 3600)
        );
    }

    #[test]
    fn durations_parse_and_reject_garbage() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(
            parse_duration("72h").unwrap(),
            Duration::from_secs(72 * 3600)
        );
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn pacing_is_on_by_default_and_inline_keys_override_the_file_which_overrides_the_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert!(c.pacing.enabled());
        assert_eq!(c.pacing.resolve().unwrap(), PacingConfig::builtin());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pacing.toml");
        std::fs::write(
            &file,
            "[default]\nincrease_interval = \"2s\"\npause = \"3s\"\n",
        )
        .unwrap();
        let text = format!(
            "{MINIMAL}\n[pacing]\nfile = {:?}\n[pacing.default]\npause = \"4s\"\n",
            file.display().to_string()
        );
        let p = Config::parse(&text).unwrap().pacing.resolve().unwrap();
        let d = p.for_provider("google");
        assert_eq!(d.increase_interval, Duration::from_secs(2));
        assert_eq!(d.pause, Duration::from_secs(4));
        let off = Config::parse(&format!("{MINIMAL}\n[pacing]\nenabled = false\n")).unwrap();
        assert!(!off.pacing.enabled());
    }

    #[test]
    fn bad_pacing_config_fails_at_load_naming_the_key() {
        let cases = [
            (
                "[pacing.provider.microsoft]\nrate_floor = \"10/s\"\nrate_ceiling = \"1/s\"\n",
                "pacing.provider.microsoft.rate_floor",
            ),
            (
                "[pacing.default]\nrate_floor = \"0/min\"\n",
                "pacing.default.rate_floor",
            ),
            (
                "[pacing.provider.hotmale]\npause = \"1m\"\n",
                "pacing.provider.hotmale",
            ),
            (
                "[pacing.default]\npause = \"ten minutes\"\n",
                "pacing.default.pause",
            ),
            ("[pacing.default]\nrate_flor = \"1/min\"\n", "rate_flor"),
        ];
        for (section, key) in cases {
            let err = Config::parse(&format!("{MINIMAL}\n{section}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{section}: {err}");
        }
        let missing = format!("{MINIMAL}\n[pacing]\nfile = \"/nonexistent/pacing.toml\"\n");
        let err = Config::parse(&missing).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/pacing.toml"), "{err}");
    }

    #[test]
    fn unknown_fields_and_users_without_tls_are_errors() {
        assert!(Config::parse(&format!("{MINIMAL}\n[relay2]\nx=1\n")).is_err());
        let with_user = format!("{MINIMAL}\n[[user]]\nname=\"a\"\npassword=\"b\"\n");
        let err = Config::parse(&with_user).unwrap_err().to_string();
        assert!(err.contains("STARTTLS"), "{err}");
    }

    #[test]
    fn a_user_needs_exactly_one_good_password_or_hash() {
        let tls = "\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n";
        let user = |fields: &str| format!("{MINIMAL}{tls}\n[[user]]\nname=\"app1\"\n{fields}\n");
        let hash = crate::password::hash("pw").unwrap();
        Config::parse(&user(&format!("password_hash = \"{hash}\""))).unwrap();
        Config::parse(&user("password = \"pw\"")).unwrap();
        for (fields, expected) in [
            (
                "password_hash = \"pw\"",
                "user.app1.password_hash: not a PHC string",
            ),
            (
                "password_hash = \"$scrypt$ln=16,r=8,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\"",
                "user.app1.password_hash: algorithm scrypt is not supported",
            ),
            (
                "",
                "user.app1: give a non-empty password or a password_hash",
            ),
            ("password = \"\"", "user.app1: give a non-empty password"),
        ] {
            let err = Config::parse(&user(fields)).unwrap_err().to_string();
            assert!(err.contains(expected), "{fields}: {err}");
        }
        let both = user(&format!("password = \"pw\"\npassword_hash = \"{hash}\""));
        let err = Config::parse(&both).unwrap_err().to_string();
        assert!(err.contains("not both"), "{err}");
    }

    #[test]
    fn the_data_memory_budget_must_hold_one_message_of_the_largest_size() {
        let c = MINIMAL.replace(
            "[relay]\n",
            "[relay]\nmax_message_size = 1000\nmax_data_memory = 999\n",
        );
        let err = Config::parse(&c).unwrap_err().to_string();
        assert!(
            err.contains("relay.max_data_memory: must be at least max_message_size (1000)"),
            "{err}"
        );
    }
}
