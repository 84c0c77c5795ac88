//! The one result type every check returns, the report that gathers them, and the
//! orchestration that runs every check of a request in parallel on one DNS context.

use crate::dns::Dns;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// How a check came out. Ordered: `Pass < Warn < Fail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing to fix.
    Pass,
    /// Works, but a receiver may count it against you, or we could not tell.
    Warn,
    /// Broken: fix before sending more volume.
    Fail,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        })
    }
}

/// One check's verdict with the evidence it rests on and the fix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// Stable identifier, e.g. `spf.lookups` or `blocklist.zen.spamhaus.org`.
    pub id: String,
    /// pass, warn or fail.
    pub status: Status,
    /// One line a person can read.
    pub summary: String,
    /// The records and answers the verdict rests on, one item per fact.
    pub evidence: Vec<String>,
    /// What to change; empty when nothing needs changing.
    pub fix: String,
}

impl CheckResult {
    /// A result with no evidence and no fix yet.
    pub fn new(id: impl Into<String>, status: Status, summary: impl Into<String>) -> Self {
        CheckResult {
            id: id.into(),
            status,
            summary: summary.into(),
            evidence: Vec::new(),
            fix: String::new(),
        }
    }

    /// Adds evidence lines.
    pub fn evidence<I, S>(mut self, lines: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.evidence.extend(lines.into_iter().map(Into::into));
        self
    }

    /// Sets the fix.
    pub fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = fix.into();
        self
    }
}

/// Every check of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The domain checked.
    pub domain: String,
    /// The checks, in a stable order.
    pub checks: Vec<CheckResult>,
}

impl Report {
    /// The worst status of all checks (`Pass` when there are none).
    pub fn worst(&self) -> Status {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Pass)
    }

    /// The check with this id, if any.
    pub fn get(&self, id: &str) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.id == id)
    }
}

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct CheckRequest {
    /// The sending domain (envelope and header From domain).
    pub domain: String,
    /// The egress IPs that send for the domain.
    pub ips: Vec<IpAddr>,
    /// The name the MTA gives in EHLO.
    pub helo: Option<String>,
    /// DKIM selectors to look up.
    pub selectors: Vec<String>,
    /// A signed message to verify (raw RFC 5322 bytes).
    pub message: Option<Vec<u8>>,
    /// Blocklist zones to query; empty means none.
    pub blocklists: Vec<crate::dnsbl::Zone>,
}

/// Runs every check of `req` on one DNS context, lookups in parallel.
pub async fn run_checks(dns: &Dns, req: &CheckRequest) -> Report {
    let domain = crate::dns::normalize_name(&req.domain);
    let (spf, dkim_keys, dmarc, mx, hosts, policies, message, lists) = tokio::join!(
        crate::spf::check_all(dns, &domain, &req.ips, req.helo.as_deref()),
        crate::dkim::check_keys(dns, &domain, &req.selectors),
        crate::dmarc::check_all(dns, &domain),
        crate::host::check_mx(dns, &domain),
        crate::host::check_ips(dns, &req.ips, req.helo.as_deref()),
        crate::policy::check_all(dns, &domain),
        async {
            match &req.message {
                Some(raw) => crate::dkim::check_message(dns, &domain, raw).await,
                None => Vec::new(),
            }
        },
        crate::dnsbl::check_all(dns, &req.blocklists, &req.ips, &domain),
    );
    let mut checks = Vec::new();
    checks.extend(spf.checks);
    checks.extend(dkim_keys);
    checks.extend(message);
    checks.extend(dmarc);
    checks.push(mx);
    checks.extend(hosts);
    checks.extend(policies);
    let bulk = crate::dmarc::microsoft_bulk_sender(&checks);
    checks.push(bulk);
    checks.extend(lists.into_iter().map(|l| l.result));
    Report { domain, checks }
}

/// The current UTC time as RFC 3339 (seconds), for evidence and watch lines.
pub fn utc_now() -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}
