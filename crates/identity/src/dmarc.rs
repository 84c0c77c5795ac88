//! DMARC: the record (`dmarc.record`), its policy (`dmarc.policy`), its report destinations
//! (`dmarc.reporting`), and the composite `microsoft.bulk-sender` verdict.

use crate::dns::{Answer, Dns};
use crate::report::{CheckResult, Status};
use std::collections::BTreeMap;

/// A parsed DMARC record: tag → value, in the order written.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DmarcRecord {
    /// Where it was found (`_dmarc.<domain>`).
    pub name: String,
    /// The text as published.
    pub text: String,
    /// Tags, lower-cased names.
    pub tags: BTreeMap<String, String>,
}

impl DmarcRecord {
    /// A tag's value.
    pub fn tag(&self, name: &str) -> Option<&str> {
        self.tags.get(name).map(String::as_str)
    }
}

/// Parses `v=DMARC1; p=...` (RFC 7489 §6.3): v first, p present and known.
pub fn parse_record(name: &str, text: &str) -> Result<DmarcRecord, String> {
    let mut tags = BTreeMap::new();
    for (i, part) in text
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .enumerate()
    {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("tag {part:?} has no '='"))?;
        let k = k.trim().to_ascii_lowercase();
        if i == 0 && (k != "v" || v.trim() != "DMARC1") {
            return Err("the record must start with v=DMARC1".into());
        }
        tags.insert(k, v.trim().to_string());
    }
    let known = ["none", "quarantine", "reject"];
    match tags.get("p").map(|p| p.to_ascii_lowercase()) {
        None => return Err("no p= tag".into()),
        Some(p) if !known.contains(&p.as_str()) => {
            return Err(format!("p={p} is not none, quarantine or reject"));
        }
        _ => {}
    }
    for t in ["sp", "np"] {
        if let Some(v) = tags.get(t)
            && !known.contains(&v.to_ascii_lowercase().as_str())
        {
            return Err(format!("{t}={v} is not none, quarantine or reject"));
        }
    }
    if let Some(pct) = tags.get("pct")
        && pct.parse::<u8>().ok().filter(|p| *p <= 100).is_none()
    {
        return Err(format!("pct={pct} is not 0-100"));
    }
    Ok(DmarcRecord {
        name: name.into(),
        text: text.into(),
        tags,
    })
}

/// Finds the DMARC record that applies to `domain`: its own, or its parents' (a shortened
/// form of the DMARCbis tree walk, stopping at two labels).
async fn discover(dns: &Dns, domain: &str) -> (Option<Result<DmarcRecord, String>>, Vec<String>) {
    let mut evidence = Vec::new();
    let mut name = domain.to_string();
    loop {
        let qname = format!("_dmarc.{name}");
        match dns.txt(&qname).await {
            Answer::Found(set) => {
                let texts: Vec<String> = set
                    .records
                    .iter()
                    .map(|r| r.text())
                    .filter(|t| t.trim_start().to_ascii_lowercase().starts_with("v=dmarc1"))
                    .collect();
                for t in &texts {
                    evidence.push(format!("{qname} TXT \"{t}\""));
                }
                match texts.len() {
                    0 => evidence.push(format!("{qname}: TXT records but none is v=DMARC1")),
                    1 => return (Some(parse_record(&qname, &texts[0])), evidence),
                    n => {
                        return (
                            Some(Err(format!(
                                "{n} DMARC records at {qname}; receivers ignore them all"
                            ))),
                            evidence,
                        );
                    }
                }
            }
            Answer::Failed(e) => {
                evidence.push(format!("{qname} TXT: lookup failed: {e}"));
                return (
                    Some(Err(format!("lookup of {qname} failed: {e}"))),
                    evidence,
                );
            }
            other => evidence.push(format!("{qname} TXT: {}", other.describe_negative())),
        }
        match name.split_once('.') {
            Some((_, parent)) if parent.contains('.') => name = parent.to_string(),
            _ => return (None, evidence),
        }
    }
}

