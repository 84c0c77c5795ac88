//! A generator of Postfix syslog with known ground truth, for tests and the benchmark.
//! Written by us from the documented line format (research/mta-designs.md §1.3); a
//! second-by-second simulation of a queue, so lines come out in time order and memory
//! stays bounded by the messages in flight.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BinaryHeap;
use std::io::{self, Write};
use std::net::IpAddr;
use time::OffsetDateTime;

/// A recipient domain and its MX host.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub domain: String,
    pub mx: String,
    /// Microsoft region label its receiving hosts carry (`namprd04`), if Microsoft.
    pub region: Option<String>,
}

impl Tenant {
    /// A Microsoft 365 tenant (`<domain-with-dashes>.mail.protection.outlook.com`).
    pub fn microsoft(domain: &str, region: &str) -> Tenant {
        Tenant {
            domain: domain.into(),
            mx: format!("{}.mail.protection.outlook.com", domain.replace('.', "-")),
            region: Some(region.into()),
        }
    }

    /// A Gmail recipient domain.
    pub fn google(domain: &str) -> Tenant {
        Tenant {
            domain: domain.into(),
            mx: "gmail-smtp-in.l.google.com".into(),
            region: None,
        }
    }
}

/// When and to whom deferrals happen.
#[derive(Debug, Clone, Default)]
pub struct DeferRule {
    /// Minutes from the start, half-open.
    pub from_minute: u32,
    pub to_minute: u32,
    pub ip: Option<IpAddr>,
    pub domain: Option<String>,
    pub region: Option<String>,
    /// Only Microsoft tenants (those with a region).
    pub microsoft_only: bool,
    /// Probability that a matching attempt is deferred.
    pub probability: f64,
}

/// Ground truth of a generated log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Truth {
    pub lines: u64,
    pub messages: u64,
    pub deferrals: u64,
    pub deliveries: u64,
    /// Messages deleted by the application right after their first deferral.
    pub suppressed: u64,
    /// Deliveries repeated under a new queue ID.
    pub duplicates: u64,
    /// Retries sooner than 60 s after a deferral.
    pub fast_retries: u64,
}

/// A scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub start: OffsetDateTime,
    pub minutes: u32,
    pub ips: Vec<IpAddr>,
    /// New messages per second (one recipient each).
    pub rate_per_sec: f64,
    /// Extra rate per IP from a given minute (a volume rise), e.g. (ip, minute, factor).
    pub ramp: Option<(IpAddr, u32, f64)>,
    pub tenants: Vec<Tenant>,
    pub rules: Vec<DeferRule>,
    /// Seconds between retries of a deferred recipient.
    pub retry_secs: u32,
    /// The application deletes a message (`postsuper -d`) after its first deferral.
    pub suppress_after_4xx: bool,
    /// Every n-th delivered message is submitted and delivered again.
    pub duplicate_every: Option<u64>,
    /// Distinct smtp process IDs per sending IP (parallel sessions).
    pub sessions_per_ip: u32,
    /// Background noise lines from other daemons per second.
    pub noise_per_sec: f64,
    pub seed: u64,
}

impl Scenario {
    /// [`Scenario::baseline`] starting at a Unix time.
    pub fn baseline_unix(start: i64) -> Scenario {
        Scenario::baseline(
            OffsetDateTime::from_unix_timestamp(start).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        )
    }

