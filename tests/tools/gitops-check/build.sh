#!/usr/bin/env bash
# Build (once, cached) gitops-check: cli-utils' kstatus and Argo CD's Lua runtime (gopher-lua)
# for the GitOps scenarios (tests/operator/gitops.rs). See README.md next to this file.
#
# stdout: the LAST line is the absolute path of the binary.
# stderr: everything else (progress, go's download messages, errors).
# IDV_GITOPS_CHECK=/path/to/gitops-check skips the build (a binary built from this module).
set -euo pipefail

# Pinned versions: the ones go.mod requires (the script refuses to build if they disagree).
CLI_UTILS_VERSION=v0.37.2
GOPHER_LUA_VERSION=v1.1.2

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)

log() { printf 'gitops-check: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "$PWD" "$1" ;; esac; }

# 1. A caller-provided binary wins.
if [[ -n "${IDV_GITOPS_CHECK:-}" ]]; then
    if [[ -x "$IDV_GITOPS_CHECK" && -f "$IDV_GITOPS_CHECK" ]]; then
        abspath "$IDV_GITOPS_CHECK"
        exit 0
    fi
    log "IDV_GITOPS_CHECK=$IDV_GITOPS_CHECK is not an executable file; using the build cache instead"
fi

# 2. The cache, keyed by the module's content (its sources are ours, not only versions).
grep -q "^[[:space:]]sigs.k8s.io/cli-utils $CLI_UTILS_VERSION\$" "$here/go.mod" \
    || die "go.mod does not pin sigs.k8s.io/cli-utils $CLI_UTILS_VERSION"
grep -q "^[[:space:]]github.com/yuin/gopher-lua $GOPHER_LUA_VERSION\$" "$here/go.mod" \
    || die "go.mod does not pin github.com/yuin/gopher-lua $GOPHER_LUA_VERSION"
key=$(cd -- "$here" && cat go.mod go.sum ./*.go | sha256sum | cut -c1-16)
cache_root=$(abspath "${IDV_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:?HOME is not set}/.cache}/idv-token-operator}")
dest="$cache_root/tools/gitops-check-$key"
if [[ -x "$dest/gitops-check" ]]; then
    printf '%s\n' "$dest/gitops-check"
    exit 0
fi

# 3. Build. Only the module proxy is reachable, not sum.golang.org: the committed go.sum pins
# every hash.
command -v go >/dev/null 2>&1 || die "go is not installed (needed to build gitops-check)"
export GOTOOLCHAIN=local GOWORK=off GOSUMDB=off CGO_ENABLED=0
export GOFLAGS="-mod=mod -buildvcs=false"
mkdir -p -- "$dest"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$dest/.lock"
    if ! flock -n 9; then
        log "another build is running in $dest; waiting for it"
        flock 9
    fi
    if [[ -x "$dest/gitops-check" ]]; then
        printf '%s\n' "$dest/gitops-check"
        exit 0
    fi
fi

tmp="$dest/.gitops-check.tmp.$$"
heartbeat=""
gobuild=""
cleanup() {
    [[ -n "$gobuild" ]] && kill "$gobuild" 2>/dev/null || true
    [[ -n "$heartbeat" ]] && kill "$heartbeat" 2>/dev/null || true
    rm -f -- "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start=$SECONDS
log "building with cli-utils $CLI_UTILS_VERSION and gopher-lua $GOPHER_LUA_VERSION (cold: one to two minutes; a heartbeat every 30s)"
( while sleep 30 </dev/null >/dev/null 2>&1; do log "... still building ($((SECONDS - start))s)"; done ) &
heartbeat=$!
(cd -- "$here" && exec go build -trimpath -ldflags "-s -w" -o "$tmp" .) >&2 &
gobuild=$!
wait "$gobuild" || die "go build failed (exit $?)"
gobuild=""
kill "$heartbeat" 2>/dev/null || true
wait "$heartbeat" 2>/dev/null || true
heartbeat=""
mv -f -- "$tmp" "$dest/gitops-check"
log "built in $((SECONDS - start))s: $dest/gitops-check"
printf '%s\n' "$dest/gitops-check"
