//! SPF: the record parser, the lookup-tree walker and the `spf.*` checks.
//!
//! mail-auth evaluates SPF for an IP (used for `spf.authorized`) and enforces the
//! 10-lookup limit, but it does not count void lookups nor report which include costs
//! what, so the record parser and the tree walker here are ours (RFC 7208 §4.6, §5, §6).

use crate::dns::{Answer, Dns, TxtRecord, normalize_name};
use crate::report::{CheckResult, Status};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use mail_auth::SpfResult;
use mail_auth::spf::verify::SpfParameters;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

/// RFC 7208 §4.6.4: at most 10 DNS-querying terms per evaluation.
pub const MAX_LOOKUPS: usize = 10;
/// RFC 7208 §4.6.4: at most 2 void lookups (NXDOMAIN or NODATA) per evaluation.
pub const MAX_VOID_LOOKUPS: usize = 2;
/// RFC 7208 §4.6.4: an `mx` term may name at most 10 exchanges.
pub const MAX_MX_NAMES: usize = 10;
/// RFC 7208 §3.4: keep the SPF answer within 512 bytes so it fits one plain UDP response.
pub const MAX_ANSWER_BYTES: usize = 512;
/// Walking stops past this many records, so a hostile tree cannot keep us busy.
const MAX_RECORDS_WALKED: usize = 40;

/// SPF result qualifiers (RFC 7208 §4.6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qualifier {
    /// `+`
    Pass,
    /// `-`
    Fail,
    /// `~`
    SoftFail,
    /// `?`
    Neutral,
}

impl Qualifier {
    /// The prefix character as written (`+` is written as nothing).
    pub fn prefix(self) -> &'static str {
        match self {
            Qualifier::Pass => "",
            Qualifier::Fail => "-",
            Qualifier::SoftFail => "~",
            Qualifier::Neutral => "?",
        }
    }
}

/// A mechanism (RFC 7208 §5).
#[derive(Debug, Clone, PartialEq)]
pub enum Mechanism {
    /// `all`
    All,
    /// `include:domain`
    Include(String),
    /// `a[:domain][/v4][//v6]`
    A {
        /// Target name; `None` means the current domain.
        domain: Option<String>,
        /// IPv4 prefix length.
        v4: u8,
        /// IPv6 prefix length.
        v6: u8,
    },
    /// `mx[:domain][/v4][//v6]`
    Mx {
        /// Target name; `None` means the current domain.
        domain: Option<String>,
        /// IPv4 prefix length.
        v4: u8,
        /// IPv6 prefix length.
        v6: u8,
    },
    /// `ptr[:domain]` (deprecated by RFC 7208 §5.5)
    Ptr(Option<String>),
    /// `ip4:net`
    Ip4(Ipv4Net),
    /// `ip6:net`
    Ip6(Ipv6Net),
    /// `exists:domain`
    Exists(String),
}

/// One term of a record.
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    /// A mechanism with its qualifier.
    Mechanism(Qualifier, Mechanism),
    /// `redirect=domain`
    Redirect(String),
    /// `exp=domain`
    Exp(String),
    /// Any other `name=value` modifier (ignored by evaluation, kept for the record).
    Unknown(String, String),
}

impl Term {
    /// True when evaluating this term queries DNS (counts toward the 10-lookup limit).
    pub fn queries_dns(&self) -> bool {
        matches!(
            self,
            Term::Redirect(_)
                | Term::Mechanism(
                    _,
                    Mechanism::Include(_)
                        | Mechanism::A { .. }
                        | Mechanism::Mx { .. }
                        | Mechanism::Ptr(_)
                        | Mechanism::Exists(_)
                )
        )
    }
}

/// A syntax error in an SPF record, naming the offending term.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason} in term {term:?}")]
pub struct SyntaxError {
    /// The term as written.
    pub term: String,
    /// What is wrong with it.
    pub reason: String,
}

/// True when `text` is an SPF record: starts with `v=spf1` followed by a space or the end.
pub fn is_spf(text: &str) -> bool {
    let t = text.as_bytes();
    t.len() >= 6 && t[..6].eq_ignore_ascii_case(b"v=spf1") && (t.len() == 6 || t[6] == b' ')
}

