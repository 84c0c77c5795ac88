//! Receiver profiles: what a receiver accepts and how it pushes back, as data.
//!
//! Built-in profiles live in `crates/sim/profiles/*.toml` and are embedded in the
//! binary; a user can load their own file with the same schema. Each behaviour in a
//! shipped file cites its source in `../shared/research/`.

use crate::reply::ReplySpec;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

/// Names and texts of the profiles built into the binary.
pub const BUILTIN: &[(&str, &str)] = &[
    ("microsoft", include_str!("../profiles/microsoft.toml")),
    ("gmail", include_str!("../profiles/gmail.toml")),
    ("yahoo", include_str!("../profiles/yahoo.toml")),
    ("accept", include_str!("../profiles/accept.toml")),
    ("script", include_str!("../profiles/script.toml")),
];

/// A profile that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// No built-in profile has this name.
    #[error("no built-in profile named {0:?} (built-in: microsoft, gmail, yahoo, accept, script)")]
    Unknown(String),
    /// The TOML does not match the schema.
    #[error("profile {name}: {source}")]
    Parse {
        /// File or built-in name.
        name: String,
        /// The TOML error, with line and column.
        source: toml::de::Error,
    },
    /// The file could not be read.
    #[error("reading profile {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A value out of its range.
    #[error("profile {name}: {what}")]
    Invalid {
        /// File or built-in name.
        name: String,
        /// What is wrong.
        what: String,
    },
}

/// Where the per-IP message budget is charged and enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// One token per recipient at RCPT (Microsoft: 4.7.500 "in reply to RCPT TO").
    #[default]
    Rcpt,
    /// One token per transaction at MAIL FROM (Yahoo TSS04 is seen at MAIL FROM).
    Mail,
}

/// Budgets per source IP, counted across all listen addresses (EOP throttles per
/// sending IP across all tenants).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Messages per minute per source IP; 0 means unlimited.
    pub per_ip_rate: f64,
    /// Bucket size: how many messages may arrive at once after a quiet spell.
    /// 0 means one minute's worth of `per_ip_rate`.
    pub burst: f64,
    /// Concurrent connections per source IP; 0 means unlimited.
    pub per_ip_connections: u32,
    /// Messages per minute per recipient address; 0 means unlimited.
    pub per_recipient_rate: f64,
    /// Seconds an IP stays throttled once its budget is spent.
    pub penalty_secs: f64,
    /// Seconds added to the throttle for every attempt made while throttled.
    pub retry_penalty_secs: f64,
    /// Upper bound of a throttle, in seconds from now.
    pub max_penalty_secs: f64,
    /// Where the budget is charged.
    pub stage: Stage,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_ip_rate: 0.0,
            burst: 0.0,
            per_ip_connections: 0,
            per_recipient_rate: 0.0,
            penalty_secs: 0.0,
            retry_penalty_secs: 0.0,
            max_penalty_secs: 3600.0,
            stage: Stage::Rcpt,
        }
    }
}

/// New-IP mode: a small budget that grows with days of clean history.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Warmup {
    /// Treat every source IP as new (first seen = first connection).
    pub all_ips: bool,
    /// Source IPs treated as new.
    pub ips: Vec<IpAddr>,
    /// Messages per minute on day 0.
    pub start_rate: f64,
    /// Growth per clean day: rate = start_rate × (1 + daily_growth)^days.
    pub daily_growth: f64,
    /// Simulated seconds per real second for warm-up history (1440 = a day per minute).
    pub time_compression: f64,
    /// Whether a throttle restarts the warm-up at day 0 (history counts from the last
    /// throttle) or not (history counts from the first message seen). No source says a
    /// deferral erases Microsoft's sending history: its 4.7.500 page expects deferrals
    /// while a new IP ramps up and says they resolve as history builds over a few days.
    pub reset_on_throttle: bool,
}

impl Default for Warmup {
    fn default() -> Self {
        Warmup {
            all_ips: false,
            ips: Vec::new(),
            start_rate: 5.0,
            daily_growth: 1.0,
            time_compression: 1.0,
            reset_on_throttle: true,
        }
    }
}

/// IP-reputation mode: listed IPs get a smaller budget and the reputation reply.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reputation {
    /// Source IPs with poor reputation.
    pub ips: Vec<IpAddr>,
    /// Their budget as a share of `per_ip_rate`.
    pub rate_factor: f64,
}

