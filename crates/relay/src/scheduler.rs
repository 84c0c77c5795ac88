//! The scheduler: takes due recipients from the queue, hands them to
//! per-domain workers that keep connections open and send several messages
//! per session. The pacing gate is asked before each connection and message.

use crate::egress::{DsnParams, Session, SessionError};
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
/// A pacing hold this short is waited out by the worker (the connection stays
/// open); a longer one puts the message back in the queue, which costs a spool
/// write and closes the connection.
const WAIT_IN_WORKER_MS: i64 = 2_000;

/// How one round of opening a session ended.
enum Connect {
    Open(Box<Conn>),
    /// The job's recipients were finished (retry, bounce or a long hold).
    Failed,
    /// Every source is held by pacing for a short while: try again then.
    WaitUntil(i64),
}

/// What a worker does with its connection after a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Keep it for the next job.
    Keep,
    /// Close it politely (QUIT): pacing holds the path for a while.
    Quit,
    /// Drop it: it broke, or the receiver is closing it.
    Drop,
}

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
    /// Provider learned from each MX host's greeting, so the next connection to
    /// that host is asked about under the right path before it is opened.
    learned: Mutex<HashMap<String, String>>,
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
        learned: Mutex::new(HashMap::new()),
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

    /// The sources of the address family, rotated so connections take turns;
    /// `[None]` when no source is configured (the OS picks the address).
    fn sources_for(&self, family_v4: bool) -> Vec<Option<(IpAddr, String)>> {
        let fitting: Vec<_> = self
            .shared
            .config
            .source
            .iter()
            .filter(|s| s.ip.is_ipv4() == family_v4)
            .map(|s| Some((s.ip, s.ehlo.clone())))
            .collect();
        if fitting.is_empty() {
            return vec![None];
        }
        let start = self.next_source.fetch_add(1, Ordering::Relaxed) % fitting.len();
        let mut rotated = fitting[start..].to_vec();
        rotated.extend_from_slice(&fitting[..start]);
        rotated
    }

    fn provider_guess(&self, mx_host: &str) -> String {
        let learned = self.learned.lock().unwrap_or_else(|p| p.into_inner());
        learned
            .get(mx_host)
            .cloned()
            .unwrap_or_else(|| provider_of(mx_host, None))
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
            let next = self.deliver(session, ctx, path, &job).await;
            sent += 1;
            let per_connection = self
                .shared
                .gate
                .per_connection(path)
                .unwrap_or(usize::MAX)
                .min(self.shared.config.relay.messages_per_connection);
            let next = if next == Next::Keep && sent >= per_connection {
                Next::Quit
            } else {
                next
            };
            if next != Next::Keep
                && let Some((s, _, p, _permit)) = conn.take()
            {
                if next == Next::Quit {
                    s.quit().await;
                } else {
                    drop(s);
                }
                // Given back once the session is gone: the receiver counts a
                // connection until it closes, not until we decide to close it.
                self.shared.gate.closed(&p);
            }
        }
        if let Some((s, _, p, _permit)) = conn.take() {
            s.quit().await;
            self.shared.gate.closed(&p);
        }
    }

    /// Open a session for `domain`, trying MX hosts in order. On failure the
    /// job's recipients are finished (retry or bounce) and `Err` is returned.
    /// A short pacing hold on every source is waited out here.
    async fn connect(&self, domain: &str, job: &Job) -> Result<Conn, ()> {
        loop {
            match self.try_connect(domain, job).await {
                Connect::Open(c) => return Ok(*c),
                Connect::Failed => return Err(()),
                Connect::WaitUntil(t) => {
                    let wait = (t - now_ms()).clamp(1, WAIT_IN_WORKER_MS);
                    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
                }
            }
        }
    }

    async fn try_connect(&self, domain: &str, job: &Job) -> Connect {
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
                return Connect::Failed;
            }
        };
        let Ok(permit) = self.outbound.clone().acquire_owned().await else {
            return Connect::Failed;
        };
        let stream = self
            .shared
            .queue()
            .get(&job.queue_id)
            .map(|m| m.stream.clone())
            .unwrap_or_else(|| self.shared.config.relay.default_stream.clone());
        let mut last: Option<(RcptResult, AttemptContext)> = None;
        // The earliest time a source held by pacing may connect, with its context.
        let mut held: Option<(i64, AttemptContext)> = None;
        for target in &targets {
            for addr in &target.addrs {
                for source in self.sources_for(addr.is_ipv4()) {
                    let ehlo = source
                        .as_ref()
                        .map(|(_, e)| e.clone())
                        .unwrap_or_else(|| self.shared.config.relay.hostname.clone());
                    let path = PathKey {
                        source_ip: source.as_ref().map(|(ip, _)| *ip),
                        provider: self.provider_guess(&target.host),
                    };
                    let mut ctx = AttemptContext {
                        source_ip: path.source_ip,
                        ehlo: Some(ehlo.clone()),
                        mx_host: Some(target.host.clone()),
                        peer_ip: Some(addr.ip()),
                        provider: Some(path.provider.clone()),
                        tls: false,
                        next_hop_dsn: false,
                    };
                    let decision = self
                        .shared
                        .gate
                        .may_connect_stream(&path, &stream, now_ms());
                    service::write_pacing_changes(&self.shared);
                    if let GateDecision::HoldUntil(t) = decision {
                        // Another source may be free to send to this provider.
                        if held.as_ref().is_none_or(|(h, _)| t < *h) {
                            held = Some((t, ctx));
                        }
                        continue;
                    }
                    let timeout = self.shared.config.relay.smtp_timeout;
                    let mut opened = Session::open(
                        *addr,
                        path.source_ip,
                        &ehlo,
                        &target.host,
                        Some(self.tls.clone()),
                        timeout,
                    )
                    .await;
                    if let Err(SessionError::Tls(e)) = &opened {
                        // Opportunistic TLS (RFC 7435): a broken handshake falls back
                        // to plaintext rather than holding mail forever.
                        tracing::info!(host = target.host, "{e}; retrying without TLS");
                        opened = Session::open(
                            *addr,
                            path.source_ip,
                            &ehlo,
                            &target.host,
                            None,
                            timeout,
                        )
                        .await;
                    }
                    match opened {
                        Ok(s) => {
                            let provider = provider_of(&target.host, Some(&s.greeting.text()));
                            self.learned
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(target.host.clone(), provider.clone());
                            let reserved = path.clone();
                            let path = PathKey {
                                provider: provider.clone(),
                                ..path
                            };
                            self.shared.gate.opened(&reserved, &path);
                            ctx.provider = Some(provider);
                            ctx.tls = s.tls;
                            ctx.next_hop_dsn = s.capabilities & smtp_proto::EXT_DSN != 0;
                            return Connect::Open(Box::new((s, ctx, path, permit)));
                        }
                        Err(SessionError::Refused(reply)) => {
                            // Give back the connection slot the gate's Go took.
                            self.shared.gate.closed(&path);
                            let verdict = explain(&reply.text(), Some(&target.host));
                            self.shared.gate.record(GateOutcome {
                                path: &path,
                                now_ms: now_ms(),
                                verdict: Some(&verdict),
                                connection_failed: false,
                            });
                            service::write_pacing_changes(&self.shared);
                            // A refusing greeting is about the session, not the
                            // recipient: move on to the next MX, retry later if all refuse.
                            last = Some((
                                RcptResult::ConnectionFailed {
                                    error: format!("{} said: {}", target.host, reply.text()),
                                },
                                ctx,
                            ));
                        }
                        Err(e @ (SessionError::Io(_) | SessionError::Tls(_))) => {
                            // Give back the connection slot the gate's Go took.
                            self.shared.gate.closed(&path);
                            self.shared.gate.record(GateOutcome {
                                path: &path,
                                now_ms: now_ms(),
                                verdict: None,
                                connection_failed: true,
                            });
                            service::write_pacing_changes(&self.shared);
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
        }
        if last.is_none()
            && let Some((until, ctx)) = held
        {
            // Every source is held by pacing: that is no attempt. A short hold is
            // waited out here; a long one puts the job back in the queue.
            drop(permit);
            if until - now_ms() <= WAIT_IN_WORKER_MS {
                return Connect::WaitUntil(until);
            }
            let path = PathKey {
                source_ip: ctx.source_ip,
                provider: ctx.provider.clone().unwrap_or_default(),
            };
            let until = self.shared.gate.release_slot(&path, until);
            self.finish_all(job, RcptResult::Held { until_ms: until }, &ctx)
                .await;
            return Connect::Failed;
        }
        let (result, ctx) = last.unwrap_or((
            RcptResult::ConnectionFailed {
                error: format!("{domain}: no host to try"),
            },
            AttemptContext::default(),
        ));
        self.finish_all(job, result, &ctx).await;
        Connect::Failed
    }

    async fn finish_all(&self, job: &Job, result: RcptResult, ctx: &AttemptContext) {
        let results = job.rcpts.iter().map(|&i| (i, result.clone())).collect();
        service::finish_attempt(&self.shared, &job.queue_id, results, ctx).await;
    }

    /// Send one job on an open session, once pacing lets its stream go. Says
    /// what to do with the session next: drop it when it broke or the receiver
    /// announced it is closing it (421), quit it when pacing holds the path.
    async fn deliver(
        &self,
        session: &mut Session,
        ctx: &AttemptContext,
        path: &PathKey,
        job: &Job,
    ) -> Next {
        let Some(msg) = self.shared.queue().get(&job.queue_id).cloned() else {
            return Next::Keep;
        };
        loop {
            let now = now_ms();
            let decision = self.shared.gate.may_send_stream(path, &msg.stream, now);
            service::write_pacing_changes(&self.shared);
            match decision {
                GateDecision::Go => break,
                // The next token is near: wait for it on the open connection.
                GateDecision::HoldUntil(t) if t - now <= WAIT_IN_WORKER_MS => {
                    tokio::time::sleep(Duration::from_millis((t - now).max(1) as u64)).await;
                }
                GateDecision::HoldUntil(t) => {
                    let t = self.shared.gate.release_slot(path, t);
                    self.finish_all(job, RcptResult::Held { until_ms: t }, ctx)
                        .await;
                    return Next::Quit;
                }
            }
        }
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
                return Next::Keep;
            }
        };
        let rcpts: Vec<String> = job
            .rcpts
            .iter()
            .filter_map(|&i| msg.recipients.get(i).map(|r| r.address.clone()))
            .collect();
        let dsn = DsnParams {
            env_id: msg.env_id.clone(),
            ret_full: msg.ret_full,
            recipients: job
                .rcpts
                .iter()
                .filter_map(|&i| msg.recipients.get(i).map(|r| (r.notify, r.orcpt.clone())))
                .collect(),
        };
        let mut ctx = ctx.clone();
        ctx.tls = session.tls;
        ctx.next_hop_dsn = session.capabilities & smtp_proto::EXT_DSN != 0;
        match session.send(&msg.sender, &rcpts, &body, &dsn).await {
            Ok(result) => {
                // 421 means the receiver is closing the channel (RFC 5321 §3.8):
                // the session cannot carry the next message.
                let closing = result.per_recipient.iter().any(|r| r.code == 421);
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
                service::write_pacing_changes(&self.shared);
                service::finish_attempt(&self.shared, &job.queue_id, results, &ctx).await;
                if closing { Next::Drop } else { Next::Keep }
            }
            Err(e) => {
                self.shared.gate.record(GateOutcome {
                    path,
                    now_ms: now_ms(),
                    verdict: None,
                    connection_failed: true,
                });
                service::write_pacing_changes(&self.shared);
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
                Next::Drop
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_microsoft_365_tenant_mx_is_one_provider_and_unknown_hosts_are_their_own() {
        for mx in [
            "contoso-com.mail.protection.outlook.com",
            "fabrikam-net.mail.protection.outlook.com.",
            "contoso-com.a-v1.mx.microsoft",
            "hotmail-com.olc.protection.outlook.com",
        ] {
            assert_eq!(provider_of(mx, None), "microsoft", "{mx}");
        }
        assert_eq!(provider_of("ASPMX.L.GOOGLE.COM", None), "google");
        assert_eq!(provider_of("MX1.Example.NET", None), "mx1.example.net");
        // A static route names an address; the greeting tells who answers.
        let greeting =
            "220 BL6PEPF0001AB50.namprd04.prod.outlook.com Microsoft ESMTP MAIL Service ready";
        assert_eq!(provider_of("127.0.0.1", Some(greeting)), "microsoft");
        assert_eq!(
            provider_of("127.0.0.1", Some("220 sink ESMTP")),
            "127.0.0.1"
        );
    }
}
