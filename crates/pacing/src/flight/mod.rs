//! The flight simulator: the real pacing controller (and models of Postfix and
//! KumoMTA) against a receiver model, in virtual time.
//!
//! The loop advances in steps of one simulated second while any message is ready, and
//! jumps straight to the next arrival or retry when none is — a discrete-time loop that
//! skips idle time. Each session delivers up to [`MSGS_PER_SESSION_SECOND`] messages a
//! second (a message takes about half a second on a session).

pub mod policy;
pub mod receiver;
pub mod scenario;

use crate::clock::Moment;
use crate::config::PacingConfig;
use crate::path::Stream;
use mxpace_reply::Verdict;
use policy::{Kumo, MessageView, Mxpace, Policy, Postfix, source_ip};
use rand::SeedableRng;
use rand::rngs::StdRng;
use receiver::{ModelReceiver, Receiver, Reply};
use scenario::Scenario;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};

/// Messages one session carries per simulated second.
pub const MSGS_PER_SESSION_SECOND: u32 = 2;

/// Policies compared, in report order.
pub const POLICIES: &[&str] = &["mxpace", "postfix", "kumomta"];

/// The figures of one policy on one scenario.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PolicyResult {
    /// Seconds until every message was delivered or expired (the horizon if not).
    pub completion_s: f64,
    /// Deferred attempts ÷ attempts (refused sessions count as deferred attempts).
    pub deferred_share: f64,
    /// Median delivery latency of transactional mail (None without any).
    pub p50_transactional_s: Option<f64>,
    /// 95th percentile delivery latency of transactional mail.
    pub p95_transactional_s: Option<f64>,
    /// Messages given up at max age.
    pub expired: u64,
    /// Messages the receiver accepted more than once (its ledger).
    pub duplicates: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Delivery attempts made.
    pub attempts: u64,
    /// Whether the queue emptied before the horizon.
    pub drained: bool,
}

/// One scenario's figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScenarioReport {
    /// Theoretical minimum completion time (fluid sender at the hidden budget).
    pub ideal_completion_s: f64,
    /// Messages in the scenario.
    pub messages: u64,
    /// The hidden receiver's parameters (the figures depend on them).
    pub receiver: receiver::ReceiverModel,
    /// Per policy.
    pub policies: BTreeMap<String, PolicyResult>,
}

/// The whole report (`mxpace bench pacing --json`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// Per scenario.
    pub scenarios: BTreeMap<String, ScenarioReport>,
    /// Seed of every random choice.
    pub seed: u64,
    /// Where verdicts came from: the reply classifier, or the receiver model's own labels
    /// for replies the classifier could not read (share of attempts).
    pub verdicts_from_receiver_labels: f64,
}

#[derive(Debug, Clone)]
struct Msg {
    arrival: f64,
    tenant: u16,
    ip: u8,
    stream: Stream,
    attempts: u32,
}

/// Classifies replies with the reply crate; where it can only fall back on the basic
/// code and the receiver model says what it meant, the model's meaning is used.
#[derive(Default)]
struct Classifier {
    cache: HashMap<String, (Verdict, bool)>,
    labelled: u64,
    total: u64,
}

impl Classifier {
    fn verdict(&mut self, r: &Reply) -> Verdict {
        self.total += 1;
        let key = r.key.as_deref().unwrap_or(&r.text);
        if let Some((v, labelled)) = self.cache.get(key) {
            self.labelled += u64::from(*labelled);
            return v.clone();
        }
        let v = mxpace_reply::explain(&r.text, None);
        let (v, labelled) = match (&r.meaning, v.fallback) {
            (Some(m), true) => (m.clone(), true),
            _ => (v, false),
        };
        self.labelled += u64::from(labelled);
        self.cache.insert(
            r.key.clone().unwrap_or_else(|| r.text.clone()),
            (v.clone(), labelled),
        );
        v
    }
}

/// Build a policy by name.
pub fn policy(name: &str, scenario: &Scenario, config: &PacingConfig) -> Option<Box<dyn Policy>> {
    Some(match name {
        "mxpace" => Box::new(Mxpace::new(config.clone(), scenario.ips)),
        "postfix" => Box::new(Postfix::new(scenario.ips, scenario.tenants)),
        "kumomta" => Box::new(Kumo::new(scenario.ips, scenario.tenants)),
        _ => return None,
    })
}

/// Run one policy on one scenario against the model receiver.
pub fn run(scenario: &Scenario, policy: &mut dyn Policy, seed: u64) -> (PolicyResult, f64) {
    let mut receiver = ModelReceiver::new(scenario.receiver.clone(), seed);
    run_with(scenario, policy, &mut receiver, seed)
}