/// Parses an SPF record (`v=spf1 ...`) into its terms.
pub fn parse_record(text: &str) -> Result<Vec<Term>, SyntaxError> {
    if !is_spf(text) {
        return Err(SyntaxError {
            term: text.chars().take(20).collect(),
            reason: "record does not start with \"v=spf1 \"".into(),
        });
    }
    let mut terms = Vec::new();
    let (mut seen_redirect, mut seen_exp) = (false, false);
    for raw in text[6..].split(' ').filter(|t| !t.is_empty()) {
        let term = parse_term(raw)?;
        let dup = match &term {
            Term::Redirect(_) => std::mem::replace(&mut seen_redirect, true),
            Term::Exp(_) => std::mem::replace(&mut seen_exp, true),
            _ => false,
        };
        if dup {
            return Err(err(raw, "modifier appears twice (RFC 7208 §6)"));
        }
        terms.push(term);
    }
    Ok(terms)
}

fn err(term: &str, reason: &str) -> SyntaxError {
    SyntaxError {
        term: term.into(),
        reason: reason.into(),
    }
}

fn parse_term(raw: &str) -> Result<Term, SyntaxError> {
    if !raw.is_ascii() {
        return Err(err(raw, "non-ASCII characters"));
    }
    // A modifier is name=value where name starts with a letter and has no ':' or '/'.
    if let Some((name, value)) = raw.split_once('=')
        && !name.contains([':', '/'])
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
    {
        let value = value.to_string();
        return Ok(match name.to_ascii_lowercase().as_str() {
            "redirect" => Term::Redirect(check_domain_spec(raw, &value)?),
            "exp" => Term::Exp(check_domain_spec(raw, &value)?),
            _ => {
                if !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                {
                    return Err(err(raw, "invalid modifier name"));
                }
                Term::Unknown(name.into(), value)
            }
        });
    }
    let (qualifier, rest) = match raw.as_bytes()[0] {
        b'+' => (Qualifier::Pass, &raw[1..]),
        b'-' => (Qualifier::Fail, &raw[1..]),
        b'~' => (Qualifier::SoftFail, &raw[1..]),
        b'?' => (Qualifier::Neutral, &raw[1..]),
        _ => (Qualifier::Pass, raw),
    };
    let name_end = rest.find([':', '/']).unwrap_or(rest.len());
    let name = rest[..name_end].to_ascii_lowercase();
    let arg = &rest[name_end..];
    let mechanism = match name.as_str() {
        "all" if arg.is_empty() => Mechanism::All,
        "include" => Mechanism::Include(required_domain(raw, arg)?),
        "exists" => Mechanism::Exists(required_domain(raw, arg)?),
        "ptr" => Mechanism::Ptr(optional_domain(raw, arg)?),
        "a" | "mx" => {
            let (domain_part, v4, v6) = split_dual_cidr(raw, arg)?;
            let domain = optional_domain(raw, domain_part)?;
            if name == "a" {
                Mechanism::A { domain, v4, v6 }
            } else {
                Mechanism::Mx { domain, v4, v6 }
            }
        }
        "ip4" => {
            let value = arg
                .strip_prefix(':')
                .ok_or_else(|| err(raw, "ip4 needs an address"))?;
            let net = if value.contains('/') {
                value.parse::<Ipv4Net>().map_err(|_| ())
            } else {
                value
                    .parse::<std::net::Ipv4Addr>()
                    .ok()
                    .map(Ipv4Net::from)
                    .ok_or(())
            };
            Mechanism::Ip4(net.map_err(|_| err(raw, "invalid IPv4 address or prefix"))?)
        }
        "ip6" => {
            let value = arg
                .strip_prefix(':')
                .ok_or_else(|| err(raw, "ip6 needs an address"))?;
            let net = if value.contains('/') {
                value.parse::<Ipv6Net>().map_err(|_| ())
            } else {
                value
                    .parse::<std::net::Ipv6Addr>()
                    .ok()
                    .map(Ipv6Net::from)
                    .ok_or(())
            };
            Mechanism::Ip6(net.map_err(|_| err(raw, "invalid IPv6 address or prefix"))?)
        }
        _ => return Err(err(raw, "unknown mechanism")),
    };
    Ok(Term::Mechanism(qualifier, mechanism))
}

