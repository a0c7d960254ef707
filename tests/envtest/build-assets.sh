#!/usr/bin/env bash
# Build (once, cached) the kube-apiserver and etcd binaries that the
# integration tests run, envtest style. See tests/envtest/README.md.
#
# stdout: the LAST line is the absolute folder holding `kube-apiserver` and
# `etcd` (callers do `ASSETS=$(make -s envtest-assets | tail -n1)`).
# stderr: everything else (progress, go's download messages, errors).
set -euo pipefail

# Pinned versions. When bumping, also update the wrapper modules
# (tests/envtest/kube-apiserver/go.mod, tests/envtest/etcd/go.mod); the
# script refuses to build if they disagree.
K8S_VERSION=1.36.3
ETCD_VERSION=3.6.16

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)

log() { printf 'envtest-assets: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
has_bins() { [[ -x "$1/kube-apiserver" && -f "$1/kube-apiserver" && -x "$1/etcd" && -f "$1/etcd" ]]; }
abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "$PWD" "$1" ;; esac; }

# 1. Caller-provided binaries win.
if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
    if has_bins "$KUBEBUILDER_ASSETS"; then
        (cd -- "$KUBEBUILDER_ASSETS" && pwd)
        exit 0
    fi
    log "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks executable kube-apiserver and etcd; using the build cache instead"
fi

# 2. The cache.
cache_root=$(abspath "${IDV_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:?HOME is not set}/.cache}/idv-token-operator}")
dest="$cache_root/envtest/k8s-$K8S_VERSION-etcd-$ETCD_VERSION"
if has_bins "$dest"; then
    printf '%s\n' "$dest"
    exit 0
fi

# 3. Build what is missing.
command -v go >/dev/null 2>&1 || die "go is not installed (needed to build kube-apiserver and etcd)"
grep -q "^require k8s.io/kubernetes v$K8S_VERSION\$\|^[[:space:]]k8s.io/kubernetes v$K8S_VERSION\( \|\$\)" "$here/kube-apiserver/go.mod" \
    || die "tests/envtest/kube-apiserver/go.mod does not pin k8s.io/kubernetes v$K8S_VERSION"
grep -q "^require go.etcd.io/etcd/server/v3 v$ETCD_VERSION\$\|^[[:space:]]go.etcd.io/etcd/server/v3 v$ETCD_VERSION\( \|\$\)" "$here/etcd/go.mod" \
    || die "tests/envtest/etcd/go.mod does not pin go.etcd.io/etcd/server/v3 v$ETCD_VERSION"

# Only the module proxy is reachable; the checksum database (sum.golang.org)
# is not, so it is off and the committed go.sum files pin every hash.
export GOTOOLCHAIN=local GOWORK=off GOSUMDB=off CGO_ENABLED=0
export GOFLAGS="-mod=mod -buildvcs=false"

mkdir -p -- "$dest"

# Serialise concurrent callers (parallel CI jobs); the winner builds, the others
# wait and then find the binaries in place.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$dest/.lock"
    if ! flock -n 9; then
        log "another build is running in $dest; waiting for it"
        flock 9
    fi
fi

tmpfiles=()
heartbeat=""
gobuild=""
cleanup() {
    [[ -n "$gobuild" ]] && kill "$gobuild" 2>/dev/null || true
    [[ -n "$heartbeat" ]] && kill "$heartbeat" 2>/dev/null || true
    ((${#tmpfiles[@]})) && rm -f -- "${tmpfiles[@]}" || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# build NAME MODULE_DIR PACKAGE LDFLAGS
build() {
    local name=$1 moddir=$2 pkg=$3 ldflags=$4
    if [[ -x "$dest/$name" && -f "$dest/$name" ]]; then
        log "$name already built"
        return
    fi
    local tmp="$dest/.$name.tmp.$$"
    tmpfiles+=("$tmp")
    local start=$SECONDS
    log "building $name from $pkg (cold: minutes; a heartbeat every 60s)"
    # sleep gets no inherited pipes, so a killed heartbeat never holds the
    # caller's $(...) open.
    ( while sleep 60 </dev/null >/dev/null 2>&1; do log "... still building $name ($((SECONDS - start))s)"; done ) &
    heartbeat=$!
    # In the background + wait, so that a TERM/INT to this script is handled at
    # once (the trap stops go) rather than after go finishes.
    (cd -- "$moddir" && exec go build -trimpath -ldflags "$ldflags" -o "$tmp" "$pkg") >&2 &
    gobuild=$!
    wait "$gobuild" || die "go build of $name failed (exit $?)"
    gobuild=""
    kill "$heartbeat" 2>/dev/null || true
    wait "$heartbeat" 2>/dev/null || true
    heartbeat=""
    "$tmp" --version >&2 || die "freshly built $name does not run"
    mv -f -- "$tmp" "$dest/$name"
    log "built $name in $((SECONDS - start))s"
}

total_start=$SECONDS
k8s_minor=${K8S_VERSION#*.}
k8s_minor=${k8s_minor%%.*}
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kube_ldflags+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=${K8S_VERSION%%.*} -X $pkg.gitMinor=$k8s_minor"
done

build etcd "$here/etcd" go.etcd.io/etcd/server/v3 "-s -w"
build kube-apiserver "$here/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver "$kube_ldflags"

has_bins "$dest" || die "binaries missing in $dest after the build"
log "done in $((SECONDS - total_start))s"
printf '%s\n' "$dest"