/// Run one policy on one scenario against any [`Receiver`]. Returns the figures and the
/// share of verdicts taken from the receiver's labels.
pub fn run_with(
    scenario: &Scenario,
    policy: &mut dyn Policy,
    receiver: &mut dyn Receiver,
    seed: u64,
) -> (PolicyResult, f64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut classifier = Classifier::default();
    let total = scenario.messages();
    let mut msgs: Vec<Msg> = (0..total)
        .map(|i| {
            let (arrival, stream) = scenario.arrival(i);
            Msg {
                arrival,
                tenant: scenario.tenant_of(i) as u16,
                ip: (i % scenario.ips as u64) as u8,
                stream,
                attempts: 0,
            }
        })
        .collect();
    let mut order: Vec<u32> = (0..total as u32).collect();
    order.sort_by(|a, b| {
        msgs[*a as usize]
            .arrival
            .total_cmp(&msgs[*b as usize].arrival)
    });
    let tenant_names: Vec<String> = (0..scenario.tenants).map(|t| format!("t{t}")).collect();
    let sources: Vec<_> = (0..scenario.ips).map(source_ip).collect();
    let nq = scenario.ips * scenario.tenants;
    let mut ready: Vec<[VecDeque<u32>; 2]> = (0..nq)
        .map(|_| [VecDeque::new(), VecDeque::new()])
        .collect();
    let mut ready_count: u64 = 0;
    let mut retries: BinaryHeap<Reverse<(u64, u32)>> = BinaryHeap::new();
    let mut next_arrival = 0usize;
    let (mut delivered, mut expired, mut attempts, mut deferred) = (0u64, 0u64, 0u64, 0u64);
    let mut latencies: Vec<f64> = Vec::new();
    let mut finished_at = 0.0f64;
    let max_age = policy.max_age().as_secs_f64();
    let mut now_s: u64 = 0;
    let lane = |s: Stream| usize::from(s != Stream::Transactional);

    while delivered + expired < total && (now_s as f64) <= scenario.horizon_secs {
        let now = Moment::from_secs(now_s);
        while next_arrival < order.len()
            && msgs[order[next_arrival] as usize].arrival <= now_s as f64
        {
            let id = order[next_arrival];
            let m = &msgs[id as usize];
            ready[m.ip as usize * scenario.tenants + m.tenant as usize][lane(m.stream)]
                .push_back(id);
            ready_count += 1;
            next_arrival += 1;
        }
        while let Some(Reverse((due_ms, id))) = retries.peek().copied() {
            if due_ms > now.0 {
                break;
            }
            retries.pop();
            let m = &msgs[id as usize];
            ready[m.ip as usize * scenario.tenants + m.tenant as usize][lane(m.stream)]
                .push_back(id);
            ready_count += 1;
        }
        policy.tick(now);
        let mut open_for_ip = vec![0u32; scenario.ips];
        let start = (now_s as usize) % scenario.tenants;
        for ip in 0..scenario.ips {
            for k in 0..scenario.tenants {
                let tenant = (start + k) % scenario.tenants;
                let q = ip * scenario.tenants + tenant;
                if ready[q][0].is_empty() && ready[q][1].is_empty() {
                    continue;
                }
                let sessions = policy.sessions(ip, tenant, open_for_ip[ip], now);
                let capacity = sessions * MSGS_PER_SESSION_SECOND;
                let (mut sent, mut opened) = (0u32, 0u32);
                // Transactional mail first, then the rest (bulk and cold share a lane).
                'lanes: for l in [0usize, 1] {
                    while sent < capacity {
                        let Some(&id) = ready[q][l].front() else {
                            break;
                        };
                        let stream = msgs[id as usize].stream;
                        if !policy.admit(ip, tenant, stream, now) {
                            break;
                        }
                        ready[q][l].pop_front();
                        ready_count -= 1;
                        attempts += 1;
                        msgs[id as usize].attempts += 1;
                        let reply = if sent >= opened * MSGS_PER_SESSION_SECOND {
                            let greeting =
                                receiver.connect(sources[ip], &tenant_names[tenant], now);
                            if greeting.is_ok() {
                                opened += 1;
                                open_for_ip[ip] += 1;
                                None
                            } else {
                                Some(greeting)
                            }
                        } else {
                            None
                        };
                        let refused = reply.is_some();
                        let reply = reply.unwrap_or_else(|| {
                            receiver.deliver(sources[ip], &tenant_names[tenant], u64::from(id), now)
                        });
                        let v = classifier.verdict(&reply);
                        if refused {
                            policy.on_connect_refused(ip, tenant, &reply, &v, now);
                        } else {
                            policy.on_reply(ip, tenant, &reply, &v, now);
                        }
                        sent += 1;
                        let m = &msgs[id as usize];
                        if reply.is_ok() {
                            delivered += 1;
                            finished_at = finished_at.max(now_s as f64);
                            if m.stream == Stream::Transactional {
                                latencies.push(now_s as f64 - m.arrival);
                            }
                        } else {
                            deferred += 1;
                            if now_s as f64 - m.arrival >= max_age || reply.code >= 500 {
                                expired += 1;
                                finished_at = finished_at.max(now_s as f64);
                            } else {
                                let view = MessageView {
                                    arrival: m.arrival,
                                    attempts: m.attempts,
                                    stream: m.stream,
                                };
                                let due = policy
                                    .retry_at(view, now, &mut rng)
                                    .max(Moment(now.0 + 1000));
                                retries.push(Reverse((due.0, id)));
                            }
                        }
                        if refused {
                            break 'lanes;
                        }
                    }
                }
                for _ in 0..opened {
                    receiver.close(sources[ip], now);
                }
            }
        }
        // Messages waiting past their max age in a ready queue expire too.
        if ready_count > 0 && now_s.is_multiple_of(600) {
            for lanes in ready.iter_mut() {
                for dq in lanes.iter_mut() {
                    dq.retain(|&id| {
                        let keep = now_s as f64 - msgs[id as usize].arrival < max_age;
                        if !keep {
                            expired += 1;
                            ready_count -= 1;
                            finished_at = finished_at.max(now_s as f64);
                        }
                        keep
                    });
                }
            }
        }
        now_s = if ready_count > 0 {
            now_s + 1
        } else {
            let next_arr = order
                .get(next_arrival)
                .map(|&id| msgs[id as usize].arrival.ceil() as u64);
            let next_retry = retries.peek().map(|Reverse((ms, _))| ms.div_ceil(1000));
            match (next_arr, next_retry) {
                (Some(a), Some(r)) => a.min(r),
                (Some(a), None) => a,
                (None, Some(r)) => r,
                (None, None) => now_s + 1,
            }
            .max(now_s + 1)
        };
    }
    let drained = delivered + expired >= total;
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| -> Option<f64> {
        if latencies.is_empty() {
            return None;
        }
        let rank = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        Some(latencies[rank - 1])
    };
    let result = PolicyResult {
        completion_s: if drained {
            finished_at + 1.0
        } else {
            scenario.horizon_secs
        },
        deferred_share: if attempts == 0 {
            0.0
        } else {
            deferred as f64 / attempts as f64
        },
        p50_transactional_s: pct(0.50),
        p95_transactional_s: pct(0.95),
        expired: expired
            + if drained {
                0
            } else {
                total - delivered - expired
            },
        duplicates: receiver.duplicates(),
        delivered,
        attempts,
        drained,
    };
    let labelled = if classifier.total == 0 {
        0.0
    } else {
        classifier.labelled as f64 / classifier.total as f64
    };
    (result, labelled)
}