impl Default for Reputation {
    fn default() -> Self {
        Reputation {
            ips: Vec::new(),
            rate_factor: 0.25,
        }
    }
}

/// Tenant pressure: chosen recipient domains defer whoever sends.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantPressure {
    /// Recipient domains (lower case) under pressure.
    pub domains: Vec<String>,
    /// Share of RCPTs to those domains that are deferred (0..=1).
    pub share: f64,
}

impl Default for TenantPressure {
    fn default() -> Self {
        TenantPressure {
            domains: Vec::new(),
            share: 1.0,
        }
    }
}

/// Incident mode: a share of sessions deferred across all tenants and senders,
/// concentrated on chosen receiving hosts.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Incident {
    /// Share of sessions deferred on the chosen hosts (0..=1); 0 disables.
    pub share: f64,
    /// Listen labels (`ADDR:PORT`), listen addresses or host names where the incident
    /// is concentrated; empty = all.
    pub hosts: Vec<String>,
    /// Share of sessions deferred on the other hosts.
    pub elsewhere_share: f64,
}

/// The replies a profile gives. Protocol replies (503, 500, 354, …) are standard and
/// not part of the profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replies {
    /// Greeting banner (220).
    pub banner: ReplySpec,
    /// First line of the EHLO reply; the server appends the extensions.
    pub ehlo: ReplySpec,
    /// MAIL FROM accepted.
    pub mail_ok: ReplySpec,
    /// RCPT TO accepted.
    pub rcpt_ok: ReplySpec,
    /// Message accepted after DATA.
    pub data_ok: ReplySpec,
    /// Per-IP budget spent.
    pub throttle: ReplySpec,
    /// Too many concurrent connections (at connect).
    pub connections: Option<ReplySpec>,
    /// IP-reputation rate limit (for `reputation.ips`).
    pub reputation: Option<ReplySpec>,
    /// Blocklisted IP (at MAIL FROM).
    pub blocklist: Option<ReplySpec>,
    /// Tenant pressure (at RCPT).
    pub tenant: Option<ReplySpec>,
    /// Incident (at RCPT).
    pub incident: Option<ReplySpec>,
    /// Per-recipient rate (at RCPT).
    pub recipient_rate: Option<ReplySpec>,
}

/// A receiver profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Profile name.
    pub name: String,
    /// Default receiving host name (banner, trailers).
    pub host_name: String,
    /// Host name per listen label or listen address (e.g.
    /// `"127.0.0.5:2525" = "tenant-b.mail.protection.outlook.com"` or `"127.0.0.5" = …`).
    #[serde(default)]
    pub host_names: BTreeMap<String, String>,
    /// Honour recipient local-part directives (`tempfail+3@`, `550@`, …).
    #[serde(default)]
    pub directives: bool,
    /// Budgets.
    #[serde(default)]
    pub limits: Limits,
    /// New-IP warm-up.
    #[serde(default)]
    pub warmup: Warmup,
    /// IP-reputation mode.
    #[serde(default)]
    pub reputation: Reputation,
    /// Blocklisted source IPs.
    #[serde(default)]
    pub blocklist: Vec<IpAddr>,
    /// Tenant pressure.
    #[serde(default)]
    pub tenant_pressure: TenantPressure,
    /// Incident mode.
    #[serde(default)]
    pub incident: Incident,
    /// Reply texts.
    pub replies: Replies,
}

