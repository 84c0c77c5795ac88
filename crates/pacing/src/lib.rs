//! Retry policy, pacing controller per (egress IP × provider), and the flight simulator
//! that measures the controller against models of other MTAs (all pure: the caller
//! passes the time).
//!
//! The flow: the scheduler asks [`Pacing::try_send`] before each delivery attempt
//! (a held message is not an attempt), and feeds every attempt's [`Outcome`] back with
//! [`Pacing::on_outcome`]; each change of limits comes back as a [`PacingChange`]
//! carrying the reply that caused it. [`hold::DomainHolds`] holds mail to one tenant
//! that says it is over quota (a tenant deferral is not a reason to slow the path).
//!
//! [`flight`] is the flight simulator behind `mxpace bench pacing`: the same controller,
//! a Postfix-defaults model and a KumoMTA-default-rule model against one receiver, in
//! virtual time.

pub mod clock;
pub mod config;
pub mod controller;
pub mod flight;
pub mod hold;
pub mod path;
pub mod retry;
pub mod window;

pub use clock::Moment;
pub use config::{ConfigError, PacingConfig, PathConfig};
pub use controller::{
    Gate, Limits, Outcome, Pacing, PacingChange, PathPacing, PathSnapshot, PathState, Trigger,
};
pub use path::{Path, Stream};
pub use window::Band;
