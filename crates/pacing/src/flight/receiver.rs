//! The receiver side of the flight simulator: a small trait the loop talks to, and a
//! compact Exchange-Online-like model of our own for the scenarios and unit tests.
//!
//! The model follows the semantics of the `mxpace sim` Microsoft profile
//! (crates/sim/profiles/microsoft.toml: per-IP message budget as a token bucket, a
//! penalty once it is spent that grows with every attempt made while throttled, a
//! per-IP connection cap, new-IP warm-up, tenant pressure, incidents). The numbers are
//! ours: Microsoft publishes none (research/smtp-replies.md §1.2, §1.5).

use crate::clock::Moment;
use mxpace_reply::{Action, Category, Scope, Stage, Throttle, Verdict};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::net::IpAddr;

/// One reply from the receiver.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// Basic code.
    pub code: u16,
    /// Full text, code included.
    pub text: String,
    /// Stage it answered.
    pub stage: Stage,
    /// What the model meant, for use while the reply classifier cannot yet read the text.
    pub meaning: Option<Verdict>,
    /// Replies with the same key classify alike (their texts differ only in ids and
    /// timestamps); the simulator classifies one per key. None: the text is the key.
    pub key: Option<String>,
}

impl Reply {
    /// Whether the reply accepts.
    pub fn is_ok(&self) -> bool {
        (200..400).contains(&self.code)
    }
}

/// A receiver the flight simulator can drive. Time is passed in; implementations
/// must not read a clock.
pub trait Receiver {
    /// A session from `source` to a host of `tenant` opens: the greeting (220) or a refusal.
    fn connect(&mut self, source: IpAddr, tenant: &str, now: Moment) -> Reply;
    /// One message `id` with one recipient at `tenant` in an open session: the reply
    /// that decided it (RCPT or end of DATA).
    fn deliver(&mut self, source: IpAddr, tenant: &str, id: u64, now: Moment) -> Reply;
    /// A session of `source` closes.
    fn close(&mut self, source: IpAddr, now: Moment);
    /// Messages accepted more than once (from the receiver's ledger).
    fn duplicates(&self) -> u64;
}

/// Hidden receiver parameters of a scenario.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReceiverModel {
    /// Messages per minute per source IP once warm.
    pub per_ip_rate: f64,
    /// Bucket size (messages).
    pub burst: f64,
    /// Concurrent sessions per source IP.
    pub per_ip_connections: u32,
    /// Seconds an IP stays throttled once its budget is spent.
    pub penalty_secs: f64,
    /// Seconds added for each attempt made while throttled.
    pub retry_penalty_secs: f64,
    /// Longest throttle from now.
    pub max_penalty_secs: f64,
    /// New-IP warm-up: (rate per minute on day 0, growth per day); None when warm.
    pub warmup: Option<(f64, f64)>,
    /// Tenant pressure: (tenant, from s, to s) — every RCPT to it is deferred.
    pub tenant_pressure: Option<(String, f64, f64)>,
    /// Incident: (share of deliveries deferred, from s, to s), provider-wide.
    pub incident: Option<(f64, f64, f64)>,
}

impl ReceiverModel {
    /// The budget of one IP at `t` seconds, in messages per second.
    pub fn rate_per_sec(&self, t: f64) -> f64 {
        let warm = self.per_ip_rate / 60.0;
        match self.warmup {
            Some((start, growth)) => (start / 60.0 * (1.0 + growth).powf(t / 86_400.0)).min(warm),
            None => warm,
        }
    }
}

#[derive(Debug, Clone)]
struct IpState {
    ip: IpAddr,
    tokens: f64,
    last: f64,
    throttled_until: f64,
    sessions: u32,
}

/// The model receiver (see the module doc).
#[derive(Debug)]
pub struct ModelReceiver {
    model: ReceiverModel,
    ips: Vec<IpState>,
    accepted: HashSet<u64>,
    duplicates: u64,
    rng: StdRng,
}

const HOST: &str = "BL6PEPF0001AB50.namprd04.prod.outlook.com";

impl ModelReceiver {
    /// A receiver with `model`, its random choices seeded by `seed`.
    pub fn new(model: ReceiverModel, seed: u64) -> ModelReceiver {
        ModelReceiver {
            model,
            ips: Vec::new(),
            accepted: HashSet::new(),
            duplicates: 0,
            rng: StdRng::seed_from_u64(seed ^ 0x5EED_F0E0),
        }
    }

    fn ip_state(&mut self, ip: IpAddr, now: f64) -> usize {
        if let Some(i) = self.ips.iter().position(|s| s.ip == ip) {
            return i;
        }
        let burst = self.model.burst;
        self.ips.push(IpState {
            ip,
            tokens: burst,
            last: now,
            throttled_until: 0.0,
            sessions: 0,
        });
        self.ips.len() - 1
    }

    fn throttle_reply(ip: IpAddr, stage: Stage) -> Reply {
        let text = format!(
            "451 4.7.500 Server busy. Please try again later from [{ip}]. (S77714) [{HOST}]"
        );
        Reply {
            code: 451,
            stage,
            key: None,
            meaning: Some(Verdict {
                code: Some(451),
                enhanced: Some("4.7.500".into()),
                stage: Some(stage),
                action: Action::Retry,
                category: Category::Throttling,
                scope: Scope::SendingIp,
                provider: "microsoft".into(),
                throttle: Throttle::SlowDown,
                ips: vec![ip],
                tokens: vec!["S77714".into()],
                text: text.clone(),
                ..Verdict::default()
            }),
            text,
        }
    }
}