fn split_dual_cidr<'a>(raw: &str, arg: &'a str) -> Result<(&'a str, u8, u8), SyntaxError> {
    let Some(slash) = arg.find('/') else {
        return Ok((arg, 32, 128));
    };
    let (domain, cidr) = arg.split_at(slash);
    let (v4, v6) = match cidr.split_once("//") {
        Some((v4, v6)) => (v4, Some(v6)),
        None => (cidr, None),
    };
    let parse = |s: &str, max: u8| -> Result<u8, SyntaxError> {
        s.parse::<u8>()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| err(raw, "invalid prefix length"))
    };
    let v4 = match v4.strip_prefix('/') {
        Some(s) => parse(s, 32)?,
        None if v4.is_empty() => 32,
        None => return Err(err(raw, "invalid prefix length")),
    };
    let v6 = match v6 {
        Some(s) => parse(s, 128)?,
        None => 128,
    };
    Ok((domain, v4, v6))
}

fn required_domain(raw: &str, arg: &str) -> Result<String, SyntaxError> {
    optional_domain(raw, arg)?.ok_or_else(|| err(raw, "a domain is required"))
}

fn optional_domain(raw: &str, arg: &str) -> Result<Option<String>, SyntaxError> {
    if arg.is_empty() {
        return Ok(None);
    }
    let value = arg
        .strip_prefix(':')
        .ok_or_else(|| err(raw, "expected ':' before the domain"))?;
    check_domain_spec(raw, value).map(Some)
}

fn check_domain_spec(raw: &str, value: &str) -> Result<String, SyntaxError> {
    if value.is_empty() {
        return Err(err(raw, "empty domain"));
    }
    if value.contains('%') {
        return Ok(value.into()); // a macro-string; expanded per message, not walkable here
    }
    let ok = value.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    }) && value.len() <= 253;
    if !ok {
        return Err(err(raw, "invalid domain name"));
    }
    Ok(normalize_name(value))
}

fn has_macro(domain: &str) -> bool {
    domain.contains('%')
}

/// One record in the include tree, with what walking it found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Node {
    /// The domain whose record this is.
    pub domain: String,
    /// How it was reached: `root`, `include`, `redirect`.
    pub via: String,
    /// The record text (joined strings), when exactly one was found.
    pub record: Option<String>,
    /// The character-strings of the record as published.
    pub strings: Vec<Vec<u8>>,
    /// The size of the TXT answer on the wire.
    pub wire_size: usize,
    /// DNS-querying terms in this record itself (not counting its children).
    pub lookups_here: usize,
    /// Void lookups caused by this record's terms: (term, what came back).
    pub voids: Vec<String>,
    /// Problems: missing record, duplicates, syntax errors, loops, lookup failures.
    pub problems: Vec<String>,
    /// Networks this record authorises with a pass qualifier (resolved a/mx included).
    pub pass_nets: Vec<IpNet>,
    /// Terms that cannot be flattened into IP ranges (ptr, exists, macros, non-pass).
    pub kept_terms: Vec<String>,
    /// The qualifier of this record's `all`, if any.
    pub all: Option<Qualifier>,
    /// Included and redirected records.
    pub children: Vec<Node>,
}

impl Node {
    /// DNS-querying terms in the whole subtree.
    pub fn total_lookups(&self) -> usize {
        self.lookups_here + self.children.iter().map(Node::total_lookups).sum::<usize>()
    }

    /// Void lookups in the whole subtree.
    pub fn all_voids(&self) -> Vec<String> {
        let mut v = self.voids.clone();
        for c in &self.children {
            v.extend(c.all_voids());
        }
        v
    }

    /// Problems in the whole subtree, each prefixed with the domain.
    pub fn all_problems(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .problems
            .iter()
            .map(|p| format!("{}: {p}", self.domain))
            .collect();
        for c in &self.children {
            v.extend(c.all_problems());
        }
        v
    }

    /// Networks authorised anywhere in the tree with a pass result.
    pub fn all_pass_nets(&self) -> Vec<IpNet> {
        let mut v = self.pass_nets.clone();
        for c in &self.children {
            v.extend(c.all_pass_nets());
        }
        v
    }

    /// Indented lines `domain (via): N lookups here, M in subtree`.
    pub fn tree_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.push_lines(0, &mut out);
        out
    }

    fn push_lines(&self, depth: usize, out: &mut Vec<String>) {
        out.push(format!(
            "{}{} ({}): {} lookup(s) here, {} with includes",
            "  ".repeat(depth),
            self.domain,
            self.via,
            self.lookups_here,
            self.total_lookups()
        ));
        for c in &self.children {
            c.push_lines(depth + 1, out);
        }
    }
}

