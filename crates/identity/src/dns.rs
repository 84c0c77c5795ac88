//! The DNS context of one run: one resolver (with its cache) shared by every check, a
//! timeout on every lookup, and answers that keep "does not exist", "exists but has no
//! such record" and "could not tell" apart — SPF void lookups and DNSBL verdicts need
//! exactly that distinction.

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use mail_auth::MessageAuthenticator;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Why the DNS context could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DnsSetupError {
    /// The resolver could not be built from the given or system configuration.
    #[error("cannot build the DNS resolver: {0}")]
    Resolver(String),
}

/// The outcome of one lookup.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer<T> {
    /// Records of the asked type were returned.
    Found(T),
    /// NXDOMAIN: the name does not exist.
    NxDomain,
    /// The name exists but has no record of this type (NOERROR, empty answer).
    NoData,
    /// No usable answer: SERVFAIL, REFUSED, timeout, malformed name, network error.
    Failed(String),
}

impl<T> Answer<T> {
    /// True for NXDOMAIN and NODATA: what RFC 7208 §4.6.4 calls a void lookup.
    pub fn is_void(&self) -> bool {
        matches!(self, Answer::NxDomain | Answer::NoData)
    }

    /// The records, if any were found.
    pub fn found(&self) -> Option<&T> {
        match self {
            Answer::Found(t) => Some(t),
            _ => None,
        }
    }

    /// Maps the records, keeping the negative outcomes.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Answer<U> {
        match self {
            Answer::Found(t) => Answer::Found(f(t)),
            Answer::NxDomain => Answer::NxDomain,
            Answer::NoData => Answer::NoData,
            Answer::Failed(e) => Answer::Failed(e),
        }
    }

    /// A short description of a negative outcome, for evidence lines.
    pub fn describe_negative(&self) -> String {
        match self {
            Answer::Found(_) => "found".into(),
            Answer::NxDomain => "NXDOMAIN (name does not exist)".into(),
            Answer::NoData => "no record of this type (NODATA)".into(),
            Answer::Failed(e) => format!("lookup failed: {e}"),
        }
    }
}

/// One TXT record: its character-strings as published.
#[derive(Debug, Clone, PartialEq)]
pub struct TxtRecord {
    /// The character-strings, each at most 255 bytes on the wire.
    pub strings: Vec<Vec<u8>>,
}

impl TxtRecord {
    /// The strings joined without separator, as RFC 7208 §3.3 says to read them.
    pub fn text(&self) -> String {
        let joined: Vec<u8> = self.strings.concat();
        String::from_utf8_lossy(&joined).into_owned()
    }

    /// Bytes of RDATA: one length byte plus the bytes of each string.
    pub fn rdata_len(&self) -> usize {
        self.strings.iter().map(|s| 1 + s.len()).sum()
    }
}

/// All TXT records at a name, with the size the answer has on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct TxtSet {
    /// The records.
    pub records: Vec<TxtRecord>,
    /// Size of a DNS response carrying exactly these records (header, question, answers with
    /// the owner name compressed): what must fit in 512 bytes for plain UDP without EDNS.
    pub wire_size: usize,
}

/// The DNS context of a run.
pub struct Dns {
    auth: MessageAuthenticator,
    timeout: Duration,
}

impl Dns {
    /// A context that asks `server` (an IP:port) only, or the system resolvers when `None`.
    /// Every lookup gives up after `timeout` (per attempt; UDP then TCP on truncation).
    pub fn new(server: Option<SocketAddr>, timeout: Duration) -> Result<Self, DnsSetupError> {
        let mut opts = ResolverOpts::default();
        opts.timeout = timeout;
        opts.attempts = 1;
        opts.ndots = 0;
        let auth = match server {
            Some(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                MessageAuthenticator::new(ResolverConfig::from_name_servers(vec![ns]), opts)
            }
            None => {
                let (config, _) = hickory_resolver::system_conf::read_system_conf()
                    .map_err(|e| DnsSetupError::Resolver(e.to_string()))?;
                MessageAuthenticator::new(config, opts)
            }
        }
        .map_err(|e| DnsSetupError::Resolver(e.to_string()))?;
        Ok(Dns { auth, timeout })
    }

    /// The mail-auth verifier sharing this context's resolver and cache.
    pub fn authenticator(&self) -> &MessageAuthenticator {
        &self.auth
    }

    /// Forgets every cached answer (for re-checks that must see changes, e.g. `--watch`).
    pub fn clear_cache(&self) {
        self.auth.resolver().clear_cache();
    }

