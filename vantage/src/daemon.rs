//! Start-up, the running daemon's threads, and shutdown.
//!
//! Order matters: prerequisites, then the state file (a corrupt one stops
//! us before anything changes on the host), then load the classifier and
//! fill its maps, and only then attach it, so the first packet already
//! meets every saved policy. Shutdown runs the other way round: stop the
//! API and the controller (which removes its overrides), then detach.

use std::{
    path::Path,
    sync::{atomic::AtomicBool, Arc},
    time::{Duration, Instant},
};

use crossbeam_channel::bounded;
use log::{info, warn};
use vantage_common::MAP_DROP_EVENTS;

use crate::{
    adaptive::{self, ProcSampler, Status, Watermarks},
    api::{self, ApiContext},
    btf::{BtfError, CgroupIdOffsets, KernelBtf},
    cli::{Cli, FlowKeysMode},
    events, host,
    loader::{self, Attachment, LoadError, LoadOptions},
    maps::{DataplaneError, KernelMaps},
    owner::Owner,
    policy::PolicySpec,
    prereq::{self, PrereqError},
    snapshot::{EventStats, Observed, Settings},
    state::{self, StateError},
    store::{PolicyStore, StoreError},
    sys,
};

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A prerequisite is missing.
    #[error(transparent)]
    Prereq(#[from] PrereqError),
    /// Kernel BTF could not give the cgroup offsets.
    #[error("read struct offsets from kernel BTF")]
    Btf(#[from] BtfError),
    /// The state file is unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// Loading or attaching failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A map could not be taken.
    #[error(transparent)]
    Maps(#[from] DataplaneError),
    /// Saved policies could not be written to the maps.
    #[error("restore saved policies")]
    Restore(#[source] StoreError),
    /// The API address could not be bound.
    #[error("listen on {addr}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The API token could not be read or is empty.
    #[error("API token: {0}")]
    Token(String),
    /// A thread or signal operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> DaemonError {
    move |source| DaemonError::Io { what, source }
}

/// Whether `iface` carries bare IP packets (tun, wireguard) rather than
/// Ethernet frames; loopback has an Ethernet-style header.
fn is_raw_ip(iface: &str) -> bool {
    let ty = std::fs::read_to_string(Path::new("/sys/class/net").join(iface).join("type"));
    // ARPHRD_ETHER is 1, ARPHRD_LOOPBACK 772.
    !matches!(ty.as_deref().map(str::trim), Ok("1") | Ok("772") | Err(_))
}

/// Runs the daemon until SIGINT or SIGTERM.
///
/// # Errors
///
/// Any start-up failure; after start-up, failures are logged and the
/// daemon keeps serving.
pub fn run(cli: Cli) -> Result<(), DaemonError> {
    let started = Instant::now();
    prereq::check(&cli.iface)?;
    let token = api_token(&cli)?;
    state::remove_stale_temporaries(&cli.state_file);
    let saved = state::load(&cli.state_file)?;
    let offsets = CgroupIdOffsets::from_btf(&KernelBtf::from_sys_fs()?)?;

    let opts = LoadOptions {
        offsets,
        legacy_flow_keys: cli.flow_keys_mode == FlowKeysMode::Legacy,
        drop_event_sample_n: cli.drop_event_sample_n,
        raw_ip: is_raw_ip(&cli.iface),
        identity_ttl_ns: cli.identity_ttl_ms.saturating_mul(1_000_000),
        policy_capacity: cli.policy_capacity,
        identity_capacity: cli.identity_capacity,
    };
    let mut ebpf = loader::load(&opts)?;
    let maps = KernelMaps::take(&mut ebpf, cli.policy_capacity)?;
    let ring = ebpf
        .take_map(MAP_DROP_EVENTS)
        .and_then(|m| aya::maps::RingBuf::try_from(m).ok())
        .ok_or(DataplaneError::Missing { map: MAP_DROP_EVENTS })?;

    let mut store = PolicyStore::new(maps, Some(cli.state_file.clone()));
    store.restore(&saved).map_err(DaemonError::Restore)?;
    store.set_flag_essentials(&cli.essential_tenants);

    // Every thread spawned from here on inherits the blocked signals, so
    // only the main thread's sigwait sees them.
    sys::block_shutdown_signals().map_err(io_err("block SIGINT and SIGTERM"))?;
    let (owner, owner_thread) = Owner::spawn(store).map_err(io_err("start the map owner"))?;
    let mut attachment = Attachment::attach(&mut ebpf, &cli.iface, cli.direction, cli.attach_mode)?;

    let stop = Arc::new(AtomicBool::new(false));
    let result = serve(&cli, owner, stop.clone(), ring, started, token);

    // Shutdown, in reverse: threads first (the controller's own cleanup
    // needs the owner), then the owner, then the hooks.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let threads = match result {
        Ok(t) => t,
        Err(e) => {
            attachment.detach(&mut ebpf);
            return Err(e);
        }
    };
    for t in threads {
        let _ = t.join();
    }
    match owner_thread.join() {
        Ok(store) => drop(store),
        Err(_) => warn!("the map owner thread panicked"),
    }
    attachment.detach(&mut ebpf);
    let _ = std::fs::remove_file(api_socket_path(&cli));
    info!("stopped");
    Ok(())
}

/// Where tiny_http listens behind the guard: next to the state file, in a
/// directory the daemon owns.
fn api_socket_path(cli: &Cli) -> std::path::PathBuf {
    let name = cli.state_file.file_name().map(|n| n.to_string_lossy().into_owned());
    let dir = cli.state_file.parent().filter(|d| !d.as_os_str().is_empty());
    dir.unwrap_or(Path::new("."))
        .join(format!(".{}.api.sock", name.unwrap_or_else(|| "vantage".into())))
}

/// The API token from `--api-token` or `--api-token-file`, if any.
fn api_token(cli: &Cli) -> Result<Option<String>, DaemonError> {
    let token = match (&cli.api_token, &cli.api_token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| DaemonError::Token(format!("read {}: {e}", path.display())))?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned(),
        (None, None) => return Ok(None),
    };
    if token.is_empty() {
        return Err(DaemonError::Token("the token is empty".into()));
    }
    Ok(Some(token))
}

/// Starts the serving threads, waits for a shutdown signal, stops the
/// adaptive controller; returns the threads still to join.
fn serve(
    cli: &Cli,
    owner: Owner<KernelMaps>,
    stop: Arc<AtomicBool>,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    started: Instant,
    token: Option<String>,
) -> Result<Vec<std::thread::JoinHandle<()>>, DaemonError> {
    let mut threads = Vec::new();

    let throttle = PolicySpec {
        rate_tokens_per_sec: cli.adaptive_throttle_rate_tokens_per_sec,
        burst_tokens: cli.adaptive_throttle_burst_tokens,
        enabled: true,
    };
    let status = Arc::new(Status::new(
        cli.adaptive_enabled,
        Watermarks::new(cli.adaptive_high_watermark_percent, cli.adaptive_low_watermark_percent),
        Duration::from_millis(cli.adaptive_tick_ms),
        throttle,
    ));

    let stats = Arc::new(EventStats::default());
    if cli.drop_event_log_enabled {
        threads.push(
            events::spawn(ring, stats.clone(), stop.clone())
                .map_err(io_err("start the drop event consumer"))?,
        );
    }

    let cpu = host::CpuWindow::spawn(Duration::from_millis(cli.cpu_window_ms), stop.clone())
        .map_err(io_err("start the CPU sampler"))?;
    let ctx = ApiContext {
        owner: owner.clone(),
        validation: cli.policy_validation_mode,
        token: token.clone(),
        observe: Observed {
            cpu,
            events: stats,
            adaptive: status.clone(),
            settings: Settings {
                iface: cli.iface.clone(),
                direction: cli.direction,
                flow_keys_mode: cli.flow_keys_mode,
                policy_validation_mode: cli.policy_validation_mode,
                policy_capacity: cli.policy_capacity,
                identity_capacity: cli.identity_capacity,
                drop_event_sample_n: cli.drop_event_sample_n,
                drop_event_log_enabled: cli.drop_event_log_enabled,
                metrics_dimensional_enabled: cli.metrics_dimensional_enabled,
                debug_top_tenants: cli.debug_top_tenants,
            },
            started,
        },
    };
    threads.extend(
        api::serve(cli.bind_addr, api_socket_path(cli), ctx, stop.clone())
            .map_err(|source| DaemonError::Listen { addr: cli.bind_addr, source })?,
    );
    info!("api listening on http://{}", cli.bind_addr);
    if !cli.bind_addr.ip().is_loopback() && token.is_none() {
        warn!(
            "UNAUTHENTICATED API: {} is reachable from the network and anyone who can connect \
             can change policies; set --api-token-file or bind to 127.0.0.1",
            cli.bind_addr
        );
    }

    let (adaptive_stop, adaptive_rx) = bounded::<()>(1);
    let adaptive_thread = if cli.adaptive_enabled {
        let sampler = ProcSampler::new().map_err(io_err("read /proc/stat"))?;
        Some(
            adaptive::spawn(owner.clone(), status, Box::new(sampler), adaptive_rx)
                .map_err(io_err("start the adaptive controller"))?,
        )
    } else {
        None
    };
    drop(owner);

    let signal = sys::wait_for_shutdown_signal().map_err(io_err("wait for signals"))?;
    info!("{signal} received, shutting down");
    drop(adaptive_stop);
    if let Some(t) = adaptive_thread {
        let _ = t.join();
    }
    Ok(threads)
}