/// Picks the SPF record among the TXT records at a name (RFC 7208 §4.5).
fn select_record(records: &[TxtRecord]) -> Result<Option<&TxtRecord>, String> {
    let spf: Vec<&TxtRecord> = records.iter().filter(|r| is_spf(&r.text())).collect();
    match spf.len() {
        0 => Ok(None),
        1 => Ok(Some(spf[0])),
        n => Err(format!(
            "{n} SPF records published; RFC 7208 §4.5 makes that a permerror"
        )),
    }
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Walks the SPF include tree of `domain`: every record, what each term costs and resolves to.
pub async fn walk(dns: &Dns, domain: &str) -> Node {
    let budget = std::sync::atomic::AtomicUsize::new(MAX_RECORDS_WALKED);
    walk_node(
        dns,
        normalize_name(domain),
        "root".into(),
        Vec::new(),
        &budget,
    )
    .await
}

fn walk_node<'a>(
    dns: &'a Dns,
    domain: String,
    via: String,
    chain: Vec<String>,
    budget: &'a std::sync::atomic::AtomicUsize,
) -> BoxFut<'a, Node> {
    Box::pin(async move {
        let mut node = Node {
            domain: domain.clone(),
            via,
            ..Node::default()
        };
        if budget.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            budget.store(0, std::sync::atomic::Ordering::SeqCst);
            node.problems.push(format!(
                "walk stopped: more than {MAX_RECORDS_WALKED} records"
            ));
            return node;
        }
        let txt = dns.txt(&domain).await;
        let records = match &txt {
            Answer::Found(set) => {
                node.wire_size = set.wire_size;
                set.records.clone()
            }
            other => {
                if other.is_void() && node.via != "root" {
                    node.voids.push(format!(
                        "{} {domain}: {}",
                        node.via,
                        other.describe_negative()
                    ));
                }
                node.problems
                    .push(format!("no SPF record: {}", other.describe_negative()));
                return node;
            }
        };
        let record = match select_record(&records) {
            Ok(Some(r)) => r.clone(),
            Ok(None) => {
                node.problems
                    .push("no SPF record among the TXT records".into());
                return node;
            }
            Err(e) => {
                node.problems.push(e);
                return node;
            }
        };
        let text = record.text();
        node.strings = record.strings.clone();
        node.record = Some(text.clone());
        let terms = match parse_record(&text) {
            Ok(t) => t,
            Err(e) => {
                node.problems.push(format!("syntax error: {e}"));
                return node;
            }
        };
        node.lookups_here = terms.iter().filter(|t| t.queries_dns()).count();
        let has_all = terms
            .iter()
            .any(|t| matches!(t, Term::Mechanism(_, Mechanism::All)));
        let mut chain = chain;
        chain.push(domain.clone());

        let term_futures = terms.iter().map(|term| {
            let chain = chain.clone();
            let domain = domain.clone();
            async move { walk_term(dns, &domain, term, has_all, chain, budget).await }
        });
        let outcomes = futures_util::future::join_all(term_futures).await;
        for (term, outcome) in terms.iter().zip(outcomes) {
            if let Term::Mechanism(q, Mechanism::All) = term {
                node.all = Some(*q);
            }
            node.voids.extend(outcome.voids);
            node.problems.extend(outcome.problems);
            node.pass_nets.extend(outcome.pass_nets);
            node.kept_terms.extend(outcome.kept);
            node.children.extend(outcome.child);
        }
        node
    })
}

#[derive(Default)]
struct TermOutcome {
    voids: Vec<String>,
    problems: Vec<String>,
    pass_nets: Vec<IpNet>,
    kept: Vec<String>,
    child: Option<Node>,
}

