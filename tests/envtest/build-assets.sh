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
LOG_PREFIX="envtest-assets"
# shellcheck source=../tools/lib.sh
source "$here/../tools/lib.sh"
has_bins() { is_bin "$1/kube-apiserver" && is_bin "$1/etcd"; }

# 1. Caller-provided binaries win.
if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
    if has_bins "$KUBEBUILDER_ASSETS"; then
        (cd -- "$KUBEBUILDER_ASSETS" && pwd)
        exit 0
    fi
    log "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks executable kube-apiserver and etcd; using the build cache instead"
fi

# 2. The cache.
cache_root=$(cache_root)
dest="$cache_root/envtest/k8s-$K8S_VERSION-etcd-$ETCD_VERSION"
if has_bins "$dest"; then
    printf '%s\n' "$dest"
    exit 0
fi

# 3. The published envtest binaries, fetched the way controller-runtime's setup-envtest does
#    (its index and archives are on GitHub, with sha512 sums; a pinned setup-envtest from
#    tests/tools). The newest published patch of the same minor: the source build's exact patch
#    may not be published. Kept in setup-envtest's own store, so a second run needs no network.
#    Bounded: an unreachable GitHub costs ENVTEST_DOWNLOAD_TIMEOUT seconds, then step 4.
#    ENVTEST_INDEX_URL: a mirror of setup-envtest's index (same format).
published() {
    local setup_envtest dir minor=${K8S_VERSION%.*}
    if [[ -z "${SETUP_ENVTEST_BIN:-}" ]] && command -v setup-envtest >/dev/null 2>&1; then
        setup_envtest=$(command -v setup-envtest)
    else
        setup_envtest=$(bash "$here/../tools/build.sh" setup-envtest | tail -n1) || return 1
    fi
    log "trying the published envtest binaries ($minor.x, setup-envtest, at most ${ENVTEST_DOWNLOAD_TIMEOUT:-60}s)"
    local index=()
    [[ -n "${ENVTEST_INDEX_URL:-}" ]] && index=(--index "$ENVTEST_INDEX_URL")
    dir=$(timeout "${ENVTEST_DOWNLOAD_TIMEOUT:-60}" "$setup_envtest" use "$minor.x" "${index[@]}" \
        --bin-dir "$cache_root/envtest/setup-envtest" -p path </dev/null) || return 1
    has_bins "$dir" || return 1
    printf '%s\n' "$dir"
}
if dir=$(published); then
    log "using the published envtest binaries in $dir"
    printf '%s\n' "$dir"
    exit 0
fi
log "published envtest binaries unavailable; building kube-apiserver and etcd from source"

# 4. Build what is missing.
go_env "kube-apiserver and etcd"
grep -q "^require k8s.io/kubernetes v$K8S_VERSION\$\|^[[:space:]]k8s.io/kubernetes v$K8S_VERSION\( \|\$\)" "$here/kube-apiserver/go.mod" \
    || die "tests/envtest/kube-apiserver/go.mod does not pin k8s.io/kubernetes v$K8S_VERSION"
grep -q "^require go.etcd.io/etcd/server/v3 v$ETCD_VERSION\$\|^[[:space:]]go.etcd.io/etcd/server/v3 v$ETCD_VERSION\( \|\$\)" "$here/etcd/go.mod" \
    || die "tests/envtest/etcd/go.mod does not pin go.etcd.io/etcd/server/v3 v$ETCD_VERSION"
lock_dir "$dest"

total_start=$SECONDS
k8s_minor=${K8S_VERSION#*.}
k8s_minor=${k8s_minor%%.*}
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kube_ldflags+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=${K8S_VERSION%%.*} -X $pkg.gitMinor=$k8s_minor"
done

go_build etcd "$here/etcd" go.etcd.io/etcd/server/v3 "-s -w" "$dest" --version
go_build kube-apiserver "$here/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver "$kube_ldflags" "$dest" --version

has_bins "$dest" || die "binaries missing in $dest after the build"
log "done in $((SECONDS - total_start))s"
printf '%s\n' "$dest"
