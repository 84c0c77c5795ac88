//! The scheduler: takes due recipients from the queue, hands them to
//! per-domain workers that keep connections open and send several messages
//! per session. The pacing gate is asked before each connection and message.

use crate::egress::{Session, SessionError};
use crate::gate::{GateDecision, GateOutcome, PathKey};
use crate::queue::Job;
use crate::routes::{RouteError, Router};
use crate::service::{self, AttemptContext, RcptResult, Shared, now_ms};
use mxpace_reply::explain;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// How long an idle worker keeps its connection for more mail.
const IDLE_KEEP: Duration = Duration::from_secs(2);
/// Most jobs taken from the queue per dispatch round.
const MAX_JOBS_PER_ROUND: usize = 2000;

/// An open session with what it was opened for, holding an outbound slot.
type Conn = (Session, AttemptContext, PathKey, OwnedSemaphorePermit);

struct DomainQueue {
    jobs: Mutex<VecDeque<Job>>,
    notify: Notify,
    workers: AtomicUsize,
}

struct Scheduler {
    shared: Arc<Shared>,
    router: Arc<Router>,
    tls: Arc<rustls::ClientConfig>,
    domains: Mutex<HashMap<String, Arc<DomainQueue>>>,
    outbound: Arc<Semaphore>,
    next_source: AtomicUsize,
}

/// Run the scheduler until the task is dropped.
pub async fn run(shared: Arc<Shared>, router: Arc<Router>, tls: Arc<rustls::ClientConfig>) {
    let sched = Arc::new(Scheduler {
        outbound: Arc::new(Semaphore::new(shared.config.relay.max_outbound)),
        shared,
        router,
        tls,
        domains: Mutex::new(HashMap::new()),
        next_source: AtomicUsize::new(0),
    });
    loop {
        let now = now_ms();
        let jobs = sched.shared.queue().take_due(now, MAX_JOBS_PER_ROUND);
        let full_round = jobs.len() >= MAX_JOBS_PER_ROUND;
        for job in jobs {
            sched.enqueue(job);
        }
        sched.ensure_workers();
        if full_round {
            tokio::task::yield_now().await;
            continue;
        }
        let next = sched.shared.queue().next_due();
        let wait = next
            .map(|t| Duration::from_millis((t - now_ms()).clamp(0, 1000) as u64))
            .unwrap_or(Duration::from_secs(1));
        let _ = tokio::time::timeout(wait, sched.shared.wake.notified()).await;
    }
}

impl Scheduler {
    fn enqueue(&self, job: Job) {
        let dq = {
            let mut d = self.domains.lock().unwrap_or_else(|p| p.into_inner());
            d.entry(job.domain.clone())
                .or_insert_with(|| {
                    Arc::new(DomainQueue {
                        jobs: Mutex::new(VecDeque::new()),
                        notify: Notify::new(),
                        workers: AtomicUsize::new(0),
                    })
                })
                .clone()
        };
        dq.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(job);
        dq.notify.notify_one();
    }

