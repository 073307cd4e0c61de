# shellcheck shell=bash
# Sourced by scripts/demo.sh and scripts/test.sh: make a fresh Debian/Ubuntu machine able to run them.
#
# Why a script rather than documentation: the demo and the tests drive real third-party clients
# (skopeo, umoci) and compare against real peers (the CNCF docker-registry, nginx), so "pip install"
# alone is never enough. Everything here is idempotent and does nothing when already in place, so the
# entry scripts can source it on every run.
#
# Environment:
#   CARGOHOLD_VENV   use this virtualenv instead of <repo>/.venv (it must already have the package)

_ch_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

_ch_say() { printf '[bootstrap] %s\n' "$*" >&2; }

# --- system packages ----------------------------------------------------------------------------
# command -> Debian package providing it.
_ch_missing_packages() {
    local -a missing=()
    local cmd pkg
    # dockerd/buildah/containerd: the build, docker-daemon and containerd pull paths are tested against real
    # ones, started privately (tests/containerd.py).
    # mkfs.ext4: the full-disk tests mount a small real filesystem (tests/test_storage_full.py).
    # chromium/chromedriver: real-browser tests of the web dashboard (tests/browser.py).
    # ip: private network namespaces of the no-egress tests (tests/netns.py).
    # debootstrap: the container-image test builds its Debian base image locally (test_container_image.py);
    # systemd-analyze and promtool check the systemd unit and the alert rules (test_deploy_files.py).
    # wrk and ab (HEAD requests, which wrk 4.1 cannot time): bench/throughput.py.
    for pair in wrk:wrk ab:apache2-utils skopeo:skopeo umoci:umoci docker-registry:docker-registry nginx:nginx-light curl:curl \
                python3:python3 dockerd:docker.io containerd:containerd ctr:containerd buildah:buildah \
                mkfs.ext4:e2fsprogs busybox:busybox-static \
                chromium:chromium chromedriver:chromium-driver ip:iproute2 \
                debootstrap:debootstrap systemd-analyze:systemd promtool:prometheus; do
        cmd="${pair%%:*}"; pkg="${pair#*:}"
        if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$cmd" ]; then
            missing+=("$pkg")
        fi
    done
    # The PostgreSQL server for tests/pgcluster.py: Debian keeps initdb/pg_ctl/postgres off PATH, in
    # /usr/lib/postgresql/<major>/bin (the psql on PATH comes from the client package and is not enough).
    if ! command -v initdb >/dev/null 2>&1 && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
        missing+=("postgresql")
    fi
    # Debian splits venv/ensurepip out of python3; without it `python3 -m venv` fails.
    if command -v python3 >/dev/null 2>&1 && [ -z "${CARGOHOLD_VENV:-}" ] && [ ! -x "$_ch_root/.venv/bin/python" ] \
        && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        missing+=("python3-venv")
    fi
    echo "${missing[@]}"
}

# The Debian docker-registry package starts a registry on :5000 where a service manager exists.
# `cargohold serve` defaults to that port, so stop the one we just caused to be started.
_ch_stop_packaged_registry() {
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
        _ch_say "stopping and disabling the docker-registry service (it holds port 5000)"
        systemctl stop docker-registry || true
        systemctl disable docker-registry >/dev/null 2>&1 || true
    fi
    if command -v ss >/dev/null 2>&1; then
        local pid
        for pid in $(ss -Hltnp 'sport = :5000' 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); do
            if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "docker-registry" ]; then
                _ch_say "stopping docker-registry (pid $pid) listening on :5000"
                kill "$pid" 2>/dev/null || true
            fi
        done
    fi
}

# Debian's postgresql package creates a `main` cluster and, where a service manager runs, starts it on 5432.
# The tests start private clusters of their own (tests/pgcluster.py), so stop and disable the one we just
# caused to be created; a PostgreSQL that was there before the bootstrap ran is left alone.
_ch_stop_packaged_postgres() {
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet postgresql 2>/dev/null; then
        _ch_say "stopping and disabling the postgresql service (the tests run private clusters)"
        systemctl stop postgresql || true
        systemctl disable postgresql >/dev/null 2>&1 || true
    fi
    command -v pg_lsclusters >/dev/null 2>&1 || return 0
    local version cluster _port status _rest
    # shellcheck disable=SC2034 # port and the rest of the line are read only to skip them
    while read -r version cluster _port status _rest; do
        if [ "$status" = "online" ]; then
            _ch_say "stopping PostgreSQL cluster $version/$cluster"
            pg_ctlcluster "$version" "$cluster" stop || true
        fi
        # Never start it again at boot: start.conf is what the wrapper scripts obey.
        if [ -w "/etc/postgresql/$version/$cluster/start.conf" ]; then
            echo manual > "/etc/postgresql/$version/$cluster/start.conf"
        fi
    done < <(pg_lsclusters --no-header 2>/dev/null)
}

