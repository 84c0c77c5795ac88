//! Every identity check against a real DNS server (nsd) on loopback serving the zone files
//! in tests/zones/: one scenario per domain, as listed in issue 7.

mod support;

use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use mxpace_identity::dns::Dns;
use mxpace_identity::dnsbl::default_zones;
use mxpace_identity::{CheckRequest, Report, Status, run_checks};
use std::net::IpAddr;
use std::time::Duration;
use support::nsd::Nsd;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn check(nsd: &Nsd, req: CheckRequest) -> Report {
    let dns = Dns::new(Some(nsd.addr), Duration::from_millis(1500)).unwrap();
    tokio::time::timeout(Duration::from_secs(30), run_checks(&dns, &req))
        .await
        .expect("a check run never hangs")
}

fn status(r: &Report, id: &str) -> Status {
    r.get(id)
        .unwrap_or_else(|| panic!("no check {id} in {:#?}", r.checks))
        .status
}

fn evidence(r: &Report, id: &str) -> String {
    r.get(id).unwrap().evidence.join("\n")
}

fn req(domain: &str) -> CheckRequest {
    CheckRequest {
        domain: domain.into(),
        ..CheckRequest::default()
    }
}

/// Signs a message From `from_domain` with the test key, as `d=signer_domain; s=s1`.
fn signed_message(from_domain: &str, signer_domain: &str) -> Vec<u8> {
    let pem = include_str!("keys/signer-2048.pem");
    #[allow(deprecated)]
    // from_key_der needs the rustls-pki-types crate; the PEM path is the same key.
    let key = RsaKey::<Sha256>::from_pkcs8_pem(pem).expect("test key parses");
    let body = format!(
        "From: Sender <news@{from_domain}>\r\nTo: someone@example.net\r\nSubject: test\r\n\
         Date: Mon, 23 Nov 2026 12:00:00 +0000\r\nMessage-ID: <1@{from_domain}>\r\n\r\nHello.\r\n"
    );
    let sig = DkimSigner::from_key(key)
        .domain(signer_domain)
        .selector("s1")
        .headers(["From", "To", "Subject", "Date", "Message-ID"])
        .sign(body.as_bytes())
        .expect("signing works");
    let mut out = sig.to_header().into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

#[tokio::test]
async fn a_clean_domain_passes_everything_it_can() {
    let nsd = Nsd::start();
    let r = check(
        &nsd,
        CheckRequest {
            domain: "clean.test".into(),
            ips: vec![ip("192.0.2.10"), ip("192.0.2.11")],
            helo: Some("mail.clean.test".into()),
            selectors: vec!["s1".into()],
            message: Some(signed_message("clean.test", "clean.test")),
            blocklists: default_zones(),
        },
    )
    .await;
    for id in [
        "spf.record",
        "spf.lookups",
        "spf.void",
        "spf.size",
        "spf.authorized.192.0.2.10",
        "spf.authorized.192.0.2.11",
        "dkim.key.s1",
        "dkim.signature",
        "dkim.alignment",
        "dmarc.record",
        "dmarc.policy",
        "dmarc.reporting",
        "mx",
        "rdns.192.0.2.10",
        "rdns.192.0.2.11",
        "helo",
        "mta-sts",
        "tls-rpt",
        "microsoft.bulk-sender",
        "blocklist.zen.spamhaus.org[192.0.2.10]",
        "blocklist.dbl.spamhaus.org[clean.test]",
    ] {
        assert_eq!(status(&r, id), Status::Pass, "{id}: {:#?}", r.get(id));
    }
    assert!(evidence(&r, "dkim.key.s1").contains("2048 bits"));
    assert!(evidence(&r, "spf.lookups").contains("_spf.esp.test (include)"));
    // Zones this server does not serve are refused by nsd: no verdict, never "listed".
    let spamcop = r.get("blocklist.bl.spamcop.net[192.0.2.10]").unwrap();
    assert_eq!(spamcop.status, Status::Warn, "{spamcop:#?}");
    assert!(
        !r.checks.iter().any(|c| c.status == Status::Fail),
        "{:#?}",
        r.checks
    );
}

#[tokio::test]
async fn spf_limits_loops_and_authorisation() {
    let nsd = Nsd::start();
    let (lookups, void, looped, unauth) = tokio::join!(
        check(
            &nsd,
            CheckRequest {
                ips: vec![ip("192.0.2.101"), ip("192.0.2.200")],
                ..req("spf11.test")
            }
        ),
        check(
            &nsd,
            CheckRequest {
                ips: vec![ip("192.0.2.10")],
                ..req("void.test")
            }
        ),
        check(
            &nsd,
            CheckRequest {
                ips: vec![ip("192.0.2.10")],
                ..req("loop.test")
            }
        ),
        check(
            &nsd,
            CheckRequest {
                ips: vec![ip("192.0.2.10")],
                ..req("unauth.test")
            }
        ),
    );

    assert_eq!(status(&lookups, "spf.lookups"), Status::Fail);
    let ev = evidence(&lookups, "spf.lookups");
    assert!(ev.contains("total DNS-querying terms: 11"), "{ev}");
    assert!(
        ev.contains("a.spf11.test (include): 5 lookup(s) here"),
        "{ev}"
    );
    assert!(
        ev.contains("b.spf11.test (include): 4 lookup(s) here"),
        "{ev}"
    );
    // Evaluation stops at the first match: an IP found within the first 10 lookups still
    // passes at receivers, one that is not reaches lookup 11 and gets permerror.
    assert_eq!(status(&lookups, "spf.authorized.192.0.2.101"), Status::Pass);
    assert_eq!(status(&lookups, "spf.authorized.192.0.2.200"), Status::Fail);
    let ev = evidence(&lookups, "spf.authorized.192.0.2.200");
    assert!(ev.contains("permerror"), "{ev}");

    assert_eq!(status(&void, "spf.void"), Status::Fail);
    let ev = evidence(&void, "spf.void");
    assert!(ev.contains("void lookups: 3"), "{ev}");
    assert!(
        ev.contains("a:nx1.void.test: NXDOMAIN") && ev.contains("a:txtonly.void.test: no record"),
        "{ev}"
    );
    // mail-auth does not count void lookups, so the IP still passes there: the reason for our walker.
    assert_eq!(status(&void, "spf.authorized.192.0.2.10"), Status::Pass);

    assert_eq!(status(&looped, "spf.record"), Status::Fail);
    assert!(
        evidence(&looped, "spf.record").contains("loops back"),
        "{}",
        evidence(&looped, "spf.record")
    );

    assert_eq!(status(&unauth, "spf.record"), Status::Pass);
    assert_eq!(status(&unauth, "spf.authorized.192.0.2.10"), Status::Fail);
    assert_eq!(status(&unauth, "microsoft.bulk-sender"), Status::Fail);
}

#[tokio::test]
async fn dmarc_and_dkim_failures() {
    let nsd = Nsd::start();
    let (nodmarc, short, misaligned) = tokio::join!(
        check(
            &nsd,
            CheckRequest {
                ips: vec![ip("192.0.2.10")],
                ..req("nodmarc.test")
            }
        ),
        check(
            &nsd,
            CheckRequest {
                selectors: vec!["s1".into(), "missing".into()],
                ..req("shortkey.test")
            }
        ),
        check(
            &nsd,
            CheckRequest {
                message: Some(signed_message("misaligned.test", "signer.test")),
                ..req("misaligned.test")
            }
        ),
    );
    assert_eq!(status(&nodmarc, "dmarc.record"), Status::Fail);
    assert!(evidence(&nodmarc, "dmarc.record").contains("_dmarc.nodmarc.test TXT: NXDOMAIN"));
    assert_eq!(status(&nodmarc, "microsoft.bulk-sender"), Status::Fail);

    assert_eq!(status(&short, "dkim.key.s1"), Status::Fail);
    assert!(evidence(&short, "dkim.key.s1").contains("RSA modulus: 512 bits"));
    assert_eq!(status(&short, "dkim.key.missing"), Status::Fail);
    assert_eq!(
        status(&short, "dmarc.policy"),
        Status::Warn,
        "p=none is monitoring only"
    );

    assert_eq!(
        status(&misaligned, "dkim.signature"),
        Status::Pass,
        "{:#?}",
        misaligned.get("dkim.signature")
    );
    assert_eq!(status(&misaligned, "dkim.alignment"), Status::Fail);
    let ev = evidence(&misaligned, "dkim.alignment");
    assert!(
        ev.contains("d=signer.test") && ev.contains("From domain: misaligned.test"),
        "{ev}"
    );
}

#[tokio::test]
async fn reverse_dns_and_helo() {
    let nsd = Nsd::start();
    let (noptr, mismatch) = tokio::join!(
        check(
            &nsd,
            CheckRequest {
                ips: vec![ip("192.0.2.30"), ip("192.0.2.31")],
                helo: Some("mail.clean.test".into()),
                ..req("clean.test")
            }
        ),
        check(
            &nsd,
            CheckRequest {
                ips: vec![ip("192.0.2.10")],
                helo: Some("other.clean.test".into()),
                ..req("clean.test")
            }
        ),
    );
    assert_eq!(status(&noptr, "rdns.192.0.2.30"), Status::Fail);
    assert!(evidence(&noptr, "rdns.192.0.2.30").contains("30.2.0.192.in-addr.arpa PTR: NXDOMAIN"));
    assert_eq!(status(&noptr, "rdns.192.0.2.31"), Status::Fail);
    assert!(evidence(&noptr, "rdns.192.0.2.31").contains("liar.rdns.test -> 192.0.2.99"));
    assert_eq!(status(&noptr, "helo"), Status::Fail);

    assert_eq!(status(&mismatch, "rdns.192.0.2.10"), Status::Pass);
    assert_eq!(status(&mismatch, "helo"), Status::Fail);
    assert!(
        evidence(&mismatch, "helo").contains("other.clean.test does not resolve to 192.0.2.10")
    );
}

#[tokio::test]
async fn blocklists_listed_clear_and_refused() {
    let nsd = Nsd::start();
    let r = check(
        &nsd,
        CheckRequest {
            ips: vec![ip("192.0.2.66"), ip("192.0.2.77"), ip("192.0.2.10")],
            blocklists: default_zones(),
            ..req("baddomain.test")
        },
    )
    .await;
    let listed = r.get("blocklist.zen.spamhaus.org[192.0.2.66]").unwrap();
    assert_eq!(listed.status, Status::Fail);
    assert!(
        listed
            .evidence
            .iter()
            .any(|e| e.contains("127.0.0.2") && e.contains("SBL")),
        "{listed:#?}"
    );
    let refused = r.get("blocklist.zen.spamhaus.org[192.0.2.77]").unwrap();
    assert_eq!(
        refused.status,
        Status::Warn,
        "127.255.255.254 is a refusal, never a listing"
    );
    assert!(refused.summary.contains("not a listing"));
    assert_eq!(
        status(&r, "blocklist.zen.spamhaus.org[192.0.2.10]"),
        Status::Pass
    );
    assert_eq!(
        status(&r, "blocklist.dbl.spamhaus.org[baddomain.test]"),
        Status::Fail
    );
}
