//! Collects results: a nested JSON summary, human-readable rows per section,
//! and the issue's targets judged against the figures.

use std::{fmt::Write as _, fs, path::PathBuf, process::ExitCode};

use serde_json::{Map, Value};

/// Everything measured so far.
pub struct Report {
    root: Map<String, Value>,
    rows: Vec<Row>,
    failed: Vec<&'static str>,
}

struct Row {
    section: &'static str,
    name: String,
    value: String,
}

/// One goal from the issue and how it came out.
struct Verdict {
    goal: &'static str,
    /// `None` when the figures it needs were not measured.
    outcome: Option<(bool, String)>,
}

impl Report {
    /// An empty report.
    pub fn new() -> Report {
        Report { root: Map::new(), rows: Vec::new(), failed: Vec::new() }
    }

    /// Records the machine the figures come from.
    pub fn machine(&mut self) {
        let first_line = |cmd: &str, args: &[&str]| {
            std::process::Command::new(cmd)
                .args(args)
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string()
                })
                .unwrap_or_default()
        };
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split(':').nth(1)))
            .unwrap_or("")
            .trim()
            .to_string();
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let mem_kib = fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        let machine = serde_json::json!({
            "kernel": first_line("uname", &["-r"]),
            "cpu_model": model,
            "cpus": cpus,
            "memory_gib": (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            "nft": first_line("nft", &["--version"]),
            "iperf3": first_line("iperf3", &["--version"]),
        });
        progress!("machine: {machine}");
        self.root.insert("machine".into(), machine);
    }

    /// Sets a number at a dotted path such as `dataplane_ns.empty`.
    pub fn set(&mut self, path: &str, v: f64) {
        let v = serde_json::Number::from_f64(round(v)).map_or(Value::Null, Value::Number);
        self.set_value(path, v);
    }

    /// Sets any JSON value at a dotted path.
    pub fn set_value(&mut self, path: &str, v: Value) {
        let mut parts: Vec<&str> = path.split('.').collect();
        let last = parts.pop().unwrap_or(path);
        let mut node = &mut self.root;
        for p in parts {
            let entry = node.entry(p).or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            let Value::Object(m) = entry else { unreachable!("just made an object") };
            node = m;
        }
        node.insert(last.to_string(), v);
    }

    /// The number at a dotted path, if measured.
    pub fn get(&self, path: &str) -> Option<f64> {
        let mut parts = path.split('.');
        let mut v = self.root.get(parts.next()?)?;
        for p in parts {
            v = v.get(p)?;
        }
        v.as_f64()
    }

    /// Adds a line to a section's table.
    pub fn row(
        &mut self,
        section: &'static str,
        name: impl Into<String>,
        value: impl Into<String>,
    ) {
        self.rows.push(Row { section, name: name.into(), value: value.into() });
    }

    /// Marks a section as failed (its panic message was already printed).
    pub fn fail(&mut self, section: &'static str) {
        self.failed.push(section);
        self.row(section, "FAILED", "see the panic above; figures below it are missing");
    }

    /// Prints one section's rows.
    pub fn print_section(&self, section: &str) {
        let rows: Vec<&Row> = self.rows.iter().filter(|r| r.section == section).collect();
        let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
        println!("\n== {section} ==");
        for r in rows {
            println!("  {:width$}  {}", r.name, r.value);
        }
    }

    /// Judges the targets, prints them, writes `summary.json` and `summary.md`.
    pub fn finish(mut self) -> ExitCode {
        let verdicts = self.verdicts();
        let mut targets = Map::new();
        println!("\n== targets ==");
        for v in &verdicts {
            let (mark, figure) = match &v.outcome {
                Some((true, f)) => ("met", f.as_str()),
                Some((false, f)) => ("MISSED", f.as_str()),
                None => ("not measured", ""),
            };
            println!("  {:58} {:12} {figure}", v.goal, mark);
            targets.insert(
                v.goal.to_string(),
                serde_json::json!({ "met": v.outcome.as_ref().map(|o| o.0), "figure": figure }),
            );
        }
        self.root.insert("targets".into(), Value::Object(targets));
        self.root.insert(
            "failed_sections".into(),
            Value::Array(self.failed.iter().map(|s| Value::String(s.to_string())).collect()),
        );

        let dir = target_dir().join("bench");
        let written = fs::create_dir_all(&dir)
            .and_then(|()| {
                let json = serde_json::to_string_pretty(&Value::Object(self.root.clone()))
                    .map_err(std::io::Error::other)?;
                fs::write(dir.join("summary.json"), json + "\n")
            })
            .and_then(|()| fs::write(dir.join("summary.md"), self.markdown(&verdicts)));
        match written {
            Ok(()) => println!("\nwrote {0}/summary.json and {0}/summary.md", dir.display()),
            Err(e) => {
                eprintln!("cannot write {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
        }
        if self.failed.is_empty() {
            ExitCode::SUCCESS
        } else {
            eprintln!("failed sections: {}", self.failed.join(", "));
            ExitCode::FAILURE
        }
    }

    /// The rows and targets as Markdown tables, for BENCHMARKS.md.
    fn markdown(&self, verdicts: &[Verdict]) -> String {
        let mut out = String::new();
        let mut sections: Vec<&str> = self.rows.iter().map(|r| r.section).collect();
        sections.dedup();
        for s in sections {
            let _ = writeln!(out, "### {s}\n\n| measure | result |\n|---|---|");
            for r in self.rows.iter().filter(|r| r.section == s) {
                let _ = writeln!(out, "| {} | {} |", r.name, r.value);
            }
            out.push('\n');
        }
        let _ = writeln!(out, "### targets\n\n| target | verdict | figure |\n|---|---|---|");
        for v in verdicts {
            let (mark, figure) = match &v.outcome {
                Some((met, f)) => (if *met { "met" } else { "**missed**" }, f.as_str()),
                None => ("not measured", ""),
            };
            let _ = writeln!(out, "| {} | {mark} | {figure} |", v.goal);
        }
        out
    }

    fn verdicts(&self) -> Vec<Verdict> {
        let at_most = |goal, key: &str, limit: f64, unit: &str| Verdict {
            goal,
            outcome: self.get(key).map(|x| (x <= limit, format!("{x:.2}{unit}"))),
        };
        let at_least = |goal, key: &str, limit: f64| Verdict {
            goal,
            outcome: self.get(key).map(|x| (x >= limit, format!("{:.2} %", x * 100.0))),
        };
        let within = |goal, key: &str, limit: f64| Verdict {
            goal,
            outcome: self.get(key).map(|x| (x.abs() <= limit, format!("{x:+.3} %"))),
        };
        // "Never worse than nftables": vantage's miss in packets may exceed
        // nftables' by at most one packet, the resolution of a count.
        let vs_nft = |goal, ours: &str, theirs: &str| {
            let miss = |k: &str| {
                let a = self.get(&format!("rate_packets.{k}.admitted"))?;
                let e = self.get(&format!("rate_packets.{k}.expected"))?;
                Some(a - e)
            };
            Verdict {
                goal,
                outcome: miss(ours).zip(miss(theirs)).map(|(o, t)| {
                    (o.abs() <= t.abs() + 1.0, format!("{o:+.1} vs nftables {t:+.1} packets"))
                }),
            }
        };
        vec![
            at_most("unlimited tenant <= 3x empty", "dataplane_ratio.unlimited_tenant", 3.0, "x"),
            at_most("limited L4 <= 4x empty", "dataplane_ratio.limited_l4", 4.0, "x"),
            at_most("HTTP request <= 6x empty", "dataplane_ratio.http_request", 6.0, "x"),
            at_most("malformed <= 2x empty", "dataplane_ratio.malformed", 2.0, "x"),
            at_most(
                "cost flat from 10 to 100k policies (<= 1.10)",
                "scale_ratio_100k_vs_10",
                1.10,
                "",
            ),
            at_least(
                "throughput, no policy >= 97 % of no classifier (TCP)",
                "throughput_ratio_vs_baseline.vantage_no_policy",
                0.97,
            ),
            at_least(
                "throughput, generous policy >= 97 % (TCP)",
                "throughput_ratio_vs_baseline.vantage_generous_policy",
                0.97,
            ),
            within("rate error, single flow within +-1 %", "rate_error_pct.single_flow", 1.0),
            within("rate error, both CPUs within +-1 %", "rate_error_pct.multi_cpu", 1.0),
            vs_nft("single flow no worse than nftables", "single_flow", "nftables_single_flow"),
            vs_nft("both CPUs no worse than nftables", "multi_cpu", "nftables_multi_cpu"),
            at_most("PUT -> enforced p99 <= 1 ms", "policy_update_p99_us", 1000.0, " us"),
            at_most("/metrics with 10k series <= 50 ms", "metrics_scrape_10k_ms", 50.0, " ms"),
            at_most("idle RSS <= 16 MiB", "rss_idle_mib", 16.0, " MiB"),
        ]
    }
}

/// Rounds to 4 decimal places, finer than any figure here is accurate.
fn round(v: f64) -> f64 {
    (v * 10_000.0).round() / 10_000.0
}

/// The workspace's target directory (`CARGO_TARGET_DIR` when set).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")))
}
