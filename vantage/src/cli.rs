//! Command-line flags. Every flag has an environment variable; the flag wins.
//!
//! Values are checked here, so a bad value is a one-line error before
//! anything touches the kernel.

use std::{net::SocketAddr, path::PathBuf};

use clap::{builder::RangedU64ValueParser, Parser, ValueEnum};

use crate::tenant::TenantId;

/// Per-tenant admission control enforced in the Linux kernel.
///
/// A tc classifier on --iface finds the cgroup v2 (tenant) owning each
/// packet, picks the most specific rate-limit policy for its flow and admits
/// or drops it with a token bucket. Policies are managed over an HTTP API on
/// --bind-addr; metrics are served at /metrics.
#[derive(Debug, Clone, Parser, serde::Serialize)]
#[command(name = "vantage", version = crate::VERSION, max_term_width = 100)]
pub struct Cli {
    /// Network interface to attach the classifier to.
    #[arg(long, env = "VANTAGE_IFACE", default_value = "lo", value_parser = parse_iface)]
    pub iface: String,

    /// Traffic direction(s) to classify.
    #[arg(long, env = "VANTAGE_ATTACH_DIRECTION", value_enum, default_value_t = AttachDirection::Ingress)]
    pub direction: AttachDirection,

    /// How to attach: tcx links (kernel 6.6+), a netlink filter on a clsact
    /// qdisc, or auto (tcx where available).
    #[arg(long, env = "VANTAGE_ATTACH_MODE", value_enum, default_value_t = AttachMode::Auto)]
    pub attach_mode: AttachMode,

    /// Address the HTTP API listens on.
    #[arg(long, env = "VANTAGE_BIND_ADDR", default_value = "127.0.0.1:3000")]
    pub bind_addr: SocketAddr,