impl Receiver for ModelReceiver {
    fn connect(&mut self, source: IpAddr, _tenant: &str, now: Moment) -> Reply {
        let t = now.as_secs_f64();
        let i = self.ip_state(source, t);
        let cap = self.model.per_ip_connections;
        if cap > 0 && self.ips[i].sessions >= cap {
            let text = format!(
                "421 4.7.652 The mail server [{source}] has exceeded the maximum number of connections. (S3115) [{HOST}]"
            );
            return Reply {
                code: 421,
                stage: Stage::Connect,
                key: None,
                meaning: Some(Verdict {
                    code: Some(421),
                    enhanced: Some("4.7.652".into()),
                    stage: Some(Stage::Connect),
                    category: Category::Capacity,
                    scope: Scope::SendingIp,
                    provider: "microsoft".into(),
                    throttle: Throttle::SlowDown,
                    ips: vec![source],
                    tokens: vec!["S3115".into()],
                    text: text.clone(),
                    ..Verdict::default()
                }),
                text,
            };
        }
        self.ips[i].sessions += 1;
        Reply {
            code: 220,
            text: format!("220 {HOST} Microsoft ESMTP MAIL Service ready"),
            stage: Stage::Connect,
            meaning: None,
            key: None,
        }
    }

    fn deliver(&mut self, source: IpAddr, tenant: &str, id: u64, now: Moment) -> Reply {
        let t = now.as_secs_f64();
        let i = self.ip_state(source, t);
        if let Some((share, from, to)) = self.model.incident
            && (from..to).contains(&t)
            && self.rng.random_bool(share.clamp(0.0, 1.0))
        {
            // During a provider-side incident the sender sees the same S77714 text.
            return Self::throttle_reply(source, Stage::Rcpt);
        }
        if let Some((pressed, from, to)) = &self.model.tenant_pressure
            && pressed == tenant
            && (*from..*to).contains(&t)
        {
            let text = "450 4.7.3 Organization queue quota exceeded.".to_string();
            return Reply {
                code: 450,
                stage: Stage::Rcpt,
                key: None,
                meaning: Some(Verdict {
                    code: Some(450),
                    enhanced: Some("4.7.3".into()),
                    stage: Some(Stage::Rcpt),
                    category: Category::Capacity,
                    scope: Scope::Domain,
                    provider: "microsoft".into(),
                    throttle: Throttle::None,
                    text: text.clone(),
                    ..Verdict::default()
                }),
                text,
            };
        }
        let rate = self.model.rate_per_sec(t);
        let m = &self.model;
        let s = &mut self.ips[i];
        s.tokens = (s.tokens + (t - s.last).max(0.0) * rate).min(m.burst.max(1.0));
        s.last = t;
        if t < s.throttled_until {
            s.throttled_until =
                (s.throttled_until + m.retry_penalty_secs).min(t + m.max_penalty_secs);
            return Self::throttle_reply(source, Stage::Rcpt);
        }
        if s.tokens < 1.0 {
            s.throttled_until = t + m.penalty_secs;
            return Self::throttle_reply(source, Stage::Rcpt);
        }
        s.tokens -= 1.0;
        if !self.accepted.insert(id) {
            self.duplicates += 1;
        }
        Reply {
            code: 250,
            text: "250 2.6.0 Queued mail for delivery".into(),
            stage: Stage::EndOfData,
            meaning: None,
            key: None,
        }
    }

    fn close(&mut self, source: IpAddr, _now: Moment) {
        if let Some(s) = self.ips.iter_mut().find(|s| s.ip == source) {
            s.sessions = s.sessions.saturating_sub(1);
        }
    }

    fn duplicates(&self) -> u64 {
        self.duplicates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ReceiverModel {
        ReceiverModel {
            per_ip_rate: 60.0,
            burst: 5.0,
            per_ip_connections: 2,
            penalty_secs: 60.0,
            retry_penalty_secs: 10.0,
            max_penalty_secs: 600.0,
            warmup: None,
            tenant_pressure: None,
            incident: None,
        }
    }

    #[test]
    fn the_budget_is_per_ip_and_a_spent_budget_throttles_that_ip_only() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let mut r = ModelReceiver::new(model(), 1);
        let t0 = Moment::from_secs(0);
        let codes: Vec<u16> = (0..7).map(|i| r.deliver(a, "t1", i, t0).code).collect();
        assert_eq!(codes, [250, 250, 250, 250, 250, 451, 451]);
        assert_eq!(r.deliver(b, "t2", 100, t0).code, 250);
        // Throttled for 60 s plus 10 s for the attempt made while throttled.
        assert_eq!(r.deliver(a, "t1", 7, Moment::from_secs(65)).code, 451);
        assert_eq!(r.deliver(a, "t1", 8, Moment::from_secs(200)).code, 250);
    }

    #[test]
    fn the_connection_cap_refuses_with_421_and_the_ledger_counts_duplicates() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let mut r = ModelReceiver::new(model(), 1);
        let t0 = Moment::from_secs(0);
        assert_eq!(r.connect(a, "t", t0).code, 220);
        assert_eq!(r.connect(a, "t", t0).code, 220);
        assert_eq!(r.connect(a, "t", t0).code, 421);
        r.close(a, t0);
        assert_eq!(r.connect(a, "t", t0).code, 220);
        r.deliver(a, "t", 1, t0);
        r.deliver(a, "t", 1, t0);
        assert_eq!(r.duplicates(), 1);
    }
}
