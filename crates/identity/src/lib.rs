//! Sender identity checks: SPF, DKIM, DMARC, rDNS, HELO, MX, MTA-STS, blocklists, SPF flattening.
//!
//! One [`dns::Dns`] context per run (one resolver, one cache, a timeout on every lookup);
//! one function per check, each returning a [`CheckResult`]. The verdicts are computed from
//! the answers gathered, so the same rules read the same whether the answer came from a real
//! server or a test.

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