    /// The per-lookup timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn lookup(&self, name: &str, rtype: RecordType) -> Answer<Lookup> {
        let fqdn = match to_fqdn(name) {
            Ok(n) => n,
            Err(e) => return Answer::Failed(e),
        };
        // The resolver's own timeout covers one attempt per transport; this bound covers the
        // whole lookup (UDP, TCP retry after TC, CNAME chasing) so nothing can hang.
        let bound = self.timeout * 3 + Duration::from_millis(200);
        match tokio::time::timeout(bound, self.auth.resolver().lookup(fqdn, rtype)).await {
            Err(_) => Answer::Failed(format!("timed out after {} ms", bound.as_millis())),
            Ok(Ok(lookup)) => Answer::Found(lookup),
            Ok(Err(err)) => classify_error(&err),
        }
    }

    /// TXT records at `name`. When there are none, a CNAME loop at the name is named.
    pub async fn txt(&self, name: &str) -> Answer<TxtSet> {
        let answer = self.txt_records(name).await;
        if answer == Answer::NoData
            && let Some(chain) = self.cname_loop(name).await
        {
            return Answer::Failed(format!("CNAME loop: {chain}"));
        }
        answer
    }

    /// Follows CNAMEs from `name` (at most 8 hops) and returns the chain if it loops.
    async fn cname_loop(&self, name: &str) -> Option<String> {
        let mut seen = vec![normalize_name(name)];
        for _ in 0..8 {
            let Answer::Found(lookup) = self.lookup(seen.last()?, RecordType::CNAME).await else {
                return None;
            };
            let next = lookup.answers().iter().find_map(|r| match &r.data {
                RData::CNAME(c) => Some(normalize_name(&c.0.to_ascii())),
                _ => None,
            })?;
            let looped = seen.contains(&next);
            seen.push(next);
            if looped {
                return Some(seen.join(" -> "));
            }
        }
        None
    }

    async fn txt_records(&self, name: &str) -> Answer<TxtSet> {
        let answer = self.lookup(name, RecordType::TXT).await;
        let qname_len = wire_name_len(name);
        found_or_nodata(answer, |lookup| {
            let records: Vec<TxtRecord> = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => Some(TxtRecord {
                        strings: txt.txt_data.iter().map(|s| s.to_vec()).collect(),
                    }),
                    _ => None,
                })
                .collect();
            let wire_size = 12
                + qname_len
                + 4
                + records
                    .iter()
                    .map(|r| 2 + 10 + r.rdata_len())
                    .sum::<usize>();
            (!records.is_empty()).then_some(TxtSet { records, wire_size })
        })
    }

    /// A records at `name`.
    pub async fn a(&self, name: &str) -> Answer<Vec<IpAddr>> {
        self.addresses(name, RecordType::A).await
    }

    /// AAAA records at `name`.
    pub async fn aaaa(&self, name: &str) -> Answer<Vec<IpAddr>> {
        self.addresses(name, RecordType::AAAA).await
    }

    async fn addresses(&self, name: &str, rtype: RecordType) -> Answer<Vec<IpAddr>> {
        found_or_nodata(self.lookup(name, rtype).await, |lookup| {
            let ips: Vec<IpAddr> = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })
                .collect();
            (!ips.is_empty()).then_some(ips)
        })
    }

    /// A and AAAA records at `name`, asked in parallel. NXDOMAIN only when the name does not
    /// exist; `Failed` when either lookup failed and nothing was found.
    pub async fn ips(&self, name: &str) -> Answer<Vec<IpAddr>> {
        let (v4, v6) = tokio::join!(self.a(name), self.aaaa(name));
        let mut ips = Vec::new();
        if let Answer::Found(f) = &v4 {
            ips.extend(f);
        }
        if let Answer::Found(f) = &v6 {
            ips.extend(f);
        }
        if !ips.is_empty() {
            return Answer::Found(ips);
        }
        match (v4, v6) {
            (Answer::Failed(e), _) | (_, Answer::Failed(e)) => Answer::Failed(e),
            (Answer::NxDomain, _) | (_, Answer::NxDomain) => Answer::NxDomain,
            _ => Answer::NoData,
        }
    }

    /// MX records at `name`: (preference, exchange without trailing dot), sorted.
    pub async fn mx(&self, name: &str) -> Answer<Vec<(u16, String)>> {
        found_or_nodata(self.lookup(name, RecordType::MX).await, |lookup| {
            let mut mx: Vec<(u16, String)> = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some((mx.preference, normalize_name(&mx.exchange.to_ascii()))),
                    _ => None,
                })
                .collect();
            mx.sort();
            (!mx.is_empty()).then_some(mx)
        })
    }

    /// PTR records for `ip` (names without trailing dot).
    pub async fn ptr(&self, ip: IpAddr) -> Answer<Vec<String>> {
        let name = reverse_name(ip);
        found_or_nodata(self.lookup(&name, RecordType::PTR).await, |lookup| {
            let names: Vec<String> = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::PTR(p) => Some(normalize_name(&p.0.to_ascii())),
                    _ => None,
                })
                .collect();
            (!names.is_empty()).then_some(names)
        })
    }
}

