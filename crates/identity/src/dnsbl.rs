//! DNS blocklists: zones as data (`data/dnsbl.toml`, overridable), the pure decoding of
//! their answers, the `blocklist.<zone>[<target>]` checks and the listed/delisted diff
//! that `--watch` reports.

use crate::dns::{Answer, Dns, reversed_labels};
use crate::report::{CheckResult, Status};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};

/// The shipped zone list.
pub const DEFAULT_ZONES: &str = include_str!("../data/dnsbl.toml");

/// What a zone lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// IP addresses (queried reversed).
    Ip,
    /// Domain names.
    Domain,
}

/// What an answer code means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// The target is listed.
    Listed,
    /// The list refused to answer; says nothing about the target.
    Refused,
}

/// One answer code of a zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Code {
    /// The answer address or range.
    pub answer: Ipv4Net,
    /// Listed or refused.
    pub effect: Effect,
    /// What the list says it means.
    pub meaning: String,
}

/// One bit of a bitmask zone's last octet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bit {
    /// The bit value (2, 4, 8, ...).
    pub bit: u8,
    /// What the list says it means.
    pub meaning: String,
}

/// One blocklist zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Zone {
    /// The zone name, e.g. `zen.spamhaus.org`.
    pub name: String,
    /// IP or domain list.
    pub kind: Kind,
    /// Where the meanings come from.
    pub source: String,
    /// Where to ask for removal.
    #[serde(default)]
    pub delist: String,
    /// Answer codes, matched in order.
    #[serde(default)]
    pub code: Vec<Code>,
    /// True when the last octet is a bit set.
    #[serde(default)]
    pub bitmask: bool,
    /// The bits of a bitmask zone.
    #[serde(default)]
    pub bit: Vec<Bit>,
}

#[derive(Deserialize)]
struct ZoneFile {
    zone: Vec<Zone>,
}

/// A zone file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("invalid blocklist zone file: {0}")]
pub struct ZoneFileError(String);

/// Parses a zone list (the format of `data/dnsbl.toml`).
pub fn load_zones(text: &str) -> Result<Vec<Zone>, ZoneFileError> {
    let file: ZoneFile = toml::from_str(text).map_err(|e| ZoneFileError(e.to_string()))?;
    for z in &file.zone {
        if z.name.is_empty() || z.name.contains(' ') {
            return Err(ZoneFileError(format!(
                "zone name {:?} is not a domain",
                z.name
            )));
        }
    }
    Ok(file.zone)
}

/// The shipped zones.
pub fn default_zones() -> Vec<Zone> {
    load_zones(DEFAULT_ZONES).expect("the shipped dnsbl.toml is valid (tested)")
}

/// The state of one target on one list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", content = "detail", rename_all = "lowercase")]
pub enum Listing {
    /// NXDOMAIN: not listed.
    Clear,
    /// Listed, with the meanings of the codes returned.
    Listed(Vec<String>),
    /// The list refused the query (never a listing).
    Refused(String),
    /// No verdict: lookup failure or a suspicious answer.
    Unknown(String),
}

impl Listing {
    /// A short word for the state.
    pub fn word(&self) -> &'static str {
        match self {
            Listing::Clear => "clear",
            Listing::Listed(_) => "listed",
            Listing::Refused(_) => "refused",
            Listing::Unknown(_) => "unknown",
        }
    }
}

/// Decodes a zone's answer to a query (pure).
pub fn decode(zone: &Zone, answer: &Answer<Vec<IpAddr>>) -> Listing {
    let addrs = match answer {
        Answer::NxDomain | Answer::NoData => return Listing::Clear,
        Answer::Failed(e) => return Listing::Unknown(format!("lookup failed: {e}")),
        Answer::Found(a) => a,
    };
    let mut meanings = Vec::new();
    for addr in addrs {
        let IpAddr::V4(v4) = addr else {
            return Listing::Unknown(format!("answer {addr} is not an IPv4 return code"));
        };
        if let Some(code) = zone.code.iter().find(|c| c.answer.contains(v4)) {
            match code.effect {
                Effect::Refused => return Listing::Refused(format!("{v4}: {}", code.meaning)),
                Effect::Listed => meanings.push(format!("{v4}: {}", code.meaning)),
            }
            continue;
        }
        if !Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8)
            .expect("valid")
            .contains(v4)
        {
            return Listing::Unknown(format!(
                "answer {v4} is outside 127.0.0.0/8: the resolver rewrites NXDOMAIN or the zone is gone"
            ));
        }
        if zone.bitmask {
            let last = v4.octets()[3];
            let bits: Vec<String> = zone
                .bit
                .iter()
                .filter(|b| last & b.bit != 0)
                .map(|b| format!("{v4}: {}", b.meaning))
                .collect();
            if bits.is_empty() {
                meanings.push(format!("{v4}: listed (no known bit set)"));
            }
            meanings.extend(bits);
        } else {
            meanings.push(format!(
                "{v4}: listed (code not documented in the zone data)"
            ));
        }
    }
    if meanings.is_empty() {
        Listing::Clear
    } else {
        Listing::Listed(meanings)
    }
}

