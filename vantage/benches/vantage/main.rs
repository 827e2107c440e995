//! `make bench`: what vantage costs and how well it holds a rate, measured
//! against an empty classifier and against nftables on this machine.
//!
//! Four sections, each in network namespaces and cgroups of its own:
//!
//! - [`dataplane`]: nanoseconds per packet through `BPF_PROG_TEST_RUN`, for
//!   each kind of packet, side by side with the empty classifier, and the
//!   limited case again with 100,000 policies installed;
//! - [`throughput`]: iperf3 across a veth pair with no classifier, with the
//!   daemon attached (no policy, then a generous one) and with an nftables
//!   rule of the same limit;
//! - [`accuracy`]: admitted against expected under 10x overload, from one
//!   flow and from both CPUs, for vantage and for nftables;
//! - [`control`]: PUT-to-enforced latency, bulk policy loads, a 10k-series
//!   `/metrics` scrape, daemon memory and the static binary's size.
//!
//! Results go to stdout as tables and to `target/bench/summary.json` (plus
//! `summary.md`). A section that fails is reported and the others still
//! run; the process then exits non-zero. Everything a section creates is
//! held by a guard that removes it on drop, so a panic cleans up too.
//!
//! `cargo bench --bench vantage -- dataplane control` runs only the named
//! sections.

/// Prints a progress line to stderr with the time since the suite started.
macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!("[{:6.1}s] {}", $crate::START.elapsed().as_secs_f64(), format_args!($($arg)*))
    };
}

#[path = "../../tests/common/mod.rs"]
mod common;

mod accuracy;
mod control;
mod daemon;
mod dataplane;
mod nft;
mod procs;
mod report;
mod stats;
mod throughput;

use std::{
    panic::{self, AssertUnwindSafe},
    process::ExitCode,
    sync::LazyLock,
    time::Instant,
};

use report::Report;

/// When the suite started, for progress lines.
static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// A section of the suite: its name on the command line and its body.
type Section = (&'static str, fn(&mut Report));

const SECTIONS: [Section; 4] = [
    ("dataplane", dataplane::run),
    ("throughput", throughput::run),
    ("accuracy", accuracy::run),
    ("control", control::run),
];

fn main() -> ExitCode {
    if !common::prerequisites() || !procs::tools_present(&["iperf3", "nft"]) {
        return ExitCode::SUCCESS;
    }
    // `cargo bench` passes `--bench`; any other argument selects sections.
    let wanted: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    LazyLock::force(&START);
    let mut report = Report::new();
    report.machine();

    for (name, section) in SECTIONS {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == name) {
            continue;
        }
        progress!("{name}: start");
        let t = Instant::now();
        // A failed section is recorded; its guards have cleaned up by the time
        // catch_unwind returns, and the next section starts from scratch.
        if panic::catch_unwind(AssertUnwindSafe(|| section(&mut report))).is_err() {
            report.fail(name);
        }
        progress!("{name}: done in {:.0} s", t.elapsed().as_secs_f64());
        report.print_section(name);
    }

    report.set("bench_seconds", START.elapsed().as_secs_f64());
    report.finish()
}
