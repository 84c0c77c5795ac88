//! Bad input: malformed records, odd TXT splits, duplicate records, CNAME loops, a 4 KB
//! record (served by nsd), and SERVFAIL, silence, truncation and garbage (served by a tiny
//! UDP responder of our own). Every case ends in a clear warn/fail with evidence, in bounded
//! time, without a panic.

mod support;

use mxpace_identity::dns::{Answer, Dns};
use mxpace_identity::{CheckRequest, Report, Status, run_checks};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::nsd::Nsd;

async fn check_at(addr: SocketAddr, domain: &str, timeout: Duration) -> Report {
    let dns = Dns::new(Some(addr), timeout).unwrap();
    let req = CheckRequest {
        domain: domain.into(),
        ips: vec!["192.0.2.10".parse().unwrap()],
        helo: Some(format!("mail.{domain}")),
        selectors: vec!["s1".into()],
        ..CheckRequest::default()
    };
    tokio::time::timeout(Duration::from_secs(20), run_checks(&dns, &req))
        .await
        .expect("never hangs")
}

fn get<'a>(r: &'a Report, id: &str) -> &'a mxpace_identity::CheckResult {
    r.get(id).unwrap_or_else(|| panic!("no {id}"))
}

#[tokio::test]
async fn malformed_split_duplicate_looping_and_huge_records() {
    let nsd = Nsd::start();
    let t = Duration::from_millis(1500);
    let (malformed, split, odd, dup, cname, big, bad) = tokio::join!(
        check_at(nsd.addr, "malformed.bad.test", t),
        check_at(nsd.addr, "split.bad.test", t),
        check_at(nsd.addr, "oddsplit.bad.test", t),
        check_at(nsd.addr, "dup.bad.test", t),
        check_at(nsd.addr, "cl1.bad.test", t),
        check_at(nsd.addr, "big.bad.test", t),
        check_at(nsd.addr, "bad.test", t),
    );
    let rec = get(&malformed, "spf.record");
    assert_eq!(rec.status, Status::Fail);
    assert!(rec.summary.contains("ip4:192.0.2.300"), "{rec:#?}");

    // Strings are joined without a separator (RFC 7208 §3.3): a split that drops the space
    // glues two terms together, and the evidence shows each string.
    let rec = get(&split, "spf.record");
    assert_eq!(rec.status, Status::Fail);
    assert!(
        rec.evidence
            .iter()
            .any(|e| e.contains("string 2 (4 bytes): \"-all\"")),
        "{rec:#?}"
    );
    assert!(rec.summary.contains("ip4:192.0.2.10-all"));

    // Splits in odd places are legal when the joined text is.
    assert_eq!(get(&odd, "spf.record").status, Status::Pass);
    assert_eq!(get(&odd, "spf.authorized.192.0.2.10").status, Status::Pass);

    let rec = get(&dup, "spf.record");
    assert_eq!(rec.status, Status::Fail);
    assert!(
        rec.evidence.iter().any(|e| e.contains("2 SPF records")),
        "{rec:#?}"
    );

    let rec = get(&cname, "spf.record");
    assert_eq!(rec.status, Status::Fail);
    assert!(rec.evidence.iter().any(|e| e.contains("CNAME")), "{rec:#?}");

    // 4 KB: needs TCP after truncation; parsed whole, flagged for size.
    let size = get(&big, "spf.size");
    assert_eq!(size.status, Status::Warn, "{size:#?}");
    assert!(size.summary.contains("over 512"));
    assert_eq!(get(&big, "spf.record").status, Status::Pass);
    assert_eq!(
        size.evidence
            .iter()
            .filter(|e| e.starts_with("string "))
            .count(),
        17
    );

    let key = get(&bad, "dkim.key.s1");
    assert_eq!(key.status, Status::Fail);
    assert!(key.summary.contains("base64"), "{key:#?}");
    let dmarc = get(&bad, "dmarc.record");
    assert_eq!(dmarc.status, Status::Fail);
    assert!(dmarc.summary.contains("p=maybe"));
}

