#!/usr/bin/env bash
# Build (once, cached) an ecosystem tool the tests run for real: helm, actionlint or
# setup-envtest, each pinned by its wrapper module here (go.mod + go.sum). See
# tests/tools/README.md.
#
#   tests/tools/build.sh helm      # stdout: the LAST line is the absolute path of the binary
#
# stderr: everything else (progress, go's download messages, errors).
# HELM_BIN / ACTIONLINT_BIN / SETUP_ENVTEST_BIN naming an executable skip the build.
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
LOG_PREFIX="tools"
# shellcheck source=lib.sh
source "$here/lib.sh"

(($# == 1)) || die "usage: $0 helm|actionlint|setup-envtest"
name=$1
case "$name" in
    helm)
        module=helm.sh/helm/v3
        pkg=helm.sh/helm/v3/cmd/helm
        override=HELM_BIN
        ;;
    actionlint)
        module=github.com/rhysd/actionlint
        pkg=github.com/rhysd/actionlint/cmd/actionlint
        override=ACTIONLINT_BIN
        ;;
    setup-envtest)
        module=sigs.k8s.io/controller-runtime/tools/setup-envtest
        pkg=$module
        override=SETUP_ENVTEST_BIN
        ;;
    *) die "unknown tool $name (helm, actionlint, setup-envtest)" ;;
esac
LOG_PREFIX="tools/$name"

# 1. A caller-provided binary wins.
if [[ -n "${!override:-}" ]]; then
    if is_bin "${!override}"; then
        abspath "${!override}"
        exit 0
    fi
    log "$override=${!override} is not an executable file; using the build cache instead"
fi

# 2. The cache, by pinned version.
version=$(pinned_version "$here/$name/go.mod" "$module")
dest="$(cache_root)/tools/$name-$version"
if is_bin "$dest/$name"; then
    printf '%s\n' "$dest/$name"
    exit 0
fi

# 3. Build it. Version strings as the projects' own release builds set them, so `--version`
#    reports the pinned release rather than a development build.
go_env "$name"
lock_dir "$dest"
case "$name" in
    helm)
        # helm's default Capabilities.KubeVersion (helm template, lint) follows its client-go,
        # as its Makefile derives it: client-go v0.X.Y is Kubernetes 1.X.
        client_go=$(pinned_version "$here/helm/go.mod" k8s.io/client-go)
        minor=${client_go#v0.}
        minor=${minor%%.*}
        ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
        for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
            ldflags+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$minor"
        done
        go_build helm "$here/helm" "$pkg" "$ldflags" "$dest" version --short
        ;;
    actionlint)
        go_build actionlint "$here/actionlint" "$pkg" \
            "-s -w -X github.com/rhysd/actionlint.version=$version" "$dest" -version
        ;;
    setup-envtest)
        go_build setup-envtest "$here/setup-envtest" "$pkg" \
            "-s -w -X $module/version.version=$version" "$dest" version
        ;;
esac
is_bin "$dest/$name" || die "$name missing in $dest after the build"
printf '%s\n' "$dest/$name"
