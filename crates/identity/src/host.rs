//! Host identity: the domain's MX (`mx`), each egress IP's reverse DNS (`rdns.<ip>`) and the
//! EHLO name (`helo`). Microsoft and most large receivers distrust IPs without a
//! forward-confirmed PTR and EHLO names that do not match it.

use crate::dns::{Answer, Dns};
use crate::report::{CheckResult, Status};
use std::net::IpAddr;

/// `mx`: the domain can receive mail (bounces, replies, DMARC reports).
pub async fn check_mx(dns: &Dns, domain: &str) -> CheckResult {
    let mx = match dns.mx(domain).await {
        Answer::Found(mx) => mx,
        Answer::Failed(e) => {
            return CheckResult::new(
                "mx",
                Status::Warn,
                format!("MX of {domain} could not be looked up"),
            )
            .evidence([format!("{domain} MX: lookup failed: {e}")]);
        }
        other => {
            return CheckResult::new(
                "mx",
                Status::Warn,
                format!("{domain} has no MX: replies and bounces go to its A record, if any"),
            )
            .evidence([format!("{domain} MX: {}", other.describe_negative())])
            .fix(format!(
                "Publish an MX for {domain} so replies and bounces reach you."
            ));
        }
    };
    if mx.len() == 1 && (mx[0].1.is_empty() || mx[0].1 == ".") {
        return CheckResult::new(
            "mx",
            Status::Warn,
            format!("{domain} publishes a null MX (RFC 7505): it receives no mail"),
        )
        .evidence([format!("{domain} MX {} .", mx[0].0)])
        .fix("A sending domain should accept bounces and replies: publish a real MX.");
    }
    let lookups = mx.iter().map(|(_, host)| dns.ips(host));
    let answers = futures_util::future::join_all(lookups).await;
    let mut evidence = Vec::new();
    let mut resolving = 0;
    for ((pref, host), answer) in mx.iter().zip(answers) {
        match answer {
            Answer::Found(ips) => {
                resolving += 1;
                let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
                evidence.push(format!("{domain} MX {pref} {host} -> {}", ips.join(", ")));
            }
            other => evidence.push(format!(
                "{domain} MX {pref} {host} -> {}",
                other.describe_negative()
            )),
        }
    }
    if resolving == 0 {
        CheckResult::new(
            "mx",
            Status::Fail,
            format!("no MX host of {domain} has an address"),
        )
        .evidence(evidence)
        .fix("Give the MX hosts A/AAAA records.")
    } else if resolving < mx.len() {
        CheckResult::new(
            "mx",
            Status::Warn,
            format!(
                "{} of {} MX hosts of {domain} have no address",
                mx.len() - resolving,
                mx.len()
            ),
        )
        .evidence(evidence)
        .fix("Remove or fix the MX hosts without address.")
    } else {
        CheckResult::new(
            "mx",
            Status::Pass,
            format!("{domain} has {} MX host(s), all resolving", mx.len()),
        )
        .evidence(evidence)
    }
}

/// What reverse DNS says about one IP.
#[derive(Debug, Clone, PartialEq)]
pub struct Rdns {
    /// The PTR lookup.
    pub ptr: Answer<Vec<String>>,
    /// PTR names whose A/AAAA include the IP.
    pub confirmed: Vec<String>,
    /// Evidence lines.
    pub evidence: Vec<String>,
}

async fn rdns(dns: &Dns, ip: IpAddr) -> Rdns {
    let ptr = dns.ptr(ip).await;
    let mut evidence = vec![format!(
        "{} PTR: {}",
        crate::dns::reverse_name(ip),
        match &ptr {
            Answer::Found(names) => names.join(", "),
            other => other.describe_negative(),
        }
    )];
    let mut confirmed = Vec::new();
    if let Answer::Found(names) = &ptr {
        // RFC 8601 §3 (iprev) looks at no more than a few names; 10 bounds a hostile answer.
        let lookups = names.iter().take(10).map(|n| dns.ips(n));
        for (name, answer) in names
            .iter()
            .zip(futures_util::future::join_all(lookups).await)
        {
            match answer {
                Answer::Found(ips) => {
                    let list: Vec<String> = ips.iter().map(ToString::to_string).collect();
                    evidence.push(format!("{name} -> {}", list.join(", ")));
                    if ips.contains(&ip) {
                        confirmed.push(name.clone());
                    }
                }
                other => evidence.push(format!("{name} -> {}", other.describe_negative())),
            }
        }
    }
    Rdns {
        ptr,
        confirmed,
        evidence,
    }
}

