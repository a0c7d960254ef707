#!/usr/bin/env bash
# Build (once, cached) External Secrets Operator for `BENCH_PEER=eso make bench`, from the Go
# module proxy, like tests/envtest/build-assets.sh builds the control plane.
#
# stdout: the LAST line is the folder holding `external-secrets` (the controller binary) and
# `crds.yaml` (ESO's CRD bundle of the same release).
# stderr: progress (a heartbeat every 60 s on a cold build) and errors.
# BENCH_ESO_DIR: a folder that already has both files (nothing is built then).
set -euo pipefail

ESO_VERSION=0.16.2

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
log() { printf 'build-eso: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
has_files() { [[ -x "$1/external-secrets" && -f "$1/external-secrets" && -f "$1/crds.yaml" ]]; }
abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "$PWD" "$1" ;; esac; }

if [[ -n "${BENCH_ESO_DIR:-}" ]]; then
    has_files "$BENCH_ESO_DIR" || die "BENCH_ESO_DIR=$BENCH_ESO_DIR lacks external-secrets and crds.yaml"
    (cd -- "$BENCH_ESO_DIR" && pwd)
    exit 0
fi

cache_root=$(abspath "${IDV_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:?HOME is not set}/.cache}/idv-token-operator}")
dest="$cache_root/bench/eso-$ESO_VERSION"
if has_files "$dest"; then
    printf '%s\n' "$dest"
    exit 0
fi

command -v go >/dev/null 2>&1 || die "go is not installed (needed to build External Secrets Operator)"
grep -q "^require github.com/external-secrets/external-secrets v$ESO_VERSION\$\|^[[:space:]]github.com/external-secrets/external-secrets v$ESO_VERSION\( \|\$\)" "$here/eso/go.mod" \
    || die "benches/peers/eso/go.mod does not pin github.com/external-secrets/external-secrets v$ESO_VERSION"

# Only the module proxy is reachable; the checksum database is not, so it is off and the
# committed go.sum pins every hash.
export GOTOOLCHAIN=local GOWORK=off GOSUMDB=off CGO_ENABLED=0
export GOFLAGS="-mod=mod -buildvcs=false"

mkdir -p -- "$dest"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$dest/.lock"
    if ! flock -n 9; then
        log "another build is running in $dest; waiting for it"
        flock 9
    fi
fi
has_files "$dest" && { printf '%s\n' "$dest"; exit 0; }

tmp="$dest/.external-secrets.tmp.$$"
heartbeat="" gobuild=""
cleanup() {
    [[ -n "$gobuild" ]] && kill "$gobuild" 2>/dev/null || true
    [[ -n "$heartbeat" ]] && kill "$heartbeat" 2>/dev/null || true
    rm -f -- "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start=$SECONDS
log "building external-secrets v$ESO_VERSION (cold: 10-30 minutes on 2 cores; a heartbeat every 60s)"
( while sleep 60 </dev/null >/dev/null 2>&1; do log "... still building external-secrets ($((SECONDS - start))s)"; done ) &
heartbeat=$!
(cd -- "$here/eso" && exec go build -trimpath -ldflags "-s -w" -o "$tmp" github.com/external-secrets/external-secrets) >&2 &
gobuild=$!
wait "$gobuild" || die "go build of external-secrets failed (exit $?)"
gobuild=""
kill "$heartbeat" 2>/dev/null || true
wait "$heartbeat" 2>/dev/null || true
heartbeat=""
"$tmp" --help >/dev/null 2>&1 || die "freshly built external-secrets does not run"

# The CRDs of the same release, from the module the binary was built from.
moddir=$(cd -- "$here/eso" && go list -m -f '{{.Dir}}' github.com/external-secrets/external-secrets)
[[ -f "$moddir/deploy/crds/bundle.yaml" ]] || die "no deploy/crds/bundle.yaml in $moddir"
cp -- "$moddir/deploy/crds/bundle.yaml" "$dest/crds.yaml"
mv -f -- "$tmp" "$dest/external-secrets"
log "built external-secrets in $((SECONDS - start))s"
printf '%s\n' "$dest"