impl Profile {
    /// A built-in profile by name.
    pub fn builtin(name: &str) -> Result<Profile, ProfileError> {
        let (_, text) = BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| ProfileError::Unknown(name.to_string()))?;
        Profile::from_toml(name, text)
    }

    /// Parse and check a profile from TOML text; `name` is used in errors.
    pub fn from_toml(name: &str, text: &str) -> Result<Profile, ProfileError> {
        let profile: Profile = toml::from_str(text).map_err(|source| ProfileError::Parse {
            name: name.to_string(),
            source,
        })?;
        profile.validate(name)?;
        Ok(profile)
    }

    /// A built-in name, or else a path to a TOML file.
    pub fn load(name_or_path: &str) -> Result<Profile, ProfileError> {
        if BUILTIN.iter().any(|(n, _)| *n == name_or_path) {
            return Profile::builtin(name_or_path);
        }
        let path = Path::new(name_or_path);
        if !path.exists() {
            return Err(ProfileError::Unknown(name_or_path.to_string()));
        }
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: name_or_path.to_string(),
            source,
        })?;
        Profile::from_toml(name_or_path, &text)
    }

    /// Check ranges; call again after changing fields by hand (CLI overrides).
    pub fn validate(&self, name: &str) -> Result<(), ProfileError> {
        let bad = |what: String| {
            Err(ProfileError::Invalid {
                name: name.to_string(),
                what,
            })
        };
        let l = &self.limits;
        for (field, v) in [
            ("limits.per_ip_rate", l.per_ip_rate),
            ("limits.burst", l.burst),
            ("limits.per_recipient_rate", l.per_recipient_rate),
            ("limits.penalty_secs", l.penalty_secs),
            ("limits.retry_penalty_secs", l.retry_penalty_secs),
            ("limits.max_penalty_secs", l.max_penalty_secs),
            ("warmup.start_rate", self.warmup.start_rate),
            ("warmup.daily_growth", self.warmup.daily_growth),
            ("reputation.rate_factor", self.reputation.rate_factor),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{field} must be a finite number >= 0, got {v}"));
            }
        }
        if !(self.warmup.time_compression.is_finite() && self.warmup.time_compression > 0.0) {
            return bad("warmup.time_compression must be > 0".into());
        }
        for (field, v) in [
            ("tenant_pressure.share", self.tenant_pressure.share),
            ("incident.share", self.incident.share),
            ("incident.elsewhere_share", self.incident.elsewhere_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(format!("{field} must be between 0 and 1, got {v}"));
            }
        }
        let r = &self.replies;
        let mut all = vec![
            ("banner", &r.banner),
            ("ehlo", &r.ehlo),
            ("mail_ok", &r.mail_ok),
            ("rcpt_ok", &r.rcpt_ok),
            ("data_ok", &r.data_ok),
            ("throttle", &r.throttle),
        ];
        for (n, o) in [
            ("connections", &r.connections),
            ("reputation", &r.reputation),
            ("blocklist", &r.blocklist),
            ("tenant", &r.tenant),
            ("incident", &r.incident),
            ("recipient_rate", &r.recipient_rate),
        ] {
            if let Some(s) = o {
                all.push((n, s));
            }
        }
        for (n, spec) in all {
            if !(200..600).contains(&spec.code) || spec.lines.is_empty() {
                return bad(format!(
                    "replies.{n}: code must be 200..=599 and lines non-empty"
                ));
            }
        }
        for (n, spec) in [
            ("banner", &r.banner),
            ("ehlo", &r.ehlo),
            ("mail_ok", &r.mail_ok),
            ("rcpt_ok", &r.rcpt_ok),
            ("data_ok", &r.data_ok),
        ] {
            if spec.code >= 400 {
                return bad(format!("replies.{n} must be a positive reply"));
            }
        }
        Ok(())
    }

    /// The host name that answers on a listen label (`ADDR:PORT`); a `host_names` key
    /// may be the whole label or just its address.
    pub fn host_for<'a>(&'a self, listen: &str) -> &'a str {
        if self.host_names.is_empty() {
            return &self.host_name;
        }
        self.host_names
            .get(listen)
            .or_else(|| self.host_names.get(listen_address(listen)))
            .map(String::as_str)
            .unwrap_or(&self.host_name)
    }
}

/// The address part of a listen label: `127.0.0.4:2525` → `127.0.0.4`, `[::1]:25` → `::1`.
pub(crate) fn listen_address(listen: &str) -> &str {
    let addr = listen.rsplit_once(':').map_or(listen, |(a, _)| a);
    addr.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_profile_loads() {
        for (name, _) in BUILTIN {
            let p = Profile::builtin(name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(p.name, *name);
        }
    }

    #[test]
    fn bad_profiles_are_clear_errors() {
        let err = Profile::builtin("hotmail").unwrap_err();
        assert!(err.to_string().contains("no built-in profile"), "{err}");
        let mut text = BUILTIN[0].1.replace("per_ip_rate = ", "per_ip_rate = -");
        let err = Profile::from_toml("x", &text).unwrap_err();
        assert!(err.to_string().contains("per_ip_rate"), "{err}");
        text = BUILTIN[0].1.replace("{ip}", "{ipp}");
        let err = Profile::from_toml("x", &text).unwrap_err();
        assert!(err.to_string().contains("unknown placeholder"), "{err}");
    }
}
