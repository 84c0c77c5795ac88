//! Transport policies: MTA-STS (`mta-sts`, RFC 8461: the TXT record and the HTTPS policy
//! file) and TLS reporting (`tls-rpt`, RFC 8460).

use crate::dns::{Answer, Dns, TxtSet};
use crate::report::{CheckResult, Status};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// RFC 8461 §3.2: max_age is at most 31557600 seconds (one year).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;
/// RFC 8461 §3.3: policy bodies are small; we read at most 64 KiB.
const MAX_POLICY_BYTES: usize = 64 * 1024;

/// Where and how to fetch MTA-STS policy files.
#[derive(Debug, Clone)]
pub struct StsFetch {
    /// HTTPS port (443 in real life; tests use a loopback port).
    pub port: u16,
    /// Trust anchors; `None` means the system's CA store.
    pub roots: Option<Arc<rustls::RootCertStore>>,
    /// Bound on connect + TLS + request + response.
    pub timeout: Duration,
}

impl Default for StsFetch {
    fn default() -> Self {
        StsFetch {
            port: 443,
            roots: None,
            timeout: Duration::from_secs(5),
        }
    }
}

/// A parsed MTA-STS policy file (RFC 8461 §3.2).
#[derive(Debug, Clone, PartialEq)]
pub struct StsPolicy {
    /// `enforce`, `testing` or `none`.
    pub mode: String,
    /// `max_age` in seconds.
    pub max_age: u64,
    /// `mx` patterns (`mail.example.com`, `*.example.net`).
    pub mx: Vec<String>,
}

/// Parses a policy file: `key: value` lines, `version: STSv1` first.
pub fn parse_policy(text: &str) -> Result<StsPolicy, String> {
    let mut version = None;
    let mut mode = None;
    let mut max_age = None;
    let mut mx = Vec::new();
    for line in text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
    {
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| format!("line {line:?} is not \"key: value\""))?;
        let v = v.trim();
        match k.trim() {
            "version" => version = Some(v.to_string()),
            "mode" => mode = Some(v.to_string()),
            "max_age" => {
                max_age = Some(
                    v.parse::<u64>()
                        .map_err(|_| format!("max_age {v:?} is not a number"))?,
                )
            }
            "mx" => mx.push(v.to_ascii_lowercase()),
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err(format!(
            "version is {:?}, expected STSv1",
            version.unwrap_or_default()
        ));
    }
    let mode = mode.ok_or("no mode")?;
    if !["enforce", "testing", "none"].contains(&mode.as_str()) {
        return Err(format!("mode {mode:?} is not enforce, testing or none"));
    }
    let max_age = max_age.ok_or("no max_age")?;
    if max_age > MAX_AGE_LIMIT {
        return Err(format!("max_age {max_age} is over {MAX_AGE_LIMIT}"));
    }
    if mode != "none" && mx.is_empty() {
        return Err("no mx lines".into());
    }
    Ok(StsPolicy { mode, max_age, mx })
}

/// RFC 8461 §4.1: a pattern matches the host exactly, or `*.` matches one leftmost label.
pub fn mx_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => host == pattern,
    }
}

/// `mta-sts` and `tls-rpt`.
pub async fn check_all(dns: &Dns, domain: &str, fetch: &StsFetch) -> Vec<CheckResult> {
    let sts_name = format!("_mta-sts.{domain}");
    let rpt_name = format!("_smtp._tls.{domain}");
    let (sts, rpt, mx) = tokio::join!(dns.txt(&sts_name), dns.txt(&rpt_name), dns.mx(domain));
    let record = mta_sts_record_verdict(&sts_name, &sts);
    let sts_check = match record {
        Err(verdict) => verdict,
        Ok(evidence) => {
            let host = format!("mta-sts.{domain}");
            let fetched = fetch_policy(dns, &host, fetch).await;
            let mx_hosts: Vec<String> = mx
                .found()
                .map(|m| m.iter().map(|(_, h)| h.clone()).collect())
                .unwrap_or_default();
            policy_verdict(&host, evidence, fetched, &mx_hosts)
        }
    };
    vec![sts_check, tls_rpt_verdict(&rpt_name, &rpt)]
}

