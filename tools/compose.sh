#!/usr/bin/env bash
# The compose bundle on this machine; the Makefile calls it.
#
#   tools/compose.sh up|down|logs
#
#   up     .env from .env.example when there is none (this machine's node id and machine
#          type), the group ids of the Docker socket (and on a Pi of i2c and gpio) from
#          this machine, then `docker compose up -d --build` (on a Pi with
#          docker-compose.rpi.yml less the devices this Pi lacks), waits until every
#          container is healthy and prints the dashboard's address and setup code
#   down   `docker compose down`: the containers go, the volumes (all the data) stay
#   logs   follow every container's log
#
# `docker compose` (v2) when there is one, else `docker-compose` (1.29).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ENV_FILE=.env
HEALTHY_TIMEOUT_S=600

say() { printf 'compose: %s\n' "$*"; }
die() { printf 'compose: error: %s\n' "$*" >&2; exit 1; }

compose_command() {
    if docker compose version >/dev/null 2>&1; then
        echo "docker compose"
    elif command -v docker-compose >/dev/null 2>&1; then
        echo "docker-compose"
    else
        die "neither docker compose nor docker-compose is installed (sudo apt-get install" \
            "docker.io docker-compose)"
    fi
}

machine_type() {
    if [[ -r /proc/device-tree/model ]] && grep -qa '^Raspberry Pi' /proc/device-tree/model; then
        echo rpi
    else
        case "$(uname -s)" in
            Darwin) echo mac ;;
            MINGW* | MSYS* | CYGWIN*) echo pc_win ;;
            *) echo pc_linux ;;
        esac
    fi
}

group_id() { getent group "$1" | cut -d: -f3; }

# The host name without a domain: a Mac's `hostname` says name.local.
short_hostname() { hostname -s 2>/dev/null || hostname; }

set_value() {
    # KEY=VALUE in .env, replacing the line .env.example has for KEY (GNU and BSD sed).
    local key="$1" value="$2"
    [[ -n "$value" ]] || return 0
    sed -i.bak "s|^${key}=.*|${key}=${value}|" "$ENV_FILE" && rm -f "$ENV_FILE.bak"
}

env_value() { sed -n "s/^$1=//p" "$ENV_FILE" 2>/dev/null | tail -n 1; }

export_group_ids() {
    # The groups that own the Docker socket and the Pi's buses are this machine's facts, so
    # they are read again at every `up` (the environment wins over .env in compose files).
    # Linux only: Docker Desktop's socket lives in its VM (group 0), whatever the host's
    # /var/run/docker.sock link says.
    local socket="${DOCKER_SOCKET:-$(env_value DOCKER_SOCKET)}"
    if [[ "$(uname -s)" == Linux && -z "${DOCKER_GID:-}" && -S "${socket:-/var/run/docker.sock}" ]]; then
        DOCKER_GID="$(stat -c %g "${socket:-/var/run/docker.sock}")"
        export DOCKER_GID
    fi
    if [[ "$(env_value EDGE_MACHINE_TYPE)" == rpi ]]; then
        [[ -n "${I2C_GID:-}" ]] || { I2C_GID="$(group_id i2c)" && [[ -n "$I2C_GID" ]] && export I2C_GID; }
        [[ -n "${GPIO_GID:-}" ]] || { GPIO_GID="$(group_id gpio)" && [[ -n "$GPIO_GID" ]] && export GPIO_GID; }
        [[ -n "${AUDIO_GID:-}" ]] || { AUDIO_GID="$(group_id audio)" && [[ -n "$AUDIO_GID" ]] && export AUDIO_GID; }
    fi
    return 0
}

# docker-compose.rpi.yml with the devices this Pi has: one that is missing (a bus not turned
# on, or /dev/gpiomem on a Pi 5) would stop the device-service from starting.
PI_FILE=.docker-compose.rpi.local.yml

pi_devices_file() {
    local missing=() path
    for path in $(sed -n 's|^ *- \(/dev/[^:]*\):.*|\1|p' docker-compose.rpi.yml); do
        [[ -e "$path" ]] || missing+=("$path")
    done
    cp docker-compose.rpi.yml "$PI_FILE"
    for path in ${missing[@]+"${missing[@]}"}; do
        sed -i.bak "\|^ *- ${path}:|d" "$PI_FILE" && rm -f "$PI_FILE.bak"
    done
    if (( ${#missing[@]} > 0 )); then
        say "left out of the device-service's devices, not on this Pi: ${missing[*]}" \
            "(turn a bus on with sudo raspi-config, Interface Options, then make up again)"
    fi
}

make_env() {
    [[ -f "$ENV_FILE" ]] && return 0
    cp .env.example "$ENV_FILE"
    local node type
    node="$(short_hostname | tr -c 'A-Za-z0-9_.\n-' '-' | cut -c1-64)"
    type="$(machine_type)"
    set_value EDGE_NODE_ID "$node"
    set_value EDGE_MACHINE_TYPE "$type"
    say "wrote $ENV_FILE (node $node, machine type $type): edit it and run this again to change them"
}

files() {
    printf -- '-f docker-compose.yml'
    if [[ "$(env_value EDGE_MACHINE_TYPE)" == rpi ]]; then
        [[ -f "$PI_FILE" ]] || pi_devices_file
        printf -- ' -f %s' "$PI_FILE"
    fi
    # The user's own additions (a sensors file, ...), last, as compose itself would.
    [[ -f docker-compose.override.yml ]] && printf -- ' -f docker-compose.override.yml'
    printf '\n'
}

wait_healthy() {
    local compose="$1" started states
    started=$(date +%s)
    while (( $(date +%s) - started < HEALTHY_TIMEOUT_S )); do
        states="$($compose ps --all -q | xargs -r docker inspect \
            --format '{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}')"
        if [[ -n "$states" ]] && ! grep -qv ' healthy$' <<<"$states"; then
            say "every container is healthy after $(( $(date +%s) - started )) s"
            return 0
        fi
        sleep 2
    done
    printf '%s\n' "$states" >&2
    die "not every container is healthy after ${HEALTHY_TIMEOUT_S} s: see make logs"
}

main() {
    local what="${1:-}" compose
    compose="$(compose_command)"
    case "$what" in
        up)
            make_env
            export_group_ids
            [[ "$(env_value EDGE_MACHINE_TYPE)" == rpi ]] && pi_devices_file
            # shellcheck disable=SC2046
            $compose $(files) up -d --build
            wait_healthy "$compose $(files)"
            local port code
            port="$(env_value HTTP_PORT)"
            say "the dashboard: http://$(short_hostname).local:${port:-8000}/ (or http://localhost:${port:-8000}/)"
            code="$($compose $(files) logs --no-color edge-server 2>/dev/null \
                | grep -o 'setup code [A-Z0-9-]*' | tail -n 1 || true)"
            if [[ -n "$code" ]]; then
                say "first run: open /setup with the one-time $code"
            fi
            ;;
        down)
            # shellcheck disable=SC2046
            $compose $(files) down
            ;;
        logs)
            # shellcheck disable=SC2046
            $compose $(files) logs --follow --tail 100
            ;;
        *) die "usage: tools/compose.sh up|down|logs" ;;
    esac
}

main "$@"
