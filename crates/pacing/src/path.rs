//! The unit of pacing: one egress IP sending to one provider.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A pacing path: (egress IP × provider). Microsoft throttles a sending IP across all
/// of its tenants, so a path is keyed on the provider, never on a tenant's MX host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Path {
    /// Our address the connection leaves from.
    pub source_ip: IpAddr,
    /// Provider name (`microsoft`, `google`, …; `unknown` when not recognised).
    pub provider: String,
}

impl Path {
    /// A path from its parts.
    pub fn new(source_ip: IpAddr, provider: impl Into<String>) -> Path {
        Path {
            source_ip,
            provider: provider.into(),
        }
    }
}

/// Written `IP@provider`, e.g. `192.0.2.10@microsoft` or `2001:db8::1@google`.
impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.source_ip, self.provider)
    }
}

/// A path written wrongly.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad path {0:?}: expected IP@provider, e.g. 192.0.2.10@microsoft")]
pub struct BadPath(pub String);

impl FromStr for Path {
    type Err = BadPath;

    fn from_str(s: &str) -> Result<Path, BadPath> {
        let bad = || BadPath(s.to_string());
        let (ip, provider) = s.trim().rsplit_once('@').ok_or_else(bad)?;
        let provider = provider.trim().to_ascii_lowercase();
        if provider.is_empty()
            || !provider
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(bad());
        }
        let ip = ip.trim().parse::<IpAddr>().map_err(|_| bad())?;
        Ok(Path::new(ip, provider))
    }
}

/// Mail streams, paced differently when a path is in trouble.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stream {
    /// Receipts, password resets, alerts: keeps a reserved share when bulk pauses.
    Transactional,
    /// Newsletters and campaigns.
    Bulk,
    /// Mail to addresses with no recent engagement: the first to pause.
    Cold,
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stream::Transactional => "transactional",
            Stream::Bulk => "bulk",
            Stream::Cold => "cold",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_reads_back_what_it_writes_for_v4_and_v6() {
        for text in ["192.0.2.10@microsoft", "2001:db8::1@google"] {
            let p: Path = text.parse().unwrap();
            assert_eq!(p.to_string(), text);
        }
    }

    #[test]
    fn a_path_without_provider_or_with_a_bad_ip_is_refused() {
        for text in [
            "192.0.2.10",
            "192.0.2.10@",
            "300.1.1.1@microsoft",
            "@google",
            "1.2.3.4@a b",
        ] {
            assert!(text.parse::<Path>().is_err(), "{text} accepted");
        }
    }
}
