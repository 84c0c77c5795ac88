//! DKIM: key records per selector (`dkim.key`) and, for a given message, signature
//! verification and d= alignment with From (`dkim.signature`, `dkim.alignment`) through
//! mail-auth. The RSA key-size reader is ours: mail-auth parses keys but does not expose
//! their size.

use crate::dns::{Answer, Dns};
use crate::report::{CheckResult, Status};
use base64::Engine;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::{AuthenticatedMessage, DkimResult, DmarcResult, SpfOutput};

/// RFC 8301 §3.2: verifiers must not accept RSA keys under 1024 bits.
pub const MIN_RSA_BITS: usize = 1024;
/// 2048 bits is what Microsoft, Google and M3AAWG recommend today.
pub const RECOMMENDED_RSA_BITS: usize = 2048;

/// A parsed DKIM key record (RFC 6376 §3.6.1): the tags we judge.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    /// `k=`, default `rsa`.
    pub key_type: String,
    /// `p=` decoded; empty means revoked.
    pub public_key: Vec<u8>,
    /// `t=y`: testing mode.
    pub testing: bool,
}

/// Parses `v=DKIM1; k=rsa; p=...`.
pub fn parse_key_record(text: &str) -> Result<KeyRecord, String> {
    let mut key_type = "rsa".to_string();
    let mut p = None;
    let mut testing = false;
    for (i, tag) in text
        .split(';')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .enumerate()
    {
        let (name, value) = tag
            .split_once('=')
            .ok_or_else(|| format!("tag {tag:?} has no '='"))?;
        let value: String = value.chars().filter(|c| !c.is_whitespace()).collect();
        match name.trim() {
            "v" if i != 0 => return Err("v= must be the first tag".into()),
            "v" if value != "DKIM1" => return Err(format!("v={value}, expected DKIM1")),
            "k" => key_type = value.to_ascii_lowercase(),
            "p" => p = Some(value),
            "t" => testing = value.split(':').any(|f| f == "y"),
            _ => {}
        }
    }
    let p = p.ok_or("no p= tag")?;
    let public_key = base64::engine::general_purpose::STANDARD
        .decode(p.as_bytes())
        .map_err(|e| format!("p= is not valid base64: {e}"))?;
    Ok(KeyRecord {
        key_type,
        public_key,
        testing,
    })
}

/// Bits of the RSA modulus in a DER public key: SubjectPublicKeyInfo (what RFC 6376 says
/// to publish) or a bare PKCS#1 RSAPublicKey (which some signers publish).
pub fn rsa_modulus_bits(der: &[u8]) -> Option<usize> {
    let (outer, _) = der_item(der, 0x30)?;
    // SPKI: SEQUENCE { SEQUENCE algorithm, BIT STRING key }
    if let Some((_, after_alg)) = der_item(outer, 0x30)
        && let Some((bits, _)) = der_item(after_alg, 0x03)
    {
        let pkcs1 = bits.get(1..)?; // skip the unused-bits byte
        let (seq, _) = der_item(pkcs1, 0x30)?;
        return modulus_bits(seq);
    }
    modulus_bits(outer)
}

fn modulus_bits(rsa_public_key: &[u8]) -> Option<usize> {
    let (n, _) = der_item(rsa_public_key, 0x02)?;
    let n = {
        let first = n.iter().position(|b| *b != 0)?;
        &n[first..]
    };
    Some(n.len() * 8 - n[0].leading_zeros() as usize)
}

/// One DER item of the expected tag: (content, rest).
fn der_item(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    let first = *input.get(1)? as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let len = input
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, 2 + n)
    };
    let content = input.get(header..header.checked_add(len)?)?;
    Some((content, &input[header + len..]))
}

