//! Receiver simulator: a pure receiver model ([`Receiver`]) driven by a clock passed in,
//! receiver [`Profile`]s as data (Exchange Online, Gmail, Yahoo, a fast sink, a scripted
//! receiver), and the SMTP server and ledger around it.
//!
//! The model is what the pacing flight simulator runs in virtual time:
//!
//! ```
//! use mxpace_sim::{Profile, Receiver};
//! use std::time::Duration;
//!
//! let mut mx = Receiver::new(Profile::builtin("microsoft").unwrap(), 7);
//! let ip = "127.0.0.2".parse().unwrap();
//! let now = Duration::ZERO;
//! let (s, banner) = mx.connect(now, ip, "127.0.0.1:2525").unwrap();
//! assert_eq!(banner.code, 220);
//! mx.ehlo(now, s, "client.test");
//! assert_eq!(mx.mail_from(now, s, "a@sender.test").code, 250);
//! assert_eq!(mx.rcpt(now, s, "b@contoso.test").code, 250);
//! assert_eq!(mx.data(now, s).code, 354);
//! let out = mx.data_end(now, s, Some("<1@sender.test>"));
//! assert_eq!(out.reply.code, 250);
//! assert_eq!(out.accepted, vec!["b@contoso.test".to_string()]);
//! mx.close(now, s);
//! ```

mod budget;
pub mod ledger;
mod model;
pub mod profile;
mod reply;
mod script;
pub mod server;
mod template;

pub use model::{DataOutcome, Receiver, SessionId, SimTime};
pub use profile::{Profile, ProfileError};
pub use reply::{After, Reason, Reply, ReplySpec};
pub use script::Directive;
pub use template::{Template, TemplateError};