    /// Write 1 in N drops to the drop event ring buffer (per CPU).
    #[arg(long, env = "VANTAGE_DROP_EVENT_SAMPLE_N", default_value_t = 1,
          value_parser = RangedU64ValueParser::<u32>::new().range(1..=1_000_000))]
    pub drop_event_sample_n: u32,

    /// Run the drop event consumer and log each sampled drop.
    #[arg(long, env = "VANTAGE_DROP_EVENT_LOG_ENABLED", default_value_t = false,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true",
          value_parser = parse_bool)]
    pub drop_event_log_enabled: bool,

    /// CPU sampling window for /debug/snapshot, in milliseconds.
    #[arg(long, env = "VANTAGE_CPU_WINDOW_MS", default_value_t = 5000,
          value_parser = RangedU64ValueParser::<u64>::new().range(10..=3_600_000))]
    pub cpu_window_ms: u64,

    /// Export per-flow series (tenant, proto, port, method, path hash) in /metrics.
    #[arg(long, env = "VANTAGE_METRICS_DIMENSIONAL_ENABLED", default_value_t = false,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true",
          value_parser = parse_bool)]
    pub metrics_dimensional_enabled: bool,

    /// Flow keys: `live` uses each packet's protocol, port and HTTP request;
    /// `legacy` keys every packet by its tenant alone.
    #[arg(long, env = "VANTAGE_FLOW_KEYS_MODE", value_enum, default_value_t = FlowKeysMode::Live)]
    pub flow_keys_mode: FlowKeysMode,

    /// Number of top tenants by drops listed in /debug/snapshot.
    #[arg(long, env = "VANTAGE_DEBUG_TOP_TENANTS", default_value_t = 10,
          value_parser = RangedU64ValueParser::<usize>::new().range(0..=10_000))]
    pub debug_top_tenants: usize,

    /// `permissive` accepts partial HTTP selectors with warnings; `strict`
    /// rejects HTTP selectors without protocol and port.
    #[arg(long, env = "VANTAGE_POLICY_VALIDATION_MODE", value_enum,
          default_value_t = ValidationMode::Permissive)]
    pub policy_validation_mode: ValidationMode,

    /// Throttle non-essential tenants while the host is short of CPU or memory.
    #[arg(long, env = "VANTAGE_ADAPTIVE_ENABLED", default_value_t = false,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true",
          value_parser = parse_bool)]
    pub adaptive_enabled: bool,

    /// Enter throttling when CPU or memory use reaches this percentage
    /// (clamped to 2..=100).
    #[arg(long, env = "VANTAGE_ADAPTIVE_HIGH_WATERMARK_PERCENT", default_value_t = 90)]
    pub adaptive_high_watermark_percent: u32,

    /// Leave throttling when CPU and memory use are both at or below this
    /// percentage (kept below the high mark).
    #[arg(long, env = "VANTAGE_ADAPTIVE_LOW_WATERMARK_PERCENT", default_value_t = 80)]
    pub adaptive_low_watermark_percent: u32,

    /// Adaptive controller tick and sampling window, in milliseconds.
    #[arg(long, env = "VANTAGE_ADAPTIVE_TICK_MS", default_value_t = 1000,
          value_parser = RangedU64ValueParser::<u64>::new().range(10..=3_600_000))]
    pub adaptive_tick_ms: u64,

    /// Refill rate of the override written while throttling.
    #[arg(long, env = "VANTAGE_ADAPTIVE_THROTTLE_RATE_TOKENS_PER_SEC", default_value_t = 100,
          value_parser = RangedU64ValueParser::<u64>::new()
              .range(1..=vantage_common::bucket::MAX_RATE))]
    pub adaptive_throttle_rate_tokens_per_sec: u64,

    /// Burst of the override written while throttling.
    #[arg(long, env = "VANTAGE_ADAPTIVE_THROTTLE_BURST_TOKENS", default_value_t = 500,
          value_parser = RangedU64ValueParser::<u64>::new()
              .range(0..=vantage_common::bucket::MAX_BURST))]
    pub adaptive_throttle_burst_tokens: u64,

    /// A tenant exempt from adaptive throttling, `cg:<id>` or `<id>`;
    /// repeatable (the variable takes a comma-separated list).
    #[arg(long = "essential-tenant", env = "VANTAGE_ESSENTIAL_TENANTS", value_delimiter = ',')]
    pub essential_tenants: Vec<TenantId>,

    /// Where base policies and essential flags are kept across restarts.
    #[arg(long, env = "VANTAGE_STATE_FILE", default_value = "/var/lib/vantage/state.json")]
    pub state_file: PathBuf,

    /// Capacity of each policy map (base and override).
    #[arg(long, env = "VANTAGE_POLICY_CAPACITY",
          default_value_t = vantage_common::DEFAULT_POLICY_CAPACITY,
          value_parser = RangedU64ValueParser::<u32>::new().range(16..=4_194_304))]
    pub policy_capacity: u32,

    /// Capacity of the per-flow identity cache.
    #[arg(long, env = "VANTAGE_IDENTITY_CAPACITY",
          default_value_t = vantage_common::DEFAULT_IDENTITY_CAPACITY,
          value_parser = RangedU64ValueParser::<u32>::new().range(16..=16_777_216))]
    pub identity_capacity: u32,

    /// How long a cached flow-to-tenant answer is trusted, in milliseconds.
    #[arg(long, env = "VANTAGE_IDENTITY_TTL_MS", default_value_t = 1000,
          value_parser = RangedU64ValueParser::<u64>::new().range(1..=3_600_000))]
    pub identity_ttl_ms: u64,

    /// Bearer token required on every endpoint except /metrics. Prefer
    /// --api-token-file: a flag's value is visible in the process list.
    #[arg(
        long,
        env = "VANTAGE_API_TOKEN",
        hide_env_values = true,
        conflicts_with = "api_token_file"
    )]
    #[serde(skip)]
    pub api_token: Option<String>,

    /// File holding the API bearer token (first line), for systemd credentials.
    #[arg(long, env = "VANTAGE_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,

    /// Log filter (error, warn, info, debug, trace, or env_logger syntax).
    #[arg(long, env = "VANTAGE_LOG", default_value = "info")]
    pub log_level: String,

    /// Print the effective settings as JSON and exit (for scripts and tests).
    #[arg(long, hide = true)]
    pub print_config: bool,
}

/// Which direction(s) the classifier runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachDirection {
    /// Packets arriving on the interface.
    Ingress,
    /// Packets leaving through the interface.
    Egress,
    /// Both.
    Both,
}

/// How the classifier is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// tcx on kernels that have it (6.6+), netlink otherwise.
    Auto,
    /// A tcx link; fails on kernels older than 6.6.
    Tcx,
    /// A direct-action filter on a clsact qdisc.
    Netlink,
}