/// The verdict on one selector's key record.
pub fn key_verdict(selector: &str, name: &str, answer: &Answer<crate::dns::TxtSet>) -> CheckResult {
    let id = format!("dkim.key.{selector}");
    let records: Vec<String> = match answer {
        Answer::Found(set) => set.records.iter().map(|r| r.text()).collect(),
        Answer::Failed(e) => {
            return CheckResult::new(
                id,
                Status::Warn,
                format!("DKIM key {name} could not be looked up"),
            )
            .evidence([format!("{name} TXT: lookup failed: {e}")])
            .fix("Check that the DNS servers of the domain answer.");
        }
        other => {
            return CheckResult::new(id, Status::Fail, format!("no DKIM key at {name}"))
                .evidence([format!("{name} TXT: {}", other.describe_negative())])
                .fix(format!("Publish the public key of selector {selector} at {name}, or sign with a selector that exists."));
        }
    };
    let mut evidence: Vec<String> = records
        .iter()
        .map(|r| format!("{name} TXT \"{r}\""))
        .collect();
    let dkim: Vec<&String> = records
        .iter()
        .filter(|r| r.contains("p=") || r.trim_start().starts_with("v=DKIM1"))
        .collect();
    let text = match dkim.as_slice() {
        [one] => *one,
        [] => {
            return CheckResult::new(
                id,
                Status::Fail,
                format!("no DKIM key record among the TXT records at {name}"),
            )
            .evidence(evidence)
            .fix(format!("Publish v=DKIM1; k=rsa; p=<key> at {name}."));
        }
        _ => {
            return CheckResult::new(
                id,
                Status::Fail,
                format!(
                    "{} DKIM key records at {name}; verifiers reject the ambiguity",
                    dkim.len()
                ),
            )
            .evidence(evidence)
            .fix("Keep exactly one key record per selector.");
        }
    };
    let key = match parse_key_record(text) {
        Ok(k) => k,
        Err(e) => {
            evidence.push(format!("parse error: {e}"));
            return CheckResult::new(
                id,
                Status::Fail,
                format!("DKIM key record at {name} is malformed: {e}"),
            )
            .evidence(evidence)
            .fix("Republish the record as v=DKIM1; k=rsa; p=<base64 of the public key>.");
        }
    };
    if key.public_key.is_empty() {
        return CheckResult::new(
            id,
            Status::Fail,
            format!("DKIM key {selector} is revoked (empty p=)"),
        )
        .evidence(evidence)
        .fix("Sign with a selector whose key is published.");
    }
    let testing_note = |mut r: CheckResult| {
        if key.testing {
            r.evidence
                .push("t=y: the domain declares it is testing DKIM".into());
        }
        r
    };
    match key.key_type.as_str() {
        "ed25519" if key.public_key.len() == 32 => testing_note(
            CheckResult::new(
                id,
                Status::Warn,
                format!(
                    "DKIM key {selector} is Ed25519: valid, but not verified by every receiver"
                ),
            )
            .evidence(evidence)
            .fix(
                "Also sign with an RSA-2048 key (dual signing): Microsoft does not verify Ed25519.",
            ),
        ),
        "ed25519" => CheckResult::new(
            id,
            Status::Fail,
            format!(
                "DKIM Ed25519 key {selector} is {} bytes, not 32",
                key.public_key.len()
            ),
        )
        .evidence(evidence)
        .fix("Republish the 32-byte Ed25519 public key."),
        "rsa" => match rsa_modulus_bits(&key.public_key) {
            None => CheckResult::new(
                id,
                Status::Fail,
                format!("DKIM key {selector}: p= is not an RSA public key"),
            )
            .evidence(evidence)
            .fix("Republish p= as the base64 DER SubjectPublicKeyInfo of the RSA key."),
            Some(bits) => {
                evidence.push(format!("RSA modulus: {bits} bits"));
                let r = if bits < MIN_RSA_BITS {
                    CheckResult::new(id, Status::Fail, format!("DKIM key {selector} is RSA-{bits}: under {MIN_RSA_BITS} bits, verifiers must reject it (RFC 8301)"))
                        .fix(format!("Generate an RSA-{RECOMMENDED_RSA_BITS} key, publish it under a new selector, sign with it."))
                } else if bits < RECOMMENDED_RSA_BITS {
                    CheckResult::new(id, Status::Warn, format!("DKIM key {selector} is RSA-{bits}: accepted, {RECOMMENDED_RSA_BITS} recommended"))
                        .fix(format!("Rotate to an RSA-{RECOMMENDED_RSA_BITS} key under a new selector."))
                } else {
                    CheckResult::new(
                        id,
                        Status::Pass,
                        format!("DKIM key {selector} is RSA-{bits}"),
                    )
                };
                testing_note(r.evidence(evidence))
            }
        },
        other => CheckResult::new(
            id,
            Status::Fail,
            format!("DKIM key {selector} has unknown type k={other}"),
        )
        .evidence(evidence)
        .fix("Use k=rsa (2048 bits)."),
    }
}

