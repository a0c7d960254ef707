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
LOG_PREFIX=gitops-check
# shellcheck source=../lib.sh
source "$here/../lib.sh"

# 1. A caller-provided binary wins.
if [[ -n "${IDV_GITOPS_CHECK:-}" ]]; then
    if is_bin "$IDV_GITOPS_CHECK"; then
        abspath "$IDV_GITOPS_CHECK"
        exit 0
    fi
    log "IDV_GITOPS_CHECK=$IDV_GITOPS_CHECK is not an executable file; using the build cache instead"
fi

# 2. The cache, keyed by the module's content (its sources are ours, not only versions).
[[ "$(pinned_version "$here/go.mod" sigs.k8s.io/cli-utils)" == "$CLI_UTILS_VERSION" ]] \
    || die "go.mod does not pin sigs.k8s.io/cli-utils $CLI_UTILS_VERSION"
[[ "$(pinned_version "$here/go.mod" github.com/yuin/gopher-lua)" == "$GOPHER_LUA_VERSION" ]] \
    || die "go.mod does not pin github.com/yuin/gopher-lua $GOPHER_LUA_VERSION"
key=$(cd -- "$here" && cat go.mod go.sum ./*.go | sha256sum | cut -c1-16)
dest="$(cache_root)/tools/gitops-check-$key"
if is_bin "$dest/gitops-check"; then
    printf '%s\n' "$dest/gitops-check"
    exit 0
fi

# 3. Build (cold: one to two minutes), one builder at a time.
go_env gitops-check
lock_dir "$dest"
go_build gitops-check "$here" . "-s -w" "$dest" selftest
printf '%s\n' "$dest/gitops-check"
