//! Loading the embedded classifier and attaching it to an interface.
//!
//! [`load`] sets the classifier's load-time [`Config`] (cgroup offsets from
//! kernel BTF, flow-key mode, sampling) and map capacities, then loads both
//! programs. [`Attachment::attach`] hooks them on an interface through tcx
//! (kernel 6.6+) or a clsact qdisc, and [`Attachment::detach`] undoes
//! exactly what it did.

use std::io;

use aya::{
    include_bytes_aligned,
    programs::{
        tc::{self, NlOptions, TcAttachOptions},
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
    },
    util::KernelVersion,
    Ebpf, EbpfError, EbpfLoader,
};
use log::{debug, info, warn};
use vantage_common::{
    bucket, Config, GLOBAL_CONFIG, MAP_IDENTITY, MAP_OVERRIDES, MAP_POLICIES, MAP_TENANT_LEVELS,
    PROG_EGRESS, PROG_INGRESS,
};

use crate::{
    btf::CgroupIdOffsets,
    cli::{AttachDirection, AttachMode},
    sys,
};

/// The classifier object built by `build.rs` from `vantage-ebpf`.
pub fn object() -> &'static [u8] {
    include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vantage.bpf.o"))
}

/// Failures while loading or attaching the classifier.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The object or a program in it failed to load (verifier, maps).
    #[error("load the eBPF classifier")]
    Load(#[source] EbpfError),
    /// A program named in `vantage-common` is missing from the object.
    #[error("program {name} missing from the eBPF object")]
    MissingProgram {
        /// Program name.
        name: &'static str,
    },
    /// The kernel refused a program.
    #[error("load program {name} into the kernel")]
    Program {
        /// Program name.
        name: &'static str,
        /// What the kernel said, with the verifier log.
        #[source]
        source: Box<ProgramError>,
    },
    /// Attaching failed.
    #[error("attach {name} to {iface} {direction}")]
    Attach {
        /// Program name.
        name: &'static str,
        /// Interface.
        iface: String,
        /// `ingress` or `egress`.
        direction: &'static str,
        /// Cause.
        #[source]
        source: Box<ProgramError>,
    },
    /// Another live process already has a vantage program on the hook.
    #[error(
        "{iface} {direction} already has a vantage classifier attached through tcx \
         (program id {prog_id}); is another vantage running?"
    )]
    AlreadyAttached {
        /// Interface.
        iface: String,
        /// `ingress` or `egress`.
        direction: &'static str,
        /// The other program's id.
        prog_id: u32,
    },
    /// The clsact qdisc could not be created.
    #[error("add clsact qdisc to {iface}")]
    Qdisc {
        /// Interface.
        iface: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// tcx was requested on a kernel without it.
    #[error("--attach-mode tcx needs kernel 6.6 or newer")]
    NoTcx,
}

/// The longest plausible tick (HZ=100), assumed when the real one is
/// unknown, so that the identity TTL in ticks never exceeds the one asked for.
const FALLBACK_TICK_NS: u64 = 10_000_000;

/// Everything [`load`] needs to know.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Offsets for reading a socket's cgroup id.
    pub offsets: CgroupIdOffsets,
    /// `--flow-keys-mode legacy`.
    pub legacy_flow_keys: bool,
    /// `--drop-event-sample-n`.
    pub drop_event_sample_n: u32,
    /// The interface carries bare IP packets.
    pub raw_ip: bool,
    /// Identity cache TTL in nanoseconds.
    pub identity_ttl_ns: u64,
    /// Capacity of each policy map and of the tenant level map.
    pub policy_capacity: u32,
    /// Capacity of the identity cache.
    pub identity_capacity: u32,
}