/// `dmarc.record`, `dmarc.policy`, `dmarc.reporting`.
pub async fn check_all(dns: &Dns, domain: &str) -> Vec<CheckResult> {
    let (found, evidence) = discover(dns, domain).await;
    let record = match found {
        None => {
            let fix = format!(
                "Publish TXT at _dmarc.{domain}: \"v=DMARC1; p=none; rua=mailto:dmarc@{domain}\", then move to quarantine/reject."
            );
            return vec![
                CheckResult::new(
                    "dmarc.record",
                    Status::Fail,
                    format!("{domain} publishes no DMARC record"),
                )
                .evidence(evidence.clone())
                .fix(fix.clone()),
                CheckResult::new("dmarc.policy", Status::Fail, "no DMARC policy")
                    .evidence(evidence.clone())
                    .fix(fix.clone()),
                CheckResult::new(
                    "dmarc.reporting",
                    Status::Warn,
                    "no DMARC record, so no reports",
                )
                .evidence(evidence)
                .fix(fix),
            ];
        }
        Some(Err(e)) => {
            let fix = "Publish exactly one record: \"v=DMARC1; p=none; rua=mailto:...\".";
            return vec![
                CheckResult::new(
                    "dmarc.record",
                    Status::Fail,
                    format!("DMARC record of {domain} is unusable: {e}"),
                )
                .evidence(evidence.clone())
                .fix(fix),
                CheckResult::new("dmarc.policy", Status::Fail, "no usable DMARC policy")
                    .evidence(evidence.clone())
                    .fix(fix),
                CheckResult::new(
                    "dmarc.reporting",
                    Status::Warn,
                    "no usable DMARC record, so no reports",
                )
                .evidence(evidence)
                .fix(fix),
            ];
        }
        Some(Ok(r)) => r,
    };
    let record_check = CheckResult::new(
        "dmarc.record",
        Status::Pass,
        format!("DMARC record found at {}", record.name),
    )
    .evidence(evidence.clone());
    let reporting = reporting_check(dns, domain, &record).await;
    vec![record_check, policy_check(domain, &record), reporting]
}

/// `dmarc.policy`: p, sp, np, pct and alignment modes.
pub fn policy_check(domain: &str, r: &DmarcRecord) -> CheckResult {
    let p = r.tag("p").unwrap_or("none").to_ascii_lowercase();
    let sp = r
        .tag("sp")
        .map(str::to_ascii_lowercase)
        .unwrap_or_else(|| p.clone());
    let np = r
        .tag("np")
        .map(str::to_ascii_lowercase)
        .unwrap_or_else(|| sp.clone());
    let pct: u8 = r.tag("pct").and_then(|v| v.parse().ok()).unwrap_or(100);
    let adkim = if r.tag("adkim").is_some_and(|v| v.eq_ignore_ascii_case("s")) {
        "strict"
    } else {
        "relaxed"
    };
    let aspf = if r.tag("aspf").is_some_and(|v| v.eq_ignore_ascii_case("s")) {
        "strict"
    } else {
        "relaxed"
    };
    let evidence = vec![
        format!("{} \"{}\"", r.name, r.text),
        format!("p={p} sp={sp} np={np} pct={pct} adkim={adkim} aspf={aspf}"),
    ];
    if p == "none" {
        CheckResult::new(
            "dmarc.policy",
            Status::Warn,
            format!("DMARC policy of {domain} is p=none: monitoring only"),
        )
        .evidence(evidence)
        .fix("Once reports show your mail aligns, move to p=quarantine, then p=reject.")
    } else if pct < 100 {
        CheckResult::new(
            "dmarc.policy",
            Status::Warn,
            format!("DMARC policy p={p} applies to {pct}% of failing mail"),
        )
        .evidence(evidence)
        .fix("Raise pct to 100 once aligned.")
    } else {
        CheckResult::new(
            "dmarc.policy",
            Status::Pass,
            format!("DMARC policy p={p} (sp={sp}, np={np})"),
        )
        .evidence(evidence)
    }
}

