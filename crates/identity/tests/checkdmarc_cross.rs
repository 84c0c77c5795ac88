//! Cross-check: our SPF and DMARC verdicts against checkdmarc (PyPI), both asking the same
//! nsd on loopback. checkdmarc is given that server as its only nameserver (a dnspython
//! `Do53Nameserver` with our port) and only its SPF and DMARC checks are called, so it
//! queries nothing else.

mod support;

use mxpace_identity::dns::Dns;
use mxpace_identity::{CheckRequest, Status, run_checks};
use std::process::Command;
use std::time::Duration;
use support::nsd::Nsd;

const DOMAINS: &[&str] = &[
    "clean.test",
    "spf11.test",
    "void.test",
    "loop.test",
    "unauth.test",
    "nodmarc.test",
    "shortkey.test",
    "malformed.bad.test",
    "split.bad.test",
    "oddsplit.bad.test",
    "dup.bad.test",
    "big.bad.test",
    "bad.test",
];

const SCRIPT: &str = r#"
import json, sys
try:
    import dns.nameserver
    import checkdmarc.spf, checkdmarc.dmarc
except ImportError as e:
    sys.exit("checkdmarc is not installed (%s): run bash scripts/install-deps" % e)
port = int(sys.argv[1])
ns = [dns.nameserver.Do53Nameserver("127.0.0.1", port)]
out = {}
for domain in sys.argv[2:]:
    spf = checkdmarc.spf.check_spf(domain, nameservers=ns, timeout=2.0)
    dmarc = checkdmarc.dmarc.check_dmarc(domain, nameservers=ns, timeout=2.0)
    out[domain] = {"spf": bool(spf["valid"]), "spf_error": spf.get("error"),
                   "dmarc": bool(dmarc["valid"]), "dmarc_error": dmarc.get("error")}
print(json.dumps(out))
"#;

#[tokio::test]
async fn spf_and_dmarc_verdicts_agree_with_checkdmarc() {
    let nsd = Nsd::start();
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(SCRIPT)
        .arg(nsd.addr.port().to_string())
        .args(DOMAINS);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "checkdmarc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("checkdmarc JSON");

    let dns = Dns::new(Some(nsd.addr), Duration::from_millis(1500)).unwrap();
    let mut disagreements = Vec::new();
    for domain in DOMAINS {
        let r = run_checks(
            &dns,
            &CheckRequest {
                domain: domain.to_string(),
                ..Default::default()
            },
        )
        .await;
        let not_fail = |id: &str| r.get(id).is_some_and(|c| c.status != Status::Fail);
        let our_spf = not_fail("spf.record") && not_fail("spf.lookups") && not_fail("spf.void");
        let our_dmarc = not_fail("dmarc.record");
        let t = &theirs[*domain];
        if t["spf"].as_bool() != Some(our_spf) {
            disagreements.push(format!(
                "{domain} SPF: ours valid={our_spf}, checkdmarc {t}"
            ));
        }
        if t["dmarc"].as_bool() != Some(our_dmarc) {
            disagreements.push(format!(
                "{domain} DMARC: ours valid={our_dmarc}, checkdmarc {t}"
            ));
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
    // The comparison is not vacuous: both sides see valid and invalid domains.
    assert_eq!(theirs["clean.test"]["spf"], true);
    assert_eq!(theirs["void.test"]["spf"], false);
    assert_eq!(theirs["nodmarc.test"]["dmarc"], false);
}