    /// Start workers where jobs wait and the per-domain limit allows.
    fn ensure_workers(self: &Arc<Self>) {
        let limit = self.shared.config.relay.connections_per_domain.max(1);
        let domains: Vec<(String, Arc<DomainQueue>)> = {
            let d = self.domains.lock().unwrap_or_else(|p| p.into_inner());
            d.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        for (domain, dq) in domains {
            let pending = dq.jobs.lock().unwrap_or_else(|p| p.into_inner()).len();
            loop {
                let w = dq.workers.load(Ordering::SeqCst);
                if w >= limit || w >= pending {
                    break;
                }
                if dq
                    .workers
                    .compare_exchange(w, w + 1, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    let me = self.clone();
                    let dq = dq.clone();
                    let domain = domain.clone();
                    tokio::spawn(async move {
                        me.worker(&domain, &dq).await;
                        dq.workers.fetch_sub(1, Ordering::SeqCst);
                        // A job may have arrived while this worker was leaving.
                        me.shared.wake.notify_one();
                    });
                }
            }
        }
    }

    fn pick_source(&self, family_v4: bool) -> Option<(IpAddr, String)> {
        let sources = &self.shared.config.source;
        let fitting: Vec<_> = sources
            .iter()
            .filter(|s| s.ip.is_ipv4() == family_v4)
            .collect();
        if fitting.is_empty() {
            return None;
        }
        let i = self.next_source.fetch_add(1, Ordering::Relaxed) % fitting.len();
        Some((fitting[i].ip, fitting[i].ehlo.clone()))
    }

    async fn worker(&self, domain: &str, dq: &DomainQueue) {
        let mut conn: Option<Conn> = None;
        let mut sent = 0usize;
        loop {
            let next = dq
                .jobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front();
            let job = match next {
                Some(j) => j,
                None => {
                    if tokio::time::timeout(IDLE_KEEP, dq.notify.notified())
                        .await
                        .is_err()
                    {
                        break;
                    }
                    continue;
                }
            };
            if conn.is_none() {
                match self.connect(domain, &job).await {
                    Ok(c) => {
                        conn = Some(c);
                        sent = 0;
                    }
                    Err(()) => continue,
                }
            }
            let Some((session, ctx, path, _)) = conn.as_mut() else {
                continue;
            };
            let ok = self.deliver(session, ctx, path, &job).await;
            sent += 1;
            if (!ok || sent >= self.shared.config.relay.messages_per_connection)
                && let Some((s, _, p, _permit)) = conn.take()
            {
                self.shared.gate.closed(&p);
                if ok {
                    s.quit().await;
                }
            }
        }
        if let Some((s, _, p, _permit)) = conn.take() {
            self.shared.gate.closed(&p);
            s.quit().await;
        }
    }

    /// Open a session for `domain`, trying MX hosts in order. On failure the
    /// job's recipients are finished (retry or bounce) and `Err` is returned.
    async fn connect(&self, domain: &str, job: &Job) -> Result<Conn, ()> {
        let targets = match self.router.resolve(domain).await {
            Ok(t) => t,
            Err(e) => {
                let result = if e.is_permanent() {
                    local_reply(&e)
                } else {
                    RcptResult::ConnectionFailed {
                        error: e.to_string(),
                    }
                };
                self.finish_all(job, result, &AttemptContext::default())
                    .await;
                return Err(());
            }
        };
        let Ok(permit) = self.outbound.clone().acquire_owned().await else {
            return Err(());
        };
        let mut last: Option<(RcptResult, AttemptContext)> = None;
        for target in &targets {
            for addr in &target.addrs {
                let source = self.pick_source(addr.is_ipv4());
                let ehlo = source
                    .as_ref()
                    .map(|(_, e)| e.clone())
                    .unwrap_or_else(|| self.shared.config.relay.hostname.clone());
                let path = PathKey {
                    source_ip: source.as_ref().map(|(ip, _)| *ip),
                    provider: provider_of(&target.host, None),
                };
                let mut ctx = AttemptContext {
                    source_ip: path.source_ip,
                    ehlo: Some(ehlo.clone()),
                    mx_host: Some(target.host.clone()),
                    peer_ip: Some(addr.ip()),
                    provider: Some(path.provider.clone()),
                    tls: false,
                };
                if let GateDecision::HoldUntil(t) = self.shared.gate.may_connect(&path, now_ms()) {
                    self.finish_all(job, RcptResult::Held { until_ms: t }, &ctx)
                        .await;
                    return Err(());
                }
                let opened = Session::open(
                    *addr,
                    path.source_ip,
                    &ehlo,
                    &target.host,
                    Some(self.tls.clone()),
                    self.shared.config.relay.smtp_timeout,
                )
                .await;
                match opened {
                    Ok(s) => {
                        let provider = provider_of(&target.host, Some(&s.greeting.text()));
                        let path = PathKey {
                            provider: provider.clone(),
                            ..path
                        };
                        ctx.provider = Some(provider);
                        ctx.tls = s.tls;
                        return Ok((s, ctx, path, permit));
                    }
                    Err(SessionError::Refused(reply)) => {
                        let verdict = explain(&reply.text(), Some(&target.host));
                        self.shared.gate.record(GateOutcome {
                            path: &path,
                            now_ms: now_ms(),
                            verdict: Some(&verdict),
                            connection_failed: false,
                        });
                        // A refusing greeting is about the session, not the
                        // recipient: move on to the next MX, retry later if all refuse.
                        last = Some((
                            RcptResult::ConnectionFailed {
                                error: format!("{} said: {}", target.host, reply.text()),
                            },
                            ctx,
                        ));
                    }
                    Err(SessionError::Io(e)) => {
                        self.shared.gate.record(GateOutcome {
                            path: &path,
                            now_ms: now_ms(),
                            verdict: None,
                            connection_failed: true,
                        });
                        last = Some((
                            RcptResult::ConnectionFailed {
                                error: format!("{} [{}]: {e}", target.host, addr.ip()),
                            },
                            ctx,
                        ));
                    }
                }
            }
        }
        let (result, ctx) = last.unwrap_or((
            RcptResult::ConnectionFailed {
                error: format!("{domain}: no host to try"),
            },
            AttemptContext::default(),
        ));
        self.finish_all(job, result, &ctx).await;
        Err(())
    }

    async fn finish_all(&self, job: &Job, result: RcptResult, ctx: &AttemptContext) {
        let results = job.rcpts.iter().map(|&i| (i, result.clone())).collect();
        service::finish_attempt(&self.shared, &job.queue_id, results, ctx).await;
    }

    /// Send one job on an open session. Returns false when the session broke.
    async fn deliver(
        &self,
        session: &mut Session,
        ctx: &AttemptContext,
        path: &PathKey,
        job: &Job,
    ) -> bool {
        if let GateDecision::HoldUntil(t) = self.shared.gate.may_send(path, now_ms()) {
            self.finish_all(job, RcptResult::Held { until_ms: t }, ctx)
                .await;
            return true;
        }
        let Some(msg) = self.shared.queue().get(&job.queue_id).cloned() else {
            return true;
        };
        let body = match self.shared.spool.body(&job.queue_id) {
            Ok(Some(b)) => b,
            other => {
                tracing::error!(
                    queue_id = job.queue_id,
                    "body missing from spool: {other:?}"
                );
                self.finish_all(
                    job,
                    RcptResult::ConnectionFailed {
                        error: "local error: message body unreadable".into(),
                    },
                    ctx,
                )
                .await;
                return true;
            }
        };
        let rcpts: Vec<String> = job
            .rcpts
            .iter()
            .filter_map(|&i| msg.recipients.get(i).map(|r| r.address.clone()))
            .collect();
        let mut ctx = ctx.clone();
        ctx.tls = session.tls;
        match session.send(&msg.sender, &rcpts, &body).await {
            Ok(result) => {
                let mx = ctx.mx_host.clone();
                let results: Vec<(usize, RcptResult)> = job
                    .rcpts
                    .iter()
                    .zip(result.per_recipient)
                    .map(|(&i, reply)| {
                        let text = reply.text();
                        let verdict = explain(&text, mx.as_deref());
                        self.shared.gate.record(GateOutcome {
                            path,
                            now_ms: now_ms(),
                            verdict: Some(&verdict),
                            connection_failed: false,
                        });
                        (
                            i,
                            RcptResult::Reply {
                                text,
                                verdict: Box::new(verdict),
                            },
                        )
                    })
                    .collect();
                service::finish_attempt(&self.shared, &job.queue_id, results, &ctx).await;
                true
            }
            Err(e) => {
                self.shared.gate.record(GateOutcome {
                    path,
                    now_ms: now_ms(),
                    verdict: None,
                    connection_failed: true,
                });
                self.finish_all(
                    job,
                    RcptResult::ConnectionFailed {
                        error: format!(
                            "{} [{}]: {e}",
                            ctx.mx_host.as_deref().unwrap_or("?"),
                            session.peer.ip()
                        ),
                    },
                    &ctx,
                )
                .await;
                false
            }
        }
    }
}

/// The provider of a path: what the classifier recognises from the MX host
/// (and greeting), else the MX host itself so unknown receivers are paced
/// per host.
fn provider_of(mx_host: &str, greeting: Option<&str>) -> String {
    let v = explain(greeting.unwrap_or("220 "), Some(mx_host));
    if v.provider.is_empty() || v.provider == "unknown" {
        mx_host.to_ascii_lowercase()
    } else {
        v.provider
    }
}

/// A permanent routing failure, phrased as the reply Postfix-style MTAs write
/// for it, so the classifier and the DSN treat it like a receiver's 5xx.
fn local_reply(e: &RouteError) -> RcptResult {
    let text = match e {
        RouteError::NullMx(_) => format!("556 5.1.10 mxpace: {e}"),
        _ => format!("550 5.1.2 mxpace: {e}"),
    };
    let verdict = explain(&text, None);
    RcptResult::Reply {
        text,
        verdict: Box::new(verdict),
    }
}