async fn walk_term(
    dns: &Dns,
    current: &str,
    term: &Term,
    has_all: bool,
    chain: Vec<String>,
    budget: &std::sync::atomic::AtomicUsize,
) -> TermOutcome {
    let mut out = TermOutcome::default();
    let (q, mech) = match term {
        Term::Redirect(target) if has_all => {
            out.problems.push(format!(
                "redirect={target} is ignored because the record has an all"
            ));
            return out;
        }
        Term::Redirect(target) => {
            return follow(dns, target, "redirect", chain, budget, out).await;
        }
        Term::Exp(_) | Term::Unknown(..) => return out,
        Term::Mechanism(q, m) => (*q, m),
    };
    let written = term_text(q, mech);
    match mech {
        Mechanism::All => {}
        Mechanism::Ip4(n) => push_net(&mut out, q, IpNet::V4(*n), &written),
        Mechanism::Ip6(n) => push_net(&mut out, q, IpNet::V6(*n), &written),
        Mechanism::Include(target) => {
            if q != Qualifier::Pass {
                out.kept.push(written.clone());
            }
            return follow(dns, target, "include", chain, budget, out).await;
        }
        Mechanism::A { domain, v4, v6 } => {
            let name = domain.clone().unwrap_or_else(|| current.to_string());
            if has_macro(&name) {
                out.kept.push(written);
                return out;
            }
            match dns.ips(&name).await {
                Answer::Found(ips) => {
                    for ip in ips {
                        push_net(&mut out, q, prefix(ip, *v4, *v6), &written);
                    }
                }
                other => note_negative(&mut out, &written, &other),
            }
        }
        Mechanism::Mx { domain, v4, v6 } => {
            let name = domain.clone().unwrap_or_else(|| current.to_string());
            if has_macro(&name) {
                out.kept.push(written);
                return out;
            }
            match dns.mx(&name).await {
                Answer::Found(mx) => {
                    if mx.len() > MAX_MX_NAMES {
                        out.problems.push(format!(
                            "{written}: {} MX names, more than {MAX_MX_NAMES} is a permerror",
                            mx.len()
                        ));
                    }
                    let lookups = mx.iter().take(MAX_MX_NAMES).map(|(_, host)| dns.ips(host));
                    for (host, answer) in
                        mx.iter().zip(futures_util::future::join_all(lookups).await)
                    {
                        match answer {
                            Answer::Found(ips) => {
                                for ip in ips {
                                    push_net(&mut out, q, prefix(ip, *v4, *v6), &written);
                                }
                            }
                            other => out.problems.push(format!(
                                "{written}: exchange {} has no address: {}",
                                host.1,
                                other.describe_negative()
                            )),
                        }
                    }
                }
                other => note_negative(&mut out, &written, &other),
            }
        }
        Mechanism::Ptr(_) => {
            out.kept.push(written.clone());
            out.problems.push(format!(
                "{written}: ptr is deprecated (RFC 7208 §5.5) and many receivers ignore it"
            ));
        }
        Mechanism::Exists(name) => {
            out.kept.push(written.clone());
            if !has_macro(name) {
                let a = dns.a(name).await;
                if a.is_void() {
                    out.voids
                        .push(format!("{written}: {}", a.describe_negative()));
                }
            }
        }
    }
    out
}

async fn follow(
    dns: &Dns,
    target: &str,
    via: &str,
    chain: Vec<String>,
    budget: &std::sync::atomic::AtomicUsize,
    mut out: TermOutcome,
) -> TermOutcome {
    if has_macro(target) {
        out.kept.push(format!("{via}:{target}"));
        return out;
    }
    if chain.iter().any(|d| d == target) {
        out.problems.push(format!(
            "{via}:{target} loops back ({} -> {target}); evaluation is a permerror",
            chain.join(" -> ")
        ));
        return out;
    }
    let child = walk_node(dns, target.to_string(), via.to_string(), chain, budget).await;
    out.voids
        .extend(child.voids.iter().filter(|v| v.starts_with(via)).cloned());
    let mut child = child;
    child.voids.retain(|v| !v.starts_with(via));
    out.child = Some(child);
    out
}

fn note_negative<T>(out: &mut TermOutcome, written: &str, answer: &Answer<T>) {
    if answer.is_void() {
        out.voids
            .push(format!("{written}: {}", answer.describe_negative()));
    } else {
        out.problems
            .push(format!("{written}: {}", answer.describe_negative()));
    }
}

fn push_net(out: &mut TermOutcome, q: Qualifier, net: IpNet, written: &str) {
    if q == Qualifier::Pass {
        out.pass_nets.push(net);
    } else if !out.kept.iter().any(|k| k == written) {
        out.kept.push(written.to_string());
    }
}

fn prefix(ip: IpAddr, v4: u8, v6: u8) -> IpNet {
    let len = if ip.is_ipv4() { v4 } else { v6 };
    IpNet::new(ip, len)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| IpNet::from(ip))
}

