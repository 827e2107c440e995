//! The HTTP API against the real daemon in a namespace of the test's own.

mod common;

use std::{io::Write, process::Command};

use common::{Daemon, Netns, TempDir};
use serde_json::{json, Value};

const T: u64 = 4242;

fn put(d: &Daemon, tenant: &str, body: Value) -> (u16, Value) {
    d.http_json("PUT", &format!("/policy/{tenant}"), Some(&body.to_string()))
}

fn policy(rate: u64, burst: u64) -> Value {
    json!({ "rate_tokens_per_sec": rate, "burst_tokens": burst, "enabled": true })
}

fn with(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().expect("object") {
        base[k] = v.clone();
    }
    base
}

/// Runs `promtool check metrics` on `text`; panics with its output on
/// failure. promtool comes from Debian's `prometheus` package (`make deps`).
fn promtool(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipping promtool check: {e}");
            return;
        }
        Err(e) => panic!("promtool is required under CI (apt-get install prometheus): {e}"),
    };
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("feed promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool refused the exposition:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_endpoint_answers_with_its_documented_shape() {
    if !common::prerequisites() {
        return;
    }
    let ns = Netns::new();
    let d = Daemon::start(&ns, &["--iface", "lo"], &[]);

    let body = with(
        policy(10, 5),
        json!({"proto": "tcp", "dst_port": 8080, "http_method": "GET", "http_path": "/predict"}),
    );
    let (status, v) = put(&d, &format!("cg:{T}"), body.clone());
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["tenant"], format!("cg:{T}"));
    assert_eq!(v["level"], 6);
    assert_eq!(v["level_name"], "base_exact");
    assert_eq!(v["map"], "base");
    assert_eq!(v["created"], true);
    assert_eq!(v["shadowed_by_override"], false);
    assert_eq!(v["warnings"], json!([]));
    assert_eq!(
        v["policy"],
        json!({"proto": "tcp", "dst_port": 8080, "http_method": "GET", "http_path": "/predict",
               "http_path_hash": 4_021_474_487u32, "rate_tokens_per_sec": 10, "burst_tokens": 5,
               "enabled": true})
    );
    // The same PUT again is an update, and a bare id names the same tenant.
    let (status, v) = put(&d, &T.to_string(), body);
    assert_eq!((status, v["created"].clone()), (200, json!(false)));

    let (status, v) = d.http_json("GET", &format!("/policy/cg:{T}"), None);
    assert_eq!(status, 200);
    assert_eq!(v["policies"].as_array().map(Vec::len), Some(1));

    let q = "proto=tcp&dst_port=8080&http_method=GET&http_path=%2Fpredict";
    let (status, v) = d.http_json("GET", &format!("/policy/cg:{T}/resolve?{q}"), None);
    assert_eq!(status, 200);
    assert_eq!(v["effective"]["level"], 6);
    assert_eq!(v["flow"]["http_path_hash"], 4_021_474_487u32);
    let (_, v) = d.http_json("GET", &format!("/policy/cg:{T}/resolve?proto=tcp&dst_port=8080&http_path_hash=4021474487&http_method=get"), None);
    assert_eq!(v["effective"]["level"], 6, "hash instead of path: {v}");
    let (_, v) = d.http_json("GET", &format!("/policy/cg:{T}/resolve?proto=udp&dst_port=53"), None);
    assert_eq!(v["effective"], Value::Null);

    let (status, v) = d.http_json("GET", &format!("/tenancy/cg:{T}/essential"), None);
    assert_eq!((status, v["essential"].clone()), (200, json!(false)));
    let (status, v) =
        d.http_json("PUT", &format!("/tenancy/cg:{T}/essential"), Some(r#"{"essential":true}"#));
    assert_eq!(
        (status, v["essential"].clone(), v["source"].clone()),
        (200, json!(true), json!("api"))
    );

    let (status, v) = d.http_json("DELETE", &format!("/policy/cg:{T}?{q}"), None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["removed"]["dst_port"], 8080);
    assert_eq!(v["effective"], Value::Null);

    let (status, v) = d.http_json("GET", "/debug/snapshot", None);
    assert_eq!(status, 200);
    for field in ["counters", "host", "top_tenants_by_drops", "adaptive", "policies", "drop_events"]
    {
        assert!(!v[field].is_null(), "snapshot lacks {field}: {v}");
    }
    for dir in ["ingress", "egress"] {
        for c in [
            "seen",
            "admitted",
            "dropped",
            "fail_open_parse",
            "fail_open_internal",
            "no_tenant",
            "no_policy",
        ] {
            assert!(v["counters"][dir][c].is_u64(), "counters.{dir}.{c}: {v}");
        }
    }
    assert!(v["host"]["cpu_percent"].is_number() && v["host"]["memory_percent"].is_number());
    assert_eq!(v["host"]["cpu_window_ms"], 5000);
    let a = &v["adaptive"];
    assert_eq!(a["enabled"], false);
    assert_eq!(a["throttling"], false);
    assert_eq!(
        (a["high_watermark_percent"].clone(), a["low_watermark_percent"].clone()),
        (json!(90), json!(80))
    );
    assert_eq!(a["tick_ms"], 1000);
    assert_eq!(a["adaptive_managed_override_count"], 0);
}

#[test]
fn overlapping_policies_report_precedence_shadowing_and_fallbacks() {
    if !common::prerequisites() {
        return;
    }
    let ns = Netns::new();
    let d = Daemon::start(&ns, &["--iface", "lo"], &[]);
    let t = format!("cg:{T}");

    let levels: Vec<(Value, u64, &str)> = vec![
        (json!({}), 10, "base_full_wildcard"),
        (json!({"proto": "tcp"}), 9, "base_port_method_path_wildcard"),
        (json!({"proto": "tcp", "dst_port": 80}), 8, "base_method_path_wildcard"),
        (json!({"proto": "tcp", "dst_port": 80, "http_method": "POST"}), 7, "base_path_wildcard"),
        (
            json!({"proto": "tcp", "dst_port": 80, "http_method": "POST", "http_path": "/x"}),
            6,
            "base_exact",
        ),
    ];
    for (sel, level, name) in &levels {
        let (status, v) = put(&d, &t, with(policy(100, 10), sel.clone()));
        assert_eq!(status, 201, "{v}");
        assert_eq!((v["level"].as_u64(), v["level_name"].as_str()), (Some(*level), Some(*name)));
    }
    // A runtime override on the full wildcard shadows every base policy.
    let (status, v) = put(&d, &t, with(policy(1, 1), json!({"runtime_override": true})));
    assert_eq!((status, v["level"].clone(), v["map"].clone()), (201, json!(5), json!("override")));
    let (_, v) = put(&d, &t, with(policy(100, 10), json!({"proto": "tcp", "dst_port": 80})));
    assert_eq!(v["shadowed_by_override"], true, "{v}");
    assert_eq!(v["shadowing_override"]["level"], 5);
    let (status, _) = d.http_json("DELETE", &format!("/policy/{t}?runtime_override=true"), None);
    assert_eq!(status, 200);

    // Deleting from the most specific end falls back one level at a time.
    let mut expect_after = vec![Some(7), Some(8), Some(9), Some(10), None];
    for (sel, _, _) in levels.iter().rev() {
        let q: Vec<String> = sel
            .as_object()
            .expect("object")
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().map(str::to_owned).unwrap_or(v.to_string())))
            .collect();
        let (status, v) = d.http_json("DELETE", &format!("/policy/{t}?{}", q.join("&")), None);
        assert_eq!(status, 200, "{v}");
        let want = expect_after.remove(0);
        assert_eq!(v["effective"]["level"].as_u64(), want, "after deleting {sel}: {v}");
    }
    let (status, v) = d.http_json("DELETE", &format!("/policy/{t}"), None);
    assert_eq!(status, 404, "nothing left to delete: {v}");
}