/// How flow keys are built from packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowKeysMode {
    /// `(cgroup, proto, dst_port, http_method, http_path_hash)` of the packet.
    Live,
    /// `(cgroup, 0, 0, 0, 0)` for every packet.
    Legacy,
}

/// How strictly policy selectors are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ValidationMode {
    /// Accept partial HTTP selectors, with warnings.
    Permissive,
    /// Reject HTTP selectors without protocol and port.
    Strict,
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(format!("expected true or false, got {s:?}")),
    }
}

fn parse_iface(s: &str) -> Result<String, String> {
    // IFNAMSIZ is 16 including the terminating NUL.
    if s.is_empty() || s.len() > 15 || s.contains(['/', ' ', '\0']) || s == "." || s == ".." {
        return Err(format!("{s:?} is not a valid interface name"));
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vantage").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_spec() {
        let cli = parse(&[]).expect("defaults parse");
        assert_eq!(cli.iface, "lo");
        assert_eq!(cli.direction, AttachDirection::Ingress);
        assert_eq!(cli.bind_addr.to_string(), "127.0.0.1:3000");
        assert_eq!(cli.drop_event_sample_n, 1);
        assert!(!cli.drop_event_log_enabled);
        assert_eq!(cli.cpu_window_ms, 5000);
        assert!(!cli.metrics_dimensional_enabled);
        assert_eq!(cli.flow_keys_mode, FlowKeysMode::Live);
        assert_eq!(cli.debug_top_tenants, 10);
        assert_eq!(cli.policy_validation_mode, ValidationMode::Permissive);
        assert!(!cli.adaptive_enabled);
        assert_eq!(cli.adaptive_high_watermark_percent, 90);
        assert_eq!(cli.adaptive_low_watermark_percent, 80);
        assert_eq!(cli.adaptive_tick_ms, 1000);
        assert_eq!(cli.adaptive_throttle_rate_tokens_per_sec, 100);
        assert_eq!(cli.adaptive_throttle_burst_tokens, 500);
        assert!(cli.essential_tenants.is_empty());
    }

    #[test]
    fn flags_parse() {
        let cli = parse(&[
            "--iface",
            "eth0",
            "--direction",
            "both",
            "--flow-keys-mode",
            "legacy",
            "--essential-tenant",
            "cg:12",
            "--essential-tenant",
            "34",
            "--drop-event-log-enabled",
            "--metrics-dimensional-enabled=true",
            "--policy-validation-mode",
            "strict",
        ])
        .expect("valid flags parse");
        assert_eq!(cli.iface, "eth0");
        assert_eq!(cli.direction, AttachDirection::Both);
        assert_eq!(cli.flow_keys_mode, FlowKeysMode::Legacy);
        assert_eq!(cli.essential_tenants, vec![TenantId(12), TenantId(34)]);
        assert!(cli.drop_event_log_enabled);
        assert!(cli.metrics_dimensional_enabled);
        assert_eq!(cli.policy_validation_mode, ValidationMode::Strict);
    }

    #[test]
    fn bad_values_are_rejected_with_the_flag_named() {
        let cases: &[&[&str]] = &[
            &["--direction", "sideways"],
            &["--bind-addr", "localhost"],
            &["--bind-addr", "127.0.0.1:99999"],
            &["--drop-event-sample-n", "0"],
            &["--drop-event-sample-n", "-3"],
            &["--flow-keys-mode", "fast"],
            &["--essential-tenant", "cg:abc"],
            &["--essential-tenant", "0"],
            &["--adaptive-tick-ms", "0"],
            &["--adaptive-throttle-rate-tokens-per-sec", "0"],
            &["--iface", "a/b"],
            &["--iface", "averyveryverylongname"],
            &["--drop-event-log-enabled=maybe"],
            &["--policy-validation-mode", "lax"],
        ];
        for args in cases {
            let err = parse(args).expect_err(&format!("{args:?} must fail"));
            let msg = err.to_string();
            let flag = args[0].split('=').next().unwrap_or_default();
            let value = args.last().copied().unwrap_or_default();
            assert!(msg.contains(flag) || msg.contains(value), "{args:?}: {msg}");
        }
    }
}