fn texts(answer: &Answer<TxtSet>, prefix: &str) -> Vec<String> {
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

/// The verdict on `_mta-sts.<domain>`: `Ok(evidence)` when a valid record asks us to fetch
/// the policy, `Err(verdict)` when the check ends here.
// The Err is the check's final verdict, made once per run: its size costs nothing here.
#[allow(clippy::result_large_err)]
pub fn mta_sts_record_verdict(
    name: &str,
    answer: &Answer<TxtSet>,
) -> Result<Vec<String>, CheckResult> {
    if let Answer::Failed(e) = answer {
        return Err(CheckResult::new(
            "mta-sts",
            Status::Warn,
            "MTA-STS record could not be looked up",
        )
        .evidence([format!("{name}: {e}")]));
    }
    let recs = texts(answer, "v=STSv1");
    match recs.as_slice() {
        [] => Err(CheckResult::new("mta-sts", Status::Warn, "no MTA-STS record: receivers cannot require TLS to you")
            .evidence([format!("{name} TXT: {}", if answer.found().is_some() { "no v=STSv1 record".into() } else { answer.describe_negative() })])
            .fix("Optional for sending; to protect mail to you, publish _mta-sts TXT \"v=STSv1; id=...\" and the policy file at https://mta-sts.<domain>/.well-known/mta-sts.txt.")),
        [one] => {
            let has_id = one.split(';').any(|t| {
                t.trim()
                    .strip_prefix("id=")
                    .is_some_and(|id| !id.is_empty() && id.len() <= 32 && id.chars().all(|c| c.is_ascii_alphanumeric()))
            });
            if has_id {
                Ok(vec![format!("{name} TXT \"{one}\"")])
            } else {
                Err(CheckResult::new("mta-sts", Status::Fail, "MTA-STS record has no valid id= (1-32 letters/digits)")
                    .evidence([format!("{name} TXT \"{one}\"")])
                    .fix("Publish v=STSv1; id=<1-32 alphanumerics>, changed on every policy change."))
            }
        }
        many => Err(CheckResult::new("mta-sts", Status::Fail, format!("{} MTA-STS records: RFC 8461 §3.1 says to ignore them all", many.len()))
            .evidence(many.iter().map(|t| format!("{name} TXT \"{t}\"")))
            .fix("Keep exactly one v=STSv1 record.")),
    }
}

/// The verdict on the fetched policy file against the domain's MX hosts.
pub fn policy_verdict(
    host: &str,
    mut evidence: Vec<String>,
    fetched: Result<String, String>,
    mx_hosts: &[String],
) -> CheckResult {
    let url = format!("https://{host}/.well-known/mta-sts.txt");
    let body = match fetched {
        Ok(b) => b,
        Err(e) => {
            evidence.push(format!("{url}: {e}"));
            return CheckResult::new("mta-sts", Status::Fail, "MTA-STS record published but the policy file cannot be fetched")
                .evidence(evidence)
                .fix(format!("Serve the policy at {url} over HTTPS with a valid certificate for {host}, or remove the _mta-sts record."));
        }
    };
    let policy = match parse_policy(&body) {
        Ok(p) => p,
        Err(e) => {
            evidence.push(format!("{url}: {e}"));
            return CheckResult::new(
                "mta-sts",
                Status::Fail,
                format!("MTA-STS policy file is invalid: {e}"),
            )
            .evidence(evidence)
            .fix("Serve version: STSv1, mode, mx and max_age lines (RFC 8461 §3.2).");
        }
    };
    evidence.push(format!(
        "{url}: mode: {}, max_age: {}, mx: {}",
        policy.mode,
        policy.max_age,
        policy.mx.join(", ")
    ));
    let uncovered: Vec<&String> = mx_hosts
        .iter()
        .filter(|h| !policy.mx.iter().any(|p| mx_matches(p, h)))
        .collect();
    if policy.mode != "none" && !uncovered.is_empty() {
        let list: Vec<&str> = uncovered.iter().map(|s| s.as_str()).collect();
        evidence.push(format!(
            "MX hosts not matched by the policy: {}",
            list.join(", ")
        ));
        let status = if policy.mode == "enforce" {
            Status::Fail
        } else {
            Status::Warn
        };
        return CheckResult::new(
            "mta-sts",
            status,
            format!(
                "MTA-STS policy ({}) does not cover every MX host",
                policy.mode
            ),
        )
        .evidence(evidence)
        .fix("Add an mx: line for every MX host, then change the id= of the _mta-sts record.");
    }
    match policy.mode.as_str() {
        "enforce" => CheckResult::new(
            "mta-sts",
            Status::Pass,
            "MTA-STS policy is enforced and covers every MX host",
        )
        .evidence(evidence),
        mode => CheckResult::new(
            "mta-sts",
            Status::Warn,
            format!("MTA-STS policy is in mode {mode}: TLS is not required yet"),
        )
        .evidence(evidence)
        .fix("Once TLS-RPT reports are clean, switch to mode: enforce."),
    }
}

/// Fetches `https://<host>/.well-known/mta-sts.txt` (HTTP/1.0 GET, bounded in time and size).
/// The request is so small that a hand-written one avoids an HTTP client dependency.
pub async fn fetch_policy(dns: &Dns, host: &str, fetch: &StsFetch) -> Result<String, String> {
    let ips = match dns.ips(host).await {
        Answer::Found(ips) => ips,
        other => return Err(format!("{host}: {}", other.describe_negative())),
    };
    let roots = match &fetch.roots {
        Some(r) => r.clone(),
        None => Arc::new(system_roots()),
    };
    let addr = SocketAddr::new(ips[0], fetch.port);
    match tokio::time::timeout(fetch.timeout, get(addr, host, roots)).await {
        Err(_) => Err(format!("no answer within {} ms", fetch.timeout.as_millis())),
        Ok(r) => r,
    }
}

/// Trust anchors from a PEM file's certificates (for a private CA, or tests).
pub fn roots_from_pem(pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    let mut store = rustls::RootCertStore::empty();
    let mut reader = pem;
    for cert in rustls_pemfile::certs(&mut reader) {
        let cert = cert.map_err(|e| format!("invalid PEM: {e}"))?;
        store
            .add(cert)
            .map_err(|e| format!("invalid certificate: {e}"))?;
    }
    if store.is_empty() {
        return Err("no certificate in the PEM file".into());
    }
    Ok(store)
}

fn system_roots() -> rustls::RootCertStore {
    let mut store = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = store.add(cert);
    }
    store
}

