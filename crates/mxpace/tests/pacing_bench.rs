//! `mxpace bench pacing`: the JSON shape the issue fixes, and clear errors.

use std::process::Command;

fn mxpace(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mxpace"))
        .args(args)
        .output()
        .expect("run mxpace")
}

#[test]
fn bench_pacing_json_has_every_policy_with_the_issue_fields() {
    let out = mxpace(&[
        "bench",
        "pacing",
        "--scenario",
        "mixed",
        "--scale",
        "0.02",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let s = &v["scenarios"]["mixed"];
    let ideal = s["ideal_completion_s"]
        .as_f64()
        .expect("ideal_completion_s");
    assert!(ideal > 0.0);
    for policy in ["mxpace", "postfix", "kumomta"] {
        let p = &s["policies"][policy];
        for key in [
            "completion_s",
            "deferred_share",
            "p50_transactional_s",
            "p95_transactional_s",
        ] {
            assert!(p[key].is_number(), "{policy}.{key}: {p}");
        }
        for key in ["expired", "duplicates"] {
            assert!(p[key].is_u64(), "{policy}.{key}: {p}");
        }
        assert!(
            p["completion_s"].as_f64().unwrap() >= ideal,
            "{policy} beat the ideal: {p}"
        );
    }
    assert_eq!(v["scenarios"].as_object().unwrap().len(), 1);
}

#[test]
fn bench_pacing_refuses_an_unknown_scenario_and_a_bad_config_naming_the_key() {
    let out = mxpace(&["bench", "pacing", "--scenario", "tsunami"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scenario \"tsunami\""));

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pacing.toml");
    std::fs::write(
        &cfg,
        "[provider.microsoft]\nrate_floor = \"10/s\"\nrate_ceiling = \"1/s\"\n",
    )
    .unwrap();
    let out = mxpace(&[
        "bench",
        "pacing",
        "--scenario",
        "steady",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("provider.microsoft.rate_floor"), "{err}");
}

#[test]
fn the_warm_up_reset_variant_runs_on_the_sim_receiver_only() {
    let out = mxpace(&[
        "bench",
        "pacing",
        "--scenario",
        "new-ip",
        "--receiver",
        "model",
        "--warmup-reset-on-throttle",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs --receiver sim"), "{err}");
    let out = mxpace(&[
        "bench",
        "pacing",
        "--scenario",
        "new-ip",
        "--scale",
        "0.01",
        "--warmup-reset-on-throttle",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("a throttle sends the IP back to day 0"),
        "{text}"
    );
}
