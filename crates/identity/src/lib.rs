//! Sender identity checks: SPF, DKIM, DMARC, rDNS, HELO, MX, MTA-STS, blocklists, SPF flattening.
//!
//! One [`dns::Dns`] context per run (one resolver, one cache, a timeout on every lookup);
//! one function per check, each returning a [`CheckResult`]. The verdicts are computed from
//! the answers gathered, so the same rules read the same whether the answer came from a real
//! server or a test.
//!
//! Check ids: `spf.record`, `spf.lookups` (with the per-include tree), `spf.void`, `spf.size`,
//! `spf.authorized[<ip>]`, `dkim.key[<selector>]`, `dkim.signature`, `dkim.alignment`,
//! `dmarc.record`, `dmarc.policy`, `dmarc.reporting`, `mx`, `rdns[<ip>]`, `helo`, `mta-sts`,
//! `tls-rpt`, `microsoft.bulk-sender`, `blocklist.<zone>[<ip or domain>]`.
//!
//! Knowledge as data: the blocklist zones and their return codes are `data/dnsbl.toml`
//! (embedded, overridable with `mxpace check --blocklists FILE`).
//!
//! Written here rather than taken from mail-auth (which evaluates SPF, DKIM and DMARC for
//! us): the SPF term parser and include-tree walker (lookup counts per include, void
//! lookups, loops), the flattener, the DER reader for RSA key sizes, the DMARC/MTA-STS/
//! TLS-RPT record checks with evidence, and a one-request HTTPS GET for the MTA-STS policy.

pub mod dkim;
pub mod dmarc;
pub mod dns;
pub mod dnsbl;
pub mod flatten;
pub mod host;
pub mod policy;
pub mod report;
pub mod spf;

pub use report::{CheckRequest, run_checks};
pub use report::{CheckResult, Report, Status};