/// A UDP DNS responder that misbehaves on purpose, by a label of the query name:
/// `servfail` → SERVFAIL, `timeout` → silence, `tc` → truncated (and TCP closes at once),
/// `garbage` → undecodable bytes, anything else → NXDOMAIN.
struct Faulty {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Faulty {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_faulty() -> Faulty {
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    // Hold the TCP port too, so a TC retry over TCP meets a closing peer, not someone else.
    let tcp = tokio::net::TcpListener::bind(addr).await.unwrap();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            tokio::select! {
                Ok((conn, _)) = tcp.accept() => drop(conn),
                Ok((n, peer)) = udp.recv_from(&mut buf) => {
                    if let Some(reply) = faulty_reply(&buf[..n]) {
                        let _ = udp.send_to(&reply, peer).await;
                    }
                }
            }
        }
    });
    Faulty { addr, task }
}

fn faulty_reply(q: &[u8]) -> Option<Vec<u8>> {
    if q.len() < 13 {
        return None;
    }
    // Question: labels from byte 12 to the root label, then type and class.
    let mut i = 12;
    while i < q.len() && q[i] != 0 {
        i += 1 + q[i] as usize;
    }
    let end = (i + 5).min(q.len());
    let labels = {
        let mut labels = Vec::new();
        let mut j = 12;
        while j < q.len() && q[j] != 0 {
            let len = q[j] as usize;
            labels.push(
                String::from_utf8_lossy(&q[j + 1..(j + 1 + len).min(q.len())]).to_ascii_lowercase(),
            );
            j += 1 + len;
        }
        labels
    };
    let has = |l: &str| labels.iter().any(|x| x == l);
    let fault = ["timeout", "garbage", "servfail", "tc"]
        .into_iter()
        .find(|l| has(l))
        .unwrap_or("");
    let (rcode, tc) = match fault {
        "timeout" => return None,
        "garbage" => {
            return Some(vec![
                q[0], q[1], 0x81, 0x80, 0xff, 0xff, 0x00, 0x09, 1, 2, 3,
            ]);
        }
        "servfail" => (2u8, 0u8),
        "tc" => (0, 0x02),
        _ => (3, 0),
    };
    let mut r = vec![
        q[0],
        q[1],
        0x80 | tc | (q[2] & 0x01),
        0x80 | rcode,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    r.extend_from_slice(&q[12..end]);
    Some(r)
}

#[tokio::test]
async fn servfail_timeout_truncation_and_garbage_are_bounded_warnings_or_failures() {
    let faulty = start_faulty().await;
    let timeout = Duration::from_millis(300);
    let dns = Dns::new(Some(faulty.addr), timeout).unwrap();
    for name in [
        "servfail.example",
        "timeout.example",
        "tc.example",
        "garbage.example",
    ] {
        let started = Instant::now();
        let answer = dns.txt(name).await;
        let took = started.elapsed();
        assert!(matches!(answer, Answer::Failed(_)), "{name}: {answer:?}");
        assert!(took < Duration::from_secs(3), "{name} took {took:?}");
    }
    let Answer::Failed(e) = dns.txt("servfail.example").await else {
        panic!()
    };
    assert!(e.to_lowercase().contains("serv"), "{e}");
    let Answer::Failed(e) = dns.txt("timeout.example").await else {
        panic!()
    };
    assert!(
        e.contains("timed out") || e.to_lowercase().contains("timeout"),
        "{e}"
    );
    assert_eq!(dns.txt("nothing.example").await, Answer::NxDomain);

    // A whole check run against a server that never answers ends in bounded time with
    // every check decided (fail or warn), none silently passing.
    let started = Instant::now();
    let r = check_at(faulty.addr, "timeout.example", timeout).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let spf = get(&r, "spf.record");
    assert_eq!(spf.status, Status::Fail);
    assert!(
        spf.evidence
            .iter()
            .any(|e| e.contains("timed out") || e.contains("lookup failed")),
        "{spf:#?}"
    );
    assert_eq!(get(&r, "dkim.key.s1").status, Status::Warn);
    assert_eq!(get(&r, "helo").status, Status::Warn);
    assert_eq!(get(&r, "mx").status, Status::Warn);
    assert!(
        !r.checks
            .iter()
            .any(|c| c.id.starts_with("spf.") && c.status == Status::Pass),
        "{:#?}",
        r.checks
    );
}