    /// A clean baseline: 4 IPs, 10 Microsoft tenants and Gmail, 5 messages/s for 2 hours.
    pub fn baseline(start: OffsetDateTime) -> Scenario {
        let regions = ["namprd04", "namprd11", "eurprd03"];
        let mut tenants: Vec<Tenant> = (0..10)
            .map(|i| {
                Tenant::microsoft(
                    &format!("tenant{i}.example.com"),
                    regions[i % regions.len()],
                )
            })
            .collect();
        tenants.push(Tenant::google("gmail.com"));
        tenants.push(Tenant::google("gmail.com"));
        Scenario {
            start,
            minutes: 120,
            ips: (1..=4).map(|i| IpAddr::from([198, 51, 100, i])).collect(),
            rate_per_sec: 5.0,
            ramp: None,
            tenants,
            rules: Vec::new(),
            retry_secs: 600,
            suppress_after_4xx: false,
            duplicate_every: None,
            sessions_per_ip: 4,
            noise_per_sec: 0.5,
            seed: 7,
        }
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Retry {
    due: std::cmp::Reverse<i64>,
    id: u64,
    tenant: usize,
    ip: usize,
    attempts: u32,
    arrived: i64,
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn stamp(unix: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{} {:>2} {:02}:{:02}:{:02}",
        MONTHS[t.month() as usize - 1],
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn iso(unix: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        (unix % 997) as u16
    )
}

fn qid(id: u64) -> String {
    format!("{:010X}", id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 24)
}

/// Write the scenario's log; returns its ground truth.
pub fn write_postfix(s: &Scenario, out: &mut impl Write) -> io::Result<Truth> {
    let mut truth = Truth::default();
    let mut rng = StdRng::seed_from_u64(s.seed);
    let start = s.start.unix_timestamp();
    let end = start + s.minutes as i64 * 60;
    let mut retries: BinaryHeap<Retry> = BinaryHeap::new();
    let mut next_id = 1u64;
    let mut lines = 0u64;
    let mut carry = 0.0f64;
    let mut noise_carry = 0.0f64;
    let mut delivered = 0u64;
    let mut w = |line: String, out: &mut dyn Write| -> io::Result<()> {
        lines += 1;
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")
    };
    for now in start..end {
        let minute = ((now - start) / 60) as u32;
        let mut batch: Vec<Retry> = Vec::new();
        carry += s.rate_per_sec;
        let mut new = carry as u64;
        carry -= new as f64;
        let ramp_extra = match s.ramp {
            Some((_, from, factor)) if minute >= from => {
                let per_ip = s.rate_per_sec / s.ips.len() as f64;
                (per_ip * (factor - 1.0)).round() as u64
            }
            _ => 0,
        };
        new += ramp_extra;
        truth.messages += new;
        for n in 0..new {
            let id = next_id;
            next_id += 1;
            let ip = match s.ramp {
                Some((ramp_ip, _, _)) if n >= new - ramp_extra => {
                    s.ips.iter().position(|i| *i == ramp_ip).unwrap_or(0)
                }
                _ => rng.random_range(0..s.ips.len()),
            };
            let tenant = rng.random_range(0..s.tenants.len());
            let q = qid(id);
            let ts = stamp(now);
            w(
                format!(
                    "{ts} mx1 postfix/cleanup[2101]: {q}: message-id=<{id}.gen@news.example.net>"
                ),
                out,
            )?;
            w(
                format!(
                    "{ts} mx1 postfix/qmgr[2102]: {q}: from=<bounce-{id}@news.example.net>, size={}, nrcpt=1 (queue active)",
                    4000 + id % 9000
                ),
                out,
            )?;
            batch.push(Retry {
                due: std::cmp::Reverse(now),
                id,
                tenant,
                ip,
                attempts: 0,
                arrived: now,
            });
        }
        while retries.peek().is_some_and(|r| r.due.0 <= now) {
            let r = retries.pop().expect("peeked");
            let ts = stamp(now);
            w(
                format!(
                    "{ts} mx1 postfix/qmgr[2102]: {}: from=<bounce-{}@news.example.net>, size={}, nrcpt=1 (queue active)",
                    qid(r.id),
                    r.id,
                    4000 + r.id % 9000
                ),
                out,
            )?;
            batch.push(r);
        }
        for mut r in batch {
            let tenant = &s.tenants[r.tenant];
            let ip = s.ips[r.ip];
            let q = qid(r.id);
            let ts = stamp(now);
            let pid = 3000 + r.ip as u32 * 100 + rng.random_range(0..s.sessions_per_ip.max(1));
            let defer_p = s
                .rules
                .iter()
                .filter(|rule| {
                    (rule.from_minute..rule.to_minute).contains(&minute)
                        && rule.ip.is_none_or(|x| x == ip)
                        && rule.domain.as_deref().is_none_or(|d| d == tenant.domain)
                        && rule
                            .region
                            .as_deref()
                            .is_none_or(|g| Some(g) == tenant.region.as_deref())
                        && (!rule.microsoft_only || tenant.region.is_some())
                })
                .map(|rule| rule.probability)
                .fold(0.0, f64::max);
            if r.attempts > 0 && s.retry_secs < 60 {
                truth.fast_retries += 1;
            }
            r.attempts += 1;
            let delay = now - r.arrived;
            let peer = format!("{}.{}.{}.{}", 52, 101, r.tenant, 10 + r.ip);
            let host_tag = tenant
                .region
                .as_deref()
                .map(|g| {
                    format!(
                        " [{}PEPF{:04X}.{g}.prod.outlook.com {} 08DE{:012X}]",
                        &g[..2].to_ascii_uppercase(),
                        r.id % 0xFFFF,
                        iso(now),
                        r.id
                    )
                })
                .unwrap_or_default();
            if rng.random_bool(defer_p.clamp(0.0, 1.0)) {
                let said = if tenant.region.is_some() {
                    format!(
                        "451 4.7.500 Server busy. Please try again later from [{ip}]. (S77714){host_tag}"
                    )
                } else {
                    "421 4.7.0 [TSS04] Messages temporarily deferred due to unexpected volume or user complaints".to_string()
                };
                w(
                    format!(
                        "{ts} mx1 postfix-{ip}/smtp[{pid}]: {q}: to=<user{}@{}>, relay={}[{peer}]:25, delay={delay}, delays=0.1/0/0.3/0.2, tls=may, dsn=4.7.500, status=deferred (host {}[{peer}] said: {said} (in reply to RCPT TO command))",
                        r.id, tenant.domain, tenant.mx, tenant.mx
                    ),
                    out,
                )?;
                truth.deferrals += 1;
                if s.suppress_after_4xx {
                    truth.suppressed += 1;
                    w(
                        format!("{ts} mx1 postfix/postsuper[4001]: {q}: removed"),
                        out,
                    )?;
                } else if delay > 5 * 86400 {
                    w(
                        format!(
                            "{ts} mx1 postfix/qmgr[2102]: {q}: from=<bounce-{}@news.example.net>, status=expired, returned to sender",
                            r.id
                        ),
                        out,
                    )?;
                    w(format!("{ts} mx1 postfix/qmgr[2102]: {q}: removed"), out)?;
                } else {
                    r.due = std::cmp::Reverse(now + s.retry_secs as i64);
                    retries.push(r);
                }
            } else {
                let ok = if tenant.region.is_some() {
                    format!(
                        "250 2.6.0 <{}.gen@news.example.net> [InternalId={}, Hostname={}PR04MB{:04}.{}.prod.outlook.com] Queued mail for delivery",
                        r.id,
                        r.id * 7,
                        "BL6",
                        r.id % 9999,
                        tenant.region.as_deref().unwrap_or("")
                    )
                } else {
                    format!(
                        "250 2.0.0 OK  {} a{}si.{} - gsmtp",
                        now,
                        r.id % 977,
                        r.id % 31
                    )
                };
                w(
                    format!(
                        "{ts} mx1 postfix-{ip}/smtp[{pid}]: {q}: to=<user{}@{}>, relay={}[{peer}]:25, delay={delay}, delays=0.1/0/0.3/0.2, tls=may, dsn=2.0.0, status=sent ({ok})",
                        r.id, tenant.domain, tenant.mx
                    ),
                    out,
                )?;
                w(format!("{ts} mx1 postfix/qmgr[2102]: {q}: removed"), out)?;
                delivered += 1;
                if s.duplicate_every
                    .is_some_and(|n| delivered.is_multiple_of(n))
                {
                    truth.duplicates += 1;
                    let dq = qid(r.id + (1 << 40));
                    w(
                        format!(
                            "{ts} mx1 postfix/qmgr[2102]: {dq}: from=<bounce-{}@news.example.net>, size=5000, nrcpt=1 (queue active)",
                            r.id
                        ),
                        out,
                    )?;
                    w(
                        format!(
                            "{ts} mx1 postfix/cleanup[2101]: {dq}: message-id=<{}.gen@news.example.net>",
                            r.id
                        ),
                        out,
                    )?;
                    w(
                        format!(
                            "{ts} mx1 postfix-{ip}/smtp[{pid}]: {dq}: to=<user{}@{}>, relay={}[{peer}]:25, delay=1, delays=0.1/0/0.3/0.2, dsn=2.0.0, status=sent (250 2.0.0 OK)",
                            r.id, tenant.domain, tenant.mx
                        ),
                        out,
                    )?;
                }
            }
        }
        noise_carry += s.noise_per_sec;
        while noise_carry >= 1.0 {
            noise_carry -= 1.0;
            w(
                format!(
                    "{} mx1 dovecot: imap-login: Login: user=<staff@news.example.net>, method=PLAIN, rip=192.0.2.50",
                    stamp(now)
                ),
                out,
            )?;
        }
    }
    truth.lines = lines;
    truth.deliveries = delivered;
    Ok(truth)
}