/// The term as it would be written in a record.
pub fn term_text(q: Qualifier, m: &Mechanism) -> String {
    let cidr = |v4: u8, v6: u8| {
        let mut s = String::new();
        if v4 != 32 {
            s.push_str(&format!("/{v4}"));
        }
        if v6 != 128 {
            s.push_str(&format!("//{v6}"));
        }
        s
    };
    let opt = |d: &Option<String>| d.as_ref().map(|d| format!(":{d}")).unwrap_or_default();
    let body = match m {
        Mechanism::All => "all".to_string(),
        Mechanism::Include(d) => format!("include:{d}"),
        Mechanism::A { domain, v4, v6 } => format!("a{}{}", opt(domain), cidr(*v4, *v6)),
        Mechanism::Mx { domain, v4, v6 } => format!("mx{}{}", opt(domain), cidr(*v4, *v6)),
        Mechanism::Ptr(d) => format!("ptr{}", opt(d)),
        Mechanism::Ip4(n) => format!("ip4:{n}"),
        Mechanism::Ip6(n) => format!("ip6:{n}"),
        Mechanism::Exists(d) => format!("exists:{d}"),
    };
    format!("{}{body}", q.prefix())
}

/// The `spf.*` checks of a domain, and the walked tree (reused by callers).
pub struct SpfChecks {
    /// spf.record, spf.lookups, spf.void, spf.size, spf.authorized (one per IP).
    pub checks: Vec<CheckResult>,
    /// The walked include tree.
    pub tree: Node,
}

/// Runs every `spf.*` check for `domain`; `spf.authorized` per IP through mail-auth.
pub async fn check_all(dns: &Dns, domain: &str, ips: &[IpAddr], helo: Option<&str>) -> SpfChecks {
    let (tree, authorized) =
        tokio::join!(walk(dns, domain), check_authorized(dns, domain, ips, helo));
    let mut checks = vec![
        record_check(&tree),
        lookups_check(&tree),
        void_check(&tree),
        size_check(&tree),
    ];
    checks.extend(authorized);
    SpfChecks { checks, tree }
}

fn strings_evidence(node: &Node) -> Vec<String> {
    node.strings
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "string {} ({} bytes): \"{}\"",
                i + 1,
                s.len(),
                String::from_utf8_lossy(s)
            )
        })
        .collect()
}

/// `spf.record`: present, unique, parses; includes resolve; no loops.
pub fn record_check(tree: &Node) -> CheckResult {
    let problems = tree.all_problems();
    let Some(record) = &tree.record else {
        return CheckResult::new(
            "spf.record",
            Status::Fail,
            format!("{} publishes no usable SPF record", tree.domain),
        )
        .evidence(problems)
        .fix(format!(
            "Publish one TXT record at {} such as \"v=spf1 ip4:<your sending IPs> -all\".",
            tree.domain
        ));
    };
    let mut evidence = vec![format!("{}: \"{record}\"", tree.domain)];
    evidence.extend(strings_evidence(tree));
    let hard: Vec<&String> = problems
        .iter()
        .filter(|p| !p.contains("ptr is deprecated") && !p.contains("is ignored because"))
        .collect();
    evidence.extend(problems.iter().cloned());
    if !hard.is_empty() {
        return CheckResult::new(
            "spf.record",
            Status::Fail,
            format!("SPF record of {} is broken: {}", tree.domain, hard[0]),
        )
        .evidence(evidence)
        .fix("Fix the record and every include it names so each resolves to exactly one valid SPF record; remove include loops.");
    }
    if !problems.is_empty() {
        return CheckResult::new(
            "spf.record",
            Status::Warn,
            format!("SPF record of {} works but has weak terms", tree.domain),
        )
        .evidence(evidence)
        .fix("Replace ptr with ip4/ip6 or a terms; remove terms that are ignored.");
    }
    let all = tree.all.map(|q| format!("{}all", q.prefix()));
    match all.as_deref() {
        Some("all") | Some("?all") => CheckResult::new(
            "spf.record",
            Status::Warn,
            format!(
                "SPF record of {} ends in {}: it authorises nothing against spoofing",
                tree.domain,
                all.unwrap_or_default()
            ),
        )
        .evidence(evidence)
        .fix("End the record with -all (or ~all while testing)."),
        _ => CheckResult::new(
            "spf.record",
            Status::Pass,
            format!("{} has one valid SPF record", tree.domain),
        )
        .evidence(evidence),
    }
}

