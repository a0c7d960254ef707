# Shared by tests/tools/build.sh and tests/envtest/build-assets.sh (sourced, not run): one
# way to build a pinned Go binary from the module proxy into the cache, with progress on
# stderr, a lock against concurrent builders, and no half-built binary left behind.
# The caller sets LOG_PREFIX before sourcing.

log() { printf '%s: %s\n' "${LOG_PREFIX:-build}" "$*" >&2; }
die() { log "error: $*"; exit 1; }
abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "$PWD" "$1" ;; esac; }
is_bin() { [[ -x "$1" && -f "$1" ]]; }

cache_root() {
    abspath "${IDV_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:?HOME is not set}/.cache}/idv-token-operator}"
}

# Only the module proxy is reachable on the development machines; the checksum database
# (sum.golang.org) is not, so it is off and the committed go.sum files pin every hash.
go_env() {
    command -v go >/dev/null 2>&1 || die "go is not installed (needed to build $1)"
    export GOTOOLCHAIN=local GOWORK=off GOSUMDB=off CGO_ENABLED=0
    export GOFLAGS="-mod=mod -buildvcs=false"
}

# The version a wrapper module's go.mod requires of MODULE (the one pin, read, not repeated).
pinned_version() {
    local gomod=$1 module=$2 version
    version=$(awk -v m="$module" '($1 == m || ($1 == "require" && $2 == m)) { print ($1 == m ? $2 : $3); exit }' "$gomod")
    [[ -n "$version" ]] || die "$gomod does not require $module"
    printf '%s\n' "$version"
}

# Serialise concurrent builders of one folder (parallel tests, CI jobs): the winner builds,
# the others wait and then find the binary in place.
lock_dir() {
    mkdir -p -- "$1"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$1/.lock"
        if ! flock -n 9; then
            log "another build is running in $1; waiting for it"
            flock 9
        fi
    fi
}

_tmpfiles=()
_heartbeat=""
_gobuild=""
_cleanup() {
    [[ -n "$_gobuild" ]] && kill "$_gobuild" 2>/dev/null || true
    [[ -n "$_heartbeat" ]] && kill "$_heartbeat" 2>/dev/null || true
    ((${#_tmpfiles[@]})) && rm -f -- "${_tmpfiles[@]}" || true
}
trap _cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# go_build NAME MODULE_DIR PACKAGE LDFLAGS DEST_DIR CHECK_ARGS...
# Builds PACKAGE in the wrapper module MODULE_DIR to DEST_DIR/NAME unless it is there; the
# fresh binary must run with CHECK_ARGS before it is moved into place.
go_build() {
    local name=$1 moddir=$2 pkg=$3 ldflags=$4 dest=$5
    shift 5
    if is_bin "$dest/$name"; then
        log "$name already built"
        return
    fi
    local tmp="$dest/.$name.tmp.$$"
    _tmpfiles+=("$tmp")
    local start=$SECONDS
    log "building $name from $pkg (cold: minutes; go prints the modules it downloads, a heartbeat every 30s)"
    # sleep gets no inherited pipes, so a killed heartbeat never holds the caller's $(...) open.
    ( while sleep 30 </dev/null >/dev/null 2>&1; do log "... still building $name ($((SECONDS - start))s)"; done ) &
    _heartbeat=$!
    # In the background + wait, so that a TERM/INT to the script is handled at once (the trap
    # stops go) rather than after go finishes.
    (cd -- "$moddir" && exec go build -trimpath -ldflags "$ldflags" -o "$tmp" "$pkg") >&2 &
    _gobuild=$!
    wait "$_gobuild" || die "go build of $name failed (exit $?)"
    _gobuild=""
    kill "$_heartbeat" 2>/dev/null || true
    wait "$_heartbeat" 2>/dev/null || true
    _heartbeat=""
    "$tmp" "$@" >&2 || die "freshly built $name does not run"
    mv -f -- "$tmp" "$dest/$name"
    log "built $name in $((SECONDS - start))s"
}