/// `dkim.key.<selector>` for every selector given; one warn when none was.
pub async fn check_keys(dns: &Dns, domain: &str, selectors: &[String]) -> Vec<CheckResult> {
    if selectors.is_empty() {
        return vec![CheckResult::new("dkim.key", Status::Warn, "no --selector given: DKIM keys not checked")
            .fix("Pass the selector(s) your MTA signs with (the s= of your DKIM-Signature) with --selector.")];
    }
    let lookups = selectors.iter().map(|s| async move {
        let name = format!("{s}._domainkey.{domain}");
        let answer = dns.txt(&name).await;
        key_verdict(s, &name, &answer)
    });
    futures_util::future::join_all(lookups).await
}

/// `dkim.signature` and `dkim.alignment` for a raw message.
pub async fn check_message(dns: &Dns, _domain: &str, raw: &[u8]) -> Vec<CheckResult> {
    let Some(msg) = AuthenticatedMessage::parse(raw) else {
        let r = CheckResult::new(
            "dkim.signature",
            Status::Fail,
            "the message could not be parsed as RFC 5322",
        )
        .fix("Pass the raw message as sent (headers, blank line, body).");
        return vec![r];
    };
    let outputs = dns.authenticator().verify_dkim(&msg).await;
    let from_domain = msg
        .from
        .first()
        .and_then(|f| f.rsplit_once('@'))
        .map(|(_, d)| d.to_ascii_lowercase());
    let mut evidence = Vec::new();
    if let Some(fd) = &from_domain {
        evidence.push(format!("From domain: {fd}"));
    }
    let mut passing = Vec::new();
    for out in &outputs {
        let (d, s) = out
            .signature()
            .map(|sig| (sig.d.clone(), sig.s.clone()))
            .unwrap_or_default();
        evidence.push(format!(
            "DKIM-Signature d={d} s={s}: {}",
            describe(out.result())
        ));
        if matches!(out.result(), DkimResult::Pass) {
            passing.push(d.to_ascii_lowercase());
        }
    }
    let signature = if outputs.is_empty() {
        CheckResult::new(
            "dkim.signature",
            Status::Fail,
            "the message carries no DKIM signature",
        )
        .evidence(evidence.clone())
        .fix("Sign outgoing mail with DKIM (RSA-2048) under your From domain.")
    } else if passing.is_empty() {
        CheckResult::new("dkim.signature", Status::Fail, "no DKIM signature on the message verifies")
            .evidence(evidence.clone())
            .fix("Check that the published key matches the private key, and that nothing rewrites the message after signing.")
    } else {
        CheckResult::new(
            "dkim.signature",
            Status::Pass,
            format!("{} DKIM signature(s) verify", passing.len()),
        )
        .evidence(evidence.clone())
    };
    let alignment = match &from_domain {
        None => CheckResult::new(
            "dkim.alignment",
            Status::Fail,
            "the message has no From address to align with",
        )
        .evidence(evidence)
        .fix("Give the message a From header."),
        Some(fd) => {
            let spf = SpfOutput::new(fd.clone());
            let dmarc = dns
                .authenticator()
                .verify_dmarc(DmarcParameters::new(&msg, &outputs, fd, &spf))
                .await;
            let dmarc_aligned = matches!(dmarc.dkim_result(), DmarcResult::Pass);
            let relaxed = passing.iter().any(|d| relaxed_aligned(d, fd));
            let mut evidence = evidence;
            evidence.push(format!(
                "DMARC DKIM evaluation for {fd}: {:?}",
                dmarc.dkim_result()
            ));
            if dmarc_aligned || (dmarc.dmarc_record().is_none() && relaxed) {
                CheckResult::new(
                    "dkim.alignment",
                    Status::Pass,
                    format!("a verifying signature aligns with From domain {fd}"),
                )
                .evidence(evidence)
            } else {
                CheckResult::new(
                    "dkim.alignment",
                    Status::Fail,
                    format!("no verifying DKIM signature has a d= aligned with From domain {fd}"),
                )
                .evidence(evidence)
                .fix(format!("Sign with d={fd} (or its organisational domain), not with your provider's domain."))
            }
        }
    };
    vec![signature, alignment]
}