/// The name to query for `target` on `zone`, or `None` when the zone lists the other kind.
pub fn query_name(zone: &Zone, target: &Target) -> Option<String> {
    match (zone.kind, target) {
        (Kind::Ip, Target::Ip(ip)) => Some(format!("{}.{}", reversed_labels(*ip), zone.name)),
        (Kind::Domain, Target::Domain(d)) => Some(format!("{d}.{}", zone.name)),
        _ => None,
    }
}

/// What is looked up on a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Target {
    /// An egress IP.
    Ip(IpAddr),
    /// The sending domain.
    Domain(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Ip(ip) => write!(f, "{ip}"),
            Target::Domain(d) => f.write_str(d),
        }
    }
}

/// One (zone, target) verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct ListCheck {
    /// The zone name.
    pub zone: String,
    /// The target.
    pub target: Target,
    /// Its state.
    pub listing: Listing,
    /// The check result for the report.
    pub result: CheckResult,
}

/// The verdict for one (zone, target).
pub fn verdict(zone: &Zone, target: &Target, qname: &str, listing: &Listing) -> CheckResult {
    let id = format!("blocklist.{}[{target}]", zone.name);
    let source = format!("zone data: {}", zone.source);
    match listing {
        Listing::Clear => CheckResult::new(id, Status::Pass, format!("{target} is not listed on {}", zone.name))
            .evidence([format!("{qname} A: NXDOMAIN"), source]),
        Listing::Listed(m) => {
            let mut ev = vec![format!("{qname} A:")];
            ev.extend(m.iter().cloned());
            ev.push(source);
            CheckResult::new(id, Status::Fail, format!("{target} is listed on {}", zone.name))
                .evidence(ev)
                .fix(format!("Find and stop the cause (compromised account, bad list, open relay), then request removal: {}", zone.delist))
        }
        Listing::Refused(why) => CheckResult::new(id, Status::Warn, format!("{} refused the query: no verdict for {target} (this is not a listing)", zone.name))
            .evidence([format!("{qname} A: {why}"), source])
            .fix("Query through your own resolver (not a public one), or register for the list's data feed."),
        Listing::Unknown(why) => CheckResult::new(id, Status::Warn, format!("no verdict from {} for {target}", zone.name))
            .evidence([format!("{qname}: {why}"), source])
            .fix("Retry later, from a resolver that returns real NXDOMAIN answers."),
    }
}

/// Every zone × target (IPs on IP zones, the domain on domain zones), in parallel.
pub async fn check_all(dns: &Dns, zones: &[Zone], ips: &[IpAddr], domain: &str) -> Vec<ListCheck> {
    let mut targets: Vec<Target> = ips.iter().map(|ip| Target::Ip(*ip)).collect();
    targets.push(Target::Domain(domain.to_string()));
    let mut jobs = Vec::new();
    for zone in zones {
        for target in &targets {
            if let Some(qname) = query_name(zone, target) {
                jobs.push(async move {
                    let answer = dns.a(&qname).await;
                    let listing = decode(zone, &answer);
                    let result = verdict(zone, target, &qname, &listing);
                    ListCheck {
                        zone: zone.name.clone(),
                        target: target.clone(),
                        listing,
                        result,
                    }
                });
            }
        }
    }
    futures_util::future::join_all(jobs).await
}

/// A change of state between two rounds of `--watch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// `listed`, `delisted`, or `changed` (e.g. clear → refused).
    pub event: String,
    /// The zone.
    pub zone: String,
    /// The IP or domain.
    pub target: String,
    /// State before.
    pub from: String,
    /// State now.
    pub to: String,
    /// The answer codes' meanings now (when listed).
    pub detail: Vec<String>,
}

