#!/usr/bin/env bash
# Checks what `make packages` built: the static binary, the .deb and the .rpm,
# down to the service running under a real systemd in a container.
#
# Run as root from anywhere (`make package-test` builds first); arguments, if
# any, pick the checks whose names contain one of them, and VERBOSE=1 shows
# the output of passing checks too. It installs and
# purges the .deb on this host, installs the .rpm into a scratch root, and
# boots this host's own system in a throwaway container. Each check prints
# "ok" or "FAIL" with its output; the last line is "N passed, M failed", and
# the exit status is non-zero if anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=target/x86_64-unknown-linux-musl/release/vantage
UNIT=packaging/vantage.service
ENV_FILE=packaging/vantage.env
shopt -s nullglob
debs=(target/packages/vantage_*_amd64.deb)
rpms=(target/packages/vantage-*.x86_64.rpm)
shopt -u nullglob
if [ ! -x "$BIN" ] || [ ${#debs[@]} -ne 1 ] || [ ${#rpms[@]} -ne 1 ]; then
    echo "need $BIN and one .deb and one .rpm in target/packages: run make packages" >&2
    exit 1
fi
DEB=${debs[0]}
RPM=${rpms[0]}

# Files both packages install; each adds its environment file and the .deb
# its Debian-only documents.
COMMON_FILES="/usr/bin/vantage
/usr/lib/systemd/system/vantage.service
/usr/share/doc/vantage/LICENSE-APACHE
/usr/share/doc/vantage/LICENSE-GPL2
/usr/share/doc/vantage/LICENSE-MIT
/usr/share/doc/vantage/README.md
/usr/share/man/man8/vantage.8.gz"
DEB_FILES="$COMMON_FILES
/etc/default/vantage
/usr/share/doc/vantage/changelog.Debian.gz
/usr/share/doc/vantage/copyright
/usr/share/lintian/overrides/vantage"
RPM_FILES="$COMMON_FILES
/etc/sysconfig/vantage"

PICK=("$@")
passed=0
failed=0

# Runs one check in a subshell with errexit on (a bare `if check` would turn
# errexit off inside it), so any failing command fails the check. Being a
# subshell, a check may set globals and an EXIT trap to clean up after itself.
check() {
    local name=$1 log rc start pick
    shift
    if [ ${#PICK[@]} -gt 0 ]; then
        for pick in "${PICK[@]}"; do
            [[ $name == *"$pick"* ]] && break
            pick=""
        done
        [ -n "$pick" ] || return 0
    fi
    log=$(mktemp)
    start=$SECONDS
    set +e
    (set -e; "$@") >"$log" 2>&1
    rc=$?
    set -e
    if [ $rc -eq 0 ]; then
        passed=$((passed + 1))
        echo "ok   $name ($((SECONDS - start)) s)"
        if [ -n "${VERBOSE:-}" ]; then sed 's/^/     /' "$log"; fi
    else
        failed=$((failed + 1))
        echo "FAIL $name ($((SECONDS - start)) s)"
        tail -n 30 "$log" | sed 's/^/     /'
    fi
    rm -f "$log"
}

fail() {
    echo "$*"
    exit 1
}

# Compares two newline-separated lists, ignoring order.
same_lines() {
    diff <(sort <<<"$1") <(sort <<<"$2") || fail "lists differ (< want, > got)"
}

# The VANTAGE_* variables `--help` shows, as VAR=default (empty when the flag
# has no default). clap prints "[env: VAR=]" and then "[default: X]" under
# each flag.
help_env_defaults() {
    env -i "$BIN" --help | awk '
        /^[[:space:]]+-/ { last = "" }
        /\[env: VANTAGE_/ {
            match($0, /VANTAGE_[A-Z0-9_]+/)
            last = substr($0, RSTART, RLENGTH)
            vars[last] = ""
        }
        /\[default: / && last != "" {
            d = $0
            sub(/.*\[default: /, "", d)
            sub(/\]$/, "", d)
            vars[last] = d
            last = ""
        }
        END { for (v in vars) print v "=" vars[v] }'
}

deb_files() {
    dpkg-deb -c "$DEB" | awk '$1 !~ /^d/ { sub(/^\./, "", $6); print $6 }'
}

static_binary_is_statically_linked() {
    file "$BIN"
    file "$BIN" | grep -Eq 'static(-pie)? linked'
}

static_binary_runs_in_an_empty_chroot() {
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    cp "$BIN" "$root/vantage"
    [ "$(ls -A "$root")" = vantage ] || fail "chroot holds more than the binary"
    chroot "$root" /vantage --version | tee /dev/stderr | grep -Eq '^vantage [0-9]+\.[0-9]+\.[0-9]+ \(git '
    chroot "$root" /vantage --help | grep -q -- '--iface'
}

env_file_lists_every_variable_with_its_default() {
    local want got
    want=$(help_env_defaults)
    [ "$(wc -l <<<"$want")" -ge 20 ] || fail "parsed too few variables from --help: $want"
    # Every line is commented out: the defaults apply until the operator
    # chooses otherwise.
    if grep -nE '^[[:space:]]*VANTAGE_' "$ENV_FILE"; then
        fail "$ENV_FILE sets variables instead of listing them commented out"
    fi
    got=$(sed -nE 's/^#(VANTAGE_[A-Z0-9_]+=.*)$/\1/p' "$ENV_FILE")
    same_lines "$want" "$got"
}

man_page_documents_every_flag() {
    local page flags flag
    page=$(dpkg-deb --fsys-tarfile "$DEB" | tar -xO ./usr/share/man/man8/vantage.8.gz | zcat)
    grep -q '^\.TH vantage 8' <<<"$page" || fail "not a section 8 page"
    flags=$(env -i "$BIN" --help | grep -oE '^ +(-[a-zA-Z], )?--[a-z0-9-]+' | grep -oE -- '--[a-z0-9-]+')
    [ "$(wc -l <<<"$flags")" -ge 20 ] || fail "parsed too few flags from --help"
    # roff escapes each dash of a flag as "\-".
    for flag in $flags; do
        grep -qF -- "${flag//-/\\-}" <<<"$page" || fail "man page lacks $flag"
    done
    # The environment variables are there too.
    for var in $(help_env_defaults | cut -d= -f1); do
        grep -qF "$var" <<<"$page" || fail "man page lacks $var"
    done
}

deb_metadata_is_sane() {
    local version changelog_version
    dpkg-deb -I "$DEB"
    [ "$(dpkg-deb -f "$DEB" Package)" = vantage ] || fail "package name"
    [ "$(dpkg-deb -f "$DEB" Architecture)" = amd64 ] || fail "architecture"
    # Static binary: nothing to depend on (cargo-deb writes the field empty).
    [ -z "$(dpkg-deb -f "$DEB" Depends)$(dpkg-deb -f "$DEB" Pre-Depends)" ] ||
        fail "has dependencies"
    version=$(dpkg-deb -f "$DEB" Version)
    [ "${version%-*}" = "$(env -i "$BIN" --version | awk '{print $2}')" ] ||
        fail "package version $version is not the binary's"
    changelog_version=$(head -n 1 packaging/deb/changelog | sed -E 's/^vantage \(([^)]*)\).*/\1/')
    [ "$changelog_version" = "$version" ] ||
        fail "packaging/deb/changelog is at $changelog_version, the package at $version"
    dpkg-deb --fsys-tarfile "$DEB" | tar -xO ./usr/share/doc/vantage/copyright |
        grep -q '^License: Apache-2.0$' || fail "copyright lacks the Apache-2.0 license"
}

deb_holds_the_files_and_the_conffile() {
    same_lines "$DEB_FILES" "$(deb_files)"
    [ "$(dpkg-deb --ctrl-tarfile "$DEB" | tar -xO ./conffiles)" = /etc/default/vantage ] ||
        fail "conffiles is not exactly /etc/default/vantage"
    # The packaged files are the ones built here, byte for byte.
    cmp <(dpkg-deb --fsys-tarfile "$DEB" | tar -xO ./usr/bin/vantage) "$BIN"
    cmp <(dpkg-deb --fsys-tarfile "$DEB" | tar -xO ./usr/lib/systemd/system/vantage.service) "$UNIT"
    cmp <(dpkg-deb --fsys-tarfile "$DEB" | tar -xO ./etc/default/vantage) "$ENV_FILE"
}

deb_passes_lintian() {
    lintian --fail-on error "$DEB"
}

rpm_metadata_is_sane() {
    local requires
    rpm -qpi "$RPM"
    [ "$(rpm -qp --qf '%{NAME} %{ARCH}' "$RPM")" = "vantage x86_64" ] || fail "name or architecture"
    rpm -qp --qf '%{LICENSE}' "$RPM" | grep -q 'Apache-2.0 AND (MIT OR GPL-2.0' || fail "license"
    # Only /bin/sh (for the scriptlets) and rpmlib features: no libraries.
    requires=$(rpm -qpR "$RPM")
    if grep -vE '^(/bin/sh|rpmlib\(.*|config\(vantage\).*)$' <<<"$requires"; then
        fail "unexpected requirements"
    fi
}

rpm_holds_the_files_and_the_config_file() {
    same_lines "$RPM_FILES" "$(rpm -qpl "$RPM")"
    [ "$(rpm -qpc "$RPM")" = /etc/sysconfig/vantage ] || fail "config files"
    # %config(noreplace): the flags of that file include c and n.
    rpm -qp --qf '[%{FILENAMES} %{FILEFLAGS:fflags}\n]' "$RPM" |
        grep -Eq '^/etc/sysconfig/vantage [a-z]*c[a-z]*n' || fail "not %config(noreplace)"
}

# Installs the .rpm into a scratch root with its own database. Scriptlets are
# skipped: the scratch root has no /bin/sh (and install has none anyway).
rpm_installs_into_a_root_and_erases() {
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    rpm --root "$root" --initdb
    rpm -i --nodeps --noscripts --root "$root" "$RPM"
    same_lines "$RPM_FILES" "$(rpm --root "$root" -ql vantage)"
    cmp "$root/usr/bin/vantage" "$BIN"
    cmp "$root/usr/lib/systemd/system/vantage.service" "$UNIT"
    cmp "$root/etc/sysconfig/vantage" "$ENV_FILE"
    [ "$(stat -c %a "$root/etc/sysconfig/vantage")" = 600 ] || fail "env file mode"
    # The root holds nothing but the package: the static binary runs there.
    chroot "$root" /usr/bin/vantage --version
    rpm -e --noscripts --root "$root" vantage
    [ ! -e "$root/usr/bin/vantage" ] || fail "erase left /usr/bin/vantage"
}

# On this host systemd is usually not PID 1, so the maintainer scripts skip
# their systemd steps; the container check below covers a systemd host.
deb_installs_and_purges_on_this_host() {
    ps -o comm= -p 1
    if dpkg-query -W -f='${Status}' vantage 2>/dev/null | grep -q 'ok installed'; then
        fail "vantage is already installed here; purge it first (dpkg --purge vantage)"
    fi
    trap 'dpkg --purge vantage >/dev/null 2>&1 || true' EXIT
    dpkg -i "$DEB"
    /usr/bin/vantage --version
    [ -f /usr/share/man/man8/vantage.8.gz ] || fail "no man page"
    man -w vantage | grep -q '/usr/share/man/man8/vantage.8.gz' || fail "man does not find vantage(8)"
    [ "$(stat -c %a /etc/default/vantage)" = 600 ] || fail "env file mode"
    systemd-analyze verify /usr/lib/systemd/system/vantage.service
    dpkg --purge vantage
    for path in /usr/bin/vantage /usr/lib/systemd/system/vantage.service /etc/default/vantage; do
        [ ! -e "$path" ] || fail "purge left $path"
    done
}

# Stops the container of service_runs_under_systemd and removes its scratch
# root.
stop_container() {
    if [ -n "$nspawn" ]; then
        t1=$SECONDS
        kill "$nspawn" 2>/dev/null || true
        for _ in $(seq 30); do kill -0 "$nspawn" 2>/dev/null || break; sleep 1; done
        kill -9 "$nspawn" 2>/dev/null || true
        echo "container stopped in $((SECONDS - t1)) s"
    fi
    umount "$scratch/root" 2>/dev/null || true
    umount "$scratch" 2>/dev/null || true
    rmdir "$scratch"
}

# Boots this host's own system (an overlay of / on tmpfs, so nothing sticks)
# with systemd-nspawn in a private network, installs the .deb there and drives
# the service: not started on install, starts with only its three
# capabilities, serves, keeps its state, stops cleanly and is stopped by purge.
service_runs_under_systemd() {
    local ct main caps
    # scratch and nspawn are not local: the EXIT trap runs after this function
    # has returned.
    scratch=$(mktemp -d /run/vantage-pkgtest.XXXXXX)
    nspawn=""
    trap stop_container EXIT
    mount -t tmpfs tmpfs "$scratch"
    mkdir "$scratch/upper" "$scratch/work" "$scratch/root"
    mount -t overlay overlay -o "lowerdir=/,upperdir=$scratch/upper,workdir=$scratch/work" \
        "$scratch/root"
    cp "$DEB" "$scratch/root/root/vantage.deb"
    # A machine id of its own, so its journal is not mistaken for the host's.
    rm -f "$scratch/root/etc/machine-id"
    # Build hosts often carry a policy-rc.d that forbids maintainer scripts to
    # start or stop services; the container stands for a real host, which has
    # none.
    rm -f "$scratch/root/usr/sbin/policy-rc.d"

    # nspawn's own seccomp filter refuses bpf(2) to the whole container; it is
    # turned off so that the unit's SystemCallFilter is what gets tested.
    # --register=no and --keep-unit: the host has no systemd to ask for a scope.
    SYSTEMD_SECCOMP=0 systemd-nspawn --quiet --directory="$scratch/root" --boot \
        --private-network --capability=all --register=no --keep-unit --link-journal=no \
        --console=passive --machine="vantage-pkgtest-$$" >"$scratch/nspawn.log" 2>&1 &
    nspawn=$!

    # Wait for the container's init, then for its boot to finish.
    t0=$SECONDS
    ct=""
    for _ in $(seq 60); do
        ct=$(pgrep -P "$nspawn" -x systemd || true)
        [ -n "$ct" ] && break
        sleep 1
    done
    [ -n "$ct" ] || { cat "$scratch/nspawn.log"; fail "container did not start"; }
    in_ct() { nsenter -t "$ct" -a "$@"; }
    for _ in $(seq 120); do
        case $(in_ct systemctl is-system-running 2>/dev/null || true) in
            running | degraded) break ;;
        esac
        sleep 1
    done

    echo "container booted in $((SECONDS - t0)) s: $(in_ct systemctl is-system-running || true)"
    # The unit wants network-online.target; with no configured link in the
    # container, systemd-networkd-wait-online would hold it for its 2-minute
    # timeout.
    in_ct systemctl mask --now systemd-networkd-wait-online.service

    in_ct dpkg -i /root/vantage.deb
    [ "$(in_ct systemctl is-enabled vantage || true)" = disabled ] || fail "enabled on install"
    [ "$(in_ct systemctl is-active vantage || true)" = inactive ] || fail "started on install"

    in_ct systemctl enable --now vantage
    for _ in $(seq 30); do
        in_ct curl -sf -o /dev/null 127.0.0.1:3000/metrics && break
        sleep 1
    done
    in_ct curl -sf 127.0.0.1:3000/metrics | grep -q '^vantage_' || {
        in_ct journalctl -u vantage --no-pager | tail -n 20
        fail "no metrics from the service"
    }

    # It runs as its dynamic user with exactly CAP_NET_ADMIN (12), CAP_PERFMON
    # (38) and CAP_BPF (39).
    main=$(in_ct systemctl show -p MainPID --value vantage)
    [ "$(in_ct ps -o user= -p "$main")" != root ] || fail "runs as root"
    caps=$(in_ct grep '^CapEff:' "/proc/$main/status" | cut -f 2)
    [ "$caps" = 000000c000001000 ] || fail "effective capabilities $caps"
    in_ct systemd-analyze security vantage --no-pager | tail -n 1

    # A policy survives a restart: the state directory is writable.
    in_ct curl -sf -X PUT -H 'content-type: application/json' \
        -d '{"rate_tokens_per_sec": 10, "burst_tokens": 20, "enabled": true}' \
        127.0.0.1:3000/policy/cg:1 >/dev/null
    in_ct systemctl restart vantage
    for _ in $(seq 30); do
        in_ct curl -sf -o /dev/null 127.0.0.1:3000/metrics && break
        sleep 1
    done
    in_ct curl -sf 127.0.0.1:3000/policy/cg:1/resolve | grep -q '"level": 10' ||
        fail "policy lost across a restart"

    # SIGTERM: vantage detaches and exits 0, which systemd records as success.
    in_ct systemctl stop vantage
    [ "$(in_ct systemctl show -p Result --value vantage)" = success ] || fail "stop result"
    [ "$(in_ct systemctl show -p ExecMainStatus --value vantage)" = 0 ] || fail "exit status"

    # Purging a running service stops it first.
    in_ct systemctl start vantage
    in_ct dpkg --purge vantage
    [ "$(in_ct systemctl is-active vantage || true)" != active ] || fail "still running after purge"
    if in_ct test -e /usr/bin/vantage; then fail "purge left /usr/bin/vantage"; fi
    echo "service checks done after $((SECONDS - t0)) s"
}

check "static binary is statically linked" static_binary_is_statically_linked
check "static binary runs in an empty chroot" static_binary_runs_in_an_empty_chroot
check "env file lists every variable of --help with its default" \
    env_file_lists_every_variable_with_its_default
check "man page documents every flag and variable" man_page_documents_every_flag
check "deb metadata is sane" deb_metadata_is_sane
check "deb holds the files and the conffile" deb_holds_the_files_and_the_conffile
check "deb passes lintian" deb_passes_lintian
check "rpm metadata is sane" rpm_metadata_is_sane
check "rpm holds the files and the config file" rpm_holds_the_files_and_the_config_file
check "rpm installs into a root and erases" rpm_installs_into_a_root_and_erases
check "deb installs and purges on this host" deb_installs_and_purges_on_this_host
check "service runs under systemd with three capabilities" service_runs_under_systemd

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