/// Loads the classifier with `opts` (programs loaded, not attached).
///
/// # Errors
///
/// [`LoadError::Load`] or [`LoadError::Program`] with the verifier's log
/// when the kernel refuses the object.
pub fn load(opts: &LoadOptions) -> Result<Ebpf, LoadError> {
    let tick_ns = sys::tick_ns();
    if tick_ns.is_none() {
        warn!(
            "cannot tell the kernel tick length from CLOCK_MONOTONIC_COARSE; every bucket uses the \
             precise clock and identity cache entries live at most --identity-ttl-ms"
        );
    }
    let config = Config {
        sock_cgroup_off: opts.offsets.sock_cgroup,
        cgroup_kn_off: opts.offsets.cgroup_kn,
        kn_id_off: opts.offsets.kn_id,
        legacy_flow_keys: u32::from(opts.legacy_flow_keys),
        drop_event_sample_n: opts.drop_event_sample_n.max(1),
        raw_ip: u32::from(opts.raw_ip),
        identity_ttl_ticks: opts.identity_ttl_ns.div_ceil(tick_ns.unwrap_or(FALLBACK_TICK_NS)),
        tick_ns: tick_ns.unwrap_or(0),
        tick_clock_min_ns: bucket::tick_clock_min_ns(tick_ns.unwrap_or(0)),
    };
    let mut ebpf = EbpfLoader::new()
        .override_global(GLOBAL_CONFIG, &config, true)
        .map_max_entries(MAP_POLICIES, opts.policy_capacity)
        .map_max_entries(MAP_OVERRIDES, opts.policy_capacity)
        .map_max_entries(MAP_TENANT_LEVELS, opts.policy_capacity)
        .map_max_entries(MAP_IDENTITY, opts.identity_capacity)
        .load(object())
        .map_err(LoadError::Load)?;
    for name in [PROG_INGRESS, PROG_EGRESS] {
        let prog = classifier(&mut ebpf, name)?;
        prog.load().map_err(|source| LoadError::Program { name, source: Box::new(source) })?;
        if let Ok(info) = prog.info() {
            debug!(
                "loaded {name}: {} bytes translated, verifier processed {} instructions",
                info.size_translated().unwrap_or(0),
                info.verified_instruction_count().unwrap_or(0)
            );
        }
    }
    Ok(ebpf)
}

/// The classifier program `name` of a loaded object.
pub fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, LoadError> {
    ebpf.program_mut(name)
        .ok_or(LoadError::MissingProgram { name })?
        .try_into()
        .map_err(|source| LoadError::Program { name, source: Box::new(source) })
}

/// What [`Attachment::attach`] did to an interface, so it can be undone.
#[derive(Debug)]
pub struct Attachment {
    iface: String,
    hooks: Vec<Hook>,
    created_qdisc: bool,
}

#[derive(Debug)]
struct Hook {
    name: &'static str,
    kind: TcAttachType,
    link: aya::programs::tc::SchedClassifierLinkId,
}

fn hook_name(kind: TcAttachType) -> &'static str {
    match kind {
        TcAttachType::Ingress => "ingress",
        _ => "egress",
    }
}

impl Attachment {
    /// Attaches the programs for `direction` on `iface`.
    ///
    /// With netlink, filters a crashed earlier run left behind (same program
    /// name) are removed first and the clsact qdisc is created only if
    /// absent. With tcx nothing can be left behind: a tcx link lives as long
    /// as the file descriptor of the process that made it, so a crash
    /// detaches it; a vantage program found on the hook therefore belongs to
    /// a live process, and attaching is refused.
    ///
    /// # Errors
    ///
    /// Any kernel refusal, with the interface and hook named. On error,
    /// whatever was attached so far is detached again.
    pub fn attach(
        ebpf: &mut Ebpf,
        iface: &str,
        direction: AttachDirection,
        mode: AttachMode,
    ) -> Result<Attachment, LoadError> {
        let has_tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        let use_tcx = match mode {
            AttachMode::Auto => has_tcx,
            AttachMode::Tcx if !has_tcx => return Err(LoadError::NoTcx),
            AttachMode::Tcx => true,
            AttachMode::Netlink => false,
        };
        let kinds: &[TcAttachType] = match direction {
            AttachDirection::Ingress => &[TcAttachType::Ingress],
            AttachDirection::Egress => &[TcAttachType::Egress],
            AttachDirection::Both => &[TcAttachType::Ingress, TcAttachType::Egress],
        };

        let mut att =
            Attachment { iface: iface.to_owned(), hooks: Vec::new(), created_qdisc: false };
        if !use_tcx {
            att.created_qdisc = add_clsact(iface)?;
        }
        for &kind in kinds {
            let name = if kind == TcAttachType::Ingress { PROG_INGRESS } else { PROG_EGRESS };
            if let Err(e) = att.attach_one(ebpf, name, kind, use_tcx) {
                att.detach(ebpf);
                return Err(e);
            }
        }
        Ok(att)
    }