fn mailto_domains(value: Option<&str>) -> Vec<String> {
    value
        .unwrap_or("")
        .split(',')
        .filter_map(|u| u.trim().strip_prefix("mailto:"))
        .filter_map(|addr| {
            addr.split('!')
                .next()?
                .rsplit_once('@')
                .map(|(_, d)| d.to_ascii_lowercase())
        })
        .collect()
}

fn same_org(a: &str, b: &str) -> bool {
    fn tail(d: &str) -> Vec<&str> {
        d.rsplit('.').take(2).collect()
    }
    tail(a) == tail(b)
}

/// `dmarc.reporting`: rua/ruf present; external destinations authorise receiving
/// (RFC 7489 §7.1: `<domain>._report._dmarc.<destination>` TXT v=DMARC1).
pub async fn reporting_check(dns: &Dns, domain: &str, r: &DmarcRecord) -> CheckResult {
    let rua = mailto_domains(r.tag("rua"));
    let ruf = mailto_domains(r.tag("ruf"));
    let mut evidence = vec![
        format!("rua={}", r.tag("rua").unwrap_or("(none)")),
        format!("ruf={}", r.tag("ruf").unwrap_or("(none)")),
    ];
    if rua.is_empty() {
        return CheckResult::new(
            "dmarc.reporting",
            Status::Warn,
            "no rua: you receive no aggregate reports",
        )
        .evidence(evidence)
        .fix(format!(
            "Add rua=mailto:dmarc-reports@{domain} to see who sends as you."
        ));
    }
    let mut external: Vec<String> = rua
        .iter()
        .chain(&ruf)
        .filter(|d| !same_org(d, domain))
        .cloned()
        .collect();
    external.sort();
    external.dedup();
    let checks = external.iter().map(|dest| async move {
        let name = format!("{domain}._report._dmarc.{dest}");
        let ok = match dns.txt(&name).await {
            Answer::Found(set) => set
                .records
                .iter()
                .any(|t| t.text().trim_start().starts_with("v=DMARC1")),
            _ => false,
        };
        (name, ok)
    });
    let mut unauthorised = Vec::new();
    for (name, ok) in futures_util::future::join_all(checks).await {
        evidence.push(format!(
            "{name}: {}",
            if ok {
                "authorised (v=DMARC1)"
            } else {
                "not authorised"
            }
        ));
        if !ok {
            unauthorised.push(name);
        }
    }
    if unauthorised.is_empty() {
        CheckResult::new(
            "dmarc.reporting",
            Status::Pass,
            format!("reports go to {} destination(s)", rua.len() + ruf.len()),
        )
        .evidence(evidence)
    } else {
        CheckResult::new(
            "dmarc.reporting",
            Status::Warn,
            "an external report destination has not authorised your reports; receivers drop them",
        )
        .evidence(evidence)
        .fix(format!(
            "Ask the destination to publish TXT \"v=DMARC1\" at {}.",
            unauthorised.join(", ")
        ))
    }
}