/// Run `scenarios` × [`POLICIES`] with `seed` against the simulator's own model receiver.
pub fn run_all(scenarios: &[Scenario], config: &PacingConfig, seed: u64) -> Report {
    run_all_with(scenarios, config, seed, &mut |s, seed| {
        Box::new(ModelReceiver::new(s.receiver.clone(), seed))
    })
}

/// A fresh receiver for one run of a scenario.
pub type ReceiverFactory<'a> = dyn FnMut(&Scenario, u64) -> Box<dyn Receiver> + 'a;

/// Run `scenarios` × [`POLICIES`] with `seed`, each run against a fresh receiver from
/// `receiver` (the same seed for every policy: same receiver draws).
pub fn run_all_with(
    scenarios: &[Scenario],
    config: &PacingConfig,
    seed: u64,
    receiver: &mut ReceiverFactory<'_>,
) -> Report {
    let mut report = Report {
        scenarios: BTreeMap::new(),
        seed,
        verdicts_from_receiver_labels: 0.0,
    };
    let (mut labelled_sum, mut runs) = (0.0, 0.0);
    for s in scenarios {
        let mut policies = BTreeMap::new();
        for name in POLICIES {
            let mut p = policy(name, s, config).expect("known policy");
            let mut rx = receiver(s, seed);
            let (r, labelled) = run_with(s, p.as_mut(), rx.as_mut(), seed);
            labelled_sum += labelled;
            runs += 1.0;
            policies.insert(name.to_string(), r);
        }
        report.scenarios.insert(
            s.name.clone(),
            ScenarioReport {
                ideal_completion_s: s.ideal_completion_secs(),
                messages: s.messages(),
                receiver: s.receiver.clone(),
                policies,
            },
        );
    }
    report.verdicts_from_receiver_labels = if runs > 0.0 { labelled_sum / runs } else { 0.0 };
    report
}
