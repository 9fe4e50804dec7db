#!/usr/bin/env bash
# Install what edgewarm needs on a fresh Debian machine: system packages and a virtualenv in .venv.
#   scripts/setup.sh            runtime + nginx (enough for the demo)
#   scripts/setup.sh --test     also Varnish, Squid, Traffic Server, PostgreSQL, the load tools and the
#                               test/lint dependencies
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(nginx libnginx-mod-http-cache-purge python3-venv curl sqlite3)
extras=""
if [[ "${1:-}" == "--test" ]]; then
  packages+=(varnish squid trafficserver postgresql-15 wrk nghttp2-client openssl)
  extras="[test]"
fi

sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The packaged services are not used: the lab and the tests start their own processes on loopback.
# (Not `service trafficserver stop`: Debian's script stops every traffic_server, a running lab's too.)
for svc in nginx varnish postgresql squid; do
  (command -v service >/dev/null && service "$svc" stop >/dev/null 2>&1) || true
done
# Without an init system, a packaged daemon may outlive its service stop (and ATS has none here): end it
# through its own pid file, only if the PID is still that daemon (never by name: a test lab's may be running).
for entry in /usr/sbin/squid:/run/squid.pid /usr/bin/traffic_manager:/run/trafficserver/manager.lock \
  /usr/bin/traffic_server:/run/trafficserver/server.lock; do
  pid=$(cat "${entry#*:}" 2>/dev/null || true)
  if [[ $pid =~ ^[0-9]+$ && $($sudo readlink "/proc/$pid/exe" 2>/dev/null || true) == "${entry%%:*}" ]]; then
    $sudo kill "$pid" || true
  fi
done

python=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e ".${extras}" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import edgewarm" # fail here, not later, if the install did not work
