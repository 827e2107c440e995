# vantage — build, run and test. Run as root on Debian 12 (see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

LLVM_PREFIX ?= /usr/lib/llvm-22
export LLVM_PREFIX
export PATH := $(HOME)/.cargo/bin:$(LLVM_PREFIX)/bin:$(PATH)

CARGO ?= cargo
IFACE ?= lo
ARGS ?=
BPF_LINKER_VERSION := 0.13.0
MUSL_TARGET := x86_64-unknown-linux-musl
CARGO_DEB_VERSION := 3.8.0
CARGO_GENERATE_RPM_VERSION := 0.21.1
STATIC_BIN := target/$(MUSL_TARGET)/release/vantage
# build.rs renders the man page into its OUT_DIR; the packages take it from here.
MAN_PAGE := target/man/vantage.8.gz
PACKAGE_DIR := target/packages

# Debian packages: the LLVM that bpf-linker links against, and the tools the
# tests and benchmarks drive.
APT_PACKAGES := build-essential pkg-config llvm-22-dev libpolly-22-dev libzstd-dev \
	iproute2 nftables iperf3 wrk prometheus bpftool rpm lintian file libcap2-bin \
	util-linux curl jq systemd dpkg-dev man-db systemd-container

.PHONY: all deps deps-apt deps-rust deps-bpf-linker deps-packaging build release run test check \
	fmt clippy clean static man deb rpm packages package-test

all: build

## deps: install every prerequisite (idempotent; safe to re-run)
deps: deps-apt deps-rust deps-bpf-linker deps-packaging

deps-apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

deps-rust:
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@rustup component list --toolchain nightly --installed | grep -q '^rust-src' || rustup component add rust-src --toolchain nightly
	@rustup target list --installed | grep -q '^$(MUSL_TARGET)$$' || rustup target add $(MUSL_TARGET)
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy
	@rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

deps-bpf-linker: deps-apt
	@if ! bpf-linker --version 2>/dev/null | grep -q '$(BPF_LINKER_VERSION)'; then \
	  echo "building bpf-linker $(BPF_LINKER_VERSION) against LLVM 22 (a few minutes)"; \
	  $(CARGO) install bpf-linker --version $(BPF_LINKER_VERSION) --locked --force \
	    --no-default-features --features llvm-22; \
	fi

# The .deb and .rpm builders, each built from source once (cargo-generate-rpm
# takes about ten minutes on two cores).
deps-packaging:
	@command -v cargo-deb >/dev/null || $(CARGO) install --locked cargo-deb --version $(CARGO_DEB_VERSION)
	@command -v cargo-generate-rpm >/dev/null || \
	  $(CARGO) install --locked cargo-generate-rpm --version $(CARGO_GENERATE_RPM_VERSION)

## build: debug build of the workspace (the eBPF object is built by vantage/build.rs)
build: deps
	$(CARGO) build --locked

release: deps
	$(CARGO) build --locked --release

## run: build and run the daemon in the foreground on $(IFACE) (Ctrl-C stops it)
run: release
	./target/release/vantage --iface $(IFACE) $(ARGS)

## test: unit, kernel and end-to-end tests (needs root)
test: deps
	$(CARGO) test --locked --workspace -- --test-threads=2

## fuzz: the packet fuzzer at length (VANTAGE_FUZZ_PACKETS, default 200000; VANTAGE_FUZZ_SEED to vary)
.PHONY: fuzz
VANTAGE_FUZZ_PACKETS ?= 200000
fuzz: deps
	VANTAGE_FUZZ_PACKETS=$(VANTAGE_FUZZ_PACKETS) $(CARGO) test --locked -p vantage --test fuzz -- --nocapture

## bench: the benchmark suite against the static binary (needs root; about 5 minutes)
# Tables on stdout, target/bench/summary.json and summary.md (see BENCHMARKS.md).
# The daemon measured is the static binary; the bench harness itself is built
# without LTO, which saves minutes and changes none of the figures the issue asks for.
.PHONY: bench
bench: deps static
	VANTAGE_BENCH_BINARY=$(CURDIR)/$(STATIC_BIN) CARGO_PROFILE_BENCH_LTO=off \
	  CARGO_PROFILE_BENCH_CODEGEN_UNITS=16 $(CARGO) bench --locked -p vantage --bench vantage

## static: the daemon as one static musl binary, eBPF object embedded ($(STATIC_BIN))
# Symbols are stripped (the profile keeps them) because lintian rejects an
# unstripped binary, and the packages hold exactly this file.
static: deps
	CARGO_PROFILE_RELEASE_STRIP=symbols $(CARGO) build --locked --release --target $(MUSL_TARGET) -p vantage
	@file $(STATIC_BIN) | grep -Eq 'static(-pie)? linked' || { file $(STATIC_BIN); exit 1; }
	@echo "$(STATIC_BIN): $$(stat -c %s $(STATIC_BIN)) bytes, statically linked"

# The newest rendering of vantage(8), compressed as Debian policy wants it.
# Several build directories can exist (one per feature set); the newest is
# the one the current build wrote.
man: static
	@page=$$(ls -t target/$(MUSL_TARGET)/release/build/vantage-*/out/vantage.8 | head -n 1); \
	mkdir -p $(dir $(MAN_PAGE)); gzip -9n < "$$page" > $(MAN_PAGE)

## deb, rpm: packages of the static binary in $(PACKAGE_DIR) (see packaging/)
deb: static man
	mkdir -p $(PACKAGE_DIR); rm -f $(PACKAGE_DIR)/vantage_*.deb
	$(CARGO) deb -p vantage --target $(MUSL_TARGET) --no-build --no-strip -o $(PACKAGE_DIR)/

rpm: static man
	mkdir -p $(PACKAGE_DIR); rm -f $(PACKAGE_DIR)/vantage-*.rpm
	$(CARGO) generate-rpm -p vantage --target $(MUSL_TARGET) -o $(PACKAGE_DIR)/

packages: deb rpm

## package-test: check the static binary and both packages (installs and purges the .deb)
package-test: packages
	packaging/test.sh

fmt:
	$(CARGO) fmt --all -- --check

clippy: deps
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

## check: the quality gate — formatting, lints, build, tests
check: fmt clippy build test

clean:
	$(CARGO) clean
	rm -rf vantage-ebpf/target
