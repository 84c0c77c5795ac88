//! The pacing gate: sits between "due" and "sent". [`crate::pacing_gate::ControllerGate`]
//! (the pacing controller of crates/pacing behind a lock) is the relay's default;
//! [`PassThrough`] lets everything through (`[pacing] enabled = false`).
//!
//! A message the gate holds is put back with a new due time and its attempt
//! count unchanged: our own pacing is not a delivery attempt.

use mxpace_pacing::{PacingChange, PathSnapshot};
use mxpace_reply::Verdict;
use std::net::IpAddr;

/// The unit of pacing: one egress IP towards one provider.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathKey {
    /// `None` when no source pool is configured (the OS picks the address).
    pub source_ip: Option<IpAddr>,
    /// `microsoft`, `google`, … or the MX host's domain when unknown.
    pub provider: String,
}

/// What the gate says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateDecision {
    Go,
    /// Not now; ask again at this time (ms since the epoch).
    HoldUntil(i64),
}

/// How an attempt on a path ended, reported back to the gate.
#[derive(Debug, Clone)]
pub struct GateOutcome<'a> {
    pub path: &'a PathKey,
    pub now_ms: i64,
    /// The classified reply; `None` for a connection failure without reply.
    pub verdict: Option<&'a Verdict>,
    pub connection_failed: bool,
}

/// Decides whether a connection or a message may start on a path.
pub trait PacingGate: Send + Sync {
    /// May a new connection to this path be opened now?
    fn may_connect(&self, path: &PathKey, now_ms: i64) -> GateDecision;
    /// May a new connection to this path be opened now for a message of `stream`?
    /// Gates that pace streams apart override this, so that no connection is opened
    /// that pacing would not let carry the message; the default ignores the stream.
    fn may_connect_stream(&self, path: &PathKey, _stream: &str, now_ms: i64) -> GateDecision {
        self.may_connect(path, now_ms)
    }
    /// A message held until `until_ms` goes back to the queue: when should it be due
    /// again? Gates spread many held messages over the path's rate here, so they do
    /// not all come back at once; the default keeps `until_ms`.
    fn release_slot(&self, _path: &PathKey, until_ms: i64) -> i64 {
        until_ms
    }
    /// May one more message be sent on this path now?
    fn may_send(&self, path: &PathKey, now_ms: i64) -> GateDecision;
    /// May one more message of `stream` (`transactional`, `bulk`, `cold` or a
    /// campaign name) be sent on this path now? Gates that pace streams apart
    /// override this; the default ignores the stream.
    fn may_send_stream(&self, path: &PathKey, _stream: &str, now_ms: i64) -> GateDecision {
        self.may_send(path, now_ms)
    }
    /// An attempt on the path ended.
    fn record(&self, outcome: GateOutcome<'_>);
    /// A connection the gate said Go to for `reserved` is up, on `path` (the
    /// greeting may have named another provider than the MX host suggested). A Go
    /// from `may_connect*` counts the connection as open from that moment; a connect
    /// that then fails gives it back with [`PacingGate::closed`] on `reserved`.
    fn opened(&self, _reserved: &PathKey, _path: &PathKey) {}
    /// A connection on the path closed (so concurrency can be given back).
    fn closed(&self, _path: &PathKey) {}
    /// Messages one connection on the path may carry now; `None`: the relay's own limit.
    fn per_connection(&self, _path: &PathKey) -> Option<usize> {
        None
    }
    /// Changes of limits or state since the last call, oldest first (written to
    /// the event log as `type: "pacing"`).
    fn take_changes(&self) -> Vec<PacingChange> {
        Vec::new()
    }
    /// The last receiver reply that moved the path's limits or state, with its time
    /// (ms since the epoch).
    fn last_reply(&self, _path: &mxpace_pacing::Path) -> Option<(i64, String)> {
        None
    }
    /// Every known path's visible state (`GET /v1/pacing`).
    fn snapshot(&self, _now_ms: i64) -> Vec<PathSnapshot> {
        Vec::new()
    }
    /// An operator pauses (stops until resumed) or resumes a known path.
    fn operator(
        &self,
        _path: &mxpace_pacing::Path,
        _action: OperatorAction,
        _now_ms: i64,
    ) -> Result<(), OperatorError> {
        Err(OperatorError::NotPacing)
    }
}

/// What an operator does to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorAction {
    /// Stop the path until resumed.
    Pause,
    /// Let the path send again, ramping from its floor.
    Resume,
}

/// Why an operator action was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OperatorError {
    /// The relay runs without the pacing controller.
    #[error("pacing is disabled in this relay ([pacing] enabled = false)")]
    NotPacing,
    /// No such path has been used since the relay started.
    #[error("unknown path {path}; known paths: {known}")]
    UnknownPath { path: String, known: String },
}

/// The default gate: never holds anything.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThrough;

impl PacingGate for PassThrough {
    fn may_connect(&self, _: &PathKey, _: i64) -> GateDecision {
        GateDecision::Go
    }
    fn may_send(&self, _: &PathKey, _: i64) -> GateDecision {
        GateDecision::Go
    }
    fn record(&self, _: GateOutcome<'_>) {}
}