/// `microsoft.bulk-sender`: Outlook.com's 2025 requirement for senders of more than
/// 5,000 messages a day (announced April 2025, enforced with `550 5.7.515 Access denied,
/// sending domain does not meet the required authentication level`): SPF pass, DKIM pass,
/// DMARC at least p=none, aligned with SPF or DKIM. Computed from the other checks.
pub fn microsoft_bulk_sender(checks: &[CheckResult]) -> CheckResult {
    let status_of = |prefix: &str| -> Vec<&CheckResult> {
        checks
            .iter()
            .filter(|c| c.id == prefix || c.id.starts_with(&format!("{prefix}.")))
            .collect()
    };
    let mut evidence = Vec::new();
    let mut worst = Status::Pass;
    let mut fixes = Vec::new();
    // A failing part fails the verdict. A warning counts only when it means "not known":
    // SPF not evaluable, or no DKIM selector given (an RSA-1024 key still passes DKIM).
    let mut judge = |name: &str, items: Vec<&CheckResult>| {
        if items.is_empty() {
            evidence.push(format!("{name}: not checked"));
            worst = worst.max(Status::Warn);
            return;
        }
        for c in items {
            evidence.push(format!("{}: {}", c.id, c.status));
            let unknown = c.status == Status::Warn
                && (c.id == "dkim.key" || c.id.starts_with("spf.authorized"));
            if c.status == Status::Fail || unknown {
                worst = worst.max(c.status);
                fixes.push(c.id.clone());
            }
        }
    };
    judge("SPF", status_of("spf.authorized"));
    let dkim = if checks.iter().any(|c| c.id == "dkim.signature") {
        status_of("dkim.signature")
    } else {
        status_of("dkim.key")
    };
    judge("DKIM", dkim);
    judge("DMARC", status_of("dmarc.record"));
    let summary = match worst {
        Status::Pass => {
            "meets Outlook.com's bulk-sender authentication requirement (SPF, DKIM, DMARC)"
                .to_string()
        }
        Status::Warn => {
            "may not meet Outlook.com's bulk-sender requirement: some parts could not be confirmed"
                .to_string()
        }
        Status::Fail => {
            "does not meet Outlook.com's bulk-sender requirement: expect 550 5.7.515 at volume"
                .to_string()
        }
    };
    let mut r = CheckResult::new("microsoft.bulk-sender", worst, summary).evidence(evidence);
    if !fixes.is_empty() {
        r = r.fix(format!("Fix {}; Outlook.com requires SPF pass, DKIM pass and a DMARC record for senders over 5,000 messages a day.", fixes.join(", ")));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let r = parse_record(
            "_dmarc.x",
            "v=DMARC1; p=reject; sp=quarantine; pct=50; rua=mailto:a@x",
        )
        .unwrap();
        assert_eq!(r.tag("sp"), Some("quarantine"));
        assert!(parse_record("_dmarc.x", "p=reject; v=DMARC1").is_err());
        assert!(parse_record("_dmarc.x", "v=DMARC1; rua=mailto:a@x").is_err());
        assert!(parse_record("_dmarc.x", "v=DMARC1; p=bogus").is_err());
        assert!(parse_record("_dmarc.x", "v=DMARC1; p=none; pct=150").is_err());
    }

    #[test]
    fn policy_none_is_a_warning() {
        let r = parse_record("_dmarc.x", "v=DMARC1; p=none").unwrap();
        assert_eq!(policy_check("x", &r).status, Status::Warn);
        let r = parse_record("_dmarc.x", "v=DMARC1; p=reject").unwrap();
        assert_eq!(policy_check("x", &r).status, Status::Pass);
    }

    #[test]
    fn mailto_domains_strip_size_suffix() {
        assert_eq!(
            mailto_domains(Some("mailto:a@Ext.example!10m, mailto:b@x.test")),
            vec!["ext.example", "x.test"]
        );
    }

    #[test]
    fn bulk_sender_fails_when_spf_fails() {
        let checks = vec![
            CheckResult::new("spf.authorized.192.0.2.1", Status::Fail, ""),
            CheckResult::new("dkim.key.s1", Status::Pass, ""),
            CheckResult::new("dmarc.record", Status::Pass, ""),
        ];
        assert_eq!(microsoft_bulk_sender(&checks).status, Status::Fail);
        let checks = vec![
            CheckResult::new("spf.authorized.192.0.2.1", Status::Pass, ""),
            CheckResult::new("dkim.key.s1", Status::Pass, ""),
            CheckResult::new("dmarc.record", Status::Pass, ""),
        ];
        assert_eq!(microsoft_bulk_sender(&checks).status, Status::Pass);
    }
}