async fn get(
    addr: SocketAddr,
    host: &str,
    roots: Arc<rustls::RootCertStore>,
) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("bad host name: {e}"))?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {addr}: {e}"))?;
    let request = format!(
        "GET /.well-known/mta-sts.txt HTTP/1.0\r\nHost: {host}\r\nUser-Agent: mxpace-check\r\n\r\n"
    );
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tls.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                response.extend_from_slice(&chunk[..n]);
                if response.len() > MAX_POLICY_BYTES {
                    return Err(format!("response larger than {MAX_POLICY_BYTES} bytes"));
                }
            }
            // Servers often close without close_notify; what was read is complete for HTTP/1.0.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    parse_response(&response)
}

fn parse_response(raw: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .or_else(|| text.split_once("\n\n"))
        .ok_or("no HTTP header/body separator")?;
    let status = head.lines().next().unwrap_or("");
    let code = status.split_whitespace().nth(1).unwrap_or("");
    if code != "200" {
        return Err(format!("HTTP status line {status:?}, expected 200"));
    }
    let content_type = head.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.trim().to_ascii_lowercase())
    });
    if let Some(ct) = content_type
        && !ct.starts_with("text/plain")
    {
        return Err(format!(
            "Content-Type {ct:?}, RFC 8461 §3.2 requires text/plain"
        ));
    }
    Ok(body.to_string())
}

/// The verdict on `_smtp._tls.<domain>`.
pub fn tls_rpt_verdict(name: &str, answer: &Answer<TxtSet>) -> CheckResult {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_files() {
        let p = parse_policy("version: STSv1\r\nmode: enforce\r\nmx: mx.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n").unwrap();
        assert_eq!(p.mode, "enforce");
        assert_eq!(p.mx, vec!["mx.example.com", "*.example.net"]);
        assert!(parse_policy("mode: enforce\nmx: a\nmax_age: 1").is_err());
        assert!(parse_policy("version: STSv1\nmode: strict\nmx: a\nmax_age: 1").is_err());
        assert!(parse_policy("version: STSv1\nmode: enforce\nmax_age: 1").is_err());
        assert!(parse_policy("version: STSv1\nmode: enforce\nmx: a\nmax_age: 99999999").is_err());
        assert!(parse_policy("garbage").is_err());
    }

    #[test]
    fn mx_patterns() {
        assert!(mx_matches("*.example.net", "mx1.example.net"));
        assert!(!mx_matches("*.example.net", "a.b.example.net"));
        assert!(!mx_matches("*.example.net", "example.net"));
        assert!(mx_matches("mx.example.com", "MX.example.com."));
    }

    #[test]
    fn http_responses() {
        assert_eq!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nversion: STSv1\r\n"
            )
            .unwrap(),
            "version: STSv1\r\n"
        );
        assert!(parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\nx").is_err());
        assert!(parse_response(b"garbage").is_err());
    }
}