/// `spf.lookups`: DNS-querying terms in the whole tree ≤ 10, with the per-include tree.
pub fn lookups_check(tree: &Node) -> CheckResult {
    let total = tree.total_lookups();
    let mut evidence = vec![format!(
        "total DNS-querying terms: {total} (limit {MAX_LOOKUPS})"
    )];
    evidence.extend(tree.tree_lines());
    if tree.record.is_none() {
        return CheckResult::new("spf.lookups", Status::Fail, "no SPF record to count")
            .evidence(evidence);
    }
    if total > MAX_LOOKUPS {
        CheckResult::new(
            "spf.lookups",
            Status::Fail,
            format!("{total} DNS lookups: over the limit of {MAX_LOOKUPS}, receivers return permerror"),
        )
        .evidence(evidence)
        .fix("Remove includes you no longer use, or flatten them into ip4/ip6 ranges (`mxpace spf flatten`).")
    } else if total >= MAX_LOOKUPS - 1 {
        CheckResult::new(
            "spf.lookups",
            Status::Warn,
            format!("{total} DNS lookups: one provider change from the limit of {MAX_LOOKUPS}"),
        )
        .evidence(evidence)
        .fix("Leave headroom: flatten or drop an include.")
    } else {
        CheckResult::new(
            "spf.lookups",
            Status::Pass,
            format!("{total} DNS lookups (limit {MAX_LOOKUPS})"),
        )
        .evidence(evidence)
    }
}

/// `spf.void`: void lookups in the whole tree ≤ 2.
pub fn void_check(tree: &Node) -> CheckResult {
    if tree.record.is_none() {
        return CheckResult::new(
            "spf.void",
            Status::Warn,
            "not evaluated: no usable SPF record (see spf.record)",
        );
    }
    let voids = tree.all_voids();
    let mut evidence = vec![format!(
        "void lookups: {} (limit {MAX_VOID_LOOKUPS})",
        voids.len()
    )];
    evidence.extend(voids.iter().cloned());
    if voids.len() > MAX_VOID_LOOKUPS {
        CheckResult::new(
            "spf.void",
            Status::Fail,
            format!("{} void lookups: over the limit of {MAX_VOID_LOOKUPS}, receivers may return permerror", voids.len()),
        )
        .evidence(evidence)
        .fix("Remove terms that name hosts or domains that do not exist or have no address.")
    } else if !voids.is_empty() {
        CheckResult::new(
            "spf.void",
            Status::Warn,
            format!("{} void lookup(s)", voids.len()),
        )
        .evidence(evidence)
        .fix("Remove terms that name hosts or domains that do not exist or have no address.")
    } else {
        CheckResult::new("spf.void", Status::Pass, "no void lookups").evidence(evidence)
    }
}

/// `spf.size`: each string within 255 bytes, the answer within 512 bytes.
pub fn size_check(tree: &Node) -> CheckResult {
    if tree.record.is_none() {
        return CheckResult::new(
            "spf.size",
            Status::Warn,
            "not evaluated: no usable SPF record (see spf.record)",
        );
    }
    let mut evidence = vec![format!(
        "TXT answer for {}: {} bytes (limit {MAX_ANSWER_BYTES})",
        tree.domain, tree.wire_size
    )];
    evidence.extend(strings_evidence(tree));
    let long = tree.strings.iter().any(|s| s.len() > 255);
    if long || tree.wire_size > MAX_ANSWER_BYTES {
        CheckResult::new(
            "spf.size",
            Status::Warn,
            format!("SPF answer is {} bytes: over {MAX_ANSWER_BYTES}, it needs TCP or EDNS and some receivers fail it", tree.wire_size),
        )
        .evidence(evidence)
        .fix("Shorten the record: move ranges into an included record (`mxpace spf flatten` emits a chained set).")
    } else {
        CheckResult::new(
            "spf.size",
            Status::Pass,
            format!("SPF answer is {} bytes", tree.wire_size),
        )
        .evidence(evidence)
    }
}

