//! Compiles the eBPF classifier (`../vantage-ebpf`) and records the git
//! revision, so the daemon can embed both, and writes the `vantage(8)` man
//! page to `$OUT_DIR/vantage.8`.
//!
//! The man page is rendered from the same clap definition the daemon parses
//! its flags with (`src/cli.rs`, included below), so it cannot drift from
//! `--help`. The packages pick it up from `OUT_DIR` (see the Makefile).
//!
//! The eBPF crate needs the nightly toolchain named in its own
//! `rust-toolchain.toml`, the `bpfel-unknown-none` target built from
//! `rust-src`, and `bpf-linker` on `PATH`; `make deps` installs all three.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use clap::CommandFactory;

// The CLI definition, compiled into the build script. `cli.rs` names
// `crate::tenant::TenantId` and `crate::VERSION`, so both exist here too.
#[path = "src/cli.rs"]
mod cli;
#[path = "src/tenant.rs"]
mod tenant;

/// The version shown in the man page footer (the git revision is left out so
/// the page does not change with every commit).
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let ebpf = manifest.join("../vantage-ebpf");

    for path in ["src", "Cargo.toml", "Cargo.lock", "rust-toolchain.toml", ".cargo"] {
        println!("cargo:rerun-if-changed={}", ebpf.join(path).display());
    }
    println!("cargo:rerun-if-changed={}", manifest.join("../vantage-common/src").display());
    println!("cargo:rerun-if-env-changed=VANTAGE_EBPF_TOOLCHAIN");
    for path in ["src/cli.rs", "src/tenant.rs"] {
        println!("cargo:rerun-if-changed={}", manifest.join(path).display());
    }

    build_ebpf(&ebpf, &out);
    record_git_revision(&manifest);
    write_man_page(&out);
}

fn build_ebpf(ebpf: &Path, out: &Path) {
    let toolchain = env::var("VANTAGE_EBPF_TOOLCHAIN").unwrap_or_else(|_| "nightly".into());
    let target_dir = out.join("ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.current_dir(ebpf)
        .args(["run", &toolchain, "cargo", "build", "--release", "--locked", "--target-dir"])
        .arg(&target_dir);
    // The outer build's settings (host target, host RUSTFLAGS, the stable
    // toolchain, a musl target) must not leak into the eBPF build.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        let outer = key.starts_with("CARGO_") && key != "CARGO_HOME"
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTUP_TOOLCHAIN")
            || key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS";
        if outer {
            cmd.env_remove(key.as_ref());
        }
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("run `rustup run {toolchain} cargo build` for vantage-ebpf: {e} (run `make deps`)")
    });
    assert!(status.success(), "building vantage-ebpf failed (run `make deps` first): {status}");

    let object = target_dir.join("bpfel-unknown-none/release/vantage");
    std::fs::copy(&object, out.join("vantage.bpf.o"))
        .unwrap_or_else(|e| panic!("copy {}: {e}", object.display()));
}

fn record_git_revision(manifest: &Path) {
    let rev = Command::new("git")
        .current_dir(manifest)
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let dirty = Command::new("git")
        .current_dir(manifest)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| o.status.success() && !o.stdout.is_empty());
    let rev = if dirty { format!("{rev}-dirty") } else { rev };
    println!("cargo:rustc-env=VANTAGE_GIT_REVISION={rev}");
    let head = manifest.join("../.git/HEAD");
    if head.exists() {
        println!("cargo:rerun-if-changed={}", head.display());
        println!("cargo:rerun-if-changed={}", manifest.join("../.git/index").display());
    }
}

/// Renders `vantage(8)` from the clap definition, plus a FILES section for
/// the paths the packages install.
fn write_man_page(out: &Path) {
    let cmd = cli::Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd)
        .section("8")
        .manual("System Administration")
        .render(&mut page)
        .expect("rendering into a Vec cannot fail");
    page.extend_from_slice(FILES_SECTION.as_bytes());
    let path = out.join("vantage.8");
    std::fs::write(&path, page).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Paths an operator of the packaged service needs (roff).
const FILES_SECTION: &str = r#".SH FILES
.TP
\fI/etc/default/vantage\fR (.deb), \fI/etc/sysconfig/vantage\fR (.rpm)
Environment file read by \fBvantage.service\fR: one VANTAGE_* variable per
flag, all commented out with their defaults.
.TP
\fI/var/lib/vantage/state.json\fR
Default state file: base policies and essential flags kept across restarts.
.SH SEE ALSO
\fBsystemctl\fR(1), \fBtc\fR(8)
"#;