/// Relaxed alignment without a public-suffix list: equal, or one a subdomain of the other
/// sharing at least two labels. Used only when no DMARC record tells mail-auth the
/// organisational domain.
fn relaxed_aligned(d: &str, from: &str) -> bool {
    d == from
        || (from.ends_with(&format!(".{d}")) && d.contains('.'))
        || (d.ends_with(&format!(".{from}")) && from.contains('.'))
}

fn describe(r: &DkimResult) -> String {
    match r {
        DkimResult::Pass => "pass".into(),
        DkimResult::Neutral(e) => format!("neutral ({e})"),
        DkimResult::Fail(e) => format!("fail ({e})"),
        DkimResult::PermError(e) => format!("permerror ({e})"),
        DkimResult::TempError(e) => format!("temperror ({e})"),
        DkimResult::None => "none".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_2048: &str = include_str!("../tests/keys/signer-2048.pub.b64");
    const KEY_512: &str = include_str!("../tests/keys/short-512.pub.b64");

    fn bits(b64: &str) -> Option<usize> {
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .unwrap();
        rsa_modulus_bits(&der)
    }

    #[test]
    fn reads_rsa_key_sizes() {
        assert_eq!(bits(KEY_2048), Some(2048));
        assert_eq!(bits(KEY_512), Some(512));
    }

    #[test]
    fn garbage_keys_are_none_not_panics() {
        assert_eq!(rsa_modulus_bits(&[]), None);
        assert_eq!(
            rsa_modulus_bits(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
        assert_eq!(rsa_modulus_bits(&[0x30, 0x03, 0x02, 0x01]), None);
        let der = base64::engine::general_purpose::STANDARD
            .decode(KEY_2048.trim())
            .unwrap();
        for cut in 0..der.len() {
            let _ = rsa_modulus_bits(&der[..cut]);
        }
    }

    #[test]
    fn key_record_tags() {
        let k = parse_key_record(&format!("v=DKIM1; k=rsa; t=y; p={}", KEY_512.trim())).unwrap();
        assert!(k.testing);
        assert_eq!(k.key_type, "rsa");
        assert!(parse_key_record("v=DKIM1; k=rsa").is_err());
        assert!(parse_key_record("v=DKIM1; p=!!!").is_err());
        assert!(parse_key_record("k=rsa; v=DKIM1; p=").is_err());
        assert!(
            parse_key_record("v=DKIM1; p=")
                .unwrap()
                .public_key
                .is_empty()
        );
    }

    #[test]
    fn relaxed_alignment_rule() {
        assert!(relaxed_aligned("example.com", "mail.example.com"));
        assert!(!relaxed_aligned("esp.example", "example.com"));
    }
}
