//! What the daemon keeps when things go wrong: changes racing each other, a kill -9 at any
//! moment, and policy maps that are full. Each test runs the real daemon in a namespace of its
//! own and compares three views of its state: the kernel maps (`GET /debug/audit`), the API's
//! listings, and the state file.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::gen::{
    requests::try_request,
    views::{self, PolicyView},
    Rng,
};
use common::{Daemon, Netns, TempDir};
use serde_json::Value;

/// A policy selector as JSON fields, as query parameters, and as the key it stores.
struct Selector {
    json: &'static str,
    query: &'static str,
    key: (u8, u16, u8, u32),
}

const SELECTORS: &[Selector] = &[
    Selector { json: "", query: "", key: (0, 0, 0, 0) },
    Selector { json: r#","proto":"udp""#, query: "proto=udp", key: (17, 0, 0, 0) },
    Selector {
        json: r#","proto":"tcp","dst_port":8080"#,
        query: "proto=tcp&dst_port=8080",
        key: (6, 8080, 0, 0),
    },
    Selector {
        json: r#","proto":"tcp","dst_port":8080,"http_method":"GET""#,
        query: "proto=tcp&dst_port=8080&http_method=GET",
        key: (6, 8080, 1, 0),
    },
    Selector {
        json: r#","proto":"tcp","dst_port":8080,"http_method":"GET","http_path":"/predict""#,
        query: "proto=tcp&dst_port=8080&http_method=GET&http_path=%2Fpredict",
        key: (6, 8080, 1, 4_021_474_487),
    },
    Selector {
        json: r#","proto":"udp","dst_port":53"#,
        query: "proto=udp&dst_port=53",
        key: (17, 53, 0, 0),
    },
];

/// Rate, burst and enabled of a policy.
type Params = (u64, u64, bool);

/// One change a client asks for.
#[derive(Debug, Clone)]
enum Op {
    Put {
        tenant: u64,
        sel: usize,
        params: Params,
        runtime_override: bool,
    },
    Delete {
        tenant: u64,
        sel: usize,
        runtime_override: bool,
    },
    Essential {
        tenant: u64,
        on: bool,
    },
    /// `PUT /policies`: base policies, all or nothing.
    Batch(Vec<(u64, usize, Params)>),
}

impl Op {
    fn random(rng: &mut Rng, tenants: &[u64]) -> Op {
        let tenant = rng.pick(tenants);
        let sel = rng.below(SELECTORS.len());
        let params = (rng.range(1, 1_000_000) as u64, rng.range(0, 5000) as u64, rng.chance(4, 5));
        match rng.below(20) {
            0..=7 => Op::Put { tenant, sel, params, runtime_override: false },
            8 | 9 => Op::Put { tenant, sel, params, runtime_override: true },
            10..=13 => Op::Delete { tenant, sel, runtime_override: false },
            14 => Op::Delete { tenant, sel, runtime_override: true },
            15..=17 => Op::Essential { tenant, on: rng.chance(1, 2) },
            _ => Op::Batch(
                (0..rng.range(1, 4))
                    .map(|_| {
                        let p = (rng.range(1, 1000) as u64, rng.range(0, 50) as u64, true);
                        (rng.pick(tenants), rng.below(SELECTORS.len()), p)
                    })
                    .collect(),
            ),
        }
    }

    /// Method, path and body.
    fn request(&self) -> (&'static str, String, Option<String>) {
        let policy = |sel: usize, (rate, burst, enabled): Params| {
            format!(
                r#""rate_tokens_per_sec":{rate},"burst_tokens":{burst},"enabled":{enabled}{}"#,
                SELECTORS[sel].json
            )
        };
        match self {
            Op::Put { tenant, sel, params, runtime_override } => (
                "PUT",
                format!("/policy/cg:{tenant}"),
                Some(format!(
                    r#"{{{},"runtime_override":{runtime_override}}}"#,
                    policy(*sel, *params)
                )),
            ),
            Op::Delete { tenant, sel, runtime_override } => {
                let mut q = SELECTORS[*sel].query.to_string();
                if *runtime_override {
                    q.push_str(if q.is_empty() {
                        "runtime_override=true"
                    } else {
                        "&runtime_override=true"
                    });
                }
                ("DELETE", format!("/policy/cg:{tenant}?{q}"), None)
            }
            Op::Essential { tenant, on } => (
                "PUT",
                format!("/tenancy/cg:{tenant}/essential"),
                Some(format!(r#"{{"essential":{on}}}"#)),
            ),
            Op::Batch(items) => {
                let items: Vec<String> = items
                    .iter()
                    .map(|(t, sel, p)| format!(r#"{{"tenant":"cg:{t}",{}}}"#, policy(*sel, *p)))
                    .collect();
                (
                    "PUT",
                    "/policies".to_string(),
                    Some(format!(r#"{{"policies":[{}]}}"#, items.join(","))),
                )
            }
        }
    }
}

/// What acknowledged changes add up to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Model {
    policies: BTreeMap<(u64, bool, usize), Params>,
    essential: BTreeMap<u64, bool>,
}

impl Model {
    /// Applies `op`, acknowledged with `status`; panics on a status the model rules out.
    fn apply(&mut self, op: &Op, status: u16, body: &str) {
        match (op, status) {
            (Op::Put { tenant, sel, params, runtime_override }, 200 | 201) => {
                let old = self.policies.insert((*tenant, *runtime_override, *sel), *params);
                assert_eq!(status == 201, old.is_none(), "{op:?} answered {status}: {body}");
            }
            (Op::Delete { tenant, sel, runtime_override }, 200 | 404) => {
                let old = self.policies.remove(&(*tenant, *runtime_override, *sel));
                assert_eq!(status == 200, old.is_some(), "{op:?} answered {status}: {body}");
            }
            (Op::Essential { tenant, on }, 200) => {
                self.essential.insert(*tenant, *on);
            }
            (Op::Batch(items), 200) => {
                for (t, sel, p) in items {
                    self.policies.insert((*t, false, *sel), *p);
                }
            }
            _ => panic!("{op:?} answered {status}: {body}"),
        }
    }

    fn view(&self, tenant: u64, with_overrides: bool) -> BTreeSet<PolicyView> {
        self.policies
            .iter()
            .filter(|((t, over, _), _)| *t == tenant && (with_overrides || !over))
            .map(|(&(t, over, sel), &(rate, burst, enabled))| {
                let (proto, dst_port, http_method, http_path_hash) = SELECTORS[sel].key;
                PolicyView {
                    tenant: t,
                    is_override: over,
                    proto,
                    dst_port,
                    http_method,
                    http_path_hash,
                    rate,
                    burst,
                    enabled,
                }
            })
            .collect()
    }

    fn essential(&self, tenant: u64) -> bool {
        self.essential.get(&tenant).copied().unwrap_or(false)
    }
}

const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Concurrent updates
// ---------------------------------------------------------------------------------------------

const WRITERS: u64 = 4;
const SHARED: &[u64] = &[2000, 2001];

#[test]
fn concurrent_updates_leave_kernel_api_and_state_file_in_agreement() {
    if !common::prerequisites() {
        return;
    }
    let ops_per_writer =
        common::gen::count_from_env("VANTAGE_CONCURRENT_OPS", 2000) / WRITERS as usize;
    let ns = Netns::new();
    let d = Daemon::start(&ns, &["--iface", "lo"], &[("VANTAGE_LOG", "info")]);
    let api = d.api;
    let sent = AtomicUsize::new(0);
    let start = Instant::now();

    // Each writer owns one tenant, whose final state it can predict, and shares two others.
    let models: Vec<(u64, Model)> = thread::scope(|s| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (ns, sent) = (&ns, &sent);
                s.spawn(move || {
                    let _in_ns = ns.enter_current_thread();
                    let own = 1000 + w;
                    let mut rng = Rng::new(0xc0c0_0000 + w);
                    let mut model = Model::default();
                    for _ in 0..ops_per_writer {
                        let exclusive = rng.chance(1, 2);
                        let op = if exclusive {
                            Op::random(&mut rng, &[own])
                        } else {
                            Op::random(&mut rng, SHARED)
                        };
                        let (method, path, body) = op.request();
                        let (status, text) =
                            try_request(api, method, &path, body.as_deref(), HTTP_TIMEOUT)
                                .unwrap_or_else(|e| panic!("{op:?}: {e}"));
                        sent.fetch_add(1, Ordering::Relaxed);
                        assert!(status < 500, "{op:?} answered {status}: {text}");
                        if exclusive {
                            model.apply(&op, status, &text);
                        } else {
                            assert!(
                                matches!(status, 200 | 201 | 404),
                                "{op:?} answered {status}: {text}"
                            );
                        }
                    }
                    (own, model)
                })
            })
            .collect();
        writers.into_iter().map(|w| w.join().expect("writer thread")).collect()
    });
    let sent = sent.load(Ordering::Relaxed);
    println!(
        "{sent} concurrent requests from {WRITERS} writers in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    views::assert_consistent(&d, "after concurrent updates");
    let (saved, saved_essential) = views::saved(&d.state_file);
    let tenants: Vec<u64> = models.iter().map(|(t, _)| *t).chain(SHARED.iter().copied()).collect();
    for &t in &tenants {
        let listed = views::listed(&d, t);
        let base: BTreeSet<_> = listed.iter().filter(|p| !p.is_override).copied().collect();
        assert_eq!(saved.get(&t).cloned().unwrap_or_default(), base, "cg:{t}: state file vs API");
        assert_eq!(
            saved_essential.contains(&t),
            views::essential(&d, t),
            "cg:{t}: essential in the state file vs API"
        );
        if let Some((_, model)) = models.iter().find(|(own, _)| *own == t) {
            assert_eq!(listed, model.view(t, true), "cg:{t}: API vs acknowledged changes");
            assert_eq!(views::essential(&d, t), model.essential(t), "cg:{t}: essential");
        }
    }
    let unexpected: Vec<_> = saved.keys().filter(|t| !tenants.contains(t)).collect();
    assert!(unexpected.is_empty(), "state file has tenants nobody wrote: {unexpected:?}");
}

// ---------------------------------------------------------------------------------------------
// Crash recovery
// ---------------------------------------------------------------------------------------------

const CRASHES: usize = 5;
/// Tenants of each crash-test writer.
const WRITER_TENANTS: [&[u64]; 2] = [&[3001, 3002], &[3003, 3004]];
/// Gets a runtime override before every kill.
const OVERRIDDEN: u64 = 3999;

/// Issues random changes until the daemon stops answering; returns how many were acknowledged
/// and the one in flight when it died, if any.
fn crash_writer(
    ns: &Netns,
    api: std::net::SocketAddr,
    seed: u64,
    tenants: &[u64],
    model: &mut Model,
) -> (usize, Option<Op>) {
    let _in_ns = ns.enter_current_thread();
    let mut rng = Rng::new(seed);
    let mut acked = 0;
    loop {
        let op = Op::random(&mut rng, tenants);
        let (method, path, body) = op.request();
        match try_request(api, method, &path, body.as_deref(), HTTP_TIMEOUT) {
            Ok((status, text)) => {
                assert!(status < 500, "{op:?} answered {status}: {text}");
                model.apply(&op, status, &text);
                acked += 1;
            }
            // Refused: the daemon was already gone before this one was sent.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return (acked, None),
            Err(_) => return (acked, Some(op)),
        }
    }
}

/// Checks a restarted daemon against the acknowledged changes; a change in flight at the kill
/// may be there or not, and `model` is updated to what the daemon says.
fn check_restored(
    d: &Daemon,
    ns: &Netns,
    tenants: &[u64],
    model: &mut Model,
    in_flight: Option<&Op>,
    round: usize,
) {
    let snapshot = |d: &Daemon| -> (Vec<BTreeSet<PolicyView>>, Vec<bool>) {
        (
            tenants.iter().map(|&t| views::listed(d, t)).collect(),
            tenants.iter().map(|&t| views::essential(d, t)).collect(),
        )
    };
    let expect = |m: &Model| -> (Vec<BTreeSet<PolicyView>>, Vec<bool>) {
        (
            tenants.iter().map(|&t| m.view(t, false)).collect(),
            tenants.iter().map(|&t| m.essential(t)).collect(),
        )
    };
    // Runtime overrides never survive a restart.
    model.policies.retain(|&(_, is_override, _), _| !is_override);
    let got = snapshot(d);
    for (t, listed) in tenants.iter().zip(&got.0) {
        assert!(
            listed.iter().all(|p| !p.is_override),
            "round {round}: cg:{t} kept a runtime override: {listed:?}"
        );
    }
    if got == expect(model) {
        return;
    }
    if let Some(op) = in_flight {
        let mut applied = model.clone();
        // Its status is unknown; replaying it as acknowledged gives the "after" state.
        let status = match op {
            Op::Put { tenant, sel, runtime_override, .. } => {
                if model.policies.contains_key(&(*tenant, *runtime_override, *sel)) {
                    200
                } else {
                    201
                }
            }
            Op::Delete { tenant, sel, runtime_override } => {
                if model.policies.contains_key(&(*tenant, *runtime_override, *sel)) {
                    200
                } else {
                    404
                }
            }
            _ => 200,
        };
        applied.apply(op, status, "");
        if got == expect(&applied) {
            *model = applied;
            return;
        }
    }
    panic!(
        "round {round}: after the restart the daemon lists {got:?} but the acknowledged changes \
         add up to {:?} (change in flight at the kill: {in_flight:?}); namespace {}",
        expect(model),
        ns.name
    );
}

#[test]
fn acknowledged_changes_survive_kill_9_and_runtime_overrides_do_not() {
    if !common::prerequisites() {
        return;
    }
    let ns = Netns::new();
    let dir = TempDir::new();
    let state = dir.join("state.json");
    let state_arg = state.to_str().expect("utf-8 temp path").to_string();
    let args = ["--iface", "lo", "--state-file", state_arg.as_str()];
    let mut models = [Model::default(), Model::default()];
    let mut in_flight: [Option<Op>; 2] = [None, None];
    let mut rng = Rng::new(0xdead_0009);
    let mut acked_total = 0;
    let start = Instant::now();

    for round in 0..=CRASHES {
        let mut d = Daemon::start(&ns, &args, &[("VANTAGE_LOG", "info")]);
        let attached = common::tcx_program_names(&ns, "lo", true);
        assert_eq!(attached, ["vantage_ingress"], "round {round}: programs on lo ingress");
        for (w, tenants) in WRITER_TENANTS.iter().enumerate() {
            check_restored(&d, &ns, tenants, &mut models[w], in_flight[w].as_ref(), round);
        }
        let overridden = views::listed(&d, OVERRIDDEN);
        assert!(
            overridden.is_empty(),
            "round {round}: a runtime override survived: {overridden:?}"
        );
        views::assert_consistent(&d, &format!("round {round} after the restart"));
        if round == CRASHES {
            let status = d.stop();
            assert!(status.success(), "the last daemon exited with {status}");
            break;
        }

        let (status, v) = d.http_json(
            "PUT",
            &format!("/policy/cg:{OVERRIDDEN}"),
            Some(r#"{"rate_tokens_per_sec":10,"burst_tokens":10,"enabled":true,"runtime_override":true}"#),
        );
        assert_eq!(status, 201, "runtime override: {v}");
        let api = d.api;
        let kill_after = Duration::from_millis(rng.range(150, 1500) as u64);
        let results = thread::scope(|s| {
            let writers: Vec<_> = models
                .iter_mut()
                .enumerate()
                .map(|(w, model)| {
                    let (ns, seed) = (&ns, 0x5eed_0000 + (round * 2 + w) as u64);
                    s.spawn(move || crash_writer(ns, api, seed, WRITER_TENANTS[w], model))
                })
                .collect();
            thread::sleep(kill_after);
            d.kill9();
            writers.into_iter().map(|w| w.join().expect("writer thread")).collect::<Vec<_>>()
        });
        for (w, (acked, op)) in results.into_iter().enumerate() {
            acked_total += acked;
            in_flight[w] = op;
        }
        println!(
            "round {round}: killed after {kill_after:?}; {acked_total} changes acknowledged so far"
        );
    }

    let leftovers: Vec<String> = std::fs::read_dir(&dir.path)
        .expect("list state dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n != "state.json")
        .collect();
    println!(
        "survived {CRASHES} kill -9 crashes with {acked_total} acknowledged changes, all restored, \
         in {:.1} s; files left next to the state file: {leftovers:?}",
        start.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// Map capacity
// ---------------------------------------------------------------------------------------------

fn put(d: &Daemon, tenant: u64, sel: usize, rate: u64, runtime_override: bool) -> (u16, Value) {
    let op = Op::Put { tenant, sel, params: (rate, 10, true), runtime_override };
    let (method, path, body) = op.request();
    d.http_json(method, &path, body.as_deref())
}

fn delete(d: &Daemon, tenant: u64, sel: usize, runtime_override: bool) -> (u16, Value) {
    let (method, path, _) = Op::Delete { tenant, sel, runtime_override }.request();
    d.http_json(method, &path, None)
}

/// Every base policy the API lists for `tenants`.
fn listed_base(d: &Daemon, tenants: &[u64]) -> BTreeSet<PolicyView> {
    tenants.iter().flat_map(|&t| views::listed(d, t)).filter(|p| !p.is_override).collect()
}

#[test]
fn a_full_policy_map_refuses_the_next_policy_with_507_and_changes_nothing() {
    if !common::prerequisites() {
        return;
    }
    const CAPACITY: u64 = 16;
    let ns = Netns::new();
    let d = Daemon::start(
        &ns,
        &["--iface", "lo", "--policy-capacity", "16"],
        &[("VANTAGE_LOG", "info")],
    );
    let (status, snap) = d.http_json("GET", "/debug/snapshot", None);
    assert_eq!(status, 200);
    assert_eq!(snap["policies"]["capacity"], CAPACITY, "snapshot: {}", snap["policies"]);
    assert_eq!(snap["settings"]["policy_capacity"], CAPACITY, "snapshot: {}", snap["settings"]);

    let tenants = [501, 502, 503, 504];
    let mut refusals = Vec::new();
    // Fill the base map: 4 tenants with 4 policies each.
    for &t in &tenants {
        for sel in 0..4 {
            let (status, v) = put(&d, t, sel, 100, false);
            assert_eq!(status, 201, "cg:{t} selector {sel}: {v}");
        }
    }
    let full = listed_base(&d, &tenants);
    assert_eq!(full.len(), 16);

    // One more is refused, and nothing of it is kept anywhere.
    let (status, v) = put(&d, 501, 4, 100, false);
    assert_eq!(status, 507, "a 17th base policy: {v}");
    refusals.push(("POLICIES", v["error"].as_str().unwrap_or_default().to_string()));
    views::assert_consistent(&d, "after the refused base policy");
    assert_eq!(listed_base(&d, &tenants), full, "the refused policy is listed");
    assert_eq!(
        views::saved(&d.state_file).0.values().flatten().copied().collect::<BTreeSet<_>>(),
        full
    );

    // Updating a stored policy at capacity still works.
    let (status, v) = put(&d, 501, 0, 555, false);
    assert_eq!(status, 200, "update at capacity: {v}");

    // A batch that needs three slots when one is free is refused whole.
    let (status, v) = delete(&d, 501, 3, false);
    assert_eq!(status, 200, "{v}");
    let before_batch = listed_base(&d, &tenants);
    let batch =
        Op::Batch(vec![(501, 3, (7, 7, true)), (501, 4, (7, 7, true)), (502, 4, (7, 7, true))]);
    let (method, path, body) = batch.request();
    let (status, v) = d.http_json(method, &path, body.as_deref());
    assert_eq!(status, 507, "a batch larger than the free room: {v}");
    views::assert_consistent(&d, "after the refused batch");
    assert_eq!(listed_base(&d, &tenants), before_batch, "part of the refused batch was kept");
    let saved: BTreeSet<_> = views::saved(&d.state_file).0.values().flatten().copied().collect();
    assert_eq!(saved, before_batch, "the state file kept part of the refused batch");
    let (status, v) = put(&d, 501, 3, 100, false);
    assert_eq!(status, 201, "the freed slot is usable again: {v}");

    // The override map has its own 16 entries.
    for &t in &tenants {
        for sel in 0..4 {
            let (status, v) = put(&d, t, sel, 100, true);
            assert_eq!(status, 201, "override cg:{t} selector {sel}: {v}");
        }
    }
    let (status, v) = put(&d, 502, 5, 100, true);
    assert_eq!(status, 507, "a 17th override: {v}");
    refusals.push(("OVERRIDES", v["error"].as_str().unwrap_or_default().to_string()));
    views::assert_consistent(&d, "after the refused override");
    assert_eq!(views::listed(&d, 502).iter().filter(|p| p.is_override).count(), 4);

    // The per-tenant level map fills at 16 tenants: its refusal must undo the override written
    // before it.
    for &t in &tenants {
        for sel in 0..4 {
            let (status, v) = delete(&d, t, sel, true);
            assert_eq!(status, 200, "{v}");
        }
    }
    let newcomers: Vec<u64> = (601..613).collect();
    for &t in &newcomers {
        let (status, v) = put(&d, t, 0, 100, true);
        assert_eq!(status, 201, "override for new tenant cg:{t}: {v}");
    }
    let (status, v) = put(&d, 613, 0, 100, true);
    assert_eq!(status, 507, "a 17th tenant: {v}");
    refusals.push(("TENANT_LEVELS", v["error"].as_str().unwrap_or_default().to_string()));
    views::assert_consistent(&d, "after the refused tenant");
    assert!(views::listed(&d, 613).is_empty(), "the refused tenant's override is listed");

    let saved: BTreeSet<_> = views::saved(&d.state_file).0.values().flatten().copied().collect();
    assert_eq!(saved, listed_base(&d, &tenants), "state file vs API at the end");
    println!("507 answers: {refusals:#?}");
    for (map, message) in &refusals {
        assert!(
            message.contains(map) && message.contains("--policy-capacity"),
            "a full {map} must be answered with an error naming the map and --policy-capacity; \
             got {message:?}"
        );
    }
}