/// The changes from `previous` to `current` (pure). A target new in `current` that is
/// listed counts as `listed`.
pub fn changes(previous: &[ListCheck], current: &[ListCheck]) -> Vec<Change> {
    let mut out = Vec::new();
    for cur in current {
        let before = previous
            .iter()
            .find(|p| p.zone == cur.zone && p.target == cur.target)
            .map(|p| &p.listing);
        let from = before.map(Listing::word).unwrap_or("none");
        let to = cur.listing.word();
        if from == to {
            continue;
        }
        let event = match (before, &cur.listing) {
            (_, Listing::Listed(_)) => "listed",
            (Some(Listing::Listed(_)), Listing::Clear) => "delisted",
            (None, _) => continue,
            _ => "changed",
        };
        let detail = match &cur.listing {
            Listing::Listed(m) => m.clone(),
            Listing::Refused(s) | Listing::Unknown(s) => vec![s.clone()],
            Listing::Clear => vec![],
        };
        out.push(Change {
            event: event.into(),
            zone: cur.zone.clone(),
            target: cur.target.to_string(),
            from: from.into(),
            to: to.into(),
            detail,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str) -> Zone {
        default_zones()
            .into_iter()
            .find(|z| z.name == name)
            .unwrap()
    }

    fn found(ips: &[&str]) -> Answer<Vec<IpAddr>> {
        Answer::Found(ips.iter().map(|s| s.parse().unwrap()).collect())
    }

    #[test]
    fn shipped_zones_load_and_exclude_sorbs() {
        let zones = default_zones();
        assert!(zones.len() >= 9);
        assert!(
            zones
                .iter()
                .all(|z| !z.source.is_empty() && !z.name.contains("sorbs"))
        );
        for name in [
            "zen.spamhaus.org",
            "dbl.spamhaus.org",
            "b.barracudacentral.org",
            "bl.spamcop.net",
            "dnsbl-1.uceprotect.net",
            "bl.mailspike.net",
            "psbl.surriel.com",
            "multi.surbl.org",
            "multi.uribl.com",
        ] {
            assert!(zones.iter().any(|z| z.name == name), "{name}");
        }
    }

    #[test]
    fn spamhaus_refusal_is_never_a_listing() {
        let z = zone("zen.spamhaus.org");
        for code in [
            "127.255.255.254",
            "127.255.255.255",
            "127.255.255.252",
            "127.255.255.253",
        ] {
            assert!(
                matches!(decode(&z, &found(&[code])), Listing::Refused(_)),
                "{code}"
            );
        }
        assert!(matches!(
            decode(&z, &found(&["127.0.0.2", "127.255.255.254"])),
            Listing::Refused(_)
        ));
        let Listing::Listed(m) = decode(&z, &found(&["127.0.0.4", "127.0.0.11"])) else {
            panic!()
        };
        assert!(m[0].contains("XBL") && m[1].contains("PBL"), "{m:?}");
    }

    #[test]
    fn nxdomain_is_clear_and_odd_answers_are_unknown() {
        let z = zone("zen.spamhaus.org");
        assert_eq!(decode(&z, &Answer::NxDomain), Listing::Clear);
        assert!(matches!(
            decode(&z, &found(&["198.51.100.7"])),
            Listing::Unknown(_)
        ));
        assert!(matches!(
            decode(&z, &Answer::Failed("SERVFAIL".into())),
            Listing::Unknown(_)
        ));
    }

    #[test]
    fn bitmask_zones_decode_bits() {
        let z = zone("multi.surbl.org");
        let Listing::Listed(m) = decode(&z, &found(&["127.0.0.24"])) else {
            panic!()
        };
        assert_eq!(m.len(), 2);
        assert!(matches!(
            decode(&z, &found(&["127.0.0.1"])),
            Listing::Refused(_)
        ));
    }

    #[test]
    fn query_names() {
        let z = zone("zen.spamhaus.org");
        assert_eq!(
            query_name(&z, &Target::Ip("192.0.2.10".parse().unwrap())).unwrap(),
            "10.2.0.192.zen.spamhaus.org"
        );
        assert_eq!(query_name(&z, &Target::Domain("x.test".into())), None);
    }

    #[test]
    fn watch_reports_listed_and_delisted() {
        let z = zone("zen.spamhaus.org");
        let mk = |l: Listing| {
            let t = Target::Ip("192.0.2.10".parse().unwrap());
            ListCheck {
                zone: z.name.clone(),
                result: verdict(&z, &t, "q", &l),
                target: t,
                listing: l,
            }
        };
        let clear = vec![mk(Listing::Clear)];
        let listed = vec![mk(Listing::Listed(vec!["127.0.0.2: SBL".into()]))];
        assert_eq!(changes(&clear, &clear), vec![]);
        let c = changes(&clear, &listed);
        assert_eq!(
            (c[0].event.as_str(), c[0].from.as_str(), c[0].to.as_str()),
            ("listed", "clear", "listed")
        );
        assert_eq!(changes(&listed, &clear)[0].event, "delisted");
        assert_eq!(
            changes(&clear, &[mk(Listing::Refused("x".into()))])[0].event,
            "changed"
        );
    }

    #[test]
    fn bad_zone_files_are_errors() {
        assert!(load_zones("zone = 3").is_err());
        assert!(load_zones("[[zone]]\nname = \"a b\"\nkind = \"ip\"\nsource = \"x\"").is_err());
        assert!(load_zones("[[zone]]\nname = \"x\"\nkind = \"ipv9\"\nsource = \"x\"").is_err());
    }
}
