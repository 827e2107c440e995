//! vantage: per-tenant admission control enforced in the Linux kernel.
//!
//! A tc classifier (the `vantage-ebpf` crate, embedded by [`loader`])
//! finds the cgroup v2 owning each packet and meters it against the most
//! specific policy for its flow. This crate is the daemon around it:
//!
//! - [`cli`] parses flags; [`prereq`] checks the host; [`daemon`] runs it.
//! - [`loader`] loads and attaches the classifier, with offsets from kernel
//!   BTF ([`btf`]); [`sys`] holds the raw syscalls aya does not wrap.
//! - [`policy`] is the pure model (selectors, validation, the ten-level
//!   resolution the kernel also uses); [`store`] applies changes to kernel
//!   maps ([`maps`]), model and state file ([`state`]) all or nothing.
//! - [`owner`] runs the store on one thread; the HTTP workers ([`api`],
//!   [`metrics`], [`snapshot`]), the drop event consumer ([`events`]) and
//!   the adaptive controller ([`adaptive`], reading [`host`] load) send it
//!   jobs over a channel instead of sharing locks.
pub mod adaptive;
pub mod api;
pub mod btf;
pub mod cli;
pub mod daemon;
pub mod events;
pub mod host;
pub mod loader;
pub mod maps;
pub mod metrics;
pub mod owner;
pub mod policy;
pub mod prereq;
pub mod snapshot;
pub mod state;
pub mod store;
pub mod sys;
pub mod tenant;

/// Version and the git revision the binary was built from.
pub const VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("VANTAGE_GIT_REVISION"), ")");

/// An error and its causes on one line, `outer: cause: cause`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