#[test]
fn strict_mode_refuses_what_permissive_accepts_with_warnings() {
    if !common::prerequisites() {
        return;
    }
    let partial = [
        json!({"http_path": "/predict"}),
        json!({"http_method": "GET"}),
        json!({"proto": "tcp", "http_method": "GET"}),
        json!({"proto": "tcp", "dst_port": 80, "http_path": "/x"}),
    ];
    let ns = Netns::new();
    let permissive = Daemon::start(&ns, &["--iface", "lo"], &[]);
    for sel in &partial {
        let (status, v) = put(&permissive, "cg:9", with(policy(1, 1), sel.clone()));
        assert_eq!(status, 201, "{sel}: {v}");
        assert!(!v["warnings"].as_array().expect("warnings").is_empty(), "{sel}: {v}");
    }
    drop(permissive);

    let ns = Netns::new();
    let strict = Daemon::start(&ns, &["--iface", "lo", "--policy-validation-mode", "strict"], &[]);
    for sel in &partial {
        let (status, v) = put(&strict, "cg:9", with(policy(1, 1), sel.clone()));
        assert_eq!(status, 400, "{sel}: {v}");
        assert!(v["error"].as_str().expect("error").contains("strict"), "{v}");
    }
    let full = json!({"proto": "tcp", "dst_port": 80, "http_method": "GET", "http_path": "/x"});
    assert_eq!(put(&strict, "cg:9", with(policy(1, 1), full)).0, 201);
    let (_, v) = strict.http_json("GET", "/policy/cg:9", None);
    assert_eq!(v["policies"].as_array().map(Vec::len), Some(1), "refused PUTs stored nothing");
}