/// `rdns.<ip>` per IP and `helo`, in parallel.
pub async fn check_ips(dns: &Dns, ips: &[IpAddr], helo: Option<&str>) -> Vec<CheckResult> {
    let per_ip = futures_util::future::join_all(ips.iter().map(|ip| rdns(dns, *ip))).await;
    let mut out: Vec<CheckResult> = ips
        .iter()
        .zip(&per_ip)
        .map(|(ip, r)| rdns_verdict(*ip, r))
        .collect();
    let helo_answer = match helo {
        Some(h) => Some(dns.ips(h).await),
        None => None,
    };
    out.push(helo_verdict(ips, &per_ip, helo, helo_answer.as_ref()));
    out
}

/// The verdict on one IP's reverse DNS.
pub fn rdns_verdict(ip: IpAddr, r: &Rdns) -> CheckResult {
    let id = format!("rdns.{ip}");
    match &r.ptr {
        Answer::Failed(_) => CheckResult::new(id, Status::Warn, format!("PTR of {ip} could not be looked up"))
            .evidence(r.evidence.clone())
            .fix("Check the reverse zone's DNS servers."),
        Answer::NxDomain | Answer::NoData => CheckResult::new(id, Status::Fail, format!("{ip} has no PTR record"))
            .evidence(r.evidence.clone())
            .fix(format!("Ask the owner of {ip} (your hosting provider) to set a PTR to a name that resolves back to {ip}, e.g. your HELO name.")),
        Answer::Found(_) if r.confirmed.is_empty() => CheckResult::new(id, Status::Fail, format!("PTR of {ip} does not resolve back to {ip} (not forward-confirmed)"))
            .evidence(r.evidence.clone())
            .fix(format!("Make the PTR name's A/AAAA record include {ip}, or change the PTR to a name that does.")),
        Answer::Found(_) => CheckResult::new(id, Status::Pass, format!("{ip} has forward-confirmed PTR {}", r.confirmed.join(", ")))
            .evidence(r.evidence.clone()),
    }
}

/// The verdict on the EHLO name: resolves to every IP, and matches each IP's PTR.
pub fn helo_verdict(
    ips: &[IpAddr],
    rdns: &[Rdns],
    helo: Option<&str>,
    answer: Option<&Answer<Vec<IpAddr>>>,
) -> CheckResult {
    let (Some(helo), Some(answer)) = (helo, answer) else {
        return CheckResult::new(
            "helo",
            Status::Warn,
            "no --helo given: the EHLO name was not checked",
        )
        .fix("Pass the name your MTA gives in EHLO with --helo.");
    };
    let helo = crate::dns::normalize_name(helo);
    let resolved = match answer {
        Answer::Found(ips) => ips.clone(),
        Answer::Failed(e) => {
            return CheckResult::new(
                "helo",
                Status::Warn,
                format!("HELO name {helo} could not be looked up"),
            )
            .evidence([format!("{helo}: lookup failed: {e}")]);
        }
        other => {
            return CheckResult::new("helo", Status::Fail, format!("HELO name {helo} does not resolve"))
                .evidence([format!("{helo} A/AAAA: {}", other.describe_negative())])
                .fix(format!("Use a fully qualified name with an A record for each egress IP (and a matching PTR), or publish one for {helo}."));
        }
    };
    let list: Vec<String> = resolved.iter().map(ToString::to_string).collect();
    let mut evidence = vec![format!("{helo} -> {}", list.join(", "))];
    let mut status = Status::Pass;
    let mut fixes = Vec::new();
    if ips.is_empty() {
        return CheckResult::new(
            "helo",
            Status::Pass,
            format!("HELO name {helo} resolves (no --ip to compare)"),
        )
        .evidence(evidence);
    }
    for (ip, r) in ips.iter().zip(rdns) {
        let ptr_names = r.ptr.found().cloned().unwrap_or_default();
        if !resolved.contains(ip) {
            evidence.push(format!("{helo} does not resolve to {ip}"));
            status = Status::Fail;
            fixes.push(format!("an A/AAAA record of {helo} for {ip}"));
        } else if !ptr_names.contains(&helo) {
            evidence.push(format!("PTR of {ip} is {:?}, not {helo}", ptr_names));
            status = status.max(Status::Warn);
            fixes.push(format!("a PTR of {ip} naming {helo}"));
        } else {
            evidence.push(format!("{ip}: HELO, A and PTR agree"));
        }
    }
    let summary = match status {
        Status::Pass => format!("HELO name {helo} resolves to every IP and matches their PTR"),
        Status::Warn => {
            format!("HELO name {helo} resolves to the IPs but does not match every PTR")
        }
        Status::Fail => {
            format!("HELO name {helo} does not resolve to every egress IP (HELO mismatch)")
        }
    };
    let mut r = CheckResult::new("helo", status, summary).evidence(evidence);
    if !fixes.is_empty() {
        r = r.fix(format!("Publish {}.", fixes.join("; ")));
    }
    r
}