    fn attach_one(
        &mut self,
        ebpf: &mut Ebpf,
        name: &'static str,
        kind: TcAttachType,
        use_tcx: bool,
    ) -> Result<(), LoadError> {
        let iface = self.iface.clone();
        let direction = hook_name(kind);
        let attach_err = |source| LoadError::Attach {
            name,
            iface: iface.clone(),
            direction,
            source: Box::new(source),
        };

        let options = if use_tcx {
            if let Some(prog_id) = tcx_program_named(&iface, kind, name) {
                return Err(LoadError::AlreadyAttached { iface, direction, prog_id });
            }
            TcAttachOptions::TcxOrder(LinkOrder::default())
        } else {
            match tc::qdisc_detach_program(&iface, kind, name) {
                Ok(()) => {
                    warn!("removed a {name} filter left on {iface} {direction} by an earlier run")
                }
                Err(tc::TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(attach_err(ProgramError::TcError(e)));
                }
            }
            TcAttachOptions::Netlink(NlOptions::default())
        };

        let link = classifier(ebpf, name)?
            .attach_with_options(&iface, kind, options)
            .map_err(attach_err)?;
        self.hooks.push(Hook { name, kind, link });
        info!(
            "attached {name} to {iface} {direction} via {}",
            if use_tcx { "tcx" } else { "netlink" }
        );
        Ok(())
    }

    /// Detaches every program this attachment attached and removes the
    /// clsact qdisc if it created it. Failures are logged, not returned:
    /// detaching is best effort on the way out.
    pub fn detach(&mut self, ebpf: &mut Ebpf) {
        for hook in self.hooks.drain(..) {
            let direction = hook_name(hook.kind);
            match classifier(ebpf, hook.name).and_then(|p| {
                p.detach(hook.link).map_err(|source| LoadError::Program {
                    name: hook.name,
                    source: Box::new(source),
                })
            }) {
                Ok(()) => info!("detached {} from {} {direction}", hook.name, self.iface),
                Err(e) => warn!("detach {} from {} {direction}: {e}", hook.name, self.iface),
            }
        }
        if std::mem::take(&mut self.created_qdisc) {
            match sys::delete_clsact(&self.iface) {
                Ok(()) => debug!("removed the clsact qdisc vantage added to {}", self.iface),
                Err(e) => warn!("remove clsact qdisc from {}: {e}", self.iface),
            }
        }
    }
}

/// Adds a clsact qdisc to `iface`; `Ok(false)` when one was already there.
fn add_clsact(iface: &str) -> Result<bool, LoadError> {
    match tc::qdisc_add_clsact(iface) {
        Ok(()) => {
            debug!("added a clsact qdisc to {iface}");
            Ok(true)
        }
        Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(LoadError::Qdisc { iface: iface.to_owned(), source: io::Error::other(e) }),
    }
}

/// The id of a program called `name` attached through tcx on the hook.
fn tcx_program_named(iface: &str, kind: TcAttachType, name: &str) -> Option<u32> {
    let (_, programs) = SchedClassifier::query_tcx(iface, kind).ok()?;
    programs.iter().find(|p| p.name_as_str() == Some(name)).map(|p| p.id())
}
