#!/usr/bin/env bash
# System packages some tests need (Debian/Ubuntu, with sudo when not root): `make system-deps`, never `make test`
# itself; without them those tests skip and name what is missing. CI (.ci/run) installs them: a real Prometheus for the monitoring test and
# headless Chromium for the browser tests, nginx for the reverse-proxy timeout test. Idempotent; does nothing when all are present.
set -euo pipefail
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
[ -x /usr/bin/chromium ] || need+=(chromium)
# nginx: the reverse proxy of docker-compose.yml, run natively in front of the service by tests/deploy.
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: no apt-get (this script installs Debian packages); install these yourself:" \
        "$(printf '%s\n' "${need[@]}" | sort -u | tr '\n' ' ')(tests that need them skip without)" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
