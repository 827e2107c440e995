//! Flags and their environment fallbacks, checked on the real binary so
//! that each case gets its own environment.

use std::process::{Command, Output};

use serde_json::Value;

fn vantage(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vantage"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("VANTAGE_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args).envs(env.iter().copied()).output().expect("run vantage")
}

fn config(args: &[&str], env: &[(&str, &str)]) -> Value {
    let out = vantage(&[args, &["--print-config"]].concat(), env);
    assert!(out.status.success(), "{args:?} {env:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("config JSON")
}

#[test]
fn environment_variables_fill_in_for_missing_flags() {
    let c = config(
        &[],
        &[
            ("VANTAGE_IFACE", "eth9"),
            ("VANTAGE_ATTACH_DIRECTION", "both"),
            ("VANTAGE_BIND_ADDR", "0.0.0.0:4000"),
            ("VANTAGE_DROP_EVENT_SAMPLE_N", "8"),
            ("VANTAGE_DROP_EVENT_LOG_ENABLED", "true"),
            ("VANTAGE_FLOW_KEYS_MODE", "legacy"),
            ("VANTAGE_POLICY_VALIDATION_MODE", "strict"),
            ("VANTAGE_ADAPTIVE_ENABLED", "1"),
            ("VANTAGE_ADAPTIVE_HIGH_WATERMARK_PERCENT", "150"),
            ("VANTAGE_ESSENTIAL_TENANTS", "cg:11,22"),
            ("VANTAGE_STATE_FILE", "/tmp/x.json"),
        ],
    );
    assert_eq!(c["iface"], "eth9");
    assert_eq!(c["direction"], "both");
    assert_eq!(c["bind_addr"], "0.0.0.0:4000");
    assert_eq!(c["drop_event_sample_n"], 8);
    assert_eq!(c["drop_event_log_enabled"], true);
    assert_eq!(c["flow_keys_mode"], "legacy");
    assert_eq!(c["policy_validation_mode"], "strict");
    assert_eq!(c["adaptive_enabled"], true);
    assert_eq!(c["adaptive_high_watermark_percent"], 150, "clamping happens at run time");
    assert_eq!(c["essential_tenants"], serde_json::json!(["cg:11", "cg:22"]));
    assert_eq!(c["state_file"], "/tmp/x.json");
}

#[test]
fn a_flag_wins_over_its_environment_variable() {
    let env = [("VANTAGE_IFACE", "eth9"), ("VANTAGE_ESSENTIAL_TENANTS", "1,2")];
    let c = config(&["--iface", "lo", "--essential-tenant", "cg:3"], &env);
    assert_eq!(c["iface"], "lo");
    assert_eq!(c["essential_tenants"], serde_json::json!(["cg:3"]));
}

#[test]
fn bad_environment_values_are_clear_errors() {
    for (var, value, names) in [
        ("VANTAGE_DROP_EVENT_SAMPLE_N", "0", "--drop-event-sample-n"),
        ("VANTAGE_ESSENTIAL_TENANTS", "cg:1,banana", "banana"),
        ("VANTAGE_BIND_ADDR", "nowhere", "--bind-addr"),
        ("VANTAGE_ADAPTIVE_ENABLED", "perhaps", "--adaptive-enabled"),
    ] {
        let out = vantage(&["--print-config"], &[(var, value)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value} must be refused");
        assert!(err.contains(names), "{var}={value}: {err}");
    }
}

#[test]
fn version_names_the_git_revision() {
    let out = vantage(&["--version"], &[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("vantage 0.") && text.contains("(git "), "{text}");
}