#[test]
fn bad_requests_get_a_4xx_naming_the_problem_and_change_nothing() {
    if !common::prerequisites() {
        return;
    }
    let ns = Netns::new();
    let mut d = Daemon::start(&ns, &["--iface", "lo"], &[]);
    let good = with(policy(10, 5), json!({"proto": "udp", "dst_port": 53}));
    assert_eq!(put(&d, "cg:7", good).0, 201);
    let before_state = std::fs::read(&d.state_file).expect("state file written");
    let (_, before_list) = d.http_json("GET", "/policy/cg:7", None);

    let big = format!(
        r#"{{"rate_tokens_per_sec":1,"burst_tokens":1,"enabled":true,"pad":"{}"}}"#,
        "x".repeat(20_000)
    );
    let nested = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let p = |extra: &str| {
        format!(r#"{{"rate_tokens_per_sec":10,"burst_tokens":5,"enabled":true{extra}}}"#)
    };
    // (method, path, body, status, a word the error must contain)
    let cases: Vec<(&str, String, Option<String>, u16, &str)> = vec![
        ("PUT", "/policy/cg:7".into(), Some("{".into()), 400, "malformed JSON"),
        ("PUT", "/policy/cg:7".into(), Some("[1,2]".into()), 400, "JSON object"),
        ("PUT", "/policy/cg:7".into(), Some(String::new()), 400, "empty"),
        ("PUT", "/policy/cg:7".into(), Some(nested), 400, "malformed JSON"),
        (
            "PUT",
            "/policy/cg:7".into(),
            Some(r#"{"burst_tokens":5,"enabled":true}"#.into()),
            400,
            "rate_tokens_per_sec",
        ),
        (
            "PUT",
            "/policy/cg:7".into(),
            Some(r#"{"rate_tokens_per_sec":5,"enabled":true}"#.into()),
            400,
            "burst_tokens",
        ),
        (
            "PUT",
            "/policy/cg:7".into(),
            Some(r#"{"rate_tokens_per_sec":5,"burst_tokens":5}"#.into()),
            400,
            "enabled",
        ),
        (
            "PUT",
            "/policy/cg:7".into(),
            Some(r#"{"rate_tokens_per_sec":-5,"burst_tokens":5,"enabled":true}"#.into()),
            400,
            "rate_tokens_per_sec",
        ),
        (
            "PUT",
            "/policy/cg:7".into(),
            Some(r#"{"rate_tokens_per_sec":5,"burst_tokens":-1,"enabled":true}"#.into()),
            400,
            "burst_tokens",
        ),
        (
            "PUT",
            "/policy/cg:7".into(),
            Some(r#"{"rate_tokens_per_sec":0,"burst_tokens":5,"enabled":true}"#.into()),
            400,
            "rate_tokens_per_sec",
        ),
        (
            "PUT",
            "/policy/cg:7".into(),
            Some(r#"{"rate_tokens_per_sec":1.5,"burst_tokens":5,"enabled":true}"#.into()),
            400,
            "rate_tokens_per_sec",
        ),
        (
            "PUT",
            "/policy/cg:7".into(),
            Some(r#"{"rate_tokens_per_sec":"5","burst_tokens":5,"enabled":true}"#.into()),
            400,
            "rate_tokens_per_sec",
        ),
        (
            "PUT",
            "/policy/cg:7".into(),
            Some(r#"{"rate_tokens_per_sec":5,"burst_tokens":5,"enabled":"yes"}"#.into()),
            400,
            "enabled",
        ),
        ("PUT", "/policy/cg:7".into(), Some(p(r#","proto":"sctp""#)), 400, "proto"),
        ("PUT", "/policy/cg:7".into(), Some(p(r#","proto":300"#)), 400, "proto"),
        (
            "PUT",
            "/policy/cg:7".into(),
            Some(p(r#","proto":"udp","dst_port":70000"#)),
            400,
            "dst_port",
        ),
        ("PUT", "/policy/cg:7".into(), Some(p(r#","proto":"udp","dst_port":-1"#)), 400, "dst_port"),
        (
            "PUT",
            "/policy/cg:7".into(),
            Some(p(r#","proto":"tcp","dst_port":80,"http_method":"FETCH""#)),
            400,
            "http_method",
        ),
        (
            "PUT",
            "/policy/cg:7".into(),
            Some(p(r#","proto":"tcp","dst_port":80,"http_method":"GET","http_path":"nope""#)),
            400,
            "http_path",
        ),
        (
            "PUT",
            "/policy/cg:7".into(),
            Some(p(
                r#","proto":"tcp","dst_port":80,"http_method":"GET","http_path":"/a","http_path_hash":1"#,
            )),
            400,
            "http_path_hash",
        ),
        ("PUT", "/policy/cg:7".into(), Some(p(r#","colour":"red""#)), 400, "unknown field colour"),
        ("PUT", "/policy/cg:abc".into(), Some(p("")), 400, "invalid tenant"),
        ("PUT", "/policy/0".into(), Some(p("")), 400, "invalid tenant"),
        ("PUT", "/policy/cg:-4".into(), Some(p("")), 400, "invalid tenant"),
        ("PUT", "/policy/cg:7".into(), Some(big), 413, "larger than"),
        ("POST", "/policy/cg:7".into(), Some(p("")), 405, "not allowed"),
        ("PATCH", "/tenancy/cg:7/essential".into(), None, 405, "not allowed"),
        ("GET", "/nowhere".into(), None, 404, "no such endpoint"),
        ("DELETE", "/policy/cg:7?proto=udp&dst_port=54".into(), None, 404, "no base policy"),
        ("DELETE", "/policy/cg:7?colour=red".into(), None, 400, "unknown query parameter"),
        ("DELETE", "/policy/cg:7?dst_port=99999".into(), None, 400, "dst_port"),
        ("GET", "/policy/cg:7/resolve?http_path=%zz".into(), None, 400, "percent"),
        (
            "PUT",
            "/tenancy/cg:7/essential".into(),
            Some(r#"{"essential":"yes"}"#.into()),
            400,
            "essential",
        ),
        (
            "PUT",
            "/tenancy/cg:7/essential".into(),
            Some("{}".into()),
            400,
            "missing field essential",
        ),
        (
            "PUT",
            "/tenancy/nobody/essential".into(),
            Some(r#"{"essential":true}"#.into()),
            400,
            "invalid tenant",
        ),
    ];
    assert!(cases.len() >= 25);
    for (method, path, body, status, word) in &cases {
        let (got, text) = d.http(method, path, body.as_deref());
        assert_eq!(got, *status, "{method} {path}: {text}");
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"));
        let msg =
            v["error"].as_str().unwrap_or_else(|| panic!("{method} {path}: no error field: {v}"));
        assert!(msg.contains(word), "{method} {path}: {msg:?} should mention {word:?}");
    }

    let (_, after_list) = d.http_json("GET", "/policy/cg:7", None);
    assert_eq!(before_list, after_list, "API view unchanged");
    assert_eq!(std::fs::read(&d.state_file).expect("state"), before_state, "state file unchanged");
    let (_, v) = d.http_json("GET", "/tenancy/cg:7/essential", None);
    assert_eq!(v["essential"], false);
    assert!(d.try_wait().is_none(), "the daemon survived: {}", d.log());
    let (_, v) = d.http_json("GET", "/debug/audit", None);
    assert_eq!(v["consistent"], true, "kernel maps equal the API's view: {v}");
}

#[test]
fn metrics_pass_promtool_and_carry_tenants_only_when_dimensional() {
    if !common::prerequisites() {
        return;
    }
    for dimensional in [false, true] {
        let ns = Netns::new();
        let mut args = vec!["--iface", "lo"];
        if dimensional {
            args.push("--metrics-dimensional-enabled");
        }
        let d = Daemon::start(&ns, &args, &[]);
        assert_eq!(
            put(&d, "cg:31", with(policy(5, 5), json!({"proto": "tcp", "dst_port": 80}))).0,
            201
        );
        assert_eq!(put(&d, "cg:32", policy(5, 5)).0, 201);
        let (status, text) = d.http("GET", "/metrics", None);
        assert_eq!(status, 200);
        promtool(&text);
        for family in [
            "vantage_packets_total",
            "vantage_fail_open_total",
            "vantage_policies",
            "vantage_tenants",
            "vantage_drop_events_total",
        ] {
            assert!(text.contains(&format!("# TYPE {family} ")), "{family} missing");
        }
        assert!(text.contains("vantage_tenants 2"), "{text}");
        assert_eq!(text.contains("tenant=\""), dimensional, "tenant labels only when dimensional");
        if dimensional {
            assert!(
                text.contains(
                    r#"tenant="cg:31",proto="tcp",port="80",method="any",path_hash="0",level="8""#
                ),
                "{text}"
            );
        }
    }
}

#[test]
fn state_survives_a_restart_and_a_corrupt_file_is_refused() {
    if !common::prerequisites() {
        return;
    }
    let ns = Netns::new();
    let dir = TempDir::new();
    let state = dir.join("state.json");
    let args = ["--iface", "lo", "--state-file", state.to_str().expect("utf-8")];

    let mut d = Daemon::start(&ns, &args, &[]);
    assert_eq!(
        put(&d, "cg:51", with(policy(7, 3), json!({"proto": "udp", "dst_port": 5353}))).0,
        201
    );
    assert_eq!(put(&d, "cg:52", with(policy(9, 1), json!({"enabled": false}))).0, 201);
    assert_eq!(put(&d, "cg:53", with(policy(1, 1), json!({"runtime_override": true}))).0, 201);
    d.http_json("PUT", "/tenancy/cg:51/essential", Some(r#"{"essential":true}"#));
    assert!(d.stop().success());

    let d = Daemon::start(&ns, &args, &[]);
    let (_, v) = d.http_json("GET", "/policy/cg:51/resolve?proto=udp&dst_port=5353", None);
    assert_eq!(v["effective"]["policy"]["rate_tokens_per_sec"], 7, "{v}");
    let (_, v) = d.http_json("GET", "/policy/cg:52", None);
    assert_eq!(v["policies"][0]["policy"]["enabled"], false);
    let (_, v) = d.http_json("GET", "/policy/cg:53", None);
    assert_eq!(v["policies"], json!([]), "runtime overrides are not persisted");
    let (_, v) = d.http_json("GET", "/tenancy/cg:51/essential", None);
    assert_eq!(v["essential"], true);
    drop(d);

    std::fs::write(&state, "{\"version\": 1, \"policies\": [").expect("corrupt it");
    let (status, log) =
        Daemon::try_start(&ns, &args, &[]).expect_err("corrupt state must stop start-up");
    assert!(!status.success());
    assert!(log.contains("is corrupt"), "{log}");
    assert_eq!(
        std::fs::read_to_string(&state).expect("still there"),
        "{\"version\": 1, \"policies\": ["
    );
    assert!(common::tcx_program_names(&ns, "lo", true).is_empty(), "refused before attaching");
}

#[test]
fn a_token_guards_everything_but_metrics() {
    if !common::prerequisites() {
        return;
    }
    let ns = Netns::new();
    let dir = TempDir::new();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret-token\n").expect("write token");
    let d = Daemon::start(
        &ns,
        &["--iface", "lo", "--api-token-file", token_file.to_str().expect("utf-8")],
        &[],
    );
    let body = policy(5, 5).to_string();
    for (method, path, body) in [
        ("PUT", "/policy/cg:3", Some(body.as_str())),
        ("GET", "/policy/cg:3/resolve", None),
        ("GET", "/debug/snapshot", None),
        ("GET", "/tenancy/cg:3/essential", None),
        ("GET", "/nowhere", None),
    ] {
        let (status, text) = d.http(method, path, body);
        assert_eq!(status, 401, "{method} {path} without a token: {text}");
        assert_eq!(
            text.trim(),
            r#"{
  "error": "unauthorized"
}"#
        );
    }
    let (status, _) = d.http("GET", "/metrics", None);
    assert_eq!(status, 200, "metrics stay open for scrapers");

    let authed = |method: &str, path: &str, token: &str, body: Option<&str>| {
        let mut s = std::net::TcpStream::connect(d.api).expect("connect");
        let body = body.unwrap_or("");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("send");
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out).expect("read");
        out.split(' ').nth(1).and_then(|c| c.parse::<u16>().ok()).expect("status")
    };
    let _in_ns = ns.enter_current_thread();
    assert_eq!(authed("PUT", "/policy/cg:3", "s3cret-token", Some(&body)), 201);
    assert_eq!(authed("GET", "/debug/snapshot", "s3cret-token", None), 200);
    assert_eq!(authed("GET", "/debug/snapshot", "s3cret-tokeN", None), 401);
    assert_eq!(authed("GET", "/debug/snapshot", "", None), 401);
}

#[test]
fn a_batch_of_policies_is_applied_all_or_nothing() {
    if !common::prerequisites() {
        return;
    }
    let ns = Netns::new();
    let d = Daemon::start(&ns, &["--iface", "lo", "--policy-capacity", "64"], &[]);
    let item = |t: u64, port: u64| {
        json!({"tenant": format!("cg:{t}"), "rate_tokens_per_sec": 10, "burst_tokens": 5,
               "enabled": true, "proto": "udp", "dst_port": port})
    };
    let batch: Vec<Value> = (1..=40).map(|i| item(100 + i % 4, 1000 + i)).collect();
    let (status, v) =
        d.http_json("PUT", "/policies", Some(&json!({ "policies": batch }).to_string()));
    assert_eq!(
        (status, v["applied"].clone(), v["created"].clone()),
        (200, json!(40), json!(40)),
        "{v}"
    );
    let state = std::fs::read_to_string(&d.state_file).expect("state");
    assert_eq!(state.matches("\"tenant\"").count(), 40, "persisted once, completely");

    // One bad entry refuses the whole batch, naming it.
    let mut bad: Vec<Value> = (1..=5).map(|i| item(200, 2000 + i)).collect();
    bad[3]["dst_port"] = json!(70000);
    let (status, v) =
        d.http_json("PUT", "/policies", Some(&json!({ "policies": bad }).to_string()));
    assert_eq!(status, 400);
    assert!(v["error"].as_str().expect("error").starts_with("policies[3]: dst_port"), "{v}");

    // A batch that does not fit is refused whole with 507.
    let over: Vec<Value> = (1..=30).map(|i| item(300, 3000 + i)).collect();
    let (status, v) =
        d.http_json("PUT", "/policies", Some(&json!({ "policies": over }).to_string()));
    assert_eq!(status, 507, "{v}");
    let (_, v) = d.http_json("GET", "/policy/cg:300", None);
    assert_eq!(v["policies"], json!([]), "nothing half-written");
    let (_, v) = d.http_json("GET", "/debug/audit", None);
    assert_eq!(v["consistent"], true, "{v}");
    assert_eq!(std::fs::read_to_string(&d.state_file).expect("state"), state);
}