/// `spf.authorized`: does SPF pass for each egress IP (mail-auth's evaluation)?
pub async fn check_authorized(
    dns: &Dns,
    domain: &str,
    ips: &[IpAddr],
    helo: Option<&str>,
) -> Vec<CheckResult> {
    if ips.is_empty() {
        return vec![
            CheckResult::new(
                "spf.authorized",
                Status::Warn,
                "no --ip given: which IPs SPF authorises was not checked",
            )
            .fix("Pass each egress IP with --ip."),
        ];
    }
    let helo = helo.unwrap_or(domain);
    let sender = format!("postmaster@{domain}");
    let evaluations = ips.iter().map(|ip| {
        let sender = sender.clone();
        async move {
            let out = dns
                .authenticator()
                .verify_spf(SpfParameters::verify_mail_from(
                    *ip,
                    helo,
                    "mxpace.check",
                    &sender,
                ))
                .await;
            (*ip, out.result())
        }
    });
    futures_util::future::join_all(evaluations)
        .await
        .into_iter()
        .map(|(ip, result)| authorized_verdict(domain, ip, result))
        .collect()
}

/// The verdict for one IP's SPF result.
pub fn authorized_verdict(domain: &str, ip: IpAddr, result: SpfResult) -> CheckResult {
    let id = format!("spf.authorized.{ip}");
    let word = result.to_string().to_ascii_lowercase();
    let evidence = vec![format!(
        "SPF check_host({ip}, {domain}) = {word} (evaluated by mail-auth)"
    )];
    let (status, summary, fix) = match result {
        SpfResult::Pass => (
            Status::Pass,
            format!("{ip} is authorised by SPF for {domain}"),
            String::new(),
        ),
        SpfResult::TempError => (
            Status::Warn,
            format!("SPF for {ip} could not be evaluated (temporary DNS error)"),
            "Retry; if it persists, check the DNS servers of every include.".to_string(),
        ),
        SpfResult::PermError => (
            Status::Fail,
            format!("SPF for {domain} is a permerror: no IP can pass"),
            "Fix the SPF record (see spf.record, spf.lookups, spf.void).".to_string(),
        ),
        _ => (
            Status::Fail,
            format!("{ip} is not authorised by SPF for {domain} (result {word})"),
            format!(
                "Add ip{}:{ip} (or the include of the service sending from it) to the SPF record of {domain}.",
                if ip.is_ipv4() { 4 } else { 6 }
            ),
        ),
    };
    CheckResult::new(id, status, summary)
        .evidence(evidence)
        .fix(fix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_mechanism_and_modifier() {
        let terms = parse_record(
            "v=spf1 +a mx:mail.example.com/24//64 -ptr ~ip4:192.0.2.0/24 ?ip6:2001:db8::/32 include:_spf.example.net exists:%{i}.x.example redirect=example.org foo=bar -all",
        )
        .unwrap();
        assert_eq!(terms.len(), 10);
        assert_eq!(
            terms[0],
            Term::Mechanism(
                Qualifier::Pass,
                Mechanism::A {
                    domain: None,
                    v4: 32,
                    v6: 128
                }
            )
        );
        assert_eq!(
            terms[1],
            Term::Mechanism(
                Qualifier::Pass,
                Mechanism::Mx {
                    domain: Some("mail.example.com".into()),
                    v4: 24,
                    v6: 64
                }
            )
        );
        assert_eq!(terms.iter().filter(|t| t.queries_dns()).count(), 6);
        assert_eq!(terms[9], Term::Mechanism(Qualifier::Fail, Mechanism::All));
    }

    #[test]
    fn syntax_errors_name_the_term() {
        for (record, bad) in [
            ("v=spf1 ip4:300.1.1.1 -all", "ip4:300.1.1.1"),
            ("v=spf1 include: -all", "include:"),
            ("v=spf1 foo:bar -all", "foo:bar"),
            ("v=spf1 ip4:192.0.2.1-all", "ip4:192.0.2.1-all"),
            ("v=spf1 a/33", "a/33"),
            (
                "v=spf1 redirect=a.example redirect=b.example",
                "redirect=b.example",
            ),
        ] {
            let e = parse_record(record).unwrap_err();
            assert_eq!(e.term, bad, "{record}");
        }
        assert!(parse_record("v=spf10 -all").is_err());
        assert!(!is_spf("v=spf1-all"));
        assert!(is_spf("V=SPF1 -all"));
    }

    #[test]
    fn term_text_round_trips() {
        for t in [
            "a",
            "-mx:example.com/24//64",
            "~ip4:192.0.2.0/24",
            "?ip6:2001:db8::/32",
            "include:x.example",
            "-all",
        ] {
            let parsed = parse_record(&format!("v=spf1 {t}")).unwrap();
            let Term::Mechanism(q, m) = &parsed[0] else {
                panic!()
            };
            assert_eq!(term_text(*q, m), t);
        }
    }
}
