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

# Debian packages: the LLVM that bpf-linker links against, and the tools the
# tests and benchmarks drive.
APT_PACKAGES := build-essential pkg-config llvm-22-dev libpolly-22-dev libzstd-dev \
	iproute2 nftables iperf3 wrk prometheus bpftool rpm lintian file libcap2-bin \
	util-linux curl jq systemd

.PHONY: all deps deps-apt deps-rust deps-bpf-linker build release run test check fmt clippy clean

all: build

## deps: install every prerequisite (idempotent; safe to re-run)
deps: deps-apt deps-rust deps-bpf-linker

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

fmt:
	$(CARGO) fmt --all -- --check

clippy: deps
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

## check: the quality gate — formatting, lints, build, tests
check: fmt clippy build test

clean:
	$(CARGO) clean
	rm -rf vantage-ebpf/target