/// A successful lookup whose answer holds nothing of the asked type (e.g. only a CNAME
/// chain) counts as NODATA.
fn found_or_nodata<T>(answer: Answer<Lookup>, f: impl FnOnce(&Lookup) -> Option<T>) -> Answer<T> {
    match answer {
        Answer::Found(lookup) => match f(&lookup) {
            Some(t) => Answer::Found(t),
            None => cname_dead_end(&lookup).map_or(Answer::NoData, Answer::Failed),
        },
        Answer::NxDomain => Answer::NxDomain,
        Answer::NoData => Answer::NoData,
        Answer::Failed(e) => Answer::Failed(e),
    }
}

/// An answer made only of CNAMEs is a chain that never reaches a record: a loop or a chain
/// longer than the server follows. Name it, so the evidence says why nothing was found.
fn cname_dead_end(lookup: &Lookup) -> Option<String> {
    let chain: Vec<String> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::CNAME(c) => Some(format!(
                "{} -> {}",
                normalize_name(&r.name.to_ascii()),
                normalize_name(&c.0.to_ascii())
            )),
            _ => None,
        })
        .collect();
    if chain.is_empty() {
        return None;
    }
    Some(format!(
        "CNAME chain reaches no record (loop?): {}",
        chain.join(", ")
    ))
}

fn classify_error<T>(err: &NetError) -> Answer<T> {
    match err {
        NetError::Dns(DnsError::NoRecordsFound(nr))
            if nr.response_code == ResponseCode::NXDomain =>
        {
            Answer::NxDomain
        }
        NetError::Dns(DnsError::NoRecordsFound(_)) => Answer::NoData,
        NetError::Dns(DnsError::ResponseCode(code)) => {
            Answer::Failed(format!("server answered {code}"))
        }
        other => Answer::Failed(other.to_string()),
    }
}

/// Lower-case, without the trailing dot.
pub fn normalize_name(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn to_fqdn(name: &str) -> Result<Name, String> {
    let n = normalize_name(name);
    if n.is_empty() {
        return Err("empty domain name".into());
    }
    Name::from_ascii(format!("{n}.")).map_err(|e| format!("invalid domain name {n:?}: {e}"))
}

/// Bytes of `name` in wire format, uncompressed.
fn wire_name_len(name: &str) -> usize {
    let n = normalize_name(name);
    if n.is_empty() { 1 } else { n.len() + 2 }
}

/// The reverse-lookup name of `ip`, without trailing dot (`4.3.2.1.in-addr.arpa`).
pub fn reverse_name(ip: IpAddr) -> String {
    format!(
        "{}.{}",
        reversed_labels(ip),
        match ip {
            IpAddr::V4(_) => "in-addr.arpa",
            IpAddr::V6(_) => "ip6.arpa",
        }
    )
}

/// The labels of `ip` in reverse order, as DNSBLs and reverse zones use them:
/// `192.0.2.1` → `1.2.0.192`; IPv6 → 32 nibbles.
pub fn reversed_labels(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut nibbles = Vec::with_capacity(32);
            for byte in v6.octets().iter().rev() {
                nibbles.push(format!("{:x}", byte & 0x0f));
                nibbles.push(format!("{:x}", byte >> 4));
            }
            nibbles.join(".")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reversed_labels_of_v4_and_v6() {
        assert_eq!(reversed_labels("192.0.2.1".parse().unwrap()), "1.2.0.192");
        let v6 = reversed_labels("2001:db8::1".parse().unwrap());
        assert!(v6.starts_with("1.0.0.0."), "{v6}");
        assert!(v6.ends_with(".8.b.d.0.1.0.0.2"), "{v6}");
        assert_eq!(v6.split('.').count(), 32);
    }

    #[test]
    fn bad_names_are_errors_not_panics() {
        assert!(to_fqdn("").is_err());
        assert!(to_fqdn(&"a".repeat(300)).is_err());
        assert!(to_fqdn("exa mple..com").is_err());
    }

    #[test]
    fn void_means_nxdomain_or_nodata() {
        assert!(Answer::<()>::NxDomain.is_void());
        assert!(Answer::<()>::NoData.is_void());
        assert!(!Answer::<()>::Failed("x".into()).is_void());
        assert!(!Answer::Found(()).is_void());
    }
}
