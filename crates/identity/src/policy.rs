//! Transport policies: MTA-STS (`mta-sts`, RFC 8461) and TLS reporting (`tls-rpt`, RFC 8460).
//! Only the DNS records are checked; the MTA-STS policy file (HTTPS) is not fetched yet.

use crate::dns::{Answer, Dns};
use crate::report::{CheckResult, Status};

/// `mta-sts` and `tls-rpt`.
pub async fn check_all(dns: &Dns, domain: &str) -> Vec<CheckResult> {
    let sts_name = format!("_mta-sts.{domain}");
    let rpt_name = format!("_smtp._tls.{domain}");
    let (sts, rpt) = tokio::join!(dns.txt(&sts_name), dns.txt(&rpt_name));
    vec![
        mta_sts_verdict(&sts_name, &sts),
        tls_rpt_verdict(&rpt_name, &rpt),
    ]
}

fn texts(answer: &Answer<crate::dns::TxtSet>, prefix: &str) -> Vec<String> {
    answer
        .found()
        .map(|s| {
            s.records
                .iter()
                .map(|r| r.text())
                .filter(|t| t.trim_start().starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// The verdict on `_mta-sts.<domain>`.
pub fn mta_sts_verdict(name: &str, answer: &Answer<crate::dns::TxtSet>) -> CheckResult {
    if let Answer::Failed(e) = answer {
        return CheckResult::new(
            "mta-sts",
            Status::Warn,
            "MTA-STS record could not be looked up",
        )
        .evidence([format!("{name}: {e}")]);
    }
    let recs = texts(answer, "v=STSv1");
    match recs.as_slice() {
        [] => CheckResult::new("mta-sts", Status::Warn, "no MTA-STS record: receivers cannot require TLS to you")
            .evidence([format!("{name} TXT: {}", if answer.found().is_some() { "no v=STSv1 record".into() } else { answer.describe_negative() })])
            .fix("Optional for sending; to protect mail to you, publish _mta-sts TXT \"v=STSv1; id=...\" and the policy file at https://mta-sts.<domain>/.well-known/mta-sts.txt."),
        [one] => {
            let has_id = one.split(';').any(|t| {
                t.trim()
                    .strip_prefix("id=")
                    .is_some_and(|id| !id.is_empty() && id.len() <= 32 && id.chars().all(|c| c.is_ascii_alphanumeric()))
            });
            if has_id {
                CheckResult::new("mta-sts", Status::Pass, "MTA-STS record present (policy file not fetched)")
                    .evidence([format!("{name} TXT \"{one}\""), "the HTTPS policy file was not fetched: not implemented yet".into()])
            } else {
                CheckResult::new("mta-sts", Status::Fail, "MTA-STS record has no valid id= (1-32 letters/digits)")
                    .evidence([format!("{name} TXT \"{one}\"")])
                    .fix("Publish v=STSv1; id=<1-32 alphanumerics>, changed on every policy change.")
            }
        }
        many => CheckResult::new("mta-sts", Status::Fail, format!("{} MTA-STS records: RFC 8461 §3.1 says to ignore them all", many.len()))
            .evidence(many.iter().map(|t| format!("{name} TXT \"{t}\"")))
            .fix("Keep exactly one v=STSv1 record."),
    }
}

/// The verdict on `_smtp._tls.<domain>`.
pub fn tls_rpt_verdict(name: &str, answer: &Answer<crate::dns::TxtSet>) -> CheckResult {
    if let Answer::Failed(e) = answer {
        return CheckResult::new(
            "tls-rpt",
            Status::Warn,
            "TLS-RPT record could not be looked up",
        )
        .evidence([format!("{name}: {e}")]);
    }
    let recs = texts(answer, "v=TLSRPTv1");
    match recs.as_slice() {
        [] => CheckResult::new(
            "tls-rpt",
            Status::Warn,
            "no TLS-RPT record: you get no reports of TLS failures to you",
        )
        .evidence([format!("{name} TXT: {}", answer.describe_negative())])
        .fix("Publish _smtp._tls TXT \"v=TLSRPTv1; rua=mailto:tls-reports@<domain>\"."),
        [one] if one.contains("rua=mailto:") || one.contains("rua=https:") => {
            CheckResult::new("tls-rpt", Status::Pass, "TLS-RPT record present")
                .evidence([format!("{name} TXT \"{one}\"")])
        }
        [one] => CheckResult::new("tls-rpt", Status::Fail, "TLS-RPT record has no usable rua=")
            .evidence([format!("{name} TXT \"{one}\"")])
            .fix("Add rua=mailto:... or rua=https://..."),
        many => CheckResult::new(
            "tls-rpt",
            Status::Fail,
            format!("{} TLS-RPT records", many.len()),
        )
        .evidence(many.iter().map(|t| format!("{name} TXT \"{t}\"")))
        .fix("Keep exactly one v=TLSRPTv1 record."),
    }
}
