# Shared set-up for scripts/run, scripts/test and friends. Source it; do not run it.
#
# - CARGO_TARGET_DIR defaults to a directory outside the clone, so every clone on this machine
#   (and CI right after a session) reuses one warm build.
# - Missing Debian packages are installed (as root, or with sudo).

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferrobus/target}"
FERROBUS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export FERROBUS_BIN="${FERROBUS_BIN:-$CARGO_TARGET_DIR/release/ferrobus}"

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }

# Debian packages the Rust build needs (clang and libclang-dev: RocksDB's bindgen loads libclang).
BUILD_PACKAGES=(build-essential pkg-config clang libclang-dev)

apt_install_missing() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    log "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
}

ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        log "cargo is not installed: install the Rust toolchain (rustup, Rust 1.85 or newer) first"
        exit 1
    fi
    apt_install_missing "${BUILD_PACKAGES[@]}"
}

build_release() {
    ensure_rust
    log "building (release) into $CARGO_TARGET_DIR"
    (cd "$FERROBUS_ROOT" && cargo build --release --locked --workspace --bins)
}