_ch_packages() {
    local missing
    missing="$(_ch_missing_packages)"
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        _ch_say "missing system packages: $missing"
        _ch_say "install them with:  sudo apt-get update && sudo apt-get install -y $missing"
        _ch_say "(or re-run this script as root, e.g. sudo bash $0)"
        return 1
    fi
    _ch_say "installing: $missing"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null
    case " $missing " in *" docker-registry "*) _ch_stop_packaged_registry ;; esac
    case " $missing " in *" postgresql "*) _ch_stop_packaged_postgres ;; esac
    missing="$(_ch_missing_packages)"
    if [ -n "$missing" ]; then
        _ch_say "still missing after apt-get install: $missing"
        return 1
    fi
}

# --- docker buildx -------------------------------------------------------------------------------
# `cargohold build` prefers `docker buildx`, so its tests need the plugin. Debian 12 has no buildx package;
# Debian 13 (trixie) has `docker-buildx`, a static Go binary needing only libc6 >= 2.34 (bookworm: 2.36).
# Fetch that one package with a throw-away apt source list (apt still verifies Debian's signatures; the
# system's sources are not touched) and install it with dpkg into /usr/libexec/docker/cli-plugins.
_ch_buildx() {
    command -v docker >/dev/null 2>&1 || return 0
    docker buildx version >/dev/null 2>&1 && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        _ch_say "docker buildx is missing; its tests will skip (install the docker-buildx plugin to run them)"
        return 0
    fi
    local tmp
    tmp="$(mktemp -d)"
    mkdir -p "$tmp/lists/partial" "$tmp/archives/partial"
    echo "deb http://deb.debian.org/debian trixie main" > "$tmp/sources.list"
    chmod -R a+rwX "$tmp"  # apt downloads as the _apt user
    local -a opts=(-o "Dir::Etc::sourcelist=$tmp/sources.list" -o "Dir::Etc::sourceparts=-"
                   -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache::Archives=$tmp/archives")
    _ch_say "installing docker-buildx (Debian trixie package; bookworm has none)"
    if apt-get "${opts[@]}" update -qq >/dev/null \
        && (cd "$tmp" && apt-get "${opts[@]}" download docker-buildx >/dev/null 2>&1) \
        && dpkg -i "$tmp"/docker-buildx_*.deb >/dev/null; then
        rm -rf "$tmp"
        return 0
    fi
    rm -rf "$tmp"
    _ch_say "could not install docker-buildx; its tests will skip"
    return 0
}

# --- Python environment -------------------------------------------------------------------------
_ch_python() {
    local venv="${CARGOHOLD_VENV:-$_ch_root/.venv}"
    if [ -n "${CARGOHOLD_VENV:-}" ]; then
        [ -x "$venv/bin/python" ] || { _ch_say "CARGOHOLD_VENV=$venv has no bin/python"; return 1; }
    elif [ ! -x "$venv/bin/python" ]; then
        if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            _ch_say "Python >= 3.11 is required, found $(python3 --version 2>&1); install a newer python3"
            return 1
        fi
        _ch_say "creating $venv"
        python3 -m venv "$venv"
    fi
    # Reinstall only when pyproject.toml changed since the last successful install (fast no-op runs).
    local stamp="$venv/.cargohold-pyproject.sha256" want
    want="$(sha256sum "$_ch_root/pyproject.toml" | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] \
        || ! "$venv/bin/python" -c 'import cargohold, pytest' >/dev/null 2>&1; then
        _ch_say "installing cargohold (editable) with the server and test extras into $venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$_ch_root[server,test]"
        echo "$want" > "$stamp"
    fi
    export VIRTUAL_ENV="$venv"
    export PATH="$venv/bin:$PATH"
}

if ! _ch_packages || ! _ch_buildx || ! _ch_python; then
    _ch_say "setup failed; see the messages above"
    # Sourced: leave the caller with a clear failure instead of a half-prepared environment.
    return 1 2>/dev/null || exit 1
fi
cd "$_ch_root"
