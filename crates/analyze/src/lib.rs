//! Triage of MTA logs: read events, segment deferrals by sending IP, domains, provider,
//! receiving host/region, stream and reply template; band the deferral rates; group
//! deferrals into incidents with a verdict (sender-side, provider-side, tenant-side,
//! mixed, unclear) and the evidence; flag anti-patterns; measure queue health; render
//! terminal, JSON, Markdown and HTML reports.
//!
//! The core ([`Analyzer`], [`triage`]) is pure: events in, decisions out, time only from
//! the events. [`run`] is the shell that reads files.

pub mod aggregate;
pub mod generate;
pub mod knowledge;
pub mod recent;
pub mod render;
pub mod report;
pub mod run;
pub mod svg;
pub mod template;
pub mod triage;

pub use aggregate::{Analyzer, Config, Counts, Dimension, Tally};
pub use knowledge::{Bands, Providers};
pub use report::{Band, Report};
pub use triage::Verdict;
